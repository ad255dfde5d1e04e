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

import numpy as np
import pandas as pd

from drift.stats.columns import Kind

MAX_CATEGORY_VALUES = 20
"""A numeric reference with more distinct values than this is binned (Sturges' rule)."""

ZERO_SHARE = 1e-4
"""What an empty bin's share becomes for PSI, unless a non-empty bin is already this small."""


def binned_shares(
    reference: np.ndarray, current: np.ndarray, kind: Kind
) -> tuple[np.ndarray, np.ndarray]:
    """Reference and current shares over the same bins (or categories).

    Parameters
    ----------
    reference, current
        Cleaned, non-empty columns (see :func:`drift.stats.columns.clean`).
    kind
        ``"numeric"`` or ``"categorical"``; only numeric columns are ever binned.

    >>> r, c = binned_shares(np.array(["a", "a", "b"], dtype=object),
    ...                      np.array(["b", "c"], dtype=object), "categorical")
    >>> r.round(3).tolist(), c.tolist()
    ([0.667, 0.333, 0.0], [0.0, 0.5, 0.5])
    """
    if kind == "numeric" and distinct(reference) > MAX_CATEGORY_VALUES:
        edges = np.histogram_bin_edges(np.concatenate([reference, current]), bins="sturges")
        return (
            np.histogram(reference, edges)[0] / len(reference),
            np.histogram(current, edges)[0] / len(current),
        )
    ref_counts, cur_counts = value_counts(reference, current)
    return ref_counts / len(reference), cur_counts / len(current)


def value_counts(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts of every value of either side, over the same keys (first seen first).

    Hash-counted by pandas: a Python ``Counter`` over a million values is ten times slower.
    Values that compare equal (``1`` and ``1.0``) are one key, as in Evidently.

    >>> value_counts(np.array(["a", "b", "a"], dtype=object), np.array(["c"], dtype=object))
    (array([2, 1, 0]), array([0, 0, 1]))
    """
    ref = pd.Series(reference, copy=False).value_counts(sort=False, dropna=False)
    cur = pd.Series(current, copy=False).value_counts(sort=False, dropna=False)
    keys = ref.index.append(cur.index[~cur.index.isin(ref.index)])
    return (
        ref.reindex(keys, fill_value=0).to_numpy(dtype=np.int64),
        cur.reindex(keys, fill_value=0).to_numpy(dtype=np.int64),
    )


def distinct(values: np.ndarray) -> int:
    """Distinct values of a numeric array (``len(np.unique(values))``, without the copy).

    >>> distinct(np.array([3.0, 1.0, 3.0]))
    2
    """
    if len(values) == 0:
        return 0
    ordered = values if np.all(values[:-1] <= values[1:]) else np.sort(values)
    return int(np.count_nonzero(ordered[1:] != ordered[:-1])) + 1


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
