"""Conditions of a combined policy (``all_of`` / ``any_of``): readers, histories, verdicts.

A condition names a window value (:data:`SIGNALS`, one reader per signal kind), compares it
(:data:`OPS`) with a threshold, and holds when its last ``for_windows`` windows of one stream
(consecutive window indices, each with at least ``min_samples`` records) all compare true.

Signals: ``drift_share``, ``dataset_drift`` (1/0), ``feature:<name>`` (that feature's
statistic), ``feature_drifted:<name>`` (1/0), ``degradation:<name>`` (1 when that change
detector detected a change during the window, else 0), ``degradation_level:<name>`` (the
detector's level), ``n`` (records in the window). A window that lacks the value reads NaN,
which never compares true.

Quality conditions (issue 16) read the ``evals`` record type, one stream per segment and eval
name: ``{signal: "degradation:score_fell", record_type: evals, eval: faithfulness}``, or the
shorthand ``eval faithfulness fell`` (:func:`parse_condition`). ``eval`` keeps only the
streams of that eval name; they match the deciding segment on the keys both have
(:func:`stream_matches`). A condition on a degradation signal carries the signal's figures
(window mean, reference mean, detector level, values), which the reason, the webhook payload,
the Argo ``conditions`` parameter and the ledger's reason carry.

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
from typing import TYPE_CHECKING, Any

from observer.core.records import DriftResult

if TYPE_CHECKING:
    from observer.triggers.config import ConditionConfig


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


QUALITY_RECORD_TYPE = "evals"
"""Evaluation scores: a condition on them says its figures in the decision's reason too."""

Figures = tuple[tuple[str, float | None], ...]
"""A degradation signal's figures as ``(name, value)`` pairs (hashable, ordered)."""


def figures_of(result: DriftResult, signal: str) -> Figures:
    """The figures behind a degradation condition's value: the window's mean of the values
    fed, the detector's reference mean (``mean_test``) and level, and the values fed;
    ``()`` for other signals or a window without that detector.

    >>> from observer.core.records import DegradationSignal
    >>> d = DegradationSignal(name="score_fell", field="score", detector="mean_test", n=300,
    ...     mean=0.61, level=0.6, detected=True, reference=0.86)
    >>> r = DriftResult(segment={}, segment_key="", record_type="evals", window_index=3,
    ...     n_reference=1, n_current=300, features=[], drift_share=0.0, dataset_drift=False,
    ...     closed_at_unix_nano=0, degradation=[d])
    >>> figures_of(r, "degradation:score_fell")
    (('mean', 0.61), ('reference', 0.86), ('level', 0.6), ('n', 300))
    """
    kind, _, name = signal.partition(":")
    if kind not in ("degradation", "degradation_level"):
        return ()
    d = next((d for d in result.degradation if d.name == name), None)
    if d is None:
        return ()
    return (("mean", d.mean), ("reference", d.reference), ("level", d.level), ("n", d.n))


@dataclass(frozen=True)
class Reading:
    """One window of one stream as conditions see it."""

    index: int
    n: int
    values: tuple[float, ...]
    """One value per condition of the policy, in order."""
    figures: tuple[Figures, ...] = ()
    """Per condition, the figures behind its value (:func:`figures_of`)."""


