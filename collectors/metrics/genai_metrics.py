"""The GenAI metrics stage: ``otlp_metrics`` in, ``observer.genai-metrics/v1`` records out.

GenAI instrumentations export histograms (``gen_ai.client.token.usage``,
``gen_ai.client.operation.duration`` ...) next to their spans; serving engines export the
``gen_ai.server.*`` ones. This stage turns every data point of a ``gen_ai.*`` metric into one
:class:`~observer.core.records.GenAIMetric`: the metric's canonical ``kind`` (table
:data:`METRIC_KINDS`; unlisted ``gen_ai.*`` metrics, such as successors not yet named here,
keep their name as kind), the attributes read through the same convention table as spans
(``gen_ai.provider.name`` or ``gen_ai.system``, request or response model...), and the values
of the **interval** the point covers: cumulative points (the SDK's default temporality) are
turned into deltas against the previous point of the same series, so counts and sums add up
across records. A series restarted by its process (a new ``start_time_unix_nano`` or a count
that went down) starts again from its own values. Other metrics are skipped.

Every value is checked before it enters a record (:mod:`observer.core.validate`): counts
non-negative and at most ``MAX_COUNT``, sums, bounds and values finite, timestamps int64;
an invalid one is left out (``None``; both bucket lists when one entry is invalid) and counted
in ``observer_invalid_values_total{stage="genai-metrics",field}``. A cumulative series whose
counts go down is a restart, never a negative delta. A message that does not parse goes to
the dead-letter topic (``decode_error``).

The per-series state is in memory and bounded (:data:`MAX_SERIES`, least recently seen
dropped): after a restart of the stage the first point of each cumulative series is emitted
whole, covering the series since its start.

>>> from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality as T
>>> from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
>>> stage = GenAIMetricsNormalizer(Topics.from_config(KafkaConfig()))
>>> def export(count, total, now):
...     request = ExportMetricsServiceRequest()
...     metric = request.resource_metrics.add().scope_metrics.add().metrics.add(
...         name="gen_ai.client.token.usage", unit="{token}")
...     metric.histogram.aggregation_temporality = T.AGGREGATION_TEMPORALITY_CUMULATIVE
...     point = metric.histogram.data_points.add(count=count, sum=total, start_time_unix_nano=1,
...                                              time_unix_nano=now)
...     point.attributes.append(KeyValue(key="gen_ai.token.type",
...                                      value=AnyValue(string_value="input")))
...     return request
>>> [(r.kind, r.token_type, r.count, r.sum) for r in stage.normalize(export(2, 30.0, 10))]
[('token_usage', 'input', 2, 30.0)]
>>> [(r.count, r.sum, r.start_time_unix_nano) for r in stage.normalize(export(3, 42.0, 20))]
[(1, 12.0, 10)]
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric
from prometheus_client import Counter

from observer.collectors.common.cluster import resource_cluster
from observer.collectors.common.genai_mapping import LLM_FIELDS, OPERATION, Source, lookup
from observer.collectors.common.otlp_attributes import attribute_values, resource_key, resource_names
from observer.collectors.common.otlp_messages import UndecodableMessage, otlp_request, quarantine
from observer.collectors.common.tenant_seal import TenantSeal
from observer.core import validate
from observer.core.bus import Message, Output
from observer.core.config import KafkaConfig  # noqa: F401 (doctest)
from observer.core.records import GenAIMetric, encode, segment_key
from observer.core.topics import Topics

log = logging.getLogger(__name__)

POINTS = Counter(
    "observer_genai_metrics_points_total", "GenAI metric data points normalised, by kind.", ["kind"]
)
ERRORS = Counter(
    "observer_genai_metrics_errors_total", "otlp_metrics messages that could not be decoded."
)

PREFIX = "gen_ai."
MAX_SERIES = 100_000

# Metric name -> canonical kind. Client metrics of the GenAI conventions, the server ones that
# serving engines export, and the counters announced as successors of token.usage.
METRIC_KINDS: dict[str, str] = {
    "gen_ai.client.token.usage": "token_usage",
    "gen_ai.client.operation.duration": "operation_duration",
    "gen_ai.client.operation.time_to_first_chunk": "time_to_first_chunk",
    "gen_ai.client.operation.time_per_output_chunk": "time_per_output_chunk",
    "gen_ai.server.request.duration": "server_request_duration",
    "gen_ai.server.time_to_first_token": "server_time_to_first_token",
    "gen_ai.server.time_per_output_token": "server_time_per_output_token",
    "gen_ai.client.inference.tokens": "token_usage",
    # Pre-1.27 drafts, still in some instrumentations.
    "gen_ai.token.usage": "token_usage",
    "gen_ai.operation.duration": "operation_duration",
}

# GenAIMetric field -> attributes carrying it (the span table's names where they overlap).
METRIC_FIELDS: dict[str, Source] = {
    "provider": LLM_FIELDS["provider"],
    "model": LLM_FIELDS["model"],
    "response_model": Source(("gen_ai.response.model",)),
    "operation": Source(("gen_ai.operation.name", "llm.request.type"), OPERATION),
    "token_type": Source(("gen_ai.token.type",)),
    "server_address": Source(("server.address",)),
    "error_type": Source(("error.type",)),
    "agent": LLM_FIELDS["agent"],
}
_WANTED = frozenset(name for source in METRIC_FIELDS.values() for name in source.names)
STAGE = "genai-metrics"

# Point field -> its rule (observer.core.validate); the bucket lists are checked as wholes.
_POINT_RULES = {
    "count": validate.count,
    "sum": validate.finite,
    "min": validate.finite,
    "max": validate.finite,
    "value": validate.finite,
}


def _checked(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with every invalid number set to None (buckets: both lists emptied).

    >>> _checked({"count": -1, "sum": float("nan"), "bucket_bounds": [1.0],
    ...           "bucket_counts": [2**64 - 1, 0]})
    {'count': None, 'sum': None, 'bucket_bounds': [], 'bucket_counts': []}
    """
    out = dict(values)
    for field, rule in _POINT_RULES.items():
        if out.get(field) is not None:
            out[field] = rule(out[field])
            if out[field] is None:
                validate.invalid(STAGE, field)
    bounds, counts = out.get("bucket_bounds"), out.get("bucket_counts")
    if bounds or counts:
        good_bounds = [validate.finite(b) for b in bounds or []]
        good_counts = [validate.count(c) for c in counts or []]
        if None in good_bounds or None in good_counts:
            validate.invalid(STAGE, "bucket_counts" if None in good_counts else "bucket_bounds")
            out["bucket_bounds"], out["bucket_counts"] = [], []
    return out


