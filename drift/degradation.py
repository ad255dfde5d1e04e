"""Degradation signals: change detectors fed record fields, per segment and record type.

Drift statistics compare a window's distribution with a reference; a degradation signal
follows one number record by record (an LLM error rate, a tool error rate, a latency) with a
change detector (:mod:`observer.drift.detectors`) and says when its level moved. Each
``DegradationSpec`` of ``drift.degradation[record_type]`` names the field, how a record becomes a
value, the detector and its parameters:

=======================  ===================================================================
field value              what the detector is fed
=======================  ===================================================================
``equals: X`` set        1.0 when ``str(value) == X``, else 0.0 (a rate: ``status == error``)
a number                 the number (``latency_ms``, ``output_tokens``)
a boolean                1.0 or 0.0 (``error``: the LLM error rate)
``None``, NaN, +-inf     nothing: the record is skipped for this signal
``rule: R`` set          what the named rule says (:data:`observer.drift.quality.RULES`:
                         ``thumbs_down`` feeds 1/0 for feedback and skips other records)
=======================  ===================================================================

Direction ``worse`` (``evals`` only) is resolved per stream by its eval name
(:func:`observer.drift.quality.stream_specs`), so :meth:`DegradationTracker.for_stream` builds a
stream's tracker. A detector with a fixed reference (``mean_test``) reports its mean as the
signal's ``reference``.

The engine feeds every record of a stream (the reference window's too, so the detector
learns the normal level first) and, when a window closes, reads one
:class:`~observer.core.records.DegradationSignal` per spec into the window's
:class:`~observer.core.records.DriftResult`: values fed during the window and their mean, the
detector's level, and whether a change in the configured direction was detected during the
window. Detector state goes into the checkpoints incrementally
(:meth:`DegradationTracker.checkpoint`), so a restarted engine continues bit for bit.

>>> from observer.drift.config import DegradationSpec
>>> from observer.core.records import ToolCall
>>> tracker = DegradationTracker([DegradationSpec(name="error_rate", field="status",
...                                               equals="error", clock=1)])
>>> def call(status):
...     return ToolCall(service="shop", tool_name="search", trace_id="t", span_id="s",
...                     status=status)
>>> for i in range(300):
...     tracker.update(call("error" if i % 20 == 0 else "ok"))
>>> [(s.n, s.mean, s.detected) for s in tracker.close_window()]
[(300, 0.05, False)]
>>> for i in range(300):
...     tracker.update(call("error" if i % 2 == 0 else "ok"))
>>> signal = tracker.close_window()[0]
>>> signal.mean, signal.detected, signal.level > 0.3
(0.5, True, True)
"""

from __future__ import annotations

import logging
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from observer.drift.detectors import ADWIN, MeanTest, PageHinkley, make_detector
from observer.drift.config import DegradationSpec, DriftConfig
from observer.drift.quality import RULES, check_direction, resolve, stream_specs
from observer.drift.quality_metrics import Watcher, watcher_for
from observer.core.records import DegradationSignal, Record

log = logging.getLogger(__name__)

_NUMBERS = {int, float, bool, type(None)}


def detector_for(spec: DegradationSpec) -> PageHinkley | ADWIN | MeanTest:
    """The spec's detector with its parameters (unset ones take the detector's defaults)."""
    return make_detector(
        spec.detector, direction=spec.direction, delta=spec.delta, threshold=spec.threshold,
        min_instances=spec.min_instances, clock=spec.clock, alpha=spec.alpha,
        reference_values=spec.reference_values, block=spec.block,
    )


def check_specs(record_type: str, cls: type[Record], specs: Sequence[DegradationSpec]) -> None:
    """Raise a clear error for a duplicate name, an unknown field, or a field that is not a
    number where ``equals`` is unset.

    >>> from observer.core.records import LLMCall
    >>> check_specs("llm", LLMCall, [DegradationSpec(name="x", field="finish_reason")])
    Traceback (most recent call last):
    ...
    ValueError: degradation signal 'x' of llm records: field 'finish_reason' is not a number; set equals to follow a rate of one of its values
    """
    seen: set[str] = set()
    for spec in specs:
        where = f"degradation signal {spec.name!r} of {record_type} records"
        if spec.name in seen:
            raise ValueError(f"{where}: the name is used twice")
        seen.add(spec.name)
        check_direction(record_type, spec)
        info = cls.model_fields.get(spec.field)
        if info is None or spec.field == "schema_":
            raise ValueError(f"{where}: {spec.field!r} is not a field of {cls.schema_id} records")
        annotation = info.annotation
        union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
        args = typing.get_args(annotation) if union else (annotation,)
        if spec.equals is None and spec.rule is None and not set(args) <= _NUMBERS:
            raise ValueError(f"{where}: field {spec.field!r} is not a number; set equals to "
                             "follow a rate of one of its values")
        # Parameters the detector refuses fail here, not on the first record.
        detector_for(resolve(spec, None, ()))


