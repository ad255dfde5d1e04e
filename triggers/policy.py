"""The policy state machine: sustained drift in one segment becomes one decision.

A :class:`PolicyTracker` follows River's protocol: feed it every drift result with
:meth:`PolicyTracker.update`; it answers ``None`` or a :class:`Decision`. Per
``(segment_key, record_type)`` of a watched segment (``segments`` globs) it looks at the last
``window_of`` (M) windows and counts those that qualify (signal at or above the threshold,
enough samples, a watched record type); windows missing from the indices count as not
qualifying. When N = ``consecutive_windows`` of the last M qualify, the run ends in a decision:
``fired`` normally, ``suppressed`` when the policy already fired for that key less than
``cooldown_s`` ago. M defaults to N, which is "N in a row". A policy with ``all_of`` /
``any_of`` instead of one signal (:class:`CombinedConditions`, readers in
:mod:`observer.triggers.conditions`) qualifies a window when its conditions hold, each over its
own ``for_windows``; one such window completes the run, and the decision carries each
condition's figures.

After a decision the count starts again. With ``clear_windows`` = 0 a long drift therefore
yields one decision per N windows (fired at most once per cooldown). With ``clear_windows`` =
K > 0 the decision opens an *episode* that lasts until K windows in a row fall below
``clear_threshold`` (default: the threshold); no decision is taken while it is open, so one
long drift is one episode however long it lasts, and the policy re-arms only after the clear.

State survives restarts: :meth:`PolicyTracker.take_dirty` hands out a :class:`TrackerState`
per key that changed (the last M windows' values, the open episode and its clear count, the
last window seen, the last firing), the stage stores them in the ledger, and
:meth:`PolicyTracker.restore` puts them back, so a restarted tracker continues exactly where
it was. Results at or below the last window seen for a key are replays (the bus is at least
once; input offsets are committed after the batch's outputs): they are ignored, never counted
twice (:meth:`PolicyTracker.is_replay`). A lower window index whose window closed *later* than
the last one seen is the drift engine numbering again from scratch, not a replay: the run
starts afresh. :func:`episode_id` is a pure function of the run, so a run replayed without its
state gets the id it had before and the ledger refuses to decide it twice.

>>> from observer.triggers.config import PolicyConfig
>>> from observer.core.records import DriftResult
>>> def window(i: int, share: float, n: int = 500) -> DriftResult:
...     return DriftResult(segment={"service": "shop"}, segment_key="shop", record_type="llm",
...         window_index=i, n_reference=500, n_current=n, features=[], drift_share=share,
...         dataset_drift=share >= 0.5, closed_at_unix_nano=0)
>>> tracker = PolicyTracker(PolicyConfig(name="p", threshold=0.5, consecutive_windows=2))
>>> tracker.update(window(1, 0.75), now=0.0) is None
True
>>> d = tracker.update(window(2, 0.8), now=1.0)
>>> d.kind, d.reason
('fired', 'drift_share 0.75 >= 0.5 for 2 consecutive windows (windows 1-2, n=500)')
>>> tracker.update(window(3, 0.9), now=2.0), tracker.update(window(4, 0.9), now=3.0).kind
(None, 'suppressed')

Two of the last three, and an episode that must clear before the policy re-arms:

>>> hyst = PolicyTracker(PolicyConfig(name="h", threshold=0.5, consecutive_windows=2,
...     window_of=3, clear_windows=2, cooldown_s=0))
>>> [hyst.update(window(i, s), now=i) for i, s in enumerate([0.7, 0.1], start=1)]
[None, None]
>>> hyst.update(window(3, 0.8), now=3).reason
'drift_share 0.7 >= 0.5 in 2 of the last 3 windows (windows 1-3, n=500)'
>>> [hyst.update(window(i, s), now=i) for i, s in enumerate([0.9, 0.9, 0.2, 0.9], start=4)]
[None, None, None, None]
>>> [hyst.update(window(i, s), now=i) for i, s in enumerate([0.2, 0.1, 0.9], start=8)]
[None, None, None]
>>> hyst.update(window(11, 0.9), now=11).first_window_index
10
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from observer.triggers.conditions import Reading, Verdict, judge, reading, stream_matches
from observer.triggers.config import PolicyConfig
from observer.core.records import DriftResult

DecisionKind = Literal["fired", "suppressed"]


@dataclass(frozen=True)
class Decision:
    """The end of one qualifying run: the policy fired, or would have but was cooling down."""

    policy: str
    segment_key: str
    record_type: str
    episode_id: str
    kind: DecisionKind
    reason: str
    window_index: int
    """The window that completed the run."""
    first_window_index: int
    """The first window of the run (the one the episode id derives from)."""
    decided_at: float
    """Unix seconds, from the ``now`` given to :meth:`PolicyTracker.update`."""
    conditions: tuple[Verdict, ...] = ()
    """A combined policy's conditions with their figures (empty for a single signal)."""


