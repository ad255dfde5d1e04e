"""The streaming drift engine: a consuming stage from ``observer.llm``/``observer.tools`` to
``observer.drift``.

For each segment (the record fields ``DriftConfig.segment_keys``, e.g. service and model) and
record type (``llm`` from ``topics.llm``, ``tools`` from ``topics.tools``) the engine fills count
windows of ``window_size`` records. The first closed window is the segment's reference
(window 0; nothing is emitted for it). Every later window (1, 2, ...) is scored against that
reference, feature by feature, with Evidently 0.7's statistics (:mod:`drift.scoring`), and
one :class:`~observer.core.records.DriftResult` keyed by the segment key is emitted to
``topics.drift``.

Values: a missing value (``None``) is skipped for numeric features; for categorical features
the empty string ``""`` (e.g. no finish reason reported) is a category of its own, so a
provider that stops reporting finish reasons shows up as drift.

State (the open windows and the references) lives in memory: a restart starts every segment
over with a new reference. Checkpointing to ``observer.drift-state`` comes in a later issue.
Memory grows with the number of segments: two windows of values per segment and record type.

Metrics (:mod:`drift.metrics`): ``observer_drift_statistic``, ``observer_drift_share``,
``observer_drift_dataset_drift`` per segment; ``observer_drift_records_total``,
``observer_drift_windows_total``, ``observer_drift_errors_total`` per record type.

>>> from observer.core.bus import Message
>>> from observer.core.config import DriftConfig, FeatureSpec, KafkaConfig
>>> from observer.core.records import LLMCall, decode, encode
>>> from observer.core.topics import Topics
>>> topics = Topics.from_config(KafkaConfig())
>>> features = {"llm": [FeatureSpec(name="output_tokens", kind="numeric")]}
>>> cfg = DriftConfig(window_size=10, features=features, numeric_method="wasserstein")
>>> engine = DriftEngine(cfg, topics)
>>> def call(i, tokens):
...     rec = LLMCall(service="shop", model="m1", trace_id=f"t{i}", span_id="s",
...                   output_tokens=tokens)
...     return Message(topics.llm, 0, i, b"shop|m1", encode(rec), 0)
>>> engine.process([call(i, 100 + i % 5) for i in range(20)])  # reference, then a window like it
... # doctest: +ELLIPSIS
[Output(topic='observer.drift', key='shop|m1', value=b'...')]
>>> out = engine.process([call(i, 300 + i % 5) for i in range(20, 30)])  # answers got longer
>>> result = decode(out[0].value)
>>> result.window_index, result.features[0].method, result.dataset_drift
(2, 'wasserstein', True)
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from drift.metrics import DATASET_DRIFT, DRIFT_SHARE, DRIFT_STATISTIC, ERRORS, RECORDS, WINDOWS
from drift.scoring import CATEGORICAL_STATISTIC, NUMERIC_STATISTICS, drift_share, score_columns
from drift.window import ClosedWindow, CountWindow
from observer.core.bus import Message, Output
from observer.core.config import DriftConfig, FeatureSpec
from observer.core.records import (
    DriftResult,
    LLMCall,
    OffsetRange,
    Record,
    RecordError,
    ToolCall,
    decode,
    encode,
    segment_key,
)
from observer.core.topics import Topics

log = logging.getLogger(__name__)

RECORD_CLASSES: dict[str, type[Record]] = {"llm": LLMCall, "tools": ToolCall}
"""The record type each consumed topic carries."""


@dataclass
class _Stream:
    """One segment's windows of one record type."""

    segment: dict[str, str]
    window: CountWindow
    reference: ClosedWindow | None = None
    reference_ranges: list[OffsetRange] = field(default_factory=list)
    # (topic, partition) -> [first, last] offsets of the open window's records, so the
    # windows can be read back from Kafka (e.g. exported for retraining).
    open_ranges: dict[tuple[str, int], list[int]] = field(default_factory=dict)

    def track(self, message: Message) -> None:
        span = self.open_ranges.setdefault((message.topic, message.partition), [message.offset] * 2)
        span[1] = message.offset

    def take_ranges(self) -> list[OffsetRange]:
        ranges = [OffsetRange(topic=t, partition=p, first_offset=a, last_offset=b)
                  for (t, p), (a, b) in sorted(self.open_ranges.items())]
        self.open_ranges = {}
        return ranges


