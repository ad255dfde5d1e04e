"""Normalised Wasserstein (earth mover's) distance.

``scipy.stats.wasserstein_distance(ref, cur) / max(np.std(ref), 0.001)``, with the population
standard deviation (``ddof=0``): Evidently 0.7.23's ``wasserstein`` stattest
(``stattests/wasserstein_distance_norm.py``). Dividing by the reference's spread makes the
threshold (Evidently's default: 0.1, "the mean moved by a tenth of a standard deviation")
independent of the feature's unit. Numeric features only.

The empirical distance of two samples of one distribution is not 0 and shrinks like
``1/sqrt(n)``: measured here on normal data (300 pairs per size), its mean was 0.123 at
200 vs 200 values, 0.080 at 500 and 0.056 at 1000, and 63 %, 18 % and 2 % of the pairs reached
0.1. That is why Evidently chooses it by default only for references above 1000 rows (KS
below); with smaller windows prefer ``psi`` or a higher threshold.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy import stats  # noqa: F401  (the doctest compares with SciPy)

from observer.drift.stats.columns import Kind
from observer.drift.stats.prepared import Prepared, prepare

MIN_NORM = 0.001
"""Floor of the reference standard deviation, so a constant reference does not divide by 0."""


def wasserstein_norm(
    reference: Iterable[Any] | Prepared,
    current: Iterable[Any] | Prepared,
    kind: Kind = "numeric",
) -> float | None:
    """Wasserstein distance of two numeric columns, in reference standard deviations.

    Parameters
    ----------
    reference, current
        Raw numeric values; ``None``, NaN and ``+-inf`` are dropped first.
    kind
        Must be ``"numeric"``: the distance needs an order and a unit.

    Returns
    -------
    The statistic, or ``None`` when either side has no usable value.

    >>> rng = np.random.default_rng(42)
    >>> ref = rng.normal(100, 10, 1000)
    >>> round(wasserstein_norm(ref, rng.normal(100, 10, 1000)), 4)
    0.0592
    >>> round(wasserstein_norm(ref, rng.normal(110, 10, 1000)), 4)
    1.0747
    """
    if kind != "numeric":
        raise ValueError("the Wasserstein distance applies to numeric features only")
    ref, cur = prepare(reference, kind), prepare(current, kind)
    if ref.n == 0 or cur.n == 0:
        return None
    return wasserstein_of_sorted(ref.values, cur.values) / max(ref.std, MIN_NORM)


def wasserstein_of_sorted(u: np.ndarray, v: np.ndarray) -> float:
    """W1 of two sorted, non-empty samples, through their quantile functions.

    ``W1 = integral over t in [0, 1) of |Q_u(t) - Q_v(t)|``, and the empirical quantile
    functions are steps at ``i/n`` and ``j/m``. The steps are merged on the integer grid
    ``i*m`` and ``j*n`` (so no rounding decides the order), which needs two sorted arrays and
    no further sort: the same value as ``scipy.stats.wasserstein_distance`` (its CDF form),
    several times faster, and with equal sizes simply ``mean(|u - v|)``.

    >>> round(wasserstein_of_sorted(np.array([0.0, 1.0, 3.0]), np.array([5.0, 6.0])), 6)
    4.166667
    >>> round(float(stats.wasserstein_distance([0.0, 1.0, 3.0], [5.0, 6.0])), 6)
    4.166667
    """
    n, m = len(u), len(v)
    if n == m:
        return float(np.mean(np.abs(u - v)))
    steps = np.union1d(np.arange(n, dtype=np.int64) * m, np.arange(m, dtype=np.int64) * n)
    widths = np.diff(np.append(steps, n * m)) / (n * m)
    return float(np.sum(widths * np.abs(u[steps // m] - v[steps // n])))
