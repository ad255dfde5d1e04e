"""The embedding drift methods against the real Evidently and NannyML, their false-alarm
rates, hostile inputs, and the evidence a drifted window carries."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from observer.drift.embedding.classifier import bootstrap_threshold, domain_split, score_model
from observer.drift.embedding.distance import score_cosine, score_distance
from observer.drift.embedding.evidence import explain
from observer.drift.embedding.methods import DEFAULT_METHOD, EMBEDDING_METHODS
from observer.drift.embedding.mmd import score_mmd, score_mmd_permutation
from observer.drift.embedding.ratio import score_ratio
from observer.drift.embedding.reconstruction import score_reconstruction

# Evidently is in the test extra (the reports extra): a missing one fails, never skips.
evidently_methods = importlib.import_module(
    "evidently.legacy.metrics.data_drift.embedding_drift_methods"
)

OURS = ("model", "mmd", "mmd_permutation", "ratio", "distance", "cosine", "reconstruction",
        "reconstruction_cv")


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def random_pair(seed: int, m: int, n: int, d: int, shift: float = 0.0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(m, d)), rng.normal(shift, 1.0, size=(n, d))


def topic_pair(seed: int, m: int, n: int, d: int = 64, novel: float = 0.3):
    """Structured data: L2-normalised vectors around topic centres; the current window has a
    ``novel`` share of a topic the reference lacks."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(5, d))
    ref = unit_rows(centres[rng.integers(0, 4, m)] + rng.normal(size=(m, d)))
    k = int(n * novel)
    cur = unit_rows(np.vstack([centres[rng.integers(0, 4, n - k)], np.repeat(centres[4:], k, 0)])
                    + rng.normal(size=(n, d)))
    return ref, cur


