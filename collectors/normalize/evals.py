"""A span's evaluation scores and feedback become ``observer.evals/v1`` records.

Where they sit is :mod:`observer.collectors.common.eval_mapping`; this module finds the
target of each result and builds the records:

- inline OpenInference results (indices below ``MAX_INDEX``) target the carrying span, its trace (``trace.`` prefix) or its
  ``session.id`` (``session.`` prefix; without a session id the result is dropped, counted as
  ``session_id``);
- on an EVALUATOR span they target its one span link instead (source ``evaluator_span``); an
  EVALUATOR span without exactly one valid link gives no record (counted as ``eval_target``);
- a ``gen_ai.evaluation.result`` event targets the span carrying it (source
  ``genai_event``), or the link of an EVALUATOR carrier (source ``evaluator_span``).

A span carries at most ``MAX_RESULTS_PER_SPAN`` results; more are dropped, counted as ``evals``.

The explanation's length is always recorded, its (redacted) text only under
``normalizer.content.capture``.

>>> from opentelemetry.proto.trace.v1.trace_pb2 import Span
>>> from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
>>> span = Span(trace_id=bytes([1] * 16), span_id=bytes([2] * 8), end_time_unix_nano=5,
...     attributes=[KeyValue(key="evaluations.0.evaluation.name", value=AnyValue(string_value="qa")),
...                 KeyValue(key="evaluations.0.evaluation.score", value=AnyValue(double_value=0.9))])
>>> from observer.collectors.common.eval_mapping import READ_NAMES
>>> attributes = attribute_values(span.attributes, READ_NAMES)
>>> [(r.name, r.score, r.target, r.span_id, r.source)
...  for r in span_evals(span, attributes, {}, "doc")]
[('qa', 0.9, 'span', '0202020202020202', 'inline')]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from observer.collectors.common.eval_mapping import (
    EVALUATOR,
    GENAI_EVENT,
    GENAI_FIELDS,
    INLINE_NAMES,
    MAX_RESULTS_PER_SPAN,
    SESSION_ID,
    SPAN_KIND,
    Target,
    genai_result,
    inline_results,
    result_fields,
)
from observer.collectors.common.otlp_attributes import attribute_values
from observer.collectors.normalize.message_content import ContentCapture
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from observer.core import validate
from observer.core.records import MAX_EXPLANATION_CHARS, EvalRecord

_GENAI_NAMES = frozenset(GENAI_FIELDS)


def _ids(trace_id: bytes, span_id: bytes) -> tuple[str, str] | None:
    """Hex ids of a valid (trace, span) pair: 16 and 8 bytes, not all zero."""
    if len(trace_id) != 16 or len(span_id) != 8 or not any(trace_id) or not any(span_id):
        return None
    return trace_id.hex(), span_id.hex()


def carries_evals(span: Span, attributes: Mapping[str, Any]) -> bool:
    """Whether the span may carry results (cheap: set and name checks, for every span)."""
    return not INLINE_NAMES.isdisjoint(attributes) or bool(
        span.events and any(e.name == GENAI_EVENT for e in span.events))


def span_evals(span: Span, attributes: Mapping[str, Any], common: Mapping[str, Any],
               stage: str, capture: ContentCapture | None = None) -> list[EvalRecord]:
    """The evaluation records a span carries (none for most spans). ``attributes``: the
    span's attribute values, at least those of ``READ_NAMES`` (the normaliser reads them in
    its one pass); ``common``: the fields the span's other records share (tenant, service,
    model)."""
    if not carries_evals(span, attributes):
        return []
    carrier = _ids(span.trace_id, span.span_id)
    if carrier is None:
        return []  # the span's own records are refused for its ids already
    target, source = carrier, "inline"
    if str(attributes.get(SPAN_KIND, "")).lower() == EVALUATOR:
        links = [_ids(link.trace_id, link.span_id) for link in span.links]
        if len(links) != 1 or links[0] is None:
            validate.invalid(stage, "eval_target")
            return []
        target, source = links[0], "evaluator_span"
    # The trace's LLM is the target's only when the target is in the carrier's trace (a
    # judge's own trace names the judge's model, not the app's).
    shared = {**common, "model": common.get("model", "") if target[0] == carrier[0] else ""}
    session = validate.text(attributes.get(SESSION_ID))
    end = validate.count(span.end_time_unix_nano or span.start_time_unix_nano,
                         max=validate.MAX_UNIX_NANO) or 0

    found: list[tuple[Target, str, int, dict[str, Any]]] = [
        (scope, source, end, raw) for scope, raw in inline_results(attributes)]
    for event in span.events:
        if event.name == GENAI_EVENT:
            raw = genai_result(attribute_values(event.attributes, _GENAI_NAMES))
            time = validate.count(event.time_unix_nano, max=validate.MAX_UNIX_NANO) or end
            found.append(("span", "genai_event" if source == "inline" else source, time, raw))
    if len(found) > MAX_RESULTS_PER_SPAN:
        validate.invalid(stage, "evals")
        del found[MAX_RESULTS_PER_SPAN:]

    records = []
    for scope, origin, time, raw in found:
        fields = result_fields(raw, stage)
        if fields is None:
            continue
        if scope == "session" and not session:
            validate.invalid(stage, "session_id")
            continue
        explanation = fields.pop("explanation", None)
        if explanation is not None:
            fields["explanation_chars"] = min(len(explanation), validate.MAX_COUNT)
            if capture is not None and capture.cfg.capture:
                fields["explanation"] = validate.text(
                    capture.redact(explanation),
                    min(capture.cfg.max_chars, MAX_EXPLANATION_CHARS), newlines=True)
        records.append(EvalRecord(
            **shared, **fields, target=scope, source=origin, time_unix_nano=time,
            trace_id=target[0], span_id=target[1] if scope == "span" else "",
            session_id=session))
    return records
