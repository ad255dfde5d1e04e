"""The streaming drift engine: a consuming stage from the record topics (``observer.llm``,
``observer.tools``, ``observer.paths``, ``observer.predictions``, ``observer.gpu``: those of
the record types with features configured) to ``observer.drift``, with its state
checkpointed to ``observer.drift-state``.

For each segment (the record fields ``DriftConfig.segment_keys``, e.g. service and model, or
the record type's own in ``segment_keys_by_record_type``) and record type
(:data:`observer.drift.record_types.RECORD_TYPES`) the engine fills count windows of ``window_size``
rows: one per record, or one per instance when a feature reads a per-instance column of a
prediction (``inputs.age``; :func:`observer.drift.record_types.feature_rows`). The segment's
reference comes first (``drift.reference``, :mod:`observer.drift.reference`; by default its first
``reference_records`` records, and nothing is emitted for it). Every later window (1, 2, ...) is scored against that reference, feature by
feature, with Evidently 0.7's statistics (:mod:`observer.drift.scoring`), and one
:class:`~observer.core.records.DriftResult` keyed by the segment key is emitted to
``topics.drift``.

Drift episodes: consecutive windows of a stream with dataset drift form one episode; each of
their results carries ``episode_start_window``, the window where the episode began (``None``
on a window without drift), and the next window without drift ends it. Episodes are part of
the checkpointed state, so a restart inside one continues it.

A result is a pure function of the stream's records: ``closed_at_unix_nano`` is the Kafka
timestamp of the record that closed the window, so a replay reproduces it.

Values: a missing value (``None``) is skipped for numeric features; for categorical features
the empty string ``""`` (e.g. no finish reason reported) is a category of its own, so a
provider that stops reporting finish reasons shows up as drift.

State and restarts (:mod:`observer.drift.checkpoint`): with a checkpoint store, every processed batch
also emits, per stream it touched, one checkpoint record with the values it added and the
last input offset the stream absorbed per partition. The StageRunner produces them, with the
results, before it commits the input offsets. When a partition shows up for the first time,
or its offsets jump (a restart, a rebalance), the engine first restores the streams of that
partition from the store, then skips every message a stream has already absorbed. Window
numbering therefore never restarts, and a killed engine resumes exactly where its last
acknowledged batch ended: the same windows, the same results. A result whose acknowledgement
was in doubt at the kill is checked against what already reached ``observer.drift``
(:mod:`observer.drift.published`) and only emitted when missing, so each result is published once.

Hostile records: a message that is not a valid record (not JSON, an unknown schema, a field
outside its bounds such as a negative count or a NaN, which :mod:`observer.core.records`
rejects) or whose feature values are not finite goes to the dead-letter topic with its reason
(``decode_error``, ``schema_error``, ``invalid_value``) and is counted in
``observer_drift_errors_total`` (``undecodable``, ``invalid_value``); it never reaches a
window, and the batch goes on.

Metrics (:mod:`observer.drift.metrics`): ``observer_drift_statistic``, ``observer_drift_share``,
``observer_drift_dataset_drift`` per segment; ``observer_drift_records_total``,
``observer_drift_windows_total``, ``observer_drift_errors_total``,
``observer_drift_replayed_total``, ``observer_drift_duplicates_suppressed_total`` per record
type; ``observer_drift_restores_total``,
``observer_drift_checkpoint_bytes_total``.

>>> from observer.core.bus import Message
>>> from observer.core.config import DriftConfig, FeatureSpec, KafkaConfig
>>> from observer.core.records import LLMCall, decode, encode
>>> from observer.core.topics import Topics
>>> topics = Topics.from_config(KafkaConfig())
>>> features = {"llm": [FeatureSpec(name="output_tokens", kind="numeric")]}
>>> cfg = DriftConfig(window_size=10, features=features, numeric_method="wasserstein",
...                   reference="first_n", reference_records=10)
>>> engine = DriftEngine(cfg, topics)
>>> def call(i, tokens):
...     rec = LLMCall(service="shop", model="m1", trace_id=f"t{i}", span_id="s",
...                   output_tokens=tokens)
...     return Message(topics.llm, 0, i, b"shop|m1", encode(rec), 0)
>>> out = engine.process([call(i, 100 + i % 5) for i in range(20)])  # reference, then one like it
>>> [(o.topic, o.key) for o in out]
[('observer.drift', 'shop|m1')]
>>> out = engine.process([call(i, 300 + i % 5) for i in range(20, 30)])  # answers got longer
>>> result = decode(out[0].value)
>>> result.window_index, result.features[0].method, result.dataset_drift
(2, 'wasserstein', True)
>>> result.episode_start_window  # the first drifted window begins an episode
2
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from observer.drift.checkpoint import (
    TP,
    CheckpointStore,
    KafkaCheckpointStore,
    RestoredStream,
    chunk_key,
    encode_state,
    positions_to_json,
    reference_key,
    restore_streams,
)
from observer.drift.degradation import DegradationTracker, check_specs
from observer.drift.metrics import (
    CHECKPOINT_BYTES,
    DATASET_DRIFT,
    DEGRADATION_DETECTED,
    DEGRADATION_DETECTIONS,
    DEGRADATION_LEVEL,
    DEGRADATION_MEAN,
    DRIFT_SHARE,
    DRIFT_STATISTIC,
    DUPLICATES,
    ERRORS,
    RECORDS,
    REPLAYED,
    RESTORES,
    WINDOWS,
)
from observer.drift.published import KafkaResultLog, ResultId, ResultLog
from observer.drift.record_types import (
    RECORD_TYPES,
    check_features,
    check_segment_keys,
    event_time,
    feature_rows,
    segment_keys,
    topics_by_type,
)
from observer.drift.reference import ParquetReference, as_list, new_window
from observer.drift.scoring import REPORTED, drift_share, prepare_columns, resolve_method, score_columns
from observer.drift.sketch import StateBudget, sketch_from_json, sketch_to_json
from observer.drift.sketch_scoring import sketched_scores
from observer.drift.stats import Prepared
from observer.drift.window import ClosedWindow, CountWindow, TimeWindow
from observer.core import validate
from observer.core.bus import Message, Output
from observer.core.config import DriftConfig, FeatureSpec, KafkaConfig
from observer.core.dead_letter import dead_letter
from observer.core.records import (
    DegradationSignal,
    DriftResult,
    OffsetRange,
    Record,
    RecordError,
    decode,
    encode,
    segment_key,
)
from observer.core.topics import Topics

log = logging.getLogger(__name__)

RECORD_CLASSES: dict[str, type[Record]] = {
    name: rt.record_class for name, rt in RECORD_TYPES.items()
}
"""The record class of each record type (:data:`observer.drift.record_types.RECORD_TYPES`)."""


@dataclass
class _Stream:
    """One segment's windows of one record type, and what its next checkpoint must say."""

    segment: dict[str, str]
    key: str
    record_type: str
    window: CountWindow | TimeWindow | Any
    reference: ClosedWindow | None = None
    sketch: bool = False  # sketch mode (drift.sketch) rather than raw values
    reference_ranges: list[OffsetRange] = field(default_factory=list)
    # The reference cleaned and sorted once for every window scored against it
    # (drift.scoring.prepare_columns), and the window it was prepared from.
    prepared: tuple[ClosedWindow, dict[str, Prepared]] | None = None
    # Change detectors on record fields (drift.degradation), checkpointed with every chunk.
    degradation: DegradationTracker = field(default_factory=lambda: DegradationTracker([]))
    # (topic, partition) -> [first, last] offsets of the open window's records, so the
    # windows can be read back from Kafka (e.g. exported for retraining).
    open_ranges: dict[TP, list[int]] = field(default_factory=dict)
    # (topic, partition) -> the last offset absorbed: replays up to it are skipped.
    positions: dict[TP, int] = field(default_factory=dict)
    chunks: int = 0  # checkpoint chunks written for the open window
    saved: int = 0  # values of the open window already in those chunks
    touched: bool = False
    new_reference: bool = False
    results: list[DriftResult] = field(default_factory=list)
    # The window where the current drift episode began (None: the last window did not drift);
    # every chunk carries it, so a restart knows whether the stream is inside an episode.
    episode_start: int | None = None

    def track(self, message: Message) -> None:
        span = self.open_ranges.setdefault((message.topic, message.partition), [message.offset] * 2)
        span[1] = message.offset

    def take_ranges(self) -> list[OffsetRange]:
        ranges = [OffsetRange(topic=t, partition=p, first_offset=a, last_offset=b)
                  for (t, p), (a, b) in sorted(self.open_ranges.items())]
        self.open_ranges = {}
        return ranges


