"""Late scores joined to their segment (issue 16): the eval join stage
(``observer.collectors.eval_join``) reads ``observer.llm`` and ``observer.evals`` and writes
every evaluation once to ``observer.evals-joined`` with its target's tenant, service, model
and cluster (``join``: carried, joined, unjoined).

Real parts: an LLM call traced by the OpenTelemetry SDK into the receiver and normaliser of
``observer up``'s runtime, then a score posted with Phoenix's own client; the processor run
by the real StageRunner on the shared broker, stopped and started again between a target and
its late score (its state read back from the checkpoint topic); ``observer up`` on its
embedded broker restarted between them (the state read back from the local file). The join's
rules (waiting, expiry, bounds, tenants, hostile records) are checked on the processor
itself, with Kafka timestamps as the record time."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
from kafka.consumer.fetcher import ConsumerRecord
from observer.core.compacted import KafkaCompactedStore, MemoryCompactedStore
from observer.collectors.eval_join.checkpoint import (
    pending_key,
    target_key,
)
from observer.collectors.eval_join.config import EvalJoinConfig
from observer.collectors.eval_join.join import EVAL_ID_HEADER, EvalJoiner
from observer.collectors.eval_join.local_state import STATE_FILE, LocalStateStore
from observer.collectors.normalize.config import NormalizerConfig
from observer.collectors.receiver.config import ReceiverConfig
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from phoenix.client import Client

from observer.config import ObserverConfig
from observer.core.bus import Message, Output, StageRunner, make_producer
from observer.core.config import AdminConfig, KafkaConfig
from observer.core.records import EvalRecord, LLMCall, decode, encode, segment_key
from observer.core.topics import Topics
from observer.runtime import Runtime
from tests.collectors_support import drain, intake_server, sample, wait_for

TOPICS = Topics.from_config(KafkaConfig(topic_prefix="unit."))
KEYS = ["service", "model"]
HOUR_MS = 3_600_000
NOW_MS = 1_700_000_000_000  # record time of the unit tests (Kafka timestamps)
SPAN, TRACE = "ab" * 8, "cd" * 16


def _call(span_id: str = SPAN, trace_id: str = TRACE, **fields: Any) -> LLMCall:
    return LLMCall(**{"service": "shop", "model": "gpt-4o", "trace_id": trace_id,
                      "span_id": span_id, **fields})


def _score(**fields: Any) -> EvalRecord:
    return EvalRecord(**{"name": "faithfulness", "score": 0.5, "target": "span",
                         "span_id": SPAN, "source": "rest", **fields})


class Feed:
    """A processor fed messages at increasing offsets; its checkpoint kept in memory, as the
    compacted topic would keep it."""

    def __init__(self, cfg: EvalJoinConfig | None = None,
                 store: MemoryCompactedStore | None = None, clock_ms: int = NOW_MS + 10 * HOUR_MS
                 ) -> None:
        self.cfg = cfg or EvalJoinConfig()
        self.store = store or MemoryCompactedStore(TOPICS.eval_join_state)
        self.joiner = EvalJoiner(TOPICS, self.cfg, KEYS, store=self.store,
                                 clock=lambda: clock_ms / 1000)
        self.offsets: dict[str, int] = {}

    def send(self, *records: Any, at_ms: int = NOW_MS, raw: bytes | None = None,
             topic: str | None = None) -> list[Output]:
        messages = []
        for record in records or [None]:
            where = topic or (TOPICS.llm if isinstance(record, LLMCall) else TOPICS.evals)
            offset = self.offsets[where] = self.offsets.get(where, -1) + 1
            value = raw if record is None else encode(record)
            messages.append(Message(where, 0, offset, None, value, at_ms))
        out = self.joiner.process(messages)
        self.store.apply(out)
        return out

    def restart(self) -> Feed:
        """A new processor over the same checkpoint and offsets (a supervisor restart)."""
        again = Feed(self.cfg, self.store)
        again.offsets = self.offsets
        return again


def joined(outputs: list[Output]) -> list[tuple[str, EvalRecord]]:
    return [(str(o.key), decode(o.value)) for o in outputs  # type: ignore[misc]
            if o.topic == TOPICS.evals_joined]


def test_a_score_before_its_target_waits_then_joins_with_the_segment() -> None:
    feed = Feed()
    waiting = feed.send(_score(tenant=""), at_ms=NOW_MS)
    assert joined(waiting) == []
    assert pending_key("0/0") in feed.store.load()  # checkpointed while it waits
    before = sample("observer_evals_joined_total", how="joined")
    out = feed.send(_call(cluster="eu-1"), at_ms=NOW_MS + 60_000)
    [(key, rec)] = joined(out)
    assert key == "shop|gpt-4o"
    assert (rec.join, rec.service, rec.model, rec.cluster, rec.name, rec.score) == (
        "joined", "shop", "gpt-4o", "eu-1", "faithfulness", 0.5)
    evals_out = next(o for o in out if o.topic == TOPICS.evals_joined)
    assert dict(evals_out.headers)[EVAL_ID_HEADER] == b"0/0"
    assert sample("observer_evals_joined_total", how="joined") == before + 1
    # Joined: its pending record is deleted; the call's span and trace keys are held.
    state = feed.store.load()
    assert pending_key("0/0") not in state
    assert {target_key(("span", "", SPAN)), target_key(("trace", "", TRACE))} <= set(state)
    # A second score after the call joins at once, by span; a trace score by trace.
    later = joined(feed.send(_score(name="relevance"), _score(target="trace", span_id="",
                                                               trace_id=TRACE)))
    assert [(r.name, r.target, r.join, k) for k, r in later] == [
        ("relevance", "span", "joined", "shop|gpt-4o"), ("faithfulness", "trace", "joined",
                                                         "shop|gpt-4o")]


def test_carried_orphan_and_evaluator_span_scores() -> None:
    feed = Feed()
    feed.send(_call())
    carried = _score(source="inline", service="app", model="m1", trace_id=TRACE)
    judge = _score(source="evaluator_span", service="judge-svc", trace_id=TRACE)
    orphan = _score(span_id="")  # no target id at all
    before = sample("observer_evals_unjoined_total", reason="orphan")
    out = joined(feed.send(carried, judge, orphan))
    assert [(k, r.join, r.service, r.model) for k, r in out] == [
        ("app|m1", "carried", "app", "m1"),
        # An EVALUATOR span's service is the judge's: the target's segment replaces it.
        ("shop|gpt-4o", "joined", "shop", "gpt-4o"),
        ("|", "unjoined", "", "")]
    assert sample("observer_evals_unjoined_total", reason="orphan") == before + 1


def test_a_session_score_joins_by_session_and_tenants_never_mix() -> None:
    feed = Feed()
    feed.send(_call(tenant="acme", conversation_id="sess-1"))
    session = _score(tenant="acme", target="session", span_id="", session_id="sess-1")
    other_tenant = _score(tenant="evil")  # the same span id, another tenant
    out = joined(feed.send(session, other_tenant))
    assert [(r.target, r.join, r.tenant, r.service) for _, r in out] == [
        ("session", "joined", "acme", "shop")]
    assert len(feed.joiner.pending) == 1  # the other tenant's score waits for its own span


def test_a_score_whose_target_never_comes_is_emitted_unjoined_after_the_ttl() -> None:
    feed = Feed(EvalJoinConfig(pending_ttl_s=3600))
    before = sample("observer_evals_unjoined_total", reason="expired")
    assert joined(feed.send(_score(), at_ms=NOW_MS)) == []
    # Record time moves with any input: 59 minutes later it still waits...
    assert joined(feed.send(_call(span_id="11" * 8, trace_id="22" * 16),
                            at_ms=NOW_MS + 59 * 60_000)) == []
    assert len(feed.joiner.pending) == 1
    # ...an hour after it arrived it leaves, unjoined, counted, and its checkpoint deleted.
    out = feed.send(_call(span_id="33" * 8, trace_id="44" * 16), at_ms=NOW_MS + HOUR_MS)
    assert [(k, r.join, r.name) for k, r in joined(out)] == [("|", "unjoined", "faithfulness")]
    assert sample("observer_evals_unjoined_total", reason="expired") == before + 1
    assert pending_key("0/0") not in feed.store.load()
    # Its target arriving later finds nothing waiting: the score is not emitted twice.
    assert joined(feed.send(_call(), at_ms=NOW_MS + HOUR_MS + 1)) == []


def test_a_timestamp_from_the_future_does_not_expire_everything() -> None:
    feed = Feed(EvalJoinConfig(pending_ttl_s=3600), clock_ms=NOW_MS)
    feed.send(_score(), at_ms=NOW_MS)
    # A producer whose clock is years ahead counts as this machine's clock (+1 minute): the
    # waiting score keeps waiting.
    feed.send(_call(span_id="11" * 8, trace_id="22" * 16), at_ms=NOW_MS + 10**12)
    assert feed.joiner.now_ms == NOW_MS + 60_000 and len(feed.joiner.pending) == 1


def test_a_restart_keeps_waiting_scores_and_targets_and_emits_no_duplicates() -> None:
    feed = Feed()
    feed.send(_call())  # target A
    feed.send(_score(span_id="ef" * 8))  # waits for target B
    again = feed.restart()
    # The restarted processor has both back from the checkpoint.
    late = joined(again.send(_score(name="late")))
    assert [(r.name, r.join, r.service) for _, r in late] == [("late", "joined", "shop")]
    assert len(again.joiner.pending) == 1
    # The batch in flight at a kill is read again: the waiting score is not queued twice.
    replay = Message(TOPICS.evals, 0, 0, None, encode(_score(span_id="ef" * 8)), NOW_MS)
    assert joined(again.joiner.process([replay])) == []
    out = joined(again.send(_call(span_id="ef" * 8, model="gpt-4o-mini")))
    assert [(k, r.join) for k, r in out] == [("shop|gpt-4o-mini", "joined")]
    assert len(again.joiner.pending) == 0


def test_state_stays_bounded_under_a_flood() -> None:
    feed = Feed(EvalJoinConfig(max_pending=100, max_targets=50))
    evicted = sample("observer_evals_unjoined_total", reason="evicted")
    dropped = sample("observer_eval_join_targets_dropped_total", reason="evicted")
    scores = [_score(span_id=f"{i:016x}") for i in range(5000)]
    out = joined(feed.send(*scores))
    # Never more than max_pending wait; each one pushed out is emitted unjoined and counted.
    assert len(feed.joiner.pending) == 100
    assert len(out) == 4900 and {r.join for _, r in out} == {"unjoined"}
    assert sample("observer_evals_unjoined_total", reason="evicted") == evicted + 4900
    calls = [_call(span_id=f"{i:016x}", trace_id=f"{i:032x}") for i in range(10_000, 13_000)]
    feed.send(*calls)
    assert len(feed.joiner.targets) == 50
    assert sample("observer_eval_join_targets_dropped_total", reason="evicted") == \
        dropped + 6000 - 50
    # The checkpoint holds what memory holds, not the flood.
    assert len(feed.store.load()) == 150
    # The newest waiting score still joins when its target comes.
    last = joined(feed.send(_call(span_id=f"{4999:016x}", trace_id="99" * 16)))
    assert [(r.span_id, r.join) for _, r in last] == [(f"{4999:016x}", "joined")]


def test_hostile_records_are_dead_lettered_never_fatal() -> None:
    feed = Feed()
    dead = sample("observer_dead_letters_total", stage="eval-join", reason="schema_error")
    bad = [
        feed.send(raw=b"\xff not json", topic=TOPICS.evals),
        feed.send(raw=b'{"schema": "observer.evals/v1", "name": "", "target": "span"}',
                  topic=TOPICS.evals),
        feed.send(raw=b'{"schema": "observer.evals/v1", "name": "x", "target": "span", '
                  b'"source": "rest", "score": 1e308, "span_id": "zz"}', topic=TOPICS.evals),
        feed.send(raw=encode(_call()), topic=TOPICS.evals),  # an LLM record on observer.evals
        feed.send(raw=encode(_score()), topic=TOPICS.llm),  # and an evaluation on observer.llm
        feed.send(raw=b"[" * 100_000, topic=TOPICS.llm),
    ]
    reasons = [[json_reason(o) for o in out if o.topic == TOPICS.dead_letter] for out in bad]
    assert reasons == [["decode_error"], ["invalid_value"], ["invalid_value"], ["schema_error"],
                       ["schema_error"], ["decode_error"]]
    assert sample("observer_dead_letters_total", stage="eval-join",
                  reason="schema_error") == dead + 2
    # The stage goes on: a good pair still joins.
    feed.send(_call())
    assert [r.join for _, r in joined(feed.send(_score()))] == ["joined"]


def test_a_checkpoint_record_that_does_not_read_back_is_deleted_not_fatal() -> None:
    store = MemoryCompactedStore(TOPICS.eval_join_state)
    store.apply([Output(TOPICS.eval_join_state, "p:0/9", b'{"schema": "nope"}'),
                 Output(TOPICS.eval_join_state, 't:["span"', b"{}")])
    feed = Feed(store=store)
    out = feed.joiner.tick()
    assert sorted(o.key for o in out if o.value is None) == ['p:0/9', 't:["span"']  # type: ignore[type-var]


def json_reason(output: Output) -> str:
    return json.loads(output.value)["reason"]


# On the shared broker -------------------------------------------------------------------------


def _runner(kafka: KafkaConfig, topics: Topics, group: str) -> tuple[threading.Event,
                                                                     threading.Thread]:
    """The stage as ``observer up`` runs it: a StageRunner over a fresh processor whose
    checkpoint is read back from the compacted topic."""
    joiner = EvalJoiner(topics, EvalJoinConfig(), KEYS,
                        store=KafkaCompactedStore(kafka, topics.eval_join_state))
    runner = StageRunner(kafka, joiner, group, [topics.llm, topics.evals],
                         dead_letter_topic=topics.dead_letter)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    assert runner.assigned.wait(60)
    return stop, thread


def _joined(kafka: KafkaConfig, topics: Topics, n: int, timeout_s: float = 30) -> list[
        ConsumerRecord]:
    return drain(kafka, topics.evals_joined, n, timeout_s)


def test_a_restart_between_the_target_and_its_late_rest_score_still_joins(
        kafka_config: KafkaConfig, topics: Topics) -> None:
    group = f"eval-join-{uuid.uuid4().hex[:8]}"
    producer = make_producer(kafka_config)
    stop, thread = _runner(kafka_config, topics, group)
    try:
        call = _call()
        producer.send(topics.llm, key=b"shop|gpt-4o", value=encode(call)).get(10)
        with intake_server(kafka_config, topics) as url:
            base = url.removesuffix("/v1/kserve")
            # A thumb for a span not seen yet: it waits (checkpointed).
            httpx.post(f"{base}/v1/span_annotations", json={"data": [{
                "span_id": "EF" * 8, "name": "user_feedback", "annotator_kind": "HUMAN",
                "result": {"label": "thumbs_down"}}]}).raise_for_status()
            store = KafkaCompactedStore(kafka_config, topics.eval_join_state)
            held = {target_key(("span", "", SPAN))}
            wait_for(lambda: held < (keys := set(store.load())) and any(
                k.startswith("p:") for k in keys), timeout_s=30,
                what="the target and the waiting score checkpointed")
        stop.set()
        thread.join(30)
        # A new process: nothing in memory, the state comes back from observer.eval-join-state.
        stop, thread = _runner(kafka_config, topics, group)
        with intake_server(kafka_config, topics) as url:
            Client(base_url=url.removesuffix("/v1/kserve")).spans.log_span_annotations(
                span_annotations=[{"span_id": SPAN, "name": "faithfulness",
                                   "annotator_kind": "LLM", "result": {"score": 0.25}}])
        producer.send(topics.llm, key=b"shop|gpt-4o-mini", value=encode(
            _call(span_id="ef" * 8, trace_id="12" * 16, model="gpt-4o-mini"))).get(10)
        got = _joined(kafka_config, topics, 2)
    finally:
        stop.set()
        thread.join(30)
        producer.close()
    records = sorted(((r.key.decode(), decode(r.value)) for r in got), key=lambda kr: kr[0])
    assert [(k, r.name, r.join, r.source, r.score) for k, r in records] == [
        ("shop|gpt-4o", "faithfulness", "joined", "rest", 0.25),
        ("shop|gpt-4o-mini", "user_feedback", "joined", "rest", 0.0)]
    # Each once: nothing more comes (the restart re-emitted nothing).
    assert len(_joined(kafka_config, topics, 3, timeout_s=3)) == 2


def test_observer_up_joins_a_late_phoenix_score_to_the_traced_call(
        kafka_config: KafkaConfig, free_port: Any) -> None:
    """As ``observer up`` runs them: an LLM call traced by the OpenTelemetry SDK into the
    receiver, normalised; then a score posted after it with Phoenix's client joins its
    segment, and the call's inline score is carried."""
    tag = uuid.uuid4().hex[:8]
    cfg = ObserverConfig(
        kafka=kafka_config,
        receiver=ReceiverConfig(http_port=free_port(), grpc_port=free_port()),
        admin=AdminConfig(port=free_port()),
        normalizer=NormalizerConfig(group_id=f"norm-{tag}"),
        eval_join=EvalJoinConfig(group_id=f"join-{tag}"),
    )
    topics = Topics.from_config(kafka_config)
    runtime = Runtime(cfg, ["collect", "normalize", "eval-join"]).start()
    try:
        assert runtime.wait_assigned(60)
        endpoints = runtime.endpoints()
        provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
        provider.add_span_processor(SimpleSpanProcessor(
            OTLPSpanExporter(endpoint=endpoints["otlp_http"])))
        span = provider.get_tracer("app").start_span("chat gpt-4o", attributes={
            "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
            "evaluations.0.evaluation.name": "relevance",
            "evaluations.0.evaluation.score": 0.9})
        span.end()
        provider.shutdown()
        span_id = f"{span.get_span_context().span_id:016x}"
        assert drain(kafka_config, topics.llm, 1, timeout_s=60)  # the call is normalised
        Client(base_url=endpoints["span_annotations"].removesuffix("/v1/span_annotations")
               ).spans.add_span_annotation(span_id=span_id, annotation_name="user_feedback",
                                           label="thumbs_up")
        got = _joined(kafka_config, topics, 2, timeout_s=60)
    finally:
        runtime.stop()
    records = {decode(r.value).name: (r.key.decode(), decode(r.value)) for r in got}
    key, rest = records["user_feedback"]
    assert (rest.join, rest.source, rest.service, rest.model, rest.span_id, rest.score) == (
        "joined", "rest", "shop", "gpt-4o", span_id, 1.0)
    key, inline = records["relevance"]
    assert (inline.join, inline.source, inline.service, inline.model) == (
        "carried", "inline", "shop", "gpt-4o")
    # Keyed by the drift segment of the evals record type (the llm keys, and more).
    for key, rec in records.values():
        assert key == segment_key(rec.segment_of(cfg.drift.keys_for("evals")))
        assert key.startswith("shop|gpt-4o")


