"""The receivers' split of a trace export into otlp_spans messages, checked against the contract.

The contract (TOPIC_TABLE, otlp_spans): every trace is whole in one message, on the partition Kafka's
default murmur2 placement gives its hex id; a message's key is one of its trace ids; spans and
their resource and scope wrappers are the client's; invalid ids are dropped and counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.partitioner.default import murmur2 as kafka_python_murmur2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from observer.collectors.receiver import trace_split
from observer.collectors.receiver.otlp_wire import resource_views
from observer.collectors.receiver.trace_split import split_by_trace, valid_ids
from observer.core.partitioner import partition_indexes

PATHS = ("C", "python")


@contextmanager
def split_path(path: str) -> Iterator[None]:
    """Split with the C extension, or with the Python path that stands in for it."""
    built = trace_split.native
    if path == "python":
        trace_split.native = None
    try:
        yield
    finally:
        trace_split.native = built


def test_the_c_extension_is_built() -> None:
    # The install compiles it (pyproject.toml, ext-modules); without it every C test below
    # would quietly test the Python path twice.
    assert trace_split.native is not None, "collectors.receiver._trace_split was not built (no C compiler?)"


def kafka_partition(key: bytes, partitions: int) -> int:
    return (kafka_python_murmur2(key) & 0x7FFFFFFF) % partitions


@given(st.lists(st.binary(max_size=64), min_size=1, max_size=20), st.integers(1, 64))
def test_partitioner_matches_kafka_python(keys: list[bytes], partitions: int) -> None:
    assert partition_indexes(keys, partitions) == [kafka_partition(k, partitions) for k in keys]


_ids = st.sampled_from(
    [bytes([i]) * 16 for i in range(1, 9)] + [bytes(16), bytes([7]) * 8]  # two invalid
)
_well_formed_ids = st.sampled_from([bytes([i]) * 16 for i in range(1, 9)] + [bytes(16)])


@st.composite
def requests(draw: st.DrawFn) -> ExportTraceServiceRequest:
    """Requests of up to 3 resources of up to 3 scopes; in half of them every id has its
    right length (all-zero ones included), the requests the C pass takes."""
    well_formed = draw(st.booleans())
    trace_ids = _well_formed_ids if well_formed else _ids
    span_ids = [bytes(8)] if well_formed else [bytes(8), b"\x01"]
    request = ExportTraceServiceRequest()
    for r in range(draw(st.integers(0, 3))):
        resource_spans = request.resource_spans.add(schema_url=draw(st.sampled_from(["", "s"])))
        if draw(st.booleans()):
            resource_spans.resource.CopyFrom(Resource(attributes=[
                KeyValue(key="service.name", value=AnyValue(string_value=f"svc{r}"))]))
        for s in range(draw(st.integers(0, 3))):
            scope = resource_spans.scope_spans.add()
            if draw(st.booleans()):
                scope.scope.CopyFrom(InstrumentationScope(name=f"scope{s}", version="1"))
            for i in range(draw(st.integers(0, 12))):
                scope.spans.add(
                    trace_id=draw(trace_ids),
                    span_id=draw(st.sampled_from([bytes([i + 1]) * 8, *span_ids])),
                    name=draw(st.text(max_size=300)),  # past 127 bytes: two-byte lengths
                    attributes=[KeyValue(key="k", value=AnyValue(int_value=i))],
                )
    return request


def _placed(request: ExportTraceServiceRequest) -> list[tuple[bytes, bytes, bytes]]:
    """(span bytes, resource bytes, scope bytes) of every valid span, for comparisons."""
    return [
        (span.SerializeToString(), rs.resource.SerializeToString(), ss.scope.SerializeToString())
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
        if valid_ids(span)
    ]


@settings(max_examples=150, deadline=None)
@given(requests(), st.integers(1, 8), st.sampled_from([1, 600, 5000, 1_000_000]), st.booleans())
def test_split_keeps_the_contract(
    request: ExportTraceServiceRequest, partitions: int, limit: int, with_raw: bool
) -> None:
    raw = request.SerializeToString() if with_raw else None
    for path in PATHS:
        with split_path(path):
            _check_contract(request, split_by_trace(request, partitions, limit, raw), partitions,
                            limit)


def _check_contract(
    request: ExportTraceServiceRequest, split: trace_split.TraceSplit, partitions: int, limit: int
) -> None:
    spans = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert split.accepted == sum(valid_ids(s) for s in spans)
    assert split.rejected == len(spans) - split.accepted

    seen: dict[bytes, str] = {}
    placed = []
    for key, body in split.encoded.items():
        message = ExportTraceServiceRequest.FromString(body)
        traces = {s.trace_id for rs in message.resource_spans for ss in rs.scope_spans
                  for s in ss.spans}
        assert bytes.fromhex(key) in traces
        partition = kafka_partition(key.encode(), partitions)
        for trace in traces:
            assert trace not in seen, "a trace split over two messages"
            seen[trace] = key
            assert kafka_partition(trace.hex().encode(), partitions) == partition
        if len(traces) > 1:
            assert len(body) <= limit
        placed += _placed(message)
    # Every valid span once, with its own resource and scope, nothing else.
    assert Counter(placed) == Counter(_placed(request))


@settings(max_examples=150, deadline=None)
@given(requests(), st.integers(1, 8), st.sampled_from([1, 600, 5000, 1_000_000]))
def test_c_and_python_place_the_same_spans_on_the_same_partitions(
    request: ExportTraceServiceRequest, partitions: int, limit: int
) -> None:
    """The Python path groups spans by trace where the C pass keeps request order, and its
    per-trace wrappers may cut a partition's share into more messages near the limit; every
    span still lands on the same partition, with its own resource and scope."""
    splits = []
    for path in PATHS:
        with split_path(path):
            splits.append(split_by_trace(request, partitions, limit))
    c, python = splits

    def held(split: trace_split.TraceSplit) -> dict[int, Counter]:
        by_partition: dict[int, Counter] = {}
        for key, body in split.encoded.items():
            spans = _placed(ExportTraceServiceRequest.FromString(body))
            by_partition.setdefault(kafka_partition(key.encode(), partitions), Counter()).update(spans)
        return by_partition

    assert held(c) == held(python)
    assert (c.accepted, c.rejected) == (python.accepted, python.rejected)
    if len(python.encoded) == len(c.encoded):  # nothing cut: the same keys as well
        assert sorted(c.encoded) == sorted(python.encoded)


@settings(max_examples=300, deadline=None)
@given(requests(), st.data())
def test_c_reader_survives_any_bytes(request: ExportTraceServiceRequest, data: st.DataObject) -> None:
    """Truncated, corrupted or foreign bytes: the C reader answers (messages or ``None``, the
    caller's cue to go on in Python) and never reads past its input."""
    raw = bytearray(request.SerializeToString())
    if raw and data.draw(st.booleans()):
        for _ in range(data.draw(st.integers(1, 4))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    raw = bytes(raw[: data.draw(st.integers(0, len(raw)))]) + data.draw(st.binary(max_size=8))
    resources = data.draw(st.lists(st.binary(max_size=20), max_size=3))
    placed = trace_split.native.split(raw, data.draw(st.integers(1, 64)), resources, 1_000_000)
    if placed is not None:
        messages, accepted, rejected = placed
        assert accepted >= 0 and rejected >= 0 and len(messages) <= accepted
        for key, body in messages:
            assert len(key) == 32 and int(key, 16) >= 0 and isinstance(body, bytes)


def test_c_reader_refuses_what_it_does_not_handle() -> None:
    """Ids of the wrong length, a wire type the schema does not declare, a resource list
    that does not match, a message over the limit: ``None``, and Python does the work."""
    span = Span(trace_id=bytes([1]) * 16, span_id=bytes([2]) * 8, name="ok")
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.append(span)
    raw = request.SerializeToString()
    split = trace_split.native.split
    (key, body), = split(raw, 4, [b""], 1_000_000)[0]
    assert key == "01" * 16 and ExportTraceServiceRequest.FromString(body) == request
    short = ExportTraceServiceRequest()
    short.CopyFrom(request)
    short.resource_spans[0].scope_spans[0].spans[0].span_id = b"\x02"
    assert split(short.SerializeToString(), 4, [b""], 1_000_000) is None
    assert split(raw, 4, [], 1_000_000) is None  # one ResourceSpans, no resource given
    assert split(raw, 4, [b""], len(body) - 1) is None
    assert split(b"\x10\x01", 4, [], 1_000_000) == ([], 0, 0)  # an unknown field: skipped
    assert split(b"\x08\x01", 4, [], 1_000_000) is None  # resource_spans as a varint
    assert split(b"\x0a\x02\x10\x01", 4, [b""], 1_000_000) is None  # scope_spans as a varint
    with pytest.raises(ValueError, match="partitions"):
        split(raw, 0, [b""], 1_000_000)
    with pytest.raises(TypeError, match="resources"):
        split(raw, 4, ["text"], 1_000_000)


def test_client_bytes_pass_through_in_any_field_order() -> None:
    """A span whose ids are not its first fields, or repeated, is judged as a parser reads
    it (the last value wins), and its bytes (unknown fields included) reach Kafka unchanged."""
    good = Span(trace_id=bytes([1]) * 16, span_id=bytes([2]) * 8, name="first").SerializeToString()
    name_first = (
        Span(name="ids last").SerializeToString()
        + Span(span_id=bytes([3]) * 8).SerializeToString()
        + Span(trace_id=bytes([4]) * 16).SerializeToString()
        + b"\xf8\x07\x2a"  # unknown varint field 127
    )
    repeated = good + Span(trace_id=bytes(16)).SerializeToString()  # last one wins: all zero

    def field(number: int, payload: bytes) -> bytes:
        n, length = len(payload), b""
        while n > 0x7F:
            length, n = length + bytes([n & 0x7F | 0x80]), n >> 7
        return bytes([number << 3 | 2]) + length + bytes([n]) + payload

    scope = field(1, InstrumentationScope(name="lib").SerializeToString())
    scope_spans = scope + field(2, name_first) + field(2, good) + field(2, repeated)
    raw = field(1, field(2, scope_spans) + field(3, b"schema"))
    request = ExportTraceServiceRequest.FromString(raw)

    (resource,) = resource_views(raw)
    assert resource.head == field(3, b"schema")
    assert resource.scopes[0].spans == [name_first, good, repeated]
    for path in PATHS:
        with split_path(path):
            split = split_by_trace(request, partitions=1, raw=raw)
        assert (split.accepted, split.rejected) == (2, 1), path
        (body,) = split.encoded.values()
        assert field(2, name_first) in body and field(2, good) in body, path  # byte for byte
        assert b"schema" in body and b"lib" in body, path


def test_unparsable_or_foreign_bytes_fall_back_to_the_parsed_request() -> None:
    request = ExportTraceServiceRequest()
    request.resource_spans.add().scope_spans.add().spans.add(
        trace_id=bytes([5]) * 16, span_id=bytes([5]) * 8, name="kept")
    other = ExportTraceServiceRequest()
    assert resource_views(b"\x0a\x05\x12") is None  # truncated
    for raw in (b"\x0a\x05\x12", other.SerializeToString(), b"\x0b\x00"):
        split = split_by_trace(request, partitions=3, raw=raw)
        (body,) = split.encoded.values()
        assert ExportTraceServiceRequest.FromString(body) == request


def test_a_trace_bigger_than_the_limit_is_one_message_alone() -> None:
    request = ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    for t in range(1, 4):
        for i in range(5):
            spans.add(trace_id=bytes([t]) * 16, span_id=bytes([t, i + 1]) * 4, name="x" * 100)
    split = split_by_trace(request, partitions=1, max_message_bytes=200)
    assert len(split.encoded) == 3  # each trace (about 650 bytes) alone
    split = split_by_trace(request, partitions=1, max_message_bytes=1_000_000)
    assert len(split.encoded) == 1
