"""Pearson's chi-square goodness-of-fit test of the current counts against the reference's.

Evidently 0.7.23's ``chisquare`` stattest (``stattests/chisquare_stattest.py``): over the union
of the values seen on both sides, observed = current counts, expected = reference counts x
``n_cur / n_ref``; the p-value is ``scipy.stats.chisquare(observed, expected)[1]``, i.e.
``P(chi2(k - 1) >= sum((o - e)^2 / e))``. A value never seen in the reference has expected 0,
which makes the statistic infinite and the p-value 0 (SciPy, and so Evidently). A single
category on both sides gives 1.0 where Evidently gives NaN (same verdict: no drift). Drift when
``p < threshold`` (default 0.05). Applies to categorical features and to numeric features
with few distinct values (every value is its own category).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy import stats

from observer.drift.stats.columns import Kind
from observer.drift.stats.prepared import Prepared, prepare, union_counts


def chisquare_of_counts(reference: np.ndarray, current: np.ndarray) -> float:
    """p-value of current counts against reference counts over the same categories.

    >>> round(chisquare_of_counts(np.array([50, 50]), np.array([60, 40])), 6)
    0.0455
    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if len(ref) == 1:
        # One category on both sides: 0 degrees of freedom. SciPy (and Evidently) answer NaN,
        # "not drifted"; 1.0 gives the same verdict and stays a number in JSON.
        return 1.0
    expected = ref * (cur.sum() / ref.sum())
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        # An unseen category divides by an expected count of 0: inf statistic, p = 0,
        # as in Evidently; SciPy warns about it.
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.chisquare(cur, expected)[1])


def chisquare(
    reference: Iterable[Any] | Prepared,
    current: Iterable[Any] | Prepared,
    kind: Kind = "categorical",
) -> float | None:
    """The chi-square p-value of two columns; ``None`` when a side is empty.

    >>> round(chisquare(["a"] * 50 + ["b"] * 50, ["a"] * 60 + ["b"] * 40), 6)
    0.0455
    >>> chisquare(["a"] * 10, ["a"] * 9 + ["new"])
    0.0
    """
    ref, cur = prepare(reference, kind), prepare(current, kind)
    if ref.n == 0 or cur.n == 0:
        return None
    return chisquare_of_counts(*union_counts(ref, cur))
