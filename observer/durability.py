"""Embedded durable mode: what ``observer up`` keeps on disk so that the memory-only embedded
broker loses nothing accepted (``kafka.embedded_durable``, ``kafka.embedded_state_dir``).

At start, after the (new, empty) broker is up and its topics exist, and before any stage or
receiver runs, :meth:`Durability.open`:

1. seeds ``observer.drift-state`` and ``observer.drift`` from the drift engine's local state
   file (:mod:`observer.drift.local_state`; checkpoints of an earlier broker incarnation are rebased:
   same reference, windows, detectors and episodes, no offsets), so the engine restores its
   reference instead of learning a new one from post-crash traffic;
2. replays every unsettled spool entry (:mod:`observer.collectors.receiver.spool`) to its topic and partition,
   in offset order, commits for each reading group the new offset of the first entry it had
   not settled (so a stage does not see again what it had settled and another had not), and
   rewrites the spool with the new offsets.

While running, the receivers append to the spool before answering, and a :class:`Settler`
(:mod:`observer.core.settle`) deletes what the drift engine and trigger stage have made
durable. Replay is at-least-once: an entry that one stage had not settled at the kill is
fed to that stage again, and what it derives from it may have reached the drift engine's
state before the kill already: it is then counted twice. That is bounded by each stage's
settle lag: a few seconds for the normaliser (LLM and tool records), ``paths.timeout_s`` plus
a few seconds for trace grouping (path records), ``kserve.pair_timeout_s`` for predictions.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from kafka import KafkaProducer, OffsetAndMetadata, TopicPartition
from prometheus_client import Counter

from observer.collectors.receiver.spool import Entry, Spool
from observer.drift.local_state import STATE_FILE, LocalDriftState
from observer.core.bus import make_consumer, make_producer
from observer.core.config import KafkaConfig
from observer.core.settle import TP, Flow, KafkaPositions, Settler
from observer.core.topics import Topics

log = logging.getLogger(__name__)

REPLAYED = Counter(
    "observer_spool_replayed_total",
    "Spool entries re-produced into a new embedded broker at start.",
)
SEEDED = Counter(
    "observer_drift_state_seeded_total",
    "Drift checkpoints and results produced from the local state file into a new embedded broker.",
)
SPOOL_DIR = "spool"


def raw_topics(topics: Topics) -> list[str]:
    """The topics the receivers write (what the spool holds): the OTLP signals, KServe's
    events and the REST intake's evaluations (read by the eval join)."""
    return [topics.spans, topics.metrics, topics.logs, topics.kserve_events, topics.evals]


class Durability:
    """The spool, the start-up seeding and replay, and the settle thread of one runtime."""

    def __init__(self, kafka: KafkaConfig, topics: Topics, flows: Mapping[str, Flow],
                 state_dir: Path, incarnation: str, settle_interval_s: float = 1.0) -> None:
        self.kafka = kafka
        self.topics = topics
        self.flows = flows
        self.state_dir = Path(state_dir)
        self.incarnation = incarnation
        self.settle_interval_s = settle_interval_s
        self.spool = Spool(self.state_dir / SPOOL_DIR, readers={
            t: {f.group for f in flows.values() if t in f.inputs} for t in raw_topics(topics)
        })
        self.settler: Settler | None = None
        self._positions: KafkaPositions | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.seeded = 0
        self.replayed = 0

    def open(self) -> Durability:
        """Seed, replay, and start settling. Call before any stage or receiver starts."""
        self.spool.open()
        local = LocalDriftState(self.state_dir / STATE_FILE, self.topics, self.incarnation)
        try:
            seed = local.seed()
        finally:
            local.close()
        # Offset order per partition: each group's resume point is then one offset.
        pending = sorted(self.spool.pending(), key=lambda e: (e.topic, e.partition, e.offset))
        producer = make_producer(self.kafka, linger_ms=20)
        try:
            _produce(producer, [(o.topic, None, o.key, o.value, o.headers) for o in seed])
            placed = _produce(producer, [
                (e.topic, e.partition, e.key, e.value, e.headers) for e in pending
            ])
        finally:
            producer.close(timeout=10)
        replayed = [Entry(e.topic, p, o, e.key, e.value, e.headers)
                    for e, (p, o) in zip(pending, placed)]
        marks = resume_points(pending, replayed, self.spool.watermarks())
        for group, offsets in marks.items():
            _commit(self.kafka, group, offsets)
        self.spool.rewrite(replayed, marks)
        self.seeded, self.replayed = len(seed), len(pending)
        SEEDED.inc(len(seed))
        REPLAYED.inc(len(pending))
        log.info("embedded durable state in %s: %d drift records seeded, %d spooled messages "
                 "replayed (incarnation %s)", self.state_dir, len(seed), len(pending),
                 self.incarnation)
        self._positions = KafkaPositions(self.kafka)
        self.settler = Settler(self.flows, raw_topics(self.topics), self._positions,
                               self.spool.settle)
        self._thread = threading.Thread(
            target=self.settler.run, args=(self._stop, self.settle_interval_s),
            name="settle", daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)
        self._final_settle()
        if self._positions is not None:
            self._positions.close()
        self.spool.close()

    def _final_settle(self, rounds: int = 3) -> None:
        """Settle once more after the stages stopped (the runtime closes this last, so their
        final offsets are committed): what they finished with is settled now instead of being
        replayed into a second pass at the next start, where a stage without duplicate
        suppression (the eval join's pending scores) would emit it twice. A lane still
        holding input (open traces within ``hold_s``) keeps its entries. The first round may
        finish one the settle thread began with older offsets; the next starts afresh."""
        if self.settler is None:
            return
        for _ in range(rounds):
            try:
                self.settler.step()
            except Exception as e:  # noqa: BLE001 (the broker may be going: replay covers it)
                log.warning("final settle round: %s (the next start replays the rest)", e)
                return


