"""Evaluation scores as a quality signal: which way is worse, and what counts as thumbs-down.

Drift says "different"; a retraining decision needs "worse". The record type ``evals``
(:data:`observer.drift.record_types.RECORD_TYPES`) reads ``observer.evals-joined``: evaluation
scores and user feedback, each carrying the segment of the call it judged, one stream per
segment and eval name (``drift.segment_keys`` of ``llm`` plus ``name``). Its default
degradation signals (``drift.degradation.evals``) are

==========================  ===============================================================
signal                      what it follows
==========================  ===============================================================
``score_fell``              ``score``, detector ``mean_test`` (a one-sided test of each
                            block of 100 scores against the stream's first 200, false-alarm
                            rate 0.001 per block: :mod:`observer.drift.mean_test`), direction
                            ``worse``
``thumbs_down_rate``        rule ``thumbs_down`` (:data:`RULES`), detector ``adwin``, up
==========================  ===============================================================

Direction ``worse`` is resolved per stream by its eval name (:func:`stream_specs`): ``down``
(the score fell), or ``up`` for names in ``drift.quality.lower_is_better`` (hallucination,
toxicity: a rising score is worse). A record the join could not place (``join: unjoined``)
has no segment: it is not scored (:func:`admits`; the join stage counts it).

>>> from observer.drift.config import DriftConfig
>>> cfg = DriftConfig()
>>> [(s.name, s.direction) for s in stream_specs(cfg, "evals", {"name": "faithfulness"})]
[('score_fell', 'down'), ('thumbs_down_rate', 'up')]
>>> [s.direction for s in stream_specs(cfg, "evals", {"name": "hallucination"})][0]
'up'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from observer.drift.config import EVAL_KEY, DegradationSpec, DriftConfig

from observer.core.records import EvalRecord, Record

FEEDBACK_EVALS = ("user_feedback",)
"""Eval names whose score is feedback (Phoenix's convention: 1 thumbs-up, 0 thumbs-down)."""
THUMBS_DOWN, THUMBS_UP = "thumbs_down", "thumbs_up"


def thumbs_down(record: Record) -> float | None:
    """1 for thumbs-down feedback, 0 for other feedback, ``None`` (skipped) for a record that
    is not feedback: a label ``thumbs_down``/``thumbs_up`` (any case; ``-`` or a space for
    ``_``), or a score of a feedback name (:data:`FEEDBACK_EVALS`; 0 or less is thumbs-down).

    >>> def ev(**kw):
    ...     return EvalRecord(target="span", source="rest", **kw)
    >>> [thumbs_down(ev(name="user_feedback", label="thumbs_down")),
    ...  thumbs_down(ev(name="user_feedback", score=0.0)), thumbs_down(ev(name="x", label="thumbs_up")),
    ...  thumbs_down(ev(name="user_feedback", score=1.0)), thumbs_down(ev(name="faithfulness", score=0.0)),
    ...  thumbs_down(ev(name="rating", label="Thumbs-Down"))]
    [1.0, 1.0, 0.0, 0.0, None, 1.0]
    """
    if not isinstance(record, EvalRecord):
        return None
    # Producers spell it thumbs_down, thumbs-down, Thumbs Down: one spelling for all.
    label = "_".join((record.label or "").lower().replace("-", " ").split())
    if label in (THUMBS_DOWN, THUMBS_UP):
        return 1.0 if label == THUMBS_DOWN else 0.0
    if record.name in FEEDBACK_EVALS and record.score is not None:
        return 1.0 if record.score <= 0 else 0.0
    return None


RULES: dict[str, Callable[[Record], float | None]] = {
    "thumbs_down": thumbs_down,
}
"""Named value rules (``DegradationSpec.rule``): record -> value fed, or ``None`` to skip."""


def check_direction(record_type: str, spec: DegradationSpec) -> None:
    """``worse`` only means something for eval scores: refuse it elsewhere, naming it.

    >>> check_direction("llm", DegradationSpec(name="l", field="latency_ms", direction="worse"))
    Traceback (most recent call last):
    ...
    ValueError: degradation signal 'l' of llm records: direction worse applies to evals records only (it reads the eval name); use up or down
    """
    if spec.direction == "worse" and record_type != "evals":
        raise ValueError(f"degradation signal {spec.name!r} of {record_type} records: direction "
                         "worse applies to evals records only (it reads the eval name); use up "
                         "or down")


def resolve(spec: DegradationSpec, eval_name: str | None, lower_is_better: Sequence[str]) -> DegradationSpec:
    """The spec with ``worse`` made ``down`` or ``up`` for ``eval_name``; others unchanged."""
    if spec.direction != "worse":
        return spec
    up = eval_name is not None and eval_name in lower_is_better
    return spec.model_copy(update={"direction": "up" if up else "down"})


def stream_specs(cfg: DriftConfig, record_type: str, segment: dict[str, Any]) -> list[DegradationSpec]:
    """The degradation specs of one stream: ``drift.degradation[record_type]`` resolved for
    its eval name (:func:`resolve`)."""
    name = segment.get(EVAL_KEY) if record_type == "evals" else None
    return [resolve(s, name, cfg.quality.lower_is_better)
            for s in cfg.degradation.get(record_type, [])]


def admits(record: Record) -> bool:
    """Whether the drift engine scores the record: not an eval the join could not place.

    >>> admits(EvalRecord(name="f", target="span", source="rest", join="unjoined"))
    False
    """
    return getattr(record, "join", "carried") != "unjoined"
