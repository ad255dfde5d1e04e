"""Online LSDD: the least-squares density difference detector of Cobb et al. (2022).

Like :class:`~observer.drift.embedding.online_mmd.OnlineMMD` (River's protocol, thresholds
calibrated so that with no change the run time to a false detection is geometric with mean
``ert``, the same conditional-quantile scheme of :mod:`.mmd_calibration`), but the statistic
is the LSDD between the reference and the test window (Sugiyama et al. 2013, Bu et al.
2017): with ``n_c`` kernel centres ``c`` (reference rows held out for it), features
``phi(x) = exp(-|x - c|^2 / (2 s^2))``, ``H_ij = exp(-|c_i - c_j|^2 / (4 s^2))`` (the Gaussian
integral, its constant folded into ``lambda``) and ``h`` the reference's mean features minus
the window's, ``theta = (H + lambda I)^-1 h`` and ``LSDD = 2 h.theta - theta.H.theta``.
That is ``h' A h`` with ``A = M (H + 2 lambda I) M``, ``M = (H + lambda I)^-1``, positive
semi-definite; so with ``A = T T'`` every row is mapped once to ``psi(x) = phi(x) T`` and
the statistic is the squared distance between the reference's and the window's mean
``psi``. An update costs ``O(n_c d + n_c^2)``, independent of the reference's size.

Measured (8-dimensional Gaussians, reference 1000 rows, ``W = 20``, 4000 bootstraps,
``ert = 200``): mean run time to a false detection 198 over 400 no-change streams (4
references); a mean shift of one standard deviation in one coordinate detected after a median
18 and at most 31 records over 20 streams (0.5 sd: median 35.5, at most 174; 2 sd: median
8.5, at most 12). With ``d = 32``, a 2000-row reference, ``W = 50`` and ``ert = 1000``: mean
1064 over 200 streams (4 references: 679 to 1332, 50 streams each). ``tests/test_online_mmd.py``
checks the first case's run time within 25 % on 200 streams.

>>> rng = np.random.default_rng(0)
>>> det = OnlineLSDD(rng.normal(size=(600, 4)), ert=100, window_size=20, n_bootstraps=1000)
>>> shifted = rng.normal(size=(200, 4)) + [1.5, 0, 0, 0]
>>> first = next(i for i, x in enumerate(shifted) if det.update(x).drift_detected)
>>> first < 30, det.statistic > det.threshold
(True, True)

Reference: Cobb, Van Looveren, Klaise, "Sequential multivariate change detection with
calibrated and memoryless false detection rates", AISTATS 2022 (arXiv:2108.00883).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from observer.drift.embedding.mmd_calibration import (
    Thresholds,
    conditional_thresholds,
    median_bandwidth,
    min_reference_rows,
    random_streams,
    rbf,
)
from observer.drift.embedding.online_mmd import finite_matrix, one_vector

CENTRES = 100  # kernel centres (reference rows held out); the update costs O(CENTRES^2)
LAMBDA = 1e-3  # ridge of (H + lambda I): H's diagonal is 1, so this is a relative ridge
_CANDIDATES = 65  # initial windows drawn to pick the median one from


@dataclass(frozen=True)
class LSDDCalibration:
    """Centres, feature map, the compared part's mean feature and the thresholds."""

    centres: np.ndarray
    transform: np.ndarray  # T: psi(x) = phi(x) @ T
    bandwidth: float
    compared_mean: np.ndarray
    initial: np.ndarray  # psi of the initial window's rows, (W, n_c)
    thresholds: Thresholds
    ert: float
    window_size: int

    @property
    def dim(self) -> int:
        return self.centres.shape[1]

    def features(self, x: np.ndarray) -> np.ndarray:
        """``psi`` of the rows of ``x``."""
        return rbf(x, self.centres, self.bandwidth) @ self.transform


def _transform(centres: np.ndarray, bandwidth: float) -> np.ndarray:
    h = np.exp(-np.maximum(
        (centres * centres).sum(1)[:, None] + (centres * centres).sum(1)[None, :]
        - 2.0 * centres @ centres.T, 0.0) / (4.0 * bandwidth * bandwidth))
    m = np.linalg.inv(h + LAMBDA * np.eye(len(h)))
    a = m @ (h + 2.0 * LAMBDA * np.eye(len(h))) @ m
    vals, vecs = np.linalg.eigh((a + a.T) / 2.0)
    return vecs * np.sqrt(np.maximum(vals, 0.0))


