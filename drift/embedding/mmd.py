"""Maximum mean discrepancy (MMD) between the reference and current vectors.

References: Gretton, Borgwardt, Rasch, Schoelkopf and Smola, "A Kernel Two-Sample Test",
JMLR 13 (2012): the unbiased estimate MMD²u (their Lemma 6) with a Gaussian (RBF) kernel;
Evidently 0.7.23, ``MMDDriftMethod`` in ``legacy/metrics/data_drift/embedding_drift_methods.py``.

Kernel: ``k(a, b) = exp(-||a - b||² / sigma²)``, ``sigma`` the median of the euclidean
distances between up to 1000 reference and 1000 current rows (the median heuristic; larger
sides are sampled as ``DataFrame.sample(1000, random_state=0)`` samples them, so the bandwidth
is Evidently's). Two rules:

- ``mmd`` (:func:`score_mmd`): Evidently's default, drift when MMD²u > 0.015.
- ``mmd_permutation`` (:func:`score_mmd_permutation`): a permutation test (Gretton et al.
  2012, section 5), drift when MMD²u exceeds the 95th percentile of its values over 200
  random relabellings of the pooled rows (seeded), with the p-value reported. Its bandwidth
  is the median distance over pooled pairs (:func:`pooled_gamma`), which no relabelling
  changes, so its MMD²u differs slightly from ``mmd``'s.

Why not Evidently's ``bootstrap=True``: it resamples the reference *with replacement* into two
pseudo-windows and drifts when MMD²u is above the **5th** percentile
(``quantile_probability=0.05``) of that null. The null is centred near 0, so its 5th percentile
is at or below 0, and any positive MMD²u (half of all same-distribution windows, more with
the duplicates resampling brings) is flagged: its false-alarm rate is far above 5 %
(``tests/test_embedding_methods.py`` measures both). Relabelling the pooled rows is exact
under "same distribution" (the labels are exchangeable), and the upper-tail quantile is the
test's level: about 5 % false alarms.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> ref = rng.normal(size=(300, 8))
>>> s = score_mmd(ref, rng.normal(size=(200, 8)), None)
>>> round(s.statistic, 4), s.drifted
(0.0004, False)
>>> s = score_mmd_permutation(ref, rng.normal(0.3, 1.0, size=(200, 8)), None)
>>> s.drifted, s.statistics["p_value"] < 0.05
(True, True)
"""

from __future__ import annotations

import numpy as np
from observer.drift.embedding.inputs import check_pair
from observer.drift.embedding.score import EmbeddingScore

MMD_THRESHOLD = 0.015
"""Evidently's fixed threshold on MMD²u."""
BANDWIDTH_SAMPLE = 1000
PERMUTATIONS = 200
PERMUTATION_QUANTILE = 0.95
PERMUTATION_MAX_ROWS = 2000
"""Rows per side the permutation test keeps (a seeded sample): it holds the pooled kernel
matrix, ``(2 * 2000)²`` float64 values = 128 MB at most."""
BLOCK = 1024
"""Rows per block of kernel sums: memory stays ``BLOCK x rows``, whatever the window size."""


def _sample_rows(n: int) -> np.ndarray:
    # pandas' DataFrame.sample(k, random_state=0) is RandomState(0).choice(n, k, replace=False)
    return np.random.RandomState(0).choice(n, size=min(n, BANDWIDTH_SAMPLE), replace=False)


def median_gamma(reference: np.ndarray, current: np.ndarray) -> float:
    """``1 / sigma²`` of the median heuristic (see the module docstring).

    All sampled pairs equal at the median (more than half the vectors identical) would give
    ``sigma = 0``; the bandwidth then falls back to 1 rather than dividing by zero.

    >>> round(median_gamma(np.zeros((3, 2)), np.ones((3, 2))), 6)
    0.5
    >>> median_gamma(np.zeros((3, 2)), np.zeros((3, 2)))
    1.0
    """
    from sklearn.metrics.pairwise import euclidean_distances  # loads in ~1.5 s: here, not at start
    dists = euclidean_distances(
        reference[_sample_rows(len(reference))], current[_sample_rows(len(current))]
    )
    sigma2 = float(np.median(dists)) ** 2
    return 1.0 / sigma2 if sigma2 > 0 else 1.0


def pooled_gamma(pooled: np.ndarray) -> float:
    """``1 / sigma²`` with ``sigma`` the median distance between distinct pooled rows (up to
    1000 of them, a seeded sample), whichever window they came from.

    >>> round(pooled_gamma(np.array([[0.0], [1.0], [3.0]])), 6)
    0.25
    """
    from sklearn.metrics.pairwise import euclidean_distances
    rows = pooled[_sample_rows(len(pooled))]
    dists = euclidean_distances(rows)[np.triu_indices(len(rows), k=1)]
    sigma2 = float(np.median(dists)) ** 2
    return 1.0 / sigma2 if sigma2 > 0 else 1.0