def episode_id(
    policy: str, segment_key: str, record_type: str, first_window_index: int, generation: int = 0
) -> str:
    """Deterministic id of a run: re-processing the same results yields the same id.

    ``generation`` counts the times the drift engine started its window numbering again for
    this key (its state was lost, e.g. the embedded memory-only broker restarted while the
    ledger stayed): window 3 of a new numbering is another episode than the old window 3.

    >>> episode_id("p", "shop|gpt-4o", "llm", 3)
    '31f3f78f1c483357d7c666373bedee2c'
    >>> episode_id("p", "shop|gpt-4o", "llm", 3, generation=1) != episode_id("p", "shop|gpt-4o", "llm", 3)
    True
    """
    text = f"{policy}|{segment_key}|{record_type}|{first_window_index}"
    if generation:
        text += f"|g{generation}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def signal_of(
    result: DriftResult, signal: str, feature: str | None = None, degradation: str | None = None
) -> float:
    """The window's value that a policy compares with its threshold (NaN when absent).

    ``degradation`` is 1.0 when the window's degradation signal of that name (a change
    detector of the segment, see ``drift.degradation``) detected a change during the window,
    0.0 when it did not, NaN when the window does not carry it.

    >>> from observer.core.records import DriftResult, FeatureDrift
    >>> f = FeatureDrift(name="output_tokens", kind="numeric", method="psi", statistic=0.3,
    ...     threshold=0.1, drifted=True)
    >>> r = DriftResult(segment={}, segment_key="", record_type="llm", window_index=1,
    ...     n_reference=1, n_current=1, features=[f], drift_share=0.25, dataset_drift=True,
    ...     closed_at_unix_nano=0)
    >>> signal_of(r, "drift_share"), signal_of(r, "dataset_drift")
    (0.25, 1.0)
    >>> signal_of(r, "feature_statistic", "output_tokens"), signal_of(r, "feature_statistic", "x")
    (0.3, nan)
    >>> from observer.core.records import DegradationSignal
    >>> e = DegradationSignal(name="error_rate", field="status", detector="adwin", n=200,
    ...     mean=0.31, level=0.28, detected=True, detections=1)
    >>> r = r.model_copy(update={"degradation": [e]})
    >>> signal_of(r, "degradation", degradation="error_rate"), signal_of(r, "degradation", None, "x")
    (1.0, nan)
    """
    if signal == "drift_share":
        return float(result.drift_share)
    if signal == "dataset_drift":
        return 1.0 if result.dataset_drift else 0.0
    if signal == "feature_statistic":
        for f in result.features:
            if f.name == feature:
                return math.nan if f.statistic is None else float(f.statistic)
        return math.nan  # a window without the feature neither qualifies nor clears
    if signal == "degradation":
        for d in result.degradation:
            if d.name == degradation:
                return 1.0 if d.detected else 0.0
        return math.nan
    raise ValueError(f"unknown policy signal {signal!r}")


def segment_matches(segment: dict[str, str], patterns: dict[str, str]) -> bool:
    """Whether every ``field: glob`` of ``patterns`` matches the segment (empty: all do).

    >>> segment_matches({"service": "shop", "model": "gpt-4o"}, {"model": "gpt-*"})
    True
    >>> segment_matches({"service": "shop"}, {"model": "gpt-*"})
    False
    """
    return all(fnmatch.fnmatchcase(segment.get(k, ""), glob) for k, glob in patterns.items())


@dataclass(frozen=True)
class _Window:
    index: int
    qualifies: bool
    value: float
    n: int


