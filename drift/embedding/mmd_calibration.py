"""Thresholds for the online MMD detector, calibrated by simulation to an expected run time.

The detector (:mod:`.online_mmd`) compares a sliding test window of ``W`` records with a
fixed reference through the unbiased squared MMD of an RBF kernel. Under no change, Cobb et
al. (2022) pick a threshold ``h_t`` per time step so that the probability of a first false
detection at step ``t``, given none before, is ``1/ERT``: run time to a false detection is
then geometric with mean ``ERT`` ("calibrated and memoryless").

How the simulation is built (all of it from the reference, no other data):

* the bandwidth is the median heuristic: the median pairwise distance of (up to 1000)
  reference rows;
* the ``n x n`` kernel matrix of the reference is computed once; every statistic below is a
  sum of its entries, so the ``B`` bootstraps cost index look-ups, not kernel evaluations;
* each bootstrap splits the reference at random into a compared part of ``n - 3W`` rows and
  a no-change stream of ``3W`` rows: ``W`` rows fill the initial test window (as in the
  deployed detector, so that it can fire from the first record) and ``2W`` rows arrive;
* for ``t = 1 .. W`` the threshold ``h_t`` is the ``1 - 1/ERT`` quantile of the statistic
  over the bootstraps that have not fired before ``t`` (the conditional-quantile scheme);
* after ``W`` steps the test window holds only streamed rows and the hazard is stationary,
  so one threshold ``h_inf`` serves every later step. It is fitted on steps ``W+1 .. 2W``
  pooled, so that first detections per step at risk equal ``1/ERT``: pooling ``W`` steps
  makes it far less noisy than the last per-step quantile would be.

Reference: Cobb, Van Looveren, Klaise, "Sequential multivariate change detection with
calibrated and memoryless false detection rates", AISTATS 2022 (arXiv:2108.00883).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_BANDWIDTH_ROWS = 1000  # the median of 500k distances is as good as of all of them
_CHUNK_BYTES = 64 << 20  # bootstraps are simulated in chunks of about this many bytes
_FLOOR = 1e-12  # thresholds stay positive, so statistic / threshold is a finite ratio


def sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared euclidean distances between the rows of ``a`` and ``b`` (clipped at 0)."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d2, 0.0)


def median_bandwidth(x: np.ndarray, seed: int = 0) -> float:
    """Median pairwise distance between distinct rows of ``x`` (1.0 if they all coincide).

    >>> median_bandwidth(np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]]))  # of 1, 4.24, 5
    4.242640687119285
    """
    rows = np.random.default_rng(seed).permutation(len(x))[:_BANDWIDTH_ROWS]
    d2 = sq_distances(x[rows], x[rows])[np.triu_indices(len(rows), k=1)]
    d2 = d2[d2 > 0]
    return float(np.sqrt(np.median(d2))) if d2.size else 1.0


def rbf(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    """The RBF kernel ``exp(-|a - b|^2 / (2 bandwidth^2))`` between rows of ``a`` and ``b``."""
    return np.exp(-sq_distances(a, b) / (2.0 * bandwidth * bandwidth))


@dataclass(frozen=True)
class Thresholds:
    """Per-step thresholds ``steps[t-1]`` for ``t <= W`` and ``stationary`` after."""

    steps: np.ndarray
    stationary: float

    def at(self, t: int) -> float:
        """The threshold of step ``t`` (1-based)."""
        return float(self.steps[t - 1]) if t <= len(self.steps) else self.stationary


def min_reference_rows(window_size: int) -> int:
    """Reference rows the calibration needs: ``3W`` streamed plus at least ``3W`` compared."""
    return 6 * window_size


def window_statistics(k: np.ndarray, idx: np.ndarray, w: int,
                      rowsum: np.ndarray | None = None) -> np.ndarray:
    """MMD^2 of sliding ``w``-row windows over streams of reference rows, against the rest.

    ``k``: the reference's ``(n, n)`` kernel matrix; ``idx``: ``(b, m)`` distinct row indices
    per stream. Stream ``i`` is compared with every row not in ``idx[i]``; its window ``s``
    (``0 .. m - w``) holds rows ``idx[i, s : s + w]``. Result: shape ``(b, m - w + 1)``.
    ``rowsum``: ``k``'s row sums, when the caller has them.

    >>> x = np.random.default_rng(0).normal(size=(40, 2))
    >>> k = rbf(x, x, 1.0)
    >>> s = window_statistics(k, np.arange(10)[None, :], 5)
    >>> s.shape
    (1, 6)
    """
    n = len(k)
    b, m = idx.shape
    nr = n - m
    rowsum = k.sum(1, dtype=np.float64) if rowsum is None else rowsum
    # One flat take is several times faster than 3-D fancy indexing.
    g = np.take(k.ravel(), idx[:, :, None] * n + idx[:, None, :])  # (b, m, m)
    gsum = g.sum(2, dtype=np.float64)
    cross = rowsum[idx] - gsum  # each stream row's kernel sum against the compared part
    ref_pairs = rowsum.sum() - 2.0 * rowsum[idx].sum(1) + gsum.sum(1) - nr  # off-diagonal
    s = np.arange(0, m - w + 1)  # window s holds stream rows s .. s+W-1
    # Pairs (i, i+o) of window s lie on diagonal o, i = s .. s+W-1-o: a band, not all of g.
    within = np.zeros((b, len(s)))
    for o in range(1, w):
        diag = np.diagonal(g, offset=o, axis1=1, axis2=2)
        pre = np.concatenate([np.zeros((b, 1)), diag.cumsum(1, dtype=np.float64)], axis=1)
        within += pre[:, s + w - o] - pre[:, s]
    cpre = np.concatenate([np.zeros((b, 1)), cross.cumsum(1)], axis=1)
    crossw = cpre[:, s + w] - cpre[:, s]
    return (2.0 * within / (w * (w - 1)) + (ref_pairs / (nr * (nr - 1)))[:, None]
            - 2.0 * crossw / (w * nr))


def random_streams(rng: np.random.Generator, b: int, n: int, m: int) -> np.ndarray:
    """``b`` random ``m``-subsets of ``range(n)``, each in random order: ``(b, m)`` indices.

    >>> idx = random_streams(np.random.default_rng(0), 3, 10, 4)
    >>> idx.shape, all(len(set(row)) == 4 for row in idx.tolist())
    ((3, 4), True)
    """
    # The rows of the m smallest of n random keys, in key order (a partition beats sorting).
    keys = rng.random((b, n))
    idx = np.argpartition(keys, m - 1, axis=1)[:, :m]
    return np.take_along_axis(idx, np.take_along_axis(keys, idx, 1).argsort(1), 1)


def simulate_statistics(k: np.ndarray, window_size: int, n_bootstraps: int,
                        seed: int) -> np.ndarray:
    """MMD^2 of ``n_bootstraps`` no-change streams at steps ``1 .. 2W``: shape ``(B, 2W)``.
    ``k``: the reference's kernel matrix."""
    n, w = len(k), window_size
    m = 3 * w  # initial window + 2W streamed rows
    rng = np.random.default_rng(seed)
    rowsum = k.sum(1, dtype=np.float64)
    chunk = max(1, _CHUNK_BYTES // (m * m * 8))
    out = np.empty((n_bootstraps, 2 * w))
    for lo in range(0, n_bootstraps, chunk):
        b = min(chunk, n_bootstraps - lo)
        idx = random_streams(rng, b, n, m)
        out[lo:lo + b] = window_statistics(k, idx, w, rowsum)[:, 1:]
    return out


def conditional_thresholds(stats: np.ndarray, ert: float) -> Thresholds:
    """Per-step conditional quantiles for the first half of the steps, one pooled threshold
    for the second half (see the module docstring). ``stats``: ``(B, 2W)`` from
    :func:`simulate_statistics`.

    Independent normal steps: every threshold is the normal 98th percentile, 2.054.

    >>> rng = np.random.default_rng(0)
    >>> th = conditional_thresholds(rng.normal(size=(4000, 20)), ert=50.0)
    >>> len(th.steps), abs(th.at(1) - 2.054) < 0.1, abs(th.stationary - 2.054) < 0.1
    (10, True, True)
    """
    b, steps = stats.shape
    w = steps // 2
    q = 1.0 - 1.0 / ert
    alive = np.ones(b, dtype=bool)
    hs = np.empty(w)
    for t in range(w):
        if alive.sum() < 2:
            raise ValueError("too few bootstraps survive calibration: raise n_bootstraps")
        hs[t] = np.quantile(stats[alive, t], q)
        alive &= stats[:, t] <= hs[t]
    late = stats[alive, w:]
    # A reference with no spread simulates statistics of exactly 0: any change then fires.
    return Thresholds(np.maximum(hs, _FLOOR), max(_pooled_threshold(late, 1.0 / ert), _FLOOR))


def _pooled_threshold(stats: np.ndarray, hazard: float) -> float:
    """The threshold whose first detections per step at risk over ``stats`` (streams x steps)
    equal ``hazard`` (bisection: the rate falls as the threshold rises)."""
    running_max = np.maximum.accumulate(stats, axis=1)
    n_steps = stats.shape[1]

    def rate(h: float) -> float:
        fired = running_max > h
        first = np.where(fired.any(1), fired.argmax(1) + 1, n_steps)
        return fired[:, -1].sum() / max(int(first.sum()), 1)

    lo, hi = float(stats.min()), float(stats.max())
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if rate(mid) > hazard else (lo, mid)
    return hi
