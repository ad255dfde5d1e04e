"""The eval join's checkpoint on local disk, for the embedded broker (``kafka.embedded_durable``).

On the memory-only embedded broker, ``observer.eval-join-state`` vanishes with the process.
In embedded durable mode the stage's processor is a :class:`MirroredJoiner`: every batch's
checkpoint records (latest value per key, tombstones delete) are written to a local SQLite
file (``synchronous=FULL``), instead of the topic, *before* the batch's outputs go to Kafka,
hence before its input offsets are committed, and a new processor reads its state back from
that file
(:class:`LocalStateStore` is its :class:`~observer.collectors.eval_join.checkpoint.StateStore`).

A waiting evaluation is known by where it was read (``partition/offset``), and a new broker
incarnation numbers its records from 0 again: rows of another incarnation are read back with
their ids prefixed by that incarnation (and rewritten so), so an old id never hides a new one.

>>> import tempfile, pathlib
>>> from observer.core.bus import Output
>>> path = pathlib.Path(tempfile.mkdtemp()) / STATE_FILE
>>> old = LocalStateStore(path, "s", incarnation="aaaaaaaa11")
>>> old.apply([Output("s", "p:0/5", b"{}"), Output("s", "t:x", b"{}"), Output("x", "k", b"")])
>>> sorted(LocalStateStore(path, "s", incarnation="bbbbbbbb22").load())
['p:aaaaaaaa~0/5', 't:x']
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from observer.collectors.eval_join.checkpoint import PENDING_PREFIX

from observer.core.bus import Message, Output
from observer.core.compacted import key_text
from observer.core.state_file import StateFile

STATE_FILE = "eval-join-state.sqlite"


class LocalStateStore:
    """The checkpoint topic's latest values in a SQLite file (see the module)."""

    def __init__(self, path: Path, topic: str, incarnation: str) -> None:
        self.topic = topic
        self.incarnation = incarnation
        self._file = StateFile(path)

    def close(self) -> None:
        self._file.close()

    def apply(self, outputs: Iterable[Output]) -> None:
        """Write the checkpoint records among ``outputs`` in one transaction."""
        rows = [(key_text(o.key), o.value) for o in outputs if o.topic == self.topic]
        if rows:
            self._file.transaction(self._file.state_writes(rows, self.incarnation))

    def load(self) -> dict[str, bytes]:
        rows = self._file.rows("SELECT key, value, incarnation FROM state")
        values: dict[str, bytes] = {}
        moves: list[tuple[str, bytes | None]] = []
        for key, value, incarnation in rows:
            if incarnation != self.incarnation and key.startswith(PENDING_PREFIX):
                # Offsets of an earlier broker: an id that can never match a new record.
                moved = f"{PENDING_PREFIX}{incarnation[:8]}~{key[len(PENDING_PREFIX):]}"
                moves += [(key, None), (moved, value)]
                key = moved
            values[key] = bytes(value)
        if moves:
            self._file.transaction(self._file.state_writes(moves, self.incarnation))
        return values


class MirroredJoiner:
    """A :class:`~observer.core.bus.Processor` writing the joiner's checkpoint records to its
    :class:`LocalStateStore` before handing its other outputs to the runner (the file is
    what a restart reads: a copy in the memory-only broker would only cost memory)."""

    def __init__(self, joiner: Any, local: LocalStateStore) -> None:
        self.joiner = joiner
        self.local = local
        self.name = joiner.name

    def process(self, messages: list[Message]) -> list[Output]:
        return self._mirrored(self.joiner.process(messages))

    def tick(self) -> list[Output]:
        return self._mirrored(self.joiner.tick())

    def _mirrored(self, outputs: list[Output]) -> list[Output]:
        self.local.apply(outputs)
        return [o for o in outputs if o.topic != self.local.topic]

    def close(self) -> None:
        """Close the state file (a supervisor rebuilding the stage opens a new one)."""
        self.local.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.joiner, name)
