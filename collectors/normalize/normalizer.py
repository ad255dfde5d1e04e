"""The normaliser stage: raw OTLP spans in, :class:`LLMCall` and :class:`ToolCall` records out.

It consumes ``otlp_spans`` (one ``ExportTraceServiceRequest`` per message, as the receiver or
a Collector's kafka exporter writes it), decides what each span records with
:mod:`observer.collectors.common.genai_mapping`, and writes LLM calls to ``observer.llm`` and tool calls to
``observer.tools``, keyed by segment; retrieval and rerank steps go to ``observer.retrievals``
(:mod:`observer.collectors.normalize.retrievals`), evaluation scores and feedback carried by any
span to ``observer.evals``, keyed by their target (:mod:`observer.collectors.normalize.evals`).
Records carry counts, lengths and hashes of message content
(:mod:`observer.collectors.normalize.message_content`), never the text itself unless
``normalizer.content.capture`` is on.

Every client value is checked where it enters a record (:mod:`observer.core.validate`; the
mapping table's column kinds): an invalid optional value is left out and counted in
``observer_invalid_values_total{stage="normalizer",field}``; a span whose trace or span id is
unusable gives no record, and its message goes to the dead-letter topic (``invalid_value``,
the detail naming the field) next to the records of its other spans; a message that does not
parse is dead-lettered whole (``decode_error``).

>>> from opentelemetry.proto.trace.v1.trace_pb2 import Span
>>> from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
>>> request = ExportTraceServiceRequest()
>>> span = request.resource_spans.add().scope_spans.add().spans.add(
...     trace_id=bytes([1] * 16), span_id=bytes([2] * 8), name="chat gpt-4o",
...     start_time_unix_nano=0, end_time_unix_nano=250_000_000)
>>> span.attributes.extend([
...     KeyValue(key="gen_ai.operation.name", value=AnyValue(string_value="chat")),
...     KeyValue(key="gen_ai.request.model", value=AnyValue(string_value="gpt-4o")),
...     KeyValue(key="gen_ai.usage.input_tokens", value=AnyValue(int_value=12))])
>>> [(r.model, r.input_tokens, r.latency_ms) for r in normalize_request(request)]
[('gpt-4o', 12, 250.0)]
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from prometheus_client import Counter

from observer.collectors.common.genai_mapping import (
    ATTRIBUTE_NAMES,
    LLM_FIELDS,
    TOOL_FIELDS,
    Classification,
    classify,
    lookup,
)
from observer.collectors.normalize.message_content import (
    CONTENT_PREFIXES,
    EVENTS,
    ContentCapture,
    Event,
    joined,
    measured,
    sides,
)
from observer.collectors.normalize import text_descriptors
from observer.collectors.common.retrieval_mapping import retrieval_operation
from observer.collectors.normalize.retrievals import retrieval_fields
from observer.collectors.normalize.text_descriptors import TextDescriptors
from observer.collectors.common.otlp_messages import (
    UndecodableMessage,
    parent_id,
    opened_trace_request,
    quarantine,
    span_identity_problem,
)
from observer.collectors.common import span_attributes
from observer.collectors.common.cluster import resource_cluster
from observer.collectors.common.otlp_attributes import (
    any_value, attribute_values, resource_names,
)
from observer.collectors.common.tenant_seal import TenantSeal
from observer.core import validate
from observer.core.bus import Message, Output
from observer.core.dead_letter import dead_letter
from observer.collectors.normalize.config import ContentConfig, EmbeddingsConfig
from observer.collectors.normalize.embedders.emit import EmbeddingEmitter
from observer.collectors.common.eval_mapping import READ_NAMES as EVAL_READ_NAMES
from observer.collectors.normalize.evals import carries_evals, span_evals
from observer.core.records import (
    EvalRecord, LLMCall, RetrievalRecord, ToolCall, encode, segment_key,
)
from observer.core.topics import Topics

log = logging.getLogger(__name__)

SPANS = Counter(
    "observer_normalizer_spans_total", "Spans consumed by the normaliser, by kind.", ["kind"]
)
ERRORS = Counter(
    "observer_normalizer_errors_total",
    "Messages the normaliser could not use whole and dead-lettered.",
)

DEFAULT_SEGMENT_KEYS = ("service", "model")
DEFAULT_DESCRIPTORS = TextDescriptors()
STAGE = "normalizer"


@dataclass(slots=True)
class _SpanView:
    """One span with what the mapping read from it."""

    span: Span
    service: str
    tenant: str
    cluster: str
    kind: Classification
    attributes: dict[str, Any]
    model: str
    agent: str
    problem: str | None = None
    """Why the span's ids make it unusable (it then gives no record)."""
    content: dict[str, Any] | list[KeyValue] | None = None
    """The attributes that may hold message content: their values (read in C), or the
    protobuf attributes whose names alone were checked (None: none)."""
    fields: dict[str, Any] | None = None
    """An LLM or tool span's record fields from the mapping table (None: not read)."""


