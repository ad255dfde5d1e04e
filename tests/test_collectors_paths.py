"""Trace grouping into observer.paths: loops, tool sequences, prompt paths, closing rules, and
interop with what an OpenTelemetry Collector's kafka exporter writes to otlp_spans."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from kafka import KafkaProducer
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import StatusCode

from observer.collectors.normalize.normalizer import Normalizer
from observer.collectors.paths.trace_grouping import FakeClock, TraceGrouper
from observer.core.bus import Message, StageRunner
from observer.collectors.paths.config import PathsConfig
from observer.core.config import KafkaConfig
from observer.core.records import LLMCall, PathRecord, ToolCall, decode
from observer.core.topics import Topics
from tests.collectors_support import drain, receivers, sample

TOPICS = Topics.from_config(KafkaConfig())


def kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def span(
    trace: int, sid: int, parent: int | None, name: str, start: int, error: bool = False,
    **attributes: Any,
) -> Span:
    return Span(
        trace_id=trace.to_bytes(16, "big"),
        span_id=sid.to_bytes(8, "big"),
        parent_span_id=parent.to_bytes(8, "big") if parent else b"",
        name=name,
        start_time_unix_nano=start * 1_000_000,
        end_time_unix_nano=(start + 10) * 1_000_000,
        attributes=[kv(k.replace("__", "."), v) for k, v in attributes.items()],
        status=Status(code=Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_UNSET),
    )


def request(*spans: Span, service: str = "support") -> ExportTraceServiceRequest:
    r = ExportTraceServiceRequest()
    rs = r.resource_spans.add()
    rs.resource.attributes.append(kv("service.name", service))
    rs.scope_spans.add().spans.extend(spans)
    return r


def message(r: ExportTraceServiceRequest, offset: int = 0) -> Message:
    return Message("otlp_spans", 0, offset, None, r.SerializeToString(), 0)


def chat(trace: int, sid: int, parent: int, start: int, version: str = "v1", **extra: Any) -> Span:
    return span(
        trace, sid, parent, "chat gpt-4o", start,
        gen_ai__operation__name="chat", gen_ai__request__model="gpt-4o",
        gen_ai__usage__input_tokens=100, gen_ai__usage__output_tokens=20,
        traceloop__prompt__key="support", traceloop__prompt__version=version, **extra,
    )


def tool(trace: int, sid: int, parent: int, start: int, name: str, error: bool = False) -> Span:
    return span(
        trace, sid, parent, f"execute_tool {name}", start, error,
        gen_ai__operation__name="execute_tool", gen_ai__tool__name=name,
    )


def agent_loop(trace: int, turns: int, tools: list[tuple[str, bool]], version: str = "v1"):
    """An agent span with ``turns`` chat calls, tool calls between them."""
    spans = [span(trace, 1, None, "invoke_agent support", 0, gen_ai__agent__name="support",
                  gen_ai__operation__name="invoke_agent")]
    t, sid = 1, 2
    for turn in range(turns):
        spans.append(chat(trace, sid, 1, t, version))
        sid, t = sid + 1, t + 1
        if turn < len(tools):
            name, failed = tools[turn]
            spans.append(tool(trace, sid, 1, t, name, failed))
            sid, t = sid + 1, t + 1
    return spans


def grouper(clock: FakeClock, **cfg: Any) -> TraceGrouper:
    return TraceGrouper(TOPICS, PathsConfig(**cfg), clock=clock)


def closed(g: TraceGrouper) -> list[PathRecord]:
    return [decode(o.value) for o in g.tick()]  # type: ignore[misc]


def test_agent_loop_becomes_one_path() -> None:
    clock = FakeClock()
    g = grouper(clock, grace_s=5, max_loop_iterations=2)
    # Children arrive before the root, in two messages, as a batching exporter sends them.
    spans = agent_loop(7, turns=3, tools=[("search", False), ("refund", True)])
    assert g.process([message(request(*spans[1:3])), message(request(*spans[3:], spans[0]))]) == []
    assert closed(g) == []  # the root is in, but the grace period has not passed
    clock.now = 4.9
    assert closed(g) == []
    clock.now = 5.0
    (path,) = closed(g)
    assert path.trace_id == f"{7:032x}" and path.service == "support" and path.model == "gpt-4o"
    assert path.agent == "support" and path.root_name == "invoke_agent support"
    assert (path.span_count, path.llm_calls, path.tool_calls, path.tool_errors) == (6, 3, 2, 1)
    assert path.loop_iterations == 3 and path.loop_bound_exceeded  # bound is 2
    assert (path.input_tokens, path.output_tokens) == (300, 60)
    assert [(s.name, s.status) for s in path.tool_sequence] == [("search", "ok"), ("refund", "error")]
    assert path.prompt_path == [
        "llm:support@v1", "tool:search", "llm:support@v1", "tool:refund", "llm:support@v1"
    ]
    assert path.error and path.closed_by == "root"
    assert path.duration_ms == 15.0  # first start 0 ms, last end 5 + 10 ms
    assert g.tick() == []  # closed once


def test_signature_changes_with_the_path_only() -> None:
    clock = FakeClock()
    g = grouper(clock, grace_s=0)
    same_a = agent_loop(1, 2, [("search", False)])
    same_b = agent_loop(2, 2, [("search", True)])  # an error does not change the route
    new_prompt = agent_loop(3, 2, [("search", False)], version="v2")
    new_tool = agent_loop(4, 2, [("lookup", False)])
    g.process([message(request(*s)) for s in (same_a, same_b, new_prompt, new_tool)])
    paths = {int(p.trace_id, 16): p.path_signature for p in closed(g)}
    assert paths[1] == paths[2]
    assert len({paths[1], paths[3], paths[4]}) == 3


def test_rootless_trace_times_out_and_late_spans_are_dropped() -> None:
    clock = FakeClock()
    g = grouper(clock, grace_s=1, timeout_s=30)
    orphan = [chat(9, 2, 1, 0), tool(9, 3, 1, 1, "search")]  # its parent lives elsewhere
    g.process([message(request(*orphan))])
    clock.now = 29
    assert closed(g) == []
    clock.now = 30
    (path,) = closed(g)
    assert path.closed_by == "timeout" and path.prompt_path == ["llm:support@v1", "tool:search"]
    late = sample("observer_paths_late_spans_total")
    g.process([message(request(tool(9, 4, 1, 2, "refund")))])
    assert sample("observer_paths_late_spans_total") - late == 1
    clock.now = 100
    assert closed(g) == []


def test_open_traces_are_bounded() -> None:
    clock = FakeClock()
    g = grouper(clock, max_open_traces=2)
    outputs = g.process([message(request(chat(t, 2, 1, 0))) for t in (1, 2, 3)])
    (evicted,) = [decode(o.value) for o in outputs]
    assert evicted.trace_id == f"{1:032x}" and evicted.closed_by == "evicted"  # the oldest
    assert len(g.open) == 2


def test_other_conventions_count_as_steps() -> None:
    """OpenInference LLM and TOOL spans, with a prompt template hashed into the path."""
    clock = FakeClock()
    g = grouper(clock, grace_s=0)
    spans = [
        span(5, 1, None, "agent", 0, openinference__span__kind="AGENT"),
        span(5, 2, 1, "ChatOpenAI", 1, openinference__span__kind="LLM", llm__model_name="gpt-4o",
             llm__prompt_template__template="Answer {q}", llm__prompt_template__version="3"),
        span(5, 3, 1, "search", 2, openinference__span__kind="TOOL", tool__name="search"),
    ]
    g.process([message(request(*spans))])
    (path,) = closed(g)
    assert path.loop_iterations == 1 and path.model == "gpt-4o"
    assert path.prompt_path[0].startswith("llm:tmpl:") and path.prompt_path[0].endswith("@3")
    assert path.prompt_path[1] == "tool:search"


@pytest.mark.parametrize("compression", [None, "gzip", "snappy", "lz4", "zstd"])
def test_collector_written_messages_are_processed_the_same(
    kafka_config: KafkaConfig, topics: Topics, compression: str | None
) -> None:
    """An OpenTelemetry Collector kafka exporter (otlp_proto) writes one export request per
    message: several traces in one message, and an empty key unless partition_traces_by_id is
    on, in batches compressed with any codec its ``producer.compression`` names. Both stages
    must read such messages as they read the receiver's."""
    mixed = request(*agent_loop(11, 2, [("search", False)]), *agent_loop(12, 1, []))
    keyed = request(*agent_loop(13, 1, [("refund", True)]))
    producer = KafkaProducer(
        bootstrap_servers=kafka_config.servers, acks="all", compression_type=compression
    )
    producer.send(topics.spans, value=mixed.SerializeToString())  # no key
    producer.send(topics.spans, key=f"{13:032x}".encode(), value=keyed.SerializeToString())
    producer.flush()
    producer.close()
    raw = drain(kafka_config, topics.spans, 2)
    messages = [Message(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp) for m in raw]

    records = [decode(o.value) for o in Normalizer(topics).process(messages)]
    llm = [r for r in records if isinstance(r, LLMCall)]
    tools = [r for r in records if isinstance(r, ToolCall)]
    assert len(llm) == 4 and {r.service for r in llm} == {"support"}
    assert [(t.tool_name, t.status, t.model) for t in sorted(tools, key=lambda t: t.tool_name)] == [
        ("refund", "error", "gpt-4o"), ("search", "ok", "gpt-4o")
    ]

    clock = FakeClock()
    g = TraceGrouper(topics, PathsConfig(grace_s=0), clock=clock)
    g.process(messages)
    paths = {int(p.trace_id, 16): p for p in closed(g)}
    assert sorted(paths) == [11, 12, 13]
    assert paths[11].loop_iterations == 2 and paths[13].tool_errors == 1


