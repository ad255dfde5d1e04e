"""Sketch mode against exact mode: the exact statistic always lies within the sketch's error
bound, so verdicts agree except within that bound of the threshold; sketches merge,
checkpoint and restore exactly; the memory budget picks exact or sketch per segment."""

from __future__ import annotations

import numpy as np
import pytest

from observer.drift.engine import DriftEngine
from observer.drift.sketch import (
    CategoricalSketch,
    NumericSketch,
    StateBudget,
    sketch_from_json,
    sketch_of,
    sketch_to_json,
)
from observer.drift.sketch_scoring import score_sketch, sturges_edges
from observer.drift.stats import METHODS
from observer.core.bus import Message
from observer.drift.config import FeatureSpec
from observer.core.records import LLMCall, decode, encode
from tests.drift_support import TOPICS, first_window_config, messages, uninterrupted, with_kills

NUMERIC_METHODS = ("wasserstein", "psi", "jensenshannon", "ks")


def numeric_cases(seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(200, 4000)), int(rng.integers(200, 4000))
    shift = float(rng.choice([0.0, 0.03, 0.08, 0.15, 0.3]))
    return [
        ("lognormal tokens", rng.lognormal(5, 0.6, n).round(), rng.lognormal(5 + shift, 0.6, m).round()),
        ("normal around 0", rng.normal(0, 1, n), rng.normal(shift, 1, m)),
        ("latency ms", rng.gamma(2, 400, n), rng.gamma(2, 400 * (1 + shift), m)),
        ("zeros and spikes", np.concatenate([np.zeros(n // 3), rng.exponential(50, n - n // 3)]),
         np.concatenate([np.zeros(m // 4), rng.exponential(50 * (1 + shift), m - m // 4)])),
        ("wide range", 10 ** rng.uniform(-3, 6, n), 10 ** rng.uniform(-3 + shift, 6, m)),
    ]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("method", NUMERIC_METHODS)
def test_exact_numeric_statistic_lies_within_the_bound(seed: int, method: str) -> None:
    spec = METHODS[method]
    for name, ref, cur in numeric_cases(seed):
        exact = spec.statistic(ref, cur, "numeric")
        got = score_sketch("numeric", sketch_of(ref, "numeric"), sketch_of(cur, "numeric"), method)
        assert got.statistic is not None and got.error_bound >= 0
        assert abs(got.statistic - exact) <= got.error_bound + 1e-9 * max(1.0, abs(exact)), (
            name, exact, got)
        # The documented guarantee: outside the bound, the sketch's verdict is exact mode's.
        threshold = spec.default_threshold
        if abs(got.statistic - threshold) > got.error_bound:
            assert got.drifted == spec.drifted(exact, threshold), (name, exact, got)


def test_bounds_are_useful_at_the_default_accuracy() -> None:
    # Not just true but tight enough to decide: on 1000 vs 1000 log-normal values shifted by
    # 0.3 the whole interval lies above the 0.1 threshold.
    rng = np.random.default_rng(7)
    ref, cur = rng.lognormal(5, 0.6, 1000), rng.lognormal(5.3, 0.6, 1000)
    for method in ("psi", "jensenshannon", "wasserstein"):
        got = score_sketch("numeric", sketch_of(ref, "numeric"), sketch_of(cur, "numeric"), method)
        assert got.error_bound < 0.4 * got.statistic, (method, got)
        assert got.statistic - got.error_bound > 0.1, (method, got)
        assert got.drifted and METHODS[method].drifted(METHODS[method].statistic(ref, cur, "numeric"), 0.1)


@pytest.mark.parametrize("method", ["jensenshannon", "psi", "chisquare", "ztest"])
def test_categorical_within_top_k_is_exact(method: str) -> None:
    rng = np.random.default_rng(3)
    ref = rng.choice(["stop", "length", "tool_calls", ""], 800, p=[0.6, 0.2, 0.15, 0.05])
    cur = rng.choice(["stop", "length", "tool_calls", "content_filter"], 600, p=[0.5, 0.3, 0.1, 0.1])
    if method == "ztest":
        ref, cur = ref == "stop", cur == "stop"
    exact = METHODS[method].statistic(list(ref), list(cur), "categorical")
    got = score_sketch("categorical", sketch_of(ref, "categorical"), sketch_of(cur, "categorical"),
                       method)
    assert got.error_bound == 0.0
    assert got.statistic == pytest.approx(exact, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("method", ["jensenshannon", "psi"])
def test_categorical_beyond_top_k_stays_within_the_bound(seed: int, method: str) -> None:
    rng = np.random.default_rng(seed)
    # Zipf-like tool names: far more categories than the sketch tracks.
    names = np.array([f"tool{i}" for i in range(300)])
    p_ref = 1 / np.arange(1, 301) ** 1.2
    p_cur = np.roll(p_ref, int(rng.integers(0, 4)))
    ref = rng.choice(names, 2000, p=p_ref / p_ref.sum())
    cur = rng.choice(names, 1500, p=p_cur / p_cur.sum())
    exact = METHODS[method].statistic(list(ref), list(cur), "categorical")
    got = score_sketch("categorical", sketch_of(ref, "categorical", top_k=16),
                       sketch_of(cur, "categorical", top_k=16), method)
    assert got.error_bound > 0
    assert abs(got.statistic - exact) <= got.error_bound + 1e-9


def test_few_valued_numeric_features_are_exact() -> None:
    ref, cur = [0, 1, 1, 2, 2, 2, 3] * 50, [0, 1, 2, 2, 3, 3, 3] * 40
    for method in ("psi", "jensenshannon", "chisquare", "ks", "wasserstein"):
        got = score_sketch("numeric", sketch_of(ref, "numeric"), sketch_of(cur, "numeric"), method)
        assert got.error_bound == 0.0
        assert got.statistic == pytest.approx(METHODS[method].statistic(ref, cur, "numeric"))


def test_an_empty_side_gives_no_statistic() -> None:
    got = score_sketch("numeric", sketch_of([None, float("nan")], "numeric"),
                       sketch_of([1.0], "numeric"), "psi")
    assert got.statistic is None and not got.drifted


def test_merged_sketches_equal_the_sketch_of_everything() -> None:
    rng = np.random.default_rng(5)
    parts = [rng.normal(100, 30, 700), -rng.exponential(3, 300), np.zeros(20)]
    whole = sketch_of(np.concatenate(parts), "numeric")
    merged = NumericSketch()
    for p in parts:
        merged.merge(sketch_of(p, "numeric"))
    assert merged.n == whole.n and (merged.min, merged.max) == (whole.min, whole.max)
    assert merged.std == pytest.approx(whole.std, rel=1e-12)
    for a, b in zip(merged.buckets(), whole.buckets()):
        assert np.array_equal(a, b)
    cats = CategoricalSketch(top_k=2)
    cats.merge(sketch_of(["a", "b", "a"], "categorical"))
    cats.merge(sketch_of(["c", "a"], "categorical"))
    assert (cats.counts, cats.other, cats.n) == ({"a": 3, "b": 1}, 1, 5)


def test_sketches_round_trip_through_json() -> None:
    rng = np.random.default_rng(6)
    for sketch in (sketch_of(rng.normal(0, 5, 500), "numeric"),
                   sketch_of([1, 2, 2], "numeric"),
                   sketch_of(["x", "", 3, True], "categorical", top_k=3)):
        back = sketch_from_json(sketch_to_json(sketch))
        assert sketch_to_json(back) == sketch_to_json(sketch)


def test_sturges_edges_match_numpy() -> None:
    rng = np.random.default_rng(8)
    for n in (1, 2, 7, 1000, 12345):
        data = rng.lognormal(3, 1, n)
        assert np.array_equal(sturges_edges(n, data.min(), data.max()),
                              np.histogram_bin_edges(data, bins="sturges"))
    assert np.array_equal(sturges_edges(5, 2.0, 2.0),
                          np.histogram_bin_edges(np.full(5, 2.0), bins="sturges"))


def test_bad_sketch_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="relative accuracy"):
        NumericSketch(0.7)
    with pytest.raises(ValueError, match="top_k"):
        CategoricalSketch(0)
    with pytest.raises(ValueError, match="cannot merge"):
        NumericSketch(0.01).merge(NumericSketch(0.02))
    with pytest.raises(ValueError, match="unknown drift mode"):
        StateBudget("fast", 1.0)


# --- the engine in sketch mode -----------------------------------------------------------------


def _calls(n: int, seed: int, shift: float) -> list[Message]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        drifted = i >= n // 2
        rec = LLMCall(service="shop", model=f"m{i % 3}", trace_id=f"t{i}", span_id="s",
                      output_tokens=int(rng.lognormal(5 + (shift if drifted else 0), 0.6)),
                      input_tokens=int(rng.lognormal(6, 0.4)),
                      latency_ms=float(rng.gamma(2, 300)),
                      finish_reason=str(rng.choice(["stop", "length"], p=[0.85, 0.15])))
        out.append(Message(TOPICS.llm, 0, i, None, encode(rec), 1_700_000_000_000 + i))
    return out


@pytest.mark.parametrize("shift", [0.0, 0.1, 0.4])
def test_engine_sketch_verdicts_agree_with_exact_mode_outside_the_bound(shift: float) -> None:
    stream = _calls(12_000, 11, shift)
    results = {}
    for mode in ("exact", "sketch"):
        for method in ("psi", "wasserstein"):
            cfg = first_window_config(window_size=500, mode=mode, numeric_method=method)
            engine = DriftEngine(cfg, TOPICS)
            out = [decode(o.value) for o in engine.process(stream) if o.topic == TOPICS.drift]
            results[mode, method] = {(r.segment_key, r.window_index): r for r in out}
    for method in ("psi", "wasserstein"):
        exact, sketch = results["exact", method], results["sketch", method]
        assert exact.keys() == sketch.keys() and len(exact) == 3 * 7
        decided = 0
        for key, r in sketch.items():
            for f, e in zip(r.features, exact[key].features):
                if e.statistic is None:  # a default feature these calls do not carry
                    assert f.statistic is None
                    continue
                assert e.error_bound is None and f.error_bound is not None
                assert f.method == e.method
                assert abs(f.statistic - e.statistic) <= f.error_bound + 1e-9
                if abs(f.statistic - f.threshold) > f.error_bound:
                    decided += 1
                    assert f.drifted == e.drifted, (key, f, e)
        # Most verdicts are decided outright (the threshold is outside the bound).
        assert decided >= 0.6 * 4 * len(sketch)


def test_auto_mode_sketches_segments_beyond_the_budget() -> None:
    features = {"llm": [FeatureSpec(name="output_tokens", kind="numeric")]}
    # Room for two segments' raw values (1 feature x 2 windows x 100 records x 40 bytes each).
    cfg = first_window_config(window_size=100, mode="auto", exact_budget_mb=2 * 2 * 100 * 40 / 1e6,
                      features=features)
    engine = DriftEngine(cfg, TOPICS)
    rng = np.random.default_rng(2)
    batch = [Message(TOPICS.llm, 0, i, None, encode(LLMCall(
        service="s", model=f"m{i % 5}", trace_id="t", span_id="s",
        output_tokens=int(rng.lognormal(5, 0.6)))), 0) for i in range(5 * 200)]
    out = [decode(o.value) for o in engine.process(batch) if o.topic == TOPICS.drift]
    bounds = {r.segment["model"]: r.features[0].error_bound for r in out}
    assert sorted(m for m, b in bounds.items() if b is None) == ["m0", "m1"]
    assert all(bounds[m] is not None for m in ("m2", "m3", "m4"))


@pytest.mark.parametrize("seed", range(4))
def test_sketch_mode_checkpoints_exactly_once(seed: int) -> None:
    cfg = first_window_config(window_size=60, mode="sketch", sketch_top_k=8)
    stream = messages(seed, 900)
    expected = uninterrupted(cfg, stream, 45)
    assert any(f.error_bound for r in expected.values() for f in r.features)
    got, kills = with_kills(cfg, stream, 45, seed)
    assert kills >= 2 and got == expected
