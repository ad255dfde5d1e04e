"""The domain-metrics stage: what each record adds to /metrics, bounded label cardinality,
and bad input counted rather than fatal."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from observer.collectors.metrics.domain_metrics import OTHER, DomainMetrics, LabelCap, path_label
from observer.core.bus import Message
from observer.collectors.metrics.config import MetricsConfig
from observer.core.config import KafkaConfig
from observer.core.records import LLMCall, PathRecord, ToolCall, encode
from observer.core.topics import Topics

TOPICS = Topics.from_config(KafkaConfig())


def stage(**caps: int) -> tuple[DomainMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    return DomainMetrics(MetricsConfig(**caps), TOPICS, registry=registry), registry


def msgs(*records) -> list[Message]:
    return [Message("t", 0, i, None, encode(r), 0) for i, r in enumerate(records)]


def llm(model: str = "m1", **kw) -> LLMCall:
    return LLMCall(service="shop", model=model, trace_id="t", span_id="s", **kw)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    # Records without a cluster give cluster="" (tests/test_cluster_identity.py: with one);
    # the stage's own error counter has no cluster.
    if not name.startswith("observer_domain_metrics_"):
        labels = {"cluster": "", **labels}
    return registry.get_sample_value(name, labels)


def test_llm_calls_tokens_latency_ttft_and_errors() -> None:
    s, reg = stage()
    s.process(msgs(
        llm(latency_ms=300, input_tokens=100, output_tokens=20, cache_read_tokens=5,
            finish_reasons=["stop"], time_to_first_token_ms=80),
        llm(latency_ms=9000, input_tokens=50, finish_reason="length"),
        llm(error=True, error_type="RateLimitError"),
    ))
    sm = {"service": "shop", "model": "m1"}
    assert value(reg, "observer_llm_calls_total", **sm, finish_reason="stop") == 1
    assert value(reg, "observer_llm_calls_total", **sm, finish_reason="length") == 1
    assert value(reg, "observer_llm_calls_total", **sm, finish_reason="unknown") == 1
    assert value(reg, "observer_llm_errors_total", **sm, error_type="RateLimitError") == 1
    assert value(reg, "observer_llm_tokens_total", **sm, type="input") == 150
    assert value(reg, "observer_llm_tokens_total", **sm, type="output") == 20
    assert value(reg, "observer_llm_tokens_total", **sm, type="cache_read") == 5
    assert value(reg, "observer_llm_tokens_total", **sm, type="reasoning") is None
    assert value(reg, "observer_llm_latency_seconds_count", **sm) == 3
    assert value(reg, "observer_llm_latency_seconds_sum", **sm) == 9.3
    assert value(reg, "observer_llm_latency_seconds_bucket", **sm, le="0.5") == 2
    # Only the call that reported a first token is in the TTFT histogram.
    assert value(reg, "observer_llm_time_to_first_token_seconds_count", **sm) == 1
    assert value(reg, "observer_llm_time_to_first_token_seconds_bucket", **sm, le="0.1") == 1


def test_tools_by_status_error_type_and_latency() -> None:
    s, reg = stage()
    s.process(msgs(
        ToolCall(service="shop", tool_name="search", trace_id="t", span_id="a", latency_ms=40),
        ToolCall(service="shop", tool_name="search", trace_id="t", span_id="b", latency_ms=2000,
                 status="error", error_type="ToolTimeout"),
    ))
    st = {"service": "shop", "tool": "search"}
    assert value(reg, "observer_tool_calls_total", **st, status="ok") == 1
    assert value(reg, "observer_tool_calls_total", **st, status="error") == 1
    assert value(reg, "observer_tool_errors_total", **st, error_type="ToolTimeout") == 1
    assert value(reg, "observer_tool_latency_seconds_bucket", **st, le="0.05") == 1
    assert value(reg, "observer_tool_latency_seconds_count", **st) == 2


def test_paths_loops_and_readable_path_labels() -> None:
    s, reg = stage()
    steps = ["llm", "tool:search", "llm"]
    s.process(msgs(
        PathRecord(service="shop", agent="support", trace_id="t1", loop_iterations=2,
                   prompt_path=steps, path_signature="abc"),
        PathRecord(service="shop", agent="support", trace_id="t2", loop_iterations=12,
                   loop_bound_exceeded=True, prompt_path=steps, path_signature="abc"),
    ))
    sa = {"service": "shop", "agent": "support"}
    assert value(reg, "observer_agent_traces_total", **sa, flagged="false") == 1
    assert value(reg, "observer_agent_traces_total", **sa, flagged="true") == 1
    assert value(reg, "observer_agent_loop_iterations_sum", **sa) == 14
    assert value(reg, "observer_agent_path_traces_total", service="shop",
                 path="llm > tool:search > llm", signature="abc") == 2


def test_label_cardinality_is_capped() -> None:
    s, reg = stage(max_label_values=3, max_paths=2)
    s.process(msgs(*(llm(model=f"m{i}") for i in range(10))))
    models = {m.labels["model"] for fam in reg.collect() if fam.name == "observer_llm_calls"
              for m in fam.samples}
    assert models == {"m0", "m1", "m2", OTHER}
    assert value(reg, "observer_llm_calls_total", service="shop", model=OTHER,
                 finish_reason="unknown") == 7
    s.process(msgs(*(PathRecord(service="shop", trace_id=f"t{i}", prompt_path=["llm", f"tool:{i}"],
                                path_signature=f"sig{i}") for i in range(5))))
    assert value(reg, "observer_agent_path_traces_total", service="shop", path=OTHER,
                 signature=OTHER) == 3
    # An admitted value keeps its series: counts never move between label sets.
    s.process(msgs(llm(model="m1")))
    assert value(reg, "observer_llm_calls_total", service="shop", model="m1", finish_reason="unknown") == 2


def test_bad_messages_are_counted_and_skipped() -> None:
    s, reg = stage()
    bad = [Message("t", 0, 0, None, b"not json", 0),
           Message("t", 0, 1, None, b'{"schema": "observer.nope/v9"}', 0)]
    dead = s.process(bad + msgs(llm()))  # quarantined, not a crash
    assert [json.loads(o.value)["reason"] for o in dead] == ["decode_error", "schema_error"]
    assert value(reg, "observer_domain_metrics_errors_total", reason="undecodable") == 2
    assert value(reg, "observer_llm_calls_total", service="shop", model="m1", finish_reason="unknown") == 1
    assert "observer_llm_calls_total" in generate_latest(reg).decode()


def test_cap_and_label_helpers() -> None:
    with pytest.raises(ValueError, match="at least one"):
        LabelCap(0)
    assert path_label([]) == "unknown"
    assert len(path_label(["tool:" + "x" * 300])) == 200
