"""Idle streams make room: at ``drift.max_streams``, a new segment takes the place of the
stream idle longest, once that one has had no record for ``drift.stream_idle_s``.

Without this the cap is first come, first served: over months of prompt versions, models
and services, dead segments fill it and every new segment is refused. A stream inside a
drift episode is never retired (its episode would end unseen). Retiring a stream deletes
its checkpoint records (its open window's chunks, the older windows' chunks still waiting
for deletion and its reference record, as tombstones on ``observer.drift-state``), returns
its share of ``drift.exact_budget_mb``, removes its Prometheus series and deletes its state
on ``observer.references`` (a tombstone: the admin API and ``observer drift reference`` stop
listing it). With ``drift.peer``, its fleet segment and that segment's checkpoint records go
too once no held stream feeds it (:meth:`observer.drift.peer.PeerDrift.stream_retired`), so
peer state stays within what the streams bound. If its segment comes back, it is a new
stream with a new reference, never scored against the old one. Its results on
``observer.drift`` stay.

Idle time is read on the engine's clock: the time of the batch that last gave the stream a
record. A stream restored after a restart counts as seen at its restore, so a restart
postpones retirements and never hastens them.

>>> from types import SimpleNamespace as S
>>> idle = IdleStreams(idle_s=60)
>>> a = S(last_seen_ns=0, episode_start=None)
>>> b = S(last_seen_ns=30 * 10**9, episode_start=None)
>>> print(idle.pick([a, b], now_ns=50 * 10**9))  # nobody idle for 60 s yet
None
>>> idle.pick([a, b], now_ns=70 * 10**9) is a
True
>>> a.episode_start = 4  # drifting: kept, however long it has been quiet
>>> print(idle.pick([a, b], now_ns=80 * 10**9))
None
>>> idle.pick([a, b], now_ns=95 * 10**9) is b
True
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from observer.core.bus import Output
from observer.core.compacted import key_text
from observer.drift.checkpoint import chunk_key, reference_key


class Retirable(Protocol):
    last_seen_ns: int
    episode_start: int | None


class IdleStreams:
    """Picks the stream a new segment replaces.

    Parameters
    ----------
    idle_s
        ``drift.stream_idle_s``: the least time without a record before a stream may go;
        0 keeps every stream (a full cap then refuses new segments).
    """

    def __init__(self, idle_s: float) -> None:
        self.idle_ns = int(idle_s * 1e9)
        # Before this time (engine clock) no stream can have been idle long enough: a flood
        # of new segments at a full cap costs one scan of the streams, not one per record.
        self._not_before = 0

    def pick(self, streams: Iterable[Retirable], now_ns: int) -> Retirable | None:
        """The stream idle longest, if for at least ``idle_s`` and in no drift episode."""
        if self.idle_ns <= 0 or now_ns < self._not_before:
            return None
        quiet = [s for s in streams if s.episode_start is None]
        oldest = min(quiet, key=lambda s: s.last_seen_ns, default=None)
        if oldest is not None and now_ns - oldest.last_seen_ns >= self.idle_ns:
            return oldest
        # A stream's idle time only starts again (a record), and a stream leaves an episode
        # only with new records: none can qualify before this.
        self._not_before = (oldest.last_seen_ns if oldest is not None else now_ns) + self.idle_ns
        return None


def of_stream(output: Output, topic: str, record_type: str, segment_key: str) -> bool:
    """True for a deletion of one of the stream's checkpoint records (keys
    ``type/segment/window/seq``; a segment key may itself hold "/").

    >>> [of_stream(Output("s", k, None), "s", "llm", "a|m") for k in ("llm/a|m/2/0", "llm/a|m/x/2/0")]
    [True, False]
    """
    return (output.topic == topic and output.value is None
            and key_text(output.key).rsplit("/", 2)[0] == f"{record_type}/{segment_key}")


def tombstones(topic: str, record_type: str, segment_key: str, window: int,
               chunks: int) -> list[Output]:
    """The deletions of a retired stream's open window's chunks and its reference record.

    >>> [o.key for o in tombstones("s", "llm", "a|m", 3, 2)]
    ['llm/a|m/3/0', 'llm/a|m/3/1', 'llm/a|m/ref']
    """
    keys = [chunk_key(record_type, segment_key, window, seq) for seq in range(chunks)]
    keys.append(reference_key(record_type, segment_key))
    return [Output(topic, k, None) for k in keys]
