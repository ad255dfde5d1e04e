"""The consumer a stage reads its inputs with: librdkafka or kafka-python.

A :class:`~observer.core.bus.StageRunner` polls a batch, processes it, waits for its outputs'
acknowledgements, then commits the batch's offsets synchronously; only *how* records are
fetched and decoded changes with ``kafka.stage_client``:

- ``librdkafka`` (default): :class:`LibrdkafkaStageConsumer` on ``confluent-kafka``. It
  fetches and decompresses in C on its own threads; kafka-python's network loop and record
  parsing were the largest lines of a profile of ``observer up``. No offset is committed or
  stored by the client itself (``enable.auto.commit`` and ``enable.auto.offset.store`` off);
- ``kafka-python``: :class:`KafkaPythonStageConsumer` (:func:`observer.core.bus.make_consumer`).

Both start a group without committed offsets at the earliest record, and both raise
kafka-python's errors, so :func:`observer.core.faults.classify` decides once: a refused commit
(a rebalance) or a fetch error is transient (the runner stops, the supervisor restarts it from
the committed offsets), an authorization error permanent (:func:`kafka_python_error`).

>>> from observer.core.config import KafkaConfig
>>> open_stage_consumer(KafkaConfig(stage_client="librdkafka",
...                                 client_options={"api_version": (3, 0)}), "g", ["t"])
Traceback (most recent call last):
...
observer.core.config.ConfigError: kafka.client_options: api_version has no librdkafka equivalent here; set kafka.stage_client: kafka-python to use it
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import kafka.errors as kafka_errors
from kafka import OffsetAndMetadata, TopicPartition

from observer.core.bus import (
    MAX_POLL_RECORDS,
    Message,
    make_consumer,
)
from observer.core.config import KafkaConfig
from observer.core.producers import RDKAFKA_LOG, check_stage_client, librdkafka_client_options

log = logging.getLogger(__name__)

Offsets = dict[tuple[str, int], int]
"""Offsets to commit: ``(topic, partition) -> the next offset to read``."""


class StageConsumer(Protocol):
    """What a :class:`~observer.core.bus.StageRunner` needs from a Kafka consumer."""

    def poll(self, timeout_s: float, max_records: int | None) -> list[Message]:
        """The next messages of the partitions held (at most ``max_records``, ``None``: the
        client's batch), waiting up to ``timeout_s`` for the first; kafka-python's errors."""
        ...

    def holds_partitions(self) -> bool:
        """True once the group has assigned this consumer at least one partition."""
        ...

    def commit(self, offsets: Offsets) -> None:
        """Commit ``offsets`` and return once the group coordinator has them; a
        ``KafkaError`` (transient) when it refuses them (a rebalance under way)."""
        ...

    def lag(self) -> dict[str, int]:
        """Messages not consumed yet on the partitions held, by topic: high watermark minus
        position. A ``KafkaError`` when it cannot be read now (a rebalance)."""
        ...

    def close(self) -> None:
        """Leave the group without committing anything."""
        ...


END_OFFSETS_REFRESH_S = 5.0
"""How long a partition's end offset, asked of the broker while no fetch has told its high
watermark yet, is reused: the lag gauge is refreshed every second, a broker round trip not."""
END_OFFSETS_TIMEOUT_MS = 2000
"""How long one such request (end offsets, committed offsets) may take."""
OFFSET_END = -1
"""librdkafka's logical offset "end": as a time for ``offsets_for_times``, the latest."""
PREFETCH_KBYTES = 8192
"""How much a librdkafka stage consumer fetches ahead of its stage, at most (per consumer)."""
FETCH_QUEUE_BACKOFF_MS = 10
"""How long a librdkafka stage consumer waits to fetch again once its prefetch is full.
librdkafka's default, 1 s, starved every stage with a backlog: the stage drained the
:data:`PREFETCH_KBYTES` in a fraction of that and then sat in ``consume`` for the rest (a
consumer doing nothing else read the drift engine's inputs at about 15,000 messages/s with
the default and about 400,000 with 10 ms, on the embedded broker)."""


class EndOffsets:
    """End offsets of partitions no fetch has told the high watermark of yet, asked of the
    broker at most every :data:`END_OFFSETS_REFRESH_S` per partition: the
    lag gauge is refreshed every second, a broker round trip not."""

    def __init__(self, ask: Callable[[list[Any]], dict[Any, int]]) -> None:
        self._ask = ask
        self._ends: dict[Any, int] = {}
        self._asked: dict[Any, float] = {}

    def of(self, unknown: list[Any]) -> dict[Any, int]:
        now = time.monotonic()
        stale = [tp for tp in unknown
                 if now - self._asked.get(tp, float("-inf")) >= END_OFFSETS_REFRESH_S]
        if stale:
            # Counted as asked even if the broker does not answer: no request every second.
            self._asked.update((tp, now) for tp in stale)
            self._ends.update(self._ask(stale))
        return {tp: self._ends[tp] for tp in unknown if tp in self._ends}


# -- kafka-python ------------------------------------------------------------------------------
class KafkaPythonStageConsumer:
    """:class:`StageConsumer` on kafka-python (``kafka.stage_client: kafka-python``)."""

    def __init__(self, cfg: KafkaConfig, group_id: str, topics: Iterable[str]) -> None:
        self._consumer = make_consumer(cfg, group_id, topics)
        self._ends = EndOffsets(
            lambda tps: self._consumer.end_offsets(tps, timeout_ms=END_OFFSETS_TIMEOUT_MS)
        )

    def poll(self, timeout_s: float, max_records: int | None) -> list[Message]:
        polled = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        return [Message.of(r) for records in polled.values() for r in records]

    def holds_partitions(self) -> bool:
        return bool(self._consumer.assignment())

    def commit(self, offsets: Offsets) -> None:
        self._consumer.commit({TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                               for (t, p), o in offsets.items()})

    def lag(self) -> dict[str, int]:
        # The high watermark of the partition's last fetch (no request), else the broker's
        # end offset (cached); the position is the client's own once it has one.
        lag: dict[str, int] = {}
        held = sorted(self._consumer.assignment())
        highs = {tp: self._consumer.highwater(tp) for tp in held}
        ends = self._ends.of([tp for tp, h in highs.items() if h is None])
        for tp in held:
            high = highs[tp] if highs[tp] is not None else ends.get(tp)
            position = self._consumer.position(tp, timeout_ms=END_OFFSETS_TIMEOUT_MS)
            if high is not None and position is not None:
                lag[tp.topic] = lag.get(tp.topic, 0) + max(high - position, 0)
        return lag

    def close(self) -> None:
        self._consumer.close(autocommit=False)


# -- librdkafka --------------------------------------------------------------------------------
def kafka_python_error(error: Any) -> kafka_errors.KafkaError:
    """A librdkafka ``KafkaError`` as the kafka-python error :mod:`observer.core.faults`
    classifies: a broker's error code is the Kafka protocol's (so
    ``TOPIC_AUTHORIZATION_FAILED`` stays permanent); librdkafka's own (negative) codes are
    transient, a failed authentication permanent.

    >>> from confluent_kafka import KafkaError
    >>> type(kafka_python_error(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))).__name__
    'TopicAuthorizationFailedError'
    >>> type(kafka_python_error(KafkaError(KafkaError._TRANSPORT))).__name__
    'KafkaConnectionError'
    """
    from confluent_kafka import KafkaError

    local: dict[int, type[kafka_errors.KafkaError]] = {
        KafkaError._AUTHENTICATION: kafka_errors.SaslAuthenticationFailedError,
        KafkaError._TIMED_OUT: kafka_errors.KafkaTimeoutError,
        KafkaError._TRANSPORT: kafka_errors.KafkaConnectionError,
        KafkaError._ALL_BROKERS_DOWN: kafka_errors.KafkaConnectionError,
    }
    code = error.code()
    cls = kafka_errors.for_code(code) if code > 0 else local.get(code, kafka_errors.KafkaError)
    return cls(f"{error.name()}: {error.str()}")


class LibrdkafkaStageConsumer:
    """:class:`StageConsumer` on librdkafka (``kafka.stage_client: librdkafka``).

    The lag's high watermark is the one librdkafka keeps from its last fetch of the partition
    (no request), else the broker's end offset (one request for every such partition, cached
    :data:`END_OFFSETS_REFRESH_S`); the position is the offset after the
    last message handed out, else the group's committed offset (one request for every
    partition newly held), else the log start.
    """

    def __init__(self, cfg: KafkaConfig, group_id: str, topics: Iterable[str]) -> None:
        from confluent_kafka import Consumer, KafkaError, KafkaException
        from confluent_kafka import TopicPartition as Partition

        self._partition = Partition
        self._kafka_exception = KafkaException
        # Not errors: the end of a partition, a topic whose metadata is not there yet
        # (kafka-python waits for it the same way, without a word).
        self._not_errors = {KafkaError._PARTITION_EOF, KafkaError._UNKNOWN_TOPIC,
                            KafkaError.UNKNOWN_TOPIC_OR_PART}
        self._consumer = Consumer(librdkafka_consumer_config(cfg, group_id), logger=RDKAFKA_LOG)
        self._starts: dict[tuple[str, int], int] = {}
        self._ends = EndOffsets(self._ask_ends)
        topics = list(topics)
        if topics:
            self._consumer.subscribe(topics)

    def poll(self, timeout_s: float, max_records: int | None) -> list[Message]:
        try:
            polled = self._consumer.consume(max_records or MAX_POLL_RECORDS, timeout_s)
        except self._kafka_exception as e:
            raise kafka_python_error(e.args[0]) from None
        messages: list[Message] = []
        for m in polled:
            error = m.error()
            if error is not None:
                if error.code() in self._not_errors and not error.fatal():
                    log.debug("librdkafka consumer: %s", error)
                    continue
                raise kafka_python_error(error)
            _, timestamp = m.timestamp()
            messages.append(Message(m.topic(), m.partition(), m.offset(), m.key(), m.value(),
                                    timestamp, tuple(m.headers() or ())))
        return messages

    def holds_partitions(self) -> bool:
        return bool(self._consumer.assignment())

    def commit(self, offsets: Offsets) -> None:
        wanted = [self._partition(t, p, o) for (t, p), o in offsets.items()]
        try:
            committed = self._consumer.commit(offsets=wanted, asynchronous=False)
        except self._kafka_exception as e:
            raise kafka_python_error(e.args[0]) from None
        for tp in committed or ():
            if tp.error is not None:
                raise kafka_python_error(tp.error)

    def lag(self) -> dict[str, int]:
        # At most one request per kind here, for every partition at once: librdkafka serves
        # a broker's requests behind the fetch it keeps waiting there (fetch.wait.max.ms), so
        # one round trip per partition held took seconds of the stage's loop (drift holds ~28).
        try:
            held = sorted((tp.topic, tp.partition) for tp in self._consumer.assignment())
            self._starts = {tp: o for tp, o in self._starts.items() if tp in held}
            positions = {(tp.topic, tp.partition): tp.offset for tp in
                         self._consumer.position([self._partition(*tp) for tp in held])}
            lows: dict[tuple[str, int], int] = {}
            highs: dict[tuple[str, int], int | None] = {}
            for tp in held:
                low, high = self._consumer.get_watermark_offsets(self._partition(*tp),
                                                                 cached=True)
                lows[tp], highs[tp] = low, (high if high >= 0 else None)
            ends = self._ends.of([tp for tp, h in highs.items() if h is None])
            unplaced = [tp for tp in held if positions[tp] < 0 and tp not in self._starts]
            self._ask_starts(unplaced)
        except self._kafka_exception as e:
            raise kafka_python_error(e.args[0]) from None
        lag: dict[str, int] = {}
        for tp in held:
            high = highs[tp] if highs[tp] is not None else ends.get(tp)
            if high is None:
                continue
            # Nothing handed out yet: from where the group starts (committed, else the log
            # start, auto.offset.reset: earliest).
            start = self._starts.get(tp, -1)
            position = positions[tp] if positions[tp] >= 0 else \
                start if start >= 0 else max(lows[tp], 0)
            lag[tp[0]] = lag.get(tp[0], 0) + max(high - position, 0)
        return lag

    def _ask_ends(self, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The broker's end offsets of ``tps``, in one request (offsets for time "latest")."""
        found = self._consumer.offsets_for_times(
            [self._partition(t, p, OFFSET_END) for t, p in tps],
            timeout=END_OFFSETS_TIMEOUT_MS / 1000)
        return {(tp.topic, tp.partition): tp.offset for tp in found
                if tp.error is None and tp.offset >= 0}

    def _ask_starts(self, tps: list[tuple[str, int]]) -> None:
        """The group's committed offsets of ``tps``, in one request (-1: none committed)."""
        if not tps:
            return
        found = self._consumer.committed([self._partition(*tp) for tp in tps],
                                         timeout=END_OFFSETS_TIMEOUT_MS / 1000)
        self._starts.update(((tp.topic, tp.partition), tp.offset) for tp in found)

    def close(self) -> None:
        self._consumer.close()


def librdkafka_consumer_config(cfg: KafkaConfig, group_id: str) -> dict[str, Any]:
    """librdkafka properties equivalent to :func:`observer.core.bus.make_consumer`'s options.

    >>> conf = librdkafka_consumer_config(KafkaConfig(), "g-drift")
    >>> conf["enable.auto.commit"], conf["enable.auto.offset.store"], conf["auto.offset.reset"]
    (False, False, 'earliest')
    >>> conf["queued.max.messages.kbytes"], conf["fetch.queue.backoff.ms"]
    (8192, 10)
    """
    return {
        "bootstrap.servers": cfg.servers,
        "group.id": group_id,
        "enable.auto.commit": False,  # the runner commits once the outputs are acknowledged
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": cfg.session_timeout_ms,
        "heartbeat.interval.ms": cfg.heartbeat_interval_ms,
        # kafka-python's default: no producer of observer writes transactions.
        "isolation.level": "read_uncommitted",
        # What it prefetches per stage while the stage works (librdkafka's default, 64 MiB,
        # times every stage of observer up under a backlog, was hundreds of MB): 500-record
        # batches of a few kB each fit many times over.
        "queued.max.messages.kbytes": PREFETCH_KBYTES,
        "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
        **librdkafka_client_options(cfg),
    }


def open_stage_consumer(cfg: KafkaConfig, group_id: str, topics: Iterable[str]) -> StageConsumer:
    """The :class:`StageConsumer` ``kafka.stage_client`` names, subscribed to ``topics`` in
    ``group_id``. A ``kafka.client_options`` entry librdkafka cannot take is a
    :class:`ConfigError`."""
    check_stage_client(cfg)
    if cfg.stage_client == "kafka-python":
        return KafkaPythonStageConsumer(cfg, group_id, topics)
    return LibrdkafkaStageConsumer(cfg, group_id, topics)
