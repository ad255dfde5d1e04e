"""Jensen-Shannon distance.

``scipy.spatial.distance.jensenshannon(r, c)`` with the natural logarithm (a distance: the
square root of the divergence, at most ``sqrt(ln 2)`` = 0.8326) over the same bins as PSI, with
no filling of empty bins: Evidently 0.7.23's ``jensenshannon`` stattest. Its default threshold
is 0.1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from scipy.spatial import distance

from observer.drift.stats.binning import binned_shares
from observer.drift.stats.columns import Kind
from observer.drift.stats.prepared import Prepared, prepare


def jensenshannon_of_shares(reference: np.ndarray, current: np.ndarray) -> float:
    """Jensen-Shannon distance (natural log) of two share vectors over the same bins.

    SciPy can return NaN when rounding makes the divergence of two almost equal vectors a hair
    below zero; that case is reported as 0.0.

    >>> round(jensenshannon_of_shares(np.array([0.5, 0.5]), np.array([0.6, 0.4])), 7)
    0.0711294
    """
    value = float(distance.jensenshannon(reference, current))
    return 0.0 if math.isnan(value) else value


def jensenshannon(
    reference: Iterable[Any] | Prepared,
    current: Iterable[Any] | Prepared,
    kind: Kind = "categorical",
) -> float | None:
    """Jensen-Shannon distance of two columns, Evidently's ``jensenshannon`` stattest.

    Parameters
    ----------
    reference, current
        Raw column values; ``None``, NaN and ``+-inf`` are dropped first.
    kind
        ``"categorical"`` (counted per value) or ``"numeric"`` (binned like PSI).

    Returns
    -------
    The distance in [0, 0.8326], or ``None`` when either side has no usable value.

    >>> rng = np.random.default_rng(42)
    >>> ref = rng.choice(["stop", "length", "tool_calls"], 1000, p=[0.7, 0.2, 0.1])
    >>> cur = rng.choice(["stop", "length", "tool_calls"], 1000, p=[0.4, 0.2, 0.4])
    >>> round(jensenshannon(ref, cur), 4)
    0.2709
    >>> jensenshannon(["stop"], ["stop", None])
    0.0
    """
    ref, cur = prepare(reference, kind), prepare(current, kind)
    if ref.n == 0 or cur.n == 0:
        return None
    return jensenshannon_of_shares(*binned_shares(ref, cur, kind))