def _statistics(psi: np.ndarray, idx: np.ndarray, w: int, total: np.ndarray) -> np.ndarray:
    """Squared distances between the mean ``psi`` of each stream's compared part (every row not
    in it) and of its sliding windows: ``(b, m - w + 1)``."""
    b, m = idx.shape
    rows = psi[idx]  # (b, m, n_c)
    compared = (total - rows.sum(1)) / (len(psi) - m)
    pre = np.concatenate([np.zeros((b, 1, psi.shape[1])), rows.cumsum(1)], axis=1)
    means = (pre[:, w:] - pre[:, :-w]) / w
    return ((means - compared[:, None, :]) ** 2).sum(2)


def calibrate_lsdd(reference: object, ert: float = 1000.0, window_size: int = 50,
                   n_bootstraps: int = 4000, seed: int = 0) -> LSDDCalibration:
    """Hold out the centres, map the rest, split it and simulate the thresholds."""
    if not ert > 1:
        raise ValueError(f"ert must be > 1 record, got {ert}")
    if window_size < 2:
        raise ValueError(f"window_size must be >= 2, got {window_size}")
    if n_bootstraps < 100:
        raise ValueError(f"n_bootstraps must be >= 100, got {n_bootstraps}")
    ref = finite_matrix(reference, "reference")
    need = min_reference_rows(window_size) + CENTRES
    if len(ref) < need:
        raise ValueError(f"online LSDD with window_size {window_size} needs a reference of at "
                         f"least {need} rows, got {len(ref)}")
    rng = np.random.default_rng(seed)
    bandwidth = median_bandwidth(ref, seed)
    perm = rng.permutation(len(ref))
    centres, rest = ref[perm[:CENTRES]], ref[perm[CENTRES:]]
    transform = _transform(centres, bandwidth)
    psi = rbf(rest, centres, bandwidth) @ transform
    total = psi.sum(0)
    w, m = window_size, 3 * window_size
    chunk = max(1, (64 << 20) // (m * psi.shape[1] * 8 * 3))
    stats = np.empty((n_bootstraps, 2 * w))
    for lo in range(0, n_bootstraps, chunk):
        b = min(chunk, n_bootstraps - lo)
        stats[lo:lo + b] = _statistics(psi, random_streams(rng, b, len(psi), m), w, total)[:, 1:]
    # The initial window: the median of candidate windows (see online_mmd._initial_window).
    wins = random_streams(rng, _CANDIDATES, len(psi), w)
    win = wins[np.argsort(_statistics(psi, wins, w, total)[:, 0])[_CANDIDATES // 2]]
    compared_mean = (total - psi[win].sum(0)) / (len(psi) - w)
    return LSDDCalibration(centres, transform, bandwidth, compared_mean, psi[win],
                           conditional_thresholds(stats, ert), float(ert), window_size)


class OnlineLSDD:
    """Online LSDD drift detector for a stream of vectors (Cobb et al. 2022).

    Parameters as :class:`~observer.drift.embedding.online_mmd.OnlineMMD`; the reference needs
    ``6 * window_size + CENTRES`` rows. ``t``, ``statistic`` and ``threshold`` are those of
    the last update; after a detection the next update starts over.
    """

    def __init__(self, reference: object = None, ert: float = 1000.0, window_size: int = 50,
                 n_bootstraps: int = 4000, seed: int = 0, *,
                 calibration: LSDDCalibration | None = None) -> None:
        self.calibration = calibration or calibrate_lsdd(reference, ert, window_size,
                                                         n_bootstraps, seed)
        self.drift_detected = False
        self._reset()

    def _reset(self) -> None:
        self._win = self.calibration.initial.copy()
        self._sum = self._win.sum(0)
        self._head = 0
        self.t = 0
        self.statistic = self.threshold = float("nan")

    def update(self, x: object) -> OnlineLSDD:
        """Feed one vector; ``drift_detected`` says whether it completed a detection."""
        c = self.calibration
        row = one_vector(x, c.dim)
        if self.drift_detected:
            self._reset()
        psi = c.features(row)[0]
        i, w = self._head, c.window_size
        self._sum += psi - self._win[i]
        self._win[i] = psi
        self._head = (i + 1) % w
        if self._head == 0:  # once per window, drop the rounding the running sum gathered
            self._sum = self._win.sum(0)
        self.t += 1
        diff = c.compared_mean - self._sum / w
        self.statistic = float(diff @ diff)
        self.threshold = c.thresholds.at(self.t)
        self.drift_detected = bool(self.statistic > self.threshold)
        return self
