"""Read OTLP trace export requests back from ``otlp_spans`` messages.

Shared by every stage that consumes ``otlp_spans``. An undecodable message is logged, counted
and skipped: replaying it would fail the same way, so it must not stop the stage.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import Counter

from observer.core.bus import Message

log = logging.getLogger(__name__)


def trace_requests(
    messages: Iterable[Message], stage: str, errors: Counter
) -> Iterator[ExportTraceServiceRequest]:
    """The decoded requests of ``messages``; ``errors`` counts those skipped.

    >>> from prometheus_client import CollectorRegistry
    >>> errors = Counter("example_errors_total", "Skipped.", registry=CollectorRegistry())
    >>> ok = ExportTraceServiceRequest().SerializeToString()
    >>> msgs = [Message("otlp_spans", 0, i, None, v, 0) for i, v in enumerate([ok, b"\\xff"])]
    >>> len(list(trace_requests(msgs, "example", errors))), errors._value.get()
    (1, 1.0)
    """
    for message in messages:
        try:
            yield ExportTraceServiceRequest.FromString(message.value)
        except (DecodeError, TypeError) as e:  # TypeError: a tombstone (value None)
            errors.inc()
            log.warning(
                "%s: skipping undecodable message %s[%d]@%d: %s",
                stage, message.topic, message.partition, message.offset, e,
            )
