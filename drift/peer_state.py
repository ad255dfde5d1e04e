"""Peer drift's state: per fleet segment (a segment without its cluster) and record type, the
open event-time windows of each cluster, as raw values or sketches, and their checkpoints.

A :class:`FleetSegment` holds, per open window number ``w`` (the window
``[w * size, (w + 1) * size)`` of event time), one value store per cluster
(:class:`observer.drift.window.ExactValues` or :class:`observer.drift.window.SketchValues`).
With ``lateness < size`` at most two windows are open, so a segment holds at most
``2 x clusters`` stores, and an exact store turns into sketches past ``max_exact_rows`` rows
(:meth:`FleetSegment.add`): the state is bounded in every mode.

Checkpoints on ``observer.drift-state``: one record per (fleet segment, cluster), key
``peer/{record_type}/{fleet segment key}/{cluster}``, kind ``peer``, with that cluster's
windows under ``state`` (moved into parts when large, :mod:`observer.drift.state_parts`) and
its positions (the last offset absorbed per partition); and one per fleet segment, key
``peer-segment/{record_type}/{fleet segment key}``, kind ``peer-segment``, written when a
window closes: ``closed_through``, the event time then (``watermark``) and the results. A
closed window's values stay in the clusters' records until the batch after it (the segment
record is confirmed by then), so any subset of a batch's records restores consistently.

>>> from observer.drift.config import FeatureSpec
>>> specs = [FeatureSpec(name="x", kind="numeric")]
>>> seg = FleetSegment({"service": "s"}, "s", "llm", specs, sketch=False)
>>> seg.add(0, "eu", [{"x": 1.0}, {"x": 2.0}], max_exact_rows=10, accuracy=0.01, top_k=8)
>>> [key for key, _ in seg.checkpoint()]
['peer/llm/s/eu']
>>> back = FleetSegment.from_checkpoints([seg.cluster_value("eu")], specs)
>>> back.windows[0]["eu"].columns, back.watermark, back.closed_through
({'x': [1.0, 2.0]}, -1, -1)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from observer.drift.checkpoint import TP, positions_from_json, positions_to_json
from observer.drift.config import FeatureSpec
from observer.drift.window import ExactValues, SketchValues

Store = ExactValues | SketchValues

KIND = "peer"
"""``kind`` of a cluster's peer checkpoint record."""
SEGMENT_KIND = "peer-segment"
"""``kind`` of a fleet segment's record: which windows closed, and their results."""


def segment_record_key(record_type: str, fleet_key: str) -> str:
    """Checkpoint key of a fleet segment's record (apart from the clusters' whatever their
    names).

    >>> segment_record_key("llm", "shop|m1")
    'peer-segment/llm/shop|m1'
    """
    return f"peer-segment/{record_type}/{fleet_key}"


def peer_key(record_type: str, fleet_key: str, cluster: str) -> str:
    """Checkpoint key of one cluster's peer windows.

    >>> peer_key("llm", "shop|m1", "eu-1")
    'peer/llm/shop|m1/eu-1'
    """
    return f"peer/{record_type}/{fleet_key}/{cluster}"


def new_store(specs: Sequence[FeatureSpec], sketch: bool, accuracy: float, top_k: int) -> Store:
    """An empty store of the (tabular) features: raw values or sketches."""
    if sketch:
        return SketchValues({s.name: s.kind for s in specs}, accuracy, top_k)
    return ExactValues([s.name for s in specs])


def as_sketch(store: Store, specs: Sequence[FeatureSpec], accuracy: float, top_k: int) -> SketchValues:
    """``store`` as sketches (an exact store's values fed into new sketches; a sketched store
    as it is).

    >>> from observer.drift.config import FeatureSpec
    >>> e = ExactValues(["x"]); e.add({"x": 3.0}); e.add({"x": None})
    >>> s = as_sketch(e, [FeatureSpec(name="x", kind="numeric")], 0.01, 8)
    >>> s.n, s.sketches["x"].n  # two records, one value
    (2, 1)
    """
    if isinstance(store, SketchValues):
        return store
    out = new_store(specs, True, accuracy, top_k)
    assert isinstance(out, SketchValues)
    for name, sketch in out.sketches.items():
        sketch.extend(store.columns.get(name, []))  # type: ignore[union-attr]
    out.n = store.n
    return out