def frames(ref: np.ndarray, cur: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Fresh DataFrames per call: Evidently's model method adds a column to its inputs."""
    cols = [f"e{i}" for i in range(ref.shape[1])]
    return pd.DataFrame(ref, columns=cols), pd.DataFrame(cur, columns=cols)


PAIRS = {
    "random_small": lambda: random_pair(1, 300, 200, 16),
    "random_shifted": lambda: random_pair(2, 400, 300, 16, shift=0.15),
    "random_large": lambda: random_pair(3, 1500, 1200, 32, shift=0.05),
    "topics": lambda: topic_pair(4, 600, 400),
    "topics_large": lambda: topic_pair(5, 1300, 1100, d=48, novel=0.1),
}


def evidently_call(method, ref: np.ndarray, cur: np.ndarray):
    ref_df, cur_df = frames(ref, cur)
    return method(cur_df, ref_df)  # Evidently's order: current first


@pytest.mark.parametrize("pair", PAIRS)
def test_model_matches_evidently(pair: str) -> None:
    ref, cur = PAIRS[pair]()
    ours = score_model(ref, cur, None)
    # Evidently's EmbeddingsDriftMetric default: model(bootstrap=reference rows < 1000)
    theirs = evidently_call(evidently_methods.model(bootstrap=len(ref) < 1000), ref, cur)
    assert ours.statistic == pytest.approx(theirs[0], abs=1e-6)
    assert ours.drifted == theirs[1]
    assert ours.statistics["bootstrap"] == float(len(ref) < 1000)
    fixed = evidently_call(evidently_methods.model(threshold=0.6), ref, cur)
    assert score_model(ref, cur, 0.6).drifted == fixed[1]


def test_model_bootstrap_threshold_is_evidentlys() -> None:
    ref, cur = random_pair(6, 500, 300, 8)
    y_test = domain_split(ref, cur).y[domain_split(ref, cur).test]
    state = np.random.get_state()
    aucs = [evidently_methods.calc_roc_auc_random(y_test, i) for i in range(100)]
    theirs = np.percentile(aucs, 95)
    np.random.set_state(state)
    before = np.random.get_state()[1].copy()
    assert bootstrap_threshold(y_test) == pytest.approx(theirs, abs=1e-12)
    assert score_model(ref, cur, None).threshold == pytest.approx(theirs, abs=1e-12)
    # our bootstrap leaves NumPy's global generator alone (Evidently's reseeds it)
    assert np.array_equal(np.random.get_state()[1], before)


@pytest.mark.parametrize("pair", PAIRS)
def test_mmd_matches_evidently(pair: str) -> None:
    ref, cur = PAIRS[pair]()
    ours = score_mmd(ref, cur, None)
    theirs = evidently_call(evidently_methods.mmd(), ref, cur)
    assert ours.statistic == pytest.approx(theirs[0], abs=1e-6)
    assert ours.drifted == theirs[1]


@pytest.mark.parametrize("pair", PAIRS)
def test_ratio_matches_evidently(pair: str) -> None:
    ref, cur = PAIRS[pair]()
    ours, theirs = score_ratio(ref, cur, None), evidently_call(evidently_methods.ratio(), ref, cur)
    assert ours.statistic == pytest.approx(theirs[0], abs=1e-6)
    assert ours.drifted == theirs[1]


@pytest.mark.parametrize("pair", PAIRS)
@pytest.mark.parametrize("dist, scorer", [("euclidean", score_distance), ("cosine", score_cosine)])
def test_distance_matches_evidently(pair: str, dist: str, scorer: Callable) -> None:
    ref, cur = PAIRS[pair]()
    ref = ref + 0.2  # cosine needs mean vectors away from the origin
    cur = cur + 0.2
    ours = scorer(ref, cur, None)
    theirs = evidently_call(evidently_methods.distance(dist=dist), ref, cur)
    assert ours.statistic == pytest.approx(theirs[0], abs=1e-6)
    assert ours.drifted == theirs[1]


@pytest.mark.parametrize(
    "name, rows, dims",
    [("model", 1200, 64), ("mmd_permutation", 1200, 64), ("distance", 1200, 64),
     # reconstruction's reference errors are in-sample (NannyML's rule), so it needs many
     # reference rows per dimension before a same-distribution window stays inside its band
     ("reconstruction", 6000, 16)],
)
def test_the_methods_see_a_planted_topic_and_not_a_resample(
    name: str, rows: int, dims: int
) -> None:
    method = EMBEDDING_METHODS[name]
    ref, cur = topic_pair(7, rows, 600, d=dims, novel=0.3)
    assert method.score(ref, cur, None).drifted
    same_ref, same_cur = topic_pair(7, rows, 600, d=dims, novel=0.0)
    assert not method.score(same_ref, same_cur, None).drifted


def test_mmd_permutation_holds_its_false_alarm_rate_where_evidentlys_bootstrap_does_not() -> None:
    # the same distribution on both sides of every window
    pairs = [random_pair(100 + seed, 120, 60, 6) for seed in range(40)]
    ours = sum(score_mmd_permutation(ref, cur, None).drifted for ref, cur in pairs)
    # a 5 % test: 2 of 40 expected (1000 windows measured: 50 alarms); 7 or more has a
    # chance of about 1 % at the nominal rate
    assert ours <= 6
    bootstrap = evidently_methods.mmd(bootstrap=True)
    theirs = sum(bool(evidently_call(bootstrap, ref, cur)[1]) for ref, cur in pairs[:20])
    # Evidently's 5th-percentile rule flags most windows
    assert theirs >= 10


def test_mmd_permutation_reports_a_p_value_and_its_quantile() -> None:
    ref, cur = random_pair(8, 200, 150, 8, shift=0.4)
    found = score_mmd_permutation(ref, cur, None)
    assert found.drifted and found.statistics["p_value"] < 0.05
    assert found.statistic > found.threshold > 0
    looser = score_mmd_permutation(ref, cur, 0.5)
    assert looser.threshold < found.threshold
    with pytest.raises(ValueError, match="quantile in"):
        score_mmd_permutation(ref, cur, 1.5)


@pytest.fixture(scope="module")
def nannyml():
    # flaml (imported by NannyML's domain classifier) imports pyspark.pandas when it can,
    # which starts a JVM: hide pyspark for the import (nothing here uses Spark).
    hidden = "pyspark" not in sys.modules
    if hidden:
        sys.modules["pyspark"] = None  # type: ignore[assignment]
    # NannyML reports usage to an analytics service unless told not to (no network in CI).
    os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")
    try:
        return importlib.import_module("nannyml")  # in the test extra: a missing one fails
    finally:
        if hidden:
            del sys.modules["pyspark"]


# NannyML's own warnings: its dataset loader's importlib.resources call, and "too few chunks"
# on the small inputs these tests use on purpose
nannyml_noise = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning:nannyml.*", "ignore:The resulting number of chunks:UserWarning"
)


