"""Evaluations waiting for their target: a buffer bounded by count, each due at a deadline.

Each waiting evaluation is known by its ``eval_id`` (where it was read: the partition and
offset of ``observer.evals``), so reading it again (a replay after a restart) does not queue it
twice. It leaves when one of its join keys is seen (:meth:`PendingBuffer.take`), when its
deadline passes (:meth:`PendingBuffer.due`), or when the buffer is full and it is the oldest
(:meth:`PendingBuffer.add` returns it).

>>> from observer.core.records import EvalRecord
>>> rec = EvalRecord(name="qa", target="span", span_id="ab" * 8, source="rest")
>>> buffer = PendingBuffer(max_pending=1)
>>> buffer.add(Pending("0/1", rec, [("span", "", "ab" * 8)], due_ms=10))
[]
>>> [p.eval_id for p in buffer.add(Pending("0/2", rec, [("span", "", "cd" * 8)], due_ms=20))]
['0/1']
>>> [p.eval_id for p in buffer.take(("span", "", "cd" * 8))], len(buffer)
(['0/2'], 0)
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from observer.collectors.eval_join.targets import JoinKey

from observer.core.records import EvalRecord


@dataclass(frozen=True)
class Pending:
    """One evaluation waiting for a target under any of ``keys``, until ``due_ms``."""

    eval_id: str
    record: EvalRecord
    keys: list[JoinKey]
    due_ms: int


class PendingBuffer:
    """Waiting evaluations in arrival order (deadlines are arrival + a fixed TTL in record
    time, which never goes back, so the front is always the first due)."""

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self._waiting: OrderedDict[str, Pending] = OrderedDict()
        # Insertion-ordered dicts as ordered sets: removing one of many ids under a key stays O(1).
        self._by_key: dict[JoinKey, dict[str, None]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, eval_id: str) -> bool:
        return eval_id in self._waiting

    def add(self, pending: Pending) -> list[Pending]:
        """Queue ``pending``; the oldest evaluations pushed out to stay within
        ``max_pending``."""
        if pending.eval_id in self._waiting:
            return []
        self._waiting[pending.eval_id] = pending
        for key in pending.keys:
            self._by_key.setdefault(key, {})[pending.eval_id] = None
        evicted = []
        while len(self._waiting) > self.max_pending:
            evicted.append(self._remove(next(iter(self._waiting))))
        return evicted

    def take(self, key: JoinKey) -> list[Pending]:
        """The evaluations waiting under ``key``, in arrival order, removed."""
        ids = self._by_key.pop(key, None)
        if not ids:
            return []
        return [self._remove(i) for i in list(ids) if i in self._waiting]

    def due(self, now_ms: int) -> list[Pending]:
        """The evaluations whose deadline is at or before ``now_ms``, removed."""
        out = []
        while self._waiting:
            first = next(iter(self._waiting.values()))
            if first.due_ms > now_ms:
                break
            out.append(self._remove(first.eval_id))
        return out

    def _remove(self, eval_id: str) -> Pending:
        pending = self._waiting.pop(eval_id)
        for key in pending.keys:
            ids = self._by_key.get(key)
            if ids is not None:
                ids.pop(eval_id, None)
                if not ids:
                    del self._by_key[key]
        return pending
