"""The drift engine's side of ``observer references``: commands from
``observer.drift-commands`` applied to the streams, and new reference versions.

A command (:class:`~observer.core.records.ReferenceCommand`) is consumed by the engine with its
record topics and applied to the stream it names:

- ``pin`` / ``unpin``: freeze the current reference against re-baselining (idempotent);
- ``rebaseline`` with ``next``: the open window is abandoned (its records are not scored) and
  the stream's next ``records`` records, collected at the next window index, become the new
  version; windows after it are scored against it. Window indices are never reused.
- ``rebaseline`` with ``from-window``: the records of a scored window (its offset ranges, as the
  result named them) are read back from Kafka and become the new version at once;
- ``rebaseline`` with ``parquet``: a dataset's rows for the segment (as ``drift.reference:
  parquet`` reads them) become the new version at once.

A pinned reference refuses a rebaseline unless the command says ``force``
(:func:`observer.drift.references.rebaseline_refusal`). The outcome (``applied``, ``refused``,
``failed`` and why) is published with the stream's state on ``observer.references``. A command
replayed after a restart is recognised by its id and not applied twice. A command for a stream
the engine does not hold (yet) waits in memory until the stream appears (a restart restores
streams with their partition's first batch), up to :data:`MAX_WAITING` commands.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from observer.core.bus import Message, Output
from observer.core.config import KafkaConfig
from observer.core.dead_letter import dead_letter
from observer.core.records import (
    OffsetRange,
    Record,
    RecordError,
    ReferenceCommand,
    ReferenceVersionInfo,
    decode,
    encode,
)
from observer.core.topics import Topics
from observer.drift.metrics import REFERENCE_COMMANDS, REFERENCE_VERSION
from observer.drift.record_types import feature_rows
from observer.drift.reference import ParquetReference, ReferenceFirst, new_window, store_factory
from observer.drift.references import INITIAL_SOURCES, first_version, rebaseline_refusal, state_key, state_record
from observer.drift.stream import Stream, window_values
from observer.drift.window import ClosedWindow

if TYPE_CHECKING:
    from observer.drift.engine import DriftEngine

log = logging.getLogger(__name__)

MAX_WAITING = 100
"""Commands kept for streams not held yet."""

WindowReader = Callable[[Sequence[OffsetRange], dict[str, str]], list[tuple[Record, int]]]
"""Reads a segment's records at offset ranges back from Kafka, with their timestamps."""


def kafka_reader(kafka: KafkaConfig) -> WindowReader:
    from observer.core.windows import read_window_timed

    return lambda ranges, segment: read_window_timed(kafka, ranges, segment)


def announcement(topics: Topics, stream: Stream) -> Output:
    """The stream's state for ``observer.references`` (and its version's gauge)."""
    if stream.versions.current is not None:
        REFERENCE_VERSION.labels(stream.key, stream.record_type).set(stream.versions.current.version)
    record = state_record(stream.segment, stream.key, stream.record_type, stream.versions,
                          stream.reference_ranges)
    return Output(topics.references, state_key(stream.record_type, stream.key), encode(record))


