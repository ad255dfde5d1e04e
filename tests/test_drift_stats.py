"""Drift statistics: the published test vector, SciPy, and Evidently 0.7.23's own stattests.

Evidently is an optional test dependency (``evidently==0.7.23``); without it the comparison
tests are skipped and the SciPy and hand-computed ones still run.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial import distance

from observer.drift.stats import (
    MAX_CATEGORY_VALUES,
    METHODS,
    STATISTICS,
    binned_shares,
    chisquare,
    choose_method,
    clean,
    fill_zero_shares,
    jensenshannon,
    jensenshannon_of_shares,
    ks,
    prepare,
    psi,
    psi_of_shares,
    sturges_edges,
    wasserstein_norm,
    ztest,
)

REL = 1e-6


def close(a: float | None, b: float) -> bool:
    return a is not None and math.isclose(a, b, rel_tol=REL, abs_tol=1e-12)


# --- the test vector and hand computations ---------------------------------------------------


def test_reference_vector_on_shares() -> None:
    r, c = np.array([0.5, 0.5]), np.array([0.6, 0.4])
    assert round(psi_of_shares(r, c), 7) == 0.0405465
    assert round(jensenshannon_of_shares(r, c), 7) == 0.0711294
    assert close(psi_of_shares(r, c), 0.1 * math.log(0.5 / 0.6) * -1 + 0.1 * math.log(0.5 / 0.4))


def test_reference_vector_on_samples() -> None:
    ref = ["a"] * 5 + ["b"] * 5
    cur = ["a"] * 6 + ["b"] * 4
    assert round(psi(ref, cur, "categorical"), 7) == 0.0405465
    assert round(jensenshannon(ref, cur, "categorical"), 7) == 0.0711294
    # A numeric column with few values is counted per value, exactly like categories.
    assert round(psi([1] * 5 + [2] * 5, [1] * 6 + [2] * 4, "numeric"), 7) == 0.0405465


def test_psi_fills_zero_shares_by_hand() -> None:
    # ref {a: .5, b: .5, c: 0 -> 1e-4}; cur {a: 0 -> 1e-4, b: .5, c: .5}
    expected = (0.5 - 1e-4) * math.log(0.5 / 1e-4) + 0.0 + (1e-4 - 0.5) * math.log(1e-4 / 0.5)
    assert close(psi(["a", "b"], ["b", "c"], "categorical"), expected)


def test_psi_tiny_share_rule() -> None:
    # The smallest non-zero reference share is 1/20001 <= 1e-4: zeros become it / 1e6.
    ref = ["a"] * 20000 + ["b"]
    r, c = binned_shares(clean(ref, "categorical"), clean(["a", "c"], "categorical"), "categorical")
    filled = fill_zero_shares(r)
    assert filled[2] == pytest.approx((1 / 20001) / 1e6, rel=1e-12)
    assert fill_zero_shares(c)[1] == 1e-4  # current: smallest non-zero is 0.5
    assert filled.sum() > 1  # no renormalisation


def test_identical_columns_score_zero() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=400)
    assert psi(x, x) == 0.0
    assert jensenshannon(x, x, "numeric") == 0.0
    assert wasserstein_norm(x, x) == 0.0


def test_cleaning_drops_missing_and_infinite() -> None:
    assert clean([1, None, math.nan, math.inf, -math.inf, 2], "numeric").tolist() == [1.0, 2.0]
    assert clean(["", None, math.nan, "x"], "categorical").tolist() == ["", "x"]
    assert wasserstein_norm([1.0, None, math.inf, 3.0], [2.0, math.nan]) == pytest.approx(
        stats.wasserstein_distance([1.0, 3.0], [2.0]) / 1.0
    )
    with pytest.raises(ValueError):
        clean([1], "ordinal")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(STATISTICS))
@pytest.mark.parametrize(
    "ref, cur", [([], [1.0]), ([1.0], []), ([None, math.nan], [1.0]), ([1.0], [math.inf])]
)
def test_an_empty_side_gives_no_verdict(name: str, ref: list[Any], cur: list[Any]) -> None:
    assert STATISTICS[name](ref, cur, "numeric") is None


def test_wasserstein_is_numeric_only() -> None:
    with pytest.raises(ValueError):
        wasserstein_norm(["a"], ["b"], "categorical")


def test_constant_reference_uses_the_norm_floor() -> None:
    assert close(wasserstein_norm([5.0] * 10, [5.5] * 10), 0.5 / 0.001)


# --- against SciPy and NumPy directly --------------------------------------------------------


def test_binning_follows_sturges_on_the_combined_sample() -> None:
    rng = np.random.default_rng(11)
    ref, cur = rng.normal(0, 1, 700), rng.normal(0.3, 1.2, 300)
    edges = np.histogram_bin_edges(np.concatenate([ref, cur]), bins="sturges")
    r, c = binned_shares(ref, cur, "numeric")
    assert len(r) == len(edges) - 1 == math.ceil(math.log2(1000)) + 1
    assert np.array_equal(r, np.histogram(ref, edges)[0] / 700)
    assert np.array_equal(c, np.histogram(cur, edges)[0] / 300)


def test_binning_threshold_is_reference_unique_values() -> None:
    ref20 = np.arange(MAX_CATEGORY_VALUES, dtype=float)
    ref21 = np.arange(MAX_CATEGORY_VALUES + 1, dtype=float)
    cur = np.arange(100, dtype=float)  # many values in current do not switch to bins
    assert len(binned_shares(ref20, cur, "numeric")[0]) == 100
    assert len(binned_shares(ref21, cur, "numeric")[0]) == math.ceil(math.log2(121)) + 1
    strings = np.array([str(i) for i in range(50)], dtype=object)
    assert len(binned_shares(strings, strings, "categorical")[0]) == 50


@pytest.mark.parametrize("seed", range(5))
def test_against_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ref = rng.lognormal(5, 0.6, 500)
    cur = rng.lognormal(5.1, 0.7, 450)
    r, c = binned_shares(ref, cur, "numeric")
    assert close(jensenshannon(ref, cur, "numeric"), float(distance.jensenshannon(r, c)))
    assert close(
        wasserstein_norm(ref, cur), stats.wasserstein_distance(ref, cur) / np.std(ref, ddof=0)
    )
    rf, cf = fill_zero_shares(r), fill_zero_shares(c)
    assert close(psi(ref, cur), float(np.sum((rf - cf) * np.log(rf / cf))))


# --- against Evidently 0.7.23 ---------------------------------------------------------------


@pytest.fixture(scope="module")
def evidently() -> Any:
    os.environ.setdefault("DO_NOT_TRACK", "1")  # Evidently's usage telemetry off
    st = pytest.importorskip("evidently.legacy.calculations.stattests")
    core = pytest.importorskip("evidently.legacy.core")
    return st, core.ColumnType


def evidently_column(values: list[Any] | np.ndarray) -> pd.Series:
    """What Evidently's data_drift passes to a stattest: inf -> NaN, NaN dropped."""
    return pd.Series(list(values)).replace([-np.inf, np.inf], np.nan).dropna()


