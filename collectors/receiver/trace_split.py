"""Split an OTLP trace export request into Kafka messages by trace, dropping invalid spans.

``otlp_spans`` is keyed by trace id so that every span of a trace lands on one partition and
one consumer sees the whole trace. An exporter's batch mixes traces. This module regroups it:
the spans of the traces that hash to the same partition are packed into one message (up to a
size cap, whole traces only), inside copies of their own resource and scope wrappers, keyed
by the first of their trace ids. Every trace in a message therefore lives on the partition
its own id names (Kafka's murmur2 placement, :mod:`observer.core.partitioner`), exactly as if
it had been sent alone, at a fraction of the per-message cost: a 500-span request of 50
traces becomes one message per partition rather than 50.

Packing is plain concatenation: two serialised ``ExportTraceServiceRequest`` messages
concatenated parse as one request holding both lists of ``resource_spans`` (protobuf merge
rules), so consumers need nothing special; an OpenTelemetry Collector's kafka exporter writes
the same shape without ``partition_traces_by_id``.

>>> from opentelemetry.proto.trace.v1.trace_pb2 import Span
>>> request = ExportTraceServiceRequest()
>>> scope = request.resource_spans.add().scope_spans.add()
>>> scope.spans.extend([
...     Span(trace_id=bytes([1] * 16), span_id=bytes([1] * 8), name="a"),
...     Span(trace_id=bytes([2] * 16), span_id=bytes([2] * 8), name="b"),
...     Span(trace_id=bytes([1] * 16), span_id=bytes([3] * 8), name="c"),
...     Span(trace_id=bytes(16), span_id=bytes([4] * 8), name="all-zero trace id"),
... ])
>>> split = split_by_trace(request, partitions=1)
>>> split.accepted, split.rejected
(3, 1)
>>> {key: [s.name for r in req.resource_spans for s in r.scope_spans[0].spans]
...  for key, req in split.requests.items()}  # doctest: +NORMALIZE_WHITESPACE
{'01010101010101010101010101010101': ['a', 'b', 'c']}
>>> [len(split_by_trace(request, partitions=p).encoded) for p in (1, 64)]
[1, 2]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from observer.collectors.receiver.otlp_wire import (
    SPAN_ID_BYTES,
    TRACE_ID_BYTES,
    ResourceView,
    ScopeSpansOnly,
    ScopeView,
    resource_views,
)
from observer.core.partitioner import partition_indexes

try:  # built by the install when a C compiler is at hand (pyproject.toml, ext-modules)
    from observer.collectors.receiver import _trace_split as native
except ImportError:
    native = None

_ZERO_TRACE = bytes(TRACE_ID_BYTES)
_ZERO_SPAN = bytes(SPAN_ID_BYTES)

DEFAULT_MAX_MESSAGE_BYTES = 1_000_000
"""Below Kafka's default ``message.max.bytes`` (1,048,588), so packed messages fit any broker."""


def valid_ids(span: Span) -> bool:
    """True when the span's trace id (16 bytes) and span id (8 bytes) are well formed.

    The OTLP spec calls an all-zero id invalid, as the W3C trace context does.

    >>> valid_ids(Span(trace_id=bytes([1] * 16), span_id=bytes([1] * 8)))
    True
    >>> valid_ids(Span(trace_id=bytes([1] * 8), span_id=bytes([1] * 8)))
    False
    """
    trace_id, span_id = span.trace_id, span.span_id
    return (
        len(trace_id) == TRACE_ID_BYTES and trace_id != _ZERO_TRACE
        and len(span_id) == SPAN_ID_BYTES and span_id != _ZERO_SPAN
    )


@dataclass
class TraceSplit:
    """The result of :func:`split_by_trace` (and of the per-resource splits of metrics and logs)."""

    encoded: dict[str, bytes] = field(default_factory=dict)
    """Kafka key -> the serialised export request of that key."""
    accepted: int = 0
    rejected: int = 0
    request_type: type[Message] = ExportTraceServiceRequest

    @property
    def requests(self) -> dict[str, Any]:
        """The same requests, decoded (for inspection; the receivers send :attr:`encoded`)."""
        return {key: self.request_type.FromString(raw) for key, raw in self.encoded.items()}


def _length(n: int) -> bytes:
    """Protobuf varint of a length; spans are mostly under 16 KiB, so two bytes at most."""
    if n < 0x80:
        return bytes((n,))
    if n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Tags of the length-delimited fields of opentelemetry/proto/trace/v1/trace.proto:
# field number << 3 | wire type 2.
_REQUEST_RESOURCE_SPANS = b"\x0a"  # ExportTraceServiceRequest.resource_spans = 1
_RESOURCE, _SCOPE_SPANS = b"\x0a", b"\x12"  # ResourceSpans.resource = 1, .scope_spans = 2


def _field(tag: bytes, payload: bytes) -> bytes:
    return tag + _length(len(payload)) + payload


