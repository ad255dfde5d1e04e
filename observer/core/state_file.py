"""A stage's state mirrored on local disk, for the embedded broker (``kafka.embedded_durable``).

The memory-only embedded broker loses its topics with the process, so the stages that
checkpoint to a compacted topic (the drift engine, the eval join) write the same records to a
SQLite file first. :class:`StateFile` is that file: every transaction is fsynced
(``synchronous=FULL``) before it returns, so a batch's state is on disk before the batch's
outputs go to Kafka, hence before its input offsets are committed. Its ``state`` table holds
the latest value per key with the broker incarnation that wrote it
(:func:`observer.core.broker.write_incarnation`); a stage adds its own tables with ``schema``.

>>> import tempfile, pathlib
>>> f = StateFile(pathlib.Path(tempfile.mkdtemp()) / "s.sqlite")
>>> f.transaction(f.state_writes([("a", b"1"), ("b", b"2"), ("a", None)], "i1"))
>>> f.rows("SELECT key, value, incarnation FROM state")
[('b', b'2', 'i1')]
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

STATE_TABLE = """
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY, value BLOB NOT NULL, incarnation TEXT NOT NULL);
"""

Statement = tuple[str, tuple[Any, ...]]
"""One SQL statement and its parameters."""


class StateFile:
    """One SQLite file (WAL, fsynced commits) shared by a stage's threads."""

    def __init__(self, path: Path, schema: str = "") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # each commit is fsynced
        self._db.executescript(STATE_TABLE + schema)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def transaction(self, statements: Iterable[Statement]) -> None:
        """Run ``statements`` in one transaction: all of them on disk, or none."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    self._db.execute(sql, params)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    @staticmethod
    def state_writes(values: Iterable[tuple[str, bytes | None]], incarnation: str) -> list[Statement]:
        """The statements that store ``values`` in ``state`` (``None`` deletes the key)."""
        return [("DELETE FROM state WHERE key = ?", (key,)) if value is None else
                ("INSERT OR REPLACE INTO state VALUES (?, ?, ?)", (key, value, incarnation))
                for key, value in values]
