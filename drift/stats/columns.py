"""Column cleaning, the first step of every statistic.

Evidently 0.7 cleans a column before any test (``legacy/calculations/data_drift.py``):
``+-inf`` become NaN and NaN are dropped. Here ``None`` is dropped as well, since records carry
missing values as ``None``. Evidently raises on an empty column; the statistics here return
``None`` instead ("no verdict"), which a streaming engine can report without stopping.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import pandas as pd

Kind = Literal["numeric", "categorical"]
"""How a feature is compared: numeric (binned when it has many values) or categorical."""


class Cleaned(np.ndarray):
    """An array :func:`clean` returned: cleaning it again is free (statistics clean their
    inputs, and one window's column goes through several statistics)."""


def clean(values: Iterable[Any], kind: Kind) -> np.ndarray:
    """The usable values of a column, in their original order.

    Parameters
    ----------
    values
        Raw column values; ``None``, NaN and ``+-inf`` are dropped.
    kind
        ``"numeric"`` returns a ``float64`` array; ``"categorical"`` an ``object`` array that
        keeps each value as it is (the empty string ``""`` is a category of its own).

    >>> clean([1, None, float("inf"), 2.5, float("nan")], "numeric").tolist()
    [1.0, 2.5]
    >>> clean(["stop", "", None, "length"], "categorical").tolist()
    ['stop', '', 'length']
    """
    if isinstance(values, Cleaned):
        return values
    return _clean(values, kind).view(Cleaned)


def _clean(values: Iterable[Any], kind: Kind) -> np.ndarray:
    if kind == "numeric":
        if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
            arr = values.astype(np.float64, copy=False)  # already numbers: no Python loop
        else:
            arr = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
        return arr[np.isfinite(arr)]
    if kind == "categorical":
        if isinstance(values, np.ndarray) and values.dtype.kind in "OUS" and values.ndim == 1:
            if values.dtype.kind != "O":
                return values.astype(object)  # fixed-width strings hold no missing values
            # Vectorised: None and NaN by pandas, +-inf by a hash lookup.
            series = pd.Series(values, copy=False)
            keep = (series.notna() & ~series.isin(_INFINITIES)).to_numpy()
            return values if keep.all() else values[keep]
        kept = [v for v in values if v is not None and not _is_non_finite_float(v)]
        out = np.empty(len(kept), dtype=object)
        out[:] = kept
        return out
    raise ValueError(f"unknown feature kind {kind!r}; expected 'numeric' or 'categorical'")


_INFINITIES = [math.inf, -math.inf]


def _is_non_finite_float(v: Any) -> bool:
    return isinstance(v, float) and not math.isfinite(v)
