"""The predictions stage: KServe logger events in, ``observer.predictions/v1`` records out.

It consumes ``observer.kserve-events`` (keyed by ``ce-id``, so a request and its response
reach the same consumer) and pairs each request with its response by
``(tenant, namespace, inferenceservicename, component, ce-id)``, in either arrival order:
KServe's logger sends through a worker pool, so a response can overtake its request. A pair
becomes one :class:`~observer.core.records.Prediction` with the request's features as
``inputs``, the response's as ``outputs`` (:mod:`observer.collectors.kserve.inference_protocol`) and the
latency between the two events' ``time`` attributes. An event whose partner has not come
after ``pair_timeout_s`` (a logger in ``mode: request`` or ``response``, a failed inference:
KServe logs only 200 responses) is written alone with ``paired: false``; past ``max_pending``
waiting events the oldest is. A second copy of an event already written (an at-least-once
redelivery) is counted in ``observer_predictions_duplicates_total`` and dropped.

Hostile events: names and ids are capped (:func:`observer.core.validate.text`), times outside
int64 nanoseconds and negative latencies (a response stamped before its request) are left
out (``None``, counted in ``observer_invalid_values_total{stage="predictions",field}``), and
payload cells are finite scalars (:mod:`observer.collectors.kserve.inference_protocol`). A message that is
not a CloudEvent or whose record still breaks a rule goes to the dead-letter topic.

Pending events live in memory: a restart loses the ones waiting (their offsets were
committed), like open traces in trace grouping.

>>> from observer.collectors.paths.trace_grouping import FakeClock
>>> from observer.collectors.kserve.config import KServeConfig
>>> from observer.core.config import KafkaConfig
>>> from observer.core.records import decode
>>> clock = FakeClock()
>>> stage = PredictionPairer(Topics.from_config(KafkaConfig()), KServeConfig(), clock=clock)
>>> def event(kind, body):
...     attrs = {"specversion": "1.0", "id": "r1", "source": "/", "inferenceservicename":
...              "iris", "type": f"org.kubeflow.serving.inference.{kind}"}
...     headers, value = to_kafka(CloudEvent(attrs, body, "application/json"))
...     return Message("observer.kserve-events", 0, 0, b"r1", value, 0, headers)
>>> stage.process([event("response", b'{"predictions": [1]}')])
[]
>>> [out] = stage.process([event("request", b'{"instances": [[5.1, 3.5]]}')])
>>> p = decode(out.value); p.model, p.inputs, p.outputs, p.paired
('iris', {'input.0': [5.1], 'input.1': [3.5]}, {'prediction': [1]}, True)
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter, Gauge

from observer.collectors.kserve.cloud_events import CloudEvent, CloudEventError, from_kafka, to_kafka  # noqa: F401 (doctest)
from observer.collectors.kserve.inference_protocol import Limits, Payload, PayloadError, Side, parse
from observer.collectors.common.cluster import CLUSTER_EXTENSION, event_cluster
from observer.collectors.kserve.intake import (
    REQUEST_TYPE, RESPONSE_TYPE, TENANT_EXTENSION, stamp_cluster, stamp_tenant,
)
from observer.collectors.common.tenant_seal import BrokenSeal, TenantSeal
from observer.core import validate
from observer.core.bus import Message, Output
from observer.collectors.kserve.config import KServeConfig
from observer.core.dead_letter import dead_letter
from observer.core.records import Prediction, encode, segment_key
from observer.core.topics import Topics

log = logging.getLogger(__name__)

PREDICTIONS = Counter(
    "observer_predictions_total",
    "Prediction records written, by how they closed (paired, timeout, evicted).",
    ["closed_by"],
)
DUPLICATES = Counter(
    "observer_predictions_duplicates_total", "Logger events dropped as copies of written ones."
)
ERRORS = Counter(
    "observer_predictions_errors_total",
    "Events the predictions stage could not use, by reason (not_cloudevent, type, payload).",
    ["reason"],
)
PENDING = Gauge("observer_predictions_pending", "Logger events waiting for their partner.")

SIDES: dict[str, Side] = {REQUEST_TYPE: "request", RESPONSE_TYPE: "response"}
PairKey = tuple[str, str, str, str, str]
STAGE = "predictions"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class _Pending:
    first_seen: float
    request: CloudEvent | None = None
    response: CloudEvent | None = None


def _time_ns(event: CloudEvent | None) -> int | None:
    """The event's ``time`` attribute (RFC 3339) in Unix nanoseconds, when it has one."""
    text = (event.attributes.get("time") or "") if event is not None else ""
    if not text:
        return None
    # Go writes up to 9 fractional digits; Python parses up to 6.
    head, dot, rest = text.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        fraction, zone = rest[:digits], rest[digits:]
        text = f"{head}.{fraction[:6].ljust(6, '0')}{zone}"
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        if parsed.tzinfo is None:
            return None
        ns = (parsed - _EPOCH) // timedelta(microseconds=1) * 1000
    except (ValueError, OverflowError):
        return None
    checked = validate.count(ns, max=validate.MAX_UNIX_NANO)  # before 1970 or past int64
    if checked is None:
        validate.invalid(STAGE, "time_unix_nano")
    return checked


