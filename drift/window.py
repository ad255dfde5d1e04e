"""Count windows: a fixed number of records per (segment, record type).

A count window makes every scored window the same size, so a statistic's noise level does not
change with traffic (time windows would score 3 records at night and 30 000 at noon). The
engine keeps one :class:`CountWindow` per segment and record type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ClosedWindow:
    """A full window: its position in the stream and the collected values per feature."""

    index: int
    """0 for the first window of a stream, then 1, 2, ..."""
    n: int
    """Records in the window (some may have had no value for a given feature)."""
    columns: dict[str, list[Any]] = field(repr=False)
    """Feature name -> the values, in arrival order, missing ones included as ``None``."""


class CountWindow:
    """Collects feature values until ``size`` records arrived, then closes and starts over.

    Parameters
    ----------
    size
        Records per window (``DriftConfig.window_size``).
    features
        Names of the values kept from each record; others are ignored.

    >>> w = CountWindow(size=3, features=["output_tokens"])
    >>> [w.update({"output_tokens": n}) for n in (10, 12)]
    [None, None]
    >>> closed = w.update({"output_tokens": None})
    >>> closed.index, closed.n, closed.columns
    (0, 3, {'output_tokens': [10, 12, None]})
    >>> w.index, len(w)  # the next window is open and empty
    (1, 0)
    """

    def __init__(self, size: int, features: Sequence[str]) -> None:
        if size < 1:
            raise ValueError(f"window size must be at least 1, got {size}")
        self.size = size
        self.features = list(features)
        self.index = 0
        self._columns = self._empty()
        self._n = 0

    def _empty(self) -> dict[str, list[Any]]:
        return {name: [] for name in self.features}

    def __len__(self) -> int:
        return self._n

    def restore(self, index: int, columns: Mapping[str, Sequence[Any]]) -> None:
        """Resume an open window from a checkpoint: its index and the values collected so far.

        >>> w = CountWindow(size=3, features=["x"])
        >>> w.restore(7, {"x": [1, 2]})
        >>> w.update({"x": 3}).index
        7
        """
        lengths = {len(columns.get(name, ())) for name in self.features}
        if len(lengths) > 1:
            raise ValueError(f"checkpointed columns differ in length: {sorted(lengths)}")
        n = lengths.pop() if lengths else 0
        if n >= self.size:
            raise ValueError(f"checkpointed window holds {n} records, size is {self.size}")
        self.index = index
        self._columns = {name: list(columns.get(name, ())) for name in self.features}
        self._n = n

    def column(self, name: str) -> list[Any]:
        """The open window's values of one feature so far (a live view: do not modify)."""
        return self._columns[name]

    def update(self, row: Mapping[str, Any]) -> ClosedWindow | None:
        """Add one record's values; returns the window when this record filled it.

        A feature missing from ``row`` is recorded as ``None``.
        """
        for name, column in self._columns.items():
            column.append(row.get(name))
        self._n += 1
        if self._n < self.size:
            return None
        closed = ClosedWindow(self.index, self._n, self._columns)
        self.index += 1
        self._columns = self._empty()
        self._n = 0
        return closed
