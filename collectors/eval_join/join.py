"""The eval join: every evaluation leaves on ``observer.evals-joined`` with its segment.

The stage reads ``observer.llm`` (the targets: each LLM call's tenant, service, model and
cluster, by span id, trace id and session id; :mod:`observer.collectors.eval_join.targets`)
and ``observer.evals``. Each evaluation is written once to ``observer.evals-joined``, keyed by
its segment, with ``join`` saying how it got it:

- ``carried``: it came with its segment (a result read from its own span: a service is set
  and it is not an EVALUATOR span's, whose service is the judge's);
- ``joined``: its target was found, at once or after waiting in the pending buffer
  (:mod:`observer.collectors.eval_join.pending`); tenant, service, model and cluster come
  from the target (the tenant is part of the join key, so never another tenant's);
- ``unjoined``: never found, emitted with what it carries, counted in
  ``observer_evals_unjoined_total{reason}``: ``expired`` (``pending_ttl_s`` passed),
  ``evicted`` (the buffer was full and it was the oldest), ``orphan`` (no target id at all).

Time is record time: the newest Kafka timestamp read on either input (a timestamp ahead of
this machine's clock counts as the clock), so a backlog or a replay ages nothing early. An
idle stage expires nothing until input arrives again.

Restarts: the state is checkpointed (:mod:`observer.collectors.eval_join.checkpoint`) with
the batch that changed it, before its offsets are committed, and read back at the start of
a new processor: a restart loses no waiting evaluation and no target seen. On the embedded
broker in durable mode the checkpoint is kept in a local file instead
(:mod:`observer.collectors.eval_join.local_state`). A stop and start emits nothing twice.
Delivery is at least once: a batch in flight at a crash is read again, and what it had
emitted may be emitted again; every output carries the header ``observer-eval-id`` (the
evaluation's ``partition/offset`` on ``observer.evals``), the same for a repeat, so a reader
can drop it. The state is global (``observer.llm`` is keyed by segment, ``observer.evals``
by target): run one replica.

A record that does not decode is dead-lettered (``decode_error``, ``schema_error``,
``invalid_value``), counted, and skipped.

>>> from observer.core.compacted import MemoryCompactedStore
>>> from observer.core.config import KafkaConfig
>>> from observer.core.records import EvalRecord, LLMCall, encode
>>> topics = Topics.from_config(KafkaConfig())
>>> joiner = EvalJoiner(topics, EvalJoinConfig(), ["service", "model"],
...                     store=MemoryCompactedStore(topics.eval_join_state))
>>> score = EvalRecord(name="qa", score=1, target="span", span_id="ab" * 8, source="rest")
>>> call = LLMCall(service="shop", model="gpt-4o", trace_id="cd" * 16, span_id="ab" * 8)
>>> first = joiner.process([Message(topics.evals, 0, 0, None, encode(score), 1000)])
>>> [o.topic for o in first]  # waiting: only its checkpoint
['observer.eval-join-state']
>>> out = joiner.process([Message(topics.llm, 0, 0, None, encode(call), 2000)])
>>> joined = [o for o in out if o.topic == topics.evals_joined]
>>> [(o.key, decode(o.value).join) for o in joined]
[('shop|gpt-4o', 'joined')]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from observer.collectors.eval_join.checkpoint import (
    pending_key,
    pending_output,
    restore,
    target_key,
    target_output,
    tombstone,
)
from observer.collectors.eval_join.config import EvalJoinConfig
from observer.collectors.eval_join.metrics import (
    JOINED,
    PENDING,
    TARGETS,
    TARGETS_DROPPED,
    UNJOINED,
)
from observer.collectors.eval_join.pending import Pending, PendingBuffer
from observer.collectors.eval_join.targets import (
    JoinKey,
    Target,
    TargetIndex,
    call_keys,
    eval_keys,
)

from observer.core.bus import Message, Output
from observer.core.compacted import CompactedStore, MemoryCompactedStore
from observer.core.dead_letter import dead_letter
from observer.core.records import EvalRecord, LLMCall, RecordError, decode, encode, segment_key
from observer.core.topics import Topics

log = logging.getLogger(__name__)

STAGE = "eval-join"
EVAL_ID_HEADER = "observer-eval-id"
CLOCK_SKEW_MS = 60_000
"""How far ahead of this machine's clock a Kafka timestamp may be before it counts as the
clock: one producer with a wrong clock must not expire every waiting evaluation."""


class EvalJoiner:
    """The stage's processor (see the module). ``segment_keys``: the fields of the output's
    Kafka key (the drift segment of the ``evals`` record type). ``store``: where the
    checkpoint is read back, once, before the first batch. ``clock``: seconds since the epoch
    (only bounds Kafka timestamps from ahead)."""

    name = STAGE

    def __init__(self, topics: Topics, cfg: EvalJoinConfig, segment_keys: list[str],
                 store: CompactedStore | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.topics = topics
        self.cfg = cfg
        self.segment_keys = list(segment_keys)
        self.store = store if store is not None else MemoryCompactedStore(topics.eval_join_state)
        self.clock = clock
        self.targets = TargetIndex(cfg.max_targets, int(cfg.target_ttl_s * 1000))
        self.pending = PendingBuffer(cfg.max_pending)
        self.now_ms = 0
        self._restored = False

    # -- the Processor protocol ----------------------------------------------------------------
    def process(self, messages: list[Message]) -> list[Output]:
        out = self._restore_once()
        # Targets first: a score and its target in one batch join at once.
        for m in messages:
            if m.topic == self.topics.llm:
                out += self._target(m)
        for m in messages:
            if m.topic == self.topics.evals:
                out += self._evaluation(m)
        out += self._expire()
        PENDING.set(len(self.pending))
        TARGETS.set(len(self.targets))
        return out

    def tick(self) -> list[Output]:
        return self._restore_once()

    # -- restart -------------------------------------------------------------------------------
    def _restore_once(self) -> list[Output]:
        if self._restored:
            return []
        state = restore(self.store.load())
        topic = self.topics.eval_join_state
        repairs = [tombstone(topic, k) for k in state.skipped]
        for key, target in state.targets:
            repairs += self._drop_targets(self.targets.add(key, target), "evicted")
        ttl_ms = int(self.cfg.pending_ttl_s * 1000)
        for p in state.pending:
            found = self.targets.find(p.keys)
            if found is not None:  # its target's record was acknowledged, its own delete not
                repairs += self._emit(p.eval_id, p.record, "joined", found)
                repairs.append(tombstone(topic, pending_key(p.eval_id)))
                continue
            repairs += self._unjoined(self.pending.add(p), "evicted")
        self.now_ms = max([state.now_ms] + [p.due_ms - ttl_ms for p in state.pending])
        self._restored = True
        log.info("eval join: %d join keys and %d waiting evaluations restored from %s",
                 len(self.targets), len(self.pending), topic)
        PENDING.set(len(self.pending))
        TARGETS.set(len(self.targets))
        return repairs

    # -- inputs --------------------------------------------------------------------------------
    def _advance(self, m: Message) -> None:
        limit = int(self.clock() * 1000) + CLOCK_SKEW_MS
        self.now_ms = max(self.now_ms, min(m.timestamp_ms, limit))

    def _decode(self, m: Message, cls: type) -> tuple[object | None, list[Output]]:
        try:
            record = decode(m.value)
        except RecordError as e:
            return None, [dead_letter(self.topics.dead_letter, STAGE, m, e.reason, str(e))]
        if not isinstance(record, cls):
            return None, [dead_letter(self.topics.dead_letter, STAGE, m, "schema_error",
                                      f"{record.schema_id} on {m.topic}")]
        return record, []

    def _target(self, m: Message) -> list[Output]:
        call, out = self._decode(m, LLMCall)
        if not isinstance(call, LLMCall):
            return out
        self._advance(m)
        target = Target(call.tenant, call.service, call.model, call.cluster, seen_ms=self.now_ms)
        topic = self.topics.eval_join_state
        for key in call_keys(call.tenant, call.trace_id, call.span_id, call.conversation_id):
            if key in self.targets:
                continue  # a trace or session keeps its first call's segment
            out.append(target_output(topic, key, target))
            out += self._drop_targets(self.targets.add(key, target), "evicted")
            for waiting in self.pending.take(key):
                out += self._emit(waiting.eval_id, waiting.record, "joined", target)
                out.append(tombstone(topic, pending_key(waiting.eval_id)))
        return out

    def _evaluation(self, m: Message) -> list[Output]:
        record, out = self._decode(m, EvalRecord)
        if not isinstance(record, EvalRecord):
            return out
        self._advance(m)
        eval_id = f"{m.partition}/{m.offset}"
        if eval_id in self.pending:
            return out  # read again after a restart: it is waiting already
        if record.service and record.source != "evaluator_span":
            return out + self._emit(eval_id, record, "carried")
        keys = eval_keys(record.target, record.tenant, record.trace_id, record.span_id,
                         record.session_id)
        if not keys:
            return out + self._emit(eval_id, record, "unjoined", reason="orphan")
        found = self.targets.find(keys)
        if found is not None:
            return out + self._emit(eval_id, record, "joined", found)
        waiting = Pending(eval_id, record, keys, self.now_ms + int(self.cfg.pending_ttl_s * 1000))
        out.append(pending_output(self.topics.eval_join_state, waiting))
        return out + self._unjoined(self.pending.add(waiting), "evicted")

    # -- outputs -------------------------------------------------------------------------------
    def _emit(self, eval_id: str, record: EvalRecord, how: str, target: Target | None = None,
              reason: str = "") -> list[Output]:
        update: dict[str, str] = {"join": how}
        if target is not None:
            update.update(tenant=target.tenant, service=target.service, model=target.model,
                          cluster=record.cluster or target.cluster)
        if how == "unjoined":
            UNJOINED.labels(reason).inc()
        else:
            JOINED.labels(how).inc()
        joined = record.model_copy(update=update)
        key = segment_key(joined.segment_of(self.segment_keys))
        return [Output(self.topics.evals_joined, key, encode(joined),
                       headers=((EVAL_ID_HEADER, eval_id.encode()),))]

    def _unjoined(self, left: list[Pending], reason: str) -> list[Output]:
        out = []
        for p in left:
            out += self._emit(p.eval_id, p.record, "unjoined", reason=reason)
            out.append(tombstone(self.topics.eval_join_state, pending_key(p.eval_id)))
        return out

    def _drop_targets(self, keys: list[JoinKey], reason: str) -> list[Output]:
        if keys:
            TARGETS_DROPPED.labels(reason).inc(len(keys))
        return [tombstone(self.topics.eval_join_state, target_key(k)) for k in keys]

    def _expire(self) -> list[Output]:
        out = self._unjoined(self.pending.due(self.now_ms), "expired")
        return out + self._drop_targets(self.targets.expire(self.now_ms), "expired")