def normalize_request(
    request: ExportTraceServiceRequest, capture: ContentCapture | None = None,
    descriptors: TextDescriptors | None = None,
    texts: dict[tuple[bytes, bytes], dict[str, str]] | None = None,
) -> list[LLMCall | ToolCall | RetrievalRecord | EvalRecord]:
    """The records of one export request, in span order; other spans are only counted.

    A tool span's model is its own ``gen_ai.request.model`` (or another model attribute), else
    the nearest ancestor's in this request, else that of an LLM span of the same trace in this
    request, else "". The agent is the span's own or the nearest ancestor's. LLM calls carry
    their messages' counts, lengths and hashes, and the (redacted) text when ``capture`` is
    enabled, and the text descriptors of their content under ``descriptors``. ``texts``, when
    given, gets each LLM span's content as ``{"input": ..., "output": ...}`` by (trace id, span
    id), for the embedder: the content is read once.
    """
    return _normalize(request, capture, descriptors, texts)[0]


def _normalize(
    request: ExportTraceServiceRequest, capture: ContentCapture | None,
    descriptors: TextDescriptors | None,
    texts: dict[tuple[bytes, bytes], dict[str, str]] | None,
    raw: bytes | None = None,
) -> tuple[list[LLMCall | ToolCall | RetrievalRecord | EvalRecord], list[tuple[int, str]]]:
    """:func:`normalize_request`, and ``(index, problem)`` of each span that gave no record.
    ``raw``: the bytes ``request`` was parsed from, for reading attributes in C."""
    views = list(_views(request, raw))
    by_id = {(v.span.trace_id, v.span.span_id): v for v in views}
    trace_models: dict[bytes, str] = {}
    for v in views:
        if v.kind.kind == "llm" and v.model:
            trace_models.setdefault(v.span.trace_id, v.model)

    kinds = dict.fromkeys(_SPANS_BY_KIND, 0)
    for v in views:
        kinds[v.kind.kind] += 1
    for kind, n in kinds.items():  # one increment per kind and request, not per span
        if n:
            _SPANS_BY_KIND[kind].inc(n)

    records: list[LLMCall | ToolCall | RetrievalRecord | EvalRecord] = []
    problems: list[tuple[int, str]] = []
    for index, v in enumerate(views):
        if v.problem:
            problems.append((index, v.problem))
            continue
        if v.kind.kind == "llm":
            records.append(
                _llm_call(v, agent=v.agent or _inherited(v, by_id, "agent"), capture=capture,
                          descriptors=descriptors, texts=texts)
            )
        elif v.kind.kind == "tool":
            model = (
                v.model or _inherited(v, by_id, "model") or trace_models.get(v.span.trace_id, "")
            )
            records.append(_tool_call(v, model, agent=v.agent or _inherited(v, by_id, "agent")))
        elif (operation := retrieval_operation(
                v.attributes, (e.name for e in v.span.events))) is not None:
            # The app's LLM, not the span's own model (an embedder's, a reranker's).
            model = trace_models.get(v.span.trace_id) or _inherited(v, by_id, "model")
            records.append(RetrievalRecord(**_common(v), model=model,
                                           **retrieval_fields(v.span, operation, STAGE)))
        # Evaluation scores and feedback, on any span (collectors/normalize/evals.py).
        if carries_evals(v.span, v.attributes):
            records += span_evals(v.span, v.attributes, {
                "tenant": v.tenant, "cluster": v.cluster, "service": v.service,
                "model": trace_models.get(v.span.trace_id, "")}, STAGE, capture)
    return records, problems


