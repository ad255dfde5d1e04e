"""Sketch mode's structures: bounded, mergeable summaries of a window's columns.

Exact mode keeps every raw value of a segment's reference and open window; at 1,000 segments
x 20 features x (1000 + 1000) values that is about a gigabyte. Sketch mode keeps, per feature
and window, a summary whose size does not grow with the window:

- :class:`NumericSketch`: a fixed-resolution log-bucket histogram. A value ``x > 0`` is counted
  in bucket ``k = ceil(log_g x)``, the interval ``(g**(k-1), g**k]``, with
  ``g = (1 + a) / (1 - a)`` and ``a`` the relative accuracy (``drift.sketch_relative_accuracy``,
  default 0.01); negative values mirror that, ``abs(x) < 1e-9`` is one zero bucket. The same
  ``a`` gives every sketch the same bucket grid, so two sketches merge by adding counts and
  compare bucket by bucket. Kept exactly beside the buckets: the count, minimum, maximum, mean
  and squared deviations (Chan's parallel update, for the reference's std) and, while a
  feature has at most :data:`DISTINCT_CAP` distinct values, the values themselves with their
  counts (a few-valued numeric feature is then exact, as Evidently counts it per value).
- :class:`CategoricalSketch`: exact counts of the first ``top_k`` distinct categories seen
  (``drift.sketch_top_k``) and one ``other`` count for every later category.

Drift is scored from these sketches, with an error bound against exact mode, in
:mod:`observer.drift.sketch_scoring`; :class:`StateBudget` chooses exact or sketch mode per stream.

Memory: about 8 bytes per occupied bucket (a numeric feature spanning three decades at
``a = 0.01`` holds about 350 buckets) plus ~60 bytes per tracked category, however many
records the window has.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> ref, cur = NumericSketch(), NumericSketch()
>>> ref.extend(rng.lognormal(5, 0.6, 5000)); cur.extend(rng.lognormal(5.1, 0.6, 5000))
>>> merged = NumericSketch.from_json(ref.to_json()); merged.merge(cur); merged.n
10000
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

DEFAULT_RELATIVE_ACCURACY = 0.01
"""Default ``a``: bucket ``(g**(k-1), g**k]`` spans about 2a relative to its values."""

DEFAULT_TOP_K = 64
"""Default categories counted exactly per categorical sketch."""

DISTINCT_CAP = 32
"""A numeric sketch keeps its exact values while it has at most this many distinct ones
(above :data:`observer.drift.stats.MAX_CATEGORY_VALUES`, so Evidently's per-value rule is decided
exactly)."""

ZERO_WIDTH = 1e-9
"""``abs(x)`` below this falls into the zero bucket."""

_FLUSH = 32  # values buffered before one vectorised bucket update


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and not math.isfinite(v))


class NumericSketch:
    """Log-bucket histogram of a numeric column, with its exact moments (see the module doc).

    Parameters
    ----------
    relative_accuracy
        ``a`` in ``(0, 0.5)``; sketches merge and compare only with the same ``a``.

    >>> s = NumericSketch(0.01)
    >>> s.extend([1.0, 2.0, None, float("nan"), 2.0])
    >>> s.n, s.min, s.max, s.distinct_values()
    (3, 1.0, 2.0, {1.0: 1, 2.0: 2})
    """

    kind = "numeric"

    def __init__(self, relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY) -> None:
        if not 0 < relative_accuracy < 0.5:
            raise ValueError(f"relative accuracy must be in (0, 0.5), got {relative_accuracy}")
        self.a = relative_accuracy
        self._ln_g = math.log((1 + relative_accuracy) / (1 - relative_accuracy))
        self.n = 0
        self.min = math.inf
        self.max = -math.inf
        self.mean = 0.0
        self.m2 = 0.0
        self.zero = 0
        # Dense counts from bucket index `lo`; positive and negative values apart.
        self._pos: tuple[int, np.ndarray] | None = None
        self._neg: tuple[int, np.ndarray] | None = None
        self._values: dict[float, int] | None = {}
        self._buffer: list[float] = []

    # -- updates -----------------------------------------------------------------------------

    def add(self, value: Any) -> None:
        """Count one value; ``None``, NaN and +-inf are skipped (as :func:`observer.drift.stats.clean`)."""
        if _is_missing(value):
            return
        self._buffer.append(float(value))
        if len(self._buffer) >= _FLUSH:
            self.flush()

    def extend(self, values: Iterable[Any]) -> None:
        """Count many values."""
        for v in values:
            self.add(v)
        self.flush()

    def flush(self) -> None:
        """Fold the buffered values into the buckets (done before any read)."""
        if not self._buffer:
            return
        x = np.asarray(self._buffer, dtype=np.float64)
        self._buffer = []
        x = x[np.isfinite(x)]
        if not len(x):
            return
        self._moments(len(x), float(x.mean()), float(((x - x.mean()) ** 2).sum()))
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        if self._values is not None:
            keys, counts = np.unique(x, return_counts=True)
            for k, c in zip(keys.tolist(), counts.tolist()):
                self._values[k] = self._values.get(k, 0) + c
            if len(self._values) > DISTINCT_CAP:
                self._values = None
        small = np.abs(x) < ZERO_WIDTH
        self.zero += int(small.sum())
        pos = x[(x > 0) & ~small]
        neg = -x[(x < 0) & ~small]
        if len(pos):
            self._pos = _add_counts(self._pos, self._index(pos))
        if len(neg):
            self._neg = _add_counts(self._neg, self._index(neg))

    def _index(self, magnitudes: np.ndarray) -> np.ndarray:
        return np.ceil(np.log(magnitudes) / self._ln_g).astype(np.int64)

    def _moments(self, n: int, mean: float, m2: float) -> None:
        # Chan et al.'s pairwise update: exact to rounding, order-independent in practice.
        total = self.n + n
        delta = mean - self.mean
        self.m2 += m2 + delta * delta * self.n * n / total
        self.mean += delta * n / total
        self.n = total

    def merge(self, other: NumericSketch) -> None:
        """Add ``other``'s values to this sketch (same relative accuracy required)."""
        if other.a != self.a:
            raise ValueError(f"cannot merge sketches of accuracy {other.a} and {self.a}")
        self.flush()
        other.flush()
        if other.n == 0:
            return
        self._moments(other.n, other.mean, other.m2)
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.zero += other.zero
        if self._values is not None and other._values is not None:
            for k, c in other._values.items():
                self._values[k] = self._values.get(k, 0) + c
            if len(self._values) > DISTINCT_CAP:
                self._values = None
        else:
            self._values = None
        for side in ("_pos", "_neg"):
            theirs = getattr(other, side)
            if theirs is not None:
                lo, counts = theirs
                idx = np.repeat(np.arange(lo, lo + len(counts)), counts)
                setattr(self, side, _add_counts(getattr(self, side), idx))

    # -- reads -------------------------------------------------------------------------------

    @property
    def std(self) -> float:
        """Population std (ddof 0) of the values."""
        self.flush()
        return math.sqrt(max(self.m2, 0.0) / self.n) if self.n else 0.0

    def distinct_values(self) -> dict[float, int] | None:
        """Value -> count while at most :data:`DISTINCT_CAP` distinct values were seen, else None."""
        self.flush()
        return None if self._values is None else dict(sorted(self._values.items()))

    def buckets(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(keys, lows, highs, counts)`` of the non-empty buckets in ascending value order.

        Keys identify a bucket across sketches of the same accuracy (negative keys: negative
        values, 0: the zero bucket); lows and highs are clamped to this sketch's min and max.
        """
        self.flush()
        keys, lows, highs, counts = [], [], [], []
        g = math.exp(self._ln_g)
        if self._neg is not None:
            lo, c = self._neg
            idx = np.arange(lo, lo + len(c))[::-1]
            c = c[::-1]
            keep = c > 0
            idx, c = idx[keep], c[keep]
            keys.append(-(idx + (1 << 40)))
            lows.append(-(g ** idx.astype(np.float64)))
            highs.append(-(g ** (idx - 1).astype(np.float64)))
            counts.append(c)
        if self.zero:
            keys.append(np.array([0]))
            lows.append(np.array([-ZERO_WIDTH]))
            highs.append(np.array([ZERO_WIDTH]))
            counts.append(np.array([self.zero]))
        if self._pos is not None:
            lo, c = self._pos
            idx = np.arange(lo, lo + len(c))
            keep = c > 0
            idx, c = idx[keep], c[keep]
            keys.append(idx + (1 << 40))
            lows.append(g ** (idx - 1).astype(np.float64))
            highs.append(g ** idx.astype(np.float64))
            counts.append(c)
        if not keys:
            empty = np.array([], dtype=np.float64)
            return np.array([], dtype=np.int64), empty, empty, np.array([], dtype=np.int64)
        return (
            np.concatenate(keys).astype(np.int64),
            np.clip(np.concatenate(lows), self.min, self.max),
            np.clip(np.concatenate(highs), self.min, self.max),
            np.concatenate(counts).astype(np.int64),
        )

    def nbytes(self) -> int:
        """Approximate memory held (bucket arrays and distinct values), for budgets."""
        size = 200
        for side in (self._pos, self._neg):
            if side is not None:
                size += side[1].nbytes + 112
        if self._values is not None:
            size += 100 * len(self._values)
        return size + 8 * len(self._buffer)

    # -- checkpoints -------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """A JSON-able state; :meth:`from_json` rebuilds an identical sketch."""
        self.flush()

        def side(s: tuple[int, np.ndarray] | None) -> list[Any] | None:
            return None if s is None else [s[0], s[1].tolist()]

        return {
            "a": self.a, "n": self.n, "min": self.min if self.n else None,
            "max": self.max if self.n else None, "mean": self.mean, "m2": self.m2,
            "zero": self.zero, "pos": side(self._pos), "neg": side(self._neg),
            "values": None if self._values is None else [[k, c] for k, c in self._values.items()],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NumericSketch:
        s = cls(float(data["a"]))
        s.n = int(data["n"])
        s.min = math.inf if data["min"] is None else float(data["min"])
        s.max = -math.inf if data["max"] is None else float(data["max"])
        s.mean, s.m2, s.zero = float(data["mean"]), float(data["m2"]), int(data["zero"])
        for name in ("pos", "neg"):
            raw = data[name]
            if raw is not None:
                setattr(s, f"_{name}", (int(raw[0]), np.asarray(raw[1], dtype=np.int64)))
        values = data["values"]
        s._values = None if values is None else {float(k): int(c) for k, c in values}
        return s


def _add_counts(side: tuple[int, np.ndarray] | None, idx: np.ndarray) -> tuple[int, np.ndarray]:
    lo, hi = int(idx.min()), int(idx.max())
    if side is not None:
        old_lo, old = side
        lo, hi = min(lo, old_lo), max(hi, old_lo + len(old) - 1)
    counts = np.zeros(hi - lo + 1, dtype=np.int64)
    if side is not None:
        counts[old_lo - lo: old_lo - lo + len(old)] = old
    np.add.at(counts, idx - lo, 1)
    return lo, counts


class CategoricalSketch:
    """Exact counts of the first ``top_k`` categories, one ``other`` count for the rest.

    >>> s = CategoricalSketch(top_k=2)
    >>> for v in ["stop", "length", None, "stop", "tool_calls"]:
    ...     s.add(v)
    >>> s.counts, s.other, s.n
    ({'stop': 2, 'length': 1}, 1, 4)
    """

    kind = "categorical"

    def __init__(self, top_k: int = DEFAULT_TOP_K) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        self.top_k = top_k
        self.counts: dict[Any, int] = {}
        self.other = 0
        self.n = 0

    def add(self, value: Any) -> None:
        """Count one value; ``None``, NaN and +-inf are missing, ``""`` is a category."""
        if _is_missing(value):
            return
        self.n += 1
        if value in self.counts:
            self.counts[value] += 1
        elif len(self.counts) < self.top_k:
            self.counts[value] = 1
        else:
            self.other += 1

    def extend(self, values: Iterable[Any]) -> None:
        for v in values:
            self.add(v)

    def flush(self) -> None:
        """Nothing buffered (the same interface as :class:`NumericSketch`)."""

    def merge(self, other: CategoricalSketch) -> None:
        """Add ``other``'s counts; its categories beyond this sketch's room go to ``other``."""
        self.n += other.n
        self.other += other.other
        for k, c in other.counts.items():
            if k in self.counts:
                self.counts[k] += c
            elif len(self.counts) < self.top_k:
                self.counts[k] = c
            else:
                self.other += c

    @property
    def exact(self) -> bool:
        """True while every category seen is counted on its own."""
        return self.other == 0

    def nbytes(self) -> int:
        return 250 + 70 * len(self.counts)

    def to_json(self) -> dict[str, Any]:
        return {"top_k": self.top_k, "n": self.n, "other": self.other,
                "counts": [[k, c] for k, c in self.counts.items()]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CategoricalSketch:
        s = cls(int(data["top_k"]))
        s.n, s.other = int(data["n"]), int(data["other"])
        s.counts = {(tuple(k) if isinstance(k, list) else k): int(c) for k, c in data["counts"]}
        return s


Sketch = NumericSketch | CategoricalSketch


def new_sketch(
    kind: str, relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY, top_k: int = DEFAULT_TOP_K
) -> Sketch:
    """An empty sketch for a feature of ``kind``.

    >>> type(new_sketch("categorical")).__name__
    'CategoricalSketch'
    """
    if kind == "numeric":
        return NumericSketch(relative_accuracy)
    if kind == "categorical":
        return CategoricalSketch(top_k)
    raise ValueError(f"unknown feature kind {kind!r}; expected 'numeric' or 'categorical'")


def sketch_to_json(sketch: Sketch) -> dict[str, Any]:
    return {"kind": sketch.kind, **sketch.to_json()}


def sketch_from_json(data: Mapping[str, Any]) -> Sketch:
    if data["kind"] == "embedding":  # a sample of vectors (drift.embedding.columns)
        from observer.drift.embedding.columns import Reservoir

        return Reservoir.from_json(data)  # type: ignore[return-value]
    cls = NumericSketch if data["kind"] == "numeric" else CategoricalSketch
    return cls.from_json(data)


def sketch_of(
    values: Iterable[Any], kind: str, relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY,
    top_k: int = DEFAULT_TOP_K,
) -> Sketch:
    """A sketch of raw values (to score an exact side against a sketched one)."""
    s = new_sketch(kind, relative_accuracy, top_k)
    s.extend(values)
    s.flush()
    return s



EXACT_BYTES_PER_VALUE = 40
"""What one raw value held in exact mode costs (list slot + float/str object), measured by
``benchmarks.streaming``; used to charge the exact-mode budget."""


class StateBudget:
    """Chooses exact or sketch mode per stream (``drift.mode``, ``drift.exact_budget_mb``).

    ``exact`` and ``sketch`` choose always the same; ``auto`` admits a stream in exact mode
    while the raw values it may hold (features x 2 windows, reference and open) fit what is
    left of the budget, and sketches every stream after that, so the engine's memory is at
    most the budget plus a bounded sketch per stream, however many segments appear.

    >>> b = StateBudget("auto", budget_bytes=2 * (2 * 2 * 200) * EXACT_BYTES_PER_VALUE)
    >>> [b.admit(features=2, records=200) for _ in range(4)]
    [True, True, False, False]
    >>> b.release(features=2, records=200); b.admit(features=2, records=200)
    True

    A restart restores exact streams exact, past the budget if it shrank: each is charged
    (:meth:`hold`), so releasing one of them frees only its own share.

    >>> b = StateBudget("auto", budget_bytes=(1 * 2 * 200) * EXACT_BYTES_PER_VALUE)
    >>> b.hold(features=1, records=200); b.hold(features=1, records=200)
    >>> b.release(features=1, records=200); b.admit(features=1, records=200)
    False
    >>> b.release(features=1, records=200); b.admit(features=1, records=200)
    True
    """

    def __init__(self, mode: str, budget_bytes: float) -> None:
        if mode not in ("exact", "sketch", "auto"):
            raise ValueError(f"unknown drift mode {mode!r}; choose exact, sketch or auto")
        self.mode = mode
        self.budget_bytes = budget_bytes
        self.used_bytes = 0.0

    def admit(self, features: int, records: int) -> bool:
        """True: hold this stream exactly; False: as sketches."""
        if self.mode != "auto":
            return self.mode == "exact"
        need = _exact_bytes(features, records)
        if self.used_bytes + need > self.budget_bytes:
            return False
        self.used_bytes += need
        return True

    def hold(self, features: int, records: int) -> None:
        """Charge an exact stream restored as it was checkpointed, whatever is left: its
        values exist already, and :meth:`release` will free its share when it goes."""
        if self.mode == "auto":
            self.used_bytes += _exact_bytes(features, records)

    def release(self, features: int, records: int) -> None:
        """An exact stream is gone (drift.retirement): its share is free again."""
        if self.mode == "auto":
            self.used_bytes = max(0.0, self.used_bytes - _exact_bytes(features, records))


def _exact_bytes(features: int, records: int) -> float:
    """Raw values an exact stream may hold: features x 2 windows (reference and open)."""
    return features * 2 * records * EXACT_BYTES_PER_VALUE