class ReferenceCommands:
    """Applies commands to the engine's streams; see the module docstring."""

    def __init__(self, engine: DriftEngine) -> None:
        self.engine = engine
        self._waiting: list[ReferenceCommand] = []

    def receive(self, message: Message) -> None:
        engine = self.engine
        try:
            command = decode(message.value)
        except RecordError as e:
            engine._quarantined.append(dead_letter(
                engine.topics.dead_letter, engine.name, message, e.reason, str(e)))
            return
        if not isinstance(command, ReferenceCommand):
            engine._quarantined.append(dead_letter(
                engine.topics.dead_letter, engine.name, message, "schema_error",
                f"{type(command).__name__} is not a reference command"))
            return
        stream = engine._streams.get((command.segment_key, command.record_type))
        if stream is None:
            log.info("reference command %s for %s %s waits for its stream", command.command_id,
                     command.record_type, command.segment_key)
            self._waiting = [*self._waiting, command][-MAX_WAITING:]
            return
        at = message.timestamp_ms * 1_000_000 if message.timestamp_ms > 0 else engine.clock()
        self.apply(stream, command, at)

    def stream_appeared(self, stream: Stream) -> None:
        """Apply the commands that were waiting for ``stream``."""
        mine = [c for c in self._waiting if (c.segment_key, c.record_type) == (stream.key, stream.record_type)]
        if not mine:
            return
        self._waiting = [c for c in self._waiting if c not in mine]
        for command in mine:
            self.apply(stream, command, command.at_unix_nano or self.engine.clock())

    def apply(self, stream: Stream, command: ReferenceCommand, at: int) -> None:
        versions = stream.versions
        if command.command == "rebaseline" and versions.applied(command.command_id):
            return  # replayed after a restart: it already took effect
        try:
            outcome, message = self._apply(stream, command, at)
        except ValueError as e:
            outcome, message = "failed", str(e)
        REFERENCE_COMMANDS.labels(command.command, outcome).inc()
        versions.last_command = {"command_id": command.command_id, "command": command.command,
                                 "source": command.source, "by": command.by,
                                 "outcome": outcome, "message": message}
        log.info("reference command %s (%s) on %s %s: %s: %s", command.command_id,
                 command.command, stream.record_type, stream.key, outcome, message)
        stream.touched = True
        # The reference record carries the versions: rewrite it (not while v1 is collected).
        stream.new_reference = stream.new_reference or stream.reference is not None
        self.engine._announced[(stream.key, stream.record_type)] = stream

    def _apply(self, stream: Stream, command: ReferenceCommand, at: int) -> tuple[str, str]:
        versions = stream.versions
        if stream.reference is None or versions.current is None:
            return "refused", "the segment has no reference yet (its first is being collected)"
        if command.command in ("pin", "unpin"):
            versions.pinned = command.command == "pin"
            return "applied", f"reference v{versions.current.version} {command.command}ned"
        promotion = command.source == "promotion"
        refusal = rebaseline_refusal(versions, force=command.force, automatic=promotion)
        if refusal is not None:
            return "refused", refusal
        # A promotion supersedes a collection in progress: the promoted model is the new normal.
        if versions.collecting is not None and not (command.force or promotion):
            return "refused", (f"v{versions.collecting['version']} is still being collected "
                               f"({versions.collecting['records']} records); force to restart it")
        detail = {"command_id": command.command_id, "by": command.by}
        if promotion:
            records = command.records or versions.current.n
            detail |= promotion_detail(command)
            self._collect(stream, command.model_copy(update={"records": records}), detail)
            which = (f" with {command.model_field} = {command.model_version}"
                     if command.model_field else "")
            return "applied", (f"the next {records} records{which} (model {command.model_version} "
                               f"promoted by run {command.run}) become reference "
                               f"v{versions.collecting['version']}")  # type: ignore[index]
        if command.source == "next":
            self._collect(stream, command, detail)
            return "applied", (f"the next {command.records} records become reference "
                               f"v{versions.collecting['version']}")  # type: ignore[index]
        if command.source == "from-window":
            closed = self._from_window(stream, command)
            detail["window"] = command.window
            ranges = list(command.ranges)
        elif command.source == "parquet":
            closed = self._from_parquet(stream, command)
            detail["path"] = command.path
            ranges = []
        else:
            raise ValueError(f"unknown rebaseline source {command.source!r}")
        versions.collecting = None
        self._replace(stream, closed, ranges, f"rebaseline:{command.source}", at, detail)
        return "applied", f"reference v{versions.current.version} set ({closed.n} records)"

    # -- new versions --------------------------------------------------------------------------

    def reference_closed(self, stream: Stream, closed: ClosedWindow, ranges: list[OffsetRange],
                         at: int) -> None:
        """A reference window closed: the stream's first version, or a ``--next`` rebaseline."""
        collecting = stream.versions.collecting
        if collecting is None:
            stream.reference, stream.reference_ranges = closed, ranges
            stream.new_reference = True
            stream.versions.current = first_version(
                INITIAL_SOURCES.get(self.engine.cfg.reference, "first_window"), closed.n, at=at)
            self.engine._announced[(stream.key, stream.record_type)] = stream
            return
        stream.versions.collecting = None
        source = "promotion" if collecting.get("source") == "promotion" else "rebaseline:next"
        kept = ("command_id", "by", "records", *PROMOTION_DETAIL)
        self._replace(stream, closed, ranges, source, at,
                      {k: collecting.get(k) for k in kept}, version=collecting["version"])

    def _replace(self, stream: Stream, closed: ClosedWindow, ranges: list[OffsetRange], source: str,
                 at: int, detail: dict[str, Any], version: int | None = None) -> None:
        versions = stream.versions
        assert stream.reference is not None
        number = version or versions.next_version()
        versions.retire(window_values(stream.reference, stream.reference_ranges),
                        self.engine.cfg.reference_history_values, stream.reference_ranges)
        versions.current = ReferenceVersionInfo(
            version=number, source=source, created_at_unix_nano=at, n=closed.n,
            detail={k: v for k, v in detail.items() if v not in (None, "")})
        stream.reference, stream.reference_ranges = closed, ranges
        stream.prepared = None
        stream.new_reference = True
        stream.touched = True
        self.engine._announced[(stream.key, stream.record_type)] = stream

    def _collect(self, stream: Stream, command: ReferenceCommand, detail: dict[str, Any]) -> None:
        """``--next N``: abandon the open window, collect N records at the next index."""
        if command.records is None:
            raise ValueError("rebaseline --next needs a record count")
        engine = self.engine
        index = stream.window.index
        engine._forget_chunks(stream, index)
        stream.take_ranges()
        base = index + 1
        stream.window = collector(engine.cfg, engine._features[stream.record_type], stream.sketch,
                                  command.records, base, journal=engine.store is not None)
        stream.versions.collecting = {"version": stream.versions.next_version(),
                                      "records": command.records, "window": base, **detail}
        stream.touched = True

    def _from_window(self, stream: Stream, command: ReferenceCommand) -> ClosedWindow:
        if not command.ranges:
            raise ValueError(f"window {command.window} names no Kafka offsets to read back")
        if self.engine.reader is None:
            raise ValueError("this engine cannot read windows back from Kafka (offline)")
        try:
            timed = self.engine.reader(command.ranges, stream.segment)
        except Exception as e:  # a read failure is the command's outcome, not the stage's
            raise ValueError(f"reading window {command.window} back from Kafka: {e}") from None
        specs = self.engine._features[stream.record_type]
        store = store_factory(self.engine.cfg, specs, stream.sketch)()
        for record, _ in timed:
            for row in feature_rows(record, specs):
                store.add(row)
        if store.n == 0:
            raise ValueError(f"window {command.window}'s records are no longer on Kafka")
        return store.close(0)

    def _from_parquet(self, stream: Stream, command: ReferenceCommand) -> ClosedWindow:
        if not command.path:
            raise ValueError("rebaseline --parquet needs a path")
        cfg = self.engine.cfg.model_copy(update={"reference_path": command.path})
        parquet = ParquetReference(cfg, {stream.record_type: self.engine._features[stream.record_type]})
        closed = parquet.reference(stream.record_type, stream.segment, stream.sketch)
        if closed is None or closed.n == 0:
            raise ValueError(f"{command.path} has no rows of the {stream.record_type} features "
                             f"for segment {stream.key!r}")
        # Held (and checkpointed) as values: the dataset may change or go later.
        return ClosedWindow(0, closed.n, closed.columns, closed.sketches)


