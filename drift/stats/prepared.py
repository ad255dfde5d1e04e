"""A column prepared once for every statistic: cleaned, then sorted (numeric) or counted
(categorical).

Cleaning, sorting and hashing are nearly all of a window's scoring time; the statistics
themselves then need only a few binary searches and sums over bins. A segment's reference
stays the same for many windows, so the engine and the offline scorer prepare it once
(:func:`observer.drift.scoring.prepare_columns`) and each window prepares only its current side. Every
statistic accepts raw values or a :class:`Prepared` column; a prepared one passes through
:func:`prepare` unchanged.

What each kind keeps (values are always float64: float32 would move results by ~1e-7
relative, too close to the 1e-6 agreement with Evidently):

===============  =========================================================================
numeric          the cleaned values, sorted; lazily their std (population, ``ddof=0``),
                 distinct count and run-length ``(values, counts)``
categorical      the distinct cleaned values and their counts (one pandas hash pass over the
                 raw values; missing and infinite ones are dropped from the counts, which is
                 :func:`observer.drift.stats.columns.clean` followed by counting)
===============  =========================================================================

How the rest follows from sorted arrays, with the same results as the unsorted formulas:

- Sturges edges (:func:`sturges_edges`) need only the size, minimum and maximum of
  ``concat(reference, current)``: ``np.histogram_bin_edges``'s own arithmetic on those three
  numbers, so they are recomputed per window without concatenating anything.
- Histogram counts over edges ``e`` are ``diff(searchsorted(sorted, e))`` (left side, the last
  edge right side), exactly what ``np.histogram`` computes for explicit edges.
- Per-value counts of a numeric column are its run lengths.

>>> ref = prepare([3.0, None, 1.0, 2.0, 2.0], "numeric")
>>> ref.n, ref.values.tolist(), ref.distinct, ref.std == float(np.std([1.0, 2.0, 2.0, 3.0]))
(4, [1.0, 2.0, 2.0, 3.0], 3, True)
>>> cat = prepare(["stop", "", None, "stop", float("inf")], "categorical")
>>> cat.n, list(cat.keys), cat.counts.tolist()
(3, ['stop', ''], [2, 1])
>>> prepare(ref, "numeric") is ref
True
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from observer.drift.stats.columns import Kind, clean

_INFINITIES = [math.inf, -math.inf]


class Prepared:
    """One cleaned column, ready for any statistic (see the module docstring).

    Parameters
    ----------
    kind
        ``"numeric"`` or ``"categorical"``.
    values
        Numeric: the cleaned values, sorted ascending (float64).
    keys, counts
        Categorical: the distinct values (a unique :class:`pandas.Index`) and their counts.
    """

    def __init__(
        self,
        kind: Kind,
        *,
        values: np.ndarray | None = None,
        keys: pd.Index | None = None,
        counts: np.ndarray | None = None,
    ) -> None:
        self.kind = kind
        if kind == "numeric":
            assert values is not None
            self.values = values
            self.n = len(values)
        else:
            assert keys is not None and counts is not None
            self.keys = keys
            self.counts = counts
            self.n = int(counts.sum())

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"Prepared({self.kind}, n={self.n})"

    # -- numeric -----------------------------------------------------------------------------

    @cached_property
    def std(self) -> float:
        """Population standard deviation of a numeric column."""
        return float(np.std(self.values))

    @cached_property
    def runs(self) -> tuple[np.ndarray, np.ndarray]:
        """Distinct values (ascending) and their counts: the run lengths of the sorted column.

        For a categorical column, its keys and counts.
        """
        if self.kind == "categorical":
            return self.keys.to_numpy(), self.counts
        v = self.values
        if len(v) == 0:
            return v, np.zeros(0, dtype=np.int64)
        starts = np.flatnonzero(np.concatenate([[True], v[1:] != v[:-1]]))
        return v[starts], np.diff(np.append(starts, len(v)))

    @cached_property
    def distinct(self) -> int:
        """Distinct values (``Series.nunique()`` of the cleaned column)."""
        if self.kind == "categorical":
            return len(self.keys)
        v = self.values
        return int(np.count_nonzero(v[1:] != v[:-1])) + 1 if len(v) else 0

    def count_at_most(self, edges: np.ndarray) -> np.ndarray:
        """Cumulative counts ``#(x < e)`` for every edge but the last, ``#(x <= e)`` for it."""
        return np.concatenate([
            np.searchsorted(self.values, edges[:-1], side="left"),
            np.searchsorted(self.values, edges[-1:], side="right"),
        ])


