"""Poison-proof stages: every client value is hostile, and none of them stops a stage.

Each attribute the mapping tables read (enumerated from the tables, so a new row is covered
without touching this file) gets each hostile value (negative, huge, NaN, infinities, wrong
types, empty, 100 kB, control characters, invalid UTF-8) on spans of every convention, and
the messages go through every processor. The invariant: no exception escapes ``process()``
or ``tick()``, and every input message is accounted for, normalised into records that decode
and validate again, or dead-lettered with its reason. One test runs the real thing: the OTel
SDK exporting to ``observer up``'s receiver, normaliser and metrics stage on the broker.
"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from opentelemetry.proto.trace.v1.trace_pb2 import Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from prometheus_client import CollectorRegistry

from observer.collectors.metrics.domain_metrics import DomainMetrics
from observer.collectors.common.genai_mapping import (
    ATTRIBUTE_NAMES,
    FINISH_REASONS,
    KIND_BY_ATTRIBUTE,
    OPERATIONS,
)
from observer.collectors.metrics.genai_metrics import METRIC_FIELDS, GenAIMetricsNormalizer
from observer.collectors.kserve.pairing import PredictionPairer
from observer.collectors.normalize.message_content import CONVENTIONS, SYSTEM_INSTRUCTIONS
from observer.collectors.common.otlp_attributes import RESOURCE_ATTRIBUTES as _RESOURCE_ATTRIBUTES
from observer.collectors.normalize.normalizer import Normalizer
from observer.collectors.paths.trace_grouping import FakeClock, TraceGrouper
from observer.drift.engine import DriftEngine
from observer.core import validate
from observer.core.bus import Message, Output
from observer.config import ObserverConfig
from observer.collectors.kserve.config import KServeConfig
from observer.collectors.metrics.config import MetricsConfig
from observer.collectors.normalize.config import ContentConfig
from observer.collectors.paths.config import PathsConfig
from observer.collectors.receiver.config import ReceiverConfig
from observer.core.config import AdminConfig, KafkaConfig
from observer.drift.config import DriftConfig, FeatureSpec
from observer.triggers.config import PolicyConfig, TriggerConfig
from observer.core.records import (
    DriftResult,
    GenAIMetric,
    LLMCall,
    PathRecord,
    Prediction,
    Record,
    ToolCall,
    decode,
    encode,
)
from observer.core.topics import Topics
from tests.collectors_support import drain, sample, wait_for
from observer.triggers.stage import TriggerStage

TOPICS = Topics.from_config(KafkaConfig())
INVALID_UTF8 = "\x01INVALID-UTF8\x01"
"""Placeholder replaced, in the serialised message, by as many 0xff bytes (no protobuf
setter takes invalid UTF-8, a client's encoder can send it)."""


def _array(*values: AnyValue) -> AnyValue:
    return AnyValue(array_value=ArrayValue(values=list(values)))


def _nested(depth: int) -> AnyValue:
    value = AnyValue(int_value=1)
    for _ in range(depth):
        value = _array(value)
    return value


HOSTILE: dict[str, AnyValue] = {
    "negative": AnyValue(int_value=-1),
    "negative_float": AnyValue(double_value=-2.5),
    "int64_max": AnyValue(int_value=2**63 - 1),
    "two_pow_63_text": AnyValue(string_value=str(2**63)),
    "400_digits": AnyValue(string_value="9" * 400),
    "5000_digits": AnyValue(string_value="7" * 5000),
    "1e308": AnyValue(double_value=1e308),
    "nan": AnyValue(double_value=math.nan),
    "inf": AnyValue(double_value=math.inf),
    "-inf": AnyValue(double_value=-math.inf),
    "fraction": AnyValue(double_value=12.5),
    "string": AnyValue(string_value="twelve"),
    "unicode_digits": AnyValue(string_value="١٢"),
    "bool": AnyValue(bool_value=True),
    "array": _array(AnyValue(int_value=1), AnyValue(string_value="x")),
    "nested_array": _nested(40),
    "kvlist": AnyValue(kvlist_value=KeyValueList(values=[
        KeyValue(key="a", value=AnyValue(double_value=math.nan))])),
    "bytes": AnyValue(bytes_value=b"\xff\x00\xfe"),
    "empty": AnyValue(string_value=""),
    "unset": AnyValue(),
    "100kB": AnyValue(string_value="x" * 100_000),
    "control": AnyValue(string_value="a\x00b\x1b[31m\u0085\u2028"),
    "deep_json": AnyValue(string_value="[" * 50_000 + "]" * 50_000),
    "json_nan": AnyValue(string_value='[{"role": "user", "content": NaN, "x": 1e999}]'),
    "json_surrogate": AnyValue(string_value='[{"role": "\\ud800", "content": "\\udfff"}]'),
    "invalid_utf8": AnyValue(string_value=INVALID_UTF8),
}

# Every attribute a table reads: the span tables, the content conventions, the resource
# attributes, the GenAI metric table. A new row in any of them is covered here unchanged.
CONTENT_ATTRIBUTES = sorted(
    {c.json_attribute for cs in CONVENTIONS.values() for c in cs if c.json_attribute}
    | {f"{c.indexed_prefix}.{i}.{key}" for cs in CONVENTIONS.values() for c in cs
       if c.indexed_prefix for i in (0, 1) for key in (c.role_key, c.content_key)}
    | {SYSTEM_INSTRUCTIONS}
)
SPAN_ATTRIBUTES = sorted(ATTRIBUTE_NAMES) + CONTENT_ATTRIBUTES
RESOURCE_ATTRIBUTES = sorted(_RESOURCE_ATTRIBUTES)
METRIC_ATTRIBUTES = sorted({name for s in METRIC_FIELDS.values() for name in s.names})

# One LLM span and one tool span per convention: (LLM span name, LLM attributes, tool
# attributes). The hostile attribute replaces or joins these.
SPAN_CONVENTIONS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "genai_current": ("chat gpt-4o", {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 10,
        "gen_ai.usage.output_tokens": 5, "gen_ai.response.finish_reasons": ["stop"],
    }, {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}),
    "genai_legacy": ("chat gpt-4o", {
        "gen_ai.operation.name": "chat", "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-4o", "gen_ai.usage.prompt_tokens": 10,
        "gen_ai.usage.completion_tokens": 5,
    }, {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}),
    "openinference": ("ChatOpenAI", {
        "openinference.span.kind": "LLM", "llm.model_name": "gpt-4o",
        "llm.token_count.prompt": 10, "llm.input_messages.0.message.content": "hi",
    }, {"openinference.span.kind": "TOOL", "tool.name": "search"}),
    "openllmetry": ("openai.chat", {
        "llm.request.type": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.prompt_tokens": 10, "gen_ai.prompt.0.content": "hi",
    }, {"traceloop.span.kind": "tool", "traceloop.entity.name": "search"}),
    "vllm": ("llm_request", {
        "gen_ai.request.model": "llama", "gen_ai.usage.prompt_tokens": 10,
        "gen_ai.latency.time_to_first_token": 0.05,
    }, {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}),
}


