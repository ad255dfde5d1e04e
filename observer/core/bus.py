"""The Kafka bus: producers, consumer groups and the loop every consuming stage runs in.

A stage is a :class:`Processor`: it turns a batch of input messages into output messages.
:class:`StageRunner` owns the consumer group and gives the guarantee every stage shares:
outputs are acknowledged by Kafka (``acks=all``) *before* the input offsets are committed,
so a crash anywhere re-delivers the batch (at least once) and never drops it. Inputs come in
through :mod:`observer.core.stage_consumer` and outputs go out through
:mod:`observer.core.stage_producer`, both on the client ``kafka.stage_client`` names
(librdkafka by default, or kafka-python).

A runner stops on the first error; :class:`observer.core.supervisor.Supervisor` restarts it
(a new processor from its factory, new clients, from the committed offsets) with backoff.
When ``processor.process(batch)`` raised, the batch's offsets are suspect
(:mod:`observer.core.suspects`): the next runner re-reads them one message at a time, and a
message that fails again alone is quarantined on the dead-letter topic
(:mod:`observer.core.dead_letter`), acknowledged, then committed like any other. So a poison
message costs one restart, never a crash loop, and is never silently dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from prometheus_client import Counter, Gauge, Histogram

from observer.core.config import KafkaConfig
from observer.core.faults import Fault, classify
from observer.core.suspects import SuspectRanges
from observer.core.topics import Topics

if TYPE_CHECKING:
    from observer.core.stage_consumer import StageConsumer
    from observer.core.stage_producer import StageProducer

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
QUARANTINE_HEAD_BYTES = 64 * 1024
"""What a dead letter keeps of an original whose whole dead letter the broker refused."""
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""The producers' client-side message limit (the broker has its own)."""
MAX_POLL_RECORDS = 500
"""The most records a stage takes in one batch (either client)."""


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

    @classmethod
    def of(cls, record: Any) -> "Message":
        """The :class:`Message` of a kafka-python ``ConsumerRecord``."""
        return cls(record.topic, record.partition, record.offset, record.key, record.value,
                   record.timestamp, tuple(record.headers or ()))


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
        "max_poll_records": MAX_POLL_RECORDS,
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
        configs = topics.configs(cfg)  # compaction, retention (observer.embeddings: its own)
        wanted = [
            NewTopic(name, cfg.partitions, cfg.replication_factor, topic_configs=configs[name])
            for name in topics.all()
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


def read_to_end(consumer: KafkaConsumer, deadline: float) -> list[Any]:
    """Every record of the partitions ``consumer`` is assigned, from its positions to each
    partition's high watermark, as kafka-python ``ConsumerRecord``s in the order polled;
    :class:`TimeoutError` at ``deadline`` (``time.monotonic()``).

    The high watermark is the one fetch responses carry, never ``end_offsets``: the embedded
    broker (Tansu 0.6) answers ListOffsets(latest) with the *base offset of the partition's
    most recently written batch* + 1, which is the log end only when that batch holds one
    record. A read that stops there misses the rest of a batch a poll cut short
    (``max_poll_records``); librdkafka's producers put many records in one batch.
    """
    got: list[Any] = []
    tps = sorted(consumer.assignment())
    while True:
        highs = {tp: consumer.highwater(tp) for tp in tps}
        if all(h is not None and consumer.position(tp) >= h for tp, h in highs.items()):
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"reading {sorted({tp.topic for tp in tps})} to their end "
                               "took too long")
        for records in consumer.poll(timeout_ms=200).values():
            got += records


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


