"""The drift engine's state on local disk, for the embedded broker (``kafka.embedded_durable``).

The engine checkpoints to the compacted topic ``observer.drift-state`` (:mod:`observer.drift.checkpoint`)
and publishes results to ``observer.drift``; on the memory-only embedded broker both vanish
with the process. :class:`MirroredEngine` wraps the engine: every batch's checkpoint records
(latest value per key, tombstones delete) and results are written to a local SQLite file
(``synchronous=FULL``) *before* the batch's outputs go to Kafka, hence before its input
offsets are committed. At the next start, :meth:`LocalDriftState.seed` gives them back to be
produced into the new broker before the drift and trigger stages start, and the engine's
ordinary restore path reads them as if nothing had happened.

Except for one thing: Kafka offsets. Checkpoints store the last input offset each stream
absorbed (``positions``) and the offset ranges of its windows, and a new broker incarnation
numbers its records from 0 again: seeded as they were, the engine would skip the new log's
first records as already seen. Every row remembers the broker incarnation it was written in
(:func:`observer.core.broker.write_incarnation`); a row from another incarnation is seeded
through :func:`rebase`: positions become -1 (nothing of the new log seen, while the stream
still names its partitions, so a partition's first batch restores it), offset ranges are
emptied (those records are gone: the reference's *values* stay, it just cannot be exported
again), and everything else (the reference, the open window's values and chunk numbering,
detector state, the drift episode) is kept as it was.

Results are kept (the last :data:`KEEP_RESULTS` per stream, until the stream retires) so that
the trigger stage sees the ones it had not consumed at the crash; the ones it had are
recognised as replays
(:meth:`observer.triggers.policy.PolicyTracker.is_replay`: same window, same close time).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from observer.drift.engine import DriftEngine
from observer.drift.references import parse_state_key, without_ranges
from observer.core.broker import read_incarnation
from observer.core.bus import Output, Processor
from observer.core.compacted import key_text
from observer.core.state_file import StateFile, Statement
from observer.core.config import KafkaConfig
from observer.drift.config import DriftConfig
from observer.core.topics import Topics

KEEP_RESULTS = 64
"""Results kept per stream for a restart."""
STATE_FILE = "drift-state.sqlite"

RESULTS_TABLE = """
CREATE TABLE IF NOT EXISTS results (
    segment_key TEXT NOT NULL, record_type TEXT NOT NULL, window INTEGER NOT NULL,
    value BLOB NOT NULL, incarnation TEXT NOT NULL,
    PRIMARY KEY (segment_key, record_type, window));
