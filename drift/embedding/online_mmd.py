"""Online MMD: a streaming embedding drift detector calibrated to an expected run time.

:class:`OnlineMMD` follows River's detector protocol (``update(x)`` returns the detector,
``drift_detected`` is the verdict). Each record is one embedding vector. The statistic is
the unbiased squared MMD (RBF kernel, median-heuristic bandwidth) between a fixed reference
and a sliding test window of the last ``window_size`` records; its thresholds
(:mod:`.mmd_calibration`) make the chance of a false detection at every step, given none
before, ``1/ert``, so that with no change the run time to a false detection is geometric with
mean ``ert`` records.

The reference is split (seeded) into a compared part (``n - W`` rows) and ``W`` rows that fill
the initial test window, so that the detector can fire from the first record. Each update
costs ``O(n d)``: the new row's kernel values against the compared part and the window,
added to running sums; nothing is recomputed. After a detection, the next update
starts over from the initial window.

Measured calibration (no-change Gaussian streams, run time = records to the first false
detection; standard error about ERT / sqrt(runs)):

=====  ===  ==  =========  ===========  ==========  =============  ==================
ERT    d    W   reference  bootstraps   runs, refs  mean run time  per reference
=====  ===  ==  =========  ===========  ==========  =============  ==================
200    8    20  1000       4000         1000, 10    200.4          170 - 227 (100 each)
1000   32   50  2000       4000         200, 4      1075           707 - 1434 (50 each)
=====  ===  ==  =========  ===========  ==========  =============  ==================

The spread between references is partly sampling (standard error ERT / sqrt(runs) per
reference) and partly real: the thresholds are calibrated on average over random splits of
the reference, not for the one split deployed.

``tests/test_online_mmd.py`` checks the first row within 25 % on 300 runs, and that run
times are memoryless (the share within 50 records is the geometric law's). A mean shift of
one standard deviation in one of 8 coordinates (ERT 200, W 20) was detected after a median
15.5 and at most 32 records over 20 streams (0.5 sd: median 30.5, at most 119; 2 sd:
median 11, at most 14).

>>> rng = np.random.default_rng(0)
>>> det = OnlineMMD(rng.normal(size=(600, 4)), ert=100, window_size=20, n_bootstraps=1000)
>>> shifted = rng.normal(size=(200, 4)) + [1.5, 0, 0, 0]
>>> first = next(i for i, x in enumerate(shifted) if det.update(x).drift_detected)
>>> first < 30, det.statistic > det.threshold
(True, True)

Reference: Cobb, Van Looveren, Klaise, "Sequential multivariate change detection with
calibrated and memoryless false detection rates", AISTATS 2022 (arXiv:2108.00883).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from observer.drift.embedding.inputs import as_matrix
from observer.drift.embedding.mmd_calibration import (
    Thresholds,
    conditional_thresholds,
    median_bandwidth,
    min_reference_rows,
    rbf,
    simulate_statistics,
    window_statistics,
)

_CANDIDATES = 65  # initial windows drawn to pick the median one from
MAX_REFERENCE_ROWS = 4000
"""A larger reference is sampled down (seeded) to this many rows: calibration holds its
kernel matrix (``n^2`` floats, about 200 MB at this size while it runs) and every update
costs ``O(n d)``."""
log = logging.getLogger(__name__)


def finite_matrix(x: object, name: str, dim: int | None = None) -> np.ndarray:
    """``x`` as a 2-D float array of finite values (with ``dim`` columns), else a ValueError
    worded as the other embedding methods' (:func:`~observer.drift.embedding.inputs.as_matrix`).

    >>> finite_matrix([[1.0, 2.0]], "vector", dim=3)
    Traceback (most recent call last):
    ...
    ValueError: vector has 2 dimensions, the reference 3
    """
    a = as_matrix(name, x, min_rows=1)
    if dim is not None and a.shape[1] != dim:
        raise ValueError(f"{name} has {a.shape[1]} dimensions, the reference {dim}")
    return a


def one_vector(x: object, dim: int) -> np.ndarray:
    """One record's vector as a ``(1, dim)`` float array, else a ValueError.

    >>> one_vector([1, 2], 2)
    array([[1., 2.]])
    """
    row = finite_matrix([x] if np.ndim(x) == 1 else x, "vector", dim)
    if len(row) != 1:
        raise ValueError(f"update takes one vector, got {len(row)} rows")
    return row


@dataclass(frozen=True)
class Calibration:
    """What a detector needs besides its running sums; shared by detectors of one reference."""

    compared: np.ndarray
    initial: np.ndarray
    bandwidth: float
    compared_term: float  # mean off-diagonal kernel value of the compared part
    thresholds: Thresholds
    ert: float
    window_size: int

    @property
    def dim(self) -> int:
        return self.compared.shape[1]


def calibrate(reference: object, ert: float = 1000.0, window_size: int = 50,
              n_bootstraps: int = 4000, seed: int = 0) -> Calibration:
    """Split ``reference``, pick the bandwidth and simulate the thresholds (once per reference)."""
    if not ert > 1:
        raise ValueError(f"ert must be > 1 record, got {ert}")
    if window_size < 2:
        raise ValueError(f"window_size must be >= 2, got {window_size}")
    if n_bootstraps < 100:
        raise ValueError(f"n_bootstraps must be >= 100, got {n_bootstraps}")
    if n_bootstraps < ert:
        # The early thresholds are 1 - 1/ert quantiles over the bootstraps: with fewer than
        # ert of them the quantile is about their maximum, biased low (more false alarms).
        log.warning("online MMD: n_bootstraps (%d) < ert (%g) makes early thresholds low; "
                    "raise n_bootstraps to at least ert", n_bootstraps, ert)
    ref = finite_matrix(reference, "reference")
    if len(ref) < min_reference_rows(window_size):
        raise ValueError(f"online MMD with window_size {window_size} needs a reference of at "
                         f"least {min_reference_rows(window_size)} rows, got {len(ref)}")
    if len(ref) > MAX_REFERENCE_ROWS:
        keep = np.random.default_rng(seed + 3).choice(len(ref), MAX_REFERENCE_ROWS, replace=False)
        ref = ref[np.sort(keep)]
    bandwidth = median_bandwidth(ref, seed)
    k64 = rbf(ref, ref, bandwidth)
    k = k64.astype(np.float32)  # the simulation's sums are float64; float32 halves n^2 memory
    win = _initial_window(k, window_size, seed + 2)
    rest = np.setdiff1d(np.arange(len(ref)), win)
    nr = len(rest)
    # In float64: the detector's statistic is then the exact MMD^2 of its window.
    term = float((k64[np.ix_(rest, rest)].sum() - nr) / (nr * (nr - 1)))
    del k64
    stats = simulate_statistics(k, window_size, n_bootstraps, seed + 1)
    return Calibration(ref[rest], ref[win], bandwidth, term, conditional_thresholds(stats, ert),
                       float(ert), window_size)


def _initial_window(k: np.ndarray, w: int, seed: int) -> np.ndarray:
    """Rows of the initial test window: of ``_CANDIDATES`` random ``W``-row windows, the one
    whose MMD^2 against the rest of the reference is the median. The first ``W`` steps
    depend on that window: a random one can itself look drifted (the detector then fires at
    once, which happened in testing), a median one makes the early steps typical."""
    rng = np.random.default_rng(seed)
    n = len(k)
    wins = np.stack([rng.choice(n, size=w, replace=False) for _ in range(_CANDIDATES)])
    stats = window_statistics(k, wins, w)[:, 0]
    return wins[np.argsort(stats)[_CANDIDATES // 2]]


class OnlineMMD:
    """Online MMD drift detector for a stream of vectors (Cobb et al. 2022).

    Parameters
    ----------
    reference
        ``(n, d)`` vectors with no change; ``n >= 6 * window_size`` (more than
        :data:`MAX_REFERENCE_ROWS` are sampled down to that many).
    ert
        Expected run time: mean records to a false detection when nothing changes.
    window_size
        ``W``: records in the test window. Larger windows see smaller changes, later.
    n_bootstraps
        Simulated no-change streams behind the thresholds; more makes them steadier.
    seed
        Seeds the split, the bandwidth sample and the simulation.
    calibration
        A :class:`Calibration` to reuse instead of calibrating (the other parameters are
        then ignored).

    ``t`` (records since the start or the last detection), ``statistic`` and ``threshold`` are
    those of the last update.
    """

    def __init__(self, reference: object = None, ert: float = 1000.0, window_size: int = 50,
                 n_bootstraps: int = 4000, seed: int = 0, *,
                 calibration: Calibration | None = None) -> None:
        self.calibration = calibration or calibrate(reference, ert, window_size, n_bootstraps,
                                                    seed)
        c = self.calibration
        self._init_kww = rbf(c.initial, c.initial, c.bandwidth)
        self._init_cross = rbf(c.initial, c.compared, c.bandwidth).sum(1)
        self._cnorm = (c.compared * c.compared).sum(1)
        self._gamma = -1.0 / (2.0 * c.bandwidth * c.bandwidth)
        self.drift_detected = False
        self._reset()

    def _reset(self) -> None:
        self._win = self.calibration.initial.copy()
        self._kww = self._init_kww.copy()
        self._cross = self._init_cross.copy()
        self._within = float(self._kww.sum() - len(self._win))  # off-diagonal pairs
        self._cross_sum = float(self._cross.sum())
        self._head = 0  # the oldest row of the window
        self.t = 0
        self.statistic = self.threshold = float("nan")

    def update(self, x: object) -> OnlineMMD:
        """Feed one vector; ``drift_detected`` says whether it completed a detection."""
        c = self.calibration
        row = one_vector(x, c.dim)
        if self.drift_detected:
            self._reset()
        w, nr, i = c.window_size, len(c.compared), self._head
        # k(x, compared) from the compared part's precomputed squared norms: one product.
        d2 = np.maximum(self._cnorm + row[0] @ row[0] - 2.0 * (c.compared @ row[0]), 0.0)
        kr = float(np.exp(d2 * self._gamma).sum())
        kw = rbf(row, self._win, c.bandwidth)[0]
        kw[i] = 1.0  # the slot of the row that leaves becomes the new row's own
        self._within += 2.0 * ((kw.sum() - 1.0) - (self._kww[i].sum() - 1.0))
        self._kww[i, :] = kw
        self._kww[:, i] = kw
        self._win[i] = row[0]
        self._cross_sum += kr - self._cross[i]
        self._cross[i] = kr
        self._head = (i + 1) % w
        if self._head == 0:  # once per window, drop the rounding the running sums gathered
            self._within, self._cross_sum = float(self._kww.sum() - w), float(self._cross.sum())
        self.t += 1
        self.statistic = float(self._within / (w * (w - 1)) + c.compared_term
                               - 2.0 * self._cross_sum / (w * nr))
        self.threshold = c.thresholds.at(self.t)
        self.drift_detected = bool(self.statistic > self.threshold)
        return self
