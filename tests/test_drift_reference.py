"""References: the first window (default), the first N records, a pinned time range, or a
Parquet dataset; each in exact and sketch mode, and each across kills."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from observer.drift.engine import DriftEngine
from observer.drift.reference import ParquetReference
from observer.drift.stats import METHODS
from observer.core.bus import Message
from observer.drift.config import DriftConfig, FeatureSpec
from observer.core.records import DriftResult, LLMCall, decode, encode
from tests.drift_support import T0_MS, TOPICS, messages, uninterrupted, with_kills

S = 1_000_000_000
FEATURES = {"llm": [FeatureSpec(name="output_tokens", kind="numeric"),
                    FeatureSpec(name="finish_reason", kind="categorical")]}


def calls(tokens: list[int], *, model: str = "m", t0: int = 0, step_s: int = 1) -> list[Message]:
    return [Message(TOPICS.llm, 0, i, None, encode(LLMCall(
        service="s", model=model, trace_id="t", span_id="s", output_tokens=v,
        finish_reason="stop", start_time_unix_nano=(t0 + i * step_s) * S)), 0)
        for i, v in enumerate(tokens)]


def run(cfg: DriftConfig, batch: list[Message]) -> list[DriftResult]:
    engine = DriftEngine(cfg, TOPICS)
    return [decode(o.value) for o in engine.process(batch) if o.topic == TOPICS.drift]  # type: ignore[misc]


def test_first_window_reference() -> None:
    cfg = DriftConfig(window_size=10, features=FEATURES, reference="first_window")
    out = run(cfg, calls(list(range(100, 130))))
    assert [(r.window_index, r.n_reference) for r in out] == [(1, 10), (2, 10)]


def test_default_reference_is_the_first_2000_records_and_auto_picks_wasserstein() -> None:
    # Evidently's automatic choice over more than 1000 reference rows: Wasserstein for a
    # numeric feature with more than 5 values (docs/stages/drift.md, "What is scored").
    cfg = DriftConfig(features=FEATURES)
    assert (cfg.reference, cfg.reference_records, cfg.window_size) == ("first_n", 2000, 1000)
    assert (cfg.numeric_method, cfg.categorical_method) == ("auto", "auto")
    rng = np.random.default_rng(5)
    tokens = [int(v) for v in rng.lognormal(5, 0.5, 3000)]
    out = run(cfg, calls(tokens + [3 * t for t in tokens[:1000]]))
    assert [(r.window_index, r.n_reference, r.n_current) for r in out] == [
        (1, 2000, 1000), (2, 2000, 1000)]
    # finish_reason is one category: Jensen-Shannon above 1000 rows, whatever the unique count.
    assert [[f.method for f in r.features] for r in out] == [["wasserstein", "jensenshannon"]] * 2
    assert [r.dataset_drift for r in out] == [False, True]


@pytest.mark.parametrize("mode", ["exact", "sketch"])
def test_first_n_records_form_the_reference(mode: str) -> None:
    rng = np.random.default_rng(0)
    ref = [int(v) for v in rng.lognormal(5, 0.5, 50)]
    same = [int(v) for v in rng.lognormal(5, 0.5, 40)]
    cfg = DriftConfig(window_size=20, reference="first_n", reference_records=50,
                      features=FEATURES, numeric_method="wasserstein", mode=mode)
    out = run(cfg, calls(ref + same))
    assert [(r.window_index, r.n_reference, r.n_current) for r in out] == [(1, 50, 20), (2, 50, 20)]
    exact = METHODS["wasserstein"].statistic(ref, same[:20], "numeric")
    f = out[0].features[0]
    assert abs(f.statistic - exact) <= (f.error_bound or 0.0) + 1e-12


def test_time_range_reference_skips_earlier_and_later_records() -> None:
    # Records at t = 0..99 s; the reference is [10 s, 30 s): 20 records.
    tokens = [100 + i % 7 for i in range(100)]
    cfg = DriftConfig(window_size=25, reference="time_range", reference_start="10",
                      reference_end="30", features=FEATURES)
    batch = calls(tokens)
    # A record of the range that arrives after the range closed is late: not in the reference.
    late = Message(TOPICS.llm, 0, 100, None, encode(LLMCall(
        service="s", model="m", trace_id="t", span_id="s", output_tokens=10_000,
        start_time_unix_nano=15 * S)), 0)
    out = run(cfg, [*batch[:50], late, *batch[50:]])
    assert {r.n_reference for r in out} == {20}
    # Windows start at the first record past the range: t = 30..99 (70 records) + the late one.
    assert [(r.window_index, r.n_current) for r in out] == [(1, 25), (2, 25)]


def test_a_segment_with_nothing_in_the_range_never_drifts() -> None:
    cfg = DriftConfig(window_size=10, reference="time_range", reference_start="1000",
                      reference_end="2000", features=FEATURES)
    out = run(cfg, calls(list(range(3000, 3030)), t0=2000))
    assert out and all(r.n_reference == 0 and not r.dataset_drift for r in out)
    assert all(f.statistic is None for r in out for f in r.features)


def write_reference(path: Path, models: list[str] | None, n: int = 400, mean: float = 5) -> Path:
    rng = np.random.default_rng(1)
    data = {"output_tokens": rng.lognormal(mean, 0.5, n).astype(int).tolist(),
            "finish_reason": ["stop"] * n}
    if models is not None:
        data["service"] = ["s"] * n
        data["model"] = [models[i % len(models)] for i in range(n)]
    pq.write_table(pa.table(data), path)
    return path


@pytest.mark.parametrize("mode", ["exact", "sketch"])
def test_parquet_reference_for_every_segment(tmp_path: Path, mode: str) -> None:
    path = write_reference(tmp_path / "ref.parquet", None, n=4000, mean=5)
    cfg = DriftConfig(window_size=2000, reference="parquet", reference_path=str(path),
                      features=FEATURES, mode=mode, numeric_method="wasserstein")
    rng = np.random.default_rng(2)
    batch = calls([int(v) for v in rng.lognormal(5, 0.5, 2000)], model="a") + calls(
        [int(v) for v in rng.lognormal(6, 0.5, 2000)], model="b")
    batch = [Message(m.topic, 0, i, None, m.value, 0) for i, m in enumerate(batch)]
    out = {r.segment["model"]: r for r in run(cfg, batch)}
    # The first window of each segment is scored: the dataset is the reference.
    assert {m: (r.window_index, r.n_reference) for m, r in out.items()} == {
        "a": (1, 4000), "b": (1, 4000)}
    assert not out["a"].dataset_drift and out["b"].dataset_drift


def test_parquet_reference_per_segment_with_fallback(tmp_path: Path) -> None:
    path = write_reference(tmp_path / "ref.parquet", ["a"], n=300)
    cfg = DriftConfig(window_size=50, reference="parquet", reference_path=str(path),
                      features=FEATURES)
    batch = calls([150] * 100, model="a") + calls([150] * 100, model="z")
    batch = [Message(m.topic, 0, i, None, m.value, 0) for i, m in enumerate(batch)]
    out = run(cfg, batch)
    by_model = {(r.segment["model"], r.window_index): r.n_reference for r in out}
    # "a" is scored against its 300 dataset rows from window 1; "z" has none: first window.
    assert by_model == {("a", 1): 300, ("a", 2): 300, ("z", 1): 50}


def test_bad_reference_settings_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reference_path"):
        DriftConfig(reference="parquet")
    with pytest.raises(ValueError, match="before reference_end"):
        DriftConfig(reference="time_range", reference_start="20", reference_end="10")
    with pytest.raises(ValueError, match="not a time"):
        DriftConfig(reference="time_range", reference_start="yesterday", reference_end="10")
    with pytest.raises(ValueError, match="does not exist"):
        ParquetReference(DriftConfig(reference="parquet", reference_path=str(tmp_path / "no")),
                         FEATURES)
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(ValueError, match="not readable Parquet"):
        ParquetReference(DriftConfig(reference="parquet", reference_path=str(bad)), FEATURES)


@pytest.mark.parametrize("name", ["first_n", "time_range", "parquet", "parquet-sketch"])
def test_references_checkpoint_exactly_once(tmp_path: Path, name: str) -> None:
    settings: dict = {
        "first_n": {"reference": "first_n", "reference_records": 40},
        "time_range": {"reference": "time_range", "reference_start": str(T0_MS / 1000 + 0.05),
                       "reference_end": str(T0_MS / 1000 + 0.2)},
        "parquet": {"reference": "parquet"},
        "parquet-sketch": {"reference": "parquet", "mode": "sketch"},
    }[name]
    if settings["reference"] == "parquet":
        path = write_reference(tmp_path / "ref.parquet", None, mean=np.log(200))
        settings["reference_path"] = str(path)
        settings["features"] = {"llm": FEATURES["llm"], "tools": []}
    cfg = DriftConfig(window_size=30, **settings)
    stream = messages(3, 800)
    expected = uninterrupted(cfg, stream, 33)
    assert len(expected) > 10 and any(r.dataset_drift for r in expected.values())
    got, kills = with_kills(cfg, stream, 33, 4)
    assert kills >= 2 and got == expected