def nannyml_chunks(nml, reference: pd.DataFrame, analysis: pd.DataFrame, columns, size: int):
    calc = nml.DataReconstructionDriftCalculator(column_names=columns, chunk_size=size)
    calc.fit(reference)
    result = calc.calculate(analysis).filter(period="analysis").to_df()
    return result["reconstruction_error"]


def assert_matches_nannyml(nml, reference: pd.DataFrame, analysis: pd.DataFrame, columns, size):
    theirs = nannyml_chunks(nml, reference, analysis, columns, size)
    ref = reference[columns].to_numpy(dtype=float)
    cur = analysis[columns].to_numpy(dtype=float)
    alerts = []
    for i, start in enumerate(range(0, len(cur), size)):
        ours = score_reconstruction(ref, cur[start:start + size], None)
        assert ours.statistic == pytest.approx(theirs["value"][i], abs=1e-6)
        assert ours.threshold == pytest.approx(theirs["upper_threshold"][i], abs=1e-6)
        lower = theirs["lower_threshold"][i]
        if lower is None or pd.isna(lower):
            assert "lower_threshold" not in ours.statistics
        else:
            assert ours.statistics["lower_threshold"] == pytest.approx(lower, abs=1e-6)
        assert ours.drifted == bool(theirs["alert"][i])
        alerts.append(ours.drifted)
    return alerts


@nannyml_noise
def test_reconstruction_matches_nannyml_on_its_car_loan_dataset(nannyml) -> None:
    reference, analysis, _ = nannyml.load_synthetic_car_loan_dataset()
    columns = ["car_value", "debt_to_income_ratio", "loan_length", "driver_tenure"]
    alerts = assert_matches_nannyml(nannyml, reference.iloc[:20000], analysis.iloc[:20000],
                                    columns, 2000)
    # the shipped analysis set drifts in its second half: both verdicts occur
    assert any(alerts) and not all(alerts)


@nannyml_noise
def test_reconstruction_matches_nannyml_with_missing_values_and_a_partial_chunk(nannyml) -> None:
    reference, analysis, _ = nannyml.load_synthetic_car_loan_dataset()
    columns = ["car_value", "debt_to_income_ratio", "loan_length", "driver_tenure", "y_pred_proba"]
    rng = np.random.default_rng(9)
    reference, analysis = reference.iloc[:7300].copy(), analysis.iloc[:3000].copy()
    for frame in (reference, analysis):
        for col in columns[:3]:
            frame.loc[rng.random(len(frame)) < 0.05, col] = np.nan
    # 7300 reference rows in chunks of 1000: NannyML keeps the 300-row last chunk; so do we
    assert_matches_nannyml(nannyml, reference, analysis, columns, 1000)


@nannyml_noise
def test_reconstruction_matches_nannyml_on_embedding_vectors(nannyml) -> None:
    ref, cur = topic_pair(10, 3000, 1500, d=24, novel=0.2)
    columns = [f"e{i}" for i in range(ref.shape[1])]
    reference, analysis = frames(ref, cur)
    assert_matches_nannyml(nannyml, reference, analysis, columns, 300)


def test_cross_fitted_reconstruction_stays_quiet_where_nannymls_in_sample_rule_alarms() -> None:
    # 64-dimensional vectors, 1200 reference rows, 200-row windows of the same distribution
    same_ref, same_cur = topic_pair(16, 1200, 200, d=64, novel=0.0)
    nannyml_rule = score_reconstruction(same_ref, same_cur, None)
    assert nannyml_rule.drifted  # in-sample reference errors: the band sits too low
    quiet = EMBEDDING_METHODS["reconstruction_cv"].score(same_ref, same_cur, None)
    assert not quiet.drifted
    assert abs(quiet.statistic - quiet.statistics["reference_mean"]) < 3 * quiet.statistics[
        "reference_std"]
    ref, cur = topic_pair(16, 1200, 200, d=64, novel=0.3)
    assert EMBEDDING_METHODS["reconstruction_cv"].score(ref, cur, None).drifted