def split_by_trace(
    request: ExportTraceServiceRequest,
    partitions: int,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    raw: bytes | None = None,
) -> TraceSplit:
    """Regroup ``request`` per trace and pack the traces of each partition into messages.

    Parameters
    ----------
    request
        The decoded export request (after the tenant stamp: resources are re-encoded from it).
    partitions
        How many partitions ``otlp_spans`` has: traces are packed per partition.
    max_message_bytes
        A message grows by whole traces up to this size; a trace bigger than it alone is one
        message (the producer then refuses it if it passes the broker's limit).
    raw
        The protobuf bytes ``request`` was parsed from, when there are some: spans are then
        copied from them byte for byte. Without them (a JSON body, a gRPC message) the request
        is serialised once and read the same way.

    Spans failing :func:`valid_ids` are counted and dropped. In the usual case (every id of
    the right length, each partition's share under the limit) each partition gets one message
    holding its spans in request order, written in C by
    :mod:`observer.collectors.receiver._trace_split` in one pass over the bytes. Otherwise (an
    unusual request, or an install without a C compiler) traces are packed one by one in Python
    (:func:`_by_trace`), on the span bytes protobuf's C parser cuts out of the request
    (:mod:`observer.collectors.receiver.otlp_wire`): the same spans on the same partitions,
    grouped by trace within a message.
    """
    if raw is None:
        raw = request.SerializeToString()
    resources = [
        _field(_RESOURCE, resource_spans.resource.SerializeToString())
        if resource_spans.HasField("resource") else b""
        for resource_spans in request.resource_spans
    ]
    if native is not None:
        placed = native.split(raw, partitions, resources, max_message_bytes)
        # The count is a check that the C reader saw the spans protobuf parsed.
        if placed is not None and placed[1] + placed[2] == _span_count(request):
            messages, accepted, rejected = placed
            return TraceSplit(dict(messages), accepted, rejected)
    views = resource_views(raw)
    if views is None or not _same_shape(views, request):
        raw = request.SerializeToString()
        views = resource_views(raw)
        assert views is not None  # protobuf's own encoding always parses
    resource_heads = [view.head + resource for view, resource in zip(views, resources)]
    scopes = [(r, scope) for r, view in enumerate(views) for scope in view.scopes]
    return _by_trace(request, resource_heads, scopes, partitions, max_message_bytes)


def _span_count(request: ExportTraceServiceRequest) -> int:
    return sum(
        len(scope_spans.spans)
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
    )


def _request(resource_heads: list[bytes], runs: list[tuple[int, bytes]]) -> bytes:
    """An ``ExportTraceServiceRequest`` of ``ScopeSpans`` runs, in order, each under its
    resource (consecutive runs of one resource share its ``ResourceSpans``)."""
    out: list[bytes] = []
    current, scopes = runs[0][0], []
    for r, run in runs:
        if r != current:
            out.append(_field(_REQUEST_RESOURCE_SPANS, resource_heads[current] + b"".join(scopes)))
            current, scopes = r, []
        scopes.append(run)
    out.append(_field(_REQUEST_RESOURCE_SPANS, resource_heads[current] + b"".join(scopes)))
    return b"".join(out)


def _by_trace(
    request: ExportTraceServiceRequest,
    resource_heads: list[bytes],
    scopes: list[tuple[int, ScopeView]],
    partitions: int,
    limit: int,
) -> TraceSplit:
    """The Python path: ids read span by span from the parsed request, each trace assembled
    on its own, traces packed per partition up to ``limit``."""
    split = TraceSplit()
    parsed = [scope_spans.spans for rs in request.resource_spans for scope_spans in rs.scope_spans]
    traces: dict[bytes, list[tuple[int, bytes]]] = {}  # trace id -> (resource, ScopeSpans) runs
    for (r, scope), spans in zip(scopes, parsed):
        groups: dict[bytes, list[bytes]] = {}
        for span, piece in zip(spans, scope.spans):
            if not valid_ids(span):
                split.rejected += 1
                continue
            groups.setdefault(span.trace_id, []).append(piece)
        for trace_id, pieces in groups.items():
            split.accepted += len(pieces)
            run = scope.head + ScopeSpansOnly(spans=pieces).SerializeToString()
            traces.setdefault(trace_id, []).append((r, _field(_SCOPE_SPANS, run)))
    if not traces:
        return split
    keys = [trace_id.hex() for trace_id in traces]
    bodies = [_request(resource_heads, runs) for runs in traces.values()]
    placement = (
        partition_indexes([k.encode() for k in keys], partitions)
        if partitions > 1 else [0] * len(keys)
    )
    _pack(split, keys, bodies, placement, limit)
    return split


def _same_shape(views: list[ResourceView], request: ExportTraceServiceRequest) -> bool:
    """Whether the viewed bytes hold the parsed request's resources, scopes and spans."""
    return len(views) == len(request.resource_spans) and all(
        len(rv.scopes) == len(rs.scope_spans)
        and all(len(sv.spans) == len(ss.spans) for sv, ss in zip(rv.scopes, rs.scope_spans))
        for rv, rs in zip(views, request.resource_spans)
    )


def _pack(
    split: TraceSplit, keys: list[str], bodies: list[bytes], placement: list[int], limit: int
) -> None:
    """Fill ``split.encoded``: per partition, whole traces in order until ``limit`` bytes."""
    open_message: dict[int, tuple[str, list[bytes], int]] = {}  # partition -> key, parts, size
    for key, body, partition in zip(keys, bodies, placement):
        current = open_message.get(partition)
        if current is not None and current[2] + len(body) <= limit:
            current[1].append(body)
            open_message[partition] = (current[0], current[1], current[2] + len(body))
            continue
        if current is not None:
            split.encoded[current[0]] = b"".join(current[1])
        open_message[partition] = (key, [body], len(body))
    for key, parts, _ in open_message.values():
        split.encoded[key] = b"".join(parts)
