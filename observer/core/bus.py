"""The Kafka bus: producers, consumer groups and the loop every consuming stage runs in.

A stage is a :class:`Processor`: it turns a batch of input messages into output messages.
:class:`StageRunner` owns the consumer group and gives the guarantee every stage shares:
outputs are acknowledged by Kafka (``acks=all``) *before* the input offsets are committed,
so a crash anywhere re-delivers the batch (at least once) and never drops it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from prometheus_client import Counter, Gauge, Histogram

from observer.core.config import KafkaConfig
from observer.core.topics import Topics

log = logging.getLogger(__name__)

STAGE_MESSAGES = Counter(
    "observer_stage_messages_total", "Messages consumed by a stage.", ["stage"]
)
STAGE_OUTPUTS = Counter(
    "observer_stage_outputs_total", "Messages produced by a stage.", ["stage"]
)
STAGE_ERRORS = Counter(
    "observer_stage_errors_total", "Batches a stage failed to process.", ["stage"]
)
STAGE_BATCH_SECONDS = Histogram(
    "observer_stage_batch_duration_seconds", "Time to process and acknowledge one batch.", ["stage"]
)
STAGE_LAG = Gauge(
    "observer_stage_lag_messages",
    "Messages not yet consumed on the partitions this replica holds (high watermark - position).",
    ["stage", "topic"],
)
STAGE_YIELD_SECONDS = Counter(
    "observer_stage_yield_seconds_total",
    "Seconds a stage waited for busy receivers in the same process before a batch.",
    ["stage"],
)
LAG_INTERVAL_S = 1.0
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""The producers' client-side message limit (the broker has its own)."""


@dataclass(frozen=True)
class Message:
    """One consumed Kafka message."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...] = ()
    """Kafka record headers (CloudEvents' Kafka binding puts attributes here)."""


@dataclass(frozen=True)
class Output:
    """One message a stage wants produced."""

    topic: str
    key: str | bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()


class Processor(Protocol):
    """What a consuming stage implements. Both methods return the messages to produce."""

    name: str

    def process(self, messages: list[Message]) -> list[Output]: ...

    def tick(self) -> list[Output]:
        """Called after every poll, even an empty one: timers, retries, flushes."""
        ...


def _common(cfg: KafkaConfig) -> dict[str, Any]:
    return {"bootstrap_servers": cfg.servers.split(","), **cfg.client_options}


def make_producer(cfg: KafkaConfig, **overrides: Any) -> KafkaProducer:
    """A producer whose acknowledgements mean every in-sync replica has the data."""
    opts: dict[str, Any] = {
        "acks": "all",
        "linger_ms": 5,
        "retries": 5,
        "max_request_size": MAX_MESSAGE_BYTES,
        "compression_type": None if cfg.compression == "none" else cfg.compression,
        **_common(cfg),
        **overrides,
    }
    return KafkaProducer(**opts)


def make_consumer(cfg: KafkaConfig, group_id: str | None, topics: Iterable[str] = (), **overrides: Any) -> KafkaConsumer:
    """A consumer that never auto-commits: the caller commits after processing."""
    opts: dict[str, Any] = {
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": cfg.session_timeout_ms,
        "heartbeat_interval_ms": cfg.heartbeat_interval_ms,
        "max_poll_records": 500,
        **_common(cfg),
        **overrides,
    }
    consumer = KafkaConsumer(**opts)
    topics = list(topics)
    if topics:
        consumer.subscribe(topics)
    return consumer


def ensure_topics(cfg: KafkaConfig, topics: Topics) -> list[str]:
    """Create the missing topics; returns the names created."""
    admin = KafkaAdminClient(**_common(cfg))
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(
                name,
                cfg.partitions,
                cfg.replication_factor,
                topic_configs={"cleanup.policy": "compact"} if spec.compacted else {},
            )
            for name, spec in topics.all().items()
            if name not in existing
        ]
        if wanted:
            try:
                admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass  # another replica created them first
        return [t.name for t in wanted]
    finally:
        admin.close()


