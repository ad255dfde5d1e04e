"""The streaming drift engine: a consuming stage from the record topics (``observer.llm``,
``observer.tools``, ``observer.paths``, ``observer.predictions``, ``observer.gpu``,
``observer.embeddings``: those of the record types with features configured) to
``observer.drift``, with its state checkpointed to ``observer.drift-state``.

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

Embedding features (``kind: embedding``; by default ``prompt_embedding`` and
``response_embedding`` of ``embeddings`` records, segmented by the ``llm`` keys plus
``embedder``): each row keeps the vector (float32) with its record's trace and span ids, a
window is scored with ``drift.embedding_method`` (default ``model``, Evidently's domain
classifier; :mod:`observer.drift.embedding.features`), and a drifted feature carries its
evidence. A new embedder (or dimension) is a new stream with its own reference
(``observer_drift_streams_started_total``, an INFO log), never a drift; a vector of another
dimension than its stream's is counted (``observer_drift_errors_total{reason=
"dimension_mismatch"}``) and left out. Sketch mode keeps a seeded sample of
``sketch_embedding_rows`` rows per window. Checkpoint records over 256 kB (vectors) go out
in parts (:mod:`observer.drift.state_parts`).

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
acknowledged batch ended: the same windows, the same results (:mod:`observer.drift.restore`).
A result whose acknowledgement was in doubt at the kill is checked against what already
reached ``observer.drift`` (:mod:`observer.drift.published`) and only emitted when missing, so
each result is published once (:mod:`observer.drift.duplicates`).

References (:mod:`observer.drift.references`, :mod:`observer.drift.reference_commands`): each
stream's reference is versioned (1, 2, ...) with its provenance, carried in its checkpointed
reference record; every result names ``reference_version``. With checkpoints on, the engine
also consumes ``observer.drift-commands`` (pin, unpin, rebaseline) in order with its inputs and
publishes each stream's reference state to ``observer.references``.

Peer drift (``drift.peer``, :mod:`observer.drift.peer`): when enabled, every record that
names a cluster also joins its cluster's event-time peer window of its fleet segment (the
segment without the cluster); a closed peer window scores each cluster against the other
clusters' records of the same time range and emits results with ``comparison: fleet``. Its
state is checkpointed with the streams' (``peer/...`` records on ``observer.drift-state``).

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
>>> from observer.core.config import KafkaConfig
>>> from observer.drift.config import DriftConfig, FeatureSpec
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
>>> result.reference_version  # scored against version 1 (drift.references)
1
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from observer.core.compacted import CompactedStore, KafkaCompactedStore
from observer.drift.checkpoint import (
    TP,
    chunk_key,
    positions_to_json,
    reference_key,
)
from observer.drift.degradation import DegradationTracker, check_specs
from observer.drift.metrics import (
    DATASET_DRIFT,
    DEGRADATION_DETECTED,
    DEGRADATION_DETECTIONS,
    DEGRADATION_LEVEL,
    DEGRADATION_MEAN,
    DRIFT_SHARE,
    DRIFT_STATISTIC,
    ERRORS,
    RECORDS,
    REPLAYED,
    STREAMS_HELD,
    STREAMS_LIMIT,
    STREAMS_RETIRED,
    STREAMS_STARTED,
    WINDOWS,
    forget_stream,
)
from observer.drift.embedding.columns import VectorRow, state_values
from observer.drift.embedding.features import score_embedding
from observer.drift.duplicates import ReplayGuard
from observer.drift.published import KafkaResultLog, ResultLog
from observer.drift.record_types import (
    RECORD_TYPES,
    check_features,
    check_segment_keys,
    event_time,
    row_maker,
    segment_keys,
    topics_by_type,
)
from observer.drift.reference import ParquetReference, as_list, new_window
from observer.drift.reference_commands import (
    ReferenceCommands,
    WindowReader,
    admits,
    announcement,
    kafka_reader,
)
from observer.drift.references import first_version, state_key
from observer.drift.scoring import REPORTED, drift_share, prepare_columns, resolve_method, score_columns
from observer.drift.sketch import StateBudget
from observer.drift.state_parts import StateParts
from observer.drift.peer import PeerDrift
from observer.drift.sketch_scoring import sketched_scores
from observer.drift.restore import Restorer
from observer.drift.retirement import IdleStreams, of_stream, tombstones
from observer.drift.stream import Pending, Stream, held_records, reference_value, state_output
from observer.drift.window import ClosedWindow
from observer.core import validate
from observer.core.bus import Message, Output
from observer.core.config import KafkaConfig
from observer.drift.config import DriftConfig, FeatureSpec
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
        store: CompactedStore | None = None,
        results: ResultLog | None = None,
        reader: WindowReader | None = None,
    ) -> None:
        self.cfg = cfg
        # Reads a scored window's records back (rebaseline --from-window); None: offline.
        self.reader = reader
        self.topics = topics
        self.clock = clock
        self.store = store
        self.results = results
        # What a restore found already published, until the replay passes it (drift.duplicates).
        self._guard = ReplayGuard()
        # Only record types with features are read (drift.record_types).
        self._record_types: dict[str, str] = topics_by_type(cfg, topics)
        self._features: dict[str, list[FeatureSpec]] = {}
        self._segment_keys: dict[str, list[str]] = {}
        for record_type, cls in RECORD_CLASSES.items():
            specs = list(cfg.features.get(record_type, []))
            check_features(record_type, specs)
            for spec in specs:
                resolve_method(spec, cfg.numeric_method, cfg.categorical_method,
                               cfg.embedding_method)
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
        # Per record type, what reads its feature rows (drift.record_types.row_maker).
        self._rows = {t: row_maker(specs) for t, specs in self._features.items()}
        # Per record type, its embedding features (vectors checked per record, drift.embedding).
        self._embeddings: dict[str, list[str]] = {
            t: [s.name for s in specs if s.kind == "embedding"] for t, specs in self._features.items()
        }
        self._streams: dict[tuple[str, str], Stream] = {}
        self._refused_logged = False  # drift.max_streams reached and said so
        # At the cap, a stream idle for drift.stream_idle_s makes room (drift.retirement).
        self._idle = IdleStreams(cfg.stream_idle_s)
        self._retired: list[Output] = []  # their checkpoints' deletions, for this batch
        self._now_ns = 0  # the clock at this batch's start
        STREAMS_LIMIT.set(cfg.max_streams)
        self._next_offset: dict[TP, int] = {}
        self._pending: list[Pending] = []
        self._quarantined: list[Output] = []
        # Reference states to publish (observer.references), and commands for streams not
        # held yet (a restart restores a stream with its partition's first batch).
        self._announced: dict[tuple[str, str], Stream] = {}
        self._commands = ReferenceCommands(self)
        self._iteration = 0
        # Exact or sketch per stream, references from a dataset (drift.sketch, drift.reference).
        self._budget = StateBudget(cfg.mode, cfg.exact_budget_mb * 1e6)
        self._parquet = (
            ParquetReference(cfg, self._features) if cfg.reference == "parquet" else None
        )
        self._restorer = Restorer(cfg, topics, self._features, self._budget, self._parquet)
        # Checkpoint records over a few hundred kB go out in parts (embedding vectors).
        self._parts = StateParts(topics.drift_state)
        # Each cluster against its fleet's other clusters (drift.peer), state checkpointed here.
        self._peer = (PeerDrift(cfg, self._features, self._segment_keys,
                                journal=store is not None) if cfg.peer.enabled else None)

    @classmethod
    def for_kafka(cls, cfg: DriftConfig, kafka: KafkaConfig, topics: Topics) -> DriftEngine:
        """The engine as a stage runs it: checkpoints on ``topics.drift_state`` when enabled."""
        if not cfg.checkpoints:
            return cls(cfg, topics)
        return cls(cfg, topics, store=KafkaCompactedStore(
            kafka, topics.drift_state, what="the drift engine's checkpoints"),
                   results=KafkaResultLog(kafka, topics.drift), reader=kafka_reader(kafka))

    @property
    def inputs(self) -> list[str]:
        """The topics to consume: those of the record types with features configured
        (:func:`observer.drift.record_types.topics_by_type`), and with checkpoints the
        reference commands (:mod:`observer.drift.reference_commands`)."""
        commands = [self.topics.drift_commands] if self.store is not None else []
        return [*self._record_types, *commands]

    @property
    def streams(self) -> int:
        """Streams (segment x record type) held in memory."""
        return len(self._streams)

    # -- Processor ---------------------------------------------------------------------------

    def process(self, messages: list[Message]) -> list[Output]:
        outputs: list[Output] = []
        # Before anything of this batch is produced: its results carry later timestamps.
        self._now_ns = self.clock()
        at_ms = self._now_ns // 1_000_000
        if self.store is not None:
            first: dict[TP, int] = {}
            for m in messages:
                first.setdefault((m.topic, m.partition), m.offset)
            moved = {tp for tp, o in first.items() if self._next_offset.get(tp) != o
                     and tp[0] != self.topics.drift_commands}
            if moved:
                outputs += self._restore(moved, first)
        consumed = Counter(self._record_types.get(m.topic, "unknown") for m in messages
                           if m.topic != self.topics.drift_commands)
        for record_type, n in consumed.items():  # once per batch, not per record
            RECORDS.labels(record_type).inc(n)
        for message in messages:
            tp = (message.topic, message.partition)
            self._next_offset[tp] = message.offset + 1
            for result in self._consume(message):
                outputs.append(Output(self.topics.drift, result.segment_key, encode(result)))
            self._guard.passed(tp, message.offset)
        STREAMS_HELD.set(len(self._streams))
        outputs += self._quarantined + self._retired
        self._quarantined, self._retired = [], []
        if self.store is not None:  # published with the checkpoints it reflects
            outputs += [announcement(self.topics, s) for s in self._announced.values()]
        self._announced = {}
        if self.store is not None:
            outputs += self._checkpoint(at_ms)
        return self._parts.split(outputs)

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
        # Parts superseded by writes confirmed now (drift.state_parts); taken before the
        # split below, whose own supersessions wait for the next tick.
        ready = self._parts.confirmed()
        return self._parts.split(outputs) + ready

    # -- records -----------------------------------------------------------------------------

    def _consume(self, message: Message) -> list[DriftResult]:
        if message.topic == self.topics.drift_commands:
            self._commands.receive(message)
            return []
        record_type = self._record_types.get(message.topic)
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
        scored = RECORD_TYPES[record_type].admits
        if scored is not None and not scored(record):
            return []  # e.g. an unjoined eval: no segment (the join stage counts it)
        features = self._features[record_type]
        if not features:
            return []
        # Before any stream state changes: a NaN or an infinity would poison a window.
        rows = self._rows[record_type](record)
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
            if len(self._streams) >= self.cfg.max_streams and not self._retire_idle():
                # Before the peer sees it too: its fleet segments stay within the streams'.
                self._refuse_stream(record_type, key)
                return []
            stream = self._new_stream(segment, key, record_type, features)
        if self._embeddings[record_type]:
            problem = self._check_vectors(stream, record, rows)
            if problem is not None:
                ERRORS.labels(record_type, "invalid_value").inc()
                self._quarantined.append(dead_letter(
                    self.topics.dead_letter, self.name, message, "invalid_value", problem))
                return []
        tp = (message.topic, message.partition)
        # The cluster against its fleet (drift.peer): its own replay guard, so its windows
        # absorb every message once whichever checkpoint records a kill let through.
        results = self._peer.observe(
            record_type, record, rows, event_time(record, message.timestamp_ms),
            message.timestamp_ms, tp=tp, offset=message.offset,
            closed_at=message.timestamp_ms * 1_000_000 if message.timestamp_ms > 0 else self.clock(),
        ) if self._peer is not None else []
        if self.store is not None and message.offset <= stream.positions.get(tp, -1):
            REPLAYED.labels(record_type).inc()
            return results  # already counted before a restart
        stream.positions[tp] = message.offset
        stream.touched = True
        stream.last_seen_ns = self._now_ns
        stream.degradation.update(record)
        if not admits(stream.versions.collecting, record):
            return results  # another model's traffic while the promoted model's reference is collected
        at = event_time(record, message.timestamp_ms)
        # One row per record, or per instance of a prediction: a window may close between
        # two instances of one message, so each row marks the message in its own window.
        for row in rows:
            stream.track(message)
            for closed in as_list(stream.window.update(row, at)):
                result = self._closed(stream, closed, message)
                if result is not None:
                    results.append(result)
        return results

    def _refuse_stream(self, record_type: str, key: str) -> None:
        """A record of a new stream past ``drift.max_streams``: counted, and logged once per
        engine, since a flood of invented segments would otherwise flood the log too."""
        ERRORS.labels(record_type, "stream_limit").inc()
        if not self._refused_logged:
            self._refused_logged = True
            log.warning("drift: %d streams held (drift.max_streams) and none idle for "
                        "drift.stream_idle_s; records of new segments such as %s %s are "
                        "skipped and counted in observer_drift_errors_total"
                        "{reason=\"stream_limit\"}", len(self._streams), record_type, key)

    def _retire_idle(self) -> bool:
        """At ``drift.max_streams``: retire the stream idle longest if it may go
        (:mod:`observer.drift.retirement`); False when none may."""
        stream = self._idle.pick(self._streams.values(), self._now_ns)
        if stream is None:
            return False
        assert isinstance(stream, Stream)
        del self._streams[(stream.key, stream.record_type)]
        self._announced.pop((stream.key, stream.record_type), None)
        if not stream.sketch:
            self._budget.release(state_values([f.kind for f in self._features[stream.record_type]]),
                                 held_records(self.cfg))
        if self.store is not None:
            # Its older windows' chunk deletions go now, with the open window's: a restore
            # must never find an older window of a retired stream.
            older: list[Output] = []
            kept: list[Pending] = []
            for p in self._pending:
                if of_stream(p.output, self.topics.drift_state, stream.record_type, stream.key):
                    older.append(p.output)
                else:
                    kept.append(p)
            self._pending = kept
            self._retired += older + tombstones(
                self.topics.drift_state, stream.record_type, stream.key, stream.window.index,
                stream.chunks)
            # Its announced state goes too (the admin API's and the CLI's readers drop it).
            self._retired.append(Output(self.topics.references,
                                        state_key(stream.record_type, stream.key), None))
        if self._peer is not None:  # its fleet segment, if no other stream feeds it
            gone = self._peer.stream_retired(
                stream.segment, stream.record_type,
                ((s.segment, s.record_type) for s in self._streams.values()))
            if self.store is not None:
                self._retired += [Output(self.topics.drift_state, k, None) for k in gone]
        forget_stream(stream.key, stream.record_type)
        STREAMS_RETIRED.labels(stream.record_type).inc()
        log.info("drift stream retired after %.0f s without a record (drift.max_streams "
                 "reached): %s %s", (self._now_ns - stream.last_seen_ns) / 1e9,
                 stream.record_type, stream.key)
        return True

    def _new_stream(
        self, segment: dict[str, str], key: str, record_type: str, features: list[FeatureSpec]
    ) -> Stream:
        """A stream's windows in exact or sketch mode (the budget decides), and its reference
        when it comes from a dataset."""
        records = held_records(self.cfg)
        sketch = not self._budget.admit(state_values([f.kind for f in features]), records)
        reference = (
            self._parquet.reference(record_type, segment, sketch) if self._parquet else None
        )
        window = new_window(self.cfg, features, sketch=sketch, journal=self.store is not None,
                            external_reference=reference is not None)
        stream = Stream(segment, key, record_type, window, sketch=sketch,
                        last_seen_ns=self._now_ns)
        stream.degradation = DegradationTracker.for_stream(self.cfg, record_type, segment)
        if reference is not None:
            stream.reference = reference
            stream.new_reference = True
            stream.versions.current = first_version("parquet", reference.n, at=self.clock(),
                                                    detail={"path": str(self.cfg.reference_path)})
            self._announced[(key, record_type)] = stream
        self._streams[(key, record_type)] = stream
        self._commands.stream_appeared(stream)
        # A new segment, or for embeddings a new embedder or dimension: a stream of its own
        # with its own reference, never a drift of the old one (issue 15).
        STREAMS_STARTED.labels(record_type).inc()
        log.info("drift stream started: %s %s (%s)", record_type, key,
                 ", ".join(f"{k}={v}" for k, v in segment.items()))
        return stream

    def _check_vectors(self, stream: Stream, record: Record, rows: list[dict[str, Any]]) -> str | None:
        """Embedding rows: a vector that is not finite as float32 is an invalid message (its
        text); one of another dimension than the stream's is counted and left out."""
        declared = getattr(record, "dimension", None)
        for row in rows:
            for name in self._embeddings[stream.record_type]:
                vector = row.get(name)
                if not isinstance(vector, VectorRow):
                    continue
                if not np.isfinite(vector.vector).all():
                    return f"feature value {name} is not finite as float32"
                if stream.dimension is None:
                    stream.dimension = declared or len(vector.vector)
                if len(vector.vector) != stream.dimension or (declared and declared != stream.dimension):
                    ERRORS.labels(stream.record_type, "dimension_mismatch").inc()
                    log.debug("drift %s %s: %s of dimension %d skipped (stream: %d)",
                              stream.record_type, stream.key, name, len(vector.vector),
                              stream.dimension)
                    row[name] = None
        return None

    def _closed(self, stream: Stream, closed: ClosedWindow, message: Message) -> DriftResult | None:
        """A window closed: it becomes the reference, or is scored against it."""
        key, record_type = stream.key, stream.record_type
        WINDOWS.labels(record_type).inc()
        ranges = stream.take_ranges()
        # Degradation signals report on the records since the previous window closed.
        signals = stream.degradation.close_window()
        self._forget_chunks(stream, closed.index)
        collecting = stream.versions.collecting
        if stream.reference is None or (collecting is not None
                                        and closed.index == collecting["window"]):
            at = message.timestamp_ms * 1_000_000 if message.timestamp_ms > 0 else self.clock()
            self._commands.reference_closed(stream, closed, ranges, at)
            log.info("drift reference v%d set for %s %s (%d records)",
                     stream.versions.current.version if stream.versions.current else 0,
                     record_type, key, closed.n)
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
        if self._guard.suppress(key, record_type, result.window_index):
            # Published before the restore: the state above advanced, the output is
            # dropped, and chunk 0 does not carry it (a later restore must never re-emit it).
            return None
        if self.store is not None:  # kept only for the next checkpoint
            stream.results.append(result)
        return result

    def _score(
        self,
        stream: Stream,
        reference: ClosedWindow,
        current: ClosedWindow,
        current_ranges: list[OffsetRange],
        closed_at: int,
        degradation: list[DegradationSignal] | None = None,
    ) -> DriftResult:
        key, record_type = stream.key, stream.record_type
        specs = self._features[record_type]
        tabular = [s for s in specs if s.kind != "embedding"]
        # Sketch mode (either side sketched) has its own scorer; None means both are exact.
        sketched = sketched_scores(
            reference, current, tabular,
            numeric_method=self.cfg.numeric_method, categorical_method=self.cfg.categorical_method,
            thresholds=self.cfg.thresholds, relative_accuracy=self.cfg.sketch_relative_accuracy,
            top_k=self.cfg.sketch_top_k,
        )
        if sketched is None and (stream.prepared is None or stream.prepared[0] is not reference):
            stream.prepared = (reference, prepare_columns(reference.columns, tabular))
        scored = sketched if sketched is not None else score_columns(
            stream.prepared[1],
            current.columns,
            tabular,
            numeric_method=self.cfg.numeric_method,
            categorical_method=self.cfg.categorical_method,
            thresholds=self.cfg.thresholds,
        )
        by_name = {f.name: f for f in scored}
        for spec in specs:
            if spec.kind == "embedding":  # vectors: drift.embedding.features
                by_name[spec.name] = score_embedding(
                    spec, _vectors(reference, spec.name), _vectors(current, spec.name),
                    method=self.cfg.embedding_method, thresholds=self.cfg.thresholds,
                    online=self.cfg.online,
                )
        features = [by_name[s.name] for s in specs]
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
            reference_version=(
                None if stream.versions.current is None else stream.versions.current.version
            ),
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

    def _forget_chunks(self, stream: Stream, window: int) -> None:
        """Window ``window`` closed: its chunks go once the next checkpoint is confirmed."""
        for seq in range(stream.chunks):
            key = chunk_key(stream.record_type, stream.key, window, seq)
            self._pending.append(Pending(self._iteration, Output(self.topics.drift_state, key, None)))
        stream.chunks = 0
        stream.saved = 0

    def _checkpoint(self, at_ms: int) -> list[Output]:
        outputs: list[Output] = []
        for stream in self._streams.values():
            if not stream.touched:
                continue
            window = stream.window
            rows, window_state = window.checkpoint()
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
                "horizon_ms": self._guard.horizon_ms(stream.positions, at_ms),
                "episode_start": stream.episode_start,
            }
            if stream.versions.collecting is not None:
                value["collecting"] = stream.versions.collecting  # rebaseline --next
            if stream.degradation:
                value["degradation"] = stream.degradation.checkpoint(stream.chunks == 0)
            if window_state is not None:
                value["state"] = window_state  # open time-window panes, after a window closed
            extras: dict[str, Any] = {}
            if stream.results and stream.chunks == 0:
                extras["results"] = [r.model_dump_json(by_alias=True) for r in stream.results]
            if stream.new_reference:
                extras["reference"] = reference_value(stream)
                outputs.append(self._state(
                    reference_key(stream.record_type, stream.key),
                    {"kind": "reference", "segment": stream.segment, "segment_key": stream.key,
                     "record_type": stream.record_type, **extras["reference"]},
                ))
            key = chunk_key(stream.record_type, stream.key, window.index, stream.chunks)
            outputs.append(self._state(key, {**value, **extras}))
            if extras:
                # Once confirmed, chunk 0 loses what only mattered if this batch failed.
                self._pending.append(Pending(
                    self._iteration, self._state(key, value), (stream.key, stream.record_type),
                    window.index,
                ))
            stream.chunks += 1
            stream.saved = len(window)
            stream.touched = False
            stream.new_reference = False
            stream.results = []
        if self._peer is not None:
            outputs += [self._state(k, v) for k, v in self._peer.checkpoint()]
        return outputs

    def _state(self, key: str, value: dict[str, Any]) -> Output:
        return state_output(self.topics.drift_state, key, value)

    def _restore(self, partitions: set[TP], starts: dict[TP, int]) -> list[Output]:
        """Rebuild the streams of ``partitions`` (whose replay starts at ``starts``) from the
        store (:mod:`observer.drift.restore`); returns the results to re-emit and the
        checkpoint repairs."""
        assert self.store is not None
        values = self.store.load()
        self._parts.learn(values)
        # Peer results of a batch whose acknowledgement is in doubt go out again (at least once).
        again = self._peer.restore(values) if self._peer is not None else []
        done = self._restorer.restore(values, partitions, starts, self._guard,
                                      self.results, set(self._streams))
        self._streams.update(done.streams)
        for stream in done.streams.values():
            stream.last_seen_ns = self._now_ns  # idle from now on (drift.retirement)
            self._announced[(stream.key, stream.record_type)] = stream
            self._commands.stream_appeared(stream)
        self._pending += [Pending(self._iteration, output, stream, window)
                          for stream, window, output in done.rewrites]
        return done.outputs + [Output(self.topics.drift, r.segment_key, encode(r)) for r in again]


def _vectors(window: ClosedWindow, name: str) -> list[Any]:
    """An embedding feature's rows of a window: its raw column, or its reservoir's sample."""
    if window.sketches is not None:
        return list(getattr(window.sketches.get(name), "rows", []))
    return window.columns.get(name, [])