@dataclass(frozen=True)
class TrackerState:
    """Everything a tracker knows about one ``(segment_key, record_type)``: what the ledger
    stores so that a restarted tracker resumes exactly where it was.

    ``recent`` holds the last M windows as ``(index, value, n)``, oldest first (a window
    missing from the indices is ``(index, nan, 0)``); whether each qualifies is recomputed
    from them on :meth:`PolicyTracker.restore`, so a changed threshold applies at once.
    """

    segment_key: str
    record_type: str
    last_window: int | None
    """The last window index counted: results at or below it are replays."""
    last_closed_at: int | None
    """``closed_at_unix_nano`` of that window (tells a replay from a renumbering engine)."""
    recent: tuple[tuple[int, float, int], ...]
    episode_open: bool
    episode_id: str | None
    """The open episode (None when none is open)."""
    episode_start: int | None
    """First window of the open episode's run."""
    clear_count: int
    """Windows in a row that met the clear condition so far."""
    last_fired_at: float | None
    generation: int = 0
    """Times the engine restarted its numbering for this key (see :func:`episode_id`)."""


@dataclass
class _KeyState:
    last_window: int | None = None
    last_closed_at: int | None = None
    # The last M windows, oldest first; missing indices are filled in as not qualifying.
    recent: deque[_Window] = field(default_factory=deque)
    episode_open: bool = False
    episode_id: str | None = None
    episode_start: int | None = None
    clear_count: int = 0
    last_fired_at: float | None = None
    generation: int = 0


