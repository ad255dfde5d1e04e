"""Shares per bin: how PSI and Jensen-Shannon see two columns.

The rules are Evidently 0.7.23's ``get_binned_data``
(``legacy/calculations/stattests/utils.py``):

- a numeric column whose *reference* has more than :data:`MAX_CATEGORY_VALUES` distinct values
  is binned with ``np.histogram_bin_edges(concat(reference, current), bins="sturges")``, and each
  side's counts are divided by its length;
- anything else (a categorical column, or a numeric one with few values) is counted per value
  over the union of the values seen on both sides.

PSI then replaces zero shares (:func:`fill_zero_shares`); Jensen-Shannon uses them as they are.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from observer.drift.stats.columns import Kind
from observer.drift.stats.prepared import Prepared, prepare, sturges_edges, union_counts

MAX_CATEGORY_VALUES = 20
"""A numeric reference with more distinct values than this is binned (Sturges' rule)."""

ZERO_SHARE = 1e-4
"""What an empty bin's share becomes for PSI, unless a non-empty bin is already this small."""


def binned_shares(
    reference: Iterable[Any] | Prepared, current: Iterable[Any] | Prepared, kind: Kind
) -> tuple[np.ndarray, np.ndarray]:
    """Reference and current shares over the same bins (or categories).

    Parameters
    ----------
    reference, current
        Non-empty columns: raw, cleaned or :class:`~observer.drift.stats.prepared.Prepared` (the sorted
        form makes the histogram a few binary searches, see :mod:`observer.drift.stats.prepared`).
    kind
        ``"numeric"`` or ``"categorical"``; only numeric columns are ever binned.

    >>> r, c = binned_shares(np.array(["a", "a", "b"], dtype=object),
    ...                      np.array(["b", "c"], dtype=object), "categorical")
    >>> r.round(3).tolist(), c.tolist()
    ([0.667, 0.333, 0.0], [0.0, 0.5, 0.5])
    """
    ref, cur = prepare(reference, kind), prepare(current, kind)
    if kind == "numeric" and ref.distinct > MAX_CATEGORY_VALUES:
        edges = sturges_edges(
            min(ref.values[0], cur.values[0]), max(ref.values[-1], cur.values[-1]), ref.n + cur.n
        )
        return np.diff(ref.count_at_most(edges)) / ref.n, np.diff(cur.count_at_most(edges)) / cur.n
    ref_counts, cur_counts = union_counts(ref, cur)
    return ref_counts / ref.n, cur_counts / cur.n


def fill_zero_shares(shares: np.ndarray) -> np.ndarray:
    """A copy with every zero share replaced, as Evidently does before PSI.

    Zeros become :data:`ZERO_SHARE` (1e-4), or ``min_nonzero / 1e6`` when the smallest non-zero
    share is already <= 1e-4. There is no renormalisation: the shares may sum to a little more
    than 1, exactly as in Evidently.

    >>> fill_zero_shares(np.array([0.5, 0.5, 0.0])).tolist()
    [0.5, 0.5, 0.0001]
    >>> fill_zero_shares(np.array([0.99995, 0.00005, 0.0])).tolist()
    [0.99995, 5e-05, 5e-11]
    """
    out = np.array(shares, dtype=np.float64)
    nonzero = out[out != 0]
    if len(nonzero) == 0:
        return out
    smallest = nonzero.min()
    out[out == 0] = smallest / 1e6 if smallest <= ZERO_SHARE else ZERO_SHARE
    return out