# The attributes read in the one pass over a span's: the mapping's and the evaluations'.
_READ_NAMES = ATTRIBUTE_NAMES | EVAL_READ_NAMES

# Fields a span may take from its ancestors when it does not carry them itself.
_INHERITABLE = {"model": LLM_FIELDS["model"], "agent": LLM_FIELDS["agent"]}

# Each record kind's table (the tables' model and agent are _INHERITABLE's sources).
_FIELDS_BY_KIND = {"llm": LLM_FIELDS, "tool": TOOL_FIELDS}
assert all(table[f] is source for table in _FIELDS_BY_KIND.values()
           for f, source in _INHERITABLE.items())

# The labelled counters, looked up once (a labels() call costs more than the increment).
_SPANS_BY_KIND = {kind: SPANS.labels(kind) for kind in ("llm", "tool", "other")}


def _views(request: ExportTraceServiceRequest, raw: bytes | None = None) -> Iterator[_SpanView]:
    """Each span with what the mapping reads; its attributes read from ``raw``, the bytes
    ``request`` was parsed from, in C when given (:mod:`~observer.collectors.common.span_attributes`)."""
    scanned = iter(span_attributes.scan(raw, request, _READ_NAMES, CONTENT_PREFIXES) or ()) \
        if raw else iter(())
    for resource_spans in request.resource_spans:
        service, tenant = resource_names(resource_spans.resource, STAGE)
        cluster = resource_cluster(resource_spans.resource, STAGE)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                read = next(scanned, None)
                content: dict[str, Any] | list[KeyValue] | None
                if read is not None:
                    attributes, content = read
                else:
                    # One pass over the span's attributes (each kv.key read once: upb makes
                    # a new str per read): the mapping's values, and where content may be.
                    attributes, content = {}, []
                    for kv in span.attributes:
                        key = kv.key
                        if key in _READ_NAMES:
                            attributes[key] = any_value(kv.value)
                        if key.startswith(CONTENT_PREFIXES):
                            content.append(kv)
                kind = classify(span.name, attributes)
                problem = span_identity_problem(span)
                table = _FIELDS_BY_KIND.get(kind.kind)
                # An LLM or tool span's record fields, read (and invalid values counted) once,
                # here: they hold its model and agent too. Other spans: only those two names,
                # not counted (they give no record of their own).
                fields = lookup(attributes, table, STAGE) if table and problem is None else None
                named = fields if fields is not None else lookup(attributes, _INHERITABLE)
                yield _SpanView(
                    span=span,
                    service=service,
                    tenant=tenant,
                    cluster=cluster,
                    kind=kind,
                    attributes=attributes,
                    model=named.get("model", ""),
                    agent=named.get("agent", ""),
                    problem=problem,
                    content=content,
                    fields=fields,
                )


def _inherited(view: _SpanView, by_id: dict[tuple[bytes, bytes], _SpanView], field: str) -> str:
    """The nearest ancestor's non-empty ``model`` or ``agent``, within this request."""
    seen: set[bytes] = set()
    parent = view.span.parent_span_id
    while parent and parent not in seen:  # ``seen`` guards against malformed parent cycles
        seen.add(parent)
        ancestor = by_id.get((view.span.trace_id, parent))
        if ancestor is None:
            return ""
        value: str = getattr(ancestor, field)
        if value:
            return value
        parent = ancestor.span.parent_span_id
    return ""


