"""Quality as a signal (issue 16): evaluation scores joined to their segment are the drift
record type ``evals``, one stream per segment and eval name, with a "score fell" test whose
false-alarm rate is stated and checked here, a thumbs-down rate, the label mix as categorical
drift, quality gauges, and retrieval score and top-document metrics.

Joined evals are written straight to ``observer.evals-joined`` (the join stage's output), so
these tests do not depend on the join stage.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import httpx
import pytest
from fastapi import FastAPI
from observer.drift import quality_metrics
from observer.drift.admin_routes import drift_router
from observer.drift.config import DegradationSpec, DriftConfig
from observer.drift.engine import DriftEngine
from observer.drift.mean_test import MeanTest
from prometheus_client import REGISTRY

from observer.config import load_config
from observer.core.bus import Message, Output, make_producer, produce_all
from observer.core.config import KafkaConfig
from observer.core.http import ServerThread
from observer.core.records import DriftResult, EvalRecord, RetrievalRecord, decode, encode
from observer.core.topics import Topics
from tests.drift_support import drain_results, engine_running

TOPICS = Topics.from_config(KafkaConfig(topic_prefix="quality."))
EVALS_ONLY = {"evals": DriftConfig().features["evals"]}


def quality_config(**settings: object) -> DriftConfig:
    """Evals only; a 200-score reference (the score test's too) and windows of 100."""
    return DriftConfig(**{"features": EVALS_ONLY, "reference": "first_n",
                          "reference_records": 200, "window_size": 100,
                          "numeric_method": "psi", "categorical_method": "jensenshannon",
                          **settings})


def evals(rng: random.Random, name: str, n: int, *, service: str, mean: float | None = None,
          labels: dict[str, float] | None = None, join: str = "joined",
          model: str = "gpt-4o") -> list[EvalRecord]:
    """``n`` scores around ``mean`` (sd 0.05, within 0..1) and/or labels drawn from ``labels``."""
    out = []
    for _ in range(n):
        score = None if mean is None else min(1.0, max(0.0, rng.gauss(mean, 0.05)))
        label = None if labels is None else rng.choices(list(labels), list(labels.values()))[0]
        i = rng.getrandbits(64)
        out.append(EvalRecord(service=service, model=model, name=name, score=score, label=label,
                              target="span", trace_id=f"{i:032x}", span_id=f"{i:016x}",
                              source="rest", join=join, time_unix_nano=1))
    return out


def feedback(rng: random.Random, n: int, down: float, service: str) -> list[EvalRecord]:
    """User feedback as Phoenix sends it: label thumbs_up/thumbs_down with score 1/0."""
    records = evals(rng, "user_feedback", n, service=service,
                    labels={"thumbs_down": down, "thumbs_up": 1 - down})
    return [r.model_copy(update={"score": 0.0 if r.label == "thumbs_down" else 1.0})
            for r in records]


def on_topic(records: Iterable[EvalRecord | RetrievalRecord], topic: str) -> list[Message]:
    """One partition, a millisecond apart (a window's closing time is its last record's)."""
    return [Message(topic, 0, i, b"k", encode(r), 1_700_000_000_000 + i)
            for i, r in enumerate(records)]


def scored(engine: DriftEngine, messages: list[Message]) -> dict[tuple[str, int], DriftResult]:
    out = [decode(o.value) for o in engine.process(messages) if o.topic == TOPICS.drift]
    return {(r.segment_key, r.window_index): r for r in out}


def signal(result: DriftResult, name: str):
    return next(d for d in result.degradation if d.name == name)


# --- the score test and its false-alarm rate ---------------------------------------------------


@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_the_score_test_false_alarm_rate_is_alpha_over_same_distribution_blocks(alpha: float) -> None:
    # 800 streams of skewed, bounded scores (Beta(8, 2), like an LLM judge's), each a
    # 200-score reference and 4 tested blocks of 100 from the same distribution.
    rng = random.Random(11)
    tests = alarms = 0
    for _ in range(800):
        test = MeanTest(alpha=alpha, reference_values=200, block=100, direction="down")
        for _ in range(600):
            alarms += test.update(rng.betavariate(8, 2)).drift_detected
        tests += 4
    rate = alarms / tests
    # 3200 tests: the binomial's standard deviation is 0.39 (alpha 0.05) or 0.18 (0.01)
    # points; the band is about 3 of them, so a test that ignored alpha would fail.
    assert alpha * 0.6 <= rate <= alpha * 1.4, rate


def test_the_score_test_detects_a_fall_and_only_in_its_direction() -> None:
    rng = random.Random(3)
    down = MeanTest(reference_values=200, block=100, direction="down")
    up = MeanTest(reference_values=200, block=100, direction="up")
    for x in [rng.betavariate(8, 2) for _ in range(200)]:  # mean 0.8
        down.update(x), up.update(x)
    fell = [rng.betavariate(6, 4) for _ in range(300)]  # mean 0.6: three blocks, all worse
    assert [down.update(x).drift_detected for x in fell].count(True) == 3
    assert [up.update(x).drift_detected for x in fell].count(True) == 0
    assert down.reference_mean == pytest.approx(0.8, abs=0.03)
    assert down.estimation == pytest.approx(0.6, abs=0.05)


# --- evals streams in the engine ---------------------------------------------------------------


def test_a_falling_score_is_detected_per_eval_name_with_its_direction() -> None:
    rng = random.Random(5)
    engine = DriftEngine(quality_config(), TOPICS)
    records = []
    # shop: faithfulness falls (worse) and hallucination rises (worse: lower is better);
    # bank: the same names move the other way (better), which is no detection.
    for service, (faith, halluc) in {"q-shop": ((0.85, 0.6), (0.1, 0.4)),
                                     "q-bank": ((0.6, 0.85), (0.4, 0.1))}.items():
        records += evals(rng, "faithfulness", 400, service=service, mean=faith[0])
        records += evals(rng, "faithfulness", 200, service=service, mean=faith[1])
        records += evals(rng, "hallucination", 400, service=service, mean=halluc[0])
        records += evals(rng, "hallucination", 200, service=service, mean=halluc[1])
    got = scored(engine, on_topic(records, TOPICS.evals_joined))

    for key, worse in [("q-shop|gpt-4o|faithfulness", True), ("q-shop|gpt-4o|hallucination", True),
                       ("q-bank|gpt-4o|faithfulness", False), ("q-bank|gpt-4o|hallucination", False)]:
        detected = [signal(got[(key, w)], "score_fell").detected for w in (1, 2, 3, 4)]
        assert detected == [False, False, worse, worse], key
    result = got[("q-shop|gpt-4o|faithfulness", 3)]
    assert result.segment == {"service": "q-shop", "model": "gpt-4o", "name": "faithfulness"}
    fell = signal(result, "score_fell")
    assert (fell.detector, fell.n) == ("mean_test", 100)
    assert fell.mean == pytest.approx(0.6, abs=0.03)
    assert fell.reference == pytest.approx(0.85, abs=0.02)
    assert fell.level == pytest.approx(fell.mean)
    # The score's distribution drifted too: drift says "different", score_fell says "worse".
    assert next(f for f in result.features if f.name == "score").drifted
    # Quality gauges: the window's mean and the reference, per segment and eval name.
    labels = {"segment": "q-shop|gpt-4o", "eval": "faithfulness"}
    assert REGISTRY.get_sample_value("observer_quality_score_mean", labels) == pytest.approx(
        signal(got[("q-shop|gpt-4o|faithfulness", 4)], "score_fell").mean)
    assert REGISTRY.get_sample_value("observer_quality_score_reference", labels) == \
        pytest.approx(fell.reference)


def test_the_score_test_continues_exactly_across_kills() -> None:
    # Checkpoints carry the score test's state (reference sums and the open block): an engine
    # killed every few batches publishes the same results, figures included, as one never
    # killed.
    from tests.drift_support import TOPICS as SUPPORT_TOPICS
    from tests.drift_support import uninterrupted, with_kills

    rng = random.Random(9)
    scores = (evals(rng, "faithfulness", 350, service="q-kill", mean=0.85)
              + evals(rng, "faithfulness", 250, service="q-kill", mean=0.6))
    thumbs = feedback(rng, 350, 0.05, "q-kill") + feedback(rng, 250, 0.5, "q-kill")
    records = [r for pair in zip(scores, thumbs) for r in pair]  # two streams, interleaved
    stream = on_topic(records, SUPPORT_TOPICS.evals_joined)
    cfg = quality_config(checkpoints=True)
    expected = uninterrupted(cfg, stream, 50)
    got, kills = with_kills(cfg, stream, 50, seed=4)
    assert kills > 3 and got == expected
    fell = [signal(r, "score_fell") for k, r in sorted(expected.items())
            if k[0] == "q-kill|gpt-4o|faithfulness"]
    assert [f.detected for f in fell] == [False, True, True, True]


def test_thumbs_down_rate_and_the_label_mix() -> None:
    rng = random.Random(8)
    engine = DriftEngine(quality_config(), TOPICS)
    relevance = {"relevant": 0.9, "irrelevant": 0.1}
    records = (feedback(rng, 400, 0.05, "q-fb") + feedback(rng, 200, 0.5, "q-fb")
               + evals(rng, "relevance", 400, service="q-fb", labels=relevance)
               + evals(rng, "relevance", 200, service="q-fb",
                       labels={"relevant": 0.4, "irrelevant": 0.6}))
    got = scored(engine, on_topic(records, TOPICS.evals_joined))

    thumbs = [signal(got[("q-fb|gpt-4o|user_feedback", w)], "thumbs_down_rate") for w in (1, 2, 3, 4)]
    assert [t.detected for t in thumbs[:2]] == [False, False]
    assert any(t.detected for t in thumbs[2:])  # ADWIN finds the rise within two windows
    assert thumbs[3].mean == pytest.approx(0.5, abs=0.12)
    assert thumbs[3].level > 0.3
    # Labels only (no score): the label mix is categorical drift; a relevance eval is not
    # feedback, so its thumbs-down signal is fed nothing.
    label_drift = [next(f for f in got[("q-fb|gpt-4o|relevance", w)].features if f.name == "label")
                   for w in (1, 2, 3, 4)]
    assert [f.drifted for f in label_drift] == [False, False, True, True]
    assert signal(got[("q-fb|gpt-4o|relevance", 3)], "thumbs_down_rate").n == 0
    assert REGISTRY.get_sample_value("observer_quality_thumbs_down_rate", {
        "segment": "q-fb|gpt-4o", "eval": "user_feedback"}) == pytest.approx(thumbs[3].mean)


def test_evals_on_the_broker_unjoined_ones_are_skipped_and_the_api_shows_the_figures(
    kafka_config: KafkaConfig, topics: Topics
) -> None:
    rng = random.Random(13)
    joined = (evals(rng, "faithfulness", 400, service="q-live", mean=0.85)
              + evals(rng, "faithfulness", 100, service="q-live", mean=0.55))
    # The join stage could not place these: no segment, never a stream (nor a window).
    unjoined = evals(rng, "faithfulness", 600, service="", model="", mean=0.1, join="unjoined")
    producer = make_producer(kafka_config)
    produce_all(producer, [Output(topics.evals_joined, "q-live|gpt-4o", encode(r))
                           for r in [*unjoined, *joined]], 10)
    producer.close()
    with engine_running(kafka_config, quality_config(), topics):
        got = drain_results(kafka_config, topics.drift, 3)
    assert sorted((r.segment_key, r.window_index) for r in got) == [
        ("q-live|gpt-4o|faithfulness", w) for w in (1, 2, 3)]
    last = max(got, key=lambda r: r.window_index)
    assert signal(last, "score_fell").detected

    app = FastAPI()
    app.include_router(drift_router(_Held(got), None))
    with ServerThread(app, "127.0.0.1") as server:
        body = httpx.get(f"{server.url}/api/v1/drift", timeout=10).json()
    (shown,) = [r for r in body["results"] if r["window_index"] == 3]
    fell = next(d for d in shown["degradation"] if d["name"] == "score_fell")
    assert fell["detected"] and fell["reference"] == pytest.approx(0.85, abs=0.02)
    assert fell["mean"] == pytest.approx(0.55, abs=0.03)


class _Held:
    """The admin routes' view of ``observer.drift``: the results drained above."""

    def __init__(self, results: list[DriftResult]) -> None:
        self.results = results

    def latest(self) -> list[DriftResult]:
        return self.results

    def history(self) -> list[DriftResult]:
        return []


def test_quality_series_are_capped() -> None:
    # Eval names come from clients: beyond max_series segment x eval pairs nothing new is
    # exported (the streams are still scored), and the windows left out are counted.
    admitted = len(quality_metrics._admitted)
    engine = DriftEngine(quality_config(quality={"max_series": admitted + 1}), TOPICS)
    rng = random.Random(2)
    before = REGISTRY.get_sample_value("observer_quality_series_dropped_total") or 0.0
    records = (evals(rng, "cap-a", 300, service="q-cap", mean=0.8)
               + evals(rng, "cap-b", 300, service="q-cap", mean=0.8))
    got = scored(engine, on_topic(records, TOPICS.evals_joined))
    assert len(got) == 2  # window 1 of each stream
    assert REGISTRY.get_sample_value("observer_quality_score_mean",
                                     {"segment": "q-cap|gpt-4o", "eval": "cap-a"}) is not None
    assert REGISTRY.get_sample_value("observer_quality_score_mean",
                                     {"segment": "q-cap|gpt-4o", "eval": "cap-b"}) is None
    # The reference window and window 1 of cap-b.
    assert REGISTRY.get_sample_value("observer_quality_series_dropped_total") == before + 2


# --- retrieval metrics -------------------------------------------------------------------------


def test_retrieval_score_histogram_and_documents_falling_out_of_the_top_k() -> None:
    cfg = DriftConfig(features={"retrievals": DriftConfig().features["retrievals"]},
                      reference="first_window", window_size=50, numeric_method="psi",
                      categorical_method="jensenshannon")
    engine = DriftEngine(cfg, TOPICS)
    rng = random.Random(4)

    def retrieval(docs: list[str], top: float) -> RetrievalRecord:
        i = rng.getrandbits(64)
        return RetrievalRecord(service="q-rag", model="m", trace_id=f"{i:032x}",
                               span_id=f"{i:016x}", k=len(docs), topk_document_ids=docs,
                               top1_document_id=docs[0], score_max=top, score_mean=top - 0.1,
                               score_margin=0.05)

    labels = {"segment": "q-rag|m", "stat": "max"}
    before = REGISTRY.get_sample_value("observer_retrieval_score_count", labels) or 0.0
    records = [retrieval(["doc-a", "doc-b", "doc-c"], 0.85) for _ in range(50)]
    records += [retrieval(["doc-x", "doc-c", "doc-y"], 0.45) for _ in range(50)]
    got = scored(engine, on_topic(records, TOPICS.retrievals))
    assert list(got) == [("q-rag|m", 1)]
    assert REGISTRY.get_sample_value("observer_retrieval_score_count", labels) == before + 100
    # Half the scores at or under 0.5: the falling retriever shows in the distribution.
    assert REGISTRY.get_sample_value("observer_retrieval_score_bucket",
                                     {**labels, "le": "0.5"}) >= 50
    drop = {d: REGISTRY.get_sample_value("observer_retrieval_top_document_share_drop",
                                         {"segment": "q-rag|m", "document": d})
            for d in ("doc-a", "doc-b", "doc-c", "doc-x")}
    assert drop == {"doc-a": 1.0, "doc-b": 1.0, "doc-c": 0.0, "doc-x": None}


# --- configuration -----------------------------------------------------------------------------


def test_quality_knobs_load_from_yaml_and_env_and_bad_ones_fail_naming_the_problem(tmp_path) -> None:
    f = tmp_path / "observer.yaml"
    f.write_text("drift:\n  quality:\n    lower_is_better: [hallucination, bias]\n")
    assert load_config(f, env={}).drift.quality.lower_is_better == ["hallucination", "bias"]
    env = {"OBSERVER_DRIFT__QUALITY__MAX_SERIES": "7"}
    assert load_config(None, env=env).drift.quality.max_series == 7
    assert DriftConfig().keys_for("evals") == ["service", "model", "name"]

    with pytest.raises(ValueError, match="direction worse applies to evals records only"):
        DriftEngine(DriftConfig(degradation={"llm": [DegradationSpec(
            name="latency", field="latency_ms", direction="worse")]}), TOPICS)
    with pytest.raises(ValueError, match="delta does not apply to detector mean_test"):
        DegradationSpec(name="s", field="score", detector="mean_test", delta=0.1)
    with pytest.raises(ValueError, match="block do not apply to detector adwin"):
        DegradationSpec(name="s", field="score", block=50)


# --- the quality dashboard against a real Prometheus -------------------------------------------


def test_every_quality_panel_query_returns_data(start_prometheus, exposition_server) -> None:
    """The engine's own metrics, scraped by a real Prometheus between two phases of traffic
    (rates need counters that grow): every panel of observer-quality returns data."""

    from prometheus_api_client import PrometheusConnect
    from prometheus_client import generate_latest

    from tests.dashboard_queries import dashboard_queries, describe, expand, queries_without_data

    rng = random.Random(21)
    cfg = quality_config(features={**EVALS_ONLY,
                                   "retrievals": DriftConfig().features["retrievals"]})
    engine = DriftEngine(cfg, TOPICS)

    def retrievals(n: int, docs: list[str], top: float) -> list[RetrievalRecord]:
        out = []
        for _ in range(n):
            i = rng.getrandbits(64)
            out.append(RetrievalRecord(
                service="q-dash", model="m", trace_id=f"{i:032x}", span_id=f"{i:016x}",
                k=len(docs), topk_document_ids=docs, top1_document_id=docs[0],
                score_max=rng.gauss(top, 0.05), score_mean=rng.gauss(top - 0.2, 0.05),
                score_margin=abs(rng.gauss(0.1, 0.03)), data_source="kb"))
        return out

    def phase(changed: bool) -> None:
        records = (evals(rng, "faithfulness", 300, service="q-dash", model="m",
                         mean=0.55 if changed else 0.85)
                   + feedback(rng, 300, 0.4 if changed else 0.05, "q-dash")
                   + evals(rng, "relevance", 300, service="q-dash", model="m",
                           labels={"relevant": 0.3 if changed else 0.9,
                                   "irrelevant": 0.7 if changed else 0.1}))
        scored(engine, on_topic(records, TOPICS.evals_joined))
        docs = ["kb-9", "kb-2", "kb-4"] if changed else ["kb-1", "kb-2", "kb-3"]
        scored(engine, on_topic(retrievals(300, docs, 0.5 if changed else 0.8), TOPICS.retrievals))

    phase(changed=False)
    server = exposition_server(lambda: generate_latest(REGISTRY).decode())
    prom = start_prometheus({"observer": [server.address]})
    prom.wait_for_scrapes(2)
    phase(changed=True)
    client = PrometheusConnect(url=prom.url, disable_ssl=True)
    queries = dashboard_queries("observer-quality")
    assert len(queries) >= 12
    missing = queries_without_data(client, queries)
    assert not missing, describe(missing)
    # The table names the documents that fell out of the top-k.
    table = client.custom_query(expand(next(q[2] for q in queries if "top-k" in q[1])))
    dropped = {r["metric"]["document"]: float(r["value"][1]) for r in table
               if r["metric"]["segment"] == "q-dash|m"}
    assert dropped["kb-1"] == 1.0 and dropped["kb-3"] == 1.0 and dropped["kb-2"] == 0.0