"""


def rebase(value: dict[str, Any], incarnation: str) -> dict[str, Any]:
    """A checkpoint or result written in another broker incarnation, for ``incarnation``:
    offsets say nothing was seen, ranges are empty, the rest is unchanged.

    >>> chunk = {"kind": "chunk", "window": 3, "rows": {"x": [1.0]}, "episode_start": 2,
    ...          "positions": [["observer.llm", 0, 41]],
    ...          "open_ranges": [["observer.llm", 0, 40, 41]],
    ...          "results": ["..."], "reference": {"n": 5, "columns": {"x": [1]}, "ranges": [{}]}}
    >>> r = rebase(chunk, "i2")
    >>> r["positions"], r["open_ranges"], "results" in r, r["reference"]["ranges"], r["rows"]
    ([['observer.llm', 0, -1]], [], False, [], {'x': [1.0]})
    >>> r["window"], r["episode_start"], r["incarnation"]
    (3, 2, 'i2')
    >>> rebase({"window_index": 4, "current_ranges": [{}], "reference_ranges": [{}]}, "i2")
    {'window_index': 4, 'current_ranges': [], 'reference_ranges': []}
    """
    out = dict(value)
    if "positions" in out:
        out["positions"] = [[t, p, -1] for t, p, _ in out["positions"]]
    if "open_ranges" in out:
        out["open_ranges"] = []
    out.pop("results", None)  # re-published from the results table instead
    if isinstance(out.get("reference"), dict):
        out["reference"] = {**out["reference"], "ranges": []}
        if "versions" in out["reference"]:  # drift.references: older versions' offsets too
            out["reference"]["versions"] = without_ranges(out["reference"]["versions"])
    if out.get("kind") == "reference":
        out["ranges"] = []
        if "versions" in out:
            out["versions"] = without_ranges(out["versions"])
    for name in ("current_ranges", "reference_ranges"):  # a DriftResult
        if name in out:
            out[name] = []
    if "kind" in out:
        out["incarnation"] = incarnation
    return out


class LocalDriftState:
    """The SQLite file: ``state`` (latest checkpoint value per key) and ``results``."""

    def __init__(self, path: Path, topics: Topics, incarnation: str) -> None:
        self.topics = topics
        self.incarnation = incarnation
        self._file = StateFile(path, RESULTS_TABLE)

    def close(self) -> None:
        self._file.close()

    def apply(self, outputs: Iterable[Output]) -> None:
        """Write the state records and results among ``outputs`` in one transaction."""
        state: list[tuple[str, bytes | None]] = []
        results: list[Statement] = []
        for o in outputs:
            if o.topic == self.topics.drift_state:
                state.append((key_text(o.key), o.value))
            elif o.topic == self.topics.drift and o.value is not None:
                r = json.loads(o.value)
                segment, record_type, window = r["segment_key"], r["record_type"], int(r["window_index"])
                results += [
                    ("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?)",
                     (segment, record_type, window, o.value, self.incarnation)),
                    ("DELETE FROM results WHERE segment_key = ? AND record_type = ? AND window <= ?",
                     (segment, record_type, window - KEEP_RESULTS)),
                ]
            elif o.topic == self.topics.references and o.value is None:
                # A stream's state deleted: the engine retired it (drift.stream_idle_s). Its
                # results go too, or segment churn would grow this file without bound.
                record_type, segment = parse_state_key(key_text(o.key))
                results.append(("DELETE FROM results WHERE segment_key = ? AND record_type = ?",
                                 (segment, record_type)))
        if state or results:
            self._file.transaction(self._file.state_writes(state, self.incarnation) + results)

    def seed(self) -> list[Output]:
        """Everything held, as records to produce into a new broker: checkpoints first, then
        results in window order; rows of other incarnations through :func:`rebase`."""
        state = self._file.rows("SELECT key, value, incarnation FROM state ORDER BY key")
        results = self._file.rows("SELECT segment_key, value, incarnation FROM results "
                                  "ORDER BY segment_key, record_type, window")
        return ([Output(self.topics.drift_state, key, self._current(value, inc))
                 for key, value, inc in state]
                + [Output(self.topics.drift, key, self._current(value, inc))
                   for key, value, inc in results])

    def _current(self, raw: bytes, incarnation: str) -> bytes:
        if incarnation == self.incarnation:
            return bytes(raw)
        return json.dumps(rebase(json.loads(raw), self.incarnation),
                          separators=(",", ":")).encode()


class MirroredEngine:
    """A :class:`~observer.core.bus.Processor` that writes the engine's state records and
    results to a :class:`LocalDriftState` before handing them to the runner."""

    def __init__(self, engine: DriftEngine, local: LocalDriftState) -> None:
        self.engine = engine
        self.local = local
        self.name = engine.name

    def process(self, messages: list[Any]) -> list[Output]:
        outputs = self.engine.process(messages)
        self.local.apply(outputs)
        return outputs

    def tick(self) -> list[Output]:
        outputs = self.engine.tick()
        self.local.apply(outputs)
        return outputs

    def close(self) -> None:
        """Close the state file (a supervisor rebuilding the stage opens a new one)."""
        close = getattr(self.engine, "close", None)
        if callable(close):
            close()
        self.local.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


def drift_stage(cfg: DriftConfig, kafka: KafkaConfig, topics: Topics) -> Processor:
    """The drift stage's processor: the engine, mirrored to local disk in embedded durable
    mode (the broker has written this start's incarnation id to the state directory)."""
    engine = DriftEngine.for_kafka(cfg, kafka, topics)
    state_dir = kafka.durable_state_dir
    if state_dir is None or not cfg.checkpoints:
        return engine
    incarnation = read_incarnation(state_dir)
    if incarnation is None:
        raise RuntimeError(f"no broker incarnation recorded in {state_dir}: the embedded "
                           "broker must be started with this state directory first")
    return MirroredEngine(engine, LocalDriftState(state_dir / STATE_FILE, topics, incarnation))