def _cases() -> list[tuple[str, Any, Any, str]]:
    rng = np.random.default_rng(2024)
    cats = ["stop", "length", "tool_calls", "content_filter"]
    cases: list[tuple[str, Any, Any, str]] = [
        ("normal shift", rng.normal(0, 1, 1000), rng.normal(0.4, 1.1, 800), "numeric"),
        (
            "lognormal outliers",
            rng.lognormal(6, 0.5, 600),
            np.r_[rng.lognormal(6, 0.5, 590), [1e6] * 10],
            "numeric",
        ),
        ("token counts", rng.poisson(300, 500), rng.poisson(320, 500), "numeric"),
        ("few values", rng.poisson(2, 500), rng.poisson(3, 500), "numeric"),
        ("20 unique", np.arange(20).repeat(5), np.arange(25).repeat(4), "numeric"),
        ("21 unique", np.arange(21).repeat(5), np.arange(25).repeat(4), "numeric"),
        ("constant same", [7.0] * 50, [7.0] * 60, "numeric"),
        ("constant moved", [7.0] * 50, [9.0] * 60, "numeric"),
        ("binned vs constant", rng.normal(0, 1, 200), [50.0] * 30, "numeric"),
        (
            "dirty numeric",
            [1.0, None, np.inf, 2.0, 3.0, np.nan, -np.inf, 2.0],
            [2.0, 2.0, None, 3.0],
            "numeric",
        ),
        ("tiny windows", [1.0], [2.0], "numeric"),
        ("two vs three", [1.0, 5.0], [1.0, 2.0, 3.0], "numeric"),
        (
            "categorical mix",
            rng.choice(cats, 900, p=[0.7, 0.2, 0.08, 0.02]),
            rng.choice(cats, 700, p=[0.5, 0.3, 0.15, 0.05]),
            "categorical",
        ),
        ("one category", ["stop"] * 40, ["stop"] * 70, "categorical"),
        (
            "unseen category",
            ["stop"] * 40 + ["length"] * 10,
            ["stop"] * 40 + ["length"] * 5 + ["content_filter"] * 5,
            "categorical",
        ),
        ("vanished category", ["stop"] * 40 + ["length"] * 10, ["stop"] * 30, "categorical"),
        ("disjoint", ["a"] * 10, ["b"] * 10, "categorical"),
        ("tiny share", ["a"] * 20000 + ["b"], ["a"] * 100 + ["c"], "categorical"),
        (
            "empty string category",
            ["stop"] * 30 + [""] * 10,
            ["stop"] * 10 + [""] * 30 + [None],
            "categorical",
        ),
        ("tiny categorical", ["x"], ["y"], "categorical"),
    ]
    for seed in range(8):
        r = np.random.default_rng(seed)
        n_ref, n_cur = int(r.integers(30, 3000)), int(r.integers(30, 3000))
        cases.append(
            (
                f"random numeric {seed}",
                r.gamma(2, 50, n_ref),
                r.gamma(2, 50 + 10 * seed, n_cur),
                "numeric",
            )
        )
        cases.append(
            (
                f"random categorical {seed}",
                r.choice(cats[: 2 + seed % 3], n_ref),
                r.choice(cats, n_cur),
                "categorical",
            )
        )
    return cases


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_evidently(evidently: Any, case: tuple[str, Any, Any, str]) -> None:
    st, column_type = evidently
    _, ref, cur, kind = case
    ctype = column_type.Numerical if kind == "numeric" else column_type.Categorical
    ev_ref, ev_cur = evidently_column(ref), evidently_column(cur)
    if kind == "numeric":
        ev_ref, ev_cur = ev_ref.astype(float), ev_cur.astype(float)

    expected_psi = float(st.psi_stat_test(ev_ref, ev_cur, ctype, None).drift_score)
    expected_js = float(st.jensenshannon_stat_test(ev_ref, ev_cur, ctype, None).drift_score)
    assert close(psi(ref, cur, kind), expected_psi), (psi(ref, cur, kind), expected_psi)
    assert close(jensenshannon(ref, cur, kind), expected_js), (
        jensenshannon(ref, cur, kind),
        expected_js,
    )
    if kind == "numeric":
        expected_w = float(st.wasserstein_stat_test(ev_ref, ev_cur, ctype, None).drift_score)
        assert close(wasserstein_norm(ref, cur), expected_w), (
            wasserstein_norm(ref, cur),
            expected_w,
        )


