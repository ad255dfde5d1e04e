"""Conditions of a combined policy (``all_of`` / ``any_of``): readers, histories, verdicts.

A condition names a window value (:data:`SIGNALS`, one reader per signal kind), compares it
(:data:`OPS`) with a threshold, and holds when its last ``for_windows`` windows of one stream
(consecutive window indices, each with at least ``min_samples`` records) all compare true.

Signals: ``drift_share``, ``dataset_drift`` (1/0), ``feature:<name>`` (that feature's
statistic), ``feature_drifted:<name>`` (1/0), ``degradation:<name>`` (1 when that change
detector detected a change during the window, else 0), ``degradation_level:<name>`` (the
detector's level), ``n`` (records in the window). A window that lacks the value reads NaN,
which never compares true.

>>> from observer.core.records import DriftResult, DegradationSignal
>>> e = DegradationSignal(name="error_rate", field="status", detector="adwin", n=200,
...     mean=0.31, level=0.28, detected=True, detections=1)
>>> r = DriftResult(segment={}, segment_key="", record_type="llm", window_index=1,
...     n_reference=1, n_current=300, features=[], drift_share=0.25, dataset_drift=False,
...     closed_at_unix_nano=0, degradation=[e])
>>> read_signal(r, "drift_share"), read_signal(r, "degradation:error_rate")
(0.25, 1.0)
>>> read_signal(r, "degradation_level:error_rate"), read_signal(r, "n")
(0.28, 300.0)
>>> parse_signal("latency")
Traceback (most recent call last):
...
ValueError: unknown signal 'latency'; known: drift_share, dataset_drift, n, feature:<name>, feature_drifted:<name>, degradation:<name>, degradation_level:<name>
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from observer.core.records import DriftResult


def _feature(r: DriftResult, name: str) -> float:
    f = next((f for f in r.features if f.name == name), None)
    return math.nan if f is None or f.statistic is None else float(f.statistic)


def _feature_drifted(r: DriftResult, name: str) -> float:
    f = next((f for f in r.features if f.name == name), None)
    return math.nan if f is None else float(f.drifted)


def _degradation(r: DriftResult, name: str) -> float:
    d = next((d for d in r.degradation if d.name == name), None)
    return math.nan if d is None else float(d.detected)


def _level(r: DriftResult, name: str) -> float:
    d = next((d for d in r.degradation if d.name == name), None)
    return math.nan if d is None else float(d.level)


@dataclass(frozen=True)
class SignalKind:
    """One row of :data:`SIGNALS`."""

    read: Callable[[DriftResult, str], float]
    takes_name: bool
    """Whether the signal is ``kind:<name>``."""
    default_threshold: float | None
    """The threshold when a condition gives none (None: the condition must give one)."""
    detection: bool
    """A 1/0 detection: the reason says 'detected' rather than the number."""


SIGNALS: dict[str, SignalKind] = {
    "drift_share": SignalKind(lambda r, _: float(r.drift_share), False, 0.5, False),
    "dataset_drift": SignalKind(lambda r, _: float(r.dataset_drift), False, 1.0, True),
    "n": SignalKind(lambda r, _: float(r.n_current), False, None, False),
    "feature": SignalKind(_feature, True, None, False),
    "feature_drifted": SignalKind(_feature_drifted, True, 1.0, True),
    "degradation": SignalKind(_degradation, True, 1.0, True),
    "degradation_level": SignalKind(_level, True, None, False),
}

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}


def known_signals() -> str:
    """The signal forms, for error messages."""
    return ", ".join(k + (":<name>" if s.takes_name else "") for k, s in SIGNALS.items())


def parse_signal(signal: str) -> tuple[SignalKind, str]:
    """The signal's row and its name argument; ValueError naming it and the known ones.

    >>> parse_signal("feature:output_tokens")[1]
    'output_tokens'
    """
    kind, sep, name = signal.partition(":")
    row = SIGNALS.get(kind)
    if row is None or row.takes_name != bool(sep) or (row.takes_name and not name):
        raise ValueError(f"unknown signal {signal!r}; known: {known_signals()}")
    return row, name


def read_signal(result: DriftResult, signal: str) -> float:
    """The window's value of ``signal`` (NaN when the window does not carry it)."""
    row, name = parse_signal(signal)
    return row.read(result, name)


@dataclass(frozen=True)
class Reading:
    """One window of one stream as conditions see it."""

    index: int
    n: int
    values: tuple[float, ...]
    """One value per condition of the policy, in order."""


