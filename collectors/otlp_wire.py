"""Where each span of a serialised ``ExportTraceServiceRequest`` sits, without re-encoding it.

The receivers regroup a request's spans by trace (:mod:`collectors.trace_split`). Re-serialising
every span costs more than parsing the whole request; reading the protobuf wire format down to
the span level and slicing the client's own bytes costs a fraction of it. Only three levels
are walked (request -> ``resource_spans`` -> ``scope_spans`` -> ``spans``); a span's bytes are
never looked into, so unknown fields and field order pass through untouched.

:func:`span_layout` answers ``None`` for bytes it cannot walk (a truncated field, a wire type
it does not know); the caller then falls back to re-serialising the parsed message, which
has already proved the request well formed.

>>> from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
...     ExportTraceServiceRequest)
>>> from opentelemetry.proto.trace.v1.trace_pb2 import Span
>>> request = ExportTraceServiceRequest()
>>> resource_spans = request.resource_spans.add(schema_url="https://opentelemetry.io/schemas/1.26.0")
>>> scope = resource_spans.scope_spans.add()
>>> scope.scope.name = "openai"
>>> scope.spans.extend([Span(name="a"), Span(name="b")])
>>> layout = span_layout(request.SerializeToString())
>>> [(len(r.head), [(s.head, [Span.FromString(x[2:]).name for x in s.spans]) for s in r.scopes])
...  for r in layout]
[(41, [(b'\\n\\x08\\n\\x06openai', ['a', 'b'])])]
"""

from __future__ import annotations

from dataclasses import dataclass, field

_LEN = 2  # wire type of length-delimited fields


@dataclass
class ScopeLayout:
    head: bytes
    """Every field of the ``ScopeSpans`` but its spans (scope, schema_url, unknown), raw."""
    spans: list[bytes] = field(default_factory=list)
    """Each span as it appears in the request: tag, length and the span's bytes."""


@dataclass
class ResourceLayout:
    head: bytes
    """Every field of the ``ResourceSpans`` but its resource and scopes (schema_url...), raw."""
    scopes: list[ScopeLayout] = field(default_factory=list)


class _Truncated(Exception):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Truncated
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(
    buf: bytes, start: int, end: int, one: bool = False
) -> list[tuple[int, int, int, int]]:
    """``(field number, field start, value start, value end)`` of every field in the range
    (of the first one only, with ``one``); a length-delimited field's value is its payload."""
    out = []
    pos = start
    while pos < end:
        begin = pos
        key = buf[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _LEN:
            length = buf[pos]
            if length < 0x80:
                pos += 1
            elif buf[pos + 1] < 0x80:  # most spans: 128 bytes to 16 KiB
                length = (length & 0x7F) | buf[pos + 1] << 7
                pos += 2
            else:
                length, pos = _varint(buf, pos)
            value_start, pos = pos, pos + length
        elif wire == 0:
            value_start = pos
            _, pos = _varint(buf, pos)
        elif wire == 1:
            value_start, pos = pos, pos + 8
        elif wire == 5:
            value_start, pos = pos, pos + 4
        else:  # groups (3, 4) are not used by OTLP
            raise _Truncated
        if pos > end:
            raise _Truncated
        out.append((number, begin, value_start, pos))
        if one:
            break
    return out


def span_layout(raw: bytes) -> list[ResourceLayout] | None:
    """The request's resources, scopes and span byte ranges, in order; ``None`` if unwalkable."""
    try:
        layout = []
        for number, _, start, end in _fields(raw, 0, len(raw)):
            if number != 1:  # ExportTraceServiceRequest.resource_spans
                continue
            resource = ResourceLayout(b"")
            head = []
            for r_number, r_begin, r_start, r_end in _fields(raw, start, end):
                if r_number == 2:  # ResourceSpans.scope_spans
                    resource.scopes.append(_scope(raw, r_start, r_end))
                elif r_number != 1:  # ResourceSpans.resource is re-encoded by the caller
                    head.append(raw[r_begin:r_end])
            resource.head = b"".join(head)
            layout.append(resource)
        return layout
    except (_Truncated, IndexError):
        return None


def _scope(raw: bytes, start: int, end: int) -> ScopeLayout:
    # The hot loop of the receivers (one pass per span): the common case, a ``spans`` field
    # (tag 0x12) shorter than 16 KiB, is decoded inline; anything else goes through _fields.
    spans: list[bytes] = []
    head: list[bytes] = []
    pos = start
    while pos < end:
        if raw[pos] != 0x12:  # not ScopeSpans.spans: keep the field as it is
            _, begin, _, pos = _fields(raw, pos, end, one=True)[0]
            head.append(raw[begin:pos])
            continue
        length = raw[pos + 1]
        if length < 0x80:
            value = pos + 2
        elif raw[pos + 2] < 0x80:
            length = (length & 0x7F) | raw[pos + 2] << 7
            value = pos + 3
        else:
            length, value = _varint(raw, pos + 1)
        stop = value + length
        if stop > end:
            raise _Truncated
        spans.append(raw[pos:stop])
        pos = stop
    return ScopeLayout(b"".join(head), spans)