def test_evidently_reference_vector(evidently: Any) -> None:
    st, column_type = evidently
    ref = pd.Series(["a"] * 5 + ["b"] * 5)
    cur = pd.Series(["a"] * 6 + ["b"] * 4)
    assert (
        round(float(st.psi_stat_test(ref, cur, column_type.Categorical, None).drift_score), 7)
        == 0.0405465
    )
    assert (
        round(
            float(st.jensenshannon_stat_test(ref, cur, column_type.Categorical, None).drift_score),
            7,
        )
        == 0.0711294
    )


# --- KS, chi-square, Z-test and the automatic choice against Evidently ------------------------

EVIDENTLY_NAMES = {"ks": "ks", "chisquare": "chisquare", "z": "ztest",
                   "wasserstein": "wasserstein", "jensenshannon": "jensenshannon"}


def _evidently_inputs(case: tuple[str, Any, Any, str]) -> tuple[pd.Series, pd.Series]:
    _, ref, cur, kind = case
    ev_ref, ev_cur = evidently_column(ref), evidently_column(cur)
    if kind == "numeric":
        ev_ref, ev_cur = ev_ref.astype(float), ev_cur.astype(float)
    return ev_ref, ev_cur


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_tests_match_evidently(evidently: Any, case: tuple[str, Any, Any, str]) -> None:
    st, column_type = evidently
    _, ref, cur, kind = case
    ctype = column_type.Numerical if kind == "numeric" else column_type.Categorical
    ev_ref, ev_cur = _evidently_inputs(case)
    checks = [("chisquare", st.chi_stat_test), ("ztest", st.z_stat_test)]
    if kind == "numeric":
        checks.append(("ks", st.ks_stat_test))
    for name, ev_test in checks:
        ours = STATISTICS[name](ref, cur, kind)
        with np.errstate(divide="ignore", invalid="ignore"), _quiet():
            expected = ev_test(ev_ref, ev_cur, ctype, None)
        score = float(expected.drift_score)
        if math.isnan(score):  # chi-square over one category: we report 1.0, same verdict
            assert name == "chisquare" and ours == 1.0
        else:
            assert close(ours, score) or ours == score == 0.0, (name, ours, score)
        assert METHODS[name].drifted(ours, METHODS[name].default_threshold) == bool(
            expected.drifted
        ), name


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_automatic_choice_matches_evidently(evidently: Any, case: tuple[str, Any, Any, str]) -> None:
    from evidently.legacy.calculations.stattests.registry import get_stattest

    st, column_type = evidently
    _, ref, cur, kind = case
    ctype = column_type.Numerical if kind == "numeric" else column_type.Categorical
    ev_ref, ev_cur = _evidently_inputs(case)
    expected = get_stattest(ev_ref, ev_cur, ctype, None).name
    assert choose_method(clean(ref, kind), clean(cur, kind), kind) == EVIDENTLY_NAMES[expected]


