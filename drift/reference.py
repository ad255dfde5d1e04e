"""What each segment's windows are scored against (``drift.reference``), and the windows of a
stream built from the configuration.

==================  =========================================================================
``first_window``    the stream's first window (index 0); windows 1, 2, ... are scored.
``first_n``         the stream's first ``reference_records`` records, whatever the window
                    kind; windows after them are numbered from 1. The default (2000
                    records, so that Evidently's ``auto`` choice picks Wasserstein and
                    Jensen-Shannon).
``time_range``      the records whose event time is in ``[reference_start, reference_end)``.
                    Earlier records are skipped; the first record at or past the end closes
                    the reference and starts the windows (numbered from 1); a record of the
                    range that arrives after that is late and dropped. A segment with no
                    record in the range has an empty reference: its features get no
                    statistic, so it never drifts.
``parquet``         a Parquet file or directory (``reference_path``) read at start. When it
                    has a column for every segment key of the record type, each segment's
                    reference is its rows; otherwise all rows are every segment's reference.
                    Columns are the feature names; a record type with none of its features
                    in the dataset, or a segment with no rows, falls back to
                    ``first_window``. Windows are numbered from 1.
==================  =========================================================================

The reference is held exactly or as sketches, like the stream's windows (``drift.mode``).

>>> from observer.drift.config import DriftConfig, FeatureSpec
>>> cfg = DriftConfig(window_size=10, reference="first_n", reference_records=3)
>>> w = new_window(cfg, [FeatureSpec(name="x", kind="numeric")])
>>> [w.update({"x": v}, 0) for v in (1, 2, 3)][-1][0].columns, w.index
({'x': [1, 2, 3]}, 1)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from observer.drift.record_types import segment_keys
from observer.drift.window import (
    TIME,
    ClosedWindow,
    CountWindow,
    ExactValues,
    SketchValues,
    StoreFactory,
    TimeWindow,
    _rows_to_columns,
)
from observer.core.config import parse_instant
from observer.core.extras import require
from observer.drift.config import DriftConfig, FeatureSpec

log = logging.getLogger(__name__)

_NS = 1_000_000_000


def store_factory(cfg: DriftConfig, specs: Sequence[FeatureSpec], sketch: bool) -> StoreFactory:
    """Makes empty value stores: raw values, or sketches of ``cfg``'s resolution."""
    names = [s.name for s in specs]
    if not sketch:
        return lambda: ExactValues(names)
    kinds = {s.name: s.kind for s in specs}
    return lambda: SketchValues(kinds, cfg.sketch_relative_accuracy, cfg.sketch_top_k,
                                cfg.sketch_embedding_rows)


class ReferenceFirst:
    """A reference collected from the stream (first N records, or a time range), then the
    stream's regular windows (numbered from 1). Window-like: ``update``, ``checkpoint``,
    ``restore``, ``index``.

    Parameters
    ----------
    regular
        The windows that follow the reference.
    features
        Feature names.
    store
        Makes the reference's value store.
    records
        ``first_n``: records in the reference.
    start, end
        ``time_range``: the event-time range, Unix ns.
    journal
        Keep rows for checkpoints.
    base
        The index the reference is collected at (0 for a stream's first; a rebaseline
        collects at a later index, never reusing one); the windows after it start at
        ``base + 1``.
    """

    def __init__(
        self,
        regular: CountWindow | TimeWindow,
        features: Sequence[str],
        store: StoreFactory,
        *,
        records: int | None = None,
        start: int | None = None,
        end: int | None = None,
        journal: bool = True,
        base: int = 0,
    ) -> None:
        self.regular = regular
        self.base = base
        self.regular.index = base + 1
        self.features = list(features)
        self._factory = store
        self._records, self._start, self._end = records, start, end
        self._store: ExactValues | SketchValues | None = store()
        self._journal_on = journal
        self._journal: list[dict[str, Any]] = []

    @property
    def collecting(self) -> bool:
        return self._store is not None

    @property
    def index(self) -> int:
        return self.base if self.collecting else self.regular.index

    @property
    def late(self) -> int:
        return getattr(self.regular, "late", 0)

    def __len__(self) -> int:
        return self._store.n if self._store is not None else len(self.regular)

    def update(self, row: Mapping[str, Any], event_time: int | None = None) -> list[ClosedWindow]:
        if self._store is None:
            return as_list(self.regular.update(row, event_time))
        if self._journal_on:
            self._journal.append({**{n: row.get(n) for n in self.features}, TIME: event_time})
        if self._records is not None:
            self._store.add(row)
            if self._store.n < self._records:
                return []
            return [self._finish()]
        t = event_time or 0
        assert self._start is not None and self._end is not None
        if t < self._start:
            return []
        if t < self._end:
            self._store.add(row)
            return []
        # The first record past the range closes the reference and opens the windows.
        self._journal = []
        return [self._finish(), *as_list(self.regular.update(row, event_time))]

    def _finish(self) -> ClosedWindow:
        assert self._store is not None
        closed = self._store.close(self.base, self._start, self._end)
        self._store = None
        self._journal = []
        return closed

    def checkpoint(self) -> tuple[dict[str, list[Any]], dict[str, Any] | None]:
        if self._store is None:
            return self.regular.checkpoint()
        rows = _rows_to_columns(self._journal, [*self.features, TIME])
        self._journal = []
        return rows, None

    def restore(
        self, index: int, columns: Mapping[str, Sequence[Any]], state: Any = None
    ) -> None:
        if index > self.base:
            self._store = None
            self.regular.restore(index, columns, state)
            return
        self._store = self._factory()
        times = columns.get(TIME, [None] * len(columns.get(self.features[0], [])))
        journal, self._journal_on = self._journal_on, False
        for i, t in enumerate(times):
            if self.update({n: columns[n][i] for n in self.features if n in columns}, t):
                raise ValueError("replaying checkpointed rows closed the reference")
        self._journal_on, self._journal = journal, []


