"""What already reached ``observer.drift``: the check that makes a restore's replay idempotent.

A killed engine may have had results of its last batch acknowledged without that batch's
input offsets being committed (and, with them, without its checkpoints). The replay after a
restart derives those results again. Kafka transactions would hide the first copy from
``read_committed`` readers, but the embedded broker does not honour them, so instead the
engine asks, when it restores a partition, which results were already published since the
last batch its checkpoints prove committed (:meth:`observer.drift.duplicates.ReplayGuard.published` computes that
time), and drops a re-derived result that is among them.

A result is identified by ``(segment_key, record_type, window_index)``: window indices are
never reused within a stream, and a result is a pure function of the stream's records, so an
equal id means an identical result.

:class:`KafkaResultLog` reads the tail of every partition of the results topic backwards, in
bounded steps, until it reaches records older than the asked time (record timestamps are the
producer's clock, the same clock the engine's checkpoints carry). :class:`MemoryResultLog`
keeps acknowledged outputs with their times, for tests and offline runs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from kafka import TopicPartition

from observer.core.bus import Output, make_consumer, topic_partitions
from observer.core.config import KafkaConfig

log = logging.getLogger(__name__)

TP = tuple[str, int]
ResultId = tuple[str, str, int]
"""``(segment_key, record_type, window_index)``."""


@dataclass(frozen=True)
class Published:
    """One result found on the results topic: its id and the last input offset of its window
    per input partition (the closing record is the window's last)."""

    id: ResultId
    last_offsets: dict[TP, int]


def parse(raw: bytes | None) -> Published | None:
    """The id and input offsets of a serialised :class:`~observer.core.records.DriftResult`;
    ``None`` for anything else.

    >>> raw = (b'{"schema":"observer.drift/v1","segment_key":"shop|m1","record_type":"llm",'
    ...        b'"window_index":3,"current_ranges":[{"topic":"observer.llm","partition":0,'
    ...        b'"first_offset":10,"last_offset":19}]}')
    >>> parse(raw)
    Published(id=('shop|m1', 'llm', 3), last_offsets={('observer.llm', 0): 19})
    >>> parse(b"not json") is None
    True
    """
    if raw is None:
        return None
    try:
        value = json.loads(raw)
        if isinstance(value, dict) and value.get("comparison", "past") != "past":
            return None  # peer drift (drift.peer): numbered by time, never a stream's window
        # A full model validation per record would cost more than the read itself.
        rid = (str(value["segment_key"]), str(value["record_type"]), int(value["window_index"]))
        last: dict[TP, int] = {}
        for r in value.get("current_ranges", []):
            tp = (str(r["topic"]), int(r["partition"]))
            last[tp] = max(last.get(tp, -1), int(r["last_offset"]))
    except (ValueError, KeyError, TypeError):
        return None
    return Published(rid, last)


class ResultLog(Protocol):
    """Where already published results are read back from."""

    def since(self, since_ms: int | None) -> list[Published]:
        """Results published at or after ``since_ms`` (Unix ms; ``None``: all of them)."""
        ...


class MemoryResultLog:
    """Acknowledged results with the time they were acknowledged: feed it with :meth:`apply`.

    >>> log = MemoryResultLog("observer.drift")
    >>> raw = b'{"segment_key":"a","record_type":"llm","window_index":1}'
    >>> log.apply([Output("observer.drift", "a", raw)], at_ms=100)
    >>> [p.id for p in log.since(50)], log.since(101)
    ([('a', 'llm', 1)], [])
    """

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self._records: list[tuple[int, Published]] = []

    def apply(self, outputs: Iterable[Output], at_ms: int) -> None:
        for o in outputs:
            found = parse(o.value) if o.topic == self.topic else None
            if found is not None:
                self._records.append((at_ms, found))

    def since(self, since_ms: int | None) -> list[Published]:
        return [p for at, p in self._records if since_ms is None or at >= since_ms]


class KafkaResultLog:
    """Reads the results topic's partitions backwards from their ends to a point in time.

    Parameters
    ----------
    cfg
        Kafka connection settings.
    topic
        The results topic (``Topics.drift``).
    step
        Records read per backward step and partition: the read costs about
        ``step`` records more than the tail it needs.
    timeout_s
        Longest time one :meth:`since` may take before it raises.
    """

    def __init__(self, cfg: KafkaConfig, topic: str, step: int = 500,
                 timeout_s: float = 60.0) -> None:
        if step < 1:
            raise ValueError(f"step must be at least 1, got {step}")
        self.cfg = cfg
        self.topic = topic
        self.step = step
        self.timeout_s = timeout_s

    def since(self, since_ms: int | None) -> list[Published]:
        consumer = make_consumer(self.cfg, None)
        deadline = time.monotonic() + self.timeout_s
        try:
            tps = topic_partitions(consumer, self.topic, deadline)
            begins, ends = consumer.beginning_offsets(tps), consumer.end_offsets(tps)
            found: list[Published] = []
            for tp in tps:
                consumer.assign([tp])  # one at a time: a poll then fetches only this one
                found += self._tail(consumer, tp, begins[tp], ends[tp], since_ms, deadline)
            return found
        finally:
            consumer.close(autocommit=False)

    def _tail(self, consumer, tp: TopicPartition, begin: int, end: int,  # type: ignore[no-untyped-def]
              since_ms: int | None, deadline: float) -> list[Published]:
        # Backwards rather than offsets_for_times: the embedded broker answers a time past the
        # last record with offset 0, which would read the whole partition every time.
        found: list[Published] = []
        upper = end
        top = True
        while upper > begin:
            lower = max(begin, upper - self.step)
            # The embedded broker reports the end as the last batch's base offset + 1, so the
            # first step keeps whatever lies past it; later steps end where the previous began.
            records = _read(consumer, tp, lower, upper, None if top else upper, deadline)
            top = False
            older = False
            for r in records:
                if since_ms is not None and 0 <= r.timestamp < since_ms:
                    older = True
                    continue
                p = parse(r.value)
                if p is not None:
                    found.append(p)
            if older:
                break
            upper = lower
        return found


def _read(consumer, tp: TopicPartition, lower: int, upper: int,  # type: ignore[no-untyped-def]
          keep_below: int | None, deadline: float) -> list:
    """Records of one partition from ``lower`` until the position reaches ``upper``, those
    below ``keep_below`` only when it is given."""
    consumer.seek(tp, lower)
    records = []
    while consumer.position(tp) < upper:
        if time.monotonic() > deadline:
            raise TimeoutError(f"reading {tp.topic}/{tp.partition} back took too long")
        for rs in consumer.poll(timeout_ms=200).values():
            records += [r for r in rs if keep_below is None or r.offset < keep_below]
    return records