@pytest.mark.parametrize("name", OURS)
def test_constant_vectors_do_not_drift(name: str) -> None:
    found = EMBEDDING_METHODS[name].score(np.ones((300, 4)), np.ones((100, 4)), None)
    assert not found.drifted and np.isfinite(found.statistic)


def test_reconstruction_needs_two_reference_chunks() -> None:
    ref, cur = random_pair(11, 300, 200, 4)
    with pytest.raises(ValueError, match="reference has 300 rows; this method needs at least 400"):
        score_reconstruction(ref, cur, None)


@pytest.mark.parametrize("name", OURS)
def test_the_table_defaults_are_what_the_methods_use(name: str) -> None:
    method = EMBEDDING_METHODS[name]
    assert method.name == name and method.description and method.rule
    ref, cur = random_pair(12, 1200, 300, 6)
    ref, cur = ref + 1.0, cur + 1.0  # mean vectors with a direction, for cosine
    default = method.score(ref, cur, None)
    explicit = method.score(ref, cur, method.default_threshold)
    assert default.statistic == explicit.statistic
    assert default.threshold == explicit.threshold  # reference >= 1000 rows: no bootstrap
    assert isinstance(default.drifted, bool) and not default.drifted
    assert DEFAULT_METHOD == "model"


HOSTILE = {
    "nan": (lambda r, c: (r, np.where(np.arange(c.size).reshape(c.shape) == 3, np.nan, c)),
            "non-finite"),
    "inf": (lambda r, c: (np.where(np.arange(r.size).reshape(r.shape) == 5, np.inf, r), c),
            "infinite|non-finite"),
    "one_d": (lambda r, c: (r[:, 0], c), "must be 2-D"),
    "dimensions": (lambda r, c: (r, c[:, :3]), "reference has 4 dimensions but current has 3"),
    "text": (lambda r, c: (r, [["a", "b", "c", "d"]] * 40), "not a numeric matrix"),
    "empty": (lambda r, c: (r, c[:0]), "current has 0 rows"),
    "huge": (lambda r, c: (r, c * 1e300), "current holds values beyond"),
}


@pytest.mark.parametrize(
    "name, case",
    # reconstruction imputes NaN (NannyML's rule; the NannyML tests cover it)
    [(n, c) for n in OURS for c in HOSTILE if not (n.startswith("reconstruction") and c == "nan")],
)
def test_hostile_input_is_a_clear_error(name: str, case: str) -> None:
    make, message = HOSTILE[case]
    ref, cur = make(*random_pair(13, 200, 40, 4))
    with pytest.raises(ValueError, match=message):
        EMBEDDING_METHODS[name].score(ref, cur, None)


def test_explain_names_the_planted_rows_and_their_cluster() -> None:
    ref, cur = topic_pair(14, 800, 400, novel=0.25)
    planted = set(range(300, 400))  # topic_pair appends the novel topic last
    found = explain(ref, cur, top=10, max_clusters=3)
    assert len(found.unlike) == 10
    assert sum(i in planted for i, _ in found.unlike) >= 9
    scores = [s for _, s in found.unlike]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert len(found.novel_clusters) >= 1
    best = found.novel_clusters[0]
    assert best.share_current == pytest.approx(len(best.members) / len(cur))
    assert best.share_reference < 0.02 and best.share_current >= 0.2
    assert len(planted & set(best.members)) >= 0.9 * len(planted)
    assert list(best.member_scores) == sorted(best.member_scores, reverse=True)


@pytest.mark.parametrize("seed", range(5))
def test_explain_finds_no_novel_cluster_in_a_same_distribution_window(seed: int) -> None:
    ref, cur = topic_pair(20 + seed, 800, 400, novel=0.0)
    found = explain(ref, cur, top=3)
    assert found.novel_clusters == ()
    assert len(found.unlike) == 3


def test_explain_limits_and_errors() -> None:
    ref, cur = topic_pair(15, 400, 200, novel=0.3)
    assert explain(ref, cur, top=0, max_clusters=0).unlike == ()
    assert explain(ref, cur, top=0, max_clusters=0).novel_clusters == ()
    with pytest.raises(ValueError, match="top and max_clusters"):
        explain(ref, cur, top=-1)
    with pytest.raises(ValueError, match="current has 2 rows"):
        explain(ref, cur[:2])
