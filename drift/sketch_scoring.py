"""Drift scored from sketches (:mod:`observer.drift.sketch`), with an error bound against exact mode.

Scoring (:func:`score_sketch`) returns the statistic and an *error bound* ``e``: the exact
mode's statistic on the same records is guaranteed to lie in ``[statistic - e, statistic + e]``,
so the sketch's verdict equals exact mode's whenever ``abs(statistic - threshold) > e``. The
bounds are computed per window from what the sketch knows for certain:

================  ====================================================================
method            bound
================  ====================================================================
any, exact case   0: categorical sketches that never overflowed ``top_k`` and numeric
                  sketches still holding their distinct values are expanded back into
                  the exact multiset and scored by the exact code (Evidently's numbers)
``wasserstein``   ``(d_ref + d_cur) / max(std_ref, 0.001)``: each value is represented
                  by its bucket's midpoint, moving it at most half a bucket (about
                  ``a * abs(x)``); ``d`` is that mean displacement, and W1 moves at most
                  by it per side (triangle inequality). ``std_ref`` is exact.
``ks``            both ECDFs are exact at every bucket edge (the grids are the same),
                  so ``D`` lies in ``[D_lo, D_hi]``: ``D_lo`` the largest difference at
                  an edge, ``D_hi`` adds the most either ECDF can rise inside one
                  bucket. The p-value is SciPy's ``ks_2samp`` for ``D_lo`` and the
                  bound reaches the p-value of ``D_hi`` (p falls as D grows).
``psi``,          Sturges' edges are exact (they need only the sizes, minima and
``jensenshannon`` maxima). A bucket inside one bin is counted exactly; only buckets
(numeric)         straddling a bin edge are split, in proportion to the overlap. Each
                  bin's share is thus known to an interval, and both per-bin terms
                  (``(r - c) ln(r / c)`` and ``r ln(2r / (r + c)) + c ln(2c / (r + c))``)
                  are jointly convex, zero on ``r = c`` and grow away from it: their
                  extremes over a box of shares are at its corners (0 if the
                  intervals overlap). Summing gives the interval of the statistic;
                  PSI's zero filling is bounded the same way.
``psi``,          beyond ``top_k`` categories: the tracked categories are exact on the
``jensenshannon`` side that tracks them and in ``[0, other]`` on the other side; the mass
(categorical)     of categories neither side tracks adds at most ``ln 2 (u_r + u_c) / 2``
                  to the JS divergence and ``g(u_r, f) + g(f, u_c)`` to PSI (``u`` the
                  ``other`` shares, ``f`` the zero fill).
``chisquare``,    exact while the categories fit ``top_k``; beyond, the p-value over
``ztest``         the tracked categories plus ``other``, with no finite bound (the
                  bound covers all of [0, 1])
================  ====================================================================

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> ref, cur = NumericSketch(), NumericSketch()
>>> ref.extend(rng.lognormal(5, 0.6, 5000)); cur.extend(rng.lognormal(5.1, 0.6, 5000))
>>> r = score_sketch("numeric", ref, cur, "wasserstein", 0.1)
>>> round(r.statistic, 3), round(r.error_bound, 3), r.drifted
(0.184, 0.033, True)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from observer.drift.scoring import REPORTED, resolve_method
from observer.drift.sketch import (
    DEFAULT_RELATIVE_ACCURACY,
    DEFAULT_TOP_K,
    DISTINCT_CAP,
    CategoricalSketch,
    NumericSketch,
    Sketch,
    sketch_of,
)
from observer.drift.stats import AUTO, METHODS, jensenshannon_of_shares, psi_of_shares
from observer.drift.stats.binning import MAX_CATEGORY_VALUES, ZERO_SHARE
from observer.drift.stats.methods import AUTO_REFERENCE_ROWS
from observer.drift.config import FeatureSpec
from observer.core.records import FeatureDrift


@dataclass(frozen=True)
class SketchScore:
    """One statistic from two sketches: the exact one lies within ``error_bound`` of it."""

    method: str
    statistic: float | None
    error_bound: float
    threshold: float
    drifted: bool


def expand(sketch: Sketch) -> np.ndarray | None:
    """The exact multiset of values when the sketch still knows it, else ``None``.

    Order is lost, which no statistic depends on.

    >>> expand(sketch_of([3, 1, 3], "numeric")).tolist()
    [1.0, 3.0, 3.0]
    """
    if isinstance(sketch, CategoricalSketch):
        if not sketch.exact:
            return None
        out = np.empty(sketch.n, dtype=object)
        out[:] = [k for k, c in sketch.counts.items() for _ in range(c)]
        return out
    values = sketch.distinct_values()
    if values is None:
        return None
    return np.repeat(np.fromiter(values, dtype=np.float64, count=len(values)),
                     np.fromiter(values.values(), dtype=np.int64, count=len(values)))


def distinct_count(reference: Sketch, current: Sketch) -> int:
    """Distinct values of both sides together, exact up to :data:`DISTINCT_CAP`/``top_k``
    (beyond that, a lower bound that is already above every limit Evidently's choice uses)."""
    if isinstance(reference, NumericSketch) and isinstance(current, NumericSketch):
        r, c = reference.distinct_values(), current.distinct_values()
        if r is None or c is None:
            return DISTINCT_CAP + 1
        return len(set(r) | set(c))
    assert isinstance(reference, CategoricalSketch) and isinstance(current, CategoricalSketch)
    keys = set(reference.counts) | set(current.counts)
    return len(keys) + (1 if reference.other or current.other else 0)


def choose_sketch_method(reference: Sketch, current: Sketch) -> str:
    """Evidently's automatic choice (:func:`observer.drift.stats.choose_method`) from two sketches.

    It needs the reference size (exact) and the distinct values of both sides (exact while
    they are few, which is the only case where the answer depends on their number).
    """
    values = distinct_count(reference, current)
    if reference.n <= AUTO_REFERENCE_ROWS:
        if reference.kind == "numeric" and values > 5:
            return "ks"
        return "chisquare" if values > 2 else "ztest"
    if reference.kind == "numeric" and values > 5:
        return "wasserstein"
    return "jensenshannon"


def score_sketch(
    kind: str,
    reference: Sketch,
    current: Sketch,
    method: str,
    threshold: float | None = None,
) -> SketchScore:
    """One method's statistic, error bound and verdict from two sketches of the same kind.

    Parameters
    ----------
    kind
        ``"numeric"`` or ``"categorical"``.
    reference, current
        The sketches (same relative accuracy for numeric ones).
    method
        A method name of :data:`observer.drift.stats.METHODS`, or ``auto``.
    threshold
        Default: the method's.
    """
    if method == AUTO:
        method = choose_sketch_method(reference, current) if reference.n and current.n else (
            "wasserstein" if kind == "numeric" else "jensenshannon")
    spec = METHODS[method]
    threshold = spec.default_threshold if threshold is None else threshold
    if reference.n == 0 or current.n == 0:
        return SketchScore(method, None, 0.0, threshold, False)
    ref, cur = expand(reference), expand(current)
    if ref is not None and cur is not None:
        value = spec.statistic(ref, cur, kind)
        return SketchScore(method, value, 0.0, threshold, spec.drifted(value, threshold))
    value, low, high = _interval(kind, reference, current, method)
    bound = float(max(value - low, high - value, 0.0))
    return SketchScore(method, float(value), bound, threshold, spec.drifted(value, threshold))


def _interval(kind: str, ref: Sketch, cur: Sketch, method: str) -> tuple[float, float, float]:
    """(estimate, low, high) when at least one side is no longer exact."""
    if kind == "numeric":
        assert isinstance(ref, NumericSketch) and isinstance(cur, NumericSketch)
        ref_values = ref.distinct_values()
        if method in ("psi", "jensenshannon") and (
            ref_values is None or len(ref_values) > MAX_CATEGORY_VALUES
        ):
            return _binned(ref, cur, method)
        if method == "wasserstein":
            return _wasserstein(ref, cur)
        if method == "ks":
            return _ks(ref, cur)
        # Per-value methods on a few-valued reference against a current that is not:
        # counted like categories, the current's values all unknown.
        ref_cat = CategoricalSketch(DISTINCT_CAP)
        for k, c in (ref_values or {}).items():
            ref_cat.counts[k] = c
        ref_cat.n = ref.n
        cur_cat = CategoricalSketch(1)
        cur_cat.n = cur_cat.other = cur.n
        return _categorical(ref_cat, cur_cat, method)
    assert isinstance(ref, CategoricalSketch) and isinstance(cur, CategoricalSketch)
    return _categorical(ref, cur, method)


def _grid(ref: NumericSketch, cur: NumericSketch) -> tuple[np.ndarray, ...]:
    """Both sketches over the union of their buckets: lows, highs, ref and cur counts."""
    rk, rl, rh, rc = ref.buckets()
    ck, cl, ch, cc = cur.buckets()
    keys = np.union1d(rk, ck)
    lo, hi = np.full(len(keys), np.inf), np.full(len(keys), -np.inf)
    r_counts, c_counts = np.zeros(len(keys)), np.zeros(len(keys))
    for k, low, high, counts, out in ((rk, rl, rh, rc, r_counts), (ck, cl, ch, cc, c_counts)):
        pos = np.searchsorted(keys, k)
        lo[pos] = np.minimum(lo[pos], low)
        hi[pos] = np.maximum(hi[pos], high)
        out[pos] = counts
    return lo, hi, r_counts, c_counts


def _wasserstein(ref: NumericSketch, cur: NumericSketch) -> tuple[float, float, float]:
    _, rl, rh, rc = ref.buckets()
    _, cl, ch, cc = cur.buckets()
    r_mid, c_mid = (rl + rh) / 2, (cl + ch) / 2
    atoms = np.concatenate([r_mid, c_mid])
    weights_r = np.concatenate([rc / ref.n, np.zeros(len(c_mid))])
    weights_c = np.concatenate([np.zeros(len(r_mid)), cc / cur.n])
    order = np.argsort(atoms, kind="stable")
    x = atoms[order]
    diff = np.cumsum(weights_r[order]) - np.cumsum(weights_c[order])
    w1 = float(np.sum(np.abs(diff[:-1]) * np.diff(x)))
    # Moving every value to its bucket's midpoint moves W1 by at most the mean displacement.
    d_ref = float(np.sum(rc * (rh - rl) / 2) / ref.n)
    d_cur = float(np.sum(cc * (ch - cl) / 2) / cur.n)
    norm = max(ref.std, 0.001)
    value = w1 / norm
    return value, max(value - (d_ref + d_cur) / norm, 0.0), value + (d_ref + d_cur) / norm


def _ks_p(a: int, n1: int, b: int, n2: int) -> float:
    """SciPy's two-sided p-value for ``D = abs(a/n1 - b/n2)``, from two two-valued samples
    that have exactly that statistic and these sizes (so the exact/asymptotic choice and the
    arithmetic are SciPy's own)."""
    x = np.repeat([0.0, 1.0], [a, n1 - a])
    y = np.repeat([0.0, 1.0], [b, n2 - b])
    return float(stats.ks_2samp(x, y)[1])


def _ks(ref: NumericSketch, cur: NumericSketch) -> tuple[float, float, float]:
    _, _, r_counts, c_counts = _grid(ref, cur)
    n1, n2 = ref.n, cur.n
    cr = np.concatenate([[0], np.cumsum(r_counts)]).astype(np.int64)  # counts <= each edge
    cc = np.concatenate([[0], np.cumsum(c_counts)]).astype(np.int64)
    # At an edge both ECDFs are exact.
    at_edges = np.abs(cr * n2 - cc * n1)
    i = int(np.argmax(at_edges))
    # Inside bucket j an ECDF lies between its values at the bucket's two edges.
    up = cr[1:] * n2 - cc[:-1] * n1
    down = cc[1:] * n1 - cr[:-1] * n2
    j_up, j_down = int(np.argmax(up)), int(np.argmax(down))
    p_low_d = _ks_p(int(cr[i]), n1, int(cc[i]), n2)
    if max(up[j_up], down[j_down]) <= at_edges[i]:
        return p_low_d, p_low_d, p_low_d
    if up[j_up] >= down[j_down]:
        p_high_d = _ks_p(int(cr[j_up + 1]), n1, int(cc[j_up]), n2)
    else:
        p_high_d = _ks_p(int(cr[j_down]), n1, int(cc[j_down + 1]), n2)
    return p_low_d, min(p_high_d, p_low_d), p_low_d


def sturges_edges(n: int, minimum: float, maximum: float) -> np.ndarray:
    """``np.histogram_bin_edges(data, bins="sturges")`` from the data's size, min and max.

    >>> data = np.random.default_rng(1).normal(size=777)
    >>> bool(np.array_equal(sturges_edges(len(data), data.min(), data.max()),
    ...                     np.histogram_bin_edges(data, bins="sturges")))
    True
    """
    first, last = float(minimum), float(maximum)
    if first == last:
        first, last = first - 0.5, last + 0.5
    width = (maximum - minimum) / (np.log2(n) + 1.0)
    bins = int(np.ceil((last - first) / width)) if width else 1
    return np.linspace(first, last, bins + 1, endpoint=True)


def _binned_side(
    lows: np.ndarray, highs: np.ndarray, counts: np.ndarray, edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin: counts surely inside, counts possibly inside, and the proportional estimate."""
    bins = len(edges) - 1
    # np.histogram's bins: [e_i, e_i+1), the last one closed.
    first = np.clip(np.searchsorted(edges, lows, side="right") - 1, 0, bins - 1)
    last = np.clip(np.searchsorted(edges, highs, side="right") - 1, 0, bins - 1)
    last = np.where(highs >= edges[-1], bins - 1, last)
    sure, maybe, estimate = np.zeros(bins), np.zeros(bins), np.zeros(bins)
    inside = first == last
    np.add.at(sure, first[inside], counts[inside])
    for lo, hi, f, la, c in zip(lows[~inside], highs[~inside], first[~inside], last[~inside],
                                counts[~inside]):
        width = hi - lo
        for b in range(f, la + 1):
            maybe[b] += c
            overlap = min(hi, edges[b + 1]) - max(lo, edges[b])
            estimate[b] += c * (overlap / width if width > 0 else 1.0 / (la - f + 1))
    estimate += sure
    return sure, sure + maybe, estimate


def _psi_term(r: float, c: float) -> float:
    return (r - c) * math.log(r / c)


def _js_term(r: float, c: float) -> float:
    total = r + c
    out = 0.0
    if r > 0:
        out += r * math.log(2 * r / total)
    if c > 0:
        out += c * math.log(2 * c / total)
    return out / 2


def _box(term: Any, r: tuple[float, float], c: tuple[float, float]) -> tuple[float, float]:
    """Min and max of a jointly convex term, zero on r = c and growing away from it."""
    corners = [term(x, y) for x in r for y in c]
    if r[1] < c[0]:
        low = term(r[1], c[0])
    elif c[1] < r[0]:
        low = term(r[0], c[1])
    else:
        low = 0.0
    return low, max(corners)


def _fill_range(n: int) -> tuple[float, float]:
    """The values PSI may give an empty bin of a side of ``n`` values (Evidently's filling:
    1e-4, or the smallest non-zero share / 1e6 when that is <= 1e-4)."""
    if 1.0 / n > ZERO_SHARE:
        return ZERO_SHARE, ZERO_SHARE
    return 1.0 / n / 1e6, ZERO_SHARE


def _share_box(low: float, high: float, fill: tuple[float, float]) -> tuple[float, float]:
    if high == 0:
        return fill
    if low == 0:
        return min(fill[0], high), high
    return low, high


def _bounds_of_terms(
    method: str, r_lo: np.ndarray, r_hi: np.ndarray, c_lo: np.ndarray, c_hi: np.ndarray,
    n_ref: int, n_cur: int,
) -> tuple[float, float]:
    if method == "psi":
        fr, fc = _fill_range(n_ref), _fill_range(n_cur)
        low = high = 0.0
        for a, b, x, y in zip(r_lo, r_hi, c_lo, c_hi):
            lo_, hi_ = _box(_psi_term, _share_box(a, b, fr), _share_box(x, y, fc))
            low, high = low + lo_, high + hi_
        return low, high
    low = high = 0.0
    for a, b, x, y in zip(r_lo, r_hi, c_lo, c_hi):
        lo_, hi_ = _box(_js_term, (a, b), (x, y))
        low, high = low + lo_, high + hi_
    return low, high


def _binned(ref: NumericSketch, cur: NumericSketch, method: str) -> tuple[float, float, float]:
    edges = sturges_edges(ref.n + cur.n, min(ref.min, cur.min), max(ref.max, cur.max))
    _, rl, rh, rc = ref.buckets()
    _, cl, ch, cc = cur.buckets()
    r_sure, r_maybe, r_est = _binned_side(rl, rh, rc.astype(np.float64), edges)
    c_sure, c_maybe, c_est = _binned_side(cl, ch, cc.astype(np.float64), edges)
    r_est, c_est = r_est / ref.n, c_est / cur.n
    if method == "psi":
        value = psi_of_shares(r_est, c_est)
    else:
        value = jensenshannon_of_shares(r_est, c_est)
    low, high = _bounds_of_terms(
        method, r_sure / ref.n, np.minimum(r_maybe / ref.n, 1.0), c_sure / cur.n,
        np.minimum(c_maybe / cur.n, 1.0), ref.n, cur.n,
    )
    if method == "jensenshannon":
        low, high = math.sqrt(max(low, 0.0)), min(math.sqrt(max(high, 0.0)), math.sqrt(math.log(2)))
    return value, min(low, value), max(high, value)


def _categorical(
    ref: CategoricalSketch, cur: CategoricalSketch, method: str
) -> tuple[float, float, float]:
    keys = list(dict.fromkeys([*ref.counts, *cur.counts]))
    u_r, u_c = ref.other / ref.n, cur.other / cur.n
    r_est = np.array([ref.counts.get(k, 0) / ref.n for k in keys] + [u_r])
    c_est = np.array([cur.counts.get(k, 0) / cur.n for k in keys] + [u_c])
    if method in ("chisquare", "ztest"):
        # The test over tracked categories + "other", from the counts; no finite bound.
        r_vals = np.repeat(np.arange(len(keys) + 1), np.round(r_est * ref.n).astype(np.int64))
        c_vals = np.repeat(np.arange(len(keys) + 1), np.round(c_est * cur.n).astype(np.int64))
        value = METHODS[method].statistic(r_vals.astype(object), c_vals.astype(object),
                                          "categorical")
        return float(value), 0.0, 1.0
    value = psi_of_shares(r_est, c_est) if method == "psi" else jensenshannon_of_shares(r_est, c_est)

    def side(sketch: CategoricalSketch, u: float) -> tuple[np.ndarray, np.ndarray]:
        lo = np.array([sketch.counts.get(k, 0) / sketch.n for k in keys])
        hi = np.array([sketch.counts[k] / sketch.n if k in sketch.counts else u for k in keys])
        return lo, hi

    r_lo, r_hi = side(ref, u_r)
    c_lo, c_hi = side(cur, u_c)
    low, high = _bounds_of_terms(method, r_lo, r_hi, c_lo, c_hi, ref.n, cur.n)
    # Categories neither side tracks: at most all of both "other" masses, disjoint.
    if method == "psi":
        fr, fc = _fill_range(ref.n), _fill_range(cur.n)
        high += (_psi_term(u_r, fc[0]) if u_r > fc[0] else 0.0) + (
            _psi_term(fr[0], u_c) if u_c > fr[0] else 0.0)
    else:
        high += math.log(2) * (u_r + u_c) / 2
        low, high = math.sqrt(max(low, 0.0)), min(math.sqrt(high), math.sqrt(math.log(2)))
    return value, min(low, value), max(high, value)


def score_sketch_feature(
    spec: FeatureSpec,
    reference: Sketch,
    current: Sketch,
    *,
    numeric_method: str = "wasserstein",
    categorical_method: str = "jensenshannon",
    thresholds: Mapping[str, float] | None = None,
) -> FeatureDrift:
    """:func:`observer.drift.scoring.score_feature` from sketches: the same method and threshold
    resolution and reported statistics, plus ``error_bound`` for the deciding statistic.

    >>> from observer.drift.config import FeatureSpec
    >>> spec = FeatureSpec(name="finish_reason", kind="categorical")
    >>> f = score_sketch_feature(spec, sketch_of(["stop"] * 90 + ["length"] * 10, "categorical"),
    ...                          sketch_of(["stop"] * 50 + ["length"] * 50, "categorical"))
    >>> f.method, round(f.statistic, 4), f.error_bound, f.drifted
    ('jensenshannon', 0.319, 0.0, True)
    """
    method = resolve_method(spec, numeric_method, categorical_method)
    if method == AUTO:
        method = (
            choose_sketch_method(reference, current)
            if reference.n and current.n
            else REPORTED[spec.kind][0]
        )
    if spec.threshold is not None:
        threshold = spec.threshold
    else:
        threshold = (thresholds or {}).get(method, METHODS[method].default_threshold)
    scores = {
        name: score_sketch(spec.kind, reference, current, name, threshold)
        for name in dict.fromkeys([*REPORTED[spec.kind], method])
    }
    decided = scores[method]
    return FeatureDrift(
        name=spec.name,
        kind=spec.kind,
        method=method,
        statistic=decided.statistic,
        threshold=threshold,
        drifted=decided.drifted,
        statistics={k: s.statistic for k, s in scores.items() if s.statistic is not None},
        error_bound=decided.error_bound,
    )


def score_sketch_columns(
    reference: Mapping[str, Sketch],
    current: Mapping[str, Sketch],
    features: Iterable[FeatureSpec],
    *,
    numeric_method: str = "wasserstein",
    categorical_method: str = "jensenshannon",
    thresholds: Mapping[str, float] | None = None,
) -> list[FeatureDrift]:
    """Every feature's verdict from sketches, in the order of ``features``."""
    return [
        score_sketch_feature(
            spec, reference[spec.name], current[spec.name], numeric_method=numeric_method,
            categorical_method=categorical_method, thresholds=thresholds,
        )
        for spec in features
    ]


def sketched_scores(
    reference: Any,
    current: Any,
    specs: Iterable[FeatureSpec],
    *,
    numeric_method: str,
    categorical_method: str,
    thresholds: Mapping[str, float] | None,
    relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY,
    top_k: int = DEFAULT_TOP_K,
) -> list[FeatureDrift] | None:
    """Scores of two closed windows when either holds sketches (the other, if exact, is
    sketched first); ``None`` when both are exact (the exact scorer applies)."""
    if reference.sketches is None and current.sketches is None:
        return None
    specs = list(specs)

    def sketches(window: Any) -> dict[str, Sketch]:
        if window.sketches is not None:
            return window.sketches
        return {s.name: sketch_of(window.columns.get(s.name, []), s.kind, relative_accuracy, top_k)
                for s in specs}

    return score_sketch_columns(
        sketches(reference), sketches(current), specs, numeric_method=numeric_method,
        categorical_method=categorical_method, thresholds=thresholds,
    )