class DriftEngine:
    """Scores count windows of each segment against the segment's first window.

    Implements :class:`observer.core.bus.Processor`; run it under
    :class:`observer.core.bus.StageRunner` on :attr:`inputs` with ``cfg.group_id``.

    Parameters
    ----------
    cfg
        Segment keys, window size, features per record type, numeric method, thresholds and
        the dataset drift share.
    topics
        Resolved topic names: ``llm`` and ``tools`` are read, ``drift`` is written.
    clock
        Wall clock in Unix nanoseconds, for ``DriftResult.closed_at_unix_nano``.
    """

    name = "drift"

    def __init__(
        self, cfg: DriftConfig, topics: Topics, *, clock: Callable[[], int] = time.time_ns
    ) -> None:
        self.cfg = cfg
        self.topics = topics
        self.clock = clock
        self._record_types: dict[str, str] = {topics.llm: "llm", topics.tools: "tools"}
        self._features: dict[str, list[FeatureSpec]] = {}
        for record_type, cls in RECORD_CLASSES.items():
            specs = list(cfg.features.get(record_type, []))
            unknown = [s.name for s in specs if s.name not in cls.model_fields]
            if unknown:
                raise ValueError(
                    f"drift features {unknown} are not fields of {record_type} records "
                    f"({cls.schema_id})"
                )
            self._features[record_type] = specs
        ignored = sorted(set(cfg.features) - set(RECORD_CLASSES))
        if ignored:
            log.warning("drift features configured for record types not consumed: %s", ignored)
        self._streams: dict[tuple[str, str], _Stream] = {}

    @property
    def inputs(self) -> list[str]:
        """The topics to consume."""
        return list(self._record_types)

    def process(self, messages: list[Message]) -> list[Output]:
        outputs: list[Output] = []
        for message in messages:
            result = self._consume(message)
            if result is not None:
                outputs.append(Output(self.topics.drift, result.segment_key, encode(result)))
        return outputs

    def tick(self) -> list[Output]:
        return []

    def _consume(self, message: Message) -> DriftResult | None:
        record_type = self._record_types.get(message.topic)
        RECORDS.labels(record_type or "unknown").inc()
        if record_type is None:
            ERRORS.labels("unknown", "unknown_topic").inc()
            return None
        try:
            record = decode(message.value)
        except RecordError as e:
            ERRORS.labels(record_type, "undecodable").inc()
            log.debug(
                "skipping an undecodable message at %s/%d@%d: %s",
                message.topic,
                message.partition,
                message.offset,
                e,
            )
            return None
        if not isinstance(record, RECORD_CLASSES[record_type]):
            ERRORS.labels(record_type, "wrong_schema").inc()
            return None
        features = self._features[record_type]
        if not features:
            return None
        segment = record.segment_of(self.cfg.segment_keys)
        key = segment_key(segment)
        stream = self._streams.get((key, record_type))
        if stream is None:
            stream = _Stream(segment, CountWindow(self.cfg.window_size, [f.name for f in features]))
            self._streams[(key, record_type)] = stream
        stream.track(message)
        closed = stream.window.update({f.name: getattr(record, f.name) for f in features})
        if closed is None:
            return None
        WINDOWS.labels(record_type).inc()
        ranges = stream.take_ranges()
        if stream.reference is None:
            stream.reference = closed
            stream.reference_ranges = ranges
            log.info("drift reference set for %s %s (%d records)", record_type, key, closed.n)
            return None
        return self._score(key, record_type, stream, stream.reference, closed, ranges)

    def _score(
        self,
        key: str,
        record_type: str,
        stream: _Stream,
        reference: ClosedWindow,
        current: ClosedWindow,
        current_ranges: list[OffsetRange],
    ) -> DriftResult:
        features = score_columns(
            reference.columns,
            current.columns,
            self._features[record_type],
            numeric_method=self.cfg.numeric_method,
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
            closed_at_unix_nano=self.clock(),
            reference_ranges=stream.reference_ranges,
            current_ranges=current_ranges,
        )
        for f in features:
            names = NUMERIC_STATISTICS if f.kind == "numeric" else (CATEGORICAL_STATISTIC,)
            for method in names:
                # NaN, not a stale value, when a side had no usable value this window.
                value = f.statistics.get(method, math.nan)
                DRIFT_STATISTIC.labels(key, record_type, f.name, method).set(value)
        DRIFT_SHARE.labels(key, record_type).set(share)
        DATASET_DRIFT.labels(key, record_type).set(1 if result.dataset_drift else 0)
        return result