@dataclass
class _Pending:
    """A checkpoint clean-up to produce once the batch that made it obsolete is confirmed."""

    iteration: int
    output: Output
    # The rewrite of a window's chunk 0 only applies while that window is still open.
    stream: tuple[str, str] | None = None
    window: int | None = None


class DriftEngine:
    """Scores the windows of each segment against the segment's reference.

    Implements :class:`observer.core.bus.Processor`; run it under
    :class:`observer.core.bus.StageRunner` on :attr:`inputs` with ``cfg.group_id``.

    Parameters
    ----------
    cfg
        Segment keys, window size, features per record type, methods, thresholds and the
        dataset drift share.
    topics
        Resolved topic names: ``llm`` and ``tools`` are read, ``drift`` and ``drift_state``
        written.
    clock
        Wall clock in Unix nanoseconds, for ``closed_at_unix_nano`` when the closing record
        has no Kafka timestamp.
    store
        Where checkpoints are read back from; ``None`` runs without checkpoints (offline).
    results
        Where already published results are read back from when a partition is restored, so
        that a replay never publishes a result twice (:mod:`observer.drift.published`); ``None``
        re-emits every result whose acknowledgement a checkpoint leaves in doubt.
    """

    name = "drift"

    def __init__(
        self,
        cfg: DriftConfig,
        topics: Topics,
        *,
        clock: Callable[[], int] = time.time_ns,
        store: CheckpointStore | None = None,
        results: ResultLog | None = None,
    ) -> None:
        self.cfg = cfg
        self.topics = topics
        self.clock = clock
        self.store = store
        self.results = results
        # Results a restore found already published and the replay has not derived again.
        # Kept per stream and pruned as its windows close: windows close in index order.
        self._ahead: dict[tuple[str, str], set[int]] = {}
        # Input partition -> (horizon_ms, last input offset of those results): while the
        # replay is behind that offset, checkpoints carry the horizon instead of the batch's
        # time, so that a later restore still looks back far enough (drift.published).
        self._horizon: dict[TP, tuple[int, int]] = {}
        # Only record types with features are read (drift.record_types).
        self._record_types: dict[str, str] = topics_by_type(cfg, topics)
        self._features: dict[str, list[FeatureSpec]] = {}
        self._segment_keys: dict[str, list[str]] = {}
        for record_type, cls in RECORD_CLASSES.items():
            specs = list(cfg.features.get(record_type, []))
            check_features(record_type, specs)
            for spec in specs:
                resolve_method(spec, cfg.numeric_method, cfg.categorical_method)
            self._features[record_type] = specs
            check_specs(record_type, cls, cfg.degradation.get(record_type, []))
            self._segment_keys[record_type] = segment_keys(cfg, record_type)
            if record_type in cfg.segment_keys_by_record_type:
                check_segment_keys(record_type, self._segment_keys[record_type])
        for what, configured in (("features", cfg.features),
                                 ("segment keys", cfg.segment_keys_by_record_type)):
            unknown = sorted(set(configured) - set(RECORD_TYPES))
            if unknown:
                raise ValueError(f"drift {what} configured for unknown record types {unknown}; "
                                 f"choose from {', '.join(RECORD_TYPES)}")
        if not self._record_types:
            # A stage subscribed to no topic would idle forever: say so at start.
            raise ValueError("drift.features configures no feature for any record type "
                             f"({', '.join(RECORD_TYPES)}): nothing to score")
        self._streams: dict[tuple[str, str], _Stream] = {}
        self._next_offset: dict[TP, int] = {}
        self._pending: list[_Pending] = []
        self._quarantined: list[Output] = []
        self._iteration = 0
        # Exact or sketch per stream, references from a dataset (drift.sketch, drift.reference).
        self._budget = StateBudget(cfg.mode, cfg.exact_budget_mb * 1e6)
        self._parquet = (
            ParquetReference(cfg, self._features) if cfg.reference == "parquet" else None
        )

    @classmethod
    def for_kafka(cls, cfg: DriftConfig, kafka: KafkaConfig, topics: Topics) -> DriftEngine:
        """The engine as a stage runs it: checkpoints on ``topics.drift_state`` when enabled."""
        if not cfg.checkpoints:
            return cls(cfg, topics)
        return cls(cfg, topics, store=KafkaCheckpointStore(kafka, topics.drift_state),
                   results=KafkaResultLog(kafka, topics.drift))

    @property
    def inputs(self) -> list[str]:
        """The topics to consume: those of the record types with features configured
        (:func:`observer.drift.record_types.topics_by_type`)."""
        return list(self._record_types)

    @property
    def streams(self) -> int:
        """Streams (segment x record type) held in memory."""
        return len(self._streams)

    # -- Processor ---------------------------------------------------------------------------

    def process(self, messages: list[Message]) -> list[Output]:
        outputs: list[Output] = []
        # Before anything of this batch is produced: its results carry later timestamps.
        at_ms = self.clock() // 1_000_000
        if self.store is not None:
            first: dict[TP, int] = {}
            for m in messages:
                first.setdefault((m.topic, m.partition), m.offset)
            moved = {tp for tp, o in first.items() if self._next_offset.get(tp) != o}
            if moved:
                outputs += self._restore(moved, first)
        for message in messages:
            tp = (message.topic, message.partition)
            self._next_offset[tp] = message.offset + 1
            for result in self._consume(message):
                outputs.append(Output(self.topics.drift, result.segment_key, encode(result)))
            if tp in self._horizon and message.offset >= self._horizon[tp][1]:
                # Past everything the predecessor had published: a commit of this batch
                # means no later replay can derive those results again.
                del self._horizon[tp]
        outputs += self._quarantined
        self._quarantined = []
        if self.store is not None:
            outputs += self._checkpoint(at_ms)
        return outputs

    def tick(self) -> list[Output]:
        # tick() ends a StageRunner iteration; being called again means everything produced
        # before was acknowledged and committed, so earlier clean-ups are now safe.
        outputs = []
        keep = []
        for p in self._pending:
            if p.iteration >= self._iteration:
                keep.append(p)
                continue
            if p.stream is not None:
                stream = self._streams.get(p.stream)
                if stream is None or stream.window.index != p.window:
                    continue  # that window closed since: its chunks are being deleted
            outputs.append(p.output)
        self._pending = keep
        self._iteration += 1
        return outputs

    # -- records -----------------------------------------------------------------------------

    def _consume(self, message: Message) -> list[DriftResult]:
        record_type = self._record_types.get(message.topic)
        RECORDS.labels(record_type or "unknown").inc()
        if record_type is None:
            ERRORS.labels("unknown", "unknown_topic").inc()
            return []
        try:
            record = decode(message.value)
        except RecordError as e:
            ERRORS.labels(record_type, "undecodable").inc()
            self._quarantined.append(dead_letter(
                self.topics.dead_letter, self.name, message, e.reason, validate.describe(e)
            ))
            return []
        if not isinstance(record, RECORD_CLASSES[record_type]):
            if not RECORD_TYPES[record_type].shared_topic:
                ERRORS.labels(record_type, "wrong_schema").inc()
            return []
        features = self._features[record_type]
        if not features:
            return []
        # Before any stream state changes: a NaN or an infinity would poison a window.
        rows = feature_rows(record, features)
        where = validate.non_finite(rows)
        if where is not None:
            ERRORS.labels(record_type, "invalid_value").inc()
            self._quarantined.append(dead_letter(
                self.topics.dead_letter, self.name, message, "invalid_value",
                f"feature value {where} is not a finite number",
            ))
            return []
        segment = record.segment_of(self._segment_keys[record_type])
        key = segment_key(segment)
        stream = self._streams.get((key, record_type))
        if stream is None:
            stream = self._new_stream(segment, key, record_type, features)
        tp = (message.topic, message.partition)
        if self.store is not None and message.offset <= stream.positions.get(tp, -1):
            REPLAYED.labels(record_type).inc()
            return []  # already counted before a restart
        stream.positions[tp] = message.offset
        stream.touched = True
        stream.degradation.update(record)
        at = event_time(record, message.timestamp_ms)
        results = []
        # One row per record, or per instance of a prediction: a window may close between
        # two instances of one message, so each row marks the message in its own window.
        for row in rows:
            stream.track(message)
            for closed in as_list(stream.window.update(row, at)):
                result = self._closed(stream, closed, message)
                if result is not None:
                    results.append(result)
        return results

    def _new_stream(
        self, segment: dict[str, str], key: str, record_type: str, features: list[FeatureSpec]
    ) -> _Stream:
        """A stream's windows in exact or sketch mode (the budget decides), and its reference
        when it comes from a dataset."""
        records = self._held_records()
        sketch = not self._budget.admit(len(features), records)
        reference = (
            self._parquet.reference(record_type, segment, sketch) if self._parquet else None
        )
        window = new_window(self.cfg, features, sketch=sketch, journal=self.store is not None,
                            external_reference=reference is not None)
        stream = _Stream(segment, key, record_type, window, sketch=sketch)
        stream.degradation = DegradationTracker(self.cfg.degradation.get(record_type, []))
        if reference is not None:
            stream.reference = reference
            stream.new_reference = True
        self._streams[(key, record_type)] = stream
        return stream

    def _held_records(self) -> int:
        """Records per window (reference or open) a stream may hold, to charge the budget."""
        if self.cfg.reference == "first_n":
            return max(self.cfg.window_size, self.cfg.reference_records)
        return self.cfg.window_size

    def _closed(self, stream: _Stream, closed: ClosedWindow, message: Message) -> DriftResult | None:
        """A window closed: it becomes the reference, or is scored against it."""
        key, record_type = stream.key, stream.record_type
        WINDOWS.labels(record_type).inc()
        ranges = stream.take_ranges()
        # Degradation signals report on the records since the previous window closed.
        signals = stream.degradation.close_window()
        self._forget_chunks(stream, closed.index)
        if stream.reference is None:
            stream.reference = closed
            stream.reference_ranges = ranges
            stream.new_reference = True
            log.info("drift reference set for %s %s (%d records)", record_type, key, closed.n)
            return None
        closed_at = message.timestamp_ms * 1_000_000 if message.timestamp_ms > 0 else self.clock()
        result = self._score(stream, stream.reference, closed, ranges, closed_at, signals)
        # Episodes advance with every scored window, even one whose result is dropped below
        # as already published: its copy on Kafka carries the same episode.
        if result.dataset_drift:
            if stream.episode_start is None:
                stream.episode_start = result.window_index
            result = result.model_copy(update={"episode_start_window": stream.episode_start})
        else:
            stream.episode_start = None
        ahead = self._ahead.get((key, record_type))
        if ahead:
            found = result.window_index in ahead
            ahead.difference_update(range(min(ahead), result.window_index + 1))
            if not ahead:
                del self._ahead[(key, record_type)]
            if found:
                # Published before the restore: the state above advanced, the output is
                # dropped, and chunk 0 does not carry it (a later restore must never re-emit it).
                DUPLICATES.labels(record_type).inc()
                return None
        if self.store is not None:  # kept only for the next checkpoint
            stream.results.append(result)
        return result

    def _score(
        self,
        stream: _Stream,
        reference: ClosedWindow,
        current: ClosedWindow,
        current_ranges: list[OffsetRange],
        closed_at: int,
        degradation: list[DegradationSignal] | None = None,
    ) -> DriftResult:
        key, record_type = stream.key, stream.record_type
        # Sketch mode (either side sketched) has its own scorer; None means both are exact.
        sketched = sketched_scores(
            reference, current, self._features[record_type],
            numeric_method=self.cfg.numeric_method, categorical_method=self.cfg.categorical_method,
            thresholds=self.cfg.thresholds, relative_accuracy=self.cfg.sketch_relative_accuracy,
            top_k=self.cfg.sketch_top_k,
        )
        if sketched is None and (stream.prepared is None or stream.prepared[0] is not reference):
            stream.prepared = (
                reference, prepare_columns(reference.columns, self._features[record_type])
            )
        features = sketched if sketched is not None else score_columns(
            stream.prepared[1],
            current.columns,
            self._features[record_type],
            numeric_method=self.cfg.numeric_method,
            categorical_method=self.cfg.categorical_method,
            thresholds=self.cfg.thresholds,
        )
        share = drift_share(features)
        result = DriftResult(
            segment=stream.segment,
            segment_key=key,
            record_type=record_type,
            window_index=current.index,
            n_reference=reference.n,
            n_current=current.n,
            features=features,
            drift_share=share,
            dataset_drift=share >= self.cfg.drift_share,
            closed_at_unix_nano=closed_at,
            reference_ranges=stream.reference_ranges,
            current_ranges=current_ranges,
            window_start_unix_nano=current.start,
            window_end_unix_nano=current.end,
            degradation=degradation or [],
        )
        for d in result.degradation:
            DEGRADATION_DETECTED.labels(key, record_type, d.name).set(1 if d.detected else 0)
            DEGRADATION_LEVEL.labels(key, record_type, d.name).set(d.level)
            DEGRADATION_MEAN.labels(key, record_type, d.name).set(
                math.nan if d.mean is None else d.mean
            )
            DEGRADATION_DETECTIONS.labels(record_type, d.name).inc(d.detections)
        for f in features:
            for method in dict.fromkeys([*REPORTED[f.kind], f.method]):
                # NaN, not a stale value, when a side had no usable value this window.
                value = f.statistics.get(method, math.nan)
                DRIFT_STATISTIC.labels(key, record_type, f.name, method).set(value)
        DRIFT_SHARE.labels(key, record_type).set(share)
        DATASET_DRIFT.labels(key, record_type).set(1 if result.dataset_drift else 0)
        return result

    # -- checkpoints -------------------------------------------------------------------------

    def _forget_chunks(self, stream: _Stream, window: int) -> None:
        """Window ``window`` closed: its chunks go once the next checkpoint is confirmed."""
        for seq in range(stream.chunks):
            key = chunk_key(stream.record_type, stream.key, window, seq)
            self._pending.append(_Pending(self._iteration, Output(self.topics.drift_state, key, None)))
        stream.chunks = 0
        stream.saved = 0

    def _checkpoint(self, at_ms: int) -> list[Output]:
        outputs: list[Output] = []
        for stream in self._streams.values():
            if not stream.touched:
                continue
            window = stream.window
            rows, window_state = window.checkpoint()
            horizons = [self._horizon[tp][0] for tp in stream.positions if tp in self._horizon]
            value: dict[str, Any] = {
                "kind": "chunk",
                "segment": stream.segment,
                "segment_key": stream.key,
                "record_type": stream.record_type,
                "window": window.index,
                "seq": stream.chunks,
                "rows": rows,
                "open_ranges": [[t, p, a, b] for (t, p), (a, b) in sorted(stream.open_ranges.items())],
                "positions": positions_to_json(stream.positions),
                "horizon_ms": min([at_ms, *horizons]),
                "episode_start": stream.episode_start,
            }
            if stream.degradation:
                value["degradation"] = stream.degradation.checkpoint(stream.chunks == 0)
            if window_state is not None:
                value["state"] = window_state  # open time-window panes, after a window closed
            extras: dict[str, Any] = {}
            if stream.results and stream.chunks == 0:
                extras["results"] = [r.model_dump_json(by_alias=True) for r in stream.results]
            if stream.new_reference:
                extras["reference"] = self._reference_value(stream)
                outputs.append(self._state(
                    reference_key(stream.record_type, stream.key),
                    {"kind": "reference", "segment": stream.segment, "segment_key": stream.key,
                     "record_type": stream.record_type, **extras["reference"]},
                ))
            key = chunk_key(stream.record_type, stream.key, window.index, stream.chunks)
            outputs.append(self._state(key, {**value, **extras}))
            if extras:
                # Once confirmed, chunk 0 loses what only mattered if this batch failed.
                self._pending.append(_Pending(
                    self._iteration, self._state(key, value), (stream.key, stream.record_type),
                    window.index,
                ))
            stream.chunks += 1
            stream.saved = len(window)
            stream.touched = False
            stream.new_reference = False
            stream.results = []
        return outputs

    def _state(self, key: str, value: dict[str, Any]) -> Output:
        raw = encode_state(value)
        CHECKPOINT_BYTES.inc(len(raw))
        return Output(self.topics.drift_state, key, raw)

    @staticmethod
    def _reference_value(stream: _Stream) -> dict[str, Any]:
        ref = stream.reference
        assert ref is not None
        value: dict[str, Any] = {
            "n": ref.n,
            # A dataset's reference is read again from the dataset, sketches stored as such.
            "columns": ref.columns if ref.sketches is None and ref.external is None else {},
            "ranges": [r.model_dump() for r in stream.reference_ranges],
        }
        if ref.external is not None:
            value["external"] = ref.external
        elif ref.sketches is not None:
            value["sketches"] = {k: sketch_to_json(v) for k, v in ref.sketches.items()}
        if ref.start is not None:
            value["start"], value["end"] = ref.start, ref.end
        return value

    def _restore(self, partitions: set[TP], starts: dict[TP, int]) -> list[Output]:
        """Rebuild the streams of ``partitions`` (whose replay starts at ``starts``) from the
        store; returns the results to re-emit and the checkpoint repairs."""
        assert self.store is not None
        RESTORES.inc()
        restored = {
            k: state for k, state in restore_streams(self.store.load()).items()
            if partitions.intersection(state.positions)
        }
        published = self._published(partitions, starts, restored)
        outputs: list[Output] = []
        count = 0
        for (key, record_type), state in restored.items():
            features = self._features.get(record_type)
            if not features:
                continue
            self._streams[(key, record_type)] = self._rebuild(state, features)
            count += 1
            if published is None:
                outputs += [Output(self.topics.drift, key, raw) for raw in state.unconfirmed_results]
            elif state.unconfirmed_results and not _committed(state.marks[0][1], partitions, starts):
                # chunk 0 came from the batch in flight at the kill: re-emit what it lost.
                for raw in state.unconfirmed_results:
                    result = decode(raw)
                    rid = (key, record_type, result.window_index)  # type: ignore[attr-defined]
                    if rid in published:
                        DUPLICATES.labels(record_type).inc()
                    else:
                        outputs.append(Output(self.topics.drift, key, raw))
            outputs += [Output(self.topics.drift_state, k, None) for k in state.stale_keys]
            first = state.first_chunk
            if first is not None and "reference" in first and state.reference is not None:
                # The reference record of that batch may not have been acknowledged: write it
                # again before chunk 0 loses its inline copy.
                outputs.append(self._state(
                    reference_key(record_type, key),
                    {"kind": "reference", "segment": state.segment, "segment_key": key,
                     "record_type": record_type, **state.reference},
                ))
            if first is not None and ("results" in first or "reference" in first):
                plain = {k: v for k, v in first.items() if k not in ("results", "reference", "schema")}
                self._pending.append(_Pending(
                    self._iteration,
                    self._state(chunk_key(record_type, key, state.window, 0), plain),
                    (key, record_type),
                    state.window,
                ))
        log.info("restored %d drift streams for %d partitions from checkpoints",
                 count, len(partitions))
        return outputs

    def _published(self, partitions: set[TP], first: dict[TP, int],
                   restored: dict[tuple[str, str], RestoredStream]) -> set[ResultId] | None:
        """Ids of the results on ``observer.drift`` published since the last batch the
        checkpoints prove committed; those the replay of ``partitions`` from ``first`` may
        derive again join :attr:`_ahead`. ``None`` without a result log.

        A committed batch's chunk positions lie before the replay start, and its
        ``horizon_ms`` is no later than anything published after it.
        """
        if self.results is None:
            return None
        # Per partition: the chunks of other partitions say nothing about when this one's
        # results were published (another engine may have owned it meanwhile).
        bounds: dict[TP, int] = {}
        for state in restored.values():
            for horizon, positions in state.marks:
                if horizon is None or not _committed(positions, partitions, first):
                    continue
                for tp in partitions.intersection(positions):
                    bounds[tp] = max(bounds.get(tp, horizon), horizon)
        since = (
            min(bounds.values()) - int(self.cfg.restore_lookback_s * 1000)
            if len(bounds) == len(partitions) else None  # no committed state: read it all
        )
        seen: set[ResultId] = set()
        ahead = 0
        for p in self.results.since(since):
            seen.add(p.id)
            key, record_type, window = p.id
            state = restored.get((key, record_type))
            if state is not None:
                again = window >= state.window  # earlier windows closed before the checkpoint
            elif (key, record_type) in self._streams:
                again = False  # a live stream of partitions not restored now
            else:
                # A stream no checkpoint knows: re-derived unless its window provably closed
                # before the replay start. (A sliding window closed by the same record as the
                # one before it has no ranges of its own.)
                again = not p.last_offsets or any(
                    o >= first[tp] for tp, o in p.last_offsets.items() if tp in partitions
                )
            if not again:
                continue
            self._ahead.setdefault((key, record_type), set()).add(window)
            ahead += 1
            for tp, o in p.last_offsets.items():
                if tp in partitions and o >= first[tp]:
                    self._extend_horizon(tp, since or 0, o)
        for state in restored.values():
            if state.unconfirmed_results and not _committed(state.marks[0][1], partitions, first):
                # Chunk 0 carries results of a batch in flight at the kill, and stays so
                # until the replay passes its positions: until then a later restore must
                # still look back to when they were published.
                for tp in partitions.intersection(state.positions):
                    self._extend_horizon(tp, since or 0, state.positions[tp])
        log.info("%d results published since %s are ahead of the replay", ahead, since)
        return seen

    def _extend_horizon(self, tp: TP, since_ms: int, until_offset: int) -> None:
        h = self._horizon.get(tp)
        self._horizon[tp] = (since_ms, until_offset) if h is None else (
            min(h[0], since_ms), max(h[1], until_offset))

    def _rebuild(self, state: RestoredStream, features: list[FeatureSpec]) -> _Stream:
        ref = state.reference
        # Keep the checkpointed mode: a sketched reference stays sketched.
        if ref is not None and ("sketches" in ref or ref.get("external") is None):
            sketch = "sketches" in ref
            self._budget.admit(len(features), 0 if sketch else
                               self._held_records())
        else:
            sketch = not self._budget.admit(
                len(features), self._held_records())
        reference: ClosedWindow | None = None
        if ref is not None and ref.get("external") == "parquet" and self._parquet is not None:
            reference = self._parquet.reference(state.record_type, state.segment, sketch)
        elif ref is not None and ref.get("external") is None:
            sketches = ref.get("sketches")
            reference = ClosedWindow(
                0, int(ref["n"]), ref["columns"] if sketches is None else {},
                None if sketches is None else {k: sketch_from_json(v) for k, v in sketches.items()},
                ref.get("start"), ref.get("end"),
            )
        window = new_window(self.cfg, features, sketch=sketch, journal=True,
                            external_reference=reference is not None and reference.external is not None)
        stream = _Stream(state.segment, state.segment_key, state.record_type, window, sketch=sketch)
        stream.positions = dict(state.positions)
        stream.degradation = DegradationTracker(self.cfg.degradation.get(state.record_type, []))
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
        stream.episode_start = state.episode_start
        stream.chunks = state.chunks
        stream.saved = len(window)
        if reference is not None:
            stream.reference = reference
            stream.reference_ranges = [OffsetRange(**r) for r in (ref or {}).get("ranges", [])]
        return stream


def _committed(positions: dict[TP, int], partitions: set[TP], first: dict[TP, int]) -> bool:
    """Whether a chunk with these positions came from a batch whose offsets were committed:
    on every partition being replayed it ends before the replay start.

    >>> _committed({("llm", 0): 9}, {("llm", 0)}, {("llm", 0): 10})
    True
    >>> _committed({("llm", 0): 10}, {("llm", 0)}, {("llm", 0): 10})
    False
    """
    return all(o < first[tp] for tp, o in positions.items() if tp in partitions)