def value_of(record: Record, spec: DegradationSpec) -> float | None:
    """What ``record`` feeds the spec's detector (see the module table); ``None``: nothing.

    >>> from observer.core.records import LLMCall
    >>> rec = LLMCall(service="s", model="m", trace_id="t", span_id="s", error=True,
    ...               latency_ms=120.0, finish_reason="length")
    >>> value_of(rec, DegradationSpec(name="e", field="error"))
    1.0
    >>> value_of(rec, DegradationSpec(name="l", field="finish_reason", equals="length"))
    1.0
    >>> value_of(rec, DegradationSpec(name="t", field="output_tokens")) is None
    True
    """
    if spec.rule is not None:
        return RULES[spec.rule](record)
    value = getattr(record, spec.field, None)
    if value is None:
        return None
    if spec.equals is not None:
        return 1.0 if str(value) == spec.equals else 0.0
    x = float(value)
    return x if math.isfinite(x) else None


@dataclass
class _Signal:
    spec: DegradationSpec
    detector: PageHinkley | ADWIN | MeanTest
    n: int = 0  # values fed since the previous window closed
    total: float = 0.0  # their sum
    detections: int = 0  # changes detected since the previous window closed
    total_detections: int = 0
    fed: list[float] = field(default_factory=list)  # values since the last checkpoint

    def feed(self, x: float) -> None:
        self.n += 1
        self.total += x
        if self.detector.update(x).drift_detected:
            self.detections += 1
            self.total_detections += 1

    def state(self) -> dict[str, Any]:
        return {"field": self.spec.field, "equals": self.spec.equals,
                "detector": self.detector.state(), "n": self.n, "total": self.total,
                "detections": self.detections, "total_detections": self.total_detections}


class DegradationTracker:
    """The degradation signals of one stream (segment x record type).

    Checkpoints are incremental, like the window's values: the state of every detector as the
    open window started (its *snapshot*, in the window's first chunk), then in every chunk
    the values fed since the previous chunk. Restoring replays those values onto the
    snapshot, the same updates in the same order, so the detectors end bit for bit where
    they were; a chunk costs a few bytes per record, not the detectors' whole state.

    Parameters
    ----------
    specs
        ``drift.degradation[record_type]``, already checked (:func:`check_specs`).
    """

    def __init__(self, specs: Sequence[DegradationSpec], watcher: Watcher | None = None) -> None:
        self._signals = [_Signal(spec, detector_for(spec)) for spec in specs]
        self._snapshot: dict[str, Any] | None = self._state()
        # Sees every record and closed window for the quality metrics (drift.quality_metrics).
        self.watcher = watcher

    @classmethod
    def for_stream(cls, cfg: DriftConfig, record_type: str,
                   segment: dict[str, str]) -> DegradationTracker:
        """The tracker of one stream: ``drift.degradation[record_type]``, ``worse`` resolved
        for its eval name (:func:`observer.drift.quality.stream_specs`)."""
        return cls(stream_specs(cfg, record_type, segment),
                   watcher_for(cfg, record_type, segment))

    def __bool__(self) -> bool:
        return bool(self._signals)

    def update(self, record: Record) -> None:
        """Feed one record to every signal it has a value for."""
        if self.watcher is not None:
            self.watcher.update(record)
        for s in self._signals:
            x = value_of(record, s.spec)
            if x is not None:
                s.feed(x)
                s.fed.append(x)

    def close_window(self) -> list[DegradationSignal]:
        """The signals of the window that just closed; the window sums start again."""
        out = []
        for s in self._signals:
            out.append(DegradationSignal(
                name=s.spec.name, field=s.spec.field, detector=s.spec.detector, n=s.n,
                mean=s.total / s.n if s.n else None, level=s.detector.estimation,
                detected=s.detections > 0, detections=s.detections,
                total_detections=s.total_detections,
                reference=getattr(s.detector, "reference_mean", None),
            ))
            s.n, s.total, s.detections = 0, 0.0, 0
            s.fed.clear()  # the snapshot below covers them
        self._snapshot = self._state()
        if self.watcher is not None:
            self.watcher.close(out)
        return out

    def _state(self) -> dict[str, Any]:
        return {s.spec.name: s.state() for s in self._signals}

    def checkpoint(self, first_chunk: bool) -> dict[str, Any]:
        """What the stream's next chunk carries: the values fed since the previous chunk and,
        in a window's first chunk, the snapshot taken when the window opened."""
        out: dict[str, Any] = {"values": {s.spec.name: list(s.fed) for s in self._signals}}
        if first_chunk:
            out["snapshot"] = self._snapshot if self._snapshot is not None else self._state()
        self._snapshot = None
        for s in self._signals:
            s.fed.clear()
        return out

    def restore(self, snapshot: dict[str, Any] | None, values: dict[str, list[float]]) -> None:
        """Continue from a window's snapshot and the values its chunks carried after it.

        A signal whose field, value rule or detector parameters changed since starts fresh
        (logged); one no longer configured is dropped.
        """
        for s in self._signals:
            saved = (snapshot or {}).get(s.spec.name)
            if saved is None:
                continue
            same = (saved["field"] == s.spec.field and saved["equals"] == s.spec.equals
                    and saved["detector"].get("params") == s.detector.params())
            if not same:
                log.warning("degradation signal %s changed since the checkpoint; starting it "
                            "afresh", s.spec.name)
                continue
            s.detector.restore(saved["detector"])
            s.n, s.total = int(saved["n"]), float(saved["total"])
            s.detections = int(saved["detections"])
            s.total_detections = int(saved["total_detections"])
            for x in values.get(s.spec.name, []):
                s.feed(float(x))
        # Should the stream write its window's first chunk again, it starts from here.
        self._snapshot = self._state()
