"""Windows per (segment, record type): by count, or by event time (tumbling and sliding).

- :class:`CountWindow`: a fixed number of records per window, so a statistic's noise level
  does not change with traffic (time windows would score 3 records at night and 30 000 at
  noon). The default.
- :class:`TimeWindow`: windows of ``size`` nanoseconds of *event time*, aligned on the Unix
  epoch, advancing by ``slide`` (``slide == size``: tumbling). Event time is what the engine
  passes: the record's ``start_time_unix_nano``, else its Kafka timestamp. A window
  ``[start, end)`` closes when the largest event time seen in the stream passes
  ``end + lateness``; a record for a window that already closed is late and dropped
  (:attr:`TimeWindow.late` counts them). Windows close on event time only, never on the
  wall clock, so a replay closes the same windows with the same records (exactly-once
  checkpoints rely on that); a segment that goes quiet keeps its last window open until its
  next record. Empty windows are skipped and do not take an index.

Values are held by a *store*, chosen per stream: :class:`ExactValues` (raw values, the
default) or :class:`SketchValues` (bounded sketches, :mod:`observer.drift.sketch`). Sliding windows
keep one store per ``slide``-long pane and merge the panes of a window when it closes, so a
record is stored once however many windows it belongs to.

Checkpoints: :meth:`checkpoint` returns the rows added since its last call, and after a
window closed a *state* (the open panes) to store with them; ``restore`` takes both back.

>>> w = TimeWindow(size=10, slide=10, features=["x"])
>>> [w.update({"x": v}, t) for v, t in ((1, 3), (2, 7), (3, 12))][-1][0].columns
{'x': [1, 2]}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from observer.drift.embedding.columns import EMBEDDING_KIND, Reservoir
from observer.drift.sketch import Sketch, new_sketch, sketch_from_json, sketch_to_json

TIME = "@t"
"""Name of the event-time column in checkpointed rows of time windows."""


@dataclass(frozen=True)
class ClosedWindow:
    """A full window: its position in the stream and its values per feature."""

    index: int
    """0 for the first window of a stream, then 1, 2, ..."""
    n: int
    """Records in the window (some may have had no value for a given feature)."""
    columns: dict[str, list[Any]] = field(repr=False, default_factory=dict)
    """Exact mode: feature name -> the values, in arrival order, missing ones as ``None``."""
    sketches: dict[str, Sketch] | None = field(repr=False, default=None)
    """Sketch mode: feature name -> its sketch (``columns`` is then empty)."""
    start: int | None = None
    """Time windows: event-time start (inclusive), Unix ns."""
    end: int | None = None
    """Time windows: event-time end (exclusive), Unix ns."""
    external: str | None = None
    """Where a reference that is not a window of the stream came from (``parquet``)."""


# --- value stores ------------------------------------------------------------------------------


class ValueStore(Protocol):
    """One window's (or pane's) values."""

    n: int

    def add(self, row: Mapping[str, Any]) -> None: ...

    def merge(self, other: Any) -> None: ...

    def close(self, index: int, start: int | None = None, end: int | None = None) -> ClosedWindow: ...

    def to_json(self) -> dict[str, Any]: ...


class ExactValues:
    """Raw values per feature.

    >>> s = ExactValues(["x"]); s.add({"x": 1}); s.add({}); s.close(0).columns
    {'x': [1, None]}
    """

    def __init__(self, features: Sequence[str]) -> None:
        self.columns: dict[str, list[Any]] = {name: [] for name in features}
        self.n = 0

    def add(self, row: Mapping[str, Any]) -> None:
        for name, column in self.columns.items():
            column.append(row.get(name))
        self.n += 1

    def merge(self, other: ExactValues) -> None:
        for name, column in self.columns.items():
            column.extend(other.columns[name])
        self.n += other.n

    def close(self, index: int, start: int | None = None, end: int | None = None) -> ClosedWindow:
        return ClosedWindow(index, self.n, self.columns, None, start, end)

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "columns": {k: list(v) for k, v in self.columns.items()}}

    def load(self, data: Mapping[str, Any]) -> None:
        self.n = int(data["n"])
        self.columns = {name: list(data["columns"][name]) for name in self.columns}


class SketchValues:
    """One sketch per feature (:func:`observer.drift.sketch.new_sketch`).

    Parameters
    ----------
    kinds
        Feature name -> ``numeric``, ``categorical`` or ``embedding``.
    relative_accuracy, top_k
        The sketches' resolution (``drift.sketch_relative_accuracy``, ``drift.sketch_top_k``).
    embedding_rows
        Rows sampled per embedding feature (``drift.sketch_embedding_rows``): a seeded
        reservoir (:class:`observer.drift.embedding.columns.Reservoir`).
    """

    def __init__(self, kinds: Mapping[str, str], relative_accuracy: float, top_k: int,
                 embedding_rows: int = 512) -> None:
        self.sketches = {
            name: Reservoir(embedding_rows) if kind == EMBEDDING_KIND  # type: ignore[misc]
            else new_sketch(kind, relative_accuracy, top_k)
            for name, kind in kinds.items()
        }
        self.n = 0

    def add(self, row: Mapping[str, Any]) -> None:
        for name, sketch in self.sketches.items():
            sketch.add(row.get(name))
        self.n += 1

    def merge(self, other: SketchValues) -> None:
        for name, sketch in self.sketches.items():
            sketch.merge(other.sketches[name])  # type: ignore[arg-type]
        self.n += other.n

    def close(self, index: int, start: int | None = None, end: int | None = None) -> ClosedWindow:
        for sketch in self.sketches.values():
            sketch.flush()
        return ClosedWindow(index, self.n, {}, self.sketches, start, end)

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "sketches": {k: sketch_to_json(s) for k, s in self.sketches.items()}}

    def load(self, data: Mapping[str, Any]) -> None:
        self.n = int(data["n"])
        self.sketches = {k: sketch_from_json(v) for k, v in data["sketches"].items()}

    def nbytes(self) -> int:
        return sum(s.nbytes() for s in self.sketches.values())


StoreFactory = Callable[[], "ExactValues | SketchValues"]


def _rows_to_columns(rows: list[dict[str, Any]], names: Sequence[str]) -> dict[str, list[Any]]:
    return {name: [r.get(name) for r in rows] for name in names}


# --- count windows -----------------------------------------------------------------------------


class CountWindow:
    """Collects feature values until ``size`` records arrived, then closes and starts over.

    Parameters
    ----------
    size
        Records per window (``DriftConfig.window_size``).
    features
        Names of the values kept from each record; others are ignored.
    store
        Makes an empty value store; default: exact values.
    journal
        Keep the rows added since the last :meth:`checkpoint` (sketch stores forget raw rows
        otherwise; exact stores have them anyway).

    >>> w = CountWindow(size=3, features=["output_tokens"])
    >>> [w.update({"output_tokens": n}) for n in (10, 12)]
    [None, None]
    >>> closed = w.update({"output_tokens": None})
    >>> closed.index, closed.n, closed.columns
    (0, 3, {'output_tokens': [10, 12, None]})
    >>> w.index, len(w)  # the next window is open and empty
    (1, 0)
    """

    def __init__(
        self,
        size: int,
        features: Sequence[str],
        store: StoreFactory | None = None,
        *,
        journal: bool = True,
    ) -> None:
        if size < 1:
            raise ValueError(f"window size must be at least 1, got {size}")
        self.size = size
        self.features = list(features)
        self.index = 0
        self._factory: StoreFactory = store or (lambda: ExactValues(self.features))
        self._journal_on = journal
        self._store = self._factory()
        self._journal: list[dict[str, Any]] = []
        self._saved = 0

    def __len__(self) -> int:
        return self._store.n

    @property
    def exact(self) -> bool:
        return isinstance(self._store, ExactValues)

    def restore(
        self, index: int, columns: Mapping[str, Sequence[Any]], state: Any = None
    ) -> None:
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
        self._store = self._factory()
        for i in range(n):
            self._store.add({name: columns[name][i] for name in self.features if name in columns})
        self._journal = []
        self._saved = n

    def column(self, name: str) -> list[Any]:
        """Exact mode: the open window's values of one feature so far (a live view)."""
        if not isinstance(self._store, ExactValues):
            raise TypeError("a sketched window keeps no raw values")
        return self._store.columns[name]

    def update(self, row: Mapping[str, Any], event_time: int | None = None) -> ClosedWindow | None:
        """Add one record's values; returns the window when this record filled it.

        A feature missing from ``row`` is recorded as ``None``; ``event_time`` is ignored.
        """
        self._store.add(row)
        if self._journal_on and not isinstance(self._store, ExactValues):
            self._journal.append({name: row.get(name) for name in self.features})
        if self._store.n < self.size:
            return None
        closed = self._store.close(self.index)
        self.index += 1
        self._store = self._factory()
        self._journal = []
        self._saved = 0
        return closed

    def checkpoint(self) -> tuple[dict[str, list[Any]], dict[str, Any] | None]:
        """Rows added since the last call (per feature), and no state (rows suffice)."""
        if isinstance(self._store, ExactValues):
            rows = {name: self._store.columns[name][self._saved:] for name in self.features}
        else:
            rows = _rows_to_columns(self._journal, self.features)
            self._journal = []
        self._saved = self._store.n
        return rows, None


