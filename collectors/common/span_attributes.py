"""The wanted attributes of every span of an OTLP trace request, read from its bytes in C.

Reading a span's attributes through protobuf's Python objects builds a wrapper per attribute,
a new ``str`` per key and per value read: about as much time as the rest of a span's
normalisation. The normaliser and trace grouping want a handful of keys per span (the mapping
table's, and message content by prefix), so :func:`scan` reads them from the request's bytes
in one C pass (:mod:`observer.collectors.common._span_attributes`), converting only those.

The values are those :func:`observer.collectors.common.otlp_attributes.attribute_values` gives
(tests/test_normalizer_hot_paths.py compares them on hostile requests). Whenever the C reader
meets something unusual (see the C file), or is not built, :func:`scan` returns None and the
caller reads the protobuf objects as before.

>>> from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
>>> request = ExportTraceServiceRequest()
>>> span = request.resource_spans.add().scope_spans.add().spans.add(name="chat")
>>> span.attributes.extend([KeyValue(key="a", value=AnyValue(int_value=1)),
...                         KeyValue(key="input.value", value=AnyValue(string_value="hi")),
...                         KeyValue(key="b", value=AnyValue(string_value="x"))])
>>> raw = request.SerializeToString()
>>> scan(raw, request, frozenset({"a"}), ("input.value",)) in ([({'a': 1}, {'input.value': 'hi'})], None)
True
"""

from __future__ import annotations

from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

try:  # built by the install when a C compiler is at hand (pyproject.toml, ext-modules)
    from observer.collectors.common import _span_attributes as native
except ImportError:  # pragma: no cover - the Python path is the definition, tested as such
    native = None

SpanAttributes = tuple[dict[str, Any], "dict[str, Any] | None"]
"""One span's wanted values, and its content attributes (None when it has none)."""


def span_count(request: ExportTraceServiceRequest) -> int:
    """How many spans protobuf parsed (the C reader must have seen as many)."""
    return sum(len(scope.spans) for resource in request.resource_spans
               for scope in resource.scope_spans)


def scan(raw: bytes, request: ExportTraceServiceRequest, wanted: frozenset[str],
         prefixes: tuple[str, ...] = ()) -> list[SpanAttributes] | None:
    """``(values, content)`` of each span of ``request`` (parsed from ``raw``), in order:
    the ``wanted`` attributes' values, and the attributes whose key starts with one of
    ``prefixes``; None when the C reader is not built or declined (read the objects then)."""
    if native is None or not raw:
        return None
    found: list[SpanAttributes] | None = native.scan(
        raw, wanted, tuple(p.encode() for p in prefixes))
    # A check that the C reader saw the spans protobuf parsed, in the same number.
    if found is None or len(found) != span_count(request):
        return None
    return found
