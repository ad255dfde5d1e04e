"""The normaliser's and trace grouping's faster paths give what the plain definitions give.

Issue 18: attribute lookup through a compiled table, one pass over a span's attributes, JSON
read by pydantic-core with ``json`` deciding what it refuses, and counters incremented per
request. Each is compared here with the definition it replaced, on hostile values too.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client import REGISTRY

from observer.collectors.common.genai_mapping import LLM_FIELDS, TOOL_FIELDS, Source, lookup
from observer.collectors.metrics.genai_metrics import METRIC_FIELDS
from observer.collectors.normalize.message_content import _compact_json, loads
from observer.collectors.normalize.normalizer import normalize_request
from observer.core import validate
from observer.core.records import LLMCall


def plain_lookup(attributes: Mapping[str, Any], fields: Mapping[str, Source],
                 stage: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """The lookup as first written (each field's names in priority order), and the fields
    it counts as invalid."""
    found: dict[str, Any] = {}
    invalid: list[str] = []
    for field, source in fields.items():
        present = False
        for name in source.names:
            if name in attributes:
                present = True
                value = source.kind.read(attributes[name])
                if value is not None:
                    found[field] = value
                    break
        else:
            if present and stage is not None:
                invalid.append(field)
    return found, invalid


HOSTILE_VALUES: list[Any] = [
    "gpt-4o", "", "x" * 300, "a\x00b", "\ud800", 7, -1, 2**70, 1.5, 12.0, float("nan"),
    True, ["stop", "LENGTH"], [], {"k": "v"}, b"\xff", None, "12", " 7 ", "1e3", "STOP",
]


def invalid_counts(stage: str, fields: Mapping[str, Source]) -> dict[str, float]:
    # The counter's own children: REGISTRY.get_sample_value collects every metric of the
    # process, which in the full suite made this test take 14 s instead of under one.
    return {field: validate.INVALID_VALUES.labels(stage=stage, field=field)._value.get()
            for field in fields}


@pytest.mark.parametrize("table", [LLM_FIELDS, TOOL_FIELDS, METRIC_FIELDS],
                         ids=["llm", "tool", "metrics"])
def test_compiled_lookup_matches_the_plain_definition(table: Mapping[str, Source]) -> None:
    rng = random.Random(18)
    names = sorted({n for s in table.values() for n in s.names}) + ["unrelated.key"]
    for case in range(300):
        attributes = {name: rng.choice(HOSTILE_VALUES)
                      for name in rng.sample(names, rng.randint(0, min(12, len(names))))}
        stage = "hotpath"
        before = invalid_counts(stage, table)
        got = lookup(attributes, table, stage)
        want, want_invalid = plain_lookup(attributes, table, stage)
        assert json.dumps(got, default=str) == json.dumps(want, default=str), attributes
        assert list(got) == list(want)  # the table's field order, as before
        after = invalid_counts(stage, table)
        counted = {f: after[f] - before[f] for f in after if after[f] != before[f]}
        assert counted == {f: 1.0 for f in want_invalid}, attributes


def test_a_table_made_per_call_is_read_like_a_constant_one() -> None:
    # Not compiled once by identity (a fresh dict each time), with the same results.
    for _ in range(100):
        table = {"model": LLM_FIELDS["model"]}
        assert lookup({"gen_ai.response.model": "m"}, table) == {"model": "m"}


HOSTILE_JSON = [
    '[{"role": "user", "parts": [{"type": "text", "content": "hi"}]}]', "1e400", "-1e400",
    "[NaN]", "-Infinity", '"\\ud800"', '"\\ud83d\\ude00"', '{"a": 1, "a": 2}', "  [1] ", "[1]x",
    '"a\\u0000b"', '"a\x01"', str(2**64), str(-2**63 - 1), "1" * 5000, "[" * 3000 + "]" * 3000,
    "\ufeff[1]", "[1,]", "123abc", '"\t"', "tru", "0001", "[-]", "4.9e-324", "0.1e1",
    "123456789012345678901234567890.5", '"\u2028"', "", "plain text, not JSON",
]


@pytest.mark.parametrize("text", HOSTILE_JSON, ids=range(len(HOSTILE_JSON)))
def test_loads_gives_what_json_gives(text: str) -> None:
    def outcome(parse: Any) -> tuple[str, str]:
        try:
            return "value", repr(parse(text))
        except (ValueError, RecursionError) as e:
            return "error", type(e).__name__

    kind, value = outcome(loads)
    assert (kind, value if kind == "value" else "") == (
        outcome(json.loads)[0], outcome(json.loads)[1] if kind == "value" else "")


def test_compact_json_is_json_dumps() -> None:
    for value in ([["user", "é\n\x00\"\\"]], [["", "\ud800 ☃ 𝄞"]], [], [["a", ""]]):
        assert _compact_json(value) == json.dumps(value, separators=(",", ":"))


def _kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, list):
        return KeyValue(key=key, value=AnyValue(array_value=ArrayValue(
            values=[AnyValue(string_value=v) for v in value])))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def test_one_pass_reads_a_mapped_attribute_that_is_also_content() -> None:
    """``gen_ai.completion.0.finish_reason`` is both a mapped attribute and under a content
    prefix: the one pass over the attributes must feed both."""
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add(
        trace_id=b"t" * 16, span_id=b"s" * 8, name="openai.chat", end_time_unix_nano=10)
    span.attributes.extend([
        _kv("llm.request.type", "chat"), _kv("gen_ai.system", "openai"),
        _kv("gen_ai.prompt.0.role", "user"), _kv("gen_ai.prompt.0.content", "Hello there."),
        _kv("gen_ai.completion.0.content", "Hi."),
        _kv("gen_ai.completion.0.finish_reason", "STOP"),
        _kv("gen_ai.request.model", "m"), _kv("gen_ai.request.model", "last wins"),
    ])
    (call,) = normalize_request(request)
    assert isinstance(call, LLMCall)
    assert call.finish_reasons == ["stop"] and call.model == "last wins"
    assert (call.input_messages, call.input_chars, call.output_chars) == (1, 12, 3)


def test_spans_are_counted_by_kind_per_request() -> None:
    def count(kind: str) -> float:
        return REGISTRY.get_sample_value("observer_normalizer_spans_total", {"kind": kind}) or 0.0

    request = ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    for i, operation in enumerate(["chat", "chat", "execute_tool", "invoke_agent"]):
        spans.add(trace_id=b"t" * 16, span_id=bytes([i + 1]) * 8, name=operation,
                  attributes=[_kv("gen_ai.operation.name", operation)])
    spans.add(trace_id=bytes(16), span_id=b"z" * 8, name="chat",  # unusable ids: still counted
              attributes=[_kv("gen_ai.operation.name", "chat")])
    before = {kind: count(kind) for kind in ("llm", "tool", "other")}
    normalize_request(request)
    assert {k: count(k) - v for k, v in before.items()} == {"llm": 3.0, "tool": 1.0, "other": 1.0}


def test_a_name_past_the_cap_or_with_controls_is_checked_like_before() -> None:
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add(
        trace_id=b"t" * 16, span_id=b"s" * 8, name="chat")
    span.attributes.extend([_kv("gen_ai.operation.name", "chat"),
                            _kv("gen_ai.request.model", "m\x00" + "x" * 400)])
    (call,) = normalize_request(request)
    assert call.model == validate.text("m\x00" + "x" * 400)
    assert len(call.model) == validate.MAX_NAME_CHARS and "\x00" not in call.model


# -- attributes read in C (collectors/common/span_attributes.py) ------------------------------

def _random_value(rng: random.Random, depth: int = 0) -> AnyValue:
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return AnyValue(string_value=rng.choice(["", "gpt-4o", "é☃𝄞", "a\x00b", "x" * 300]))
    if kind == 1:
        return AnyValue(bool_value=rng.random() < 0.5)
    if kind == 2:
        return AnyValue(int_value=rng.choice([0, 7, -1, 2**63 - 1, -2**63]))
    if kind == 3:
        return AnyValue(double_value=rng.choice([0.0, -0.0, 1.5, float("nan"), float("inf"), 5e-324]))
    if kind == 4:
        return AnyValue(bytes_value=rng.choice([b"", b"\xff\x00"]))
    if kind == 5:
        return AnyValue()  # unset
    if kind == 6:
        return AnyValue(array_value=ArrayValue(
            values=[_random_value(rng, depth + 1) for _ in range(rng.randrange(3))]))
    from opentelemetry.proto.common.v1.common_pb2 import KeyValueList
    return AnyValue(kvlist_value=KeyValueList(values=[
        KeyValue(key=rng.choice(["k", "k", "é"]), value=_random_value(rng, depth + 1))
        for _ in range(rng.randrange(3))]))


def _random_request(rng: random.Random, keys: list[str]) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    for _ in range(rng.randrange(1, 3)):
        resource = request.resource_spans.add()
        for _ in range(rng.randrange(0, 3)):
            scope = resource.scope_spans.add()
            for _ in range(rng.randrange(0, 4)):
                span = scope.spans.add(trace_id=b"t" * 16, span_id=b"s" * 8, name="chat")
                span.attributes.extend(
                    KeyValue(key=rng.choice(keys), value=_random_value(rng))
                    for _ in range(rng.randrange(0, 8)))
    return request


def _spans(request: ExportTraceServiceRequest) -> list[Span]:
    return [s for r in request.resource_spans for sc in r.scope_spans for s in sc.spans]


def test_attributes_read_in_c_are_those_protobuf_gives() -> None:
    from observer.collectors.common.otlp_attributes import attribute_values
    from observer.collectors.common.span_attributes import native, scan

    assert native is not None, "the C reader was not built (pip install -e . needs a compiler)"
    rng = random.Random(18)
    wanted = frozenset({"gen_ai.request.model", "gen_ai.usage.input_tokens", "k", ""})
    prefixes = ("gen_ai.prompt.", "input.value")
    keys = [*wanted, "gen_ai.prompt.0.content", "input.value", "input.values", "other", "é"]
    for _ in range(300):
        request = _random_request(rng, keys)
        raw = request.SerializeToString()
        got = scan(raw, request, wanted, prefixes)
        assert got is not None
        want = []
        for span in _spans(request):
            content_keys = frozenset(kv.key for kv in span.attributes if kv.key.startswith(prefixes))
            want.append((attribute_values(span.attributes, wanted),
                         attribute_values(span.attributes, content_keys) or None))
        # repr: NaN is not equal to itself, its repr is
        assert repr(got) == repr(want)


def _raw_span_with_attribute(attribute: bytes) -> bytes:
    """A request of one span (valid ids) whose attribute field 9 holds ``attribute`` as is."""
    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2, len(payload)]) + payload
    operation = field(1, b"gen_ai.operation.name") + field(2, field(1, b"chat"))
    span = (field(1, b"t" * 16) + field(2, b"s" * 8) + field(5, b"chat")
            + field(9, operation) + field(9, attribute))
    return field(1, field(2, field(2, span)))


@pytest.mark.parametrize("attribute", [
    # key, then an AnyValue with two value fields: protobuf keeps the last
    b"\x0a\x14gen_ai.request.model\x12\x06\x0a\x01a\x0a\x01b",
    # a string value given as two fields of different kinds (string, then int)
    b"\x0a\x14gen_ai.request.model\x12\x05\x0a\x01a\x18\x07",
    # the value message given twice: protobuf merges them
    b"\x0a\x14gen_ai.request.model\x12\x03\x0a\x01a\x12\x03\x0a\x01b",
    # the key given twice
    b"\x0a\x01x\x0a\x14gen_ai.request.model\x12\x03\x0a\x01a",
], ids=["two-strings", "string-then-int", "value-twice", "key-twice"])
def test_unusual_encodings_fall_back_to_protobuf(attribute: bytes) -> None:
    from observer.collectors.common.span_attributes import scan
    from observer.collectors.normalize.normalizer import _normalize

    raw = _raw_span_with_attribute(attribute)
    request = ExportTraceServiceRequest.FromString(raw)  # protobuf takes it
    assert scan(raw, request, frozenset({"gen_ai.request.model"})) is None
    (with_raw,), _ = _normalize(request, None, None, None, raw)
    (without,), _ = _normalize(request, None, None, None, None)
    assert with_raw == without  # the model is protobuf's reading either way


def test_records_are_the_same_with_attributes_read_in_c() -> None:
    from observer.collectors.normalize.normalizer import DEFAULT_DESCRIPTORS, _normalize

    rng = random.Random(7)
    keys = ["gen_ai.request.model", "gen_ai.usage.input_tokens", "gen_ai.response.finish_reasons",
            "gen_ai.agent.name", "gen_ai.input.messages", "gen_ai.output.messages",
            "gen_ai.prompt.0.content", "gen_ai.completion.0.content", "input.value", "other"]
    compared = 0
    for _ in range(200):
        request = _random_request(rng, keys)
        for i, span in enumerate(_spans(request)):
            span.span_id = bytes([i + 1]) * 8
            operation = rng.choice(["chat", "execute_tool", "invoke_agent"])
            span.attributes.add(key="gen_ai.operation.name", value=AnyValue(string_value=operation))
            if rng.random() < 0.5:
                span.attributes.add(key="gen_ai.input.messages", value=AnyValue(
                    string_value=json.dumps([{"role": "user", "content": "Hi. Can you help?"}])))
        raw = request.SerializeToString()
        texts_c: dict[Any, Any] = {}
        texts_py: dict[Any, Any] = {}
        with_c = _normalize(request, None, DEFAULT_DESCRIPTORS, texts_c, raw)
        without = _normalize(request, None, DEFAULT_DESCRIPTORS, texts_py, None)
        assert repr(with_c) == repr(without) and texts_c == texts_py
        compared += len(with_c[0])
    assert compared > 200  # records were made, not only compared empty