class _FixedIds(RandomIdGenerator):
    """The SDK's ids, but the span ids we name (a call whose score is posted before it)."""

    def __init__(self, *span_ids: int) -> None:
        self.span_ids = list(span_ids)

    def generate_span_id(self) -> int:
        return self.span_ids.pop(0) if self.span_ids else super().generate_span_id()


def _durable_runtime(tmp_path: Path, free_port: Any) -> Runtime:
    cfg = ObserverConfig(
        kafka=KafkaConfig(embedded_listen=f"127.0.0.1:{free_port()}",
                          embedded_state_dir=tmp_path / "state",
                          session_timeout_ms=6000, heartbeat_interval_ms=1000),
        receiver=ReceiverConfig(http_port=free_port(), grpc_port=free_port()),
        admin=AdminConfig(port=free_port()),
    )
    runtime = Runtime(cfg, ["collect", "normalize", "eval-join"]).start()
    assert runtime.wait_assigned(60)
    return runtime


def _trace_call(runtime: Runtime, *span_ids: int) -> str:
    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}),
                              id_generator=_FixedIds(*span_ids))
    provider.add_span_processor(SimpleSpanProcessor(
        OTLPSpanExporter(endpoint=runtime.endpoints()["otlp_http"])))
    span = provider.get_tracer("app").start_span("chat gpt-4o", attributes={
        "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"})
    span.end()
    provider.shutdown()
    return f"{span.get_span_context().span_id:016x}"