def span_times(span: Span, stage: str) -> tuple[int, float | None]:
    """``(start, latency_ms)``: start in int64 Unix ns (0 when past int64), and the duration
    in milliseconds; None when the end is before the start, unset, or past int64 (a
    clock-skewed or unfinished span has no meaningful duration), counted as invalid.

    >>> span_times(Span(start_time_unix_nano=10, end_time_unix_nano=2_000_010), "doc")
    (10, 2.0)
    >>> span_times(Span(start_time_unix_nano=10, end_time_unix_nano=5), "doc")
    (10, None)
    """
    start = validate.count(span.start_time_unix_nano, max=validate.MAX_UNIX_NANO)
    end = validate.count(span.end_time_unix_nano, max=validate.MAX_UNIX_NANO)
    if start is None:
        validate.invalid(stage, "start_time_unix_nano")
    latency = None
    if start is not None and end is not None and end >= start:
        latency = validate.finite((end - start) / 1e6, max=validate.MAX_DURATION_MS)
    if latency is None:
        validate.invalid(stage, "latency_ms")
    return start or 0, latency


def _common(view: _SpanView) -> dict[str, Any]:
    span = view.span
    start, latency = span_times(span, STAGE)
    return {
        "service": view.service,
        "tenant": view.tenant,
        "cluster": view.cluster,
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_span_id": parent_id(span, STAGE).hex(),
        "start_time_unix_nano": start,
        "latency_ms": latency,
    }


def _content_attributes(view: _SpanView) -> dict[str, Any]:
    """The span's attributes that may hold message content (their values read only now)."""
    content = view.content
    if isinstance(content, dict) or content is None:
        return content or {}
    return {kv.key: any_value(kv.value) for kv in content}


def _content_events(span: Span) -> list[Event]:
    """The span's older GenAI content events (message_content.EVENTS), with their attributes."""
    return [
        (event.name, attribute_values(event.attributes, frozenset(kv.key for kv in event.attributes)))
        for event in span.events
        if event.name in EVENTS
    ]


def _llm_call(view: _SpanView, agent: str, capture: ContentCapture | None = None,
              descriptors: TextDescriptors | None = None,
              texts: dict[tuple[bytes, bytes], dict[str, str]] | None = None) -> LLMCall:
    fields = (dict(view.fields) if view.fields is not None
              else lookup(view.attributes, LLM_FIELDS, STAGE))
    content = _content_attributes(view)
    events = _content_events(view.span) if view.span.events else []
    found = sides(content, events) if content or events else {}
    if found:
        fields.update(measured(found).fields())
        side_texts = joined(found) if descriptors is not None or texts is not None else {}
        if descriptors is not None:  # computed with or without capture: numbers, not content
            fields.update(descriptors.fields(side_texts))
        if capture is not None:
            fields.update(capture.stored_sides(found))
        if texts is not None:  # for the embedder (embedders/emit.py)
            texts[view.span.trace_id, view.span.span_id] = side_texts
    template = fields.pop("prompt_template", "")
    fields.setdefault("prompt_id", template)
    reasons: list[str] = fields.get("finish_reasons", [])
    return LLMCall(
        **_common(view),
        **{**fields, "model": view.model, "agent": agent},
        operation=view.kind.operation,
        finish_reason=reasons[0] if reasons else "",
        error=view.span.status.code == Status.STATUS_CODE_ERROR or "error_type" in fields,
    )


def _tool_call(view: _SpanView, model: str, agent: str) -> ToolCall:
    fields = (dict(view.fields) if view.fields is not None
              else lookup(view.attributes, TOOL_FIELDS, STAGE))
    failed = view.span.status.code == Status.STATUS_CODE_ERROR or "error_type" in fields
    return ToolCall(
        **_common(view),
        **{
            **fields,
            # Untagged tools (an OpenInference TOOL span without tool.name) go by span name.
            "tool_name": fields.get("tool_name") or validate.text(view.span.name) or "unknown",
            "model": model,
            "agent": agent,
        },
        status="error" if failed else "ok",
    )


