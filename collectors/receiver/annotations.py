"""The REST intake of post-hoc scores and user feedback: Phoenix's annotation API, on the
OTLP/HTTP port.

``POST /v1/span_annotations`` takes Arize Phoenix's body as it is, so Phoenix's own client
(``phoenix.client.Client(base_url="http://observer:4318").spans.log_span_annotations``) or
an app already sending thumbs to Phoenix can send here unchanged::

    {"data": [{"span_id": "0123456789abcdef", "name": "user_feedback",
               "annotator_kind": "HUMAN",
               "result": {"label": "thumbs_up", "score": 1, "explanation": "..."},
               "identifier": "", "metadata": {}}]}

``/v1/trace_annotations`` (``trace_id``) and ``/v1/session_annotations`` (``session_id``)
take the same body for wider targets. Each item becomes one ``observer.evals/v1`` record
(source ``rest``) on ``observer.evals``, keyed by its target id; thumbs sent as a label only
(``user_feedback``: ``thumbs_up``/``thumbs_down``) get the score 1/0. The explanation's length
is recorded, never its text; ``metadata`` is not kept; items named ``note`` are ignored, as
Phoenix does on this route. Unlike Phoenix, an item must carry a label, a score or an
explanation, and span ids are not looked up (the target may not have arrived yet).

The record's cluster is the collector's ``receiver.cluster``. The routes sit behind the
receiver's token check, tenancy (the record's tenant is the token's)
and in-flight budget. The answer is Phoenix's: 200 ``{"data": []}``, or with ``?sync=true``
``{"data": [{"id": ...}]}`` (one id per item, stable for a given target, name and
identifier); 422 names the first bad item and field, 415 a body that is not JSON; 401, 413,
429 and 503 as on the OTLP routes, each with a JSON ``google.rpc.Status``.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

from fastapi import Request, Response
from google.rpc import code_pb2
from observer.collectors.common.eval_mapping import Target, result_fields
from observer.collectors.receiver.budget import Slot
from observer.collectors.receiver.intake import Intake, Refusal
from observer.collectors.receiver.otlp_http import Route, read_admitted
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from observer.core.bus import Output
from observer.core.records import MAX_LABEL_CHARS, MAX_SCORE, EvalRecord, encode

STAGE = "receiver"
MAX_ANNOTATIONS = 10_000
"""Items one request may carry (the body limit, receiver.max_body_bytes, applies too)."""

ANNOTATIONS = Counter(
    "observer_eval_annotations_total",
    "Annotations (post-hoc scores, user feedback) accepted by the REST intake and written to "
    "observer.evals, by target (span, trace, session).",
    ["target"],
)


class _Result(BaseModel):
    model_config = ConfigDict(strict=True)
    label: str | None = Field(None, max_length=MAX_LABEL_CHARS)
    score: float | None = Field(None, ge=-MAX_SCORE, le=MAX_SCORE, allow_inf_nan=False)
    explanation: str | None = None


class _Annotation(BaseModel):
    """One item of Phoenix's ``SpanAnnotationData`` (and its trace and session siblings);
    unknown keys are ignored, as Phoenix does."""

    model_config = ConfigDict(strict=True)
    name: str = Field(min_length=1, max_length=256)
    annotator_kind: Literal["LLM", "CODE", "HUMAN"]
    result: _Result | None = None
    metadata: dict[str, Any] | None = None
    identifier: str | None = Field(None, max_length=256)
    span_id: str | None = Field(None, pattern=r"^[0-9a-fA-F]{16}$")
    trace_id: str | None = Field(None, pattern=r"^[0-9a-fA-F]{32}$")
    session_id: str | None = Field(None, min_length=1, max_length=256)


class _Body(BaseModel):
    model_config = ConfigDict(strict=True)
    data: list[_Annotation] = Field(max_length=MAX_ANNOTATIONS)


ROUTES: dict[str, tuple[Target, str]] = {
    "/v1/span_annotations": ("span", "span_id"),
    "/v1/trace_annotations": ("trace", "trace_id"),
    "/v1/session_annotations": ("session", "session_id"),
}
"""Path -> the target kind its items annotate and the item field naming it."""


def unprocessable(message: str) -> Refusal:
    return Refusal(422, code_pb2.INVALID_ARGUMENT, message, bad_request=True)


def _problem(error: ValidationError) -> str:
    first = error.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    return f"{where}: {first['msg']} ({error.error_count()} problem(s) in all)"


def parse(body: bytes, target: Target, id_field: str) -> list[dict[str, Any]]:
    """The record fields of each item of a Phoenix annotations body, or a 422
    :class:`Refusal` naming the first bad item and field.

    >>> parse(b'{"data": [{"span_id": "AB00000000000001", "name": "user_feedback",'
    ...       b' "annotator_kind": "HUMAN", "result": {"label": "thumbs_down"}}]}',
    ...       "span", "span_id")[0]["score"]
    0.0
    """
    try:
        items = _Body.model_validate_json(body).data
    except ValidationError as e:
        raise unprocessable(f"not a Phoenix annotations body: {_problem(e)}") from None
    out = []
    for index, item in enumerate(items):
        if item.name == "note":  # Phoenix ignores notes here too (they have their own route)
            continue
        target_id = getattr(item, id_field)
        if target_id is None:
            raise unprocessable(f"data.{index}.{id_field}: required for a {target} annotation")
        result = item.result.model_dump() if item.result is not None else {}
        fields = result_fields({**result, "name": item.name,
                                "annotator_kind": item.annotator_kind,
                                "identifier": item.identifier or None}, STAGE)
        if fields is None:
            raise unprocessable(f"data.{index}.result: give a label, a score or an explanation")
        explanation = fields.pop("explanation", None)
        if explanation is not None:
            fields["explanation_chars"] = len(explanation)
        fields[id_field] = target_id.lower() if id_field != "session_id" else target_id
        out.append(fields)
    return out


def _answer_id(tenant: str, record: EvalRecord) -> str:
    """Stable for a target, name and identifier (Phoenix's upsert key); else unique."""
    if not record.identifier:
        return uuid.uuid4().hex
    key = f"{tenant}\0{record.target}\0{record.kafka_key()}\0{record.name}\0{record.identifier}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def annotations_route(target: Target, id_field: str) -> Callable[[Intake], Route]:
    """A handler factory for :func:`observer.collectors.receiver.otlp_http.create_app`'s
    ``extra_routes``."""

    def factory(intake: Intake) -> Route:
        topic = intake.topics.evals

        async def accept(request: Request, tenant: str, slot: Slot) -> Response:
            media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media_type != "application/json":
                raise Refusal(415, code_pb2.INVALID_ARGUMENT,
                              f"unsupported Content-Type {media_type!r}: send application/json")
            body = await read_admitted(request, intake, slot, media_type)
            now = time.time_ns()
            # The collector's own cluster: a REST client names none (collectors.common.cluster).
            records = [EvalRecord(tenant=tenant, cluster=intake.cluster.default, target=target,
                                  source="rest", time_unix_nano=now, **fields)
                       for fields in parse(body, target, id_field)]
            outputs = [Output(topic, r.kafka_key(), encode(r)) for r in records]
            if outputs:
                await intake.write_async(outputs, "annotations", "one annotation")
            ANNOTATIONS.labels(target).inc(len(records))
            sync = request.query_params.get("sync", "").lower() == "true"
            data = [{"id": _answer_id(tenant, r)} for r in records] if sync else []
            return Response(json.dumps({"data": data}), 200, media_type="application/json")

        return accept

    return factory


ANNOTATION_ROUTES: dict[str, Callable[[Intake], Route]] = {
    path: annotations_route(target, id_field) for path, (target, id_field) in ROUTES.items()
}
"""Every annotation route, for ``extra_routes``."""
