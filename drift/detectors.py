"""Change detectors for rates and scores, behind one River-like protocol.

``update(x)`` feeds one value and returns the detector itself; ``drift_detected`` says whether
that value completed a detected change; ``estimation`` is the detector's current level.
After a detection the detector starts over on the new level (Page-Hinkley) or has already
dropped the old part of its window (ADWIN). ``state()`` is a JSON-able snapshot and
``restore(state)`` continues from it exactly (floats round-trip through JSON unchanged), which
is how the drift engine checkpoints them (:mod:`observer.drift.degradation`).

========================  ================================================================
:class:`PageHinkley`      cumulative deviation from the running mean: with
                          ``m_t = sum_{i<=t} (x_i - mean_i - delta)`` it detects an increase
                          when ``m_t - min_{i<=t} m_i > threshold`` (and a decrease with the
                          mirrored sums ``+ delta``, ``max - m_t``), after ``min_instances``
                          values. O(1) time and memory.
:class:`ADWIN`            adaptive window (Bifet and Gavalda 2007, ADWIN2): the window is kept
                          as an exponential histogram (at most ``max_buckets`` buckets of each
                          size 1, 2, 4, ..., each holding its sum and its sum of squared
                          deviations), so memory is O(log n). Every ``clock`` values each
                          bucket boundary splits the window into an older ``W0`` and a newer
                          ``W1``; the oldest bucket is dropped while some split has means
                          further apart than
                          ``eps = sqrt(2 var ln(2/d') / m) + 2 ln(2/d') / (3 m)``,
                          ``m = 1 / (1/n0 + 1/n1)``, ``d' = delta / n``, ``var`` the window's
                          variance.
========================  ================================================================

``direction`` (both detectors) says which changes count as detections: ``"up"`` (a rate or
latency got worse), ``"down"`` or ``"both"``; ADWIN still adapts its window to any change.

>>> ph = PageHinkley(threshold=5.0)
>>> [i for i, x in enumerate([0.0] * 50 + [1.0] * 50) if ph.update(x).drift_detected][:1]
[55]
>>> import random
>>> rng = random.Random(1)  # tool errors go from 5 % to 35 % at call 400
>>> errors = [float(rng.random() < (0.05 if i < 400 else 0.35)) for i in range(800)]
>>> ad = ADWIN(delta=0.002)
>>> [i for i, x in enumerate(errors) if ad.update(x).drift_detected][:1]
[639]
>>> copy = ADWIN.from_state(ad.state())
>>> [copy.update(x).drift_detected for x in errors] == [ad.update(x).drift_detected for x in errors]
True
"""

from __future__ import annotations

import math
from array import array
from typing import Any, ClassVar, Protocol

from observer.drift.mean_test import MeanTest

DIRECTIONS = ("both", "up", "down")


