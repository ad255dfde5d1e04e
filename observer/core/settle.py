"""When a received message is *settled*: everything derived from it is in durable state.

In embedded durable mode (:mod:`observer.durability`) the receivers keep every accepted
message in a spool until it is settled; this module says when, by a watermark that follows
the stage graph (:class:`Flow`, from each stage's spec: :mod:`observer.core.stage`)
one phase at a time:

A. ``A`` = per partition of a received ("raw") topic, the offset committed by a group reading
   it (normalize, paths, genai-metrics, predictions: one *lane* each, an entry is settled
   once every lane reading its topic has settled it). A raw topic that no stage here reads
   is settled at once: nothing observer keeps derives from it.
B. Stages that hold input in memory across commits (open traces, unpaired events) write what
   it yields at most ``hold_s`` later; after that, ``E`` = the end offsets of the topics those
   stages write that a stage of the durable chain (:data:`DURABLE_CHAIN`) reads.
C. For each chain stage in graph order (the eval join, the drift engine, the trigger stage):
   once its group has committed ``E`` on the topics it reads (its state is durable before it
   commits: the join's and the drift engine's checkpoints on local disk,
   :mod:`observer.drift.local_state`; the trigger's trackers in the ledger), the end offsets
   of the topics it writes that a later chain stage reads join ``E``. The frontier
   accumulates, so a topic two paths reach (``observer.llm`` read by the drift engine directly,
   ``observer.evals`` through the join to ``observer.evals-joined``) is waited for on each.
D. After the last chain stage, the lane has settled every spool entry below ``A``.

Stages outside that chain (``metrics``: Prometheus counters) keep nothing durable and are
not waited for. End offsets are read by fetching the tail: the embedded broker reports a
partition's end as its last batch's base offset + 1, which would let a phase pass early.
:meth:`Settler.step` advances each lane as far as the stages allow and never waits on one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from kafka import KafkaAdminClient, TopicPartition
from prometheus_client import Counter, Gauge

from observer.core.bus import _common, make_consumer
from observer.core.config import KafkaConfig

log = logging.getLogger(__name__)

TP = tuple[str, int]

SETTLED_ROUNDS = Counter(
    "observer_settle_rounds_total", "Rounds of the settle watermark that reached the spool."
)
SETTLE_PHASE = Gauge(
    "observer_settle_phase", "Phase the settle watermark waits in: 0 A, 1 hold, 2 + the "
    "index of the durable-chain stage waited for (eval-join, drift, trigger)."
)


@dataclass(frozen=True)
class Flow:
    """One consuming stage as the watermark sees it."""

    group: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    hold_s: float = 0.0
    """How long input may stay in the stage's memory after its offset is committed."""


DURABLE_CHAIN = ("eval-join", "drift", "trigger")
"""The stages after the raw readers whose state survives a restart, in graph order."""