def _post_score(runtime: Runtime, span_id: str, name: str) -> None:
    base = runtime.endpoints()["span_annotations"].removesuffix("/v1/span_annotations")
    Client(base_url=base).spans.add_span_annotation(span_id=span_id, annotation_name=name,
                                                    label="thumbs_up")


def test_observer_up_durable_restart_keeps_the_join_state(tmp_path: Path,
                                                          free_port: Any) -> None:
    """``observer up`` on its embedded broker (memory only, durable state on disk): the join
    state comes back from the local file after a restart, into a new, empty broker."""
    waiting_span = 0x0BADC0DE0BADC0DE
    runtime = _durable_runtime(tmp_path, free_port)
    try:
        seen = _trace_call(runtime)  # a call seen before the restart
        _post_score(runtime, f"{waiting_span:016x}", "early")  # a score before its call
        local = LocalStateStore(tmp_path / "state" / STATE_FILE, "", "probe")
        wait_for(lambda: target_key(("span", "", seen)) in (keys := set(local.load()))
                 and any(k.startswith("p:") for k in keys), timeout_s=60,
                 what="the target and the waiting score on disk")
        local.close()
    finally:
        runtime.stop()
    runtime = _durable_runtime(tmp_path, free_port)
    try:
        _post_score(runtime, seen, "late")  # joins the call seen before the restart
        _trace_call(runtime, waiting_span)  # the early score's call arrives at last
        kafka = runtime.cfg.kafka
        topic = Topics.from_config(kafka).evals_joined
        got = drain(kafka, topic, 2, timeout_s=60)
        # Each once: the score spooled by the receiver before the restart is not replayed
        # into a second wait (the join had settled it: it was in the join's state on disk).
        assert len(drain(kafka, topic, 3, timeout_s=3)) == 2
    finally:
        runtime.stop()
    records = sorted((decode(r.value) for r in got), key=lambda r: r.name)
    assert [(r.name, r.join, r.service, r.model, r.span_id) for r in records] == [
        ("early", "joined", "shop", "gpt-4o", f"{waiting_span:016x}"),
        ("late", "joined", "shop", "gpt-4o", seen)]