def _time(value: int, field: str) -> int:
    checked = validate.count(value, max=validate.MAX_UNIX_NANO)
    if checked is None:
        validate.invalid(STAGE, field)
    return checked or 0
_TEMPORALITY = {
    AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA: "delta",
    AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE: "cumulative",
}


@dataclass
class _Last:
    """The previous cumulative point of a series."""

    start: int
    time: int
    count: int
    sum: float
    buckets: list[int]


def _values(metric: Metric, point: Any) -> dict[str, Any]:
    kind = metric.WhichOneof("data")
    if kind == "histogram":
        return {
            "count": point.count,
            "sum": point.sum if point.HasField("sum") else None,
            "min": point.min if point.HasField("min") else None,
            "max": point.max if point.HasField("max") else None,
            "bucket_bounds": list(point.explicit_bounds),
            "bucket_counts": list(point.bucket_counts),
        }
    if kind == "exponential_histogram":
        return {
            "count": point.count,
            "sum": point.sum if point.HasField("sum") else None,
            "min": point.min if point.HasField("min") else None,
            "max": point.max if point.HasField("max") else None,
        }
    if kind == "summary":
        return {"count": point.count, "sum": point.sum}
    value = point.as_double if point.WhichOneof("value") == "as_double" else point.as_int
    return {"value": value}


