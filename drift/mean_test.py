"""A one-sided test of block means against a fixed reference: "worse than it was", with a
stated false-alarm rate.

ADWIN and Page-Hinkley (:mod:`observer.drift.detectors`) report a change once and then follow
the new level; an evaluation score that fell stays worse until someone acts, and a policy
that retrains "when drift and falling quality coincide" needs the fall to hold in the windows
where the drift is. :class:`MeanTest` therefore keeps its reference:

1. its first ``reference_values`` values are the reference (count, mean and sum of squared
   deviations, Welford's running sums);
2. every later ``block`` values form a block, tested against the reference with Welch's
   statistic ``z = (mean_b - mean_r) / sqrt(var_r / n_r + var_b / n_b)``;
3. the block detects a change when ``z < -z_alpha`` (``direction="down"``), ``z > z_alpha``
   (``"up"``) or ``|z| > z_(alpha/2)`` (``"both"``), ``z_alpha`` the standard normal's
   ``1 - alpha`` quantile.

False-alarm rate: when the values keep the reference's distribution, each block test detects
with probability ``alpha`` (the normal approximation of the mean, good for a few dozen values
or more of a bounded score; rare 0/1 events need larger blocks). A drift window of ``m``
values runs about ``m / block`` tests, so its chance of a false detection is at most
``m / block * alpha`` (1 % for 1000 values with the defaults ``block=100``, ``alpha=0.001``).
``tests/test_quality_signals.py`` checks the rate over same-distribution blocks.

>>> import random
>>> rng = random.Random(7)
>>> t = MeanTest(alpha=0.001, reference_values=200, block=100, direction="down")
>>> [t.update(rng.gauss(0.85, 0.05)).drift_detected for _ in range(400)].count(True)
0
>>> round(t.reference_mean, 2)
0.85
>>> [t.update(rng.gauss(0.6, 0.05)).drift_detected for _ in range(100)][-1]
True
>>> round(t.estimation, 2), t.last_z < -3.09
(0.6, True)
>>> MeanTest.from_state(t.state()).state() == t.state()
True
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, ClassVar

_DIRECTIONS = ("both", "up", "down")


class MeanTest:
    """One-sided (or two-sided) Welch test of each block's mean against the first values.

    Parameters
    ----------
    alpha
        False-alarm rate of one block test, in (0, 0.5).
    reference_values
        Values forming the fixed reference (the first ones fed).
    block
        Values per tested block after the reference.
    direction
        ``"down"`` (the mean fell), ``"up"`` (it rose) or ``"both"``.
    """

    name: ClassVar[str] = "mean_test"
    _FIELDS = ("ref_n", "ref_mean", "ref_m2", "n", "mean", "m2", "last_mean", "last_z",
               "drift_detected")

    def __init__(self, alpha: float = 0.001, reference_values: int = 200, block: int = 100,
                 direction: str = "both") -> None:
        if not 0 < alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
        if reference_values < 2 or block < 2:
            raise ValueError("reference_values and block must be >= 2, got "
                             f"{reference_values} and {block}")
        if direction not in _DIRECTIONS:
            raise ValueError(f"direction must be both, up or down, got {direction!r}")
        self.alpha, self.reference_values, self.block = alpha, reference_values, block
        self.direction = direction
        two_sided = direction == "both"
        self._critical = NormalDist().inv_cdf(1 - (alpha / 2 if two_sided else alpha))
        self.ref_n, self.ref_mean, self.ref_m2 = 0, 0.0, 0.0
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self.last_mean: float | None = None
        self.last_z: float | None = None
        self.drift_detected = False

    @property
    def estimation(self) -> float:
        """The last tested block's mean (the reference's running mean before the first)."""
        return self.ref_mean if self.last_mean is None else self.last_mean

    @property
    def reference_mean(self) -> float | None:
        """The reference's mean once it is complete, else ``None``."""
        return self.ref_mean if self.ref_n >= self.reference_values else None

    def update(self, x: float) -> MeanTest:
        x = float(x)
        self.drift_detected = False
        if self.ref_n < self.reference_values:
            self.ref_n += 1
            d = x - self.ref_mean
            self.ref_mean += d / self.ref_n
            self.ref_m2 += d * (x - self.ref_mean)
            return self
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self.m2 += d * (x - self.mean)
        if self.n >= self.block:
            z = self._z()
            wanted = {"down": z < -self._critical, "up": z > self._critical,
                      "both": abs(z) > self._critical}
            self.drift_detected = wanted[self.direction]
            self.last_mean, self.last_z = self.mean, z
            self.n, self.mean, self.m2 = 0, 0.0, 0.0
        return self

    def _z(self) -> float:
        se = math.sqrt(self.ref_m2 / (self.ref_n - 1) / self.ref_n + self.m2 / (self.n - 1) / self.n)
        diff = self.mean - self.ref_mean
        if se == 0:  # constant values on both sides: any difference is certain
            return 0.0 if diff == 0 else math.copysign(math.inf, diff)
        return diff / se

    def params(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "reference_values": self.reference_values,
                "block": self.block, "direction": self.direction}

    def state(self) -> dict[str, Any]:
        """Parameters and running sums, JSON-able (floats round-trip unchanged)."""
        z = self.last_z
        # JSON has no infinity: a certain difference is stored as its sign.
        z_saved = z if z is None or math.isfinite(z) else ("inf" if z > 0 else "-inf")
        return {"params": self.params(),
                **{k: getattr(self, k) for k in self._FIELDS if k != "last_z"}, "last_z": z_saved}

    def restore(self, state: dict[str, Any]) -> None:
        for k in self._FIELDS:
            setattr(self, k, state[k])
        self.last_z = None if state["last_z"] is None else float(state["last_z"])
        self.ref_n, self.n = int(self.ref_n), int(self.n)
        self.drift_detected = bool(self.drift_detected)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> MeanTest:
        test = cls(**state["params"])
        test.restore(state)
        return test