class ChangeDetector(Protocol):
    """River's protocol (``update`` returns the detector; ``drift_detected`` is the verdict),
    plus the current level and a JSON-able state for checkpoints."""

    drift_detected: bool

    def update(self, x: float) -> ChangeDetector: ...

    @property
    def estimation(self) -> float: ...

    def state(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be both, up or down, got {direction!r}")


class PageHinkley:
    """Page-Hinkley test for a change in the mean, in both directions by default.

    Parameters
    ----------
    delta
        Magnitude of changes to tolerate (subtracted from each deviation).
    threshold
        ``lambda``: the cumulative deviation that signals a change.
    min_instances
        Values seen (since the last detection) before any detection.
    direction
        ``"both"``, ``"up"`` or ``"down"``.
    """

    name: ClassVar[str] = "page_hinkley"
    _FIELDS = ("n", "mean", "_up", "_up_min", "_down", "_down_max", "drift_detected")

    def __init__(self, delta: float = 0.005, threshold: float = 50.0, min_instances: int = 30,
                 direction: str = "both") -> None:
        _check_direction(direction)
        if threshold <= 0:
            raise ValueError(f"threshold must be > 0, got {threshold}")
        if min_instances < 1:
            raise ValueError(f"min_instances must be >= 1, got {min_instances}")
        self.delta, self.threshold = delta, threshold
        self.min_instances, self.direction = min_instances, direction
        self.drift_detected = False
        self._reset()

    def _reset(self) -> None:
        self.n = 0
        self.mean = 0.0
        self._up = self._up_min = 0.0
        self._down = self._down_max = 0.0

    @property
    def estimation(self) -> float:
        """Mean of the values since the last detection."""
        return self.mean

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

    def params(self) -> dict[str, Any]:
        return {"delta": self.delta, "threshold": self.threshold,
                "min_instances": self.min_instances, "direction": self.direction}

    def state(self) -> dict[str, Any]:
        """Parameters and running sums, JSON-able.

        >>> ph = PageHinkley(threshold=3.0)
        >>> for x in (0.0, 1.0, 0.5):
        ...     _ = ph.update(x)
        >>> PageHinkley.from_state(ph.state()).state() == ph.state()
        True
        """
        return {"params": self.params(), **{k.lstrip("_"): getattr(self, k) for k in self._FIELDS}}

    def restore(self, state: dict[str, Any]) -> None:
        for k in self._FIELDS:
            setattr(self, k, state[k.lstrip("_")])
        self.n = int(self.n)
        self.drift_detected = bool(self.drift_detected)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PageHinkley:
        detector = cls(**state["params"])
        detector.restore(state)
        return detector


class ADWIN:
    """ADWIN2: an adaptive window over an exponential histogram of buckets.

    Parameters
    ----------
    delta
        Confidence in (0, 1): smaller means fewer false alarms and later detections.
    clock
        Check for a change every this many values (1: after every value).
    max_buckets
        Buckets of each size kept before the two oldest merge (``M`` in the paper): more is
        a finer choice of cut points and more memory.
    min_side
        Smallest sub-window on either side of a cut.
    direction
        Which changes are reported: ``"both"``, ``"up"`` (the newer part's mean is higher) or
        ``"down"``.
    """

    name: ClassVar[str] = "adwin"

    def __init__(self, delta: float = 0.002, clock: int = 32, max_buckets: int = 5,
                 min_side: int = 5, direction: str = "both") -> None:
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        if clock < 1 or max_buckets < 2 or min_side < 1:
            raise ValueError("clock and min_side must be >= 1 and max_buckets >= 2, got "
                             f"{clock}, {min_side} and {max_buckets}")
        _check_direction(direction)
        self.delta, self.clock, self.max_buckets = delta, clock, max_buckets
        self.min_side, self.direction = min_side, direction
        # rows[i]: buckets of 2**i values, oldest first, flat as sum, sum of squared
        # deviations, sum, ... (array('d'): a tenth of the memory of lists of floats).
        self.rows: list[array] = []
        self.width = 0
        self.total = 0.0
        self.variance = 0.0  # sum of squared deviations of the whole window
        self.tick = 0
        self.drift_detected = False

    @property
    def estimation(self) -> float:
        """Mean of the current window."""
        return self.total / self.width if self.width else 0.0

    def update(self, x: float) -> ADWIN:
        # Runs once per record per signal in the engine: kept to plain local arithmetic.
        x = float(x)
        width = self.width
        if width:
            deviation = x - self.total / width
            self.variance += width * deviation * deviation / (width + 1)
        self.width = width + 1
        self.total += x
        if not self.rows:
            self.rows.append(array("d"))
        first = self.rows[0]
        first.append(x)
        first.append(0.0)
        if len(first) > 2 * self.max_buckets:
            self._compress()
        self.tick += 1
        self.drift_detected = False
        if self.tick % self.clock == 0:
            while (change := self._cut()) is not None:
                self._drop_oldest()
                if self.direction == "both" or change == self.direction:
                    self.drift_detected = True
        return self

    def _compress(self) -> None:
        """Merge the two oldest buckets of any row that holds more than ``max_buckets``."""
        for i, row in enumerate(self.rows):
            if len(row) <= 2 * self.max_buckets:
                break
            s1, v1, s2, v2 = row[:4]
            del row[:4]
            size = 2**i
            if i + 1 == len(self.rows):
                self.rows.append(array("d"))
            self.rows[i + 1].extend((s1 + s2, v1 + v2 + size / 2 * (s1 / size - s2 / size) ** 2))

    def _drop_oldest(self) -> None:
        i = len(self.rows) - 1
        s, v = self.rows[i][:2]
        del self.rows[i][:2]
        size = 2**i
        self.width -= size
        self.total -= s
        if self.width:
            self.variance -= v + size * self.width * (s / size - self.total / self.width) ** 2 / (
                size + self.width
            )
        else:
            self.variance = 0.0
        self.variance = max(self.variance, 0.0)  # rounding must not make it negative
        while self.rows and not self.rows[-1]:
            self.rows.pop()

    def _cut(self) -> str | None:
        """``"up"``/``"down"`` when some split's means differ by more than ``eps``, else None."""
        n = self.width
        if n < 2 * self.min_side:
            return None
        var = self.variance / n
        d = math.log(2 * n / self.delta)  # ln(2 / delta'), delta' = delta / n
        n0, s0 = 0, 0.0
        # Boundaries from the oldest bucket on: W0 = everything older than the boundary.
        for i in range(len(self.rows) - 1, -1, -1):
            size = 2**i
            for s in self.rows[i][::2]:
                n0 += size
                s0 += s
                n1 = n - n0
                if n1 < self.min_side:
                    return None
                if n0 < self.min_side:
                    continue
                m = 1 / (1 / n0 + 1 / n1)
                eps = math.sqrt(2 * var * d / m) + 2 * d / (3 * m)
                diff = (self.total - s0) / n1 - s0 / n0
                if abs(diff) > eps:
                    return "up" if diff > 0 else "down"
        return None

    def params(self) -> dict[str, Any]:
        return {"delta": self.delta, "clock": self.clock, "max_buckets": self.max_buckets,
                "min_side": self.min_side, "direction": self.direction}

    def state(self) -> dict[str, Any]:
        """Parameters, buckets and sums, JSON-able (O(log n) numbers)."""
        return {"params": self.params(), "rows": [row.tolist() for row in self.rows],
                "width": self.width, "total": self.total, "variance": self.variance,
                "tick": self.tick, "drift_detected": self.drift_detected}

    def restore(self, state: dict[str, Any]) -> None:
        self.rows = [array("d", row) for row in state["rows"]]
        self.width = int(state["width"])
        self.total = float(state["total"])
        self.variance = float(state["variance"])
        self.tick = int(state["tick"])
        self.drift_detected = bool(state["drift_detected"])

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ADWIN:
        detector = cls(**state["params"])
        detector.restore(state)
        return detector


DETECTORS: dict[str, type[PageHinkley | ADWIN | MeanTest]] = {
    PageHinkley.name: PageHinkley,
    ADWIN.name: ADWIN,
    # A one-sided test against a fixed reference, with a stated false-alarm rate (quality).
    MeanTest.name: MeanTest,
}
"""Every detector by the name used in configuration (``DegradationSpec.detector``)."""


def make_detector(name: str, **params: Any) -> PageHinkley | ADWIN | MeanTest:
    """A detector by name; parameters left out (or ``None``) take the detector's defaults.

    >>> make_detector("adwin", delta=0.01, clock=None).params()["clock"]
    32
    >>> make_detector("cusum")
    Traceback (most recent call last):
    ...
    ValueError: unknown change detector 'cusum'; choose from page_hinkley, adwin, mean_test
    >>> make_detector("adwin", threshold=3)
    Traceback (most recent call last):
    ...
    ValueError: adwin takes no parameter threshold (it takes delta, clock, max_buckets, min_side, direction)
    """
    cls = DETECTORS.get(name)
    if cls is None:
        raise ValueError(f"unknown change detector {name!r}; choose from {', '.join(DETECTORS)}")
    given = {k: v for k, v in params.items() if v is not None}
    accepted = list(cls().params())
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise ValueError(f"{name} takes no parameter {', '.join(unknown)} "
                         f"(it takes {', '.join(accepted)})")
    return cls(**given)