STORE_OVERHEAD = 250
"""Bytes of the Python objects around one store (its object and its dict of sketches)."""
SKETCH_OVERHEAD = 400
"""Bytes of the Python objects around one sketch beyond what it counts itself
(``nbytes``): its object, attributes and buffer; calibrated with tracemalloc on the
workload of ``benchmarks/fleet_state.py``."""


def store_bytes(store: Store) -> int:
    """Approximate memory of one store: sketches as they count themselves plus their Python
    objects (:data:`STORE_OVERHEAD`, :data:`SKETCH_OVERHEAD`), raw values at
    :data:`observer.drift.sketch.EXACT_BYTES_PER_VALUE` each."""
    from observer.drift.sketch import EXACT_BYTES_PER_VALUE

    if isinstance(store, SketchValues):
        return STORE_OVERHEAD + store.nbytes() + SKETCH_OVERHEAD * len(store.sketches)
    return sum(len(c) for c in store.columns.values()) * EXACT_BYTES_PER_VALUE


OPEN_WINDOWS = 2
"""Peer windows open per cluster at most (``lateness_s < window_s``)."""


def sketch_budget_bytes(*, segments: int, clusters: int, numeric: int, categorical: int,
                        decades: float = 3.0, relative_accuracy: float = 0.01,
                        top_k: int = 64) -> int:
    """Upper bound of peer drift's state in sketch mode (what ``state_bytes`` reports): per
    fleet segment, cluster and open window (at most :data:`OPEN_WINDOWS`), a store of
    :data:`STORE_OVERHEAD` bytes; in it a numeric feature spanning ``decades`` decades holds
    312 bytes of moments and headers, 8 bytes per bucket of its span (``decades x ln 10 /
    ln g`` buckets, ``g = (1 + a) / (1 - a)``), up to 32 buffered values (32 bytes each as
    Python floats) and, while it has seen at most 32 distinct values, those values (130 bytes
    each with their counts); a categorical one 250 bytes and 160 per category counted
    (``top_k`` at most, of up to 32 characters); each sketch :data:`SKETCH_OVERHEAD` more
    for its Python objects.

    >>> sketch_budget_bytes(segments=100, clusters=300, numeric=3, categorical=1) / 1e6
    2230.8
    """
    g = (1 + relative_accuracy) / (1 - relative_accuracy)
    buckets = math.ceil(decades * math.log(10) / math.log(g)) + 2
    numeric_bytes = 312 + 8 * buckets + 32 * 32 + 130 * 32 + SKETCH_OVERHEAD
    categorical_bytes = 250 + 160 * top_k + SKETCH_OVERHEAD
    per_store = STORE_OVERHEAD + numeric * numeric_bytes + categorical * categorical_bytes
    return segments * clusters * OPEN_WINDOWS * per_store


