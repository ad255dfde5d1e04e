"""Embedding features in the drift engine (issue 15): prompt and response vectors scored per
window with the default method (Evidently's domain classifier), with evidence naming the
records behind a drift; a new embedder starts a new stream; exact and sketch state
checkpoint and restore exactly; and the same on the shared broker.
"""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from prometheus_client import REGISTRY

from observer.core.bus import Message, Output, make_producer, produce_all
from observer.core.config import KafkaConfig
from observer.core.records import DriftResult, EmbeddingRecord, decode, encode
from observer.core.topics import Topics
from observer.drift.checkpoint import restore_streams
from observer.drift.config import DriftConfig, FeatureSpec
from observer.drift.embedding.columns import Reservoir, VectorRow
from observer.drift.engine import DriftEngine
from tests.drift_support import (
    TOPICS,
    drain_results,
    engine_running,
    keyed,
    results_of,
    uninterrupted,
    with_kills,
)

DIM = 16
EMBEDDINGS = [FeatureSpec(name="prompt_embedding", kind="embedding"),
              FeatureSpec(name="response_embedding", kind="embedding")]


def config(**settings) -> DriftConfig:
    """Embedding features only, a 200-record reference and 100-record windows."""
    base = dict(features={"embeddings": EMBEDDINGS}, window_size=100, reference="first_n",
                reference_records=200)
    return DriftConfig(**{**base, **settings})