class PolicyTracker:
    """Per-key hysteresis, episodes and cooldown for one :class:`PolicyConfig`.

    State round-trips through :class:`TrackerState`; a restored tracker decides exactly as the
    original would have:

    >>> from observer.triggers.config import PolicyConfig
    >>> from observer.core.records import DriftResult
    >>> def window(i: int, share: float) -> DriftResult:
    ...     return DriftResult(segment={"service": "shop"}, segment_key="shop",
    ...         record_type="llm", window_index=i, n_reference=500, n_current=500, features=[],
    ...         drift_share=share, dataset_drift=share >= 0.5, closed_at_unix_nano=i)
    >>> cfg = PolicyConfig(name="p", consecutive_windows=3)
    >>> before = PolicyTracker(cfg)
    >>> before.update(window(1, 0.9), now=0), before.update(window(2, 0.9), now=0)
    (None, None)
    >>> (saved,) = before.take_dirty()
    >>> after = PolicyTracker(cfg)
    >>> after.restore(saved)
    >>> after.update(window(2, 0.9), now=0) is None  # a replay: already counted
    True
    >>> after.update(window(3, 0.9), now=0).first_window_index
    1
    """

    def __init__(self, policy: PolicyConfig) -> None:
        self.policy = policy
        # A combined policy's window value is 1 when its conditions hold, else 0; each
        # condition counts its own windows, so one such window completes a run.
        self.combined = CombinedConditions(policy) if policy.conditions else None
        self.needed = 1 if self.combined else policy.consecutive_windows
        self.window_of = 1 if self.combined else policy.window_of or policy.consecutive_windows
        self.threshold = 1.0 if self.combined else policy.threshold
        self.clear_threshold = (
            self.threshold if policy.clear_threshold is None else policy.clear_threshold
        )
        self._state: dict[tuple[str, str], _KeyState] = {}
        self._dirty: set[tuple[str, str]] = set()

    def watches(self, result: DriftResult) -> bool:
        """Whether the window belongs to this policy at all (record type, segment, and
        comparison: a policy reads past-only results or peer results, never both)."""
        p = self.policy
        return (result.record_type in p.record_types and result.comparison == p.comparison
                and segment_matches(result.segment, p.segments))

    def _qualifies(self, value: float, n: int) -> bool:
        # NaN compares False: a window without the signal never qualifies. A combined
        # policy's conditions check their windows' sizes themselves.
        if self.combined:
            return value >= self.threshold
        return n >= self.policy.min_samples and value >= self.threshold

    def qualifies(self, result: DriftResult) -> bool:
        """Whether this window counts towards a run."""
        p = self.policy
        if self.combined:
            return self.watches(result) and self.combined.holds(result)[0]
        return self.watches(result) and self._qualifies(
            signal_of(result, p.signal, p.feature, p.degradation), result.n_current
        )

    def restore_fired(self, segment_key: str, record_type: str, at: float) -> None:
        """Remember that the policy fired for this key at ``at`` (cooldown across restarts)."""
        state = self._state.setdefault((segment_key, record_type), _KeyState())
        if state.last_fired_at is None or at > state.last_fired_at:
            state.last_fired_at = at

    def is_open(self, segment_key: str, record_type: str) -> bool:
        """Whether an episode of this key is open (decided, not cleared yet)."""
        state = self._state.get((segment_key, record_type))
        return bool(state and state.episode_open)

    # -- persistence --------------------------------------------------------------------

    def state(self, segment_key: str, record_type: str) -> TrackerState | None:
        """The key's state as a plain value (None for a key never seen)."""
        s = self._state.get((segment_key, record_type))
        if s is None:
            return None
        return TrackerState(
            segment_key=segment_key,
            record_type=record_type,
            last_window=s.last_window,
            last_closed_at=s.last_closed_at,
            recent=tuple((w.index, w.value, w.n) for w in s.recent),
            episode_open=s.episode_open,
            episode_id=s.episode_id,
            episode_start=s.episode_start,
            clear_count=s.clear_count,
            last_fired_at=s.last_fired_at,
            generation=s.generation,
        )

    def restore(self, saved: TrackerState) -> None:
        """Put a stored state back (at start, before any result is fed)."""
        key = (saved.segment_key, saved.record_type)
        fired = self._state[key].last_fired_at if key in self._state else None
        recent = deque(
            _Window(i, self._qualifies(v, n), v, n) for i, v, n in saved.recent[-self.window_of :]
        )
        last_fired = [t for t in (fired, saved.last_fired_at) if t is not None]
        self._state[key] = _KeyState(
            last_window=saved.last_window,
            last_closed_at=saved.last_closed_at,
            recent=recent,
            episode_open=saved.episode_open,
            episode_id=saved.episode_id,
            episode_start=saved.episode_start,
            clear_count=saved.clear_count,
            last_fired_at=max(last_fired) if last_fired else None,
            generation=saved.generation,
        )

    def take_dirty(self) -> list[TrackerState]:
        """States of the keys that changed since the last call (what to store now)."""
        keys, self._dirty = self._dirty, set()
        return [s for k in sorted(keys) if (s := self.state(*k)) is not None]

    def is_replay(self, result: DriftResult) -> bool:
        """Whether the window was counted already (a redelivery): at or below the last one
        seen for its key, and not a renumbering engine (which closes its windows later)."""
        state = self._state.get((result.segment_key, result.record_type))
        return state is not None and self._replayed(state, result)

    @staticmethod
    def _replayed(state: _KeyState, result: DriftResult) -> bool:
        last = state.last_window
        if last is None or result.window_index > last:
            return False
        if result.window_index == last:
            return True
        renumbered = (
            state.last_closed_at is not None and result.closed_at_unix_nano > state.last_closed_at
        )
        return not renumbered

    # -- the state machine --------------------------------------------------------------

    def update(self, result: DriftResult, now: float) -> Decision | None:
        """Feed one window; a :class:`Decision` when it completes a run."""
        p = self.policy
        if not self.watches(result):
            if self.combined and result.comparison == p.comparison:
                self.combined.observe(result, watched=False)  # another type a condition reads
            return None  # another stream: it neither counts nor breaks a run
        key = (result.segment_key, result.record_type)
        state = self._state.setdefault(key, _KeyState())
        if self._replayed(state, result):
            return None  # counted before (at-least-once upstream, or replayed after a crash)
        index = result.window_index
        previous = state.last_window
        contiguous = previous is not None and index == previous + 1
        if previous is not None and index < previous:  # not a replay: a new numbering
            state.generation += 1  # its windows make new episode ids
        state.last_window = index
        state.last_closed_at = result.closed_at_unix_nano
        self._dirty.add(key)
        verdicts: tuple[Verdict, ...] = ()
        if self.combined:
            self.combined.observe(result, watched=True)
            met, verdicts = self.combined.holds(result)
            value = 1.0 if met else 0.0
        else:
            value = signal_of(result, p.signal, p.feature, p.degradation)

        if state.episode_open:
            clears = result.n_current >= p.min_samples and value < self.clear_threshold
            if not clears:
                state.clear_count = 0
            else:
                state.clear_count = state.clear_count + 1 if contiguous else 1
            if state.clear_count >= p.clear_windows:
                state.episode_open = False
                state.episode_id = state.episode_start = None
                state.clear_count = 0
                state.recent.clear()
            return None

        if previous is None or index < previous:
            state.recent.clear()  # first sight, or the engine started counting again
        elif not contiguous:
            # Windows we never saw cannot count: they enter the history as not qualifying.
            for missing in range(max(index - self.window_of, previous + 1), index):
                state.recent.append(_Window(missing, False, math.nan, 0))
        state.recent.append(
            _Window(index, self._qualifies(value, result.n_current), value, result.n_current)
        )
        while len(state.recent) > self.window_of:
            state.recent.popleft()
        counted = [w for w in state.recent if w.qualifies]
        if len(counted) < self.needed:
            return None

        first = counted[0].index
        windows = f"window {index}" if first == index else f"windows {first}-{index}"
        weakest = min(w.value for w in counted)  # the reason then holds for every one of them
        min_n = min(w.n for w in counted)
        if self.window_of == p.consecutive_windows:
            plural = "window" if p.consecutive_windows == 1 else "consecutive windows"
            how = f"for {len(counted)} {plural}"
        else:
            how = f"in {len(counted)} of the last {self.window_of} windows"
        if self.combined:
            reason = self.combined.reason(verdicts, result.record_type)
            first = self.combined.first_window(verdicts, result)
            self.combined.rearm(result)
        elif p.signal == "degradation":
            # A detection is 1 or 0: say what was detected, and the level it reached now.
            level = next((d.level for d in result.degradation if d.name == p.degradation), None)
            reason = f"degradation {p.degradation} detected {how} ({windows}, n={min_n})"
            if level is not None:
                reason += f"; level now {level:.4g}"
        else:
            what = p.signal if p.signal != "feature_statistic" else f"{p.feature} statistic"
            reason = f"{what} {weakest:.4g} >= {p.threshold:g} {how} ({windows}, n={min_n})"
        if result.comparison == "fleet":  # peer drift: which cluster, against whom
            reason = (f"cluster {result.cluster} against its fleet "
                      f"({', '.join(result.peer_clusters)}): {reason}")
        kind: DecisionKind = "fired"
        if state.last_fired_at is not None and now - state.last_fired_at < p.cooldown_s:
            kind = "suppressed"
            reason += (
                f"; suppressed: fired {now - state.last_fired_at:.0f}s ago, "
                f"cooldown {p.cooldown_s:g}s"
            )
        else:
            state.last_fired_at = now
        state.recent.clear()
        episode = episode_id(
            p.name, result.segment_key, result.record_type, first, state.generation
        )
        if p.clear_windows > 0:
            state.episode_open = True
            state.episode_id, state.episode_start = episode, first
            state.clear_count = 0
        return Decision(
            policy=p.name,
            segment_key=result.segment_key,
            record_type=result.record_type,
            episode_id=episode,
            kind=kind,
            reason=reason,
            window_index=index,
            first_window_index=first,
            decided_at=now,
            conditions=verdicts,
        )

    def tracked(self) -> list[tuple[str, str]]:
        """The ``(segment_key, record_type)`` pairs seen so far."""
        return list(self._state)