def kafka_answers(cfg: KafkaConfig, timeout_s: float = 2.0) -> bool:
    """True when a broker answers a metadata request. May block well past ``timeout_s``
    against an unreachable address (kafka-python retries bootstrap): use :class:`KafkaProbe`
    where the caller must not wait."""
    timeout_ms = max(int(timeout_s * 1000), 1000)
    try:
        consumer = KafkaConsumer(
            request_timeout_ms=timeout_ms,
            session_timeout_ms=timeout_ms - 1,
            heartbeat_interval_ms=max(timeout_ms // 3, 1),
            **_common(cfg),
        )
    except KafkaError:
        return False
    try:
        consumer.topics()
        return True
    except KafkaError:
        return False
    finally:
        consumer.close()


class KafkaProbe:
    """Readiness check for health endpoints: answers within ``timeout_s`` whatever Kafka does.

    At most one probe runs at a time; its answer is reused for ``cache_s`` seconds.
    """

    def __init__(self, cfg: KafkaConfig, timeout_s: float = 2.0, cache_s: float = 2.0) -> None:
        self.cfg = cfg
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self._lock = threading.Lock()
        self._result = False
        self._checked_at = float("-inf")
        self._running: threading.Thread | None = None

    def _probe(self) -> None:
        ok = kafka_answers(self.cfg, self.timeout_s)
        with self._lock:
            self._result, self._checked_at = ok, time.monotonic()

    def ready(self) -> bool:
        with self._lock:
            if time.monotonic() - self._checked_at < self.cache_s:
                return self._result
            if self._running is None or not self._running.is_alive():
                self._running = threading.Thread(target=self._probe, daemon=True, name="kafka-probe")
                self._running.start()
            running = self._running
        running.join(self.timeout_s)
        with self._lock:
            fresh = time.monotonic() - self._checked_at < self.cache_s
            return self._result if fresh else False


def topic_partitions(consumer: KafkaConsumer, topic: str, deadline: float) -> list[TopicPartition]:
    """``topic``'s partitions, sorted, waiting for its metadata until ``deadline``
    (``time.monotonic()``); :class:`TimeoutError` naming the topic after that."""
    partitions = consumer.partitions_for_topic(topic)
    while not partitions:
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic} has no partitions")
        time.sleep(0.2)
        partitions = consumer.partitions_for_topic(topic)
    return [TopicPartition(topic, p) for p in sorted(partitions)]


def produce_all(producer: KafkaProducer, outputs: list[Output], timeout_s: float) -> None:
    """Send and wait for every acknowledgement; raises the first failure."""
    futures = [
        producer.send(
            o.topic,
            key=o.key.encode() if isinstance(o.key, str) else o.key,
            value=o.value,
            headers=list(o.headers) or None,
        )
        for o in outputs
    ]
    producer.flush(timeout=timeout_s)
    for f in futures:
        f.get(timeout=timeout_s)


BUSY_BATCH_RECORDS = 1
"""Records a stage takes per batch while the receivers of its process stay busy past
``max_yield_s``: an OTLP message holds a hundred spans or more, about 10 ms of normaliser
time, so a stage keeps moving without taking a measurable share of the receivers' GIL."""