# --- time windows ------------------------------------------------------------------------------


class TimeWindow:
    """Tumbling (``slide == size``) or sliding windows of event time; see the module doc.

    Parameters
    ----------
    size, slide
        Window length and step in nanoseconds; ``slide`` must divide ``size``.
    features
        Names of the values kept.
    lateness
        A window ``[start, end)`` closes once an event time ``>= end + lateness`` was seen.
    store, journal
        As for :class:`CountWindow`.

    >>> w = TimeWindow(size=10, slide=5, features=["x"])
    >>> closed = [c for v, t in ((1, 0), (2, 6), (3, 11), (4, 16)) for c in w.update({"x": v}, t)]
    >>> [(c.index, c.start, c.end, c.columns["x"]) for c in closed]
    [(0, 0, 10, [1, 2]), (1, 5, 15, [2, 3])]
    >>> w.update({"x": 0}, 4), w.late  # its windows closed already
    ([], 1)
    """

    def __init__(
        self,
        size: int,
        slide: int,
        features: Sequence[str],
        lateness: int = 0,
        store: StoreFactory | None = None,
        *,
        journal: bool = True,
    ) -> None:
        if size <= 0 or slide <= 0 or size % slide:
            raise ValueError(f"slide ({slide} ns) must be positive and divide size ({size} ns)")
        if lateness < 0:
            raise ValueError(f"allowed lateness must be >= 0, got {lateness}")
        self.size, self.slide, self.lateness = size, slide, lateness
        self.features = list(features)
        self.index = 0
        self.late = 0
        self._factory: StoreFactory = store or (lambda: ExactValues(self.features))
        self._journal_on = journal
        self._panes: dict[int, ExactValues | SketchValues] = {}
        self._next_start: int | None = None  # start of the next window to close
        self._max_time: int | None = None
        self._journal: list[dict[str, Any]] = []
        self._closed_since_checkpoint = False

    def __len__(self) -> int:
        return sum(p.n for p in self._panes.values())

    def update(self, row: Mapping[str, Any], event_time: int | None = None) -> list[ClosedWindow]:
        """Add one record at ``event_time`` (ns); returns the windows this record closed."""
        t = event_time if event_time is not None else (self._max_time or 0)
        pane = t - t % self.slide
        if self._next_start is not None and pane < self._next_start:
            self.late += 1  # every window holding this pane has closed
            return []
        if self._next_start is None:
            self._next_start = pane  # the first window starts with the first record
        store = self._panes.get(pane)
        if store is None:
            store = self._panes[pane] = self._factory()
        store.add(row)
        if self._journal_on:
            self._journal.append({**{n: row.get(n) for n in self.features}, TIME: t})
        self._max_time = t if self._max_time is None else max(self._max_time, t)
        return self._close(self._max_time - self.lateness)

    def _close(self, watermark: int) -> list[ClosedWindow]:
        closed: list[ClosedWindow] = []
        while self._next_start is not None and self._next_start + self.size <= watermark:
            start = self._next_start
            end = start + self.size
            panes = [p for p in sorted(self._panes) if start <= p < end]
            if panes:
                merged = self._factory()
                for p in panes:
                    merged.merge(self._panes[p])  # type: ignore[arg-type]
                if merged.n:
                    closed.append(merged.close(self.index, start, end))
                    self.index += 1
                    self._closed_since_checkpoint = True
            nxt = start + self.slide
            for p in [p for p in self._panes if p < nxt]:
                del self._panes[p]
            if self._panes:
                # Skip windows that would hold no pane (a quiet stretch of the stream).
                first = min(self._panes)
                nxt = max(nxt, first - self.size + self.slide)
            self._next_start = nxt
        return closed

    def checkpoint(self) -> tuple[dict[str, list[Any]], dict[str, Any] | None]:
        """Rows since the last call; after a window closed, the open panes instead."""
        if self._closed_since_checkpoint:
            self._closed_since_checkpoint = False
            self._journal = []
            return {}, self.state()
        rows = _rows_to_columns(self._journal, [*self.features, TIME])
        self._journal = []
        return rows, None

    def state(self) -> dict[str, Any]:
        """Everything needed to resume: open panes, the next window, the largest event time."""
        return {
            "kind": "time",
            "next_start": self._next_start,
            "max_time": self._max_time,
            "late": self.late,
            "panes": [[p, s.to_json()] for p, s in sorted(self._panes.items())],
        }

    def restore(
        self, index: int, columns: Mapping[str, Sequence[Any]], state: Mapping[str, Any] | None = None
    ) -> None:
        """Resume from a checkpoint: the state of the window's first chunk, then the rows."""
        self.index = index
        self._panes = {}
        self._next_start = self._max_time = None
        if state is not None:
            if state.get("kind") != "time":
                raise ValueError("checkpointed state is not a time window's")
            self._next_start, self._max_time = state["next_start"], state["max_time"]
            self.late = int(state.get("late", 0))
            for p, data in state["panes"]:
                store = self._factory()
                store.load(data)  # type: ignore[union-attr]
                self._panes[int(p)] = store
        times = columns.get(TIME, [])
        if any(len(columns.get(name, ())) != len(times) for name in self.features):
            raise ValueError("checkpointed rows of a time window differ in length")
        journal = self._journal_on
        self._journal_on = False
        for i, t in enumerate(times):
            if self.update({name: columns[name][i] for name in self.features}, t):
                raise ValueError("replaying checkpointed rows closed a window")
        self._journal_on = journal
        self._journal = []
        self._closed_since_checkpoint = False


Window = CountWindow | TimeWindow
