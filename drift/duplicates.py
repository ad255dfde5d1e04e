"""Duplicate suppression after a restore: each result reaches ``observer.drift`` once.

A killed engine may have had results acknowledged without its input offsets (and checkpoints)
committed; the replay after the restart derives those results again. When the engine restores
partitions it asks the results topic (:mod:`observer.drift.published`) what was published since
the last batch the checkpoints prove committed, and this :class:`ReplayGuard` remembers:

- per stream, the windows whose results are *ahead* of the replay: when the replay closes one
  of them again, the engine's state advances but the result is dropped (:meth:`ReplayGuard.suppress`,
  counted in ``observer_drift_duplicates_suppressed_total``);
- per input partition, a *horizon*: while the replay is behind the last input offset of
  those results, checkpoints carry the horizon instead of the batch's time, so a later restore
  still looks back far enough (:meth:`ReplayGuard.horizon_ms`, :meth:`ReplayGuard.passed`).

>>> guard = ReplayGuard()
>>> guard.ahead[("shop|m1", "llm")] = {3}
>>> guard.suppress("shop|m1", "llm", 2), guard.suppress("shop|m1", "llm", 3), guard.ahead
(False, True, {})
>>> guard.extend(("observer.llm", 0), 1_000, until_offset=40)
>>> guard.horizon_ms({("observer.llm", 0): 12}, at_ms=5_000)
1000
>>> guard.passed(("observer.llm", 0), 40); guard.horizon
{}
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping

from observer.drift.checkpoint import TP, RestoredStream
from observer.drift.metrics import DUPLICATES
from observer.drift.published import ResultId, ResultLog

log = logging.getLogger(__name__)

StreamId = tuple[str, str]
"""``(segment_key, record_type)``."""


class ReplayGuard:
    """What a restore found already published, until the replay has passed it."""

    def __init__(self) -> None:
        # Results a restore found already published and the replay has not derived again.
        # Kept per stream and pruned as its windows close: windows close in index order.
        self.ahead: dict[StreamId, set[int]] = {}
        # Input partition -> (horizon_ms, last input offset of those results).
        self.horizon: dict[TP, tuple[int, int]] = {}

    def suppress(self, key: str, record_type: str, window_index: int) -> bool:
        """Whether the result of this window, just derived again, was published already
        (counted as a suppressed duplicate)."""
        ahead = self.ahead.get((key, record_type))
        if not ahead:
            return False
        found = window_index in ahead
        ahead.difference_update(range(min(ahead), window_index + 1))
        if not ahead:
            del self.ahead[(key, record_type)]
        if found:
            DUPLICATES.labels(record_type).inc()
        return found

    def passed(self, tp: TP, offset: int) -> None:
        """The replay reached ``offset`` of ``tp``: past everything the predecessor published
        there, so once this batch is committed no later replay derives those results again."""
        if tp in self.horizon and offset >= self.horizon[tp][1]:
            del self.horizon[tp]

    def horizon_ms(self, positions: Collection[TP], at_ms: int) -> int:
        """The time a checkpoint of a stream at ``positions`` must carry."""
        return min([at_ms, *(self.horizon[tp][0] for tp in positions if tp in self.horizon)])

    def extend(self, tp: TP, since_ms: int, until_offset: int) -> None:
        h = self.horizon.get(tp)
        self.horizon[tp] = (since_ms, until_offset) if h is None else (
            min(h[0], since_ms), max(h[1], until_offset))

    def published(self, results: ResultLog, partitions: set[TP], first: dict[TP, int],
                  restored: Mapping[StreamId, RestoredStream], live: Collection[StreamId],
                  lookback_s: float) -> set[ResultId]:
        """Ids of the results published since the last batch the checkpoints prove committed;
        those the replay of ``partitions`` from ``first`` may derive again join :attr:`ahead`.
        ``live``: the streams held now, of partitions not restored now.

        A committed batch's chunk positions lie before the replay start, and its
        ``horizon_ms`` is no later than anything published after it.
        """
        # Per partition: the chunks of other partitions say nothing about when this one's
        # results were published (another engine may have owned it meanwhile).
        bounds: dict[TP, int] = {}
        for state in restored.values():
            for horizon, positions in state.marks:
                if horizon is None or not committed(positions, partitions, first):
                    continue
                for tp in partitions.intersection(positions):
                    bounds[tp] = max(bounds.get(tp, horizon), horizon)
        since = (
            min(bounds.values()) - int(lookback_s * 1000)
            if len(bounds) == len(partitions) else None  # no committed state: read it all
        )
        seen: set[ResultId] = set()
        ahead = 0
        for p in results.since(since):
            seen.add(p.id)
            key, record_type, window = p.id
            state = restored.get((key, record_type))
            if state is not None:
                again = window >= state.window  # earlier windows closed before the checkpoint
            elif (key, record_type) in live:
                again = False  # a live stream of partitions not restored now
            else:
                # A stream no checkpoint knows: re-derived unless its window provably closed
                # before the replay start. (A sliding window closed by the same record as the
                # one before it has no ranges of its own.)
                again = not p.last_offsets or any(
                    o >= first[tp] for tp, o in p.last_offsets.items() if tp in partitions
                )
            if not again:
                continue
            self.ahead.setdefault((key, record_type), set()).add(window)
            ahead += 1
            for tp, o in p.last_offsets.items():
                if tp in partitions and o >= first[tp]:
                    self.extend(tp, since or 0, o)
        for state in restored.values():
            if state.unconfirmed_results and not committed(state.marks[0][1], partitions, first):
                # Chunk 0 carries results of a batch in flight at the kill, and stays so
                # until the replay passes its positions: until then a later restore must
                # still look back to when they were published.
                for tp in partitions.intersection(state.positions):
                    self.extend(tp, since or 0, state.positions[tp])
        log.info("%d results published since %s are ahead of the replay", ahead, since)
        return seen


def committed(positions: Mapping[TP, int], partitions: set[TP], first: dict[TP, int]) -> bool:
    """Whether a chunk with these positions came from a batch whose offsets were committed:
    on every partition being replayed it ends before the replay start.

    >>> committed({("llm", 0): 9}, {("llm", 0)}, {("llm", 0): 10})
    True
    >>> committed({("llm", 0): 10}, {("llm", 0)}, {("llm", 0): 10})
    False
    """
    return all(o < first[tp] for tp, o in positions.items() if tp in partitions)