class KafkaPositions:
    """Committed and end offsets, read from Kafka."""

    def __init__(self, cfg: KafkaConfig, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s
        self._admin = KafkaAdminClient(**_common(cfg))
        self._consumer = make_consumer(cfg, None, max_poll_records=100_000)

    def close(self) -> None:
        self._admin.close()
        self._consumer.close(autocommit=False)

    def partitions(self, topics: Iterable[str]) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t in topics
                for p in sorted(self._consumer.partitions_for_topic(t) or ())]

    def committed(self, group: str, tps: list[TopicPartition]) -> dict[TP, int]:
        """The group's committed offsets on ``tps`` (0 where it committed nothing)."""
        found = self._admin.list_group_offsets({group: tps}).get(group, {})
        out: dict[TP, int] = {}
        for tp in tps:
            meta = found.get(tp)
            out[(tp.topic, tp.partition)] = max(meta.offset, 0) if meta is not None else 0
        return out

    def ends(self, tps: list[TopicPartition]) -> dict[TP, int]:
        """End offsets that are never too low: the reported end ``e``, then the batch that
        holds record ``e - 1`` read to its end (a poll returns whole batches), and the high
        watermark that fetch carried (the embedded broker's reported end is its latest
        batch's base offset + 1: with concurrent writers that batch may not be the last)."""
        if not tps:
            return {}
        reported = self._consumer.end_offsets(tps)
        self._consumer.assign(tps)
        for tp in tps:
            self._consumer.seek(tp, max(reported[tp] - 1, 0))
        deadline = time.monotonic() + self.timeout_s
        while any(self._consumer.position(tp) < reported[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError("reading the tail of the derived topics took too long")
            self._consumer.poll(timeout_ms=200)
        return {(tp.topic, tp.partition): max(reported[tp], self._consumer.position(tp),
                                              self._consumer.highwater(tp) or 0)
                for tp in tps}


class _Lane:
    """One raw reader's round through the phases (see the module docstring)."""

    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        self.phase = 0
        self.a: dict[TP, int] = {}
        self.since = 0.0
        self.e: dict[TP, int] = {}


class Settler:
    """The watermark's state machines, one *lane* per stage reading a received topic, each
    with its own hold: the normaliser's records settle within seconds even while trace
    grouping holds traces for minutes. :meth:`step` is called every ``interval_s`` by
    :meth:`run` (or by a test, directly).

    ``settle(group, below, unread_topics)`` receives a lane's phase-A offsets once the chain
    has passed them (the spool's :meth:`~observer.collectors.receiver.spool.Spool.settle`); with ``group``
    ``None`` when no stage here reads a received topic (only ``unread_topics`` settle).
    """

    def __init__(
        self,
        flows: Mapping[str, Flow],
        raw_topics: Iterable[str],
        positions: KafkaPositions,
        settle: Callable[[str | None, dict[TP, int], set[str]], int],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        raw = list(raw_topics)
        readers = [f for f in flows.values() if set(f.inputs) & set(raw)]
        self.lanes = [_Lane(f) for f in readers]
        self.unread = {t for t in raw if not any(t in f.inputs for f in readers)}
        self.raw = set(raw)
        self.chain = [flows[n] for n in DURABLE_CHAIN if n in flows]
        self.positions = positions
        self.settle = settle
        self.clock = clock

    @property
    def phase(self) -> int:
        """The least advanced lane's phase (0 A, 1 hold, 2.. the chain)."""
        return min((lane.phase for lane in self.lanes), default=0)

    def step(self) -> bool:
        """Advance every lane as far as the stages allow now; ``True`` when one reached the
        spool."""
        if not self.lanes:
            self.settle(None, {}, set(self.unread))
            return True
        settled = False
        for lane in self.lanes:
            settled |= self._step(lane)
        SETTLE_PHASE.set(self.phase)
        return settled

    def _step(self, lane: _Lane) -> bool:
        flow = lane.flow
        if lane.phase == 0:
            tps = self.positions.partitions([t for t in flow.inputs if t in self.raw])
            lane.a = self.positions.committed(flow.group, tps)
            lane.since = self.clock()
            lane.phase = 1
        if lane.phase == 1:
            if self.clock() < lane.since + flow.hold_s:
                return False
            lane.e = self._ends(flow.outputs, 0)
            lane.phase = 2
        while lane.phase - 2 < len(self.chain):
            k = lane.phase - 2
            stage = self.chain[k]
            tps = [TopicPartition(t, p) for t, p in lane.e if t in stage.inputs]
            if tps and any(o < lane.e[tp]
                           for tp, o in self.positions.committed(stage.group, tps).items()):
                return False
            lane.e = {**lane.e, **self._ends(stage.outputs, k + 1)}
            lane.phase += 1
        removed = self.settle(flow.group, dict(lane.a), set(self.unread))
        SETTLED_ROUNDS.inc()
        log.debug("%s settled below %s: %d spool segments removed", flow.group, lane.a, removed)
        lane.phase = 0
        return True

    def _ends(self, topics: Iterable[str], next_in_chain: int) -> dict[TP, int]:
        """End offsets of ``topics`` that a chain stage from ``next_in_chain`` on reads."""
        later = {t for stage in self.chain[next_in_chain:] for t in stage.inputs}
        wanted = [t for t in topics if t in later]
        if not wanted:
            return {}
        return self.positions.ends(self.positions.partitions(wanted))

    def run(self, stop: threading.Event, interval_s: float = 1.0) -> None:
        """:meth:`step` until ``stop``; a Kafka error is logged and the round goes on."""
        while not stop.wait(interval_s):
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 (Kafka busy or restarting: next interval)
                log.warning("settle watermark: %s (retrying)", e)