PROMOTION_DETAIL = ("source", "episode_id", "run", "model_version", "model_field")
"""What a promotion's reference version records of it (its provenance), beside command_id."""


def promotion_detail(command: ReferenceCommand) -> dict[str, Any]:
    """The provenance a promotion command gives its new reference version.

    >>> c = ReferenceCommand(command_id="c1", command="rebaseline", segment_key="s",
    ...     record_type="llm", source="promotion", episode_id="e1", run="retrain-e1",
    ...     model_version="v7")
    >>> promotion_detail(c)
    {'source': 'promotion', 'episode_id': 'e1', 'run': 'retrain-e1', 'model_version': 'v7'}
    """
    values = {k: getattr(command, k) for k in PROMOTION_DETAIL}
    return {k: v for k, v in values.items() if v}


def admits(collecting: dict[str, Any] | None, record: Record) -> bool:
    """Whether a record may enter the reference being collected: with a promotion's
    ``model_field``, only records of the promoted model (a record without that field counts).

    >>> from observer.core.records import LLMCall
    >>> call = LLMCall(service="s", model="m2", trace_id="t", span_id="s")
    >>> want = {"model_field": "model", "model_version": "m2"}
    >>> admits(want, call), admits({**want, "model_version": "m1"}, call), admits(None, call)
    (True, False, True)
    """
    if not collecting or not collecting.get("model_field"):
        return True
    value = getattr(record, collecting["model_field"], None)
    return value is None or str(value) == collecting.get("model_version")


def collector(cfg: Any, specs: Any, sketch: bool, records: int, base: int, *,
              journal: bool) -> ReferenceFirst:
    """Windows that first collect ``records`` records at index ``base`` as a reference."""
    regular = new_window(cfg, specs, sketch=sketch, journal=journal, external_reference=True)
    assert not isinstance(regular, ReferenceFirst)
    return ReferenceFirst(regular, [s.name for s in specs], store_factory(cfg, specs, sketch),
                          records=records, journal=journal, base=base)
