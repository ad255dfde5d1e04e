"""Population Stability Index (PSI).

``PSI = sum((r - c) * ln(r / c))`` over the reference shares ``r`` and current shares ``c`` of
the same bins, with empty bins filled as Evidently 0.7.23 does (``stattests/psi.py``, see
:func:`observer.drift.stats.binning.fill_zero_shares`). Evidently's default threshold is 0.1.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from observer.drift.stats.binning import binned_shares, fill_zero_shares
from observer.drift.stats.columns import Kind
from observer.drift.stats.prepared import Prepared, prepare


def psi_of_shares(reference: np.ndarray, current: np.ndarray) -> float:
    """PSI of two share vectors over the same bins; zero shares are filled first.

    >>> round(psi_of_shares(np.array([0.5, 0.5]), np.array([0.6, 0.4])), 7)
    0.0405465
    """
    r = fill_zero_shares(reference)
    c = fill_zero_shares(current)
    return float(np.sum((r - c) * np.log(r / c)))


def psi(
    reference: Iterable[Any] | Prepared, current: Iterable[Any] | Prepared, kind: Kind = "numeric"
) -> float | None:
    """PSI of two columns, Evidently's ``psi`` stattest.

    Parameters
    ----------
    reference, current
        Raw column values; ``None``, NaN and ``+-inf`` are dropped first.
    kind
        ``"numeric"`` (binned with Sturges' rule when the reference has more than 20 distinct
        values) or ``"categorical"``.

    Returns
    -------
    The statistic, or ``None`` when either side has no usable value.

    >>> rng = np.random.default_rng(42)
    >>> ref = rng.normal(100, 10, 1000)
    >>> round(psi(ref, rng.normal(100, 10, 1000)), 4), round(psi(ref, rng.normal(110, 10, 1000)), 4)
    (0.0178, 1.1158)
    >>> round(psi(["stop"] * 5 + ["length"] * 5, ["stop"] * 6 + ["length"] * 4, "categorical"), 7)
    0.0405465
    >>> psi([], [1.0]) is None
    True
    """
    ref, cur = prepare(reference, kind), prepare(current, kind)
    if ref.n == 0 or cur.n == 0:
        return None
    return psi_of_shares(*binned_shares(ref, cur, kind))
