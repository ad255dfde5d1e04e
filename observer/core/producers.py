"""Durable writes for the receivers: produce, wait for ``acks=all``, or say why not.

The receivers answer 200 only once Kafka holds the data, so a request's latency and CPU are
those of its Kafka writes. kafka-python builds and tracks every record in Python: about 3 ms
of CPU for a 500-span request on the benchmark machine, more than parsing and regrouping it.
librdkafka (``confluent-kafka``) does the same in C for about 0.5 ms. Both sit behind
:class:`DurableProducer`, chosen by ``receiver.kafka_client``; the consuming stages can
write through the same librdkafka client (``kafka.stage_client``,
:mod:`observer.core.stage_producer`).

Both place keyed records with Kafka's murmur2 (librdkafka's own default, CRC32, would put a
trace on another partition than the Java client, a Collector or kafka-python do), and both
raise the same two errors, so the receivers map them to HTTP and gRPC answers once:

- :class:`MessageTooLarge`: a message over the client's 16 MiB limit or the broker's; retrying
  cannot help (413);
- :class:`NotDurable`: anything else that leaves the acknowledgement missing (503, retry).

Kafka options in ``kafka.client_options`` are kafka-python's names; :data:`LIBRDKAFKA_NAMES`
translates the security ones, and an option it cannot translate is a configuration error at
start, never silently dropped.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from typing import Any, Protocol

from observer.core.bus import MAX_MESSAGE_BYTES, Output, make_producer
from observer.core.config import ConfigError, KafkaConfig

log = logging.getLogger(__name__)
RDKAFKA_LOG = logging.getLogger("librdkafka")

LIBRDKAFKA_NAMES: dict[str, str] = {
    "client_id": "client.id",
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanisms",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    "ssl_password": "ssl.key.password",
    "ssl_check_hostname": "ssl.endpoint.identification.algorithm",
}
"""kafka-python option -> librdkafka property, for ``kafka.client_options``."""


Placed = tuple[int, int]
"""Where Kafka put one acknowledged message: ``(partition, offset)``."""


class MessageTooLarge(Exception):
    """A message is over the client's or the broker's size limit."""


class NotDurable(Exception):
    """Kafka did not acknowledge every message in time (or refused them)."""


class DurableProducer(Protocol):
    """What the receivers need from a Kafka client."""

    def partitions(self, topic: str) -> int:
        """How many partitions ``topic`` has (from cached metadata); :class:`NotDurable` when
        the cluster cannot say."""
        ...

    def submit(self, outputs: Sequence[Output]) -> Future[list[Placed]]:
        """Produce ``outputs``; the future completes once all are acknowledged by all in-sync
        replicas, with where each landed (:data:`Placed`, in the order of ``outputs``), or
        fails with :class:`MessageTooLarge` or :class:`NotDurable`.

        A message that cannot even be queued raises one of the two at once. Otherwise this
        returns without waiting on the network: the HTTP receiver calls it on its event loop
        and awaits the future there (:func:`acknowledged`).
        """
        ...

    def close(self, timeout_s: float) -> None: ...


def wait_acknowledged(future: Future[list[Placed]], timeout_s: float) -> list[Placed]:
    """Block until ``future`` (from :meth:`DurableProducer.submit`) completes; where each
    message landed, or a :class:`NotDurable` after ``timeout_s``."""
    try:
        return future.result(timeout_s)
    except TimeoutError:
        raise NotDurable(f"no acknowledgement within {timeout_s:g} s") from None


async def acknowledged(future: Future[list[Placed]], timeout_s: float) -> list[Placed]:
    """:func:`wait_acknowledged` on an event loop: the wait holds no thread."""
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
    except TimeoutError:
        raise NotDurable(f"no acknowledgement within {timeout_s:g} s") from None


class _Acks:
    """Counts one submission's acknowledgements (on the client's I/O thread) into a future
    whose result says where each message landed."""

    def __init__(self, expected: int, too_large: Callable[[Any], bool]) -> None:
        self.future: Future[list[Placed]] = Future()
        self._remaining = expected
        self._placed: list[Placed] = [(-1, -1)] * expected
        self._errors: list[Any] = []
        self._too_large = too_large
        self._lock = threading.Lock()
        if expected == 0:
            self.future.set_result([])

    def report(self, error: Any, index: int = -1, partition: int = -1, offset: int = -1) -> None:
        with self._lock:
            if error is not None:
                self._errors.append(error)
            elif index >= 0:
                self._placed[index] = (partition, offset)
            self._remaining -= 1
            if self._remaining:
                return
        try:
            if not self._errors:
                self.future.set_result(self._placed)
            elif any(self._too_large(e) for e in self._errors):
                self.future.set_exception(MessageTooLarge(str(self._errors[0])))
            else:
                self.future.set_exception(NotDurable(str(self._errors[0])))
        except InvalidStateError:  # the waiter timed out and cancelled the future
            pass


class KafkaPythonProducer:
    """:class:`DurableProducer` on kafka-python (``receiver.kafka_client: kafka-python``)."""

    def __init__(self, cfg: KafkaConfig, timeout_s: float, linger_ms: float = 1.0) -> None:
        from kafka.errors import MessageSizeTooLargeError

        self._too_large = MessageSizeTooLargeError
        # Every Kafka wait is bounded by timeout_s: max_block_ms covers metadata (a lost
        # broker), and records answered with 503 expire soon after instead of being delivered
        # minutes later next to the client's retry (and blocking close meanwhile).
        wait_ms = int(timeout_s * 1000)
        self._producer = make_producer(
            cfg,
            linger_ms=linger_ms,
            max_block_ms=wait_ms,
            request_timeout_ms=wait_ms,
            delivery_timeout_ms=wait_ms + 1000,  # kafka-python wants >= request + linger
        )

    def partitions(self, topic: str) -> int:
        try:
            return len(self._producer.partitions_for(topic))
        except Exception as e:  # noqa: BLE001 (KafkaTimeoutError...)
            raise NotDurable(f"no metadata for {topic}: {e}") from None

    def submit(self, outputs: Sequence[Output]) -> Future[list[Placed]]:
        acks = _Acks(len(outputs), lambda e: isinstance(e, self._too_large))
        for i, o in enumerate(outputs):
            try:
                sent = self._producer.send(
                    o.topic,
                    key=o.key.encode() if isinstance(o.key, str) else o.key,
                    value=o.value,
                    headers=list(o.headers) or None,
                )
            except self._too_large as e:
                raise MessageTooLarge(str(e)) from None
            except Exception as e:  # noqa: BLE001 (KafkaTimeoutError, a closed producer...)
                raise NotDurable(str(e)) from None
            sent.add_callback(
                lambda meta, i=i: acks.report(None, i, meta.partition, meta.offset)
            )
            sent.add_errback(acks.report)
        return acks.future

    def close(self, timeout_s: float) -> None:
        self._producer.close(timeout_s)


class LibrdkafkaProducer:
    """:class:`DurableProducer` on librdkafka (``receiver.kafka_client: librdkafka``).

    One thread serves librdkafka's delivery reports and completes each submission's future.
    Partition counts are cached for ``metadata_max_age_s``.
    """

    def __init__(
        self,
        cfg: KafkaConfig,
        timeout_s: float,
        linger_ms: float = 1.0,
        metadata_max_age_s: float = 30.0,
    ) -> None:
        from confluent_kafka import KafkaError, KafkaException, Producer

        self._kafka_exception = KafkaException
        # The broker's refusal and librdkafka's own check before sending share this code.
        self._too_large_codes = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE}
        self._timeout_s = timeout_s
        self._metadata_max_age_s = metadata_max_age_s
        self._partitions: dict[str, tuple[int, float]] = {}
        # librdkafka's own log lines go through Python logging, not straight to stderr.
        self._producer = Producer(
            librdkafka_config(cfg, timeout_s, linger_ms), logger=RDKAFKA_LOG
        )
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="librdkafka-acks", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.05)

    def partitions(self, topic: str) -> int:
        cached = self._partitions.get(topic)
        if cached is not None and time.monotonic() - cached[1] < self._metadata_max_age_s:
            return cached[0]
        try:
            metadata = self._producer.list_topics(topic, timeout=self._timeout_s)
        except self._kafka_exception as e:
            raise NotDurable(f"no metadata for {topic}: {e}") from None
        described = metadata.topics.get(topic)
        if described is None or described.error is not None or not described.partitions:
            why = described.error if described is not None else "unknown topic"
            raise NotDurable(f"no metadata for {topic}: {why}")
        self._partitions[topic] = (len(described.partitions), time.monotonic())
        return len(described.partitions)

    def submit(self, outputs: Sequence[Output]) -> Future[list[Placed]]:
        acks = _Acks(len(outputs), lambda e: e.code() in self._too_large_codes)
        for i, o in enumerate(outputs):
            key = o.key.encode() if isinstance(o.key, str) else o.key
            try:
                self._producer.produce(
                    o.topic, value=o.value, key=key, headers=list(o.headers) or None,
                    on_delivery=lambda error, message, i=i: acks.report(
                        error, i, message.partition(), message.offset()
                    ),
                )
            except BufferError as e:  # librdkafka's local queue is full
                raise NotDurable(f"producer queue full: {e}") from None
            except self._kafka_exception as e:
                if e.args and e.args[0].code() in self._too_large_codes:
                    raise MessageTooLarge(f"{len(o.value or b'')} bytes: {e}") from None
                raise NotDurable(str(e)) from None
        return acks.future

    def close(self, timeout_s: float) -> None:
        try:
            left = self._producer.flush(timeout_s)
            if left:
                log.warning("Kafka producer closed with %d unacknowledged messages", left)
        finally:
            self._closed.set()
            self._poller.join(timeout_s)


def librdkafka_config(
    cfg: KafkaConfig, timeout_s: float, linger_ms: float = 1.0
) -> dict[str, Any]:
    """librdkafka properties equivalent to :func:`observer.core.bus.make_producer`'s options.

    >>> conf = librdkafka_config(KafkaConfig(client_options={"security_protocol": "SSL"}), 5)
    >>> conf["partitioner"], conf["acks"], conf["security.protocol"], conf["message.timeout.ms"]
    ('murmur2_random', 'all', 'SSL', 5000)
    >>> librdkafka_config(KafkaConfig(client_options={"api_version": (3, 0)}), 5)
    Traceback (most recent call last):
    ...
    ValueError: kafka.client_options: api_version has no librdkafka equivalent here; set receiver.kafka_client: kafka-python to use it
    """
    conf: dict[str, Any] = {
        "bootstrap.servers": cfg.servers,
        "acks": "all",
        "linger.ms": linger_ms,
        "compression.type": cfg.compression,
        "partitioner": "murmur2_random",  # Kafka's Java placement, as kafka-python's
        "message.max.bytes": MAX_MESSAGE_BYTES,
        "message.timeout.ms": int(timeout_s * 1000),
        "socket.timeout.ms": max(int(timeout_s * 1000), 10),
        **librdkafka_client_options(cfg),
    }
    return conf


def librdkafka_client_options(cfg: KafkaConfig,
                              switch: str = "receiver.kafka_client") -> dict[str, Any]:
    """``kafka.client_options`` (kafka-python names) as librdkafka properties, for producers
    and consumers alike; :class:`ValueError` naming an option :data:`LIBRDKAFKA_NAMES` lacks,
    and ``switch``, the knob that selects kafka-python instead.

    >>> librdkafka_client_options(KafkaConfig(client_options={"ssl_check_hostname": False}))
    {'ssl.endpoint.identification.algorithm': 'none'}
    """
    conf: dict[str, Any] = {}
    for name, value in cfg.client_options.items():
        property_name = LIBRDKAFKA_NAMES.get(name)
        if property_name is None:
            raise ValueError(
                f"kafka.client_options: {name} has no librdkafka equivalent here; "
                f"set {switch}: kafka-python to use it"
            )
        if name == "ssl_check_hostname":
            value = "https" if value else "none"
        conf[property_name] = value
    return conf


def check_stage_client(cfg: KafkaConfig) -> None:
    """A :class:`ConfigError` at start when ``kafka.stage_client`` is librdkafka and
    ``kafka.client_options`` holds an option it cannot take (stages' consumers and producers)."""
    if cfg.stage_client == "librdkafka":
        try:
            librdkafka_client_options(cfg, switch="kafka.stage_client")
        except ValueError as e:
            raise ConfigError(str(e)) from None


def open_durable_producer(
    client: str, cfg: KafkaConfig, timeout_s: float, linger_ms: float = 1.0
) -> DurableProducer:
    """The :class:`DurableProducer` named by ``receiver.kafka_client``."""
    if client == "librdkafka":
        return LibrdkafkaProducer(cfg, timeout_s, linger_ms)
    return KafkaPythonProducer(cfg, timeout_s, linger_ms)
