"""The online detectors as window methods (``online_mmd`` and ``online_lsdd`` in
``EMBEDDING_METHODS``).

The engine scores embedding features one window at a time. This scorer runs a fresh
:class:`~observer.drift.embedding.online_mmd.OnlineMMD` (or
:class:`~observer.drift.embedding.online_lsdd.OnlineLSDD`) over the current window's rows in
order (the initial test window is reference rows, so it can fire from the first row) and
stops at the first detection:

* ``drifted``: the detector fired within the window;
* ``statistic``: the largest ``statistic / threshold`` ratio seen up to then (so ``> 1``
  means fired), ``threshold``: that ratio's limit, 1.0 unless the feature sets another;
* ``statistics``: ``detection_step`` (1-based row of the detection, 0 when none),
  ``detector_statistic`` and ``detector_threshold`` (MMD^2 or LSDD) at the largest ratio,
  ``ert``, ``window_size`` and ``false_alarm_probability``, the chance of a false detection
  somewhere in a window of this many rows when nothing changed (``1 - (1 - 1/ert)^rows``,
  the calibration's target).

Calibration costs far more than scoring (for MMD an ``n x n`` kernel matrix, and
``n_bootstraps`` simulated streams), so it is cached per reference: a small LRU keyed by the
reference's shape and a digest of its float64 bytes (the engine stacks a new array per
window, and an ``id`` alone could be reused by another array), plus the detector's
parameters. A segment's reference pays it once, not once per window.

>>> rng = np.random.default_rng(0)
>>> scorer = OnlineScorer("mmd", ert=5000, window_size=20, n_bootstraps=5000)
>>> ref = rng.normal(size=(600, 4))
>>> same = scorer(ref, rng.normal(size=(100, 4)), None)
>>> moved = scorer(ref, rng.normal(size=(100, 4)) + [1.5, 0, 0, 0], None)
>>> same.drifted, moved.drifted, 0 < moved.statistics["detection_step"] <= 40
(False, True, True)
>>> scorer.cache_info()["calibrations"]  # both windows used the one calibration
1
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from observer.drift.config import OnlineDriftConfig
from observer.drift.embedding.online_lsdd import OnlineLSDD, calibrate_lsdd
from observer.drift.embedding.online_mmd import OnlineMMD, calibrate, finite_matrix
from observer.drift.embedding.score import EmbeddingScore

CACHE_SIZE = 8  # references calibrated and kept; a few segments' worth

DETECTORS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "mmd": (calibrate, OnlineMMD),
    "lsdd": (calibrate_lsdd, OnlineLSDD),
}
"""Detector name -> (calibrate(reference, ert, window_size, n_bootstraps, seed), class)."""


class OnlineScorer:
    """``scorer(reference, current, threshold) -> EmbeddingScore``, with cached calibration;
    ``detector``: a name of :data:`DETECTORS`."""

    def __init__(self, detector: str = "mmd", ert: float = 1000.0, window_size: int = 50,
                 n_bootstraps: int = 4000, seed: int = 0, cache_size: int = CACHE_SIZE) -> None:
        if detector not in DETECTORS:
            raise ValueError(f"unknown online detector {detector!r}; choose from "
                             f"{', '.join(DETECTORS)}")
        self.detector = detector
        self._calibrate, self._make = DETECTORS[detector]
        self.ert, self.window_size, self.n_bootstraps, self.seed = (
            float(ert), window_size, n_bootstraps, seed)
        self._cache: OrderedDict[tuple[object, ...], Any] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._calibrations = 0

    @classmethod
    def from_config(cls, detector: str, config: OnlineDriftConfig) -> OnlineScorer:
        """The scorer of ``detector`` the ``drift.online`` section describes."""
        return cls(detector, config.ert, config.window_size, config.n_bootstraps, config.seed)

    def calibration(self, reference: np.ndarray) -> Any:
        """The reference's calibration, from the cache when it holds it."""
        ref = finite_matrix(reference, "reference")
        digest = hashlib.blake2b(ref.tobytes(), digest_size=16).digest()
        key = (ref.shape, digest, self.ert, self.window_size, self.n_bootstraps, self.seed)
        with self._lock:  # one calibration per reference even when windows race
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
            cal = self._calibrate(ref, self.ert, self.window_size, self.n_bootstraps, self.seed)
            self._calibrations += 1
            self._cache[key] = cal
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return cal

    def cache_info(self) -> dict[str, int]:
        """References held and calibrations run so far."""
        return {"size": len(self._cache), "calibrations": self._calibrations}

    def __call__(self, reference: np.ndarray, current: np.ndarray,
                 threshold: float | None) -> EmbeddingScore:
        cal = self.calibration(reference)
        cur = finite_matrix(current, "current window", cal.dim)
        limit = 1.0 if threshold is None else float(threshold)
        det = self._make(calibration=cal)
        best, at, step = -np.inf, (0.0, 0.0), 0
        for i, row in enumerate(cur, start=1):
            det.update(row)
            ratio = det.statistic / det.threshold
            if ratio > best:
                best, at = ratio, (det.statistic, det.threshold)
            if ratio > limit:
                step = i
                break
        stats = {
            "detection_step": float(step), "detector_statistic": at[0],
            "detector_threshold": at[1],
            "ert": cal.ert, "window_size": float(cal.window_size),
            "false_alarm_probability": 1.0 - (1.0 - 1.0 / cal.ert) ** len(cur),
        }
        return EmbeddingScore(float(best), limit, step > 0, stats)


ONLINE_METHODS = {"online_mmd": "mmd", "online_lsdd": "lsdd"}
"""Embedding method name -> detector name."""

_SCORERS: dict[tuple[str, float, int, int, int], OnlineScorer] = {}
_SCORERS_LOCK = threading.Lock()


def scorer_for(method: str, config: OnlineDriftConfig) -> OnlineScorer:
    """The one scorer of ``method`` (``online_mmd`` or ``online_lsdd``) under ``config``: the
    engine can ask for it every window and keep the calibration cache across windows.

    >>> a = scorer_for("online_mmd", OnlineDriftConfig(ert=300))
    >>> a is scorer_for("online_mmd", OnlineDriftConfig(ert=300)), a.ert, a.detector
    (True, 300.0, 'mmd')
    """
    if method not in ONLINE_METHODS:
        raise ValueError(f"{method!r} is not an online method; choose from "
                         f"{', '.join(ONLINE_METHODS)}")
    key = (method, config.ert, config.window_size, config.n_bootstraps, config.seed)
    with _SCORERS_LOCK:
        if key not in _SCORERS:
            _SCORERS[key] = OnlineScorer.from_config(ONLINE_METHODS[method], config)
        return _SCORERS[key]


DEFAULT_SCORER = scorer_for("online_mmd", OnlineDriftConfig())
"""The scorer ``EMBEDDING_METHODS["online_mmd"]`` uses (the ``drift.online`` defaults)."""
DEFAULT_LSDD_SCORER = scorer_for("online_lsdd", OnlineDriftConfig())
"""The scorer ``EMBEDDING_METHODS["online_lsdd"]`` uses (the ``drift.online`` defaults)."""