def resume_points(
    old: Sequence[Entry], new: Sequence[Entry], marks: Mapping[str, Mapping[TP, int]]
) -> dict[str, dict[TP, int]]:
    """Each group's watermarks (old offsets) in the new offsets of the replayed entries:
    the new offset of the first entry at or above the old watermark, or just past the last
    replayed one of that partition.

    >>> old = [Entry("s", 0, o, None, b"") for o in (5, 6, 9)]
    >>> new = [Entry("s", 0, o, None, b"") for o in (0, 1, 2)]
    >>> resume_points(old, new, {"norm": {("s", 0): 9}, "paths": {("s", 0): 5, ("s", 1): 4}})
    {'norm': {('s', 0): 2}, 'paths': {('s', 0): 0, ('s', 1): 0}}
    """
    by_tp: dict[TP, list[tuple[int, TP, int]]] = {}
    for o, n in zip(old, new):
        by_tp.setdefault((o.topic, o.partition), []).append(
            (o.offset, (n.topic, n.partition), n.offset))
    out: dict[str, dict[TP, int]] = {}
    for group, mark in marks.items():
        resumed = out.setdefault(group, {})
        for tp, below in mark.items():
            rows = by_tp.get(tp, [])
            ahead = [(new_tp, n) for o, new_tp, n in rows if o >= below]
            if ahead:
                new_tp, n = min(ahead, key=lambda r: r[1])
            elif rows:
                new_tp, n = rows[-1][1], max(r[2] for r in rows) + 1
            else:
                new_tp, n = tp, 0
            resumed[new_tp] = max(resumed.get(new_tp, 0), n)
    return out


def _commit(kafka: KafkaConfig, group: str, offsets: Mapping[TP, int]) -> None:
    """Commit ``offsets`` for ``group`` before any of its members runs."""
    wanted = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
              for (t, p), o in offsets.items() if o > 0}
    if not wanted:
        return
    consumer = make_consumer(kafka, group)
    try:
        consumer.assign(list(wanted))
        consumer.commit(wanted)
    finally:
        consumer.close(autocommit=False)


Item = tuple[str, int | None, object, bytes | None, tuple[tuple[str, bytes], ...]]


def _produce(producer: KafkaProducer, items: Sequence[Item]) -> list[tuple[int, int]]:
    """Send ``(topic, partition, key, value, headers)`` items (``None`` partition: by key)
    and wait for each acknowledgement; where each landed, in order."""
    futures = []
    for topic, partition, key, value, headers in items:
        if partition is not None and partition >= len(producer.partitions_for(topic)):
            partition = None  # fewer partitions than when it was received: place by key
        futures.append(producer.send(
            topic, value=value, key=key.encode() if isinstance(key, str) else key,
            headers=list(headers) or None, partition=partition,
        ))
    producer.flush(timeout=60)
    return [(m.partition, m.offset) for m in (f.get(timeout=60) for f in futures)]

