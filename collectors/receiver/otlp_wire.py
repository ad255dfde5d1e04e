"""A serialised ``ExportTraceServiceRequest`` read through a reduced schema.

The receivers regroup a request's spans by trace (:mod:`observer.collectors.receiver.trace_split`)
and copy each span's bytes as the client sent them. Where the C pass
(``collectors/receiver/_trace_split.c``) was not built, and for what it leaves to Python,
protobuf's own C parser reads the client's bytes again under :data:`RawView`, which declares
``ResourceSpans.resource`` and ``ScopeSpans.spans`` as ``bytes``: each span comes out exactly
as sent (unknown fields and field order included), and every other field of a resource or
scope wrapper is kept as an unknown field, so the wrapper without its spans re-serialises as
sent. The view numbers and nests fields as ``opentelemetry/proto/trace/v1/trace.proto`` does,
so it sees the same resources, scopes and spans, in the same order, as the full parse.

>>> from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
...     ExportTraceServiceRequest)
>>> from opentelemetry.proto.trace.v1.trace_pb2 import Span
>>> request = ExportTraceServiceRequest()
>>> scope_spans = request.resource_spans.add(schema_url="s").scope_spans.add()
>>> scope_spans.scope.name = "openai"
>>> scope_spans.spans.extend([Span(trace_id=b"t" * 16, span_id=b"a" * 8, name="a"),
...                           Span(trace_id=b"u" * 16, span_id=b"b" * 8, name="b")])
>>> raw = request.SerializeToString()
>>> (resource,) = resource_views(raw)
>>> resource.head, resource.scopes[0].head
(b'\\x1a\\x01s', b'\\n\\x08\\n\\x06openai')
>>> [Span.FromString(span).name for span in resource.scopes[0].spans]
['a', 'b']
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

TRACE_ID_BYTES = 16
SPAN_ID_BYTES = 8


def _views() -> dict[str, type[Message]]:
    """The reduced schema, built as a descriptor (no generated code to keep in step)."""
    field = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="observer/otlp_wire_views.proto", package="observer.wire", syntax="proto3"
    )
    repeated, optional = field.LABEL_REPEATED, field.LABEL_OPTIONAL
    table = {  # message -> (number, name, type, label, message type)
        "ScopeRaw": [(2, "spans", field.TYPE_BYTES, repeated, "")],
        "ResourceRaw": [(1, "resource", field.TYPE_BYTES, optional, ""),
                        (2, "scope_spans", field.TYPE_MESSAGE, repeated, "ScopeRaw")],
        "RequestRaw": [(1, "resource_spans", field.TYPE_MESSAGE, repeated, "ResourceRaw")],
    }
    for name, fields in table.items():
        message = file.message_type.add(name=name)
        for number, field_name, kind, label, type_name in fields:
            declared = message.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                declared.type_name = f".observer.wire.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"observer.wire.{name}"))
        for name in table
    }


_VIEWS = _views()
RawView = _VIEWS["RequestRaw"]
ScopeSpansOnly = _VIEWS["ScopeRaw"]
"""``ScopeSpans`` holding only spans: ``ScopeSpansOnly(spans=[...]).SerializeToString()``
encodes a list of span bytes as ``spans`` fields, in C."""


def _parse(view: type[Message], raw: bytes) -> Message | None:
    """``raw`` read through ``view``; ``None`` if it does not parse (the caller falls back to
    its parsed message)."""
    try:
        return view.FromString(raw)
    except DecodeError:
        return None


@dataclass
class ScopeView:
    head: bytes
    """Every field of the ``ScopeSpans`` but its spans (scope, schema_url, unknown), as sent."""
    spans: list[bytes]
    """Each span's bytes as sent (without the ``spans`` field's tag and length)."""


@dataclass
class ResourceView:
    head: bytes
    """Every field of the ``ResourceSpans`` but its resource and scopes, as sent."""
    scopes: list[ScopeView]


def resource_views(raw: bytes) -> list[ResourceView] | None:
    """The request's resources, scopes and span bytes, in order; ``None`` if ``raw`` does not
    parse (the caller falls back to its parsed message)."""
    request = _parse(RawView, raw)
    if request is None:
        return None
    views = []
    for resource in request.resource_spans:
        scopes = []
        for scope in resource.scope_spans:
            spans = list(scope.spans)
            scope.ClearField("spans")
            scopes.append(ScopeView(scope.SerializeToString(), spans))
        resource.ClearField("resource")  # re-encoded by the caller after the tenant stamp
        resource.ClearField("scope_spans")
        views.append(ResourceView(resource.SerializeToString(), scopes))
    return views