class CombinedConditions:
    """The ``all_of`` / ``any_of`` conditions of one policy, over every stream they read.

    Every window of a record type some condition reads is kept per ``(record_type,
    segment_key)`` (the newest ``max(for_windows)``, one value per condition). A condition
    without ``record_type``, or with the deciding window's own, reads the deciding key's
    windows; one naming another record type reads the streams of that type whose segments
    agree with the deciding segment on every key both have (``{service: shop, model: m}``
    and ``{service: shop, eval: faithfulness}`` agree; a segment with no key in common agrees
    with all), and holds when one of them does. Only windows after the key's last decision
    count (the count starts again, as for a single signal). The policy decides on windows of
    its own ``record_types``: another type's windows are read as they stand then.

    The windows kept here are not stored in the ledger: after a restart each condition counts
    from the windows that arrive next (a decision can come later, never twice: the deciding
    key's last window and last firing are stored, and replayed windows are ignored).
    """

    def __init__(self, policy: PolicyConfig) -> None:
        self.policy = policy
        self.mode = "all_of" if policy.all_of is not None else "any_of"
        self.conditions = policy.conditions
        self.depth = max(c.for_windows for c in self.conditions)
        self.read_types = {c.record_type for c in self.conditions if c.record_type}
        # (record_type, segment_key) -> (segment, newest readings, closed_at of the last)
        self._streams: dict[tuple[str, str], tuple[dict[str, str], deque[Reading], int]] = {}
        # deciding key -> stream -> the last window index already used by a decision
        self._floors: dict[tuple[str, str], dict[tuple[str, str], int]] = {}

    def observe(self, result: DriftResult, watched: bool) -> None:
        """Keep the window if some condition reads its stream (replays are ignored)."""
        if not watched and result.record_type not in self.read_types:
            return
        key = (result.record_type, result.segment_key)
        segment, readings, closed = self._streams.get(key, (dict(result.segment), deque(), 0))
        if readings and result.window_index <= readings[-1].index:
            if result.closed_at_unix_nano <= closed or result.window_index == readings[-1].index:
                return  # a redelivery: counted already
            readings = deque()  # the engine numbers again from scratch
            self._floors_drop(key)
        readings.append(reading(result, self.conditions))  # values and quality figures
        while len(readings) > self.depth:
            readings.popleft()
        self._streams[key] = (segment, readings, result.closed_at_unix_nano)

    def _floors_drop(self, stream: tuple[str, str]) -> None:
        for floors in self._floors.values():
            floors.pop(stream, None)

    def _sources(self, result: DriftResult, record_type: str | None,
                 eval_name: str | None = None) -> list[tuple[str, str]]:
        own = (result.record_type, result.segment_key)
        if record_type is None or record_type == result.record_type:
            return [own] if own in self._streams else []
        return sorted(
            k for k, (segment, _, _) in self._streams.items()
            if k[0] == record_type and stream_matches(segment, result.segment, eval_name)
        )

    def _readings(self, deciding: tuple[str, str], stream: tuple[str, str]) -> list[Reading]:
        floor = self._floors.get(deciding, {}).get(stream)
        readings = self._streams[stream][1]
        return [r for r in readings if floor is None or r.index > floor]

    def holds(self, result: DriftResult) -> tuple[bool, tuple[Verdict, ...]]:
        """Whether the combination holds as of this (observed) window, and each verdict."""
        deciding = (result.segment_key, result.record_type)
        verdicts = []
        for i, c in enumerate(self.conditions):
            rtype = c.record_type or result.record_type
            best: Verdict | None = None
            for stream in self._sources(result, c.record_type, c.eval):
                v = judge(
                    self._readings(deciding, stream), i, c.signal, c.op, float(c.threshold or 0),
                    c.for_windows, self.policy.min_samples, stream[0], stream[1], c.eval or "",
                )
                if best is None or (v.met and not best.met):
                    best = v
            if best is None:  # nothing of that stream seen yet
                best = judge([], i, c.signal, c.op, float(c.threshold or 0), c.for_windows,
                             self.policy.min_samples, rtype, "", c.eval or "")
            verdicts.append(best)
        combine = all if self.mode == "all_of" else any
        return combine(v.met for v in verdicts), tuple(verdicts)

    def reason(self, verdicts: tuple[Verdict, ...], record_type: str) -> str:
        """``all_of: <condition with its numbers>; <...>``."""
        return f"{self.mode}: " + "; ".join(v.text(record_type) for v in verdicts)

    @staticmethod
    def first_window(verdicts: tuple[Verdict, ...], result: DriftResult) -> int:
        """The run's first window: the earliest own window a met condition counted."""
        own = [
            v.windows[0] for v in verdicts
            if v.met and v.windows and v.record_type == result.record_type
            and v.segment_key == result.segment_key
        ]
        return min(own, default=result.window_index)

    def rearm(self, result: DriftResult) -> None:
        """After a decision only later windows count, of every stream it read."""
        deciding = (result.segment_key, result.record_type)
        floors = self._floors.setdefault(deciding, {})
        for c in self.conditions:
            for stream in self._sources(result, c.record_type, c.eval):
                floors[stream] = self._streams[stream][1][-1].index