def as_list(closed: ClosedWindow | list[ClosedWindow] | None) -> list[ClosedWindow]:
    if closed is None:
        return []
    return closed if isinstance(closed, list) else [closed]


def new_window(
    cfg: DriftConfig,
    specs: Sequence[FeatureSpec],
    *,
    sketch: bool = False,
    journal: bool = True,
    external_reference: bool = False,
) -> CountWindow | TimeWindow | ReferenceFirst:
    """The windows of one stream, per ``cfg`` (window kind, reference, mode).

    Parameters
    ----------
    sketch
        Hold sketches instead of raw values.
    journal
        Keep the rows added since the last checkpoint.
    external_reference
        The reference comes from outside the stream (Parquet): windows start at 1.
    """
    names = [s.name for s in specs]
    store = store_factory(cfg, specs, sketch)
    regular: CountWindow | TimeWindow
    if cfg.window_kind == "count":
        regular = CountWindow(cfg.window_size, names, store, journal=journal)
    else:
        size = round(cfg.window_duration_s * _NS)
        slide = size if cfg.window_kind == "tumbling" else round((cfg.window_slide_s or 0) * _NS)
        regular = TimeWindow(size, slide, names, round(cfg.allowed_lateness_s * _NS), store,
                             journal=journal)
    if external_reference:
        regular.index = 1
        return regular
    if cfg.reference == "first_n":
        return ReferenceFirst(regular, names, store, records=cfg.reference_records,
                              journal=journal)
    if cfg.reference == "time_range":
        return ReferenceFirst(regular, names, store, start=parse_instant(cfg.reference_start),
                              end=parse_instant(cfg.reference_end), journal=journal)
    return regular


class ParquetReference:
    """References read from a Parquet file or directory, per record type and segment.

    Parameters
    ----------
    cfg
        ``reference_path``, ``segment_keys``, and the store settings.
    features
        Record type -> its feature specs.
    """

    def __init__(self, cfg: DriftConfig, features: Mapping[str, Sequence[FeatureSpec]]) -> None:
        require("pyarrow", extra="parquet",
                feature="Parquet drift references (drift.reference: parquet)")
        import pyarrow.parquet as pq

        path = Path(cfg.reference_path)
        if not path.exists():
            raise ValueError(f"drift reference dataset {path} does not exist")
        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for a bad file
            raise ValueError(f"drift reference dataset {path} is not readable Parquet: {e}") from e
        self.cfg = cfg
        self.path = path
        names = set(table.column_names)
        # Per record type: its segment keys when the dataset has all of them, else none
        # (then every segment shares the whole dataset).
        self._keys: dict[str, list[str]] = {}
        self._tables: dict[str, dict[tuple[str, ...], dict[str, list[Any]]]] = {}
        self._cache: dict[tuple[str, tuple[str, ...], bool], ClosedWindow] = {}
        self._specs = {t: list(s) for t, s in features.items()}
        for record_type, specs in features.items():
            present = [s.name for s in specs if s.name in names]
            if not present:
                log.warning("drift reference %s has none of the %s features %s; those "
                            "segments use their first window", path, record_type,
                            [s.name for s in specs])
                continue
            keys = segment_keys(cfg, record_type)
            keys = keys if all(k in names for k in keys) else []
            self._keys[record_type] = keys
            data = table.select([*keys, *present]).to_pydict()
            rows = len(data[present[0]])
            groups: dict[tuple[str, ...], dict[str, list[Any]]] = {}
            for i in range(rows):
                key = tuple(str(data[k][i]) for k in keys)
                group = groups.setdefault(key, {s.name: [] for s in specs})
                for s in specs:
                    group[s.name].append(data[s.name][i] if s.name in data else None)
            self._tables[record_type] = groups
        log.info("drift reference %s: %s", path,
                 {t: sum(len(next(iter(g.values()))) for g in gs.values())
                  for t, gs in self._tables.items()})

    def reference(
        self, record_type: str, segment: Mapping[str, str], sketch: bool
    ) -> ClosedWindow | None:
        """The reference of one segment, or ``None`` (fall back to the first window)."""
        groups = self._tables.get(record_type)
        if groups is None:
            return None
        key = tuple(str(segment.get(k, "")) for k in self._keys[record_type])
        cache_key = (record_type, key, sketch)
        if cache_key in self._cache:
            return self._cache[cache_key]
        columns = groups.get(key)
        if columns is None:
            return None
        n = len(next(iter(columns.values())))
        if sketch:
            store = store_factory(self.cfg, self._specs[record_type], True)()
            assert isinstance(store, SketchValues)
            names = list(columns)
            for i in range(n):
                store.add({name: columns[name][i] for name in names})
            closed = store.close(0)
            closed = ClosedWindow(0, n, {}, closed.sketches, external="parquet")
        else:
            closed = ClosedWindow(0, n, columns, external="parquet")
        # One copy per segment (or one for all when the dataset has no segment columns).
        self._cache[cache_key] = closed
        return closed