def test_a_kill_mid_batch_repeats_outputs_with_the_same_eval_id() -> None:
    """At least once: a batch read again after a kill (its offsets not committed) may emit
    what it had emitted; the repeat carries the same ``observer-eval-id``. A score whose
    target was checkpointed but whose own delete was not is joined at the restart."""
    feed = Feed()
    feed.send(_call())
    first = [o for o in feed.send(_score()) if o.topic == TOPICS.evals_joined]
    again = feed.restart()
    replay = Message(TOPICS.evals, 0, 0, None, encode(_score()), NOW_MS)
    repeat = [o for o in again.joiner.process([replay]) if o.topic == TOPICS.evals_joined]
    assert [dict(o.headers)[EVAL_ID_HEADER] for o in first + repeat] == [b"0/0", b"0/0"]
    # A checkpoint holding both a target and a score waiting for it (the batch's delete of
    # the waiting score was not acknowledged): the restarted join emits it at once.
    store = MemoryCompactedStore(TOPICS.eval_join_state)
    waiting = Feed(store=store)
    waiting.send(_score(span_id="ef" * 8))
    store.apply(Feed().joiner.process([Message(TOPICS.llm, 0, 0, None,
                                               encode(_call(span_id="ef" * 8)), NOW_MS)]))
    assert [(r.join, r.span_id) for _, r in joined(Feed(store=store).joiner.tick())] == [
        ("joined", "ef" * 8)]
