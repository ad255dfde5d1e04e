"""The drift engine on every record type: predictions (nested per-instance features), GPU
samples (segmented by GPU model), paths (the path mix); on the real broker, in memory, and
across kills."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from prometheus_client import REGISTRY

from observer.drift.engine import DriftEngine
from observer.drift.record_types import RECORD_TYPES, feature_rows, topics_by_type
from observer.core.bus import Message, Output, make_producer, produce_all
from observer.config import ObserverConfig
from observer.core.config import KafkaConfig
from observer.drift.config import DriftConfig, FeatureSpec
from observer.core.records import (
    DriftResult,
    GPUSample,
    PathRecord,
    Prediction,
    Record,
    ServingSample,
    decode,
    encode,
)
from observer.core.topics import Topics
from observer.runtime import CONSUMING_STAGES
from tests.drift_support import (
    TOPICS,
    drain_results,
    engine_running,
    first_window_config,
    uninterrupted,
    with_kills,
)

H100, A100 = "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB"
CITIES = ["Oslo", "Rome", "Lima"]
# Per path: (llm calls, tool calls): a longer path takes more loop turns.
PATHS = {"p-answer": (1, 0), "p-search": (2, 1), "p-deep": (4, 3)}

PREDICTION_FEATURES = [FeatureSpec(name="inputs.age", kind="numeric"),
                       FeatureSpec(name="inputs.city", kind="categorical")]
BY_GPU_MODEL = {"gpu": ["gpu_model"]}
GPU_FEATURES = [FeatureSpec(name="utilization_pct", kind="numeric"),
                FeatureSpec(name="power_w", kind="numeric")]


def predictions(rng: np.random.Generator, n: int, *, drifted: bool = False,
                instances: int | tuple[int, ...] = 3, service: str = "credit") -> list[Prediction]:
    """KServe predictions of ``instances`` instances each (a tuple: drawn per request); a
    drifted population is older and lives mostly in Lima."""
    out = []
    for i in range(n):
        k = instances if isinstance(instances, int) else int(rng.choice(instances))
        ages = rng.normal(60 if drifted else 40, 10, k).round(1)
        cities = rng.choice(CITIES, k, p=[0.1, 0.3, 0.6] if drifted else [0.5, 0.3, 0.2])
        out.append(Prediction(
            service=service, model="xgb", request_id=uuid.uuid4().hex, protocol="v1",
            instances=k, inputs={"age": [float(a) for a in ages], "city": [str(c) for c in cities]},
            outputs={"prediction": [0.5] * k}, time_unix_nano=1 + i,
        ))
    return out


def gpu_samples(rng: np.random.Generator, n: int, gpu_model: str, *, busy: bool = False) -> list[GPUSample]:
    """Samples from 4 nodes of one GPU model; a busy fleet runs hotter."""
    return [
        GPUSample(source="replay", node=f"node-{i % 4}", gpu_uuid=f"GPU-{gpu_model[:9]}-{i % 4}",
                  gpu_model=gpu_model, time_unix_nano=1 + i,
                  utilization_pct=float(np.clip(rng.normal(85 if busy else 40, 8), 0, 100)),
                  power_w=float(rng.normal(600 if busy else 300, 30)))
        for i in range(n)
    ]


def paths(rng: np.random.Generator, n: int, mix: dict[str, float]) -> list[PathRecord]:
    """Finished traces drawn from ``mix`` (path signature -> share)."""
    names = list(mix)
    out = []
    for i in range(n):
        sig = str(rng.choice(names, p=[mix[s] for s in names]))
        llm, tools = PATHS[sig]
        out.append(PathRecord(
            service="agent", model="m1", trace_id=uuid.uuid4().hex, llm_calls=llm,
            loop_iterations=llm, tool_calls=tools, tool_errors=int(rng.random() < 0.02),
            duration_ms=float(sum(rng.normal(900, 100, llm))), path_signature=sig,
            start_time_unix_nano=1 + i,
        ))
    return out


def on_topic(records: list[Record], topics: Topics, record_type: str, key: str = "k",
             partition: int = 0, first_offset: int = 0) -> list[Message]:
    topic = getattr(topics, RECORD_TYPES[record_type].topic)
    return [Message(topic, partition, first_offset + i, key.encode(), encode(r), 1 + i)
            for i, r in enumerate(records)]


def scored(engine: DriftEngine, messages: list[Message]) -> list[DriftResult]:
    got = [decode(o.value) for o in engine.process(messages) if o.topic == engine.topics.drift]
    assert all(isinstance(r, DriftResult) for r in got)
    return got  # type: ignore[return-value]


def errors(record_type: str, reason: str) -> float:
    return REGISTRY.get_sample_value(
        "observer_drift_errors_total", {"record_type": record_type, "reason": reason}) or 0.0


def feature(result: DriftResult, name: str):
    return next(f for f in result.features if f.name == name)


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(("record_type", "name", "says"), [
    ("predictions", "inputs.age", None),
    ("predictions", "inputz.age", "'inputz' is not a field of predictions records"),
    ("predictions", "inputs.", "a key is missing after 'inputs'"),
    ("gpu", "node.x", "'node' is not a mapping field"),
    ("paths", "path_signatur", "'path_signatur' is not a field of paths records"),
])
def test_unknown_fields_are_refused_at_start(record_type: str, name: str, says: str | None) -> None:
    cfg = DriftConfig(features={record_type: [FeatureSpec(name=name, kind="numeric")]})
    if says is None:
        DriftEngine(cfg, TOPICS)
        return
    with pytest.raises(ValueError, match=f"drift feature '{name}' of {record_type} records") as e:
        DriftEngine(cfg, TOPICS)
    assert says in str(e.value)


def test_segment_keys_and_record_types_are_checked() -> None:
    with pytest.raises(ValueError, match="segment key 'service' is not a field of gpu records"):
        DriftEngine(DriftConfig(segment_keys_by_record_type={"gpu": ["service"]}), TOPICS)
    with pytest.raises(ValueError, match=r"unknown record types \['llms'\]"):
        DriftEngine(DriftConfig(features={"llms": []}), TOPICS)
    with pytest.raises(ValueError, match=r"segment keys configured for unknown record types"):
        DriftEngine(DriftConfig(segment_keys_by_record_type={"gpus": ["node"]}), TOPICS)
    with pytest.raises(ValueError, match="no feature for any record type"):
        DriftEngine(DriftConfig(features={"llm": [], "paths": []}), TOPICS)


def test_the_drift_stage_reads_the_topics_of_configured_record_types() -> None:
    cfg = ObserverConfig()
    topics = Topics.from_config(cfg.kafka)
    stage = CONSUMING_STAGES["drift"]
    commands = [topics.drift_commands]  # reference commands, read with checkpoints (the default)
    assert stage.input_topics(cfg, topics) == [topics.llm, topics.tools, topics.retrievals,
                                               topics.paths, topics.embeddings,
                                               topics.evals_joined, *commands]
    features = {"predictions": PREDICTION_FEATURES, "gpu": GPU_FEATURES}
    cfg = cfg.model_copy(update={"drift": DriftConfig(features=features)})
    assert stage.input_topics(cfg, topics) == [topics.predictions, topics.gpu, *commands]
    assert stage.input_topics(cfg, topics) == DriftEngine.for_kafka(cfg.drift, cfg.kafka,
                                                                    topics).inputs
    offline = cfg.drift.model_copy(update={"checkpoints": False})
    assert DriftEngine(offline, topics).inputs == [topics.predictions, topics.gpu]


# --- rows -------------------------------------------------------------------------------------


def test_a_prediction_is_one_row_per_instance() -> None:
    p = Prediction(service="s", model="m", request_id="r", protocol="v2", instances=3,
                   inputs={"age": [41, "n/a", True], "city": ["Oslo", ["a", 1], None]},
                   outputs={"label": [1, 0]}, model_version="v7")
    specs = [*PREDICTION_FEATURES, FeatureSpec(name="outputs.label", kind="categorical"),
             FeatureSpec(name="model_version", kind="categorical"),
             FeatureSpec(name="inputs.missing", kind="numeric")]
    assert feature_rows(p, specs) == [
        {"inputs.age": 41, "inputs.city": "Oslo", "outputs.label": 1, "model_version": "v7",
         "inputs.missing": None},
        # Text is no number; a list is a category by its JSON text; a short column misses.
        {"inputs.age": None, "inputs.city": '["a", 1]', "outputs.label": 0,
         "model_version": "v7", "inputs.missing": None},
        {"inputs.age": 1, "inputs.city": None, "outputs.label": None, "model_version": "v7",
         "inputs.missing": None},
    ]
    empty = p.model_copy(update={"inputs": {"age": [], "city": []}, "outputs": {}})
    assert feature_rows(empty, PREDICTION_FEATURES) == []


def test_windows_count_instances_and_a_request_split_by_a_window_is_in_both() -> None:
    cfg = first_window_config(window_size=10, features={"predictions": PREDICTION_FEATURES})
    engine = DriftEngine(cfg, TOPICS)
    rng = np.random.default_rng(3)
    # 4 + 4 + 4 instances: the third request closes window 0 after 2 of its instances.
    reqs = predictions(rng, 3, instances=4) + predictions(rng, 2, instances=4)
    [result] = scored(engine, on_topic(reqs, TOPICS, "predictions", first_offset=50))
    assert (result.window_index, result.n_reference, result.n_current) == (1, 10, 10)
    assert [(r.first_offset, r.last_offset) for r in result.reference_ranges] == [(50, 52)]
    assert [(r.first_offset, r.last_offset) for r in result.current_ranges] == [(52, 54)]


# --- on the real broker -----------------------------------------------------------------------


@pytest.fixture
def engine_on_broker(kafka_config: KafkaConfig, topics: Topics) -> Iterator[DriftEngine]:
    features = {"predictions": PREDICTION_FEATURES, "gpu": GPU_FEATURES,
                "paths": DriftConfig().features["paths"]}
    # 600 rows: PSI over 600 against 600 same-distribution values passed 0.1 in 0.7% of 300
    # seeds here (over 300 rows: 23%).
    cfg = first_window_config(window_size=600, features=features,
                              segment_keys_by_record_type=BY_GPU_MODEL)
    with engine_running(kafka_config, cfg, topics) as engine:
        assert sorted(engine.inputs) == sorted([topics.predictions, topics.gpu, topics.paths])
        yield engine


def test_predictions_gpu_and_paths_drift_on_the_broker(
    kafka_config: KafkaConfig, topics: Topics, engine_on_broker: DriftEngine
) -> None:
    rng = np.random.default_rng(11)
    wrong_before = errors("gpu", "wrong_schema")
    # Predictions: 200 requests x 3 instances per window; the population changes at window 3.
    preds = predictions(rng, 600) + predictions(rng, 400, drifted=True)
    outputs = [Output(topics.predictions, "credit|xgb", encode(p)) for p in preds]
    # Segments by GPU model, keyed so (one partition each: docs/stages/drift.md); only the H100s get busy.
    # Serving figures share the topic and are skipped.
    gpus = (gpu_samples(rng, 1800, H100) + gpu_samples(rng, 1200, H100, busy=True)
            + gpu_samples(rng, 1800, A100))
    outputs += [Output(topics.gpu, g.gpu_model, encode(g)) for g in gpus]
    outputs += [Output(topics.gpu, "m", encode(ServingSample(
        engine="vllm", model="m", time_unix_nano=1, window_s=30.0))) for _ in range(5)]
    # Paths: the mix moves towards the long path at window 3.
    before = {"p-answer": 0.7, "p-search": 0.3, "p-deep": 0.0}
    after = {"p-answer": 0.2, "p-search": 0.3, "p-deep": 0.5}
    outputs += [Output(topics.paths, "agent|m1", encode(p))
                for p in paths(rng, 1800, before) + paths(rng, 1200, after)]
    producer = make_producer(kafka_config)
    produce_all(producer, outputs, 10)
    producer.close()

    expected = {("predictions", "credit|xgb"): 4, ("gpu", H100): 4, ("gpu", A100): 2,
                ("paths", "agent|m1"): 4}
    got = drain_results(kafka_config, topics.drift, sum(expected.values()))
    windows: dict[tuple[str, str], dict[int, DriftResult]] = {}
    for r in got:
        windows.setdefault((r.record_type, r.segment_key), {})[r.window_index] = r
    assert {k: len(v) for k, v in windows.items()} == expected
    verdicts = {k: [v[w].dataset_drift for w in sorted(v)] for k, v in windows.items()}
    # Drift when the distribution changed, and not before.
    assert verdicts == {("predictions", "credit|xgb"): [False, False, True, True],
                        ("gpu", H100): [False, False, True, True],
                        ("gpu", A100): [False, False],
                        ("paths", "agent|m1"): [False, False, True, True]}

    pred = windows[("predictions", "credit|xgb")][3]
    # One row per instance: 600 rows are 200 requests.
    assert (pred.n_reference, pred.n_current) == (600, 600)
    assert sum(r.last_offset - r.first_offset + 1 for r in pred.current_ranges) == 200
    assert feature(pred, "inputs.age").drifted and feature(pred, "inputs.city").drifted
    assert pred.segment == {"service": "credit", "model": "xgb"}
    assert windows[("gpu", H100)][3].segment == {"gpu_model": H100}
    assert errors("gpu", "wrong_schema") == wrong_before
    path = windows[("paths", "agent|m1")]
    assert not feature(path[1], "path_signature").drifted
    assert feature(path[3], "path_signature").drifted


# --- defaults ---------------------------------------------------------------------------------


def test_default_paths_features_do_not_false_alarm_and_catch_a_new_path_mix() -> None:
    engine = DriftEngine(DriftConfig(), TOPICS)  # the defaults: auto methods, 2000-record reference
    rng = np.random.default_rng(5)
    before = {"p-answer": 0.6, "p-search": 0.4, "p-deep": 0.0}
    after = {"p-answer": 0.3, "p-search": 0.4, "p-deep": 0.3}
    got = scored(engine, on_topic(paths(rng, 6000, before) + paths(rng, 2000, after),
                                  TOPICS, "paths"))
    assert [r.window_index for r in got] == [1, 2, 3, 4, 5, 6]
    assert [r.dataset_drift for r in got] == [False] * 4 + [True] * 2
    assert {f.name for f in got[0].features} == {
        "loop_iterations", "llm_calls", "tool_errors", "duration_ms", "path_signature"}
    assert all(feature(r, "path_signature").drifted for r in got[4:])


# --- checkpoints ------------------------------------------------------------------------------


def kill_stream(seed: int) -> list[Message]:
    """Predictions of 1-5 instances in 2 segments on 2 partitions and GPU samples of 2 models
    on 2 partitions (one model per partition), both drifting half way."""
    rng = np.random.default_rng(seed)
    out: list[Message] = []
    offsets: dict[tuple[str, int], int] = {}

    def add(record: Record, topic: str, partition: int) -> None:
        tp = (topic, partition)
        offsets[tp] = offsets.get(tp, -1) + 1
        out.append(Message(topic, partition, offsets[tp], b"k", encode(record), 1 + len(out)))

    for i in range(500):
        drifted = i > 250
        which = int(rng.integers(2))
        if rng.random() < 0.5:
            [p] = predictions(rng, 1, drifted=drifted, instances=(1, 2, 3, 4, 5),
                              service=("credit", "fraud")[which])
            add(p, TOPICS.predictions, which)
        else:
            [g] = gpu_samples(rng, 1, (H100, A100)[which], busy=drifted)
            add(g, TOPICS.gpu, which)
    return out


KILL_CFG = first_window_config(
    window_size=40, features={"predictions": PREDICTION_FEATURES, "gpu": GPU_FEATURES},
    segment_keys_by_record_type=BY_GPU_MODEL)


@pytest.mark.parametrize("seed", range(6))
def test_kills_give_the_uninterrupted_results_for_predictions_and_gpu(seed: int) -> None:
    stream = kill_stream(seed)
    batch = random.Random(seed).choice([3, 7, 40])
    expected = uninterrupted(KILL_CFG, stream, batch)
    types = {k[1] for k in expected}
    assert types == {"predictions", "gpu"} and len(expected) > 10
    assert any(r.dataset_drift for r in expected.values())
    got, kills = with_kills(KILL_CFG, stream, batch, seed)
    assert kills >= 2
    assert got == expected


def test_gpu_samples_are_segmented_per_device_by_default() -> None:
    engine = DriftEngine(first_window_config(window_size=10, features={"gpu": GPU_FEATURES}), TOPICS)
    rng = np.random.default_rng(2)
    samples = [g.model_copy(update={"node": "n1", "gpu_uuid": "GPU-7", "mig_instance": "3"})
               for g in gpu_samples(rng, 20, H100)]
    [result] = scored(engine, on_topic(samples, TOPICS, "gpu"))
    assert result.segment == {"node": "n1", "gpu_uuid": "GPU-7", "mig_instance": "3"}
    assert result.segment_key == "n1|GPU-7|3"


def test_topics_by_type_follows_the_table() -> None:
    every = {t: [FeatureSpec(name="service" if t != "gpu" else "node", kind="categorical")]
             for t in RECORD_TYPES}
    assert sorted(topics_by_type(DriftConfig(features=every), TOPICS).values()) == sorted(RECORD_TYPES)