@dataclass(frozen=True)
class Verdict:
    """One condition as of one decision window: the figures a decision carries."""

    signal: str
    op: str
    threshold: float
    value: float | None
    """The weakest value of the windows that met it, else the latest value (None: none)."""
    windows: tuple[int, ...]
    met: bool
    record_type: str
    segment_key: str
    detection: bool = False
    for_windows: int = 1

    def as_dict(self) -> dict[str, Any]:
        """The figures as JSON (webhook ``data.conditions``, run parameter ``conditions``).

        >>> Verdict("drift_share", ">=", 0.5, 0.7, (7, 8), True, "llm", "shop").as_dict()["windows"]
        [7, 8]
        """
        return {
            "signal": self.signal,
            "op": self.op,
            "threshold": self.threshold,
            "value": self.value,
            "windows": list(self.windows),
            "met": self.met,
            "record_type": self.record_type,
            "segment_key": self.segment_key,
            "for_windows": self.for_windows,
        }

    def text(self, own_record_type: str) -> str:
        """The condition with its numbers, for the decision's reason.

        >>> Verdict("drift_share", ">=", 0.5, 0.71, (7, 8), True, "llm", "s").text("llm")
        'drift_share 0.71 >= 0.5 for 2 windows (7-8)'
        >>> Verdict("degradation:error_rate", ">=", 1, 1.0, (8,), True, "llm", "s", True).text("llm")
        'degradation:error_rate detected in window 8'
        >>> Verdict("drift_share", ">=", 0.5, 0.2, (8,), False, "evals", "s", False, 2).text("llm")
        'evals drift_share 0.2 in window 8: not >= 0.5 for 2 windows'
        """
        where = "" if self.record_type == own_record_type else f"{self.record_type} "
        w = self.windows
        span = (
            "no window" if not w
            else f"in window {w[0]}" if len(w) == 1
            else f"for {len(w)} windows ({w[0]}-{w[-1]})"
        )
        if self.met and self.detection:
            return f"{where}{self.signal} detected {span}"
        value = "n/a" if self.value is None or math.isnan(self.value) else f"{self.value:.4g}"
        if self.met:
            return f"{where}{self.signal} {value} {self.op} {self.threshold:g} {span}"
        need = "" if self.for_windows == 1 else f" for {self.for_windows} windows"
        return f"{where}{self.signal} {value} {span}: not {self.op} {self.threshold:g}{need}"


def judge(
    readings: list[Reading], i: int, signal: str, op: str, threshold: float, for_windows: int,
    min_samples: int, record_type: str, segment_key: str,
) -> Verdict:
    """Whether condition ``i`` holds over the newest ``for_windows`` of ``readings``.

    >>> rs = [Reading(6, 500, (0.2,)), Reading(7, 500, (0.71,)), Reading(8, 500, (0.9,))]
    >>> judge(rs, 0, "drift_share", ">=", 0.5, 2, 100, "llm", "s").text("llm")
    'drift_share 0.71 >= 0.5 for 2 windows (7-8)'
    >>> judge(rs, 0, "drift_share", ">=", 0.5, 3, 100, "llm", "s").met
    False
    """
    row, _ = parse_signal(signal)
    compare = OPS[op]
    last = readings[-for_windows:]
    consecutive = all(b.index == a.index + 1 for a, b in pairwise(last))
    ok = [r.n >= min_samples and compare(r.values[i], threshold) for r in last]
    met = len(last) == for_windows and consecutive and all(ok)
    if met:
        # The weakest of them: the reason then holds for every window it names.
        pick = min if op in (">=", ">") else max
        value: float | None = pick(r.values[i] for r in last)
        windows = tuple(r.index for r in last)
    else:
        value = readings[-1].values[i] if readings else None
        windows = (readings[-1].index,) if readings else ()
    return Verdict(signal, op, threshold, value, windows, met, record_type, segment_key,
                   row.detection, for_windows)


def segments_agree(a: dict[str, str], b: dict[str, str]) -> bool:
    """Whether two segments have the same value for every key they share.

    >>> segments_agree({"service": "shop", "model": "m"}, {"service": "shop", "eval": "f"})
    True
    >>> segments_agree({"service": "shop"}, {"service": "cart"})
    False
    """
    return all(a[k] == b[k] for k in a.keys() & b.keys())