class GenAIMetricsNormalizer:
    """The stage as a :class:`observer.core.bus.Processor` (run it with ``StageRunner``)."""

    name = "genai-metrics"

    def __init__(
        self,
        topics: Topics,
        *,
        segment_keys: Sequence[str] = ("service", "model"),
        seal: TenantSeal | None = None,
    ) -> None:
        self.topics = topics
        self.segment_keys = list(segment_keys)
        # A message's tenant counts only under a receiver's seal (collectors.common.tenant_seal).
        self.seal = seal or TenantSeal(None)
        self._series: OrderedDict[tuple[Any, ...], _Last] = OrderedDict()

    def normalize(self, request: ExportMetricsServiceRequest) -> list[GenAIMetric]:
        """The records of one export request's ``gen_ai.*`` data points."""
        records = []
        for resource_metrics in request.resource_metrics:
            service, tenant = resource_names(resource_metrics.resource, STAGE)
            cluster = resource_cluster(resource_metrics.resource, STAGE)
            where = resource_key(resource_metrics.resource)
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name.startswith(PREFIX):
                        records += self._metric(metric, service, tenant, where, cluster)
        return records

    def _metric(self, metric: Metric, service: str, tenant: str, where: str,
                cluster: str = "") -> list[GenAIMetric]:
        instrument = metric.WhichOneof("data")
        if instrument is None:
            return []
        data = getattr(metric, instrument)
        temporality = _TEMPORALITY.get(getattr(data, "aggregation_temporality", 0), "")
        monotonic = getattr(data, "is_monotonic", None) if instrument == "sum" else None
        name = validate.text(metric.name)
        kind = METRIC_KINDS.get(name, name)
        records = []
        for point in data.data_points:
            fields = lookup(attribute_values(point.attributes, _WANTED), METRIC_FIELDS, STAGE)
            values = _checked(_values(metric, point))
            start = _time(point.start_time_unix_nano, "start_time_unix_nano")
            if temporality == "cumulative" and (instrument != "sum" or monotonic):
                series = (where, metric.name, tuple(
                    (kv.key, kv.value.SerializeToString(deterministic=True))
                    for kv in point.attributes))
                start, values = self._delta(series, point, values)
                values = _checked(values)
            POINTS.labels(kind).inc()
            records.append(
                GenAIMetric(
                    tenant=tenant,
                    cluster=cluster,
                    service=service,
                    metric=name,
                    kind=kind,
                    instrument=instrument,
                    unit=validate.text(metric.unit),
                    temporality=temporality,
                    start_time_unix_nano=start,
                    time_unix_nano=_time(point.time_unix_nano, "time_unix_nano"),
                    **fields,
                    **values,
                )
            )
        return records

    def _delta(
        self, series: tuple[Any, ...], point: Any, values: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        """The interval since the previous point of ``series``, and remember this one."""
        count = int(values.get("count") or 0)
        total = float(values.get("sum") or values.get("value") or 0.0)
        buckets = list(values.get("bucket_counts") or [])
        last = self._series.pop(series, None)
        self._series[series] = _Last(point.start_time_unix_nano, point.time_unix_nano, count,
                                     total, buckets)
        while len(self._series) > MAX_SERIES:
            self._series.popitem(last=False)
        restarted = (
            last is None
            or last.start != point.start_time_unix_nano
            or count < last.count
            or point.time_unix_nano < last.time
        )
        if restarted:
            return _time(point.start_time_unix_nano, "start_time_unix_nano"), values
        assert last is not None
        delta = dict(values)
        if "value" in values:
            delta["value"] = total - last.sum
        else:
            delta["count"] = count - last.count
            if values.get("sum") is not None:
                delta["sum"] = total - last.sum
            if len(buckets) == len(last.buckets):
                delta["bucket_counts"] = [b - a for a, b in zip(last.buckets, buckets)]
            # A bucket that went down while the count did not: no interval to give.
            if any(c < 0 for c in delta.get("bucket_counts") or []):
                delta["bucket_bounds"], delta["bucket_counts"] = [], []
            # Cumulative min/max cover the whole series, not this interval.
            delta["min"] = delta["max"] = None
        return _time(last.time, "start_time_unix_nano"), delta

    # -- Processor -----------------------------------------------------------------------
    def process(self, messages: list[Message]) -> list[Output]:
        outputs = []
        for message in messages:
            try:
                # Opened (decrypted) here; an untrusted message's tenant is dropped.
                request = otlp_request(message, ExportMetricsServiceRequest, self.seal, self.name)
                outputs += [self._output(r) for r in self.normalize(request)]
            except (UndecodableMessage, *validate.REJECTED) as e:
                outputs.append(quarantine(self.topics.dead_letter, self.name, message, e, ERRORS))
        return outputs

    def tick(self) -> list[Output]:
        return []

    def _output(self, record: GenAIMetric) -> Output:
        key = segment_key(record.segment_of(self.segment_keys))
        return Output(self.topics.genai_metrics, key, encode(record))
