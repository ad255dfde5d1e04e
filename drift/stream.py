"""One stream's state in memory (a segment's windows of one record type), and the records that
checkpoint it.

The engine (:mod:`observer.drift.engine`) fills streams; :mod:`observer.drift.restore` rebuilds
them from checkpoints. Both write checkpoint records through :func:`state_output`, so every byte
written to ``observer.drift-state`` is counted once (``observer_drift_checkpoint_bytes_total``).

>>> from observer.drift.config import DriftConfig
>>> held_records(DriftConfig(window_size=100, reference="first_n", reference_records=500))
500
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from observer.core.bus import Message, Output
from observer.core.records import DriftResult, OffsetRange
from observer.drift.checkpoint import TP, encode_state
from observer.drift.config import DriftConfig
from observer.drift.degradation import DegradationTracker
from observer.drift.references import Versions
from observer.drift.metrics import CHECKPOINT_BYTES
from observer.drift.sketch import sketch_to_json
from observer.drift.stats import Prepared
from observer.drift.window import ClosedWindow, CountWindow, TimeWindow


@dataclass
class Stream:
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
    # Embedding streams: the vectors' dimension (the first record's); vectors of another
    # dimension are counted and skipped (drift.engine), never compared.
    dimension: int | None = None
    # The engine's clock (ns) at the batch that last gave it a record, or at its start or
    # restore: how long it has been idle (drift.retirement).
    last_seen_ns: int = 0
    # The reference's version, provenance, pin and history (drift.references).
    versions: Versions = field(default_factory=Versions)

    def track(self, message: Message) -> None:
        span = self.open_ranges.setdefault((message.topic, message.partition), [message.offset] * 2)
        span[1] = message.offset

    def take_ranges(self) -> list[OffsetRange]:
        ranges = [OffsetRange(topic=t, partition=p, first_offset=a, last_offset=b)
                  for (t, p), (a, b) in sorted(self.open_ranges.items())]
        self.open_ranges = {}
        return ranges


@dataclass
class Pending:
    """A checkpoint clean-up to produce once the batch that made it obsolete is confirmed."""

    iteration: int
    output: Output
    # The rewrite of a window's chunk 0 only applies while that window is still open.
    stream: tuple[str, str] | None = None
    window: int | None = None


def held_records(cfg: DriftConfig) -> int:
    """Records per window (reference or open) a stream may hold, to charge the state budget."""
    if cfg.reference == "first_n":
        return max(cfg.window_size, cfg.reference_records)
    return cfg.window_size


def state_output(topic: str, key: str, value: dict[str, Any]) -> Output:
    """One checkpoint record for ``observer.drift-state``, its bytes counted."""
    raw = encode_state(value)
    CHECKPOINT_BYTES.inc(len(raw))
    return Output(topic, key, raw)


def reference_value(stream: Stream) -> dict[str, Any]:
    """What a reference record stores of the stream's reference, with its versions
    (:mod:`observer.drift.references`)."""
    assert stream.reference is not None
    value = window_values(stream.reference, stream.reference_ranges)
    value["versions"] = stream.versions.to_json()
    return value


def window_values(ref: ClosedWindow, ranges: list[OffsetRange]) -> dict[str, Any]:
    """A reference window's values as a checkpoint stores them."""
    value: dict[str, Any] = {
        "n": ref.n,
        # A dataset's reference is read again from the dataset, sketches stored as such.
        "columns": ref.columns if ref.sketches is None and ref.external is None else {},
        "ranges": [r.model_dump() for r in ranges],
    }
    if ref.external is not None:
        value["external"] = ref.external
    elif ref.sketches is not None:
        value["sketches"] = {k: sketch_to_json(v) for k, v in ref.sketches.items()}
    if ref.start is not None:
        value["start"], value["end"] = ref.start, ref.end
    return value
