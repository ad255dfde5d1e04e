"""Z-test for two proportions (pooled), two-sided p-value.

Evidently 0.7.23's ``z`` stattest (``stattests/z_stattest.py``): the smallest value (in sorted
order) of the union of both sides is coded 0 and every other value 1; with ``p1``, ``p2`` the
shares of 1 in reference (``n1`` values) and current (``n2``) and the pooled share
``P = (p1 n1 + p2 n2) / (n1 + n2)``::

    z = (p1 - p2) / sqrt(P (1 - P) (1/n1 + 1/n2)),   p = 2 (1 - Phi(|z|))

When both sides hold one and the same single value, ``p = 1``. Drift when ``p < threshold`` (default 0.05).
Meant for binary features (Evidently chooses it for at most 2 distinct values).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from scipy.stats import norm

from observer.drift.stats.columns import Kind
from observer.drift.stats.prepared import Prepared, prepare


def ztest_of_proportions(ones_ref: int, n_ref: int, ones_cur: int, n_cur: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test.

    Follows Evidently's arithmetic (``2 * (1 - Phi(|z|))``, not the survival function) so that
    tiny p-values round the same way. A pooled share of 0 or 1 (no variance) gives ``p = 1``.

    >>> round(ztest_of_proportions(50, 100, 40, 100), 6)
    0.155218
    """
    p1 = ones_ref / n_ref
    p2 = ones_cur / n_cur
    pooled = (p1 * n_ref + p2 * n_cur) / (n_ref + n_cur)
    variance = pooled * (1 - pooled) * (1.0 / n_ref + 1.0 / n_cur)
    if variance == 0:
        return 1.0
    z = (p1 - p2) / math.sqrt(variance)
    return float(2 * (1 - norm.cdf(abs(z))))


def ztest(
    reference: Iterable[Any] | Prepared,
    current: Iterable[Any] | Prepared,
    kind: Kind = "categorical",
) -> float | None:
    """The Z-test p-value of two columns; ``None`` when a side is empty.

    >>> ztest(["ok"] * 95 + ["error"] * 5, ["ok"] * 65 + ["error"] * 35) < 1e-6
    True
    >>> ztest(["ok"] * 3, ["ok"] * 5)
    1.0
    """
    ref, cur = prepare(reference, kind), prepare(current, kind)
    if ref.n == 0 or cur.n == 0:
        return None
    ref_values, ref_counts = ref.runs
    cur_values, cur_counts = cur.runs
    first = min(set(ref_values.tolist()) | set(cur_values.tolist()))
    ones_ref = ref.n - int(ref_counts[ref_values == first].sum())
    ones_cur = cur.n - int(cur_counts[cur_values == first].sum())
    return ztest_of_proportions(ones_ref, ref.n, ones_cur, cur.n)
