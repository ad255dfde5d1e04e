"""Where evaluation scores and feedback sit in traces, and how one result's values are checked.

Three conventions carry them (``observer.evals/v1`` records are built from all three):

- OpenInference (``spec/annotations.md``): flattened objects
  ``evaluations.<i>.evaluation.<field>`` or ``annotations.<i>.annotation.<field>``, with the
  ``trace.`` and ``session.`` prefixes widening the target from the carrying span to its trace
  or to its ``session.id``; fields ``name``, ``score``, ``label``, ``explanation``,
  ``annotator_kind`` (``LLM``, ``CODE``, ``HUMAN``), ``identifier`` (``metadata`` is not kept);
- post-hoc, the same attributes on a carrier span (``openinference.span.kind=EVALUATOR``) with
  exactly one span link: the link, not the carrier, is the target;
- OpenTelemetry GenAI: the ``gen_ai.evaluation.result`` span event.

Phoenix's REST body (``result{label,score,explanation}``) is checked by the same
:func:`result_fields`. Every value is hostile: a name that is not a name drops the result, a
score that is not a finite number within ``±MAX_SCORE`` or a label that is not a string is
left out, and a result left with no score, label or explanation is dropped; each is counted
in ``observer_invalid_values_total{stage,field}``.

>>> inline_results({"trace.evaluations.0.evaluation.name": "qa",
...                 "trace.evaluations.0.evaluation.score": 0.5,
...                 "annotations.1.annotation.label": "ok"})
[('span', {'label': 'ok'}), ('trace', {'name': 'qa', 'score': 0.5})]
>>> result_fields({"name": "user_feedback", "label": "thumbs_down"}, "doc")["score"]
0.0
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from observer.collectors.common.genai_mapping import as_str

from observer.core import validate
from observer.core.records import MAX_LABEL_CHARS, MAX_SCORE

Target = Literal["trace", "span", "session"]

SCOPES: dict[str, Target] = {"": "span", "trace.": "trace", "session.": "session"}
"""Attribute prefix -> what the result is about (OpenInference scope prefixes)."""
FORMS = {"evaluations": "evaluation", "annotations": "annotation"}
"""The two equivalent spellings of OpenInference feedback: collection -> object."""
FIELDS = ("name", "score", "label", "explanation", "annotator_kind", "identifier")
"""The fields read (``metadata`` is not kept)."""
MAX_INDEX = 64
"""Indices ``0 .. MAX_INDEX - 1`` of each collection are read; higher ones are not."""
INLINE_NAMES: frozenset[str] = frozenset(
    f"{scope}{collection}.{i}.{item}.{field}" for scope in SCOPES
    for collection, item in FORMS.items() for i in range(MAX_INDEX) for field in FIELDS)
"""Every inline attribute name read: a set, so that the normaliser's one pass over a span's
attributes picks them up (a prefix scan of every attribute would cost more than the rest)."""
_INLINE = re.compile(
    r"^(trace\.|session\.)?(evaluations|annotations)\.(\d+)\.(evaluation|annotation)\.(\w+)$")

SPAN_KIND = "openinference.span.kind"
EVALUATOR = "evaluator"
"""A carrier span of post-hoc feedback (compared lowercased)."""
SESSION_ID = "session.id"
READ_NAMES: frozenset[str] = INLINE_NAMES | {SPAN_KIND, SESSION_ID}
"""The span attributes :func:`observer.collectors.normalize.evals.span_evals` needs."""

GENAI_EVENT = "gen_ai.evaluation.result"
GENAI_FIELDS: dict[str, str] = {
    "gen_ai.evaluation.name": "name",
    "gen_ai.evaluation.score.value": "score",
    "gen_ai.evaluation.score.label": "label",
    "gen_ai.evaluation.explanation": "explanation",
    "gen_ai.response.id": "response_id",
}
"""Attributes of a ``gen_ai.evaluation.result`` event -> result field."""

ANNOTATOR_KINDS = frozenset({"llm", "code", "human"})
FEEDBACK_SCORES: dict[str, dict[str, float]] = {
    "user_feedback": {"thumbs_up": 1.0, "thumbs_down": 0.0},
}
"""User feedback sent as a label only: the score it stands for (name -> label -> score)."""
MAX_RESULTS_PER_SPAN = 64
"""Results one span may carry; more are dropped and counted (``evals``)."""


def inline_results(attributes: Mapping[str, Any]) -> list[tuple[Target, dict[str, Any]]]:
    """The OpenInference results among ``attributes``, as ``(target, raw fields)``, in
    index order per scope and form; values are not checked yet (:func:`result_fields`)."""
    groups: dict[tuple[str, str, int], dict[str, Any]] = {}
    for key, value in attributes.items():  # in attribute order: a deterministic result
        match = _INLINE.match(key) if key in INLINE_NAMES else None
        if match is None:
            continue
        groups.setdefault((match[1] or "", match[2], int(match[3])), {})[match[5]] = value
    return [(SCOPES[scope], fields) for (scope, _, _), fields in sorted(
        groups.items(), key=lambda g: (list(SCOPES).index(g[0][0]), g[0][1], g[0][2]))]


def genai_result(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The raw fields of a ``gen_ai.evaluation.result`` event's attributes."""
    return {field: attributes[name] for name, field in GENAI_FIELDS.items() if name in attributes}


def result_fields(raw: Mapping[str, Any], stage: str) -> dict[str, Any] | None:
    """One result's checked fields for an ``EvalRecord`` (``explanation`` stays the raw
    text, for the caller to measure and maybe keep), or None when it is unusable: no valid
    name, or no valid score, label or explanation.

    >>> result_fields({"name": "qa", "score": float("nan"), "label": "good"}, "doc")
    {'name': 'qa', 'label': 'good', 'annotator_kind': 'other'}
    >>> result_fields({"name": "qa", "score": "high"}, "doc") is None
    True
    """
    name = as_str(raw.get("name"))
    if name is None:
        validate.invalid(stage, "eval_name")
        return None
    out: dict[str, Any] = {"name": name}
    if raw.get("score") is not None:
        score = validate.finite(raw["score"], min=-MAX_SCORE, max=MAX_SCORE)
        if score is None:
            validate.invalid(stage, "eval_score")
        else:
            out["score"] = score
    if raw.get("label") is not None:
        label = validate.text(raw["label"], MAX_LABEL_CHARS)  # "" for a non-string
        if label:
            out["label"] = label
        else:
            validate.invalid(stage, "eval_label")
    explanation = raw.get("explanation")
    if isinstance(explanation, str) and explanation:
        out["explanation"] = explanation
    elif explanation is not None and explanation != "":
        validate.invalid(stage, "eval_explanation")
    fallback = FEEDBACK_SCORES.get(name, {}).get(out.get("label", ""))
    if "score" not in out and fallback is not None:  # thumbs sent as a label only
        out["score"] = fallback
    if not {"score", "label", "explanation"} & out.keys():
        validate.invalid(stage, "eval_result")
        return None
    out["annotator_kind"] = validate.enum(raw.get("annotator_kind"), ANNOTATOR_KINDS)
    for field in ("identifier", "response_id"):
        if raw.get(field) is not None:
            value = as_str(raw[field])
            if value is None:
                validate.invalid(stage, f"eval_{field}")
            else:
                out[field] = value
    return out
