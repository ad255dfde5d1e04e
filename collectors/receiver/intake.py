"""What every OTLP receiver does once a request is decoded, whatever its transport.

:class:`Intake` owns the Kafka producer, the shared :class:`~observer.collectors.receiver.budget.InflightBudget`
and the token -> tenant :class:`~observer.collectors.common.tenancy.Authenticator`. The HTTP and gRPC
receivers call, in order: :meth:`Intake.authenticate`, :meth:`Intake.admit`, then
:meth:`Intake.export`, which stamps the tenant, splits the request for Kafka, waits for
Kafka's acknowledgement (``acks=all``) and builds the OTLP answer. The HTTP receiver calls its
two halves instead, :meth:`Intake.prepare` and :meth:`Intake.deliver`, so that the wait for
the acks happens on its event loop rather than in a worker thread. Each failure is a
:class:`Refusal` carrying both its HTTP status and its gRPC code, so the two transports answer
the same situation the same way:

=====================  ====  ===================================  ==========
situation              HTTP  gRPC                                 retryable
=====================  ====  ===================================  ==========
unparsable body        400   INVALID_ARGUMENT                     no
bad or missing token   401   UNAUTHENTICATED                      no
too large              413   RESOURCE_EXHAUSTED (no RetryInfo)    no
in-flight budget full  429   UNAVAILABLE + RetryInfo              yes
Kafka did not ack      503   UNAVAILABLE + RetryInfo              yes
=====================  ====  ===================================  ==========
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from google.rpc import code_pb2
from prometheus_client import Counter

from observer.collectors.receiver import trace_split
from observer.collectors.receiver.budget import InflightBudget, Saturated, Slot
from observer.collectors.receiver.signals import Signal
from observer.collectors.receiver.spool import Entry, Spool
from observer.collectors.common.cluster import ClusterStamp
from observer.collectors.common.tenancy import Authenticator, stamp
from observer.collectors.common.tenant_seal import TenantSeal
from observer.collectors.receiver.trace_split import TraceSplit
from observer.core.authorization import DuplicateAuthorization
from observer.core.bus import Output
from observer.collectors.receiver.config import ReceiverConfig
from observer.core.config import KafkaConfig
from observer.core.producers import (
    DurableProducer,
    MessageTooLarge,
    NotDurable,
    Placed,
    acknowledged,
    open_durable_producer,
    wait_acknowledged,
)
from observer.core.topics import Topics

log = logging.getLogger(__name__)

SPANS = Counter(
    "observer_receiver_spans_total",
    "Spans received: accepted (acknowledged by Kafka) or rejected (invalid ids).",
    ["outcome"],
)
ITEMS = Counter(
    "observer_receiver_items_total",
    "Spans, metric data points and log records received, by signal and outcome.",
    ["signal", "outcome"],
)


_EXPORT_UNIT = "the spans of one trace, or the data of one resource"

BUSY_QUIET_S = 0.05
"""The receivers count as busy until no request has been in flight for this long: under load
the gaps between requests (a client's turnaround) are a few milliseconds, and a stage that
took such a gap for idleness would start a full batch in the middle of the burst."""


@dataclass
class Prepared:
    """An export request split into Kafka messages, ready for :meth:`Intake.deliver`."""

    signal: Signal
    split: TraceSplit
    outputs: list[Output]


class Refusal(Exception):
    """An export answered with an error status; carries what either transport's answer needs."""

    def __init__(
        self,
        http_status: int,
        grpc_code: int,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        bad_request: bool = False,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.grpc_code = grpc_code
        self.message = message
        self.headers = dict(headers or {})
        self.bad_request = bad_request
        self.retry_after_s = retry_after_s
        if retry_after_s is not None:
            self.headers.setdefault("Retry-After", str(retry_after_s))


def unauthenticated(message: str = "missing or wrong bearer token") -> Refusal:
    return Refusal(
        401,
        code_pb2.UNAUTHENTICATED,
        message,
        headers={"WWW-Authenticate": "Bearer"},
    )


def too_large(message: str) -> Refusal:
    return Refusal(413, code_pb2.RESOURCE_EXHAUSTED, message)


def bad_request(message: str) -> Refusal:
    return Refusal(400, code_pb2.INVALID_ARGUMENT, message, bad_request=True)


class Intake:
    """Authentication, admission and the durable write to Kafka, shared by the receivers.

    :meth:`open` creates the producer (``receiver.kafka_client``); :meth:`close` closes it.
    """

    def __init__(
        self, receiver: ReceiverConfig, kafka: KafkaConfig, topics: Topics,
        spool: Spool | None = None,
    ) -> None:
        self.receiver = receiver
        # Embedded durable mode: acknowledged messages are fsynced here before the answer.
        self.spool = spool
        self.kafka = kafka
        self.topics = topics
        self.budget = InflightBudget(receiver.max_inflight_requests, receiver.max_inflight_bytes)
        self.auth = Authenticator(receiver.auth_token, receiver.tenants)
        # Seals (encrypts, authenticates) what the receivers write: collectors.common.tenant_seal.
        self.seal = TenantSeal(receiver.stamp_key)
        # The cluster stamped on every resource: collectors.common.cluster.
        self.cluster = ClusterStamp(receiver.cluster, receiver.cluster_pinned)
        self.producer: DurableProducer | None = None

    def open(self) -> Intake:
        if trace_split.native is None:
            log.warning(
                "receiver: collectors.receiver._trace_split (C) is not built, so traces are regrouped "
                "in Python, several times slower; reinstall observer where a C compiler is available"
            )
        # Sealed values are ciphertext: compressing them would cost CPU and save nothing.
        kafka = (self.kafka.model_copy(update={"compression": "none"})
                 if self.seal.active else self.kafka)
        # Every Kafka wait is bounded by ack_timeout_s, metadata included.
        self.producer = open_durable_producer(
            self.receiver.kafka_client,
            kafka,
            self.receiver.ack_timeout_s,
            self.receiver.linger_ms,
        )
        return self

    def close(self) -> None:
        if self.producer is None:
            return
        try:
            self.producer.close(5)
        except Exception as e:  # noqa: BLE001 (unacknowledged records: clients got 503)
            log.warning("OTLP receiver: Kafka producer did not close cleanly: %s", e)
        self.producer = None

    def busy(self) -> bool:
        """Whether export requests are in flight or were a moment ago (:data:`BUSY_QUIET_S`):
        consuming stages in this process give way meanwhile."""
        return self.budget.active(BUSY_QUIET_S)

    def authenticate(self, authorization: Sequence[str | bytes]) -> str:
        """The tenant of a request given ALL its ``Authorization`` values, or a 401
        :class:`Refusal` (a missing or wrong token, or more than one header)."""
        try:
            tenant = self.auth.tenant_of(authorization)
        except DuplicateAuthorization as e:
            raise unauthenticated(str(e)) from None
        if tenant is None:
            raise unauthenticated()
        return tenant

    def admit(self) -> Slot:
        """A slot of the in-flight budget, or a retryable 429 :class:`Refusal`."""
        try:
            return self.budget.admit()
        except Saturated as e:
            raise self.saturated(str(e)) from None

    def reserve(self) -> Slot:
        """A slot holding no request yet, for a body still arriving: charge its bytes with
        :meth:`account` as they come, then :meth:`take_request` once it is whole."""
        return self.budget.reserve()

    def take_request(self, slot: Slot) -> None:
        """Count ``slot`` as a request in flight, or raise a retryable 429 :class:`Refusal`."""
        try:
            slot.take_request()
        except Saturated as e:
            raise self.saturated(str(e)) from None

    def account(self, slot: Slot, size: int) -> None:
        """Charge ``size`` more decoded bytes to ``slot``, or raise a retryable 429
        :class:`Refusal` (:mod:`observer.collectors.receiver.decoded_size` says what a body costs).

        A request bigger than the whole byte budget could never pass: 413, not retryable.
        """
        if slot.bytes + size > self.budget.max_bytes:
            raise too_large(
                f"request of {slot.bytes + size} decoded bytes (estimated from the body: "
                f"see observer_receiver_inflight_bytes) exceeds the in-flight budget "
                f"({self.budget.max_bytes} bytes, receiver.max_inflight_bytes)"
            )
        try:
            slot.add_bytes(size)
        except Saturated as e:
            raise self.saturated(str(e)) from None

    def saturated(self, why: str) -> Refusal:
        return Refusal(
            429,
            code_pb2.UNAVAILABLE,
            f"receiver saturated, retry later: {why}",
            retry_after_s=self.receiver.retry_after_s,
        )

    def prepare(
        self, signal: Signal, request: Any, tenant: str, raw: bytes | None = None
    ) -> Prepared:
        """Stamp the tenant and the cluster, and split the request into Kafka messages (CPU work, no I/O but
        cached metadata).

        ``raw``: the protobuf bytes ``request`` was parsed from, when there are some (spans
        are then copied from them rather than re-encoded).
        """
        resources = [r.resource for r in getattr(request, signal.resources)]
        stamp(resources, tenant)
        self.cluster.stamp(resources)
        topic = signal.topic(self.topics)
        split = signal.split(
            request, self._partitions(topic), self.receiver.max_message_bytes, raw
        )
        outputs = [self.seal.sealed(Output(topic, key, value))
                   for key, value in split.encoded.items()]
        return Prepared(signal, split, outputs)

    async def deliver(self, prepared: Prepared) -> Message:
        """Write a prepared export and wait for Kafka's acks on the event loop; the OTLP
        response message, or a :class:`Refusal` (see :meth:`write`)."""
        await self.write_async(prepared.outputs, prepared.signal.name, _EXPORT_UNIT)
        return self._answer(prepared)

    def export(
        self, signal: Signal, request: Any, tenant: str, raw: bytes | None = None
    ) -> Message:
        """:meth:`prepare` and :meth:`deliver`, blocking: for worker threads (gRPC)."""
        prepared = self.prepare(signal, request, tenant, raw)
        self.write(prepared.outputs, signal.name, _EXPORT_UNIT)
        return self._answer(prepared)

    def _answer(self, prepared: Prepared) -> Message:
        signal, split = prepared.signal, prepared.split
        ITEMS.labels(signal.name, "accepted").inc(split.accepted)
        if signal.name == "traces":
            SPANS.labels("accepted").inc(split.accepted)
        answer = signal.response()
        if split.rejected:
            ITEMS.labels(signal.name, "rejected").inc(split.rejected)
            if signal.name == "traces":
                SPANS.labels("rejected").inc(split.rejected)
            partial = answer.partial_success  # type: ignore[attr-defined]
            setattr(partial, signal.rejected_field, split.rejected)
            partial.error_message = (
                f"{split.rejected} {signal.rejected_field.removeprefix('rejected_')} rejected: "
                f"{signal.why_rejected}"
            )
        return answer

    def _partitions(self, topic: str) -> int:
        """How many partitions ``topic`` has (cached metadata; a 503 when Kafka is gone)."""
        if self.producer is None:
            raise RuntimeError("Intake.prepare before Intake.open")
        try:
            return self.producer.partitions(topic)
        except NotDurable as e:
            raise self.not_durable(f"Kafka metadata for {topic} unavailable: {e}") from None

    def not_durable(self, message: str) -> Refusal:
        return Refusal(
            503, code_pb2.UNAVAILABLE, message, retry_after_s=self.receiver.retry_after_s
        )

    def write(self, outputs: list[Output], what: str, unit: str = "one message") -> None:
        """Produce ``outputs`` and wait for Kafka's acks (``acks=all``), or raise a
        :class:`Refusal`: 413 when a message is over Kafka's size limit (retrying cannot
        help), else a retryable 503. Blocking: call it from a worker thread.
        """
        future = self._submit(outputs, what, unit)
        try:
            placed = wait_acknowledged(future, self.receiver.ack_timeout_s)
        except (MessageTooLarge, NotDurable) as e:
            raise self._refusal(e, outputs, what, unit) from None
        kept = self._spooled(outputs, placed)
        if kept is not None:
            try:
                kept.result(self.receiver.ack_timeout_s)
            except Exception as e:  # noqa: BLE001 (disk full, I/O error, timeout)
                raise self._not_spooled(e, what) from None

    async def write_async(
        self, outputs: list[Output], what: str, unit: str = "one message"
    ) -> None:
        """:meth:`write` on the event loop: the wait for the acks holds no thread."""
        future = self._submit(outputs, what, unit)
        try:
            placed = await acknowledged(future, self.receiver.ack_timeout_s)
        except (MessageTooLarge, NotDurable) as e:
            raise self._refusal(e, outputs, what, unit) from None
        kept = self._spooled(outputs, placed)
        if kept is not None:
            try:
                await asyncio.wait_for(asyncio.wrap_future(kept), self.receiver.ack_timeout_s)
            except Exception as e:  # noqa: BLE001 (disk full, I/O error, timeout)
                raise self._not_spooled(e, what) from None

    def _spooled(self, outputs: list[Output], placed: list[Placed]) -> Future[None] | None:
        """Append what Kafka acknowledged to the spool (fsynced by its writer thread)."""
        if self.spool is None:
            return None
        return self.spool.append(
            Entry(o.topic, partition, offset,
                  o.key.encode() if isinstance(o.key, str) else o.key, o.value, o.headers)
            for o, (partition, offset) in zip(outputs, placed)
        )

    def _not_spooled(self, error: Exception, what: str) -> Refusal:
        log.error("receiver: the %s were not written to the local spool: %r", what, error)
        return self.not_durable(f"the {what} could not be kept on local disk: {error!r}")

    def _submit(self, outputs: list[Output], what: str, unit: str) -> Future[list[Placed]]:
        if self.producer is None:
            raise RuntimeError("Intake.write before Intake.open")
        try:
            return self.producer.submit(outputs)
        except (MessageTooLarge, NotDurable) as e:
            raise self._refusal(e, outputs, what, unit) from None

    def _refusal(
        self, error: MessageTooLarge | NotDurable, outputs: list[Output], what: str, unit: str
    ) -> Refusal:
        if isinstance(error, MessageTooLarge):
            return too_large(
                f"the {what} of one Kafka message exceed its size limit ({unit}): "
                f"message size {error}"
            )
        log.warning("receiver: Kafka did not acknowledge %d %s messages: %s",
                    len(outputs), what, error)
        return self.not_durable(f"Kafka did not acknowledge the {what}: {error}")
