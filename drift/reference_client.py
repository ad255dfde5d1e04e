"""What ``observer references`` and ``/api/v1/references`` share: reading the references'
read model (``observer.references``), checking a command against it, and sending it to
``observer.drift-commands`` for the drift engine (:mod:`observer.drift.reference_commands`).

Neither the CLI nor the admin API touches the engine's memory: they read what it published
and write a command it consumes in order with its inputs.

>>> state = ReferenceState(segment={"service": "shop"}, segment_key="shop", record_type="llm",
...                        current=1, pinned=True)
>>> def why(*args, **kw):
...     try:
...         check(*args, **kw)
...     except CommandError as e:
...         return e.status, str(e)
>>> why(state, "shop", "llm", "rebaseline", next=10)
(409, 'reference v1 is pinned: unpin it first, or force the rebaseline')
>>> check(state, "shop", "llm", "rebaseline", next=10, force=True).records
10
>>> why(state, "shop", "llm", "rebaseline", next=10, parquet="x.parquet")
(400, 'rebaseline needs exactly one of --next N, --from-window N, --parquet PATH (got next, parquet)')
>>> why(None, "nope", "llm", "pin")
(404, "no reference is known for segment 'nope' of record type llm (observer references list)")
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any

from observer.core import bus
from observer.core.bus import make_producer, produce_all
from observer.core.compacted import KafkaCompactedStore
from observer.core.config import KafkaConfig
from observer.core.records import (
    DriftResult,
    RecordError,
    ReferenceCommand,
    ReferenceState,
    decode,
    encode,
)
from observer.core.topics import Topics
from observer.drift.references import Versions, rebaseline_refusal, state_key


class CommandError(ValueError):
    """A command that cannot be sent; ``status`` is the HTTP status that says why."""

    status = 400


class UnknownSegment(CommandError):
    status = 404


class CommandRefused(CommandError):
    status = 409


def check(state: ReferenceState | None, segment_key: str, record_type: str, command: str, *,
          next: int | None = None, from_window: int | None = None, parquet: str | None = None,
          force: bool = False, by: str = "", ranges: Iterable[Any] = ()) -> ReferenceCommand:
    """The command to send, or :class:`CommandError` saying why not."""
    if state is None:
        raise UnknownSegment(f"no reference is known for segment {segment_key[:200]!r} of record "
                             f"type {record_type[:64]} (observer references list)")
    sources = {"next": next, "from-window": from_window, "parquet": parquet}
    given = [name for name, v in sources.items() if v is not None]
    if command != "rebaseline":
        if given or force:
            raise CommandError(f"{command} takes no rebaseline source or force")
        return ReferenceCommand(command_id=uuid.uuid4().hex, command=command,  # type: ignore[arg-type]
                                segment_key=segment_key, record_type=record_type, by=by,
                                at_unix_nano=time.time_ns())
    if len(given) != 1:
        raise CommandError("rebaseline needs exactly one of --next N, --from-window N, "
                           f"--parquet PATH (got {', '.join(given) or 'none'})")
    if next is not None and next < 1:
        raise CommandError(f"--next must be a positive record count, not {next}")
    if from_window is not None and from_window < 1:
        raise CommandError(f"--from-window must be a scored window (1 or more), not {from_window}")
    if parquet is not None and not parquet.strip():
        raise CommandError("--parquet needs a dataset path")
    refusal = rebaseline_refusal(Versions(current=None, pinned=state.pinned), force=force)
    if refusal is not None:
        raise CommandRefused(refusal.replace("v?", f"v{state.current}"))
    return ReferenceCommand(
        command_id=uuid.uuid4().hex, command="rebaseline", segment_key=segment_key,
        record_type=record_type, source=given[0], records=next, window=from_window,  # type: ignore[arg-type]
        ranges=list(ranges), path=parquet, force=force, by=by, at_unix_nano=time.time_ns(),
    )


def window_ranges(results: Iterable[Any], segment_key: str, record_type: str,
                  window: int) -> list[Any]:
    """The offset ranges of a scored window, from the results that name it."""
    for r in results:
        if (isinstance(r, DriftResult) and r.segment_key == segment_key
                and r.record_type == record_type and r.window_index == window):
            if not r.current_ranges:
                raise CommandError(f"window {window} of {segment_key!r} names no Kafka offsets")
            return list(r.current_ranges)
    raise UnknownSegment(f"no scored window {window} of segment {segment_key!r} ({record_type}) "
                         "is known (observer.drift)")


def read_topic(kafka: KafkaConfig, topic: str, timeout_s: float = 30.0) -> list[tuple[bytes | None, bytes]]:
    """Every record of ``topic`` from its beginning to its current end: (key, value)."""
    try:
        records = bus.read_topic(kafka, topic, timeout_s)
    except TimeoutError:
        raise TimeoutError(f"reading {topic} took too long") from None
    return [(r.key, r.value) for r in records if r.value is not None]


def read_states(kafka: KafkaConfig, topics: Topics) -> dict[str, ReferenceState]:
    """The latest state of every stream on ``observer.references``, by ``record_type/segment``;
    a deleted one (a retired stream's tombstone, drift.retirement) is not there."""
    states: dict[str, ReferenceState] = {}
    store = KafkaCompactedStore(kafka, topics.references, 30.0, what="the reference states")
    for value in store.load().values():
        try:
            record = decode(value)
        except RecordError:
            continue
        if isinstance(record, ReferenceState):
            states[state_key(record.record_type, record.segment_key)] = record
    return states


def read_results(kafka: KafkaConfig, topics: Topics, segment_key: str) -> list[DriftResult]:
    """The segment's results on ``observer.drift`` (keyed by segment)."""
    out = []
    for key, value in read_topic(kafka, topics.drift):
        if key is not None and key.decode(errors="replace") == segment_key:
            try:
                record = decode(value)
            except RecordError:
                continue
            if isinstance(record, DriftResult):
                out.append(record)
    return out


def send(kafka: KafkaConfig, topics: Topics, command: ReferenceCommand, timeout_s: float = 30.0) -> None:
    """Write ``command`` to ``observer.drift-commands``, acknowledged."""
    from observer.core.bus import Output

    producer = make_producer(kafka)
    try:
        produce_all(producer, [Output(topics.drift_commands,
                                      state_key(command.record_type, command.segment_key),
                                      encode(command))], timeout_s)
    finally:
        producer.close()


def wait_outcome(kafka: KafkaConfig, topics: Topics, command: ReferenceCommand,
                 timeout_s: float) -> dict[str, Any] | None:
    """The engine's outcome of ``command`` (``last_command`` of the stream's state), or
    ``None`` when it has not published one within ``timeout_s``."""
    key = state_key(command.record_type, command.segment_key)
    deadline = time.monotonic() + timeout_s
    while True:
        state = read_states(kafka, topics).get(key)
        last = state.last_command if state is not None else None
        if last is not None and last.get("command_id") == command.command_id:
            return last
        if time.monotonic() > deadline:
            return None
        time.sleep(0.5)