def read_topic(cfg: KafkaConfig, topic: str, timeout_s: float) -> list[Any]:
    """Every record of ``topic``, from its start to the high watermarks its fetches carry
    (:func:`read_to_end`), read outside any consumer group; :class:`TimeoutError` past
    ``timeout_s``. What a restore, a view or a test reads a whole topic with."""
    consumer = make_consumer(cfg, None)
    try:
        deadline = time.monotonic() + timeout_s
        tps = topic_partitions(consumer, topic, deadline)
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        return read_to_end(consumer, deadline)
    finally:
        consumer.close(autocommit=False)


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
    the runner stops with the error (``error``) and a restart picks the batch up again.

    ``dead_letter_topic``: where a message that fails alone is quarantined. With it, a batch
    whose ``process`` raised a :attr:`~observer.core.faults.Fault.POISON` fault is marked in
    ``suspects``; a runner given the same ``suspects`` (the supervisor's, across restarts)
    processes those offsets one message at a time. Without it the runner only stops.

    ``yield_to``: when it answers true, the runner waits (``max_yield_s`` at most) before its
    next poll; the one-process runtime passes "the receivers have requests in flight".

    ``observer_stage_lag_messages`` is refreshed after a poll every ``lag_interval_s``.
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
        dead_letter_topic: str | None = None,
        suspects: SuspectRanges | None = None,
        assigned: threading.Event | None = None,
        lag_interval_s: float = LAG_INTERVAL_S,
    ) -> None:
        self.cfg = cfg
        self.yield_to = yield_to
        self.max_yield_s = max_yield_s
        self.processor = processor
        self.group_id = group_id
        self.topics = topics
        self.poll_timeout_ms = poll_timeout_ms
        self.ack_timeout_s = ack_timeout_s
        self.dead_letter_topic = dead_letter_topic
        self.suspects = suspects if suspects is not None else SuspectRanges()
        self.error: BaseException | None = None
        self.assigned = assigned if assigned is not None else threading.Event()
        self.lag_interval_s = lag_interval_s

    # -- the lag gauge -------------------------------------------------------------------------
    def _record_lag(self, consumer: StageConsumer) -> None:
        """Lag per topic over every partition held now: high watermark - position. The high
        watermark comes from the last fetch of the partition (no request) or, until a fetch
        has returned one, from the broker's end offset (cached,
        :data:`~observer.core.stage_consumer.END_OFFSETS_REFRESH_S`). The KEDA scaler reads
        the group's lag from Kafka itself; this is for dashboards."""
        lag: dict[str, int] = {t: 0 for t in self.topics}
        try:
            lag.update(consumer.lag())
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

    # -- the loop ------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        name = self.processor.name
        # Imported here: both build on this module (Message, Output, make_consumer...).
        from observer.core.stage_consumer import open_stage_consumer
        from observer.core.stage_producer import open_stage_producer

        consumer = open_stage_consumer(self.cfg, self.group_id, self.topics)
        try:
            producer = open_stage_producer(self.cfg, self.ack_timeout_s)
        except BaseException:
            consumer.close()
            raise
        next_lag = 0.0
        try:
            while not stop.is_set():
                max_records = self._give_way(stop)
                messages = consumer.poll(self.poll_timeout_ms / 1000, max_records)
                # Asked only until it is true: librdkafka answers it by a round trip to its
                # own thread while holding the GIL (2.6% of one e2e profile when asked always).
                if not self.assigned.is_set() and consumer.holds_partitions():
                    self.assigned.set()
                if time.monotonic() >= next_lag:
                    # Before processing: a stage stuck in a long batch still shows its backlog.
                    next_lag = time.monotonic() + self.lag_interval_s
                    self._record_lag(consumer)
                if self.dead_letter_topic is not None and self.suspects:
                    suspect = [m for m in messages if self.suspects.holds(m)]
                    if suspect:
                        # A suspect range is the head of its partition's messages: alone
                        # first, then the rest of the poll as one batch, order kept.
                        messages = [m for m in messages if not self.suspects.holds(m)]
                        self._isolate(suspect, consumer, producer)
                self._batch(messages, consumer, producer)
        except BaseException as e:
            self.error = e
            log.warning("stage %s stopped on an error: %r", name, e, exc_info=True)
            raise
        finally:
            producer.close(5)
            consumer.close()

    def _batch(self, messages: list[Message], consumer: StageConsumer, producer: StageProducer) -> None:
        """Process, acknowledge, then commit one batch (and the processor's tick)."""
        name = self.processor.name
        started = time.perf_counter()
        try:
            outputs = self._process(messages) if messages else []
            outputs += self.processor.tick()
            if outputs:
                self._produce(producer, outputs, messages)
        except Exception:
            STAGE_ERRORS.labels(name).inc()
            raise
        if messages:
            self._commit(consumer, messages)
            STAGE_MESSAGES.labels(name).inc(len(messages))
            STAGE_BATCH_SECONDS.labels(name).observe(time.perf_counter() - started)
        if outputs:
            STAGE_OUTPUTS.labels(name).inc(len(outputs))

    def _suspect_on_poison(self, e: Exception, messages: list[Message]) -> None:
        if self.dead_letter_topic is not None and messages and classify(e) is Fault.POISON:
            self.suspects.mark(messages)
            log.warning("stage %s: %d messages are suspect after %r; the restart re-reads "
                        "them one at a time", self.processor.name, len(messages), e)

    def _process(self, messages: list[Message]) -> list[Output]:
        try:
            return self.processor.process(messages)
        except Exception as e:
            self._suspect_on_poison(e, messages)
            raise

    def _produce(self, producer: StageProducer, outputs: list[Output], messages: list[Message]) -> None:
        try:
            producer.send_all(outputs, self.ack_timeout_s)
        except Exception as e:  # an output no broker takes (too large) comes from a message
            self._suspect_on_poison(e, messages)
            raise

    def _commit(self, consumer: StageConsumer, messages: list[Message]) -> None:
        """Commit past ``messages`` (each partition's last offset + 1), synchronously."""
        ends: dict[tuple[str, int], int] = {}
        for m in messages:
            tp = (m.topic, m.partition)
            ends[tp] = max(ends.get(tp, 0), m.offset + 1)
        consumer.commit(ends)
        for (topic, partition), end in ends.items():
            self.suspects.passed(topic, partition, end)

    def _isolate(self, suspect: list[Message], consumer: StageConsumer, producer: StageProducer) -> None:
        """Process each suspect message alone: its outputs, or its dead letter when it fails
        alone with a poison fault, are acknowledged, then its offset is committed. A
        transient or permanent fault still stops the runner (nothing is quarantined)."""
        name = self.processor.name
        log.warning("stage %s: re-reading %d suspect messages one at a time", name, len(suspect))
        for m in suspect:
            try:
                outputs = self.processor.process([m])
            except Exception as e:
                if classify(e) is not Fault.POISON:
                    raise
                outputs = None
                self._quarantine(producer, m, "processing_error", e)
            if outputs:
                try:
                    producer.send_all(outputs, self.ack_timeout_s)
                except Exception as e:
                    if classify(e) is not Fault.POISON:
                        raise
                    outputs = None
                    self._quarantine(producer, m, "too_large", e)
            self._commit(consumer, [m])
            STAGE_MESSAGES.labels(name).inc()
            STAGE_OUTPUTS.labels(name).inc(len(outputs) if outputs is not None else 1)

    def _quarantine(self, producer: StageProducer, m: Message, reason: str, e: Exception) -> None:
        """Produce ``m``'s dead letter and wait for its acknowledgement."""
        # dead_letter builds on this module's Message and Output: imported where used.
        from observer.core.dead_letter import dead_letter

        assert self.dead_letter_topic is not None
        name, detail = self.processor.name, repr(e)[:500]
        try:
            producer.send_all([dead_letter(self.dead_letter_topic, name, m, reason, detail)],
                              self.ack_timeout_s)
        except Exception as again:
            if classify(again) is not Fault.POISON:
                raise
            # Even its dead letter is more than the broker takes (a large original, base64):
            # keep the head of the original, rather than fail on this message forever.
            # (observer_dead_letters_total counts this message twice.)
            head = replace(m, value=m.value[:QUARANTINE_HEAD_BYTES])
            detail = f"{detail[:300]}; dead letter too large, original cut to " \
                     f"{QUARANTINE_HEAD_BYTES} of {len(m.value)} bytes"
            producer.send_all([dead_letter(self.dead_letter_topic, name, head, reason, detail)],
                              self.ack_timeout_s)
