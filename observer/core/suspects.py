"""Offsets of batches a processor failed on: to be re-read one message at a time.

When ``processor.process(batch)`` raises, any message of the batch may be the cause. The
runner marks the batch's offset range of each partition as suspect; the supervisor keeps the
ranges across the restart, and the next runner processes every message inside a range alone,
so the one that still fails is quarantined and the others go through.

>>> from observer.core.bus import Message
>>> s = SuspectRanges()
>>> s.mark([Message("spans", 0, 5, None, b"", 0), Message("spans", 0, 9, None, b"", 0)])
>>> [s.holds(Message("spans", 0, o, None, b"", 0)) for o in (4, 5, 9, 10)]
[False, True, True, False]
>>> s.passed("spans", 0, 10); bool(s)
False
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the bus imports this module
    from observer.core.bus import Message


class SuspectRanges:
    """``(topic, partition) -> (first, last)`` offsets (inclusive), thread-safe."""

    def __init__(self) -> None:
        self._ranges: dict[tuple[str, int], tuple[int, int]] = {}
        self._lock = threading.Lock()

    def mark(self, messages: Iterable[Message]) -> None:
        """Widen the ranges to cover ``messages``."""
        with self._lock:
            for m in messages:
                tp = (m.topic, m.partition)
                first, last = self._ranges.get(tp, (m.offset, m.offset))
                self._ranges[tp] = (min(first, m.offset), max(last, m.offset))

    def holds(self, message: Message) -> bool:
        with self._lock:
            span = self._ranges.get((message.topic, message.partition))
        return span is not None and span[0] <= message.offset <= span[1]

    def passed(self, topic: str, partition: int, next_offset: int) -> None:
        """``next_offset`` was committed: forget the range once it lies wholly before it."""
        with self._lock:
            span = self._ranges.get((topic, partition))
            if span is not None and span[1] < next_offset:
                del self._ranges[(topic, partition)]

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self._ranges)
