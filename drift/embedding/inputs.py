"""The two matrices an embedding drift method scores, checked once, before any arithmetic.

Vectors come from clients (trace attributes, a configured embedder), so every shape and value
is suspect: a method gets two 2-D float64 arrays with the same number of columns, enough rows,
and (unless it imputes) only finite values, or a :class:`ValueError` that names the problem.

>>> ref, cur = check_pair([[0, 1], [1, 0]], [[1, 1], [0, 0]])
>>> ref.dtype, ref.shape, cur.shape
(dtype('float64'), (2, 2), (2, 2))
>>> check_pair([[0, 1], [1, 0]], [[1, 1, 1], [0, 0, 0]])
Traceback (most recent call last):
...
ValueError: reference has 2 dimensions but current has 3
"""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_ABS = 1e100
"""Largest accepted magnitude: squared distances of such values still fit a float64 (a client
sending 1e300 would otherwise turn every statistic into infinity or NaN)."""


def as_matrix(name: str, values: Any, *, min_rows: int = 2, allow_nan: bool = False) -> np.ndarray:
    """``values`` as an ``(n, d)`` float64 array; ``name`` says which side in errors.

    >>> as_matrix("current", [[1.0, float("inf")], [0.0, 0.0]])
    Traceback (most recent call last):
    ...
    ValueError: current holds non-finite values (NaN or infinity)
    >>> as_matrix("reference", [[1e300, 0.0], [0.0, 0.0]])
    Traceback (most recent call last):
    ...
    ValueError: reference holds values beyond +-1e+100
    """
    try:
        matrix = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} is not a numeric matrix: {exc}") from None
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows x dimensions), got {matrix.ndim}-D")
    if matrix.shape[1] == 0:
        raise ValueError(f"{name} has no dimensions")
    if matrix.shape[0] < min_rows:
        raise ValueError(
            f"{name} has {matrix.shape[0]} rows; this method needs at least {min_rows}"
        )
    bad = np.isinf(matrix) if allow_nan else ~np.isfinite(matrix)
    if bad.any():
        what = "infinite values" if allow_nan else "non-finite values (NaN or infinity)"
        raise ValueError(f"{name} holds {what}")
    if np.nanmax(np.abs(matrix), initial=0.0) > MAX_ABS:
        raise ValueError(f"{name} holds values beyond +-{MAX_ABS:g}")
    return matrix


def check_pair(
    reference: Any, current: Any, *, min_rows: int = 2, allow_nan: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Both sides through :func:`as_matrix`, and the same dimension on both."""
    ref = as_matrix("reference", reference, min_rows=min_rows, allow_nan=allow_nan)
    cur = as_matrix("current", current, min_rows=min_rows, allow_nan=allow_nan)
    if ref.shape[1] != cur.shape[1]:
        raise ValueError(
            f"reference has {ref.shape[1]} dimensions but current has {cur.shape[1]}"
        )
    return ref, cur