class StageRunner:
    """Runs one :class:`Processor` in a consumer group until ``stop`` is set.

    Poll -> process -> produce and wait for acks -> commit. A failed batch is not committed;
    the runner stops with the error so the process (or the one-process runtime) can report it
    and a restart picks the batch up again.

    ``yield_to``: when it answers true, the runner waits (``max_yield_s`` at most) before its
    next poll; the one-process runtime passes "the receivers have requests in flight".
    """

    def __init__(
        self,
        cfg: KafkaConfig,
        processor: Processor,
        group_id: str,
        topics: list[str],
        *,
        poll_timeout_ms: int = 200,
        ack_timeout_s: float = 30.0,
        yield_to: Callable[[], bool] | None = None,
        max_yield_s: float = 0.5,
    ) -> None:
        self.cfg = cfg
        self.yield_to = yield_to
        self.max_yield_s = max_yield_s
        self.processor = processor
        self.group_id = group_id
        self.topics = topics
        self.poll_timeout_ms = poll_timeout_ms
        self.ack_timeout_s = ack_timeout_s
        self.error: BaseException | None = None
        self.assigned = threading.Event()

    def _record_lag(self, consumer: KafkaConsumer) -> None:
        """Lag per topic over the partitions held now, from the last fetch's high watermarks
        (no request to the broker). The KEDA scaler reads the group's lag from Kafka itself;
        this is for dashboards."""
        lag: dict[str, int] = {t: 0 for t in self.topics}
        try:
            for tp in consumer.assignment():
                high = consumer.highwater(tp)
                if high is not None:
                    lag[tp.topic] = lag.get(tp.topic, 0) + max(high - consumer.position(tp), 0)
        except KafkaError as e:  # a rebalance under way: try again next time
            log.debug("lag of %s not read: %s", self.processor.name, e)
            return
        for topic, n in lag.items():
            STAGE_LAG.labels(self.processor.name, topic).set(n)

    def _give_way(self, stop: threading.Event) -> int | None:
        """While ``yield_to`` says so (the receivers sharing this process are busy), wait before
        the next batch, ``max_yield_s`` at most: in one process the GIL is shared, and a
        durable acknowledgement to a client matters more than a few seconds of analysis lag.

        The most records the next poll may take: :data:`BUSY_BATCH_RECORDS` when the
        receivers are still busy after the wait (a full batch could hold the GIL for seconds),
        else ``None`` (the consumer's own ``max_poll_records``).
        """
        if self.yield_to is None or not self.yield_to():
            return None
        started = time.monotonic()
        deadline = started + self.max_yield_s
        while self.yield_to() and time.monotonic() < deadline and not stop.is_set():
            stop.wait(0.01)
        STAGE_YIELD_SECONDS.labels(self.processor.name).inc(time.monotonic() - started)
        return BUSY_BATCH_RECORDS if self.yield_to() else None

    def run(self, stop: threading.Event) -> None:
        name = self.processor.name
        consumer = make_consumer(self.cfg, self.group_id, self.topics)
        producer = make_producer(self.cfg)
        next_lag = 0.0
        try:
            while not stop.is_set():
                max_records = self._give_way(stop)
                polled = consumer.poll(timeout_ms=self.poll_timeout_ms, max_records=max_records)
                if consumer.assignment():
                    self.assigned.set()
                messages = [
                    Message(
                        r.topic, r.partition, r.offset, r.key, r.value, r.timestamp,
                        tuple(r.headers or ()),
                    )
                    for records in polled.values()
                    for r in records
                ]
                started = time.perf_counter()
                try:
                    outputs = self.processor.process(messages) if messages else []
                    outputs += self.processor.tick()
                    if outputs:
                        produce_all(producer, outputs, self.ack_timeout_s)
                except Exception:
                    STAGE_ERRORS.labels(name).inc()
                    raise
                if messages:
                    offsets = {
                        TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(
                            records[-1].offset + 1, "", -1
                        )
                        for tp, records in polled.items()
                        if records
                    }
                    consumer.commit(offsets)
                    STAGE_MESSAGES.labels(name).inc(len(messages))
                    STAGE_BATCH_SECONDS.labels(name).observe(time.perf_counter() - started)
                if outputs:
                    STAGE_OUTPUTS.labels(name).inc(len(outputs))
                if time.monotonic() >= next_lag:
                    next_lag = time.monotonic() + LAG_INTERVAL_S
                    self._record_lag(consumer)
        except BaseException as e:
            self.error = e
            log.exception("stage %s stopped on an error", name)
            raise
        finally:
            producer.close(timeout=5)
            consumer.close(autocommit=False)
