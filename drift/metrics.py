"""Prometheus metrics of the drift engine (default registry).

Label cardinality: ``segment`` takes one value per segment (the segment key, e.g.
``shop|gpt-4o`` for ``segment_keys = [service, model]``), so keep segment keys to low-cardinality
fields (service, model, prompt version; never a user or trace id). Per segment and record type
there is one ``observer_drift_share`` and one ``observer_drift_dataset_drift`` series, and one
``observer_drift_statistic`` series per feature and statistic: with the default features that
is 3 numeric x 2 statistics + 1 categorical = 7 for ``llm`` and 2 for ``tools``, so
11 series per segment, plus 3 per degradation signal (``observer_drift_degradation_*``: 2 for
``llm`` and 1 for ``tools`` by default, so 9 more). The counters are labelled by record type
(and signal) only.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

DRIFT_STATISTIC = Gauge(
    "observer_drift_statistic",
    "Latest value of a drift statistic of one feature, for the last scored window.",
    ["segment", "record_type", "feature", "method"],
)
DRIFT_SHARE = Gauge(
    "observer_drift_share",
    "Share of the scored features that drifted in the last scored window.",
    ["segment", "record_type"],
)
DATASET_DRIFT = Gauge(
    "observer_drift_dataset_drift",
    "1 when the last scored window's drift share reached drift_share, else 0.",
    ["segment", "record_type"],
)
DEGRADATION_DETECTED = Gauge(
    "observer_drift_degradation_detected",
    "1 when a degradation signal's detector found a change during the last scored window.",
    ["segment", "record_type", "signal"],
)
DEGRADATION_LEVEL = Gauge(
    "observer_drift_degradation_level",
    "A degradation signal's current level as its detector estimates it (e.g. the error rate).",
    ["segment", "record_type", "signal"],
)
DEGRADATION_MEAN = Gauge(
    "observer_drift_degradation_window_mean",
    "Mean of the values a degradation signal was fed since the previous window closed.",
    ["segment", "record_type", "signal"],
)
DEGRADATION_DETECTIONS = Counter(
    "observer_drift_degradation_detections_total",
    "Changes the degradation detectors found, in scored windows.",
    ["record_type", "signal"],
)
RECORDS = Counter(
    "observer_drift_records_total",
    "Messages the drift engine consumed, including those it then skipped as errors.",
    ["record_type"],
)
WINDOWS = Counter(
    "observer_drift_windows_total",
    "Count windows closed, the reference window (index 0) included.",
    ["record_type"],
)
ERRORS = Counter(
    "observer_drift_errors_total",
    "Messages skipped: undecodable, a record of the wrong type for its topic, or an unknown "
    "topic; dimension_mismatch counts embedding vectors skipped (another dimension than the "
    "stream's); stream_limit counts records of new segments past drift.max_streams.",
    ["record_type", "reason"],
)
REPLAYED = Counter(
    "observer_drift_replayed_total",
    "Messages skipped because a restored checkpoint had already counted them.",
    ["record_type"],
)
RESTORES = Counter(
    "observer_drift_restores_total",
    "Times the engine restored state from observer.drift-state (start, rebalance).",
)
CHECKPOINT_BYTES = Counter(
    "observer_drift_checkpoint_bytes_total",
    "Bytes of checkpoint records written to observer.drift-state.",
)
STREAMS_STARTED = Counter(
    "observer_drift_streams_started_total",
    "Streams (segment x record type) the engine started, each with its own reference: a new "
    "segment, or for embeddings a new embedder or dimension (never scored as drift).",
    ["record_type"],
)
STREAMS_HELD = Gauge(
    "observer_drift_streams",
    "Streams (segment x record type) the engine holds now; past observer_drift_streams_limit "
    "a new segment's records are skipped (observer_drift_errors_total, reason stream_limit).",
)
STREAMS_LIMIT = Gauge(
    "observer_drift_streams_limit",
    "drift.max_streams: the most streams the engine holds (alert as the held count nears it).",
)
STREAMS_RETIRED = Counter(
    "observer_drift_streams_retired_total",
    "Streams retired at drift.max_streams to make room for a new segment, each idle for at "
    "least drift.stream_idle_s (drift.retirement): their checkpoints and series are deleted.",
    ["record_type"],
)
DUPLICATES = Counter(
    "observer_drift_duplicates_suppressed_total",
    "Results derived again after a restore and not emitted: observer.drift already had them.",
    ["record_type"],
)
REFERENCE_VERSION = Gauge(
    "observer_drift_reference_version",
    "The reference version (1, 2, ...) a segment's windows are scored against "
    "(drift.references); it steps up at every rebaseline.",
    ["segment", "record_type"],
)
REFERENCE_COMMANDS = Counter(
    "observer_drift_reference_commands_total",
    "Reference commands (pin, unpin, rebaseline) the engine applied, refused or failed.",
    ["command", "outcome"],
)


PER_STREAM = (DRIFT_STATISTIC, DRIFT_SHARE, DATASET_DRIFT, DEGRADATION_DETECTED,
              DEGRADATION_LEVEL, DEGRADATION_MEAN, REFERENCE_VERSION)
"""The gauges with a series per stream (labels ``segment``, ``record_type``, ...)."""


def forget_stream(segment: str, record_type: str) -> None:
    """Remove a retired stream's series (drift.retirement): they would otherwise keep their
    last values, and their label sets would grow with every segment ever seen."""
    for family in PER_STREAM:
        for metric in family.collect():
            for sample in metric.samples:
                labels = sample.labels
                if labels.get("segment") == segment and labels.get("record_type") == record_type:
                    family.remove(*labels.values())  # a gauge's labels, in their order