@dataclass
class FleetSegment:
    """One segment's clusters and their open peer windows (see the module doc)."""

    segment: dict[str, str]
    key: str
    record_type: str
    specs: list[FeatureSpec]
    sketch: bool
    # window number -> cluster -> its values in that window
    windows: dict[int, dict[str, Store]] = field(default_factory=dict)
    clusters: set[str] = field(default_factory=set)
    watermark: int = -1  # newest event time seen (ns)
    closed_through: int = -1  # newest window number closed
    touched: set[str] = field(default_factory=set)  # clusters to checkpoint
    # cluster -> (topic, partition) -> the last offset its windows absorbed (replays skip)
    positions: dict[str, dict[TP, int]] = field(default_factory=dict)
    # Windows closed in this batch, and in the previous one: the clusters' records keep
    # their values until the segment record saying they closed is confirmed.
    closing: dict[int, dict[str, Store]] = field(default_factory=dict)
    confirming: dict[int, dict[str, Store]] = field(default_factory=dict)
    # Results of this batch (JSON), kept in the segment record until the next batch, so a
    # restore re-emits them if this batch's acknowledgement was in doubt.
    results: list[str] = field(default_factory=list)
    dirty: bool = False  # the segment record needs writing
    journal: bool = True  # checkpoints are written (else nothing is kept for them)
    rewrite_next: bool = False  # ... and again in the next batch (without results)

    def absorbed(self, cluster: str, tp: TP | None, offset: int) -> bool:
        """Whether ``cluster``'s windows already hold this message (a replay)."""
        return tp is not None and offset <= self.positions.get(cluster, {}).get(tp, -1)

    def add(self, window: int, cluster: str, rows: Iterable[Mapping[str, Any]], *,
            max_exact_rows: int, accuracy: float, top_k: int, tp: TP | None = None,
            offset: int = -1) -> None:
        """Add one record's rows (message ``offset`` of ``tp``) to ``cluster``'s store of
        ``window``."""
        if tp is not None:
            self.positions.setdefault(cluster, {})[tp] = offset
        stores = self.windows.setdefault(window, {})
        store = stores.get(cluster)
        if store is None:
            store = stores[cluster] = new_store(self.specs, self.sketch, accuracy, top_k)
        for row in rows:
            store.add(row)
        if isinstance(store, ExactValues) and store.n > max_exact_rows:
            # Bounded in exact mode too: a busy cluster's window goes on as sketches.
            stores[cluster] = as_sketch(store, self.specs, accuracy, top_k)
        self.clusters.add(cluster)
        self.touched.add(cluster)

    def close(self, window: int) -> dict[str, Store]:
        """Window ``window`` closes: its stores, kept in the records until confirmed."""
        stores = self.windows.pop(window)
        if self.journal:
            self.closing[window] = stores
        self.closed_through = max(self.closed_through, window)
        self.dirty = True
        return stores

    def nbytes(self) -> int:
        """Approximate memory of the open windows' values."""
        return sum(store_bytes(s) for stores in list(self.windows.values())
                   for s in list(stores.values()))

    def checkpoint(self) -> list[tuple[str, dict[str, Any]]]:
        """``(key, value)`` of the records this batch writes: the touched clusters' windows
        (open and closing), and the segment record when a window closed (with the results)
        or closed in the previous batch (confirmed now: its values and results go)."""
        if self.rewrite_next:
            for stores in self.confirming.values():
                self.touched |= set(stores)
            self.dirty, self.rewrite_next = True, False
        self.confirming = {}
        out = [(peer_key(self.record_type, self.key, c), self.cluster_value(c))
               for c in sorted(self.touched)]
        self.touched = set()
        if self.dirty:
            out.append((segment_record_key(self.record_type, self.key), {
                "kind": SEGMENT_KIND, "segment": self.segment, "segment_key": self.key,
                "record_type": self.record_type, "closed_through": self.closed_through,
                "watermark": self.watermark, "results": self.results}))
            self.rewrite_next = bool(self.results or self.closing)
        self.confirming, self.closing = self.closing, {}
        self.results, self.dirty = [], False
        return out

    def cluster_value(self, cluster: str) -> dict[str, Any]:
        """``cluster``'s checkpoint record: its open and closing windows and positions."""
        held = {**self.closing, **self.windows}
        windows = {
            str(w): {"sketch": isinstance(stores[cluster], SketchValues),
                     **stores[cluster].to_json()}
            for w, stores in sorted(held.items()) if cluster in stores
        }
        return {
            "kind": KIND, "segment": self.segment, "segment_key": self.key,
            "record_type": self.record_type, "cluster": cluster, "sketch": self.sketch,
            "positions": positions_to_json(self.positions.get(cluster, {})),
            "state": {"windows": windows},
        }

    @classmethod
    def from_checkpoints(cls, values: Sequence[Mapping[str, Any]],
                         specs: Sequence[FeatureSpec]) -> FleetSegment:
        """A segment back from its checkpoint records (its segment record, if any, and its
        clusters'); the results the segment record kept are in :attr:`results`."""
        first = values[0]
        seg = cls(dict(first["segment"]), str(first["segment_key"]), str(first["record_type"]),
                  list(specs), bool(first.get("sketch", False)))
        names = [s.name for s in specs]
        for value in values:
            if value["kind"] == SEGMENT_KIND:
                seg.watermark = int(value["watermark"])
                seg.closed_through = int(value["closed_through"])
                seg.results = [str(r) for r in value.get("results", [])]
                continue
            cluster = str(value["cluster"])
            seg.sketch = bool(value.get("sketch", False))
            seg.clusters.add(cluster)
            seg.positions[cluster] = positions_from_json(value.get("positions", []))
            for w, data in (value.get("state") or {}).get("windows", {}).items():
                store: Store
                if data.get("sketch"):
                    store = SketchValues({}, 0.01, 1)
                    store.load(data)
                else:
                    store = ExactValues(names)
                    store.load(data)
                seg.windows.setdefault(int(w), {})[cluster] = store
        # Windows the segment record says closed are gone (a record may still hold them).
        seg.windows = {w: s for w, s in seg.windows.items() if w > seg.closed_through}
        return seg