def vectors(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    """Unit vectors around one topic; ``shift`` moves the topic (a change of meaning)."""
    centre = np.zeros(DIM)
    centre[0] = 1.0
    centre[1] = shift
    v = centre + rng.normal(0, 0.35, size=(n, DIM))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def record(i: int, prompt: np.ndarray, response: np.ndarray | None = None, *,
           embedder: str = f"hashing-ngram-v1/{DIM}", tag: str = "r",
           snippet: str | None = None) -> EmbeddingRecord:
    return EmbeddingRecord(
        service="shop", model="m1", trace_id=f"{tag}{i:05d}", span_id=f"s{i}",
        start_time_unix_nano=1_700_000_000_000_000_000 + i * 1_000_000, embedder=embedder,
        dimension=len(prompt), source="content", prompt_embedding=prompt.tolist(),
        response_embedding=None if response is None else response.tolist(),
        prompt_snippet=snippet,
    )


def message(i: int, rec: EmbeddingRecord, topics: Topics = TOPICS, partition: int = 0) -> Message:
    return Message(topics.embeddings, partition, i, b"shop|m1", encode(rec), 1_700_000_000_000 + i)


def stream(seed: int, n: int, *, shift_from: int | None = None, shift: float = 1.5,
           start: int = 0, tag: str = "r", **kwargs) -> list[Message]:
    """``n`` records from offset ``start``; from ``shift_from`` on, prompts and responses move."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(start, start + n):
        moved = shift_from is not None and i >= shift_from
        s = shift if moved else 0.0
        p, r = vectors(rng, 1, s)[0], vectors(rng, 1, s)[0]
        out.append(message(i, record(i, p, r, tag="x" if moved else tag, **kwargs)))
    return out


def results(outputs: list[Output]) -> list[DriftResult]:
    return [decode(o.value) for o in outputs if o.topic == TOPICS.drift]  # type: ignore[misc]


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- (a) the engine on seeded vectors -------------------------------------------------------------


def test_the_defaults_score_prompt_and_response_embeddings() -> None:
    cfg = DriftConfig()
    assert [f.name for f in cfg.features["embeddings"]] == ["prompt_embedding", "response_embedding"]
    assert cfg.embedding_method == "model"
    assert cfg.keys_for("embeddings") == ["service", "model", "embedder"]
    engine = DriftEngine(cfg, TOPICS)
    assert TOPICS.embeddings in engine.inputs


def test_same_meaning_never_drifts_and_a_shift_drifts_with_evidence() -> None:
    engine = DriftEngine(config(), TOPICS)
    # 200 reference records, then 4 windows of the same distribution.
    quiet = results(engine.process(stream(1, 600)))
    assert [r.window_index for r in quiet] == [1, 2, 3, 4]
    for r in quiet:
        assert [(f.name, f.kind, f.method) for f in r.features] == [
            ("prompt_embedding", "embedding", "model"), ("response_embedding", "embedding", "model")]
        assert not r.dataset_drift and all(f.evidence is None for f in r.features)
        assert all(0.3 < f.statistic < 0.7 for f in r.features)  # ROC AUC near chance
    # The next window: every record's meaning moved (trace ids x...).
    (moved,) = results(engine.process(stream(2, 100, start=600, shift_from=600)))
    assert moved.window_index == 5 and moved.dataset_drift and moved.drift_share == 1.0
    prompt = moved.features[0]
    assert prompt.drifted and prompt.statistic > prompt.threshold and prompt.statistic > 0.9
    assert prompt.statistics["model"] == prompt.statistic
    assert prompt.evidence is not None and len(prompt.evidence.unlike) == 10
    assert all(u.trace_id.startswith("x") for u in prompt.evidence.unlike)
    assert all(u.snippet is None for u in prompt.evidence.unlike)  # no content capture


def test_evidence_points_at_the_shifted_records_of_a_mixed_window() -> None:
    cfg = config(embedding_method="distance",
                 thresholds={"distance": 0.05, "wasserstein": 0.1, "psi": 0.1,
                             "jensenshannon": 0.1})
    engine = DriftEngine(cfg, TOPICS)
    rng = np.random.default_rng(3)
    msgs = [message(i, record(i, v)) for i, v in enumerate(vectors(rng, 200))]
    # 70 like the reference, 30 about something else, with snippets (content capture).
    msgs += [message(200 + i, record(200 + i, v)) for i, v in enumerate(vectors(rng, 70))]
    msgs += [message(270 + i, record(270 + i, v, tag="x", snippet=f"new topic {i}"))
             for i, v in enumerate(vectors(rng, 30, shift=3.0))]
    (r,) = results(engine.process(msgs))
    prompt = r.features[0]
    assert prompt.drifted and prompt.method == "distance"
    assert r.features[1].statistic is None  # no response vectors: not scored, not counted
    assert r.drift_share == 1.0
    unlike = prompt.evidence.unlike
    assert [u.trace_id[0] for u in unlike] == ["x"] * 10
    assert all(u.snippet.startswith("new topic") for u in unlike)
    assert {u.span_id for u in unlike} <= {f"s{i}" for i in range(270, 300)}
    # The new topic is a cluster the reference lacks, with its share of the window.
    (cluster,) = prompt.evidence.novel_clusters
    assert cluster.size == 30 and cluster.share_current == pytest.approx(0.3)
    assert cluster.share_reference < 0.05
    assert [e.trace_id[0] for e in cluster.examples] == ["x"] * 3


def test_an_unknown_embedding_method_fails_at_start() -> None:
    with pytest.raises(ValueError, match="'psi' is not an embedding drift method"):
        DriftEngine(config(embedding_method="psi"), TOPICS)


def test_vectors_of_another_dimension_are_counted_and_skipped() -> None:
    engine = DriftEngine(config(embedding_method="distance"), TOPICS)
    before = counter("observer_drift_errors_total", record_type="embeddings",
                     reason="dimension_mismatch")
    rng = np.random.default_rng(4)
    msgs = stream(4, 250)
    # Same embedder id, but a vector of another length (a lying client): never fatal.
    odd = record(250, rng.normal(size=DIM + 3))
    msgs.append(message(250, odd))
    msgs += stream(5, 49, start=251)
    (r,) = results(engine.process(msgs))
    assert r.window_index == 1 and r.n_current == 100
    assert counter("observer_drift_errors_total", record_type="embeddings",
                   reason="dimension_mismatch") == before + 1


def test_a_vector_overflowing_float32_goes_to_the_dead_letter_topic() -> None:
    engine = DriftEngine(config(embedding_method="distance"), TOPICS)
    bad = record(0, np.full(DIM, 1e300))
    out = engine.process([message(0, bad)])
    assert [o.topic for o in out] == [TOPICS.dead_letter]
    assert engine.streams == 0  # it never reached a window
    assert engine.process(stream(6, 1, start=1)) == []


# -- (d) a new embedder is a new stream ---------------------------------------------------------


def test_a_new_embedder_starts_a_new_stream_not_a_drift() -> None:
    engine = DriftEngine(config(), TOPICS)
    started = counter("observer_drift_streams_started_total", record_type="embeddings")
    first = results(engine.process(stream(7, 400)))
    assert [r.window_index for r in first] == [1, 2]
    # The embedder changes (another model, another dimension): vectors unlike anything seen.
    rng = np.random.default_rng(8)
    other = [message(400 + i, record(400 + i, v, embedder="fastembed:bge-small/24"))
             for i, v in enumerate(rng.normal(size=(300, 24)))]
    after = results(engine.process(other))
    assert counter("observer_drift_streams_started_total", record_type="embeddings") == started + 2
    assert engine.streams == 2
    # Its own reference (200 records), then one window scored against it: no drift.
    assert [(r.segment_key, r.window_index) for r in after] == [("shop|m1|fastembed:bge-small/24", 1)]
    assert not after[0].dataset_drift
    assert after[0].segment == {"service": "shop", "model": "m1",
                                "embedder": "fastembed:bge-small/24"}


def test_the_tenant_leads_embedding_segments() -> None:
    from observer.config import ObserverConfig

    cfg = ObserverConfig(receiver={"tenants": {"acme": "t" * 32}})
    assert cfg.drift.keys_for("embeddings") == ["tenant", "service", "model", "embedder"]


# -- (c) checkpoints and restarts ---------------------------------------------------------------


@pytest.mark.parametrize("mode, window", [("exact", {}), ("sketch", {}), (
    # 100 ms windows sliding by 50 ms (records are 1 ms apart): sampled panes merge.
    "sketch", {"window_kind": "sliding", "window_duration_s": 0.1, "window_slide_s": 0.05}),
    ("exact", {"parts": 3000})])
def test_kills_anywhere_give_the_uninterrupted_results(
    mode: str, window: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    if "parts" in window:
        # Every checkpoint record goes out in parts: kills leave some parts without their
        # record, and records without some of their parts.
        monkeypatch.setattr("observer.drift.state_parts.PART_CHARS", window.pop("parts"))
    cfg = config(mode=mode, sketch_embedding_rows=64, embedding_method="distance", **window)
    messages = stream(9, 700, shift_from=550)
    expected = uninterrupted(cfg, messages, 45)
    assert len(expected) >= 5 and any(r.dataset_drift for r in expected.values())
    drifted = [r for r in expected.values() if r.dataset_drift]
    assert drifted[0].features[0].evidence is not None
    for seed in (1, 2):
        got, kills = with_kills(cfg, messages, 45, seed)
        assert kills >= 2
        assert got == expected


def test_checkpoints_hold_vectors_as_base64_float32() -> None:
    from tests.drift_support import Runner

    runner = Runner(config())
    engine = runner.engine()
    outputs = engine.process(stream(10, 250)) + engine.tick()
    runner.acknowledge(outputs)
    state = [o for o in outputs if o.topic == TOPICS.drift_state and o.value is not None]
    raw = b"".join(o.value for o in state)
    assert b'"@vec"' in raw
    value = json.loads(next(o.value for o in state if b'"rows"' in o.value))
    row = next(iter(value["rows"]["prompt_embedding"]))
    assert set(row) == {"@vec", "t", "s"}  # base64 of float32, not a list of floats
    restored = restore_streams(runner.store.load())
    (stream_state,) = restored.values()
    assert stream_state.window == 1
    ref = stream_state.reference["columns"]["prompt_embedding"]
    assert len(ref) == 200 and isinstance(ref[0], VectorRow)
    original = decode(stream(10, 1)[0].value)
    assert np.array_equal(ref[0].vector, np.asarray(original.prompt_embedding, dtype=np.float32))


def test_checkpoint_records_stay_under_a_megabyte() -> None:
    from tests.drift_support import Runner

    # 256 dimensions, 400-record batches: a batch's rows are ~1.2 MB of base64, the
    # reference ~1.8 MB; they go out in parts (drift.state_parts).
    cfg = config(reference_records=600, window_size=600, embedding_method="distance")
    runner = Runner(cfg)
    engine = runner.engine()
    rng = np.random.default_rng(11)
    msgs = [message(i, record(i, v, w, embedder="big/256"))
            for i, (v, w) in enumerate(zip(vectors_256(rng, 1200), vectors_256(rng, 1200)))]
    split = False
    for start in range(0, 1200, 400):
        if start == 800:
            engine = runner.engine()  # a restart: reference and open window from the parts
        part = msgs[start:start + 400]
        outputs = engine.process(part) + engine.tick()
        runner.acknowledge(outputs)
        runner.commit(part)
        assert max(len(o.value or b"") for o in outputs) < 400_000
        split |= any("#" in str(o.key) for o in outputs)
        if start == 800:
            (r,) = results(outputs)
            assert r.window_index == 1 and r.n_reference == 600 and r.n_current == 600
    assert split
    # Two idle iterations: the closed window's records go, then (once that is confirmed)
    # their parts.
    runner.acknowledge(engine.tick())
    runner.acknowledge(engine.tick())
    # No part outlives the record it belongs to (superseded parts were deleted).
    live = runner.store.load()
    referenced = set()
    for key, raw in live.items():
        value = json.loads(raw)
        if "parts" in value:
            digest, count, _ = value["parts"]
            referenced |= {f"{key}#{digest}/{i}" for i in range(count)}
    assert referenced and {k for k in live if "#" in k} == referenced


def vectors_256(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.normal(size=(n, 256))


def test_reservoirs_sample_deterministically_and_merge() -> None:
    rows = [VectorRow([float(i)], f"t{i}", "s") for i in range(5000)]
    a, b = Reservoir(100), Reservoir(100)
    a.extend(rows)
    b.extend(rows)
    assert a.rows == b.rows and a.n == 5000 and len(a.rows) == 100
    mean = np.mean([r.vector[0] for r in a.rows])
    assert 2000 < mean < 3000  # uniform over the stream, not its start
    c = Reservoir(100)
    c.extend(rows[:1000])
    c.merge(a)
    assert c.n == 6000 and len(c.rows) == 100
    back = Reservoir.from_json(json.loads(json.dumps(a.to_json(), default=_default),
                                          object_hook=_hook))
    assert back.rows == a.rows and back.n == a.n


def _default(value):
    from observer.drift.embedding.columns import json_default
    return json_default(value)


def _hook(obj):
    from observer.drift.embedding.columns import object_hook
    return object_hook(obj)


def test_state_memory_per_segment(capsys: pytest.CaptureFixture[str]) -> None:
    """What one segment's embedding state holds (two 256-dimension features): exact mode
    grows with the records held, sketch mode stops at its reservoirs. Prints the measured
    bytes per held row and what that makes at the defaults (2000-record reference, 1000-record
    windows, 512-row reservoirs)."""
    rng = np.random.default_rng(12)
    dim = 256
    msgs = [message(i, record(i, v, w, embedder="hashing-ngram-v1/256"))
            for i, (v, w) in enumerate(zip(rng.normal(size=(199, dim)),
                                           rng.normal(size=(199, dim))))]
    held = {}
    for mode in ("exact", "sketch"):
        engine = DriftEngine(config(mode=mode, reference_records=100, window_size=100,
                                    sketch_embedding_rows=25, embedding_method="distance"),
                             TOPICS)
        tracemalloc.start()
        engine.process(msgs)
        held[mode] = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
    per_row = held["exact"] / (199 * 2)  # 100 reference + 99 open records, 2 features
    per_sampled_row = held["sketch"] / (50 * 2)  # 25 + 25 sampled rows, 2 features
    assert 1024 < per_row < 2048 and 1024 < per_sampled_row < 2048
    with capsys.disabled():
        print(f"\nembedding state, 2 features x {dim} dims: {per_row:.0f} B per held row; "
              f"per segment at the defaults: exact {per_row * 2 * 3000 / 1e6:.1f} MB, "
              f"sketch {per_sampled_row * 2 * 1024 / 1e6:.1f} MB")


# -- (b) on the shared broker -------------------------------------------------------------------


def test_embedding_drift_on_the_broker(kafka_config: KafkaConfig, topics: Topics) -> None:
    cfg = config(embedding_method="model")
    msgs = stream(13, 400, shift_from=300)
    producer = make_producer(kafka_config)
    produce_all(producer, [Output(topics.embeddings, "shop|m1", m.value) for m in msgs], 10)
    producer.close()
    with engine_running(kafka_config, cfg, topics):
        got = drain_results(kafka_config, topics.drift, 2)
    by_window = {r.window_index: r for r in got}
    assert sorted(by_window) == [1, 2]
    assert by_window[1].record_type == "embeddings" and not by_window[1].dataset_drift
    prompt = by_window[2].features[0]
    assert prompt.name == "prompt_embedding" and prompt.kind == "embedding" and prompt.drifted
    assert prompt.evidence and all(u.trace_id.startswith("x") for u in prompt.evidence.unlike)


# -- visible everywhere: webhook payload, episode report ----------------------------------------


def _drifted_result() -> DriftResult:
    engine = DriftEngine(config(embedding_method="distance"), TOPICS)
    msgs = stream(14, 200)
    rng = np.random.default_rng(15)
    msgs += [message(200 + i, record(200 + i, v, tag="x", snippet=f"<b>topic</b> {i}"))
             for i, v in enumerate(vectors(rng, 100, shift=3.0))]
    (r,) = results(engine.process(msgs))
    assert r.dataset_drift
    return r.model_copy(update={"episode_start_window": r.window_index})


def test_the_webhook_payload_carries_kind_and_evidence() -> None:
    from observer.triggers.policy import Decision
    from observer.triggers.webhook import build_payload

    r = _drifted_result()
    d = Decision(policy="p", segment_key=r.segment_key, record_type=r.record_type,
                 episode_id="e1", kind="fired", reason="r", window_index=r.window_index,
                 first_window_index=r.window_index, decided_at=0.0)
    body = json.loads(build_payload(d, r))
    features = body["data"]["drift"]["features"]
    assert [(f["name"], f["kind"]) for f in features] == [
        ("prompt_embedding", "embedding"), ("response_embedding", "embedding")]
    assert body["data"]["drift"]["drifted_features"] == ["prompt_embedding"]
    unlike = features[0]["evidence"]["unlike"]
    assert len(unlike) == 10 and all(u["trace_id"].startswith("x") for u in unlike)
    assert "evidence" not in features[1]  # not drifted (no response vectors): none


def test_the_episode_report_shows_embedding_features_and_evidence(tmp_path) -> None:
    from observer.drift.config import DriftReportsConfig
    from observer.drift.reports import DriftReports

    r = _drifted_result()
    reports = DriftReports(DriftReportsConfig(enabled=True, dir=tmp_path), None)
    path = reports.get(r)
    page = path.read_text()
    assert "observer-embedding-drift" in page and "prompt_embedding: drifted" in page
    unlike = r.features[0].evidence.unlike
    assert all(u.trace_id in page for u in unlike)
    assert "&lt;b&gt;topic&lt;/b&gt;" in page and "<b>topic</b>" not in page  # escaped


def test_a_parquet_reference_with_a_list_column(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(16)
    ref = vectors(rng, 300)
    path = tmp_path / "ref.parquet"
    pq.write_table(pa.table({"prompt_embedding": [v.tolist() for v in ref]}), path)
    cfg = config(reference="parquet", reference_path=str(path), embedding_method="distance",
                 features={"embeddings": EMBEDDINGS[:1]})
    for mode in ("exact", "sketch"):
        engine = DriftEngine(cfg.model_copy(update={"mode": mode}), TOPICS)
        quiet, moved = results(engine.process(stream(17, 100) + stream(
            18, 100, start=100, shift_from=100, shift=3.0)))
        assert (quiet.window_index, quiet.n_reference) == (1, 300)
        assert not quiet.dataset_drift and moved.dataset_drift
        assert moved.features[0].evidence.unlike[0].trace_id.startswith("x")


def test_state_in_parts_survives_a_new_broker_incarnation(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Embedded durable mode: the state file (drift.local_state) holds the parts as records;
    seeded into a new broker whose offsets start at 0, the rebased records still join."""
    from observer.core.compacted import MemoryCompactedStore
    from observer.drift.local_state import LocalDriftState, MirroredEngine
    from observer.drift.published import MemoryResultLog

    monkeypatch.setattr("observer.drift.state_parts.PART_CHARS", 3000)
    cfg = config(embedding_method="distance")
    msgs = stream(19, 700, shift_from=550)
    whole = uninterrupted(cfg, msgs, 50)
    local = LocalDriftState(tmp_path / "drift.sqlite", TOPICS, "i1")
    before = MirroredEngine(DriftEngine(cfg, TOPICS, store=MemoryCompactedStore(TOPICS.drift_state),
                                        results=MemoryResultLog(TOPICS.drift)), local)
    produced = []
    for i in range(0, 350, 50):
        produced += before.process(msgs[i:i + 50]) + before.tick()
    local.close()
    seed = LocalDriftState(tmp_path / "drift.sqlite", TOPICS, "i2").seed()
    assert any("#" in str(o.key) for o in seed)  # parts were kept and seeded
    store = MemoryCompactedStore(TOPICS.drift_state)
    store.apply(seed)
    log = MemoryResultLog(TOPICS.drift)
    log.apply(seed, at_ms=0)
    after = DriftEngine(cfg, TOPICS, store=store, results=log)
    tail = [Message(m.topic, m.partition, j, m.key, m.value, m.timestamp_ms)
            for j, m in enumerate(msgs[350:])]  # the new log numbers from 0
    for i in range(0, len(tail), 50):
        out = after.process(tail[i:i + 50]) + after.tick()
        store.apply(out)
        produced += out
    got = keyed(results_of(produced))
    assert got.keys() == whole.keys()
    assert [got[k].features for k in sorted(got)] == [whole[k].features for k in sorted(whole)]


class _Held:
    """The admin routes' view of ``observer.drift``: here, the results held in memory."""

    def __init__(self, results: list[DriftResult]) -> None:
        self.results = results

    def latest(self) -> list[DriftResult]:
        return self.results

    def history(self) -> list[DriftResult]:
        return []


def test_the_drift_api_carries_the_evidence() -> None:
    import httpx
    from fastapi import FastAPI

    from observer.core.http import ServerThread
    from observer.drift.admin_routes import drift_router

    r = _drifted_result()
    app = FastAPI()
    app.include_router(drift_router(_Held([r]), None))
    with ServerThread(app, "127.0.0.1") as server:
        body = httpx.get(f"{server.url}/api/v1/drift", timeout=10).json()
    (got,) = body["results"]
    prompt = got["features"][0]
    assert prompt["kind"] == "embedding" and prompt["drifted"]
    assert [u["trace_id"] for u in prompt["evidence"]["unlike"]] == [
        u.trace_id for u in r.features[0].evidence.unlike]