def kernel_sum(a: np.ndarray, b: np.ndarray, gamma: float, *, same: bool = False) -> float:
    """Sum of ``k(a_i, b_j)`` over all pairs (``same``: over ``i != j`` of ``a`` with itself)."""
    from sklearn.metrics.pairwise import euclidean_distances
    total = 0.0
    for start in range(0, len(a), BLOCK):
        block = a[start : start + BLOCK]
        d2 = euclidean_distances(block, b, squared=True)
        if same:  # the dot-product form leaves ~1e-15 on the diagonal; the kernel there is 1
            d2[np.arange(len(block)), np.arange(start, start + len(block))] = 0.0
        total += float(np.exp(-gamma * d2).sum())
    return total - len(a) if same else total


def mmd2u(reference: np.ndarray, current: np.ndarray, gamma: float) -> float:
    """The unbiased MMD² of two samples (Gretton et al. 2012, Lemma 6); may be negative."""
    m, n = len(reference), len(current)
    return (
        kernel_sum(reference, reference, gamma, same=True) / (m * (m - 1.0))
        + kernel_sum(current, current, gamma, same=True) / (n * (n - 1.0))
        - 2.0 * kernel_sum(reference, current, gamma) / (m * n)
    )


def score_mmd(
    reference: np.ndarray, current: np.ndarray, threshold: float | None
) -> EmbeddingScore:
    """MMD²u (clipped at 0, as Evidently reports it) against a fixed threshold (0.015)."""
    ref, cur = check_pair(reference, current)
    gamma = median_gamma(ref, cur)
    value = mmd2u(ref, cur, gamma)
    bound = MMD_THRESHOLD if threshold is None else float(threshold)
    return EmbeddingScore(max(value, 0.0), bound, value > bound, {"mmd2u": value, "gamma": gamma})


def permutation_null(
    pooled: np.ndarray, m: int, gamma: float, rounds: int, seed: int = 0
) -> np.ndarray:
    """MMD²u of ``rounds`` random splits of ``pooled`` into ``m`` and the rest.

    With ``a`` the 0/1 indicator of one side, the within-side sum is ``a·K·a - m`` (an RBF
    kernel's diagonal is 1), so all rounds come from one matrix product ``K @ A``.
    """
    from sklearn.metrics.pairwise import euclidean_distances
    n_all = len(pooled)
    n = n_all - m
    sq = euclidean_distances(pooled, squared=True)
    np.fill_diagonal(sq, 0.0)
    kernel = np.exp(-gamma * sq)
    rng = np.random.default_rng(seed)
    first = np.zeros((n_all, rounds))
    for r in range(rounds):
        first[rng.permutation(n_all)[:m], r] = 1.0
    second = 1.0 - first
    k_first = kernel @ first
    total = kernel.sum()
    s_xx = np.einsum("ir,ir->r", first, k_first)
    s_xy = np.einsum("ir,ir->r", second, k_first)
    s_yy = total - s_xx - 2.0 * s_xy
    return (s_xx - m) / (m * (m - 1.0)) + (s_yy - n) / (n * (n - 1.0)) - 2.0 * s_xy / (m * n)


def _cap(rows: np.ndarray, seed: int) -> np.ndarray:
    if len(rows) <= PERMUTATION_MAX_ROWS:
        return rows
    keep = np.random.default_rng(seed).choice(len(rows), PERMUTATION_MAX_ROWS, replace=False)
    return rows[np.sort(keep)]


def score_mmd_permutation(
    reference: np.ndarray, current: np.ndarray, threshold: float | None
) -> EmbeddingScore:
    """MMD²u against the upper ``threshold`` quantile (default 0.95) of its permutation null.

    The reported ``threshold`` is that quantile's MMD²u value; ``p_value`` is
    ``(1 + #null >= observed) / (1 + rounds)``.
    """
    ref, cur = check_pair(reference, current)
    quantile = PERMUTATION_QUANTILE if threshold is None else float(threshold)
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"mmd_permutation's threshold is a quantile in (0, 1), got {quantile}")
    ref, cur = _cap(ref, 1), _cap(cur, 2)
    pooled = np.vstack([ref, cur])
    # the bandwidth must not depend on which rows are "current", or the relabelled splits
    # are not exchangeable with the observed one: the median over pooled pairs
    gamma = pooled_gamma(pooled)
    value = mmd2u(ref, cur, gamma)
    null = permutation_null(pooled, len(ref), gamma, PERMUTATIONS)
    bound = float(np.quantile(null, quantile))
    p_value = float((1 + np.sum(null >= value)) / (1 + PERMUTATIONS))
    return EmbeddingScore(
        max(value, 0.0), bound, value > bound, {"mmd2u": value, "gamma": gamma, "p_value": p_value}
    )