def prepare(values: Iterable[Any] | Prepared, kind: Kind) -> Prepared:
    """Clean and sort (numeric) or count (categorical) a column; a :class:`Prepared` one of the
    same kind is returned as it is.

    Parameters
    ----------
    values
        Raw values: ``None``, NaN and ``+-inf`` are dropped; for a categorical column the empty
        string is a value of its own.
    kind
        ``"numeric"`` or ``"categorical"``.
    """
    if isinstance(values, Prepared):
        if values.kind != kind:
            raise ValueError(f"a column prepared as {values.kind} cannot be scored as {kind}")
        return values
    if kind == "numeric":
        return Prepared(kind, values=np.sort(clean(values, kind)))
    if kind != "categorical":
        raise ValueError(f"unknown feature kind {kind!r}; expected 'numeric' or 'categorical'")
    if isinstance(values, np.ndarray) and values.ndim == 1 and values.dtype.kind in "OUS":
        raw = values
    else:
        items = list(values)
        raw = np.empty(len(items), dtype=object)
        raw[:] = items
    # One hash pass over every value, then the missing and infinite keys are dropped from the
    # (few) distinct ones: what clean() + count gives, at half the cost (pandas' own dropna
    # checks every value for missingness, about as slow as the count itself).
    counted = pd.Series(raw, copy=False).value_counts(sort=False, dropna=False)
    keys = counted.index
    if keys.dtype.kind in "Of" and len(keys):
        usable = ~(keys.isna() | keys.isin(_INFINITIES))
        if not usable.all():
            counted = counted[usable]
            keys = counted.index
    return Prepared(kind, keys=keys, counts=counted.to_numpy(dtype=np.int64))


def sturges_edges(low: float, high: float, size: int) -> np.ndarray:
    """``np.histogram_bin_edges(a, bins="sturges")`` from ``a``'s minimum, maximum and size.

    The same operations in the same order as NumPy's ``_get_bin_edges``: width
    ``(max - min) / (log2(size) + 1)``, ``ceil((last - first) / width)`` equal bins, edges by
    ``linspace``; a constant sample gets one bin of width 1 around its value.

    >>> a = np.random.default_rng(0).lognormal(0, 1, 1001)
    >>> bool(np.array_equal(sturges_edges(a.min(), a.max(), a.size),
    ...                     np.histogram_bin_edges(a, bins="sturges")))
    True
    """
    first, last = np.float64(low), np.float64(high)
    width = (last - first) / (np.log2(size) + 1.0)
    if first == last:
        first, last = first - 0.5, last + 0.5
    bins = int(np.ceil((last - first) / width)) if width else 1
    return np.linspace(first, last, bins + 1, endpoint=True, dtype=np.float64)


def union_counts(reference: Prepared, current: Prepared) -> tuple[np.ndarray, np.ndarray]:
    """Counts of every value of either side, over the same keys.

    Categorical: the reference's keys first, then the values only the current has. Numeric:
    the distinct values of both in ascending order.

    >>> union_counts(prepare(["a", "b", "a"], "categorical"), prepare(["c"], "categorical"))
    (array([2, 1, 0]), array([0, 0, 1]))
    >>> union_counts(prepare([2.0, 1.0, 2.0], "numeric"), prepare([3.0, 1.0], "numeric"))
    (array([1, 2, 0]), array([1, 0, 1]))
    """
    if reference.kind == "categorical":
        at = reference.keys.get_indexer(current.keys)
        new = at < 0
        size = len(reference.keys) + int(new.sum())
        ref = np.zeros(size, dtype=np.int64)
        ref[: len(reference.keys)] = reference.counts
        cur = np.zeros(size, dtype=np.int64)
        cur[at[~new]] = current.counts[~new]
        cur[len(reference.keys):] = current.counts[new]
        return ref, cur
    ref_values, ref_counts = reference.runs
    cur_values, cur_counts = current.runs
    keys = np.union1d(ref_values, cur_values)
    ref = np.zeros(len(keys), dtype=np.int64)
    ref[np.searchsorted(keys, ref_values)] = ref_counts
    cur = np.zeros(len(keys), dtype=np.int64)
    cur[np.searchsorted(keys, cur_values)] = cur_counts
    return ref, cur


def n_unique(reference: Prepared, current: Prepared, *, above: int | None = None) -> int:
    """Distinct values of both sides together (``pd.concat([r, c]).nunique()``).

    With ``above``, any count above it may be answered by a cheaper lower bound that is still
    above it (Evidently's choice only asks "more than 2?" and "more than 5?").

    >>> n_unique(prepare([1.0, 2.0], "numeric"), prepare([2.0, 3.0], "numeric"))
    3
    """
    if above is not None and max(reference.distinct, current.distinct) > above:
        return max(reference.distinct, current.distinct)
    if reference.kind == "categorical":
        return len(reference.keys) + int((reference.keys.get_indexer(current.keys) < 0).sum())
    return len(np.union1d(reference.runs[0], current.runs[0]))