def test_automatic_choice_switches_above_1000_reference_rows(evidently: Any) -> None:
    rng = np.random.default_rng(0)
    for n_ref, expected in ((1000, "ks"), (1001, "wasserstein")):
        ref = rng.normal(0, 1, n_ref)
        assert choose_method(ref, rng.normal(0, 1, 50), "numeric") == expected
    binary = np.array(["a", "b"] * 300, dtype=object)
    assert choose_method(binary, binary, "categorical") == "ztest"
    assert choose_method(np.r_[binary, binary], binary, "categorical") == "jensenshannon"


class _quiet:
    """SciPy warns when chi-square divides by an expected count of 0 (Evidently too)."""

    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


def test_p_value_rules_at_the_threshold() -> None:
    # Evidently: KS drifts at p <= threshold, chi-square and Z at p < threshold.
    assert METHODS["ks"].drifted(0.05, 0.05)
    assert not METHODS["chisquare"].drifted(0.05, 0.05)
    assert not METHODS["ztest"].drifted(0.05, 0.05)
    assert METHODS["psi"].drifted(0.1, 0.1) and not METHODS["psi"].drifted(None, 0.1)


def test_ztest_and_chisquare_by_hand() -> None:
    # 5 % vs 35 % errors in 100 + 100 tool calls.
    p = ztest(["ok"] * 95 + ["error"] * 5, ["ok"] * 65 + ["error"] * 35)
    p1, p2, pooled = 95 / 100, 65 / 100, 160 / 200  # "error" < "ok": "ok" is coded 1
    z = (p1 - p2) / math.sqrt(pooled * (1 - pooled) * (2 / 100))
    assert close(p, 2 * (1 - stats.norm.cdf(abs(z))))
    expected = stats.chisquare([65, 35], [95, 5])[1]
    assert close(chisquare(["ok"] * 95 + ["error"] * 5, ["ok"] * 65 + ["error"] * 35), expected)
    assert ks([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 1.0


# --- a reference prepared once (the engine's path) --------------------------------------------


def _edge_samples() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [
        rng.normal(0, 1, 1000),
        rng.lognormal(5, 2, 777),
        rng.poisson(40, 2001).astype(float),
        np.arange(-50.0, 51.0),
        np.array([3.0]),
        np.array([3.0, 3.0, 3.0]),
        np.array([-1e-300, 1e-300]),
        np.array([1e15, 1e15 + 2]),
        np.array([0.1, 0.2, 0.30000000000000004]),
    ]


@pytest.mark.parametrize("i", range(len(_edge_samples())))
def test_sturges_edges_equal_numpy(i: int) -> None:
    a = _edge_samples()[i]
    assert np.array_equal(
        sturges_edges(a.min(), a.max(), a.size), np.histogram_bin_edges(a, bins="sturges")
    )


def test_values_on_the_edges_fall_in_the_same_bins_as_numpy() -> None:
    # Integers whose Sturges edges land exactly on values: half-open bins, the last closed.
    ref = np.arange(0.0, 64.0).repeat(3)
    cur = np.r_[np.arange(0.0, 64.0, 2.0), [63.0] * 5]
    edges = np.histogram_bin_edges(np.concatenate([ref, cur]), bins="sturges")
    assert np.isin(edges, ref).sum() >= 3  # the case is real: several edges are data values
    r, c = binned_shares(prepare(ref, "numeric"), prepare(cur, "numeric"), "numeric")
    assert np.array_equal(r, np.histogram(ref, edges)[0] / len(ref))
    assert np.array_equal(c, np.histogram(cur, edges)[0] / len(cur))


def test_prepared_categorical_counts_like_clean() -> None:
    raw = np.array(["a", None, math.nan, "", "b", "a", math.inf, -math.inf, 1, 1.0], dtype=object)
    p = prepare(raw, "categorical")
    cleaned = clean(raw, "categorical").tolist()
    assert p.n == len(cleaned) == 6
    assert dict(zip(p.keys.tolist(), p.counts.tolist())) == {"a": 2, "": 1, "b": 1, 1: 2}
    assert prepare(list(raw), "categorical").counts.tolist() == p.counts.tolist()


def test_a_prepared_column_is_checked_against_the_kind() -> None:
    with pytest.raises(ValueError, match="prepared as numeric"):
        psi(prepare([1.0], "numeric"), ["a"], "categorical")


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_prepared_reference_scores_exactly_like_raw_columns(case: tuple[str, Any, Any, str]) -> None:
    _, ref, cur, kind = case
    prepared = prepare(ref, kind)
    # The same prepared reference serves several windows, each giving the raw path's value.
    for window in (cur, list(cur)[: max(1, len(cur) // 3)]):
        for method in METHODS.values():
            if kind not in method.kinds:
                continue
            assert method.statistic(prepared, window, kind) == method.statistic(ref, window, kind)
        if prepared.n and len(clean(window, kind)):
            assert choose_method(prepared, window, kind) == choose_method(
                clean(ref, kind), clean(window, kind), kind
            )


def test_config_names_every_method_the_statistics_implement() -> None:
    # The CLI and the config offer DriftMethod's names; drift.stats.METHODS implements them.
    from typing import get_args

    from observer.drift.stats import AUTO, METHODS
    from observer.drift.config import DriftMethod

    assert set(get_args(DriftMethod)) == {AUTO, *METHODS}
