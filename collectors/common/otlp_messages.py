"""Read OTLP export requests back from ``otlp_*`` messages, one message at a time.

Shared by every stage that consumes ``otlp_spans`` or ``otlp_metrics``: :func:`otlp_request`
is the one place such a message is opened (:mod:`observer.collectors.common.tenant_seal`: decrypted when a
receiver sealed it) and parsed, and where the tenant of a message that is not trusted is
dropped. A sealed message that does not open raises :class:`~observer.collectors.common.tenant_seal.BrokenSeal`
(a dead letter, ``invalid_value``); one that does not parse (not protobuf, invalid UTF-8 in a
string field, a tombstone) raises :class:`UndecodableMessage` (``decode_error``). The stage
turns either into a dead letter (:func:`quarantine`): replaying it would fail the same way, so
it must not stop the stage. :func:`span_identity_problem` says why a span cannot
become a record (its ids are what every record is keyed and joined by).
"""

from __future__ import annotations

import logging
from typing import TypeVar

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client import Counter

from observer.collectors.common.cluster import forget
from observer.collectors.common.tenancy import stamp
from observer.collectors.common.tenant_seal import TenantSeal
from observer.core import validate
from observer.core.bus import Message, Output
from observer.core.dead_letter import dead_letter

log = logging.getLogger(__name__)

TRACE_ID_BYTES = 16
SPAN_ID_BYTES = 8
_ZERO_TRACE, _ZERO_SPAN = bytes(TRACE_ID_BYTES), bytes(SPAN_ID_BYTES)


class UndecodableMessage(ValueError):
    """A message is not an OTLP export request; dead-lettered as ``decode_error``."""

    reason = "decode_error"


Request = TypeVar(
    "Request", ExportTraceServiceRequest, ExportMetricsServiceRequest, ExportLogsServiceRequest
)
RESOURCES = {
    ExportTraceServiceRequest: "resource_spans",
    ExportMetricsServiceRequest: "resource_metrics",
    ExportLogsServiceRequest: "resource_logs",
}
"""Each export request type's repeated field of per-resource data."""
_NO_SEAL = TenantSeal(None)


def otlp_request(
    message: Message, kind: type[Request], seal: TenantSeal | None = None, stage: str = ""
) -> Request:
    """The ``kind`` export request ``message`` holds: opened with ``seal`` (for ``stage``'s
    counters), parsed, and with the tenant and cluster its resources claim dropped unless it
    is trusted.

    :class:`~observer.collectors.common.tenant_seal.BrokenSeal` when it is sealed and does not open,
    :class:`UndecodableMessage` when it holds no such request.

    >>> from pydantic import SecretStr
    >>> seal = TenantSeal(SecretStr("k" * 32))
    >>> request = ExportMetricsServiceRequest()
    >>> _ = request.resource_metrics.add().resource.attributes.add(key="observer.tenant")
    >>> sealed = seal.sealed(Output("otlp_metrics", None, request.SerializeToString()))
    >>> def read(value):
    ...     m = Message("otlp_metrics", 0, 0, None, value, 0)
    ...     return otlp_request(m, ExportMetricsServiceRequest, seal, "doc")
    >>> len(read(sealed.value).resource_metrics[0].resource.attributes)  # trusted: kept
    1
    >>> len(read(request.SerializeToString()).resource_metrics[0].resource.attributes)
    0
    """
    return opened_request(message, kind, seal, stage)[0]


def opened_request(
    message: Message, kind: type[Request], seal: TenantSeal | None = None, stage: str = ""
) -> tuple[Request, bytes]:
    """:func:`otlp_request`, and the bytes it was parsed from (opened). A tenant dropped from
    the request is still in the bytes: read only spans from them
    (:mod:`observer.collectors.common.span_attributes`), never resources."""
    value, trusted = (seal or _NO_SEAL).open(message, stage)
    try:
        request = kind.FromString(value)
    except (DecodeError, TypeError) as e:  # TypeError: a tombstone (value None)
        raise UndecodableMessage(f"not an OTLP {kind.__name__}: {e}") from None
    if not trusted:  # its cluster is not believed either (collectors.common.cluster)
        resources = [r.resource for r in getattr(request, RESOURCES[kind])]
        stamp(resources, "")
        forget(resources)
    return request, value


def trace_request(
    message: Message, seal: TenantSeal | None = None, stage: str = ""
) -> ExportTraceServiceRequest:
    """The export request a message holds (:func:`otlp_request`); :class:`UndecodableMessage`
    if it holds none.

    >>> trace_request(Message("otlp_spans", 0, 0, None, b"", 0)).resource_spans
    []
    >>> trace_request(Message("otlp_spans", 0, 1, None, b"\\xff", 0))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    observer.collectors.common.otlp_messages.UndecodableMessage: not an OTLP ExportTraceServiceRequest: ...
    """
    return otlp_request(message, ExportTraceServiceRequest, seal, stage)


def opened_trace_request(
    message: Message, seal: TenantSeal | None = None, stage: str = ""
) -> tuple[ExportTraceServiceRequest, bytes]:
    """:func:`trace_request`, and the bytes it was parsed from (:func:`opened_request`)."""
    return opened_request(message, ExportTraceServiceRequest, seal, stage)


def span_identity_problem(span: Span) -> str | None:
    """Why ``span`` cannot become a record (naming the field), or None when its ids are usable.

    >>> span_identity_problem(Span(trace_id=b"t" * 16, span_id=b"s" * 8)) is None
    True
    >>> span_identity_problem(Span(trace_id=bytes(16), span_id=b"s" * 8))
    'trace_id must be 16 bytes, not all zero (got 16 bytes)'
    """
    trace_id, span_id = span.trace_id, span.span_id
    if len(trace_id) == TRACE_ID_BYTES and len(span_id) == SPAN_ID_BYTES \
            and trace_id != _ZERO_TRACE and span_id != _ZERO_SPAN:
        return None  # the common case, without building a message
    for field, size in (("trace_id", TRACE_ID_BYTES), ("span_id", SPAN_ID_BYTES)):
        value: bytes = getattr(span, field)
        if len(value) != size or value == bytes(size):
            return f"{field} must be {size} bytes, not all zero (got {len(value)} bytes)"
    return None


def parent_id(span: Span, stage: str) -> bytes:
    """The span's parent id when well formed; else ``b""`` (a root), counted as invalid."""
    parent: bytes = span.parent_span_id
    if parent and len(parent) != SPAN_ID_BYTES:
        validate.invalid(stage, "parent_span_id")
        return b""
    return parent


def quarantine(
    topic: str, stage: str, message: Message, error: BaseException, errors: Counter | None = None
) -> Output:
    """The dead letter of a message that ``error`` (one of :data:`validate.REJECTED`) stopped;
    ``errors``, the stage's own error counter, counts it too."""
    if errors is not None:
        errors.inc()
    return dead_letter(topic, stage, message, validate.reason(error), validate.describe(error))
