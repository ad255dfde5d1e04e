"""Split an OTLP trace export request into one request per trace, dropping invalid spans.

Kafka keys ``otlp_spans`` by trace id, so every span of a trace lands on one partition and one
consumer sees the whole trace. An exporter's batch mixes traces; this module regroups it,
keeping each span inside copies of its own resource and scope wrappers.

>>> from opentelemetry.proto.trace.v1.trace_pb2 import Span
>>> request = ExportTraceServiceRequest()
>>> scope = request.resource_spans.add().scope_spans.add()
>>> scope.spans.extend([
...     Span(trace_id=bytes([1] * 16), span_id=bytes([1] * 8), name="a"),
...     Span(trace_id=bytes([2] * 16), span_id=bytes([2] * 8), name="b"),
...     Span(trace_id=bytes([1] * 16), span_id=bytes([3] * 8), name="c"),
...     Span(trace_id=bytes(16), span_id=bytes([4] * 8), name="all-zero trace id"),
... ])
>>> split = split_by_trace(request)
>>> split.accepted, split.rejected
(3, 1)
>>> {trace: [s.name for s in r.resource_spans[0].scope_spans[0].spans]
...  for trace, r in split.requests.items()}  # doctest: +NORMALIZE_WHITESPACE
{'01010101010101010101010101010101': ['a', 'c'],
 '02020202020202020202020202020202': ['b']}
"""

from __future__ import annotations

from dataclasses import dataclass, field

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

TRACE_ID_BYTES = 16
SPAN_ID_BYTES = 8


def valid_ids(span: Span) -> bool:
    """True when the span's trace id (16 bytes) and span id (8 bytes) are well formed.

    The OTLP spec calls an all-zero id invalid, as the W3C trace context does.

    >>> valid_ids(Span(trace_id=bytes([1] * 16), span_id=bytes([1] * 8)))
    True
    >>> valid_ids(Span(trace_id=bytes([1] * 8), span_id=bytes([1] * 8)))
    False
    """
    return _valid(span.trace_id, TRACE_ID_BYTES) and _valid(span.span_id, SPAN_ID_BYTES)


def _valid(value: bytes, size: int) -> bool:
    return len(value) == size and value != bytes(size)


@dataclass
class TraceSplit:
    """The result of :func:`split_by_trace`."""

    requests: dict[str, ExportTraceServiceRequest] = field(default_factory=dict)
    """Lowercase hex trace id -> a request holding only that trace's spans, first seen first."""
    accepted: int = 0
    rejected: int = 0


def split_by_trace(request: ExportTraceServiceRequest) -> TraceSplit:
    """Regroup ``request`` per trace; spans failing :func:`valid_ids` are counted and dropped."""
    split = TraceSplit()
    for resource_spans in request.resource_spans:
        # This resource's wrapper in each trace's request, created on first use.
        resources: dict[bytes, ResourceSpans] = {}
        for scope_spans in resource_spans.scope_spans:
            scopes: dict[bytes, ScopeSpans] = {}
            for span in scope_spans.spans:
                if not valid_ids(span):
                    split.rejected += 1
                    continue
                trace = span.trace_id
                scope = scopes.get(trace)
                if scope is None:
                    resource = resources.get(trace)
                    if resource is None:
                        out = split.requests.setdefault(trace.hex(), ExportTraceServiceRequest())
                        resource = resources[trace] = out.resource_spans.add(
                            resource=resource_spans.resource, schema_url=resource_spans.schema_url
                        )
                    scope = scopes[trace] = resource.scope_spans.add(
                        scope=scope_spans.scope, schema_url=scope_spans.schema_url
                    )
                scope.spans.append(span)
                split.accepted += 1
    return split