def test_sdk_spans_through_kafka_become_paths(kafka_config: KafkaConfig, topics: Topics) -> None:
    """Real SDK exporter -> receiver -> otlp_spans -> the grouping stage -> observer.paths."""
    with receivers(kafka_config, topics) as r:
        provider = TracerProvider(resource=Resource.create({"service.name": "support"}))
        provider.add_span_processor(
            SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{r.http}/v1/traces"))
        )
        tracer = provider.get_tracer("test")
        for turns in (1, 3):
            with tracer.start_as_current_span("invoke_agent support") as root:
                root.set_attribute("gen_ai.agent.name", "support")
                for turn in range(turns):
                    with tracer.start_as_current_span("chat gpt-4o") as c:
                        c.set_attribute("gen_ai.operation.name", "chat")
                        c.set_attribute("gen_ai.request.model", "gpt-4o")
                    with tracer.start_as_current_span("execute_tool search") as t:
                        t.set_attribute("gen_ai.operation.name", "execute_tool")
                        t.set_attribute("gen_ai.tool.name", "search")
                        if turn == 2:
                            t.set_status(StatusCode.ERROR)
        provider.shutdown()

    runner = StageRunner(
        kafka_config, TraceGrouper(topics, PathsConfig(grace_s=0.5)), "paths-test", [topics.spans]
    )
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    try:
        out = drain(kafka_config, topics.paths, 2, timeout_s=30)
    finally:
        stop.set()
        thread.join(15)
    paths = sorted((decode(m.value) for m in out), key=lambda p: p.loop_iterations)
    assert [(p.loop_iterations, p.tool_calls, p.tool_errors) for p in paths] == [(1, 1, 0), (3, 3, 1)]
    assert all(p.agent == "support" and p.span_count == 1 + 2 * p.loop_iterations for p in paths)
    assert out[0].key.decode() == "support|gpt-4o"