def any_value(v: Any) -> AnyValue:
    if isinstance(v, AnyValue):
        return v
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, list):
        return _array(*(any_value(x) for x in v))
    return AnyValue(string_value=v)


def attributes(values: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=any_value(v)) for k, v in values.items()]


class Batch:
    """Messages on ``otlp_spans`` and which message each trace id came from."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.trace_of: dict[str, int] = {}
        self.hostile_on: dict[int, str] = {}
        self._next = 1

    def trace_id(self) -> bytes:
        self._next += 1
        return self._next.to_bytes(16, "big")

    def add(self, request: ExportTraceServiceRequest) -> None:
        offset = len(self.messages)
        for r in request.resource_spans:
            for s in r.scope_spans:
                for span in s.spans:
                    self.trace_of[span.trace_id.hex()] = offset
        raw = request.SerializeToString()
        raw = raw.replace(INVALID_UTF8.encode(), b"\xff" * len(INVALID_UTF8))
        self.messages.append(Message(TOPICS.spans, 0, offset, None, raw, 0))

    def spans_message(self, hostile: dict[str, AnyValue], resource: dict[str, Any],
                      times: tuple[int, int] = (1_700_000_000_000_000_000,
                                                1_700_000_000_250_000_000)) -> None:
        """One message: a trace (LLM span, tool child) per convention with ``hostile`` set on
        both spans, under ``resource``; and a valid control trace under its own resource."""
        self.hostile_on[len(self.messages)] = ",".join(hostile)
        request = ExportTraceServiceRequest()
        spans = request.resource_spans.add(resource={"attributes": attributes(resource)}) \
            .scope_spans.add().spans
        for name, llm, tool in SPAN_CONVENTIONS.values():
            trace = self.trace_id()
            for span_id, parent, span_name, base in ((1, 0, name, llm), (2, 1, "search", tool)):
                merged = {k: v for k, v in base.items() if k not in hostile}
                spans.add(
                    trace_id=trace, span_id=span_id.to_bytes(8, "big"),
                    parent_span_id=parent.to_bytes(8, "big") if parent else b"",
                    name=span_name, start_time_unix_nano=times[0], end_time_unix_nano=times[1],
                    attributes=attributes({**merged, **hostile}),
                )
        control = request.resource_spans.add(resource={"attributes": attributes(
            {"service.name": "control"})}).scope_spans.add().spans
        control.add(trace_id=self.trace_id(), span_id=(9).to_bytes(8, "big"), name="chat m",
                    start_time_unix_nano=1, end_time_unix_nano=2,
                    attributes=attributes({"gen_ai.operation.name": "chat",
                                           "gen_ai.request.model": "m",
                                           "gen_ai.usage.input_tokens": 3}))
        self.add(request)


def every_hostile_span_batch() -> Batch:
    """One message per (attribute, hostile value), span and resource attributes alike."""
    batch = Batch()
    for name in SPAN_ATTRIBUTES:
        for value in HOSTILE.values():
            batch.spans_message({name: value}, {"service.name": "shop"})
    for name in RESOURCE_ATTRIBUTES:
        for value in HOSTILE.values():
            batch.spans_message({}, {"service.name": "shop", name: value})
    return batch


NAME_FIELDS = ("tenant", "service", "model", "provider", "agent", "tool_name", "tool_type",
               "tool_call_id", "error_type", "conversation_id", "prompt_version", "prompt_id",
               "finish_reason", "operation", "root_name", "token_type", "server_address",
               "response_model", "unit", "metric", "kind", "namespace", "component",
               "endpoint", "request_id", "model_version")


def check_record(record: Record) -> None:
    """What every record a stage writes satisfies, beyond decoding."""
    assert decode(encode(record)) == record  # re-decodes and re-validates
    dumped = record.model_dump()
    assert validate.non_finite(dumped) is None
    for field in NAME_FIELDS:
        value = dumped.get(field)
        if isinstance(value, str):
            assert len(value) <= validate.MAX_NAME_CHARS, (field, len(value))
            assert validate.text(value) == value, (field, value[:80])
    if isinstance(record, LLMCall):
        assert set(record.finish_reasons) <= FINISH_REASONS | {"other"}
        assert record.finish_reason in FINISH_REASONS | {"other", ""}
    if isinstance(record, GenAIMetric):
        assert record.operation in OPERATIONS | {"other", ""}


def split(outputs: list[Output]) -> tuple[dict[int, dict[str, Any]], list[Record]]:
    """Dead letters by source offset, and the records (checked)."""
    dead: dict[int, dict[str, Any]] = {}
    records: list[Record] = []
    for o in outputs:
        if o.topic == TOPICS.dead_letter:
            letter = json.loads(o.value)
            assert letter["reason"] in ("invalid_value", "decode_error", "schema_error",
                                        "too_large"), letter
            assert letter["detail"]
            dead[letter["source"]["offset"]] = letter
        else:
            record = decode(o.value)
            check_record(record)
            records.append(record)
    return dead, records


def accounted(batch: Batch, outputs: list[Output]) -> tuple[dict[int, dict], list[Record]]:
    """Every message normalised (a record of one of its traces) or dead-lettered."""
    dead, records = split(outputs)
    normalised = {batch.trace_of[r.trace_id] for r in records}  # type: ignore[attr-defined]
    missing = [m.offset for m in batch.messages if m.offset not in dead | dict.fromkeys(normalised)]
    assert not missing, f"messages neither normalised nor dead-lettered: {missing[:10]}"
    return dead, records


def registry_is_sane(registry: CollectorRegistry) -> None:
    for family in registry.collect():
        for s in family.samples:
            assert math.isfinite(s.value) and s.value >= 0, (s.name, s.labels, s.value)


# -- the finding, first ---------------------------------------------------------------------


@pytest.mark.parametrize("tokens", [AnyValue(int_value=-1), AnyValue(string_value="9" * 400)])
def test_negative_or_huge_tokens_reach_no_counter(tokens: AnyValue) -> None:
    """Issue 13 finding 1: ``input_tokens = -1`` (or 400 digits) made the metrics stage raise
    (``Counter.inc`` of a negative amount, OverflowError) and ``observer up`` exit."""
    batch = Batch()
    batch.spans_message({"gen_ai.usage.input_tokens": tokens}, {"service.name": "shop"})
    before = sample("observer_invalid_values_total", stage="normalizer", field="input_tokens")
    outputs = Normalizer(TOPICS).process(batch.messages)
    _, records = accounted(batch, outputs)
    current = next(r for r in records if isinstance(r, LLMCall) and r.provider == "openai")
    assert current.input_tokens is None and current.output_tokens == 5  # the rest is kept
    assert sample("observer_invalid_values_total", stage="normalizer",
                  field="input_tokens") > before
    registry = CollectorRegistry()
    metrics = DomainMetrics(MetricsConfig(), TOPICS, registry=registry)
    assert metrics.process([Message(o.topic, 0, i, None, o.value, 0)
                            for i, o in enumerate(outputs)]) == []
    registry_is_sane(registry)
    assert registry.get_sample_value("observer_llm_tokens_total", {
        "cluster": "", "service": "control", "model": "m", "type": "input"}) == 3


def test_a_record_produced_directly_with_hostile_numbers_does_not_decode() -> None:
    base = {"schema": "observer.llm/v1", "service": "s", "model": "m", "trace_id": "t",
            "span_id": "s"}
    for field, value in [("input_tokens", -5), ("input_tokens", 10**400), ("latency_ms", "NaN"),
                         ("time_to_first_token_ms", "Infinity"), ("start_time_unix_nano", 2**64),
                         ("output_chars", 10**13)]:
        raw = json.dumps({**base, field: value}).replace('"NaN"', "NaN") \
            .replace('"Infinity"', "Infinity").encode()
        with pytest.raises(ValueError) as caught:
            decode(raw)
        error: Any = caught.value
        assert error.reason == "invalid_value" and field in str(error)


# -- every attribute x every hostile value, through every span stage ------------------------


@pytest.fixture(scope="module")
def span_batch() -> Batch:
    return every_hostile_span_batch()


@pytest.fixture(scope="module")
def normalised(span_batch: Batch) -> list[Output]:
    return Normalizer(TOPICS).process(span_batch.messages)


def test_every_table_attribute_and_hostile_value_through_the_normaliser(
    span_batch: Batch, normalised: list[Output]
) -> None:
    dead, records = accounted(span_batch, normalised)
    # Only the messages holding invalid UTF-8 fail to parse; every other one is normalised.
    utf8 = {m.offset for m in span_batch.messages if b"\xff" * len(INVALID_UTF8) in m.value}
    assert set(dead) == utf8 and {d["reason"] for d in dead.values()} == {"decode_error"}
    # Every convention's LLM and tool spans gave a record in every other message, but where
    # the hostile value replaced what says a span is an LLM or tool call.
    per_message: dict[int, int] = {}
    for r in records:
        offset = span_batch.trace_of[r.trace_id]  # type: ignore[attr-defined]
        per_message[offset] = per_message.get(offset, 0) + 1
    for m in span_batch.messages:
        if m.offset not in utf8 and span_batch.hostile_on[m.offset] not in KIND_BY_ATTRIBUTE:
            assert per_message[m.offset] == len(SPAN_CONVENTIONS) * 2 + 1, m.offset


def test_hostile_content_with_capture_on(span_batch: Batch) -> None:
    """Stored content (capture on) is valid UTF-8 within the budget, whatever the spans held
    (lone surrogates from JSON escapes, NUL bytes, 100 kB, nesting past the decoder)."""
    content = [m for m in span_batch.messages
               if span_batch.hostile_on[m.offset] in CONTENT_ATTRIBUTES]
    normaliser = Normalizer(TOPICS, content=ContentConfig(capture=True, max_chars=1000))
    outputs = normaliser.process(content)
    batch = Batch()
    batch.messages, batch.trace_of = content, span_batch.trace_of
    _, records = accounted(batch, outputs)
    stored = [m["content"] for r in records if isinstance(r, LLMCall)
              for m in (r.input_content or []) + (r.output_content or [])]
    assert stored and all(validate.text(t, 1000, newlines=True) == t for t in stored)


def test_hostile_records_never_reach_a_metric_as_a_bad_number(normalised: list[Output]) -> None:
    registry = CollectorRegistry()
    metrics = DomainMetrics(MetricsConfig(), TOPICS, registry=registry)
    hostile = [json.dumps({"schema": "observer.llm/v1", "service": "s", "model": "m",
                           "trace_id": "t", "span_id": "s", "input_tokens": v}).encode()
               for v in (-1, 10**400, 1e308, "x")] + [b"[" * 100_000, b'{"schema": 1}']
    values = [o.value for o in normalised if o.topic != TOPICS.dead_letter] + hostile
    messages = [Message(TOPICS.llm, 0, i, None, v, 0) for i, v in enumerate(values)]
    dead = metrics.process(messages)
    assert sorted(json.loads(d.value)["source"]["offset"] for d in dead) == list(
        range(len(values) - len(hostile), len(values)))
    registry_is_sane(registry)


def test_every_hostile_value_through_trace_grouping(span_batch: Batch) -> None:
    clock = FakeClock()
    grouper = TraceGrouper(TOPICS, PathsConfig(grace_s=0, timeout_s=5, max_open_traces=100),
                           clock=clock)
    outputs = grouper.process(span_batch.messages)  # evicts past 100 open traces
    clock.now = 10
    outputs += grouper.tick()
    dead, paths = split(outputs)
    utf8 = {m.offset for m in span_batch.messages if b"\xff" * len(INVALID_UTF8) in m.value}
    assert set(dead) == utf8
    grouped = {span_batch.trace_of[p.trace_id] for p in paths}  # type: ignore[attr-defined]
    assert grouped | utf8 == {m.offset for m in span_batch.messages}
    assert all(isinstance(p, PathRecord) for p in paths)


def test_drift_engine_fed_normalised_and_hostile_records(normalised: list[Output]) -> None:
    features = {"llm": [FeatureSpec(name="input_tokens", kind="numeric"),
                        FeatureSpec(name="latency_ms", kind="numeric"),
                        FeatureSpec(name="finish_reason", kind="categorical")]}
    engine = DriftEngine(DriftConfig(window_size=200, reference="first_n",
                                     reference_records=200, features=features), TOPICS)
    good = [o.value for o in normalised if o.topic == TOPICS.llm]
    hostile = [
        b'{"schema":"observer.llm/v1","service":"s","model":"m","trace_id":"t","span_id":"s",'
        b'"latency_ms":NaN}',
        b'{"schema":"observer.llm/v1","service":"s","model":"m","trace_id":"t","span_id":"s",'
        b'"input_tokens":-5}',
        b'{"schema":"observer.llm/v1","service":"s","model":"m","trace_id":"t","span_id":"s",'
        b'"input_tokens":' + b"9" * 5000 + b"}",
        b"[" * 100_000,
        b"\xff\xfe",
    ]
    values = good + hostile
    outputs = engine.process([Message(TOPICS.llm, 0, i, None, v, 0) for i, v in enumerate(values)])
    dead, results = split(outputs)
    assert sorted(dead) == list(range(len(good), len(values)))
    assert results and all(isinstance(r, DriftResult) for r in results)


def test_trigger_stage_dead_letters_hostile_drift_results(tmp_path: Path) -> None:
    cfg = TriggerConfig(ledger_path=tmp_path / "ledger.sqlite",
                        policies=[PolicyConfig(name="retrain", consecutive_windows=1)])
    stage = TriggerStage(cfg, TOPICS)
    result = json.loads(encode(DriftResult(
        segment={"service": "s"}, segment_key="s", record_type="llm", window_index=1,
        n_reference=10, n_current=10, features=[], drift_share=0.1, dataset_drift=False,
        closed_at_unix_nano=1)))
    raws = [json.dumps({**result, "drift_share": v}).encode()
            for v in ("NaN", "Infinity", -1e400)] + [b"[" * 100_000, b"\xff"]
    raws = [r.replace(b'"NaN"', b"NaN").replace(b'"Infinity"', b"Infinity") for r in raws]
    try:
        outputs = stage.process([Message(TOPICS.drift, 0, i, None, r, 0)
                                 for i, r in enumerate(raws)])
    finally:
        stage.close()
    dead, _ = split(outputs)
    assert sorted(dead) == list(range(len(raws)))
    assert {dead[0]["reason"], dead[1]["reason"], dead[2]["reason"]} == {"invalid_value"}


# -- random spans: ids, times, names and hostile attributes together -------------------------

ANY_VALUES = st.sampled_from(list(HOSTILE.values()))
U64 = st.integers(0, 2**64 - 1)


@st.composite
def hostile_span_requests(draw: st.DrawFn) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource = {name: draw(ANY_VALUES) for name in draw(st.lists(
        st.sampled_from(RESOURCE_ATTRIBUTES), max_size=2, unique=True))}
    spans = request.resource_spans.add(resource={"attributes": attributes(resource)}) \
        .scope_spans.add().spans
    for _ in range(draw(st.integers(1, 4))):
        convention = draw(st.sampled_from(sorted(SPAN_CONVENTIONS)))
        name, llm, tool = SPAN_CONVENTIONS[convention]
        base = dict(draw(st.sampled_from([llm, tool])))
        for key in draw(st.lists(st.sampled_from(SPAN_ATTRIBUTES), max_size=4, unique=True)):
            base[key] = draw(ANY_VALUES)
        spans.add(
            trace_id=draw(st.sampled_from([bytes(16), b"", b"t" * 15, b"t" * 16, b"u" * 16])),
            span_id=draw(st.sampled_from([bytes(8), b"s" * 8, b"r" * 8, b"x" * 9])),
            parent_span_id=draw(st.sampled_from([b"", b"s" * 8, b"p" * 3])),
            name=draw(st.text(max_size=300)),
            start_time_unix_nano=draw(U64),
            end_time_unix_nano=draw(U64),
            status=Status(code=draw(st.sampled_from([0, 1, 2]))),
            attributes=attributes(base),
        )
    return request


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hostile_span_requests(), min_size=1, max_size=4))
def test_random_hostile_spans_never_escape(requests: list[ExportTraceServiceRequest]) -> None:
    messages = []
    for i, r in enumerate(requests):
        raw = r.SerializeToString().replace(INVALID_UTF8.encode(), b"\xff" * len(INVALID_UTF8))
        messages.append(Message(TOPICS.spans, 0, i, None, raw, 0))
    outputs = Normalizer(TOPICS).process(messages)
    dead, records = split(outputs)
    for m, r in zip(messages, requests):
        usable = [s for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans
                  if len(s.trace_id) == 16 and any(s.trace_id) and len(s.span_id) == 8
                  and any(s.span_id)]
        if len(usable) < sum(len(ss.spans) for rs in r.resource_spans for ss in rs.scope_spans):
            assert m.offset in dead  # spans left out: the message is dead-lettered
    assert all(isinstance(x, (LLMCall, ToolCall)) for x in records)

    clock = FakeClock()
    grouper = TraceGrouper(TOPICS, PathsConfig(grace_s=0, timeout_s=1), clock=clock)
    out = grouper.process(messages)
    clock.now = 5
    split(out + grouper.tick())
    registry = CollectorRegistry()
    metrics = DomainMetrics(MetricsConfig(), TOPICS, registry=registry)
    assert metrics.process([Message(o.topic, 0, 0, None, o.value, 0) for o in outputs
                            if o.topic != TOPICS.dead_letter]) == []
    registry_is_sane(registry)


# -- GenAI metric points ---------------------------------------------------------------------

FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e308, -1e308])
COUNTS = st.integers(0, 2**64 - 1)


@st.composite
def hostile_metric_requests(draw: st.DrawFn) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    resource = {name: draw(ANY_VALUES) for name in draw(st.lists(
        st.sampled_from(RESOURCE_ATTRIBUTES), max_size=2, unique=True))}
    scope = request.resource_metrics.add(resource={"attributes": attributes(resource)}) \
        .scope_metrics.add()
    cumulative = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
    temporality = draw(st.sampled_from([cumulative, 1, 0]))
    point_attributes = attributes({k: draw(ANY_VALUES) for k in draw(st.lists(
        st.sampled_from(METRIC_ATTRIBUTES), max_size=3, unique=True))})
    times = {"start_time_unix_nano": draw(U64), "time_unix_nano": draw(U64)}
    kind = draw(st.sampled_from(["histogram", "sum", "gauge", "summary", "exponential"]))
    if kind == "histogram":
        metric = scope.metrics.add(name="gen_ai.client.token.usage")
        metric.histogram.aggregation_temporality = temporality
        n = draw(st.integers(0, 3))
        metric.histogram.data_points.add(
            count=draw(COUNTS), sum=draw(FLOATS), min=draw(FLOATS), max=draw(FLOATS),
            explicit_bounds=draw(st.lists(FLOATS, min_size=n, max_size=n)),
            bucket_counts=draw(st.lists(COUNTS, min_size=n + 1, max_size=n + 1)),
            attributes=point_attributes, **times)
    elif kind == "sum":
        metric = scope.metrics.add(name="gen_ai.client.inference.tokens")
        metric.sum.aggregation_temporality = temporality
        metric.sum.is_monotonic = draw(st.booleans())
        point = metric.sum.data_points.add(attributes=point_attributes, **times)
        if draw(st.booleans()):
            point.as_double = draw(FLOATS)
        else:
            point.as_int = draw(st.integers(-(2**63), 2**63 - 1))
    elif kind == "gauge":
        metric = scope.metrics.add(name="gen_ai.server.queue.size")
        metric.gauge.data_points.add(as_double=draw(FLOATS), attributes=point_attributes,
                                     **times)
    elif kind == "summary":
        metric = scope.metrics.add(name="gen_ai.server.request.duration")
        metric.summary.data_points.add(count=draw(COUNTS), sum=draw(FLOATS),
                                       attributes=point_attributes, **times)
    else:
        metric = scope.metrics.add(name="gen_ai.client.operation.duration")
        metric.exponential_histogram.aggregation_temporality = temporality
        metric.exponential_histogram.data_points.add(
            count=draw(COUNTS), sum=draw(FLOATS), attributes=point_attributes, **times)
    metric.unit = draw(st.sampled_from(["s", "", "x" * 1000, "\x00"]))
    return request


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hostile_metric_requests(), min_size=1, max_size=6))
def test_random_hostile_metric_points_never_escape(
    requests: list[ExportMetricsServiceRequest],
) -> None:
    stage = GenAIMetricsNormalizer(TOPICS)
    raws = [r.SerializeToString().replace(INVALID_UTF8.encode(), b"\xff" * len(INVALID_UTF8))
            for r in requests]
    # Each message twice: cumulative series then give deltas against hostile points.
    messages = [Message(TOPICS.metrics, 0, i, None, raw, 0)
                for i, raw in enumerate(raws + raws + [b"\xff junk"])]
    outputs = stage.process(messages)
    dead, records = split(outputs)
    unparsable = {i for i, raw in enumerate(raws) if b"\xff" * len(INVALID_UTF8) in raw}
    assert set(dead) == unparsable | {i + len(raws) for i in unparsable} | {2 * len(raws)}
    # Every point of every other message is one record (its bad numbers left out).
    points = sum(1 for i, r in enumerate(requests) if i not in unparsable
                 for rm in r.resource_metrics for sm in rm.scope_metrics for m in sm.metrics)
    assert len(records) == 2 * points


# -- KServe events ---------------------------------------------------------------------------

HOSTILE_BODIES: list[bytes] = [
    b'{"instances": [[NaN, Infinity, -Infinity, 1e999]]}',
    b'{"instances": [[' + b"9" * 400 + b"]]}",
    b'{"instances": [[' + b"9" * 5000 + b"]]}",
    b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"instances": [["\\ud800", "a\\u0000b"]], "model_name": "\\udfff", "model_version": [1]}',
    b'{"inputs": [{"name": "x", "shape": [100000000000000000000, 0], "data": []}]}',
    b'{"inputs": [{"name": "x", "shape": [true], "data": [1]}]}',
    b'{"inputs": [{"name": "' + b"n" * 100_000 + b'", "shape": [1], "data": [1e308]}]}',
    b'{"predictions": [' + b"[" * 900 + b"1" + b"]" * 900 + b"]}",
    b'{"predictions": [{"a": NaN, "b": {"c": -Infinity}}]}',
    b"\xff\xfe not json",
    b"",
]
HOSTILE_ATTRIBUTES: list[dict[str, bytes]] = [
    {"ce_time": b"9999-12-31T23:59:59.999999999Z"},
    {"ce_time": b"0001-01-01T00:00:00+14:00"},
    {"ce_time": b"1969-12-31T23:59:59Z"},
    {"ce_namespace": b"\xff\xfe", "ce_component": b"a\x00b" * 1000},
    {"ce_inferenceservicename": "\u2028".encode() * 300, "ce_endpoint": b"x" * 100_000},
]


def kserve_message(offset: int, side: str, request_id: str, body: bytes,
                   extra: dict[str, bytes]) -> Message:
    headers = {"ce_specversion": b"1.0", "ce_id": request_id.encode(), "ce_source": b"/",
               "ce_inferenceservicename": b"iris", "content-type": b"application/json",
               "ce_type": f"org.kubeflow.serving.inference.{side}".encode(), **extra}
    return Message(TOPICS.kserve_events, 0, offset, request_id.encode(), body,
                   0, tuple(headers.items()))


def test_hostile_kserve_payloads_and_attributes() -> None:
    clock = FakeClock()
    stage = PredictionPairer(TOPICS, KServeConfig(pair_timeout_s=1), clock=clock)
    messages = []
    cases = [(body, {}) for body in HOSTILE_BODIES] + [(b'{"instances": [[1]]}', a)
                                                        for a in HOSTILE_ATTRIBUTES]
    for i, (body, extra) in enumerate(cases):
        for side in ("request", "response"):
            messages.append(kserve_message(len(messages), side, f"r{i}", body, extra))
    # A response stamped before its request: a negative latency is no latency.
    messages.append(kserve_message(len(messages), "request", "skew", b'{"instances": [[1]]}',
                                   {"ce_time": b"2030-01-01T00:00:01Z"}))
    messages.append(kserve_message(len(messages), "response", "skew", b'{"predictions": [1]}',
                                   {"ce_time": b"2030-01-01T00:00:00Z"}))
    messages.append(Message(TOPICS.kserve_events, 0, len(messages), None, b"junk", 0))
    outputs = stage.process(messages)
    clock.now = 10
    outputs += stage.tick()
    dead, predictions = split(outputs)
    assert list(dead) == [len(messages) - 1]  # only the message that is no CloudEvent
    by_id = {p.request_id: p for p in predictions}  # type: ignore[attr-defined]
    assert set(by_id) == {f"r{i}" for i in range(len(cases))} | {"skew"}
    assert by_id["skew"].latency_ms is None  # type: ignore[attr-defined]
    assert all(isinstance(p, Prediction) for p in predictions)


# -- the real pipeline -----------------------------------------------------------------------


def test_observer_up_survives_hostile_spans_from_the_otel_sdk(
    kafka_config: KafkaConfig, free_port: Any
) -> None:
    """The finding end to end: the OTel SDK exports spans with ``input_tokens = -1``, 2**63-1
    and a 400-digit string to ``observer up``'s receiver; the spans are accepted, the
    normaliser and the metrics stage keep running (no restart), and valid spans sent after
    the bad ones are normalised and counted."""
    from observer.runtime import Runtime

    service = f"hostile-{uuid.uuid4().hex[:8]}"
    cfg = ObserverConfig(
        kafka=kafka_config,
        receiver=ReceiverConfig(http_port=free_port(), grpc_port=free_port()),
        admin=AdminConfig(port=free_port()),
    )
    runtime = Runtime(cfg, ["collect", "normalize", "metrics"]).start()
    try:
        assert runtime.wait_assigned(60)
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(
            endpoint=runtime.endpoints()["otlp_http"])))
        tracer = provider.get_tracer("hostile")
        invalid_before = sample("observer_invalid_values_total", stage="normalizer",
                                field="input_tokens")

        def chat(tokens: Any, model: str) -> None:
            with tracer.start_as_current_span(f"chat {model}") as span:
                span.set_attribute("gen_ai.operation.name", "chat")
                span.set_attribute("gen_ai.request.model", model)
                span.set_attribute("gen_ai.usage.input_tokens", tokens)
                span.set_attribute("gen_ai.usage.output_tokens", 2)

        for bad in (-1, 2**63 - 1, "9" * 400):
            chat(bad, "bad")
        for _ in range(3):
            chat(7, "good")
        provider.force_flush()

        def tokens(model: str, kind: str) -> float:
            return sample("observer_llm_tokens_total", cluster="", service=service, model=model,
                          type=kind)

        wait_for(lambda: tokens("good", "input") == 21, 60, "the valid spans' tokens counted")
        wait_for(lambda: sample("observer_llm_calls_total", cluster="", service=service,
                                model="bad", finish_reason="unknown") == 3, 30, "the bad spans' calls")
        assert tokens("bad", "input") == 0 and tokens("bad", "output") == 6
        assert sample("observer_invalid_values_total", stage="normalizer",
                      field="input_tokens") - invalid_before >= 3
        llm = [decode(m.value) for m in drain(kafka_config, runtime.topics.llm, 6)]
        assert sorted((r.model, r.input_tokens) for r in llm  # type: ignore[attr-defined]
                      if r.service == service) == [  # type: ignore[attr-defined]
            ("bad", None), ("bad", None), ("bad", None), ("good", 7), ("good", 7), ("good", 7)]
        assert runtime.errors() == {}
        assert all(s.get("restarts", 0) == 0 for s in runtime.stage_states().values())
        admin = runtime.endpoints()["admin"]
        assert httpx.get(f"{admin}/healthz", timeout=10).status_code == 200
        provider.shutdown()
    finally:
        runtime.stop()
