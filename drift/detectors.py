"""Change detectors for rates and scores, behind one River-like protocol.

``update(x)`` feeds one value and returns the detector itself; ``drift_detected`` says whether
that value completed a detected change. After a detection the detector starts over on the new
level (Page-Hinkley) or has already dropped the old part of its window (ADWIN).

========================  ================================================================
:class:`PageHinkley`      cumulative deviation from the running mean: with
                          ``m_t = sum_{i<=t} (x_i - mean_i - delta)`` it detects an increase
                          when ``m_t - min_{i<=t} m_i > threshold`` (and a decrease with the
                          mirrored sums), after ``min_instances`` values.
:class:`ADWIN`            adaptive window (Bifet and Gavalda 2007): the window is cut where two
                          sub-windows ``W0``, ``W1`` have means further apart than
                          ``eps = sqrt(2 m var ln(2 / d')) + 2 ln(2 / d') / (3 m)``,
                          ``m = 1 / (1/n0 + 1/n1)``, ``d' = delta / n``; exact version over
                          the last ``max_window`` values.
========================  ================================================================

>>> ph = PageHinkley(threshold=5.0)
>>> [i for i, x in enumerate([0.0] * 50 + [1.0] * 50) if ph.update(x).drift_detected][:1]
[55]
>>> import random
>>> rng = random.Random(1)  # tool errors go from 5 % to 35 % at call 400
>>> errors = [float(rng.random() < (0.05 if i < 400 else 0.35)) for i in range(800)]
>>> ad = ADWIN(delta=0.002)
>>> [i for i, x in enumerate(errors) if ad.update(x).drift_detected][:1]
[620]
"""

from __future__ import annotations

import math
from collections import deque
from typing import Protocol


class ChangeDetector(Protocol):
    """River's protocol: ``update`` returns the detector; ``drift_detected`` is the verdict."""

    drift_detected: bool

    def update(self, x: float) -> ChangeDetector: ...


class PageHinkley:
    """Page-Hinkley test for a change in the mean, in both directions by default.

    Parameters
    ----------
    delta
        Magnitude of changes to tolerate (subtracted from each deviation).
    threshold
        ``lambda``: the cumulative deviation that signals a change.
    min_instances
        Values seen before any detection.
    direction
        ``"both"``, ``"up"`` or ``"down"``.
    """

    def __init__(self, delta: float = 0.005, threshold: float = 50.0, min_instances: int = 30,
                 direction: str = "both") -> None:
        if direction not in ("both", "up", "down"):
            raise ValueError(f"direction must be both, up or down, got {direction!r}")
        self.delta, self.threshold = delta, threshold
        self.min_instances, self.direction = min_instances, direction
        self.drift_detected = False
        self._reset()

    def _reset(self) -> None:
        self.n = 0
        self.mean = 0.0
        self._up = self._up_min = 0.0
        self._down = self._down_max = 0.0

    def update(self, x: float) -> PageHinkley:
        if self.drift_detected:
            self._reset()
        self.n += 1
        self.mean += (x - self.mean) / self.n
        self._up += x - self.mean - self.delta
        self._down += x - self.mean + self.delta
        self._up_min = min(self._up_min, self._up)
        self._down_max = max(self._down_max, self._down)
        up = self._up - self._up_min > self.threshold
        down = self._down_max - self._down > self.threshold
        wanted = {"both": up or down, "up": up, "down": down}[self.direction]
        self.drift_detected = self.n >= self.min_instances and wanted
        return self


class ADWIN:
    """ADWIN over the last ``max_window`` values, checking every cut point exactly.

    Parameters
    ----------
    delta
        Confidence: smaller means fewer false alarms and later detections.
    max_window
        Longest window kept (the exact check is O(window) per update).
    min_side
        Smallest sub-window on either side of a cut.
    """

    def __init__(self, delta: float = 0.002, max_window: int = 1000, min_side: int = 5) -> None:
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        self.delta, self.max_window, self.min_side = delta, max_window, min_side
        self.window: deque[float] = deque()
        self.drift_detected = False

    @property
    def estimation(self) -> float:
        """Mean of the current window."""
        return sum(self.window) / len(self.window) if self.window else 0.0

    def update(self, x: float) -> ADWIN:
        self.window.append(float(x))
        if len(self.window) > self.max_window:
            self.window.popleft()
        self.drift_detected = False
        while self._cut():
            self.drift_detected = True
        return self

    def _cut(self) -> bool:
        n = len(self.window)
        if n < 2 * self.min_side:
            return False
        values = list(self.window)
        total = sum(values)
        mean = total / n
        var = sum((v - mean) ** 2 for v in values) / n
        d = math.log(2 * n / self.delta)  # ln(2 / delta'), delta' = delta / n
        head = 0.0
        for i in range(self.min_side, n - self.min_side + 1):
            head = sum(values[:i]) if i == self.min_side else head + values[i - 1]
            n0, n1 = i, n - i
            m = 1 / (1 / n0 + 1 / n1)
            eps = math.sqrt(2 * var * d / m) + 2 * d / (3 * m)
            if abs(head / n0 - (total - head) / n1) > eps:
                for _ in range(i):
                    self.window.popleft()
                return True
        return False