class Normalizer:
    """The normaliser as a :class:`observer.core.bus.Processor` (run it with ``StageRunner``).

    A message that cannot be used whole (it does not parse, a span has unusable ids, a value
    breaks a record's rule) goes to the dead-letter topic, counted in
    ``observer_normalizer_errors_total``, and the batch goes on: replaying it would fail the
    same way, so it must not stop the stage.
    """

    name = "normalizer"

    def __init__(
        self,
        topics: Topics,
        *,
        segment_keys: Sequence[str] = DEFAULT_SEGMENT_KEYS,
        content: ContentConfig | None = None,
        seal: TenantSeal | None = None,
        embeddings: EmbeddingsConfig | None = None,
        descriptors: TextDescriptors | None = DEFAULT_DESCRIPTORS,
    ) -> None:
        self.topics = topics
        self.segment_keys = list(segment_keys)
        # A message's tenant counts only under a receiver's seal (collectors.common.tenant_seal).
        self.seal = seal or TenantSeal(None)
        # Off by default; a bad redaction hook fails here, at start, naming the hook.
        self.capture = ContentCapture(content) if content is not None and content.capture else None
        # Text descriptors of content on every LLM record (None: off, normalizer.descriptors).
        self.descriptors = descriptors
        # Prompt/response vectors to observer.embeddings, one embedder call per batch; a
        # fastembed model that does not load fails here, at start.
        self.embeddings = (
            EmbeddingEmitter(embeddings, topics.embeddings, self.segment_keys, self.capture)
            if embeddings is not None and embeddings.enabled else None
        )
        if text_descriptors.native is None and (descriptors or self.embeddings):
            log.warning(
                "normalizer: collectors.normalize._text_scan (C) is not built, so text "
                "descriptors and the hashing embedder run in Python, several times slower; "
                "reinstall observer where a C compiler is available")

    def process(self, messages: list[Message]) -> list[Output]:
        outputs: list[Output] = []
        if self.embeddings is not None:
            self.embeddings.clear()  # a batch that failed midway is processed again whole
        for message in messages:
            try:
                outputs += self._message(message)
            except (UndecodableMessage, *validate.REJECTED) as e:
                outputs.append(quarantine(self.topics.dead_letter, self.name, message, e, ERRORS))
        if self.embeddings is not None:
            outputs += self.embeddings.flush()
        return outputs

    def _message(self, message: Message) -> list[Output]:
        """One message's records, and its dead letter when some of its spans gave none."""
        # Opened (decrypted) here; an untrusted message's tenant is dropped.
        request, raw = opened_trace_request(message, self.seal, self.name)
        texts: dict[tuple[bytes, bytes], dict[str, str]] | None = (
            {} if self.embeddings is not None else None)
        records, problems = _normalize(request, self.capture, self.descriptors, texts, raw)
        outputs = [self._output(r) for r in records]
        if self.embeddings is not None:
            self.embeddings.add(request, records, texts)
        if problems:
            index, first = problems[0]
            field = first.split(" ", 1)[0]
            for _ in problems:
                validate.invalid(self.name, field)
            ERRORS.inc()
            detail = (f"{len(problems)} span(s) gave no record, the others were normalised; "
                      f"span {index}: {first}")
            outputs.append(dead_letter(self.topics.dead_letter, self.name, message,
                                       "invalid_value", detail))
        return outputs

    def tick(self) -> list[Output]:
        return []

    def _output(self, record: LLMCall | ToolCall | RetrievalRecord | EvalRecord) -> Output:
        if isinstance(record, EvalRecord):  # keyed by its target, for a later join
            return Output(self.topics.evals, record.kafka_key(), encode(record))
        topic = (self.topics.llm if isinstance(record, LLMCall)
                 else self.topics.retrievals if isinstance(record, RetrievalRecord)
                 else self.topics.tools)
        return Output(topic, segment_key(record.segment_of(self.segment_keys)), encode(record))
