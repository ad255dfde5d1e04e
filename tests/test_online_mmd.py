"""The online MMD and LSDD detectors (Cobb et al. 2022): River's protocol, exact incremental
statistics, false-alarm rates calibrated to the configured expected run time, quick detection
of a shift, and their window methods ``online_mmd`` / ``online_lsdd`` with calibration cached
per reference."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from observer.drift.config import DriftConfig
from observer.drift.embedding.methods import EMBEDDING_METHODS
from observer.drift.embedding.mmd_calibration import Thresholds, rbf, window_statistics
from observer.drift.embedding.online_lsdd import CENTRES, LAMBDA, OnlineLSDD, calibrate_lsdd
from observer.drift.embedding.online_mmd import OnlineMMD, calibrate
from observer.drift.embedding.online_window import OnlineScorer, scorer_for

from observer.config import load_config

D = 8  # dimensions of the Gaussian test vectors


def gaussian(seed: int, rows: int, shift: float = 0.0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(rows, D))
    x[:, 0] += shift
    return x


@pytest.fixture(scope="module")
def small() -> OnlineMMD:
    return OnlineMMD(gaussian(0, 400), ert=100, window_size=10, n_bootstraps=1000, seed=3)


def direct_mmd2(window: np.ndarray, compared: np.ndarray, bandwidth: float) -> float:
    w, n = len(window), len(compared)
    kww, kcc = rbf(window, window, bandwidth), rbf(compared, compared, bandwidth)
    kwc = rbf(window, compared, bandwidth)
    return float((kww.sum() - w) / (w * (w - 1)) + (kcc.sum() - n) / (n * (n - 1))
                 - 2 * kwc.mean())


def test_simulated_statistics_are_exact_mmd2_of_their_windows() -> None:
    """The calibration's band and prefix sums give each window's MMD^2 against the rest."""
    x = gaussian(11, 60)
    k = rbf(x, x, 2.0).astype(np.float32)
    idx = np.random.default_rng(0).permutation(60)[:15][None, :]
    got = window_statistics(k, idx, 5)
    rest = np.setdiff1d(np.arange(60), idx[0])
    want = [direct_mmd2(x[idx[0, s:s + 5]], x[rest], 2.0) for s in range(11)]
    assert got.shape == (1, 11)
    assert np.allclose(got[0], want, atol=1e-6)


def test_river_protocol(small: OnlineMMD) -> None:
    det = OnlineMMD(calibration=small.calibration)
    assert det.update(gaussian(1, 1)[0]) is det
    assert det.t == 1 and isinstance(det.drift_detected, bool)
    assert det.threshold == small.calibration.thresholds.at(1) > 0


def test_incremental_statistic_is_the_exact_mmd2_of_the_window(small: OnlineMMD) -> None:
    # Thresholds that never fire, so that no restart changes the window under test.
    never = Thresholds(np.full(10, np.inf), np.inf)
    cal = dataclasses.replace(small.calibration, thresholds=never)
    det = OnlineMMD(calibration=cal)
    stream = gaussian(2, 37)  # wraps the ring of 10 several times, ending mid-ring
    for x in stream:
        det.update(x)
    want = direct_mmd2(stream[-10:], cal.compared, cal.bandwidth)
    assert det.statistic == pytest.approx(want, abs=1e-12)
    assert det.t == 37 and det.threshold == np.inf
    # Before the window is full of streamed rows it still holds initial reference rows.
    det2 = OnlineMMD(calibration=cal)
    for x in stream[:4]:
        det2.update(x)
    window = np.vstack([cal.initial[4:], stream[:4]])
    assert det2.statistic == pytest.approx(direct_mmd2(window, cal.compared, cal.bandwidth),
                                           abs=1e-12)


def test_false_alarms_match_the_configured_expected_run_time() -> None:
    """With no change, the mean run time to a false detection is the configured ERT (200)
    within 25 %, over 300 streams and 3 references (standard error about 6 %); and run times
    are memoryless: the share of false detections within 50 records is that of a geometric
    law, 1 - (1 - 1/200)^50 = 0.222, within 0.07 (3 standard errors)."""
    ert, cap, run_times = 200, 2000, []
    for ref_seed in range(3):
        cal = calibrate(gaussian(100 + ref_seed, 1000), ert=ert, window_size=20,
                        n_bootstraps=4000, seed=ref_seed)
        streams = gaussian(200 + ref_seed, 100 * cap).reshape(100, cap, D)
        for stream in streams:
            det = OnlineMMD(calibration=cal)
            run = next((i for i, x in enumerate(stream, 1) if det.update(x).drift_detected), cap)
            run_times.append(run)
    mean = float(np.mean(run_times))
    assert 0.75 * ert <= mean <= 1.25 * ert, mean
    early = float(np.mean(np.array(run_times) <= 50))
    assert abs(early - (1 - (1 - 1 / ert) ** 50)) < 0.07, early


def test_a_mean_shift_is_detected_within_a_window_or_two() -> None:
    """A shift of one standard deviation in one of 8 coordinates (ERT 200, W 20): measured
    delays over 20 streams had median 15.5 and maximum 32 records."""
    cal = calibrate(gaussian(100, 1000), ert=200, window_size=20, n_bootstraps=4000, seed=0)
    delays = []
    for seed in range(20):
        det = OnlineMMD(calibration=cal)
        stream = gaussian(300 + seed, 200, shift=1.0)
        delays.append(next(i for i, x in enumerate(stream, 1) if det.update(x).drift_detected))
    assert np.median(delays) <= 20 and max(delays) <= 40, delays


def test_after_a_detection_it_starts_over(small: OnlineMMD) -> None:
    det = OnlineMMD(calibration=small.calibration)
    stream = gaussian(4, 200, shift=3.0)
    first = next(i for i, x in enumerate(stream, 1) if det.update(x).drift_detected)
    assert det.t == first
    det.update(stream[first])
    assert det.t == 1  # restarted from the initial reference window


def test_same_seed_same_thresholds_and_a_constant_reference_still_works() -> None:
    ref = gaussian(5, 300)
    a = calibrate(ref, ert=50, window_size=10, n_bootstraps=500, seed=1)
    b = calibrate(ref, ert=50, window_size=10, n_bootstraps=500, seed=1)
    assert np.array_equal(a.thresholds.steps, b.thresholds.steps)
    assert a.thresholds.stationary == b.thresholds.stationary
    flat = OnlineMMD(np.ones((100, 3)), ert=50, window_size=10, n_bootstraps=500)
    assert not any(flat.update(np.ones(3)).drift_detected for _ in range(30))
    # One odd row leaves the unbiased MMD^2 of a constant reference at 0; the second fires.
    assert [flat.update(np.array([1.0, 1.0, 2.0])).drift_detected for _ in range(2)] == [
        False, True]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reference": np.zeros((50, 2)), "window_size": 10}, "at least 60 rows"),
        ({"reference": np.zeros(60), "window_size": 10}, "2-D"),
        ({"reference": np.full((60, 2), np.nan), "window_size": 10}, "non-finite"),
        ({"reference": np.zeros((60, 2)), "ert": 1.0}, "ert must be > 1"),
        ({"reference": np.zeros((60, 2)), "window_size": 1}, "window_size must be >= 2"),
        ({"reference": np.zeros((60, 2)), "n_bootstraps": 10}, "n_bootstraps"),
    ],
)
def test_bad_parameters_are_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OnlineMMD(**kwargs)


@pytest.mark.parametrize(
    ("vector", "message"),
    [([1.0] * (D - 1), "7 dimensions"), ([np.inf] + [0.0] * (D - 1), "non-finite"),
     ("not a vector", "not a numeric matrix"), (np.zeros((2, D)), "one vector, got 2 rows")],
)
def test_hostile_vectors_are_refused(small: OnlineMMD, vector: object, message: str) -> None:
    det = OnlineMMD(calibration=small.calibration)
    with pytest.raises(ValueError, match=message):
        det.update(vector)
    assert det.t == 0


def test_window_method_scores_and_caches_one_calibration_per_reference() -> None:
    # ERT 5000: a false detection in a no-change window of 100 rows has a 2 % chance.
    scorer = OnlineScorer("mmd", ert=5000, window_size=20, n_bootstraps=5000)
    ref = gaussian(6, 400)
    same = [scorer(ref, gaussian(1000 + s, 100), None) for s in range(50)]
    moved = scorer(ref.copy(), gaussian(8, 100, shift=2.0), None)  # equal bytes: cached
    assert scorer.cache_info() == {"size": 1, "calibrations": 1}
    assert sum(s.drifted for s in same) <= 5  # expected 1 of 50
    for s in same + [moved]:
        assert s.drifted == (s.statistic > 1.0) == (s.statistics["detection_step"] > 0)
    assert moved.drifted and moved.statistic > moved.threshold == 1.0
    assert 1 <= moved.statistics["detection_step"] <= 30
    assert moved.statistics["detector_statistic"] > moved.statistics["detector_threshold"] > 0
    assert moved.statistics["false_alarm_probability"] == pytest.approx(1 - (1 - 1 / 5000) ** 100)
    scorer(gaussian(9, 400), gaussian(7, 50), None)
    assert scorer.cache_info() == {"size": 2, "calibrations": 2}
    # A looser ratio limit passed as the feature's threshold delays or prevents the verdict.
    loose = scorer(ref, gaussian(8, 100, shift=2.0), 1e6)
    assert not loose.drifted and loose.statistics["detection_step"] == 0
    with pytest.raises(ValueError, match="dimensions"):
        scorer(ref, np.zeros((5, D + 1)), None)


def test_fewer_bootstraps_than_ert_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="observer.drift.embedding.online_mmd"):
        calibrate(gaussian(10, 120), ert=500, window_size=10, n_bootstraps=200)
    assert "raise n_bootstraps to at least ert" in caplog.text


def test_registered_and_configured() -> None:
    for name in ("online_mmd", "online_lsdd"):
        assert EMBEDDING_METHODS[name].default_threshold == 1.0
    assert DriftConfig().online.ert == 1000 and DriftConfig().online.window_size == 50
    cfg = load_config(None, env={"OBSERVER_DRIFT__ONLINE__ERT": "250",
                                 "OBSERVER_DRIFT__ONLINE__WINDOW_SIZE": "30"})
    scorer = OnlineScorer.from_config("lsdd", cfg.drift.online)
    assert (scorer.ert, scorer.window_size, scorer.n_bootstraps) == (250.0, 30, 4000)
    with pytest.raises(ValueError, match="ert"):
        DriftConfig(online={"ert": 0.5})
    with pytest.raises(ValueError, match="unknown online detector 'kl'"):
        OnlineScorer("kl")
    # The engine's way to the configured scorer: one per configuration, default = the table's.
    assert scorer_for("online_mmd", DriftConfig().online) is EMBEDDING_METHODS["online_mmd"].score
    assert scorer_for("online_lsdd", cfg.drift.online).window_size == 30
    with pytest.raises(ValueError, match="'mmd' is not an online method"):
        scorer_for("mmd", cfg.drift.online)


# --- LSDD -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lsdd() -> OnlineLSDD:
    return OnlineLSDD(gaussian(20, 400), ert=100, window_size=10, n_bootstraps=1000, seed=3)


def direct_lsdd(window: np.ndarray, compared_mean_phi: np.ndarray, cal: object) -> float:
    """2 h.theta - theta.H.theta straight from the definition (no feature transform)."""
    c, s = cal.centres, cal.bandwidth
    h_mat = np.exp(-((c[:, None, :] - c[None, :, :]) ** 2).sum(2) / (4 * s * s))
    h = compared_mean_phi - rbf(window, c, s).mean(0)
    theta = np.linalg.solve(h_mat + LAMBDA * np.eye(len(c)), h)
    return float(2 * h @ theta - theta @ h_mat @ theta)


def test_lsdd_statistic_is_the_least_squares_density_difference(lsdd: OnlineLSDD) -> None:
    never = Thresholds(np.full(10, np.inf), np.inf)
    cal = dataclasses.replace(lsdd.calibration, thresholds=never)
    det = OnlineLSDD(calibration=cal)
    stream = gaussian(21, 23, shift=0.5)
    for x in stream:
        det.update(x)
    # The compared part's mean phi, recovered through psi = phi T (T is invertible here).
    phi_mean = np.linalg.lstsq(cal.transform.T, cal.compared_mean, rcond=None)[0]
    assert det.statistic == pytest.approx(direct_lsdd(stream[-10:], phi_mean, cal), rel=1e-6)
    assert det.statistic > 0 and det.t == 23 and len(cal.centres) == CENTRES


def test_lsdd_false_alarms_match_the_expected_run_time_and_a_shift_is_caught() -> None:
    """ERT 200, 8-d Gaussians, reference 1000 rows, W 20, 4000 bootstraps: mean run time over
    200 no-change streams (2 references; standard error about 7 %) within 25 % of 200
    (measured on 400 streams, 4 references: 198); a one-sd shift in one coordinate caught
    within 40 records in each of 10 streams (measured on 20: median 18, at most 31)."""
    ert, cap, run_times, delays = 200, 2000, [], []
    for ref_seed in range(2):
        cal = calibrate_lsdd(gaussian(100 + ref_seed, 1000), ert=ert, window_size=20,
                             n_bootstraps=4000, seed=ref_seed)
        for stream in gaussian(400 + ref_seed, 100 * cap).reshape(100, cap, D):
            det = OnlineLSDD(calibration=cal)
            run = next((i for i, x in enumerate(stream, 1) if det.update(x).drift_detected), cap)
            run_times.append(run)
    mean = float(np.mean(run_times))
    assert 0.75 * ert <= mean <= 1.25 * ert, mean
    for seed in range(10):
        det = OnlineLSDD(calibration=cal)
        stream = gaussian(300 + seed, 200, shift=1.0)
        delays.append(next(i for i, x in enumerate(stream, 1) if det.update(x).drift_detected))
    assert max(delays) <= 40, delays


def test_lsdd_window_method_and_clear_errors(lsdd: OnlineLSDD) -> None:
    scorer = OnlineScorer("lsdd", ert=5000, window_size=10, n_bootstraps=2000)
    ref = gaussian(22, 400)
    moved = scorer(ref, gaussian(23, 60, shift=2.0), None)
    assert moved.drifted and 1 <= moved.statistics["detection_step"] <= 30
    assert scorer(ref, gaussian(24, 20), 1e6).drifted is False
    assert scorer.cache_info()["calibrations"] == 1
    with pytest.raises(ValueError, match=f"at least {60 + CENTRES} rows"):
        calibrate_lsdd(gaussian(25, 59 + CENTRES), window_size=10)
    with pytest.raises(ValueError, match="non-finite"):
        OnlineLSDD(calibration=lsdd.calibration).update([np.nan] * D)
