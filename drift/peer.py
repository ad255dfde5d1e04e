"""Peer drift: a cluster against its fleet (``drift.peer``).

Past-only drift compares a segment with its own past, so one cluster going wrong (a bad
driver, a stale model version, a misrouted gateway) hides in a fleet-wide segment that still
looks healthy. Peer drift compares, for each *fleet segment* (the record type's segment keys
without ``drift.peer.key``, e.g. ``service|model``), every cluster with the other clusters over
the same event time:

- Peer windows are tumbling event-time windows of ``drift.peer.window_s``, aligned on the
  Unix epoch and shared by every cluster of the segment (:mod:`observer.drift.peer_state`).
- A window closes when the segment's newest event time passes its end plus
  ``drift.peer.lateness_s``; then each cluster with ``min_records`` records is scored against
  the other clusters' records of that window, pooled, with the same features, methods and
  thresholds as past-only drift (:mod:`observer.drift.scoring`, or
  :mod:`observer.drift.sketch_scoring` when a side holds sketches). Embedding features are
  left out of peer drift.
- The window is judged only when ``min_clusters`` clusters sent records in it (with two, a
  drifted cluster and its healthy peer look alike); a cluster is judged only when its pooled
  peers also have ``min_records`` records.
- Each judged cluster gives one :class:`~observer.core.records.DriftResult` with
  ``comparison: fleet``, ``cluster``, ``peer_clusters``, ``n_reference`` = the pooled peer
  records, ``window_index`` = the window's number (start / window_s) and its event-time
  bounds; its ``segment`` is the fleet segment with the cluster (in the configured key order
  when the cluster is a segment key, so it shares the past-only stream's ``segment_key``).

A fleet-wide shift moves every cluster and their pools together, so no cluster is blamed; a
cluster that moves while the others stay is, even when the pooled fleet barely moves. A
cluster that moved far is *blamed* and left out of the others' pools (one per round, the
furthest first, at most ``(clusters - 1) // 2``: :meth:`PeerDrift._blame`), so with three
clusters the two healthy ones are not dragged along by it (in windows of up to 16 clusters;
beyond, one cluster is too small a part of any pool to matter); ``peer_clusters`` names the
pool each result was scored against.

Delivery: each cluster's windows absorb every record once, whichever checkpoint records a
kill let through (each cluster's record carries its own positions), and a window closes at
the same record on a replay, so its figures never change; its results are kept in the
segment's checkpoint record until the next batch and published again after a restart that
finds them there: at least once (policies ignore a window they have counted).

Per-cluster past-only drift comes from the same engine with the cluster among the segment
keys (``drift.segment_keys: [service, model, cluster]``): each cluster's stream then has its
own reference, windows and checkpoints. A fleet-wide past-only view is a drift stage without
it.

State is bounded (at most two open windows per cluster and segment, ``max_clusters`` per
segment, exact windows turn into sketches past ``max_exact_rows``; ``drift.mode: sketch``
keeps sketches from the start), checkpointed with the engine's state
(:meth:`PeerDrift.checkpoint`, :meth:`PeerDrift.restore`). A segment's clusters must reach
one engine: keep the segment's records in one partition or run one drift engine.

>>> from observer.core.records import LLMCall
>>> from observer.drift.config import DriftConfig, FeatureSpec
>>> from observer.drift.peer_config import PeerDriftConfig
>>> cfg = DriftConfig(numeric_method="wasserstein", segment_keys=["service", "cluster"],
...                   peer=PeerDriftConfig(enabled=True, window_s=10, lateness_s=0,
...                                        min_records=5))
>>> peer = PeerDrift(cfg, {"llm": [FeatureSpec(name="output_tokens", kind="numeric")]},
...                  {"llm": ["service", "cluster"]})
>>> def call(cluster, i, tokens):
...     return LLMCall(service="shop", model="m", cluster=cluster, trace_id=f"t{i}",
...                    span_id="s", output_tokens=tokens, start_time_unix_nano=i * 10**9)
>>> out = []
>>> for i in range(12):  # 10 s of three clusters, then a record that closes the window
...     for c in ("a", "b", "c"):
...         rec = call(c, i, 100 + i % 5 + (60 if c == "c" else 0))
...         out += peer.observe("llm", rec, [{"output_tokens": rec.output_tokens}],
...                             rec.start_time_unix_nano, 0, closed_at=0)
>>> [(r.cluster, r.segment_key, r.dataset_drift, r.n_current, r.n_reference) for r in out]
[('a', 'shop|a', False, 10, 10), ('b', 'shop|b', False, 10, 10), ('c', 'shop|c', True, 10, 20)]
>>> out[2].comparison, out[2].peer_clusters, out[2].window_index
('fleet', ['a', 'b'], 0)
>>> out[0].peer_clusters  # c was blamed: a is judged against b alone
['b']
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from observer.drift.checkpoint import TP, decode_state
from observer.drift.config import DriftConfig, FeatureSpec
from observer.drift.peer_metrics import (
    PEER_DATASET_DRIFT,
    PEER_DRIFT_SHARE,
    PEER_SKIPPED,
    PEER_STATE_BYTES,
    PEER_WINDOWS,
)
from observer.drift.peer_state import (
    KIND,
    SEGMENT_KIND,
    FleetSegment,
    Store,
    as_sketch,
    new_store,
    peer_key,
    segment_record_key,
)
from observer.drift.record_types import RECORD_TYPES
from observer.drift.scoring import drift_share, score_columns
from observer.drift.sketch_scoring import sketched_scores
from observer.drift.state_parts import join_parts
from observer.drift.stats import METHODS
from observer.drift.window import ExactValues, SketchValues

from observer.core.records import DriftResult, FeatureDrift, Record, segment_key

log = logging.getLogger(__name__)

EXACT_POOL_CLUSTERS = 16
"""Up to this many clusters in a window, all exact, peers are pooled as raw values; more
clusters (or any sketched store) are pooled as sketches, in linear time (prefix and suffix
merges) rather than quadratic."""

MAX_BLAME_ROUNDS = 8
"""Clusters blamed (and left out of their peers' pools) per segment window at most."""

BLAME_CLUSTERS = 16
"""Blame rounds run in windows of up to this many clusters. In a larger fleet one cluster
makes at most a sixteenth of any pool, too little to drag its peers along, and every cluster
is scored once (judging then costs one scoring per cluster, as a past-only window does)."""

_NS = 1_000_000_000


def severity(features: Sequence[FeatureDrift]) -> float:
    """How far past their thresholds the scored features are, on average: statistic /
    threshold for distances, threshold / p-value for tests (larger: further from the pool).

    >>> from observer.core.records import FeatureDrift
    >>> d = FeatureDrift(name="x", kind="numeric", method="wasserstein", statistic=0.3,
    ...                  threshold=0.1, drifted=True)
    >>> p = FeatureDrift(name="y", kind="numeric", method="ks", statistic=0.01,
    ...                  threshold=0.05, drifted=True)
    >>> round(severity([d, p]), 6)
    4.0
    """
    ratios = []
    for f in features:
        if f.statistic is None or f.threshold is None:
            continue
        if METHODS[f.method].rule in (">=", ">"):
            ratios.append(f.statistic / f.threshold if f.threshold else math.inf)
        else:
            ratios.append(f.threshold / max(f.statistic, 1e-300))
    return sum(ratios) / len(ratios) if ratios else 0.0


class PeerDrift:
    """Peer windows of every fleet segment, scored as they close (see the module doc).

    Parameters
    ----------
    cfg
        The drift section: ``peer``, methods, thresholds, ``drift_share``, ``mode`` and the
        sketches' resolution.
    features
        Features per record type (the engine's); embedding features are left out.
    segment_keys
        Segment keys per record type (the engine's); the fleet segment drops ``peer.key``.
    journal
        Checkpoints are written (:meth:`checkpoint` is called every batch).
    """

    def __init__(self, cfg: DriftConfig, features: Mapping[str, Sequence[FeatureSpec]],
                 segment_keys: Mapping[str, Sequence[str]], *, journal: bool = False) -> None:
        self.cfg = cfg
        self.peer = cfg.peer
        self.key = cfg.peer.key
        self.size = round(cfg.peer.window_s * _NS)
        self.lateness = round(cfg.peer.lateness_s * _NS)
        # Record types whose records name a cluster, with their tabular features.
        self.specs: dict[str, list[FeatureSpec]] = {
            rt: tabular for rt, specs in features.items()
            if (tabular := [s for s in specs if s.kind != "embedding"])
            and self.key in RECORD_TYPES[rt].record_class.model_fields
        }
        if not self.specs:
            raise ValueError(
                f"drift.peer.key {self.key!r} is not a field of any record type with tabular "
                f"features ({', '.join(sorted(t for t, s in features.items() if s))}): peer "
                "drift has nothing to compare"
            )
        self.full_keys = {rt: list(segment_keys[rt]) for rt in self.specs}
        self.fleet_keys = {rt: [k for k in keys if k != self.key]
                           for rt, keys in self.full_keys.items()}
        self.sketch = cfg.mode == "sketch"
        self.journal = journal
        self.segments: dict[tuple[str, str], FleetSegment] = {}
        self._series: set[tuple[str, str, str]] = set()
        self._bytes = 0
        PEER_STATE_BYTES.set_function(self.state_bytes)

    # -- records ------------------------------------------------------------------------------

    def observe(self, record_type: str, record: Record, rows: Sequence[Mapping[str, Any]],
                at: int, kafka_timestamp_ms: int, *, closed_at: int, tp: TP | None = None,
                offset: int = -1) -> list[DriftResult]:
        """Add one record's feature rows (event time ``at``, ns; message ``offset`` of
        ``tp``, skipped when its cluster's windows already absorbed it) to its cluster's peer
        window; returns the results of the windows its event time closed (``closed_at`` on
        each)."""
        specs = self.specs.get(record_type)
        if specs is None:
            return []
        cluster = getattr(record, self.key, "")
        if not isinstance(cluster, str) or not cluster:
            PEER_SKIPPED.labels(record_type, "no_cluster").inc()
            return []
        if kafka_timestamp_ms > 0 and at > kafka_timestamp_ms * 1_000_000 + self.size:
            # A client's clock far ahead would close every open window at once.
            PEER_SKIPPED.labels(record_type, "future").inc()
            return []
        fleet = record.segment_of(self.fleet_keys[record_type])
        fkey = segment_key(fleet)
        seg = self.segments.get((fkey, record_type))
        if seg is None:
            seg = self.segments[(fkey, record_type)] = FleetSegment(
                fleet, fkey, record_type, specs, self.sketch, journal=self.journal)
        if seg.absorbed(cluster, tp, offset):
            # Already in its window; its event time still closes what it closed before the
            # restart, at the same point of the replay (the others' records re-added by then).
            PEER_SKIPPED.labels(record_type, "replayed").inc()
            seg.watermark = max(seg.watermark, at)
            return self._close_due(seg, closed_at)
        window = at // self.size
        if window <= seg.closed_through:
            PEER_SKIPPED.labels(record_type, "late").inc()
            return []
        if cluster not in seg.clusters and len(seg.clusters) >= self.peer.max_clusters:
            PEER_SKIPPED.labels(record_type, "too_many_clusters").inc()
            return []
        seg.add(window, cluster, rows, max_exact_rows=self.peer.max_exact_rows,
                accuracy=self.cfg.sketch_relative_accuracy, top_k=self.cfg.sketch_top_k,
                tp=tp, offset=offset)
        seg.watermark = max(seg.watermark, at)
        return self._close_due(seg, closed_at)

    def _close_due(self, seg: FleetSegment, closed_at: int) -> list[DriftResult]:
        results: list[DriftResult] = []
        for window in sorted(seg.windows):
            if (window + 1) * self.size + self.lateness > seg.watermark:
                break
            results += self._judge(seg, window, seg.close(window), closed_at)
        return results

    # -- scoring ------------------------------------------------------------------------------

    def _judge(self, seg: FleetSegment, window: int, stores: Mapping[str, Store],
               closed_at: int) -> list[DriftResult]:
        rt = seg.record_type
        present = {c: s for c, s in sorted(stores.items()) if s.n > 0}
        if len(present) < self.peer.min_clusters:
            PEER_WINDOWS.labels(rt, "too_few_clusters").inc(len(present))
            return []
        scores = self._blame(seg.specs, present)
        results = []
        for cluster, store in present.items():
            if cluster not in scores:
                PEER_WINDOWS.labels(rt, "too_few_records").inc()
                continue
            PEER_WINDOWS.labels(rt, "scored").inc()
            features, pooled, peers = scores[cluster]
            share = drift_share(features)
            segment = self._segment(seg, cluster)
            result = DriftResult(
                segment=segment, segment_key=segment_key(segment), record_type=rt,
                window_index=window, n_reference=pooled, n_current=store.n,
                features=features, drift_share=share,
                dataset_drift=share >= self.cfg.drift_share, closed_at_unix_nano=closed_at,
                window_start_unix_nano=window * self.size,
                window_end_unix_nano=(window + 1) * self.size,
                comparison="fleet", cluster=cluster, peer_clusters=peers,
            )
            self._gauges(result, seg.key)
            seg.results.append(result.model_dump_json(by_alias=True))
            results.append(result)
        return results

    def _blame(self, specs: Sequence[FeatureSpec], present: Mapping[str, Store]
               ) -> dict[str, tuple[list[FeatureDrift], int, list[str]]]:
        """Each judged cluster's scores against its peers: (features, pooled records, the
        clusters pooled). A cluster that drifted far enough is blamed and leaves every later
        pool, one per round, the worst first (see :func:`severity`): with three clusters a
        strongly drifted one makes half of each healthy cluster's pool, and would otherwise
        make them look drifted too. Each round scores again only the clusters that still
        drifted (a cluster in step with a pool keeps that verdict, and its result names that
        pool); the blamed are scored at the end against the clusters not blamed. At most
        ``(clusters - 1) // 2`` are blamed (and :data:`MAX_BLAME_ROUNDS`): when more move, the
        fleet moved, and no minority is the odd one out; none in windows of more than
        :data:`BLAME_CLUSTERS` clusters."""
        limit = min((len(present) - 1) // 2, MAX_BLAME_ROUNDS)
        if len(present) > BLAME_CLUSTERS:
            limit = 0  # one cluster is at most 1/16 of a pool: one pass, no rounds
        judged = [c for c, s in present.items() if s.n >= self.peer.min_records]
        blamed: list[str] = []
        scores: dict[str, tuple[list[FeatureDrift], int, list[str]]] = {}
        todo = judged
        while True:
            healthy = {c: s for c, s in present.items() if c not in blamed}
            pools = self._pools(specs, healthy, todo)
            for cluster in todo:
                pooled = pools[cluster]
                scores.pop(cluster, None)
                if pooled.n >= self.peer.min_records:
                    scores[cluster] = (self._score(specs, pooled, present[cluster]), pooled.n,
                                       [c for c in healthy if c != cluster])
            drifted = [c for c in todo if c in scores and c not in blamed
                       and drift_share(scores[c][0]) >= self.cfg.drift_share]
            if not drifted or len(blamed) >= limit:
                return scores
            blamed.append(max(drifted, key=lambda c: (drift_share(scores[c][0]),
                                                      severity(scores[c][0]))))
            # The others that drifted, scored again without it; the blamed against the rest.
            todo = [c for c in drifted if c not in blamed] + blamed

    def _segment(self, seg: FleetSegment, cluster: str) -> dict[str, str]:
        keys = self.full_keys[seg.record_type]
        if self.key in keys:  # the past-only stream's order, so both share a segment key
            return {k: cluster if k == self.key else seg.segment[k] for k in keys}
        return {**seg.segment, self.key: cluster}

    def _pools(self, specs: Sequence[FeatureSpec], healthy: Mapping[str, Store],
               wanted: Sequence[str]) -> dict[str, Store]:
        """The pool of each cluster of ``wanted``: the clusters of ``healthy`` but itself."""
        names = list(healthy)
        stores = list(healthy.values())
        if len(stores) <= EXACT_POOL_CLUSTERS and all(isinstance(s, ExactValues) for s in stores):
            exact: dict[str, Store] = {}
            for cluster in wanted:
                pooled = ExactValues([s.name for s in specs])
                for other, store in healthy.items():
                    if other != cluster:
                        pooled.merge(store)  # type: ignore[arg-type]
                exact[cluster] = pooled
            return exact
        acc, top_k = self.cfg.sketch_relative_accuracy, self.cfg.sketch_top_k
        sketches = [as_sketch(s, specs, acc, top_k) for s in stores]

        def merged(*parts: SketchValues | None) -> SketchValues:
            out = new_store(specs, True, acc, top_k)
            assert isinstance(out, SketchValues)
            for p in parts:
                if p is not None:
                    out.merge(p)
            return out

        # prefix[i]: clusters before i; suffix[i]: clusters from i on. Linear in clusters.
        prefix: list[SketchValues | None] = [None]
        for s in sketches:
            prefix.append(merged(prefix[-1], s))
        suffix: list[SketchValues | None] = [None] * (len(sketches) + 1)
        for i in range(len(sketches) - 1, -1, -1):
            suffix[i] = merged(suffix[i + 1], sketches[i])
        index = {c: i for i, c in enumerate(names)}
        return {c: merged(prefix[index[c]], suffix[index[c] + 1]) if c in index
                else merged(prefix[-1]) for c in wanted}

    def _score(self, specs: Sequence[FeatureSpec], pooled: Store,
               current: Store) -> list[FeatureDrift]:
        cfg = self.cfg
        ref, cur = pooled.close(0), current.close(0)
        scored = sketched_scores(
            ref, cur, specs, numeric_method=cfg.numeric_method,
            categorical_method=cfg.categorical_method, thresholds=cfg.thresholds,
            relative_accuracy=cfg.sketch_relative_accuracy, top_k=cfg.sketch_top_k,
        )
        if scored is None:
            scored = score_columns(ref.columns, cur.columns, specs,
                                   numeric_method=cfg.numeric_method,
                                   categorical_method=cfg.categorical_method,
                                   thresholds=cfg.thresholds)
        return scored

    def _gauges(self, result: DriftResult, fleet_key: str) -> None:
        labels = (result.cluster, fleet_key, result.record_type)
        if labels not in self._series:
            if len(self._series) >= self.peer.max_metric_series:
                return
            self._series.add(labels)
        PEER_DRIFT_SHARE.labels(*labels).set(result.drift_share)
        PEER_DATASET_DRIFT.labels(*labels).set(1 if result.dataset_drift else 0)

    # -- state --------------------------------------------------------------------------------

    def state_bytes(self) -> int:
        """Approximate memory of every open peer window (``observer_drift_peer_state_bytes``).
        A scrape reads it from another thread while the engine changes the windows: a count
        interrupted that way is tried again, else the last complete one is returned."""
        for _ in range(3):
            try:
                self._bytes = sum(seg.nbytes() for seg in list(self.segments.values()))
                break
            except RuntimeError:  # a dict changed size under the count
                continue
        return self._bytes

    def stream_retired(self, segment: Mapping[str, str], record_type: str,
                       held: Iterable[tuple[Mapping[str, str], str]]) -> list[str]:
        """The engine retired a stream (drift.retirement); ``held`` are the (segment, record
        type) of the streams it still holds. When none of them feeds the same fleet segment,
        that segment goes too, so that peer state stays within what the streams bound: the
        keys of its checkpoint records, to delete."""
        keys = self.fleet_keys.get(record_type)
        if keys is None:
            return []

        def fleet_of(seg: Mapping[str, str]) -> str:
            return segment_key({k: str(seg.get(k, "")) for k in keys})

        fleet = fleet_of(segment)
        if any(rt == record_type and fleet_of(other) == fleet for other, rt in held):
            return []
        gone = self.segments.pop((fleet, record_type), None)
        if gone is None:
            return []
        return [peer_key(record_type, fleet, c) for c in sorted(gone.clusters)] + [
            segment_record_key(record_type, fleet)]

    def checkpoint(self) -> list[tuple[str, dict[str, Any]]]:
        """``(key, value)`` of the checkpoint records of this batch: every touched cluster's
        windows, and the record of every segment that closed a window (with its results)
        or did in the previous batch (:meth:`FleetSegment.checkpoint`)."""
        return [kv for seg in self.segments.values() for kv in seg.checkpoint()]

    def restore(self, values: Mapping[str, bytes | None]) -> list[DriftResult]:
        """Rebuild the segments not held yet from the checkpoint records (raw, as the store
        loads them). Returns the results the segment records kept, to publish again (their
        batch's acknowledgement is in doubt: at least once). A record that does not decode is
        left out with a warning. The replay then closes windows where the first run did:
        the segment's event time comes back as its record had it, and replayed records that
        the windows already hold still advance it."""
        decoded: dict[str, Any] = {}
        for key, raw in values.items():
            if raw is None or not key.startswith(("peer/", "peer-segment/")):
                continue
            try:
                decoded[key] = decode_state(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                log.warning("skipping an undecodable peer checkpoint %r", key)
        grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for value in join_parts(decoded).values():
            if isinstance(value, dict) and value.get("kind") in (KIND, SEGMENT_KIND):
                grouped.setdefault((str(value.get("segment_key")), str(value.get("record_type"))),
                                   []).append(value)
        again: list[DriftResult] = []
        for (fkey, rt), group in grouped.items():
            if (fkey, rt) in self.segments or rt not in self.specs:
                continue
            try:
                seg = FleetSegment.from_checkpoints(group, self.specs[rt])
                kept = [DriftResult.model_validate_json(r) for r in seg.results]
            except (KeyError, TypeError, ValueError) as e:
                log.warning("skipping the peer checkpoint of %s %s: %s", rt, fkey, e)
                continue
            self.segments[(fkey, rt)] = seg
            # Published again now, and kept by the segment record until that is confirmed.
            seg.dirty = bool(kept)
            again += kept
        return again
