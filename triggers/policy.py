"""The policy state machine: sustained drift in one segment becomes one decision.

A :class:`PolicyTracker` follows River's protocol: feed it every drift result with
:meth:`PolicyTracker.update`; it answers ``None`` or a :class:`Decision`. Per
``(segment_key, record_type)`` it counts qualifying windows in a row (signal at or above the
threshold, enough samples, a watched record type); a window that does not qualify, or a gap in
the window indices, starts the count again. When the count reaches
``consecutive_windows`` the run ends in a decision: ``fired`` normally, ``suppressed`` when the
policy already fired for that key less than ``cooldown_s`` ago. Either way the count starts
again, so a long drift yields one decision per ``consecutive_windows`` windows (fired at most
once per cooldown).

State lives in memory. After a restart the tracker relearns from the results it is fed again;
:func:`episode_id` is a pure function of the run, so a replayed run gets the id it had before
and the ledger refuses to decide it twice. :meth:`PolicyTracker.restore_fired` seeds cooldowns
from the ledger.

>>> from observer.core.config import PolicyConfig
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
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Literal

from observer.core.config import PolicyConfig
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


def episode_id(policy: str, segment_key: str, record_type: str, first_window_index: int) -> str:
    """Deterministic id of a run: re-processing the same results yields the same id.

    >>> episode_id("p", "shop|gpt-4o", "llm", 3)
    '31f3f78f1c483357d7c666373bedee2c'
    """
    text = f"{policy}|{segment_key}|{record_type}|{first_window_index}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def signal_of(result: DriftResult, signal: str) -> float:
    """The window's value that a policy compares with its threshold.

    >>> from observer.core.records import DriftResult
    >>> r = DriftResult(segment={}, segment_key="", record_type="llm", window_index=1,
    ...     n_reference=1, n_current=1, features=[], drift_share=0.25, dataset_drift=True,
    ...     closed_at_unix_nano=0)
    >>> signal_of(r, "drift_share"), signal_of(r, "dataset_drift")
    (0.25, 1.0)
    """
    if signal == "drift_share":
        return float(result.drift_share)
    if signal == "dataset_drift":
        return 1.0 if result.dataset_drift else 0.0
    raise ValueError(f"unknown policy signal {signal!r}")


@dataclass
class _KeyState:
    last_window: int | None = None
    first_window: int | None = None
    length: int = 0
    # The weakest window of the run: the reason then holds for every window in it.
    min_signal: float = math.inf
    min_n: int = 0
    last_fired_at: float | None = None

    def reset_run(self) -> None:
        self.first_window = None
        self.length = 0
        self.min_signal = math.inf
        self.min_n = 0


class PolicyTracker:
    """Per-key run counting and cooldown for one :class:`PolicyConfig`."""

    def __init__(self, policy: PolicyConfig) -> None:
        self.policy = policy
        self._state: dict[tuple[str, str], _KeyState] = {}

    def qualifies(self, result: DriftResult) -> bool:
        """Whether this window counts towards a run."""
        p = self.policy
        return (
            result.record_type in p.record_types
            and result.n_current >= p.min_samples
            and signal_of(result, p.signal) >= p.threshold
        )

    def restore_fired(self, segment_key: str, record_type: str, at: float) -> None:
        """Remember that the policy fired for this key at ``at`` (cooldown across restarts)."""
        state = self._state.setdefault((segment_key, record_type), _KeyState())
        if state.last_fired_at is None or at > state.last_fired_at:
            state.last_fired_at = at

    def update(self, result: DriftResult, now: float) -> Decision | None:
        """Feed one window; a :class:`Decision` when it completes a run."""
        p = self.policy
        if result.record_type not in p.record_types:
            return None  # another stream: it neither counts nor breaks a run
        key = (result.segment_key, result.record_type)
        state = self._state.setdefault(key, _KeyState())
        index = result.window_index
        if state.last_window is not None and index == state.last_window:
            return None  # the same window delivered again (at-least-once upstream)
        contiguous = state.last_window is not None and index == state.last_window + 1
        state.last_window = index
        if not self.qualifies(result):
            state.reset_run()
            return None
        if not contiguous or state.first_window is None:
            # A gap means windows we never saw: they cannot count as "in a row".
            state.reset_run()
            state.first_window = index
        state.length += 1
        value = signal_of(result, p.signal)
        state.min_signal = min(state.min_signal, value)
        state.min_n = result.n_current if state.length == 1 else min(state.min_n, result.n_current)
        if state.length < p.consecutive_windows:
            return None

        first = state.first_window
        assert first is not None
        windows = f"window {index}" if first == index else f"windows {first}-{index}"
        plural = "window" if p.consecutive_windows == 1 else "consecutive windows"
        reason = (
            f"{p.signal} {state.min_signal:.4g} >= {p.threshold:g} for {state.length} {plural} "
            f"({windows}, n={state.min_n})"
        )
        kind: DecisionKind = "fired"
        if state.last_fired_at is not None and now - state.last_fired_at < p.cooldown_s:
            kind = "suppressed"
            reason += (
                f"; suppressed: fired {now - state.last_fired_at:.0f}s ago, "
                f"cooldown {p.cooldown_s:g}s"
            )
        else:
            state.last_fired_at = now
        state.reset_run()
        return Decision(
            policy=p.name,
            segment_key=result.segment_key,
            record_type=result.record_type,
            episode_id=episode_id(p.name, result.segment_key, result.record_type, first),
            kind=kind,
            reason=reason,
            window_index=index,
            first_window_index=first,
            decided_at=now,
        )

    def tracked(self) -> list[tuple[str, str]]:
        """The ``(segment_key, record_type)`` pairs seen so far."""
        return list(self._state)