def reading(result: DriftResult, conditions: list[ConditionConfig]) -> Reading:
    """The window as the policy's conditions see it: each one's value and figures."""
    return Reading(result.window_index, result.n_current,
                   tuple(read_signal(result, c.signal) for c in conditions),
                   tuple(figures_of(result, c.signal) for c in conditions))


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
    eval: str = ""
    """The eval name the condition reads (evals), else ""."""
    figures: Figures = ()
    """A degradation signal's figures in the window the value comes from (:func:`figures_of`)."""

    def as_dict(self) -> dict[str, Any]:
        """The figures as JSON (webhook ``data.conditions``, run parameter ``conditions``).

        >>> Verdict("drift_share", ">=", 0.5, 0.7, (7, 8), True, "llm", "shop").as_dict()["windows"]
        [7, 8]
        """
        out = {
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
        if self.eval:
            out["eval"] = self.eval
        if self.figures:  # the quality figures: window mean, reference mean, level
            out["figures"] = dict(self.figures)
        return out

    def text(self, own_record_type: str) -> str:
        """The condition with its numbers, for the decision's reason.

        >>> Verdict("drift_share", ">=", 0.5, 0.71, (7, 8), True, "llm", "s").text("llm")
        'drift_share 0.71 >= 0.5 for 2 windows (7-8)'
        >>> Verdict("degradation:error_rate", ">=", 1, 1.0, (8,), True, "llm", "s", True).text("llm")
        'degradation:error_rate detected in window 8'
        >>> Verdict("drift_share", ">=", 0.5, 0.2, (8,), False, "evals", "s", False, 2).text("llm")
        'evals drift_share 0.2 in window 8: not >= 0.5 for 2 windows'
        >>> Verdict("degradation:score_fell", ">=", 1, 1.0, (5,), True, "evals", "s|m|faithfulness",
        ...         True, eval="faithfulness", figures=(("mean", 0.612), ("reference", 0.861),
        ...         ("level", 0.6), ("n", 300))).text("llm")
        'evals faithfulness degradation:score_fell detected in window 5 (mean 0.612, reference 0.861, level 0.6, n=300)'
        """
        where = "" if self.record_type == own_record_type else f"{self.record_type} "
        if self.eval:
            where += f"{self.eval} "
        w = self.windows
        span = (
            "no window" if not w
            else f"in window {w[0]}" if len(w) == 1
            else f"for {len(w)} windows ({w[0]}-{w[-1]})"
        )
        # Quality conditions name their figures; the JSON (as_dict) has them for every one.
        figures = _figures_text(self.figures) if self.record_type == QUALITY_RECORD_TYPE else ""
        if self.met and self.detection:
            return f"{where}{self.signal} detected {span}{figures}"
        value = "n/a" if self.value is None or math.isnan(self.value) else f"{self.value:.4g}"
        if self.met:
            return f"{where}{self.signal} {value} {self.op} {self.threshold:g} {span}{figures}"
        need = "" if self.for_windows == 1 else f" for {self.for_windows} windows"
        return (f"{where}{self.signal} {value} {span}: not {self.op} {self.threshold:g}{need}"
                f"{figures}")


def _figures_text(figures: Figures) -> str:
    """`` (mean 0.61, reference 0.86, level 0.6, n=300)``; unknown figures are left out."""
    parts = [f"n={v}" if k == "n" else f"{k} {v:.4g}" for k, v in figures
             if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return f" ({', '.join(parts)})" if parts else ""


def judge(
    readings: list[Reading], i: int, signal: str, op: str, threshold: float, for_windows: int,
    min_samples: int, record_type: str, segment_key: str, eval_name: str = "",
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
    # The newest window's figures: where the level stands now.
    newest = readings[-1] if readings else None
    figures = newest.figures[i] if newest is not None and len(newest.figures) > i else ()
    return Verdict(signal, op, threshold, value, windows, met, record_type, segment_key,
                   row.detection, for_windows, eval_name, figures)


EVAL_KEY = "name"
"""The segment key of an ``evals`` stream naming its eval (drift.segment_keys of evals)."""


def stream_matches(stream: dict[str, str], deciding: dict[str, str], eval_name: str | None) -> bool:
    """Whether a stream another condition reads belongs to the deciding segment: they agree
    on the keys both have and, for an ``eval`` condition, the stream is that eval's.

    >>> shop = {"service": "shop", "model": "m"}
    >>> stream_matches({"service": "shop", "model": "m", "name": "faithfulness"}, shop, "faithfulness")
    True
    >>> stream_matches({"service": "shop", "model": "m", "name": "toxicity"}, shop, "faithfulness")
    False
    """
    if eval_name and stream.get(EVAL_KEY) != eval_name:
        return False
    return segments_agree(stream, deciding)


def segments_agree(a: dict[str, str], b: dict[str, str]) -> bool:
    """Whether two segments have the same value for every key they share.

    >>> segments_agree({"service": "shop", "model": "m"}, {"service": "shop", "eval": "f"})
    True
    >>> segments_agree({"service": "shop"}, {"service": "cart"})
    False
    """
    return all(a[k] == b[k] for k in a.keys() & b.keys())


WORDS: dict[str, str] = {
    "fell": "degradation:score_fell",
    "thumbs_down": "degradation:thumbs_down_rate",
}
"""Words of the shorthand that stand for an evals signal (``eval faithfulness fell``)."""

SHORTHAND = ("[<record_type>] [eval <name>] <signal|fell|thumbs_down> [<op> <threshold>] "
             "[for <N> windows]")


def parse_condition(text: str) -> dict[str, Any]:
    """A condition written as text, as the mapping it stands for (``SHORTHAND``).

    >>> parse_condition("drift_share >= 0.5 for 2 windows")
    {'signal': 'drift_share', 'op': '>=', 'threshold': 0.5, 'for_windows': 2}
    >>> parse_condition("eval faithfulness fell")
    {'signal': 'degradation:score_fell', 'record_type': 'evals', 'eval': 'faithfulness'}
    >>> parse_condition("tools degradation:error_rate for 2 windows")
    {'signal': 'degradation:error_rate', 'record_type': 'tools', 'for_windows': 2}
    >>> parse_condition("eval faithfulness >= 0.5")
    Traceback (most recent call last):
    ...
    ValueError: condition 'eval faithfulness >= 0.5': no signal; write [<record_type>] [eval <name>] <signal|fell|thumbs_down> [<op> <threshold>] [for <N> windows]
    """
    tokens = text.split()
    out: dict[str, Any] = {}

    def fail(why: str) -> ValueError:
        return ValueError(f"condition {text!r}: {why}; write {SHORTHAND}")

    def is_signal(token: str) -> bool:
        if token in WORDS:
            return True
        try:
            parse_signal(token)
        except ValueError:
            return False
        return True

    if tokens and tokens[0] != "eval" and not is_signal(tokens[0]) and tokens[0] not in OPS:
        out["record_type"] = tokens.pop(0)
    if tokens[:1] == ["eval"]:
        if len(tokens) < 2:
            raise fail("eval needs a name")
        out["record_type"] = out.get("record_type", "evals")
        out["eval"] = tokens[1]
        tokens = tokens[2:]
    if not tokens or tokens[0] in OPS or tokens[0] == "for":
        raise fail("no signal")
    signal = WORDS.get(tokens[0], tokens[0])
    tokens = tokens[1:]
    if tokens and tokens[0] in OPS:
        if len(tokens) < 2:
            raise fail(f"{tokens[0]} needs a threshold")
        try:
            threshold = float(tokens[1])
        except ValueError:
            raise fail(f"threshold {tokens[1]!r} is not a number") from None
        out["op"], out["threshold"] = tokens[0], threshold
        tokens = tokens[2:]
    if tokens and tokens[0] == "for":
        if len(tokens) != 3 or not tokens[1].isdigit() or tokens[2] not in ("window", "windows"):
            raise fail("say 'for <N> windows'")
        out["for_windows"] = int(tokens[1])
        tokens = []
    if tokens:
        raise fail(f"unexpected {' '.join(tokens)!r}")
    return {"signal": signal, **out}
