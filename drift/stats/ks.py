"""Two-sample Kolmogorov-Smirnov test (p-value).

``scipy.stats.ks_2samp(ref, cur)`` two-sided p-value, as Evidently 0.7.23's ``ks`` stattest
(``stattests/ks_stattest.py``): the statistic is ``D = sup_x |F_ref(x) - F_cur(x)|`` and the
p-value is SciPy's (exact for small samples, asymptotic for large ones: ``method="auto"``).
Drift when ``p <= threshold`` (default 0.05). Numeric features only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from scipy import stats

from observer.drift.stats.columns import Kind
from observer.drift.stats.prepared import Prepared, prepare


def ks(
    reference: Iterable[Any] | Prepared, current: Iterable[Any] | Prepared, kind: Kind = "numeric"
) -> float | None:
    """The two-sided KS p-value of two numeric columns; ``None`` when a side is empty.

    >>> import numpy as np
    >>> rng = np.random.default_rng(42)
    >>> ref = rng.normal(0, 1, 500)
    >>> ks(ref, rng.normal(0, 1, 500)) > 0.05, ks(ref, rng.normal(0.5, 1, 500)) < 1e-6
    (True, True)
    """
    if kind != "numeric":
        raise ValueError("the KS test applies to numeric features only")
    ref, cur = prepare(reference, kind), prepare(current, kind)
    if ref.n == 0 or cur.n == 0:
        return None
    return float(stats.ks_2samp(ref.values, cur.values)[1])
