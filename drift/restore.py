"""Rebuilding the engine's streams from checkpoints when partitions are (re)assigned.

When a partition shows up for the first time, or its offsets jump (a restart, a rebalance), the
engine (:mod:`observer.drift.engine`) asks a :class:`Restorer` for the streams of those
partitions: each is rebuilt from its chunks and reference (:mod:`observer.drift.checkpoint`) in
the mode it was checkpointed in, and the replay then skips what a stream already absorbed.
Results a checkpoint leaves unconfirmed are re-emitted unless the results topic already has them
(:mod:`observer.drift.duplicates`); checkpoint records made obsolete are deleted or rewritten.

A stream whose state no longer fits the configuration (window size or features changed) starts a
new reference at its next window index: window indices are never reused (episode ids derive
from them).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from observer.core.bus import Output
from observer.core.records import OffsetRange, decode
from observer.core.topics import Topics
from observer.drift.checkpoint import TP, RestoredStream, chunk_key, reference_key, restore_streams
from observer.drift.config import DriftConfig, FeatureSpec
from observer.drift.degradation import DegradationTracker
from observer.drift.duplicates import ReplayGuard, StreamId, committed
from observer.drift.metrics import DUPLICATES, RESTORES
from observer.drift.published import ResultLog
from observer.drift.reference import ParquetReference, new_window
from observer.drift.reference_commands import collector
from observer.drift.references import INITIAL_SOURCES, Versions, first_version
from observer.drift.sketch import StateBudget, sketch_from_json
from observer.drift.stream import Stream, held_records, state_output
from observer.drift.window import ClosedWindow
from observer.drift.embedding.columns import first_dimension, state_values

log = logging.getLogger(__name__)


@dataclass
class Restoration:
    """What a restore gives the engine."""

    streams: dict[StreamId, Stream] = field(default_factory=dict)
    outputs: list[Output] = field(default_factory=list)
    """Results to re-emit and checkpoint repairs, produced with the batch."""
    rewrites: list[tuple[StreamId, int, Output]] = field(default_factory=list)
    """``(stream, window, output)``: chunk-0 rewrites to produce once the batch is confirmed,
    while that window is still open."""


class Restorer:
    """Rebuilds streams with the engine's configuration, budget and dataset reference."""

    def __init__(self, cfg: DriftConfig, topics: Topics, features: Mapping[str, list[FeatureSpec]],
                 budget: StateBudget, parquet: ParquetReference | None) -> None:
        self.cfg = cfg
        self.topics = topics
        self.features = features
        self.budget = budget
        self.parquet = parquet

    def restore(self, checkpoints: Mapping[str, bytes | None], partitions: set[TP],
                starts: dict[TP, int], guard: ReplayGuard, results: ResultLog | None,
                live: Collection[StreamId]) -> Restoration:
        """The streams of ``partitions`` (whose replay starts at ``starts``) from the
        ``checkpoints`` store's contents; ``live``: the streams the engine holds now."""
        RESTORES.inc()
        restored = {
            k: state for k, state in restore_streams(checkpoints).items()
            if partitions.intersection(state.positions)
        }
        published = (
            None if results is None else
            guard.published(results, partitions, starts, restored, live, self.cfg.restore_lookback_s)
        )
        done = Restoration()
        for (key, record_type), state in restored.items():
            features = self.features.get(record_type)
            if not features:
                continue
            done.streams[(key, record_type)] = self.rebuild(state, features)
            if published is None:
                done.outputs += [Output(self.topics.drift, key, raw) for raw in state.unconfirmed_results]
            elif state.unconfirmed_results and not committed(state.marks[0][1], partitions, starts):
                # chunk 0 came from the batch in flight at the kill: re-emit what it lost.
                for raw in state.unconfirmed_results:
                    result = decode(raw)
                    rid = (key, record_type, result.window_index)  # type: ignore[attr-defined]
                    if rid in published:
                        DUPLICATES.labels(record_type).inc()
                    else:
                        done.outputs.append(Output(self.topics.drift, key, raw))
            self._repairs(state, done)
        log.info("restored %d drift streams for %d partitions from checkpoints",
                 len(done.streams), len(partitions))
        return done

    def _repairs(self, state: RestoredStream, done: Restoration) -> None:
        key, record_type = state.segment_key, state.record_type
        done.outputs += [Output(self.topics.drift_state, k, None) for k in state.stale_keys]
        first = state.first_chunk
        if state.reference_inline and state.reference is not None:
            # The reference record of that batch may not have been acknowledged: write it
            # again before chunk 0 loses its inline copy.
            done.outputs.append(state_output(
                self.topics.drift_state, reference_key(record_type, key),
                {"kind": "reference", "segment": state.segment, "segment_key": key,
                 "record_type": record_type, **state.reference},
            ))
        if first is not None and ("results" in first or "reference" in first):
            plain = {k: v for k, v in first.items() if k not in ("results", "reference", "schema")}
            done.rewrites.append(((key, record_type), state.window, state_output(
                self.topics.drift_state, chunk_key(record_type, key, state.window, 0), plain)))

    def rebuild(self, state: RestoredStream, features: list[FeatureSpec]) -> Stream:
        """One stream from its checkpointed state, in the mode it was checkpointed in."""
        ref = state.reference
        # Keep the checkpointed mode: a sketched reference stays sketched.
        cost = state_values([f.kind for f in features])
        if ref is not None and ("sketches" in ref or ref.get("external") is None):
            sketch = "sketches" in ref
            if not sketch:
                self.budget.hold(cost, held_records(self.cfg))
        else:
            sketch = not self.budget.admit(cost, held_records(self.cfg))
        reference: ClosedWindow | None = None
        if ref is not None and ref.get("external") == "parquet" and self.parquet is not None:
            reference = self.parquet.reference(state.record_type, state.segment, sketch)
        elif ref is not None and ref.get("external") is None:
            sketches = ref.get("sketches")
            reference = ClosedWindow(
                0, int(ref["n"]), ref["columns"] if sketches is None else {},
                None if sketches is None else {k: sketch_from_json(v) for k, v in sketches.items()},
                ref.get("start"), ref.get("end"),
            )
        window = new_window(self.cfg, features, sketch=sketch, journal=True,
                            external_reference=reference is not None and reference.external is not None)
        versions = restored_versions(self.cfg, ref)
        collecting = (state.first_chunk or {}).get("collecting")
        if reference is not None and collecting and collecting.get("window") == state.window:
            # A rebaseline --next was collecting its records in the open window.
            window = collector(self.cfg, features, sketch, int(collecting["records"]),
                               state.window, journal=True)
            versions.collecting = dict(collecting)
        stream = Stream(state.segment, state.segment_key, state.record_type, window, sketch=sketch)
        stream.positions = dict(state.positions)
        stream.versions = versions
        stream.degradation = DegradationTracker.for_stream(self.cfg, state.record_type,
                                                           state.segment)
        stream.degradation.restore(state.degradation_snapshot, state.degradation_values)
        try:
            if state.window > 0 and reference is None:
                raise ValueError(f"its reference ({ref and ref.get('external')}) is unavailable")
            window.restore(state.window, state.columns, (state.first_chunk or {}).get("state"))
        except ValueError as e:
            # The window size or features changed since the checkpoint: start a new reference,
            # but never reuse a window index (episode ids derive from it).
            log.warning("drift state of %s %s no longer fits the configuration (%s); "
                        "starting a new reference at window %d",
                        state.record_type, state.segment_key, e, state.window)
            window = new_window(self.cfg, features, sketch=sketch, journal=True,
                                external_reference=True)
            window.index = state.window
            stream.window = window
            stream.touched = True  # checkpoint the fresh start with the next batch
            return stream
        stream.open_ranges = {tp: list(r) for tp, r in state.open_ranges.items()}
        # Embedding streams: the dimension their restored vectors have.
        stream.dimension = first_dimension(state.columns, ref)
        stream.episode_start = state.episode_start
        stream.chunks = state.chunks
        stream.saved = len(window)
        if reference is not None:
            stream.reference = reference
            stream.reference_ranges = [OffsetRange(**r) for r in (ref or {}).get("ranges", [])]
        return stream


def restored_versions(cfg: DriftConfig, ref: dict | None) -> Versions:
    """The versions a reference record carries; a record written before references were
    versioned holds version 1 of the configured source."""
    if ref is None:
        return Versions()
    versions = Versions.from_json(ref.get("versions"))
    if versions.current is None:
        source = "parquet" if ref.get("external") == "parquet" else INITIAL_SOURCES.get(
            cfg.reference, "first_window")
        versions.current = first_version(source, int(ref.get("n", 0)), at=0)
    return versions
