"""The three OTLP signals as data: messages, paths, topics, and how each is split for Kafka.

Traces are grouped by trace and packed per partition (key: a hex trace id, see
:mod:`observer.collectors.receiver.trace_split`); metrics and logs per resource (key: a
hash of the resource), which is what ``observer.core.topics.TOPIC_TABLE`` promises. Items that cannot be valid (a span with a bad id, a metric without a name, a log
record with a malformed trace or span id) are dropped and counted for ``partial_success``.

>>> from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
>>> request = ExportMetricsServiceRequest()
>>> scope = request.resource_metrics.add().scope_metrics.add()
>>> good = scope.metrics.add(name="gen_ai.client.token.usage")
>>> _ = good.histogram.data_points.add(count=2, sum=30.0)
>>> bad = scope.metrics.add(name="")
>>> _ = bad.gauge.data_points.add(as_int=1)
>>> split = SIGNALS["metrics"].split(request, 3, 1_000_000)
>>> len(split.requests), split.accepted, split.rejected
(1, 1, 1)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

from observer.collectors.common.otlp_attributes import resource_key
from observer.collectors.receiver.trace_split import SPAN_ID_BYTES, TRACE_ID_BYTES, TraceSplit, split_by_trace
from observer.core.topics import Topics


@dataclass(frozen=True)
class Signal:
    """One OTLP signal: what the receivers need to know to accept it."""

    name: str
    path: str
    grpc_service: str
    request: type[Message]
    response: type[Message]
    resources: str
    """The request's repeated field of resource wrappers (resource_spans...)."""
    rejected_field: str
    """The ``partial_success`` counter of this signal."""
    why_rejected: str
    topic: Callable[[Topics], str]
    split: Callable[[Any, int, int, bytes | None], TraceSplit]
    """``split(request, partitions, max_message_bytes, raw)``: the Kafka messages of a request
    (``raw``: the protobuf bytes it was parsed from, if any)."""


def _data_points(metric: Metric) -> int:
    kind = metric.WhichOneof("data")
    return len(getattr(metric, kind).data_points) if kind else 0


def _valid_metric(metric: Metric) -> bool:
    return bool(metric.name)


def _valid_id(value: bytes, size: int) -> bool:
    # Ids are optional on log records (and exemplars); when present they must be well formed.
    return not value or (len(value) == size and value != bytes(size))


def _split_metrics(request: ExportMetricsServiceRequest, *_: Any) -> TraceSplit:
    split = TraceSplit(request_type=ExportMetricsServiceRequest)
    requests: dict[str, ExportMetricsServiceRequest] = {}
    for resource_metrics in request.resource_metrics:
        key = resource_key(resource_metrics.resource)
        out = requests.get(key)
        if out is None:
            out = requests[key] = ExportMetricsServiceRequest()
        target = out.resource_metrics.add(
            resource=resource_metrics.resource, schema_url=resource_metrics.schema_url
        )
        for scope_metrics in resource_metrics.scope_metrics:
            scope = target.scope_metrics.add(
                scope=scope_metrics.scope, schema_url=scope_metrics.schema_url
            )
            for metric in scope_metrics.metrics:
                points = _data_points(metric)
                if _valid_metric(metric):
                    scope.metrics.append(metric)
                    split.accepted += points
                else:
                    split.rejected += points
    return _drop_empty(split, requests, "resource_metrics", "scope_metrics", "metrics")


def _split_logs(request: ExportLogsServiceRequest, *_: Any) -> TraceSplit:
    split = TraceSplit(request_type=ExportLogsServiceRequest)
    requests: dict[str, ExportLogsServiceRequest] = {}
    for resource_logs in request.resource_logs:
        key = resource_key(resource_logs.resource)
        out = requests.get(key)
        if out is None:
            out = requests[key] = ExportLogsServiceRequest()
        target = out.resource_logs.add(
            resource=resource_logs.resource, schema_url=resource_logs.schema_url
        )
        for scope_logs in resource_logs.scope_logs:
            scope = target.scope_logs.add(scope=scope_logs.scope, schema_url=scope_logs.schema_url)
            for record in scope_logs.log_records:
                if _valid_id(record.trace_id, TRACE_ID_BYTES) and _valid_id(
                    record.span_id, SPAN_ID_BYTES
                ):
                    scope.log_records.append(record)
                    split.accepted += 1
                else:
                    split.rejected += 1
    return _drop_empty(split, requests, "resource_logs", "scope_logs", "log_records")


def _drop_empty(
    split: TraceSplit, requests: dict[str, Any], resources: str, scopes: str, items: str
) -> TraceSplit:
    """Serialise the requests into ``split``; those whose items were all rejected are not
    worth a Kafka message."""
    split.encoded = {
        key: request.SerializeToString()
        for key, request in requests.items()
        if any(getattr(s, items) for r in getattr(request, resources) for s in getattr(r, scopes))
    }
    return split


SIGNALS: dict[str, Signal] = {
    "traces": Signal(
        name="traces",
        path="/v1/traces",
        grpc_service="opentelemetry.proto.collector.trace.v1.TraceService",
        request=ExportTraceServiceRequest,
        response=ExportTraceServiceResponse,
        resources="resource_spans",
        rejected_field="rejected_spans",
        why_rejected="trace id must be 16 bytes and span id 8 bytes, not all zero",
        topic=lambda t: t.spans,
        split=split_by_trace,
    ),
    "metrics": Signal(
        name="metrics",
        path="/v1/metrics",
        grpc_service="opentelemetry.proto.collector.metrics.v1.MetricsService",
        request=ExportMetricsServiceRequest,
        response=ExportMetricsServiceResponse,
        resources="resource_metrics",
        rejected_field="rejected_data_points",
        why_rejected="a metric must have a name",
        topic=lambda t: t.metrics,
        split=_split_metrics,
    ),
    "logs": Signal(
        name="logs",
        path="/v1/logs",
        grpc_service="opentelemetry.proto.collector.logs.v1.LogsService",
        request=ExportLogsServiceRequest,
        response=ExportLogsServiceResponse,
        resources="resource_logs",
        rejected_field="rejected_log_records",
        why_rejected="a log record's trace id must be 16 bytes and span id 8 bytes when set",
        topic=lambda t: t.logs,
        split=_split_logs,
    ),
}