def _latency_ms(started: int | None, ended: int | None) -> float | None:
    """Milliseconds from request to response; None when either is unknown, and when the
    response is stamped before its request (clock skew), counted as invalid."""
    if not started or not ended:
        return None
    latency = validate.finite((ended - started) / 1e6, min=0.0, max=validate.MAX_DURATION_MS)
    if latency is None:
        validate.invalid(STAGE, "latency_ms")
    return latency


class PredictionPairer:
    """The pairing as a :class:`observer.core.bus.Processor` (run it with ``StageRunner``)."""

    name = "predictions"

    def __init__(
        self,
        topics: Topics,
        cfg: KServeConfig,
        *,
        segment_keys: Sequence[str] = ("service", "model"),
        clock: Callable[[], float] = time.monotonic,
        seal: TenantSeal | None = None,
    ) -> None:
        self.topics = topics
        self.cfg = cfg
        # An event's tenant counts only under a receiver's seal (collectors.common.tenant_seal).
        self.seal = seal or TenantSeal(None)
        self.limits = Limits(cfg.max_features, cfg.max_instances, cfg.max_string_chars)
        self.segment_keys = list(segment_keys)
        self.clock = clock
        self.pending: OrderedDict[PairKey, _Pending] = OrderedDict()
        # Keys written recently: a redelivered copy is dropped instead of waiting alone.
        self._written: OrderedDict[PairKey, None] = OrderedDict()

    def add(self, event: CloudEvent) -> list[Prediction]:
        """Take one event; returns the records it completes (its pair, evictions)."""
        side = SIDES.get(event.type)
        if side is None:
            ERRORS.labels("type").inc()
            log.warning("predictions: skipping CloudEvent of type %r", event.type)
            return []
        a = event.attributes
        key: PairKey = (
            a.get(TENANT_EXTENSION, ""),
            a.get("namespace", ""),
            a.get("inferenceservicename", ""),
            a.get("component", ""),
            event.id,
        )
        if key in self._written:
            DUPLICATES.inc()
            return []
        entry = self.pending.get(key)
        if entry is None:
            entry = self.pending[key] = _Pending(first_seen=self.clock())
        if getattr(entry, side) is not None:
            DUPLICATES.inc()
            return []
        setattr(entry, side, event)
        out = []
        if entry.request is not None and entry.response is not None:
            out.append(self._close(key, "paired"))
        while len(self.pending) > self.cfg.max_pending:
            evicted = self._close_quietly(next(iter(self.pending)), "evicted")
            if evicted is not None:
                out.append(evicted)
        PENDING.set(len(self.pending))
        return out

    def close_due(self) -> list[Prediction]:
        """Write alone every event whose partner did not come within ``pair_timeout_s``."""
        now = self.clock()
        due = [k for k, p in self.pending.items() if now - p.first_seen >= self.cfg.pair_timeout_s]
        out = [self._close_quietly(k, "timeout") for k in due]
        PENDING.set(len(self.pending))
        return [p for p in out if p is not None]

    def _close(self, key: PairKey, closed_by: str) -> Prediction:
        entry = self.pending.pop(key)
        self._written[key] = None
        while len(self._written) > self.cfg.max_pending:
            self._written.popitem(last=False)
        PREDICTIONS.labels(closed_by).inc()
        return self.build(key, entry.request, entry.response)

    def _close_quietly(self, key: PairKey, closed_by: str) -> Prediction | None:
        """:meth:`_close` for timers: no message to dead-letter, so a record that breaks a
        rule (a gap in the checks above) is counted and logged instead of stopping the stage."""
        try:
            return self._close(key, closed_by)
        except validate.REJECTED as e:
            validate.invalid(STAGE, "prediction")
            log.error("predictions: dropped the record of %r: %s", key, validate.describe(e))
            return None

    def _payload(self, event: CloudEvent | None, side: Side) -> tuple[Payload | None, str]:
        if event is None:
            return None, ""
        try:
            return parse(event.data, side, self.limits), ""
        except PayloadError as e:
            ERRORS.labels("payload").inc()
            return None, str(e)

    def build(
        self, key: PairKey, request: CloudEvent | None, response: CloudEvent | None
    ) -> Prediction:
        """The record of one request and/or response."""
        tenant, namespace, service, component, request_id = key
        inputs, input_error = self._payload(request, "request")
        outputs, output_error = self._payload(response, "response")
        parsed = [p for p in (inputs, outputs) if p is not None]
        attributes = (request or response).attributes  # type: ignore[union-attr]
        started, ended = _time_ns(request), _time_ns(response)
        name = validate.text
        return Prediction(
            tenant=name(tenant),
            cluster=event_cluster(attributes.get(CLUSTER_EXTENSION), STAGE),
            service=name(service),
            model=next((p.model for p in parsed if p.model), "") or name(service),
            model_version=next((p.model_version for p in parsed if p.model_version), ""),
            namespace=name(namespace),
            component=name(component),
            endpoint=name(attributes.get("endpoint", "")),
            request_id=name(request_id),
            protocol=parsed[0].protocol if parsed else "unknown",
            instances=min(max((p.instances for p in parsed), default=0), validate.MAX_COUNT),
            inputs=inputs.columns if inputs else {},
            outputs=outputs.columns if outputs else {},
            paired=request is not None and response is not None,
            time_unix_nano=started or ended or 0,
            latency_ms=_latency_ms(started, ended),
            truncated=any(p.truncated for p in parsed),
            payload_error=validate.text(
                "; ".join(e for e in (input_error, output_error) if e), 1000
            ),
        )

    # -- Processor -----------------------------------------------------------------------
    def process(self, messages: list[Message]) -> list[Output]:
        out: list[Output] = []
        for message in messages:
            try:
                # Opened (decrypted) first; an untrusted event's tenant is dropped.
                value, trusted = self.seal.open(message, self.name)
                event = from_kafka(message.headers, value)
                if not trusted:  # nor its cluster (collectors.common.cluster)
                    event = stamp_cluster(stamp_tenant(event, ""), "")
            except BrokenSeal as e:
                out.append(dead_letter(self.topics.dead_letter, self.name, message,
                                       e.reason, str(e)))
                continue
            except CloudEventError as e:
                ERRORS.labels("not_cloudevent").inc()
                out.append(dead_letter(self.topics.dead_letter, self.name, message,
                                       "decode_error", str(e)))
                continue
            try:
                out += [self._output(p) for p in self.add(event)]
            except validate.REJECTED as e:  # a record that breaks a rule: this message only
                ERRORS.labels("invalid").inc()
                out.append(dead_letter(self.topics.dead_letter, self.name, message,
                                       validate.reason(e), validate.describe(e)))
        return out

    def tick(self) -> list[Output]:
        return [self._output(p) for p in self.close_due()]

    def _output(self, prediction: Prediction) -> Output:
        key = segment_key(prediction.segment_of(self.segment_keys))
        return Output(self.topics.predictions, key, encode(prediction))
