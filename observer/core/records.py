"""Record schemas (v1) of the ``observer.*`` topics: defined once, here.

Every record is a JSON object with a ``schema`` field naming its type and version. Stages
encode with :func:`encode` and decode with :func:`decode`, which picks the model from
``schema`` and rejects anything unknown.

>>> rec = LLMCall(service="shop", model="gpt-4o", trace_id="ab", span_id="cd", latency_ms=12.5)
>>> decode(encode(rec)) == rec
True
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_serializer,
    field_validator,
)

from observer.core import vectors
from observer.core.validate import MAX_COUNT, MAX_DURATION_MS, MAX_UNIX_NANO

SEGMENT_SEPARATOR = "|"
MAX_SCORE = 1e12
"""Bound of a retrieval score's magnitude (similarities, logits, negated distances)."""
MAX_TOPK_IDS = 20
"""Document ids a retrieval record keeps, best first."""


# Field constraints of the records built from client values (observer.core.validate has the
# bounds): a record produced straight onto a topic with a negative count, a NaN or a
# timestamp past int64 fails to decode instead of reaching a metric or a statistic.
def Count(default: Any = None, **kw: Any) -> Any:  # noqa: N802 (reads as a type)
    """A count field: ``0 <= n <= MAX_COUNT``."""
    return Field(default, ge=0, le=MAX_COUNT, **kw)


def UnixNano(default: Any = 0, **kw: Any) -> Any:  # noqa: N802
    """A timestamp field: int64 Unix nanoseconds, ``>= 0``."""
    return Field(default, ge=0, le=MAX_UNIX_NANO, **kw)


def Millis(default: Any = 0.0, **kw: Any) -> Any:  # noqa: N802
    """A duration field: finite milliseconds, ``0 <= ms <= MAX_DURATION_MS``."""
    return Field(default, ge=0, le=MAX_DURATION_MS, allow_inf_nan=False, **kw)


def Share(default: Any = None, **kw: Any) -> Any:  # noqa: N802
    """A share: finite, ``0 <= x <= 1``."""
    return Field(default, ge=0, le=1, allow_inf_nan=False, **kw)


SCRIPT_DESCRIPTION = (
    "Dominant Unicode script of the side's letters (latin, cyrillic, han, kana...), mixed, "
    "or none (no letters)."
)


def Finite(default: Any = None, **kw: Any) -> Any:  # noqa: N802
    """Any finite float (no NaN, no infinity)."""
    return Field(default, allow_inf_nan=False, **kw)


def ClusterName() -> Any:  # noqa: N802 (a Field factory, like Count and Millis)
    """The cluster a record came from (``k8s.cluster.name``, else ``k8s.cluster.uid``, else
    the collector's configured ``observer.cluster``); "" when none is known."""
    return Field("", max_length=253, description="The Kubernetes cluster the record came from "
                 "(k8s.cluster.name, else k8s.cluster.uid, else the collector's configured "
                 "cluster); \"\" when unknown.")


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_id: ClassVar[str]

    def segment_of(self, keys: list[str]) -> dict[str, str]:
        """The segment this record belongs to, from the given record fields."""
        return {k: str(getattr(self, k, "") or "") for k in keys}


def segment_key(segment: dict[str, str]) -> str:
    """Kafka key of a segment: values joined in key order.

    >>> segment_key({"service": "shop", "model": "gpt-4o"})
    'shop|gpt-4o'
    """
    return SEGMENT_SEPARATOR.join(segment.values())


class LLMCall(Record):
    """One LLM call (chat, completion, embeddings...), normalised from a span."""

    schema_id: ClassVar[str] = "observer.llm/v1"
    schema_: Literal["observer.llm/v1"] = Field("observer.llm/v1", alias="schema")
    tenant: str = ""
    cluster: str = ClusterName()
    service: str
    model: str
    provider: str = ""
    operation: str = "chat"
    trace_id: str
    span_id: str
    parent_span_id: str = ""
    start_time_unix_nano: int = UnixNano()
    latency_ms: float | None = Millis(
        description="None when the span's end is before its start (or unset)."
    )
    input_tokens: int | None = Count()
    output_tokens: int | None = Count()
    cache_read_tokens: int | None = Count()
    reasoning_tokens: int | None = Count()
    finish_reason: str = ""
    finish_reasons: list[str] = Field(default_factory=list)
    time_to_first_token_ms: float | None = Millis(None)
    error: bool = False
    error_type: str = ""
    agent: str = ""
    conversation_id: str = ""
    prompt_version: str = ""
    prompt_id: str = Field(
        "", description="Prompt template key, or tmpl:<hash> of the template text."
    )
    # Message content, measured always (counts, lengths, hashes); the text itself only when
    # normalizer.content.capture is on, redacted and capped.
    input_messages: int | None = Count()
    input_chars: int | None = Count()
    input_hash: str = Field("", description="sha256 (16 hex) of the input messages.")
    output_messages: int | None = Count()
    output_chars: int | None = Count()
    output_hash: str = Field("", description="sha256 (16 hex) of the output messages.")
    # Text descriptors of each side's content (collectors/normalize/text_descriptors.py),
    # whether or not content is captured; None when the side carries no content.
    input_words: int | None = Count()
    input_sentences: int | None = Count()
    input_non_letter_share: float | None = Share()
    input_refusal: bool | None = None
    input_json_valid: bool | None = None
    input_links: int | None = Count()
    input_script: str | None = Field(None, max_length=32, description=SCRIPT_DESCRIPTION)
    output_words: int | None = Count()
    output_sentences: int | None = Count()
    output_non_letter_share: float | None = Share()
    output_refusal: bool | None = None
    output_json_valid: bool | None = None
    output_links: int | None = Count()
    output_script: str | None = Field(None, max_length=32, description=SCRIPT_DESCRIPTION)
    input_content: list[dict[str, str]] | None = Field(
        None, description="[{role, content}] when content capture is enabled."
    )
    output_content: list[dict[str, str]] | None = Field(
        None, description="[{role, content}] when content capture is enabled."
    )
    content_truncated: bool = False


class EmbeddingRecord(Record):
    """The prompt and response embeddings of one LLM call (or one embedding span).

    Computed by the normaliser's embedder from message content (the content itself is not
    kept), or taken as sent from vectors that arrive in traces. Vectors from different
    embedders or dimensions are never compared: ``embedder`` is a segment key of this record
    type, so a new embedding model starts a new stream with its own reference.
    """

    schema_id: ClassVar[str] = "observer.embeddings/v1"
    schema_: Literal["observer.embeddings/v1"] = Field("observer.embeddings/v1", alias="schema")
    tenant: str = ""
    cluster: str = ClusterName()
    service: str
    model: str
    prompt_version: str = ""
    trace_id: str
    span_id: str
    start_time_unix_nano: int = UnixNano()
    embedder: str = Field(
        description="What made the vectors: the configured embedder's id (hashing-ngram-v1/256, "
        "fastembed:<name>/<dim>) or trace:<embedding model>/<dim> for vectors sent in traces."
    )
    dimension: int = Field(ge=1, le=65536, description="Length of every vector of this record.")
    source: Literal["content", "trace"] = Field(
        description="content: embedded from message content; trace: vectors sent in the trace."
    )
    prompt_embedding: list[float] | None = Field(
        None, description="The prompt (input messages) embedding; None when the span had none. "
        "In JSON: base64 of little-endian float32 (observer.core.vectors); a list of numbers "
        "is accepted too."
    )
    response_embedding: list[float] | None = Field(
        None, description="The response (output messages) embedding; None when none."
    )
    prompt_snippet: str | None = Field(
        None, description="The start of the prompt text, only under normalizer.content.capture "
        "(redacted like captured content): shown as evidence of a drifted window.",
    )
    response_snippet: str | None = Field(
        None, description="The start of the response text, only under content capture.",
    )

    @field_validator("prompt_embedding", "response_embedding", mode="wrap")
    @classmethod
    def _vector(cls, v: Any, handler: ValidatorFunctionWrapHandler) -> list[float] | None:
        # On the topic a vector is base64 of float32 (observer.core.vectors), decoded and
        # checked there as one array; its list needs no second validation. A list sent as
        # such is validated, then checked in one vectorised pass (a float per dimension in
        # Python cost more than the rest of the record's decode).
        if isinstance(v, str):
            return vectors.from_base64(v)
        v = handler(v)
        if v is not None and not vectors.finite(v):
            raise ValueError("embedding values must be finite")
        return v  # type: ignore[no-any-return]

    @field_serializer("prompt_embedding", "response_embedding", when_used="json")
    def _to_base64(self, v: Any) -> str | None:
        return None if v is None else vectors.to_base64(v)


class ToolCall(Record):
    """One tool execution, normalised from an ``execute_tool`` span."""

    schema_id: ClassVar[str] = "observer.tools/v1"
    schema_: Literal["observer.tools/v1"] = Field("observer.tools/v1", alias="schema")
    tenant: str = ""
    cluster: str = ClusterName()
    service: str
    model: str = ""
    agent: str = ""
    tool_name: str
    tool_call_id: str = ""
    tool_type: str = ""
    trace_id: str
    span_id: str
    parent_span_id: str = ""
    start_time_unix_nano: int = UnixNano()
    latency_ms: float | None = Millis(
        description="None when the span's end is before its start (or unset)."
    )
    status: Literal["ok", "error"] = "ok"
    error_type: str = ""


class RetrievalRecord(Record):
    """One retrieval or rerank step of a RAG app, normalised from a span (``observer.retrievals``).

    Carries the scores' statistics and document ids, never the query or the documents' text:
    the query is kept as its hash. ``model`` is the app's LLM when the trace names one.
    """

    schema_id: ClassVar[str] = "observer.retrievals/v1"
    schema_: Literal["observer.retrievals/v1"] = Field("observer.retrievals/v1", alias="schema")
    tenant: str = ""
    cluster: str = ClusterName()
    service: str
    model: str = Field("", description="The app's LLM (an LLM call of the same trace), or \"\".")
    trace_id: str
    span_id: str
    parent_span_id: str = ""
    start_time_unix_nano: int = UnixNano()
    latency_ms: float | None = Millis(
        description="None when the span's end is before its start (or unset)."
    )
    operation: Literal["retrieve", "rerank"] = Field(
        "retrieve", description="retrieve: documents fetched for a query; rerank: reordered."
    )
    data_source: str = Field(
        "", max_length=256, description="What was searched: gen_ai.data_source.id, the vector "
        "store (db.system), or the retriever's span name; for a rerank, the reranker model.",
    )
    query_hash: str = Field(
        "", max_length=16, description="sha256 (16 hex) of the query text; \"\" when unknown."
    )
    k: int = Count(0, description="Documents returned (listed on the span).")
    score_max: float | None = Finite(
        None, ge=-MAX_SCORE, le=MAX_SCORE, description="Highest document score (higher is "
        "better; a distance d is recorded as the score -d). None: no document had a score.",
    )
    score_mean: float | None = Finite(None, ge=-MAX_SCORE, le=MAX_SCORE)
    score_min: float | None = Finite(None, ge=-MAX_SCORE, le=MAX_SCORE)
    score_margin: float | None = Finite(
        None, ge=0, le=2 * MAX_SCORE, description="Top score minus the next (None: under two "
        "scores); a small margin is an ambiguous retrieval.",
    )
    top1_document_id: str = Field("", max_length=256, description="Best-scored document's id.")
    topk_document_ids: list[str] = Field(
        default_factory=list, max_length=MAX_TOPK_IDS,
        description=f"Ids of the best-scored documents, best first (at most {MAX_TOPK_IDS}).",
    )

    @field_validator("topk_document_ids")
    @classmethod
    def _short_ids(cls, v: list[str]) -> list[str]:
        if any(len(i) > 256 for i in v):
            raise ValueError("document ids are at most 256 characters")
        return v


MAX_LABEL_CHARS = 128
"""An evaluation's label: a low-cardinality category (OpenInference), capped."""
MAX_EXPLANATION_CHARS = 4096
"""Characters of an evaluation's explanation kept under ``normalizer.content.capture``."""
_TRACE_ID = r"^([0-9a-f]{32})?$"
_SPAN_ID = r"^([0-9a-f]{16})?$"


class EvalRecord(Record):
    """One evaluation score or piece of user feedback about a span, a trace or a session
    (``observer.evals``), from a trace (inline, an EVALUATOR span, a GenAI event) or the REST
    intake (Phoenix's ``span_annotations`` body).

    The target's ids are kept as known so that a later join can find its segment: the
    record is keyed by ``trace_id`` when known, else ``span_id``, else ``session_id``. The
    explanation's text is kept only under ``normalizer.content.capture``; its length always.
    """

    schema_id: ClassVar[str] = "observer.evals/v1"
    schema_: Literal["observer.evals/v1"] = Field("observer.evals/v1", alias="schema")
    tenant: str = ""
    cluster: str = ClusterName()
    service: str = Field("", description="The carrying span's service; \"\" from the REST "
                         "intake (a join fills it in).")
    model: str = Field("", description="The trace's LLM when the carrying request names one.")
    name: str = Field(min_length=1, max_length=256, description="What was judged "
                      "(hallucination, faithfulness, user_feedback...).")
    score: float | None = Finite(None, ge=-MAX_SCORE, le=MAX_SCORE, description="The numeric "
                                 "result; its range and direction depend on the evaluator.")
    label: str | None = Field(None, max_length=MAX_LABEL_CHARS, description="The categorical "
                              "result (thumbs_up, hallucinated...).")
    explanation_chars: int | None = Count(description="Length of the explanation; None: none.")
    explanation: str | None = Field(
        None, max_length=MAX_EXPLANATION_CHARS,
        description="The explanation, redacted, only under normalizer.content.capture.")
    annotator_kind: Literal["llm", "code", "human", "other"] = Field(
        "other", description="Who judged: llm, code, human; other when unnamed or custom.")
    target: Literal["trace", "span", "session"] = Field(description="What was judged.")
    trace_id: str = Field("", pattern=_TRACE_ID, description="The target's trace (for a "
                          "session target: the trace that carried it); \"\" when unknown.")
    span_id: str = Field("", pattern=_SPAN_ID, description="The judged span (span targets).")
    session_id: str = Field("", max_length=256, description="The session (session.id) when "
                            "known; the target of session evaluations.")
    response_id: str = Field("", max_length=256, description="gen_ai.response.id of a GenAI "
                             "evaluation event.")
    source: Literal["inline", "evaluator_span", "genai_event", "rest"] = Field(
        description="inline: evaluations/annotations attributes on the judged span or trace; "
        "evaluator_span: a carrier span linked to its target; genai_event: a "
        "gen_ai.evaluation.result event; rest: the span_annotations intake.")
    identifier: str = Field("", max_length=256, description="The producer's id for results of "
                            "the same name and target (Phoenix's upsert key); \"\" if none.")
    time_unix_nano: int = UnixNano(description="When it was given: the carrying span's end, "
                                   "the event's time, or the REST intake's receipt.")
    join: Literal["carried", "joined", "unjoined"] = Field(
        "carried", description="How its segment is known (observer.evals-joined): carried by "
        "its own span, joined from its target's, or unjoined (no segment; not scored).")

    def kafka_key(self) -> str:
        """The key a join finds the target by: trace id, else span id, else session id.

        >>> EvalRecord(name="x", target="span", span_id="ab" * 8, source="rest").kafka_key()
        'abababababababab'
        """
        return self.trace_id or self.span_id or self.session_id


class ToolStep(BaseModel):
    """One tool call of a path, in order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    status: Literal["ok", "error"] = "ok"
    error_type: str = ""


class PathRecord(Record):
    """One finished trace: its agent loop, tool sequence and prompt path (``observer.paths``)."""

    schema_id: ClassVar[str] = "observer.paths/v1"
    schema_: Literal["observer.paths/v1"] = Field("observer.paths/v1", alias="schema")
    tenant: str = ""
    cluster: str = ClusterName()
    service: str
    model: str = Field("", description="Model of the trace's first LLM call.")
    agent: str = Field("", description="The outermost agent named in the trace.")
    trace_id: str
    root_span_id: str = ""
    root_name: str = ""
    start_time_unix_nano: int = UnixNano()
    duration_ms: float = Millis()
    span_count: int = Count(0)
    llm_calls: int = Count(0)
    tool_calls: int = Count(0)
    tool_errors: int = Count(0)
    loop_iterations: int = Count(0, description="Chat/completion calls: one per loop turn.")
    loop_bound_exceeded: bool = False
    input_tokens: int = Count(0, description="Sum over the LLM calls (capped at MAX_COUNT).")
    output_tokens: int = Count(0, description="Sum over the LLM calls (capped at MAX_COUNT).")
    llm_latency_ms: float = Finite(0.0, ge=0)
    tool_latency_ms: float = Finite(0.0, ge=0)
    error: bool = False
    models: list[str] = Field(default_factory=list)
    tool_sequence: list[ToolStep] = Field(default_factory=list)
    prompt_path: list[str] = Field(
        default_factory=list, description="Ordered steps: llm[:prompt@version], tool:<name>, "
        "retrieve:<source>, rerank:<model>."
    )
    path_signature: str = Field("", description="sha256 (16 hex) of prompt_path.")
    closed_by: Literal["root", "timeout", "evicted"] = "root"


class Prediction(Record):
    """One classic-model prediction from KServe's inference logger (``observer.predictions``)."""

    schema_id: ClassVar[str] = "observer.predictions/v1"
    schema_: Literal["observer.predictions/v1"] = Field(
        "observer.predictions/v1", alias="schema"
    )
    tenant: str = ""
    cluster: str = ClusterName()
    service: str = Field(description="InferenceService name.")
    model: str
    model_version: str = ""
    namespace: str = ""
    component: str = ""
    endpoint: str = ""
    request_id: str
    protocol: Literal["v1", "v2", "unknown"] = Field(
        description="unknown: neither body was a v1/v2 payload (see payload_error)."
    )
    instances: int = Count(0)
    inputs: dict[str, list[Any]] = Field(
        default_factory=dict, description="Input features as columns (one value per instance)."
    )
    outputs: dict[str, list[Any]] = Field(
        default_factory=dict, description="Outputs as columns (one value per instance)."
    )
    paired: bool = Field(True, description="False when only the request or the response came.")
    time_unix_nano: int = UnixNano()
    latency_ms: float | None = Millis(None)
    truncated: bool = Field(False, description="Features or instances over the limits dropped.")
    payload_error: str = Field("", description="Why a body gave no columns (not v1/v2 JSON).")

    @field_validator("inputs", "outputs")
    @classmethod
    def _scalar_cells(cls, columns: dict[str, list[Any]]) -> dict[str, list[Any]]:
        """Cells are JSON values a statistic can take: no NaN/inf, ints within int64."""
        for name, cells in columns.items():
            for cell in cells:
                if not _scalar_cell(cell):
                    raise ValueError(f"column {name!r} holds {type(cell).__name__} "
                                     f"{str(cell)[:40]!r}: not finite, or past int64")
        return columns


class GenAIMetric(Record):
    """One data point of a ``gen_ai.*`` OTLP metric, over one interval (``observer.genai-metrics``).

    Cumulative points arrive here as deltas against the series' previous point, so ``count``,
    ``sum``, ``bucket_counts`` and (for sums) ``value`` add up across records.
    """

    schema_id: ClassVar[str] = "observer.genai-metrics/v1"
    schema_: Literal["observer.genai-metrics/v1"] = Field(
        "observer.genai-metrics/v1", alias="schema"
    )
    tenant: str = ""
    cluster: str = ClusterName()
    service: str
    metric: str = Field(description="Metric name as exported.")
    kind: str = Field(description="Canonical kind: token_usage, operation_duration, ...")
    instrument: Literal["histogram", "exponential_histogram", "sum", "gauge", "summary"]
    unit: str = ""
    temporality: Literal["delta", "cumulative", ""] = Field(
        "", description="As exported; values below are for the interval either way."
    )
    provider: str = ""
    model: str = ""
    response_model: str = ""
    operation: str = ""
    token_type: str = Field("", description="input / output for token metrics.")
    server_address: str = ""
    error_type: str = ""
    agent: str = ""
    start_time_unix_nano: int = UnixNano()
    time_unix_nano: int = UnixNano()
    count: int | None = Count()
    sum: float | None = Finite()
    min: float | None = Finite()
    max: float | None = Finite()
    bucket_bounds: list[float] = Field(default_factory=list)
    bucket_counts: list[int] = Field(default_factory=list)
    value: float | None = Finite(description="Sums and gauges.")

    # Validators, not Annotated item types: readers of the annotations (the Parquet export)
    # see plain list[float] / list[int].
    @field_validator("bucket_bounds")
    @classmethod
    def _finite_bounds(cls, bounds: list[float]) -> list[float]:
        if not all(math.isfinite(b) for b in bounds):
            raise ValueError("bucket bounds must be finite")
        return bounds

    @field_validator("bucket_counts")
    @classmethod
    def _bucket_counts(cls, counts: list[int]) -> list[int]:
        if not all(0 <= c <= MAX_COUNT for c in counts):
            raise ValueError(f"bucket counts must be in 0..{MAX_COUNT}")
        return counts


class UnlikeRecord(BaseModel):
    """A current record most unlike the reference (evidence of an embedding feature's drift)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    trace_id: str
    span_id: str
    score: float = Field(description="How unlike the reference: the domain classifier's "
                         "probability that the record is from the current window.")
    snippet: str | None = Field(None, description="Its text's start, only under content capture.")


class NovelCluster(BaseModel):
    """A cluster of the current window that the reference lacks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    share_current: float = Field(description="Share of the current window's records in it.")
    share_reference: float = Field(description="Share of the reference's records in it.")
    size: int = Field(description="Current records in it.")
    examples: list[UnlikeRecord] = Field(default_factory=list, description="A few of them.")


class EmbeddingEvidence(BaseModel):
    """Why an embedding feature drifted: the records and clusters behind the verdict."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    unlike: list[UnlikeRecord] = Field(default_factory=list)
    novel_clusters: list[NovelCluster] = Field(default_factory=list)


class FeatureDrift(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Literal["numeric", "categorical", "embedding"]
    method: str = Field(description="Statistic that decided the verdict.")
    statistic: float | None = Field(description="None when the window had no values.")
    threshold: float
    drifted: bool
    statistics: dict[str, float] = Field(
        default_factory=dict, description="Every statistic computed (e.g. wasserstein and psi)."
    )
    error_bound: float | None = Field(
        None,
        description="Sketch mode: the exact statistic lies within this of `statistic` (None: "
        "exact mode).",
    )
    evidence: EmbeddingEvidence | None = Field(
        None, description="Embedding features that drifted: the records and clusters behind it."
    )


class DegradationSignal(BaseModel):
    """One change detector of a segment (an error rate, a latency...) as of a closed window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Signal name from drift.degradation (e.g. error_rate).")
    field: str = Field(description="Record field the detector is fed.")
    detector: str = Field(description="adwin or page_hinkley.")
    n: int = Field(description="Values fed during this window.")
    mean: float | None = Field(description="Mean of those values (None when n is 0).")
    level: float = Field(description="The detector's current estimate of the level.")
    detected: bool = Field(description="A change in the configured direction during this window.")
    detections: int = Field(0, description="Changes detected during this window.")
    total_detections: int = Field(0, description="Changes detected since the segment started.")
    reference: float | None = Field(
        None, description="The level the detector compares with, when it keeps one (mean_test: "
        "the mean of its reference values); None otherwise or while it is still collecting.")


class OffsetRange(BaseModel):
    """Where a window's records are on Kafka: offsets first..last (inclusive) of one partition.

    Other segments' records may sit between them: filter on the segment key when reading back.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    topic: str
    partition: int
    first_offset: int
    last_offset: int


class DriftResult(Record):
    """One closed window of one segment, scored against the segment's reference."""

    schema_id: ClassVar[str] = "observer.drift/v1"
    schema_: Literal["observer.drift/v1"] = Field("observer.drift/v1", alias="schema")
    segment: dict[str, str]
    segment_key: str
    record_type: str = Field(description="llm, tools, ...: the topic the window came from.")
    window_index: int = Field(description="0 is the reference window; scored windows start at 1.")
    n_reference: int
    n_current: int
    features: list[FeatureDrift]
    drift_share: float
    dataset_drift: bool
    closed_at_unix_nano: int
    reference_ranges: list[OffsetRange] = Field(
        default_factory=list, description="Kafka offsets of the reference window's records."
    )
    current_ranges: list[OffsetRange] = Field(
        default_factory=list, description="Kafka offsets of this window's records."
    )
    window_start_unix_nano: int | None = Field(
        None, description="Time windows: event-time start of the window (inclusive)."
    )
    window_end_unix_nano: int | None = Field(
        None, description="Time windows: event-time end of the window (exclusive)."
    )
    degradation: list[DegradationSignal] = Field(
        default_factory=list, description="Change detectors of this segment (drift.degradation)."
    )
    episode_start_window: int | None = Field(
        None,
        description="Dataset drift: the window where this drift episode (consecutive drifted "
        "windows of the stream) began; None when the window did not drift.",
    )
    reference_version: int | None = Field(
        None, ge=1, description="The version of the segment's reference this window was "
        "scored against (1, 2, ...; drift.references); None in results written before "
        "references were versioned.",
    )
    comparison: Literal["past", "fleet"] = Field(
        "past", description="past: the window against the segment's own reference; fleet: a "
        "cluster's peer window against the other clusters' records of the same time range "
        "(drift.peer; n_reference then counts the pooled peer records).",
    )
    cluster: str = Field(
        "", max_length=253, description="comparison fleet: the cluster judged (\"\" for past).")
    peer_clusters: list[str] = Field(
        default_factory=list, description="comparison fleet: the clusters pooled as its peers.")


REFERENCE_SOURCES = ("first_n", "first_window", "time_range", "parquet", "rebaseline:from-window",
                     "rebaseline:next", "rebaseline:parquet", "promotion")
"""Where a reference version came from (``promotion`` is reserved for re-baselining after a
model promotion)."""
ReferenceSource = Literal["first_n", "first_window", "time_range", "parquet",
                          "rebaseline:from-window", "rebaseline:next", "rebaseline:parquet",
                          "promotion"]


class ReferenceCommand(Record):
    """An operator's command for one segment's reference, on ``observer.drift-commands``;
    the drift engine applies it in order with its inputs (``observer references ...``)."""

    schema_id: ClassVar[str] = "observer.reference-command/v1"
    schema_: Literal["observer.reference-command/v1"] = Field(
        "observer.reference-command/v1", alias="schema")
    command_id: str = Field(min_length=1, max_length=64, description="Unique id (idempotence).")
    command: Literal["pin", "unpin", "rebaseline"]
    segment_key: str = Field(max_length=1024)
    record_type: str = Field(max_length=64)
    source: Literal["next", "from-window", "parquet", "promotion"] | None = Field(
        None, description="rebaseline: the next N records, a scored window's records, a "
        "Parquet dataset, or (promotion: sent by the trigger stage when a retrained model was "
        "promoted) the next N records of the promoted model's traffic.")
    records: int | None = Field(None, ge=1, le=10_000_000, description="--next: N (promotion: "
                                "None takes the current reference's size).")
    window: int | None = Field(None, ge=1, description="--from-window: the window index.")
    ranges: list[OffsetRange] = Field(
        default_factory=list, description="--from-window: the window's Kafka offsets.")
    path: str | None = Field(None, max_length=4096, description="--parquet: the dataset.")
    force: bool = Field(False, description="Rebaseline a pinned reference anyway.")
    by: str = Field("", max_length=256, description="Who asked.")
    episode_id: str = Field("", max_length=64, description="promotion: the drift episode.")
    run: str = Field("", max_length=253, description="promotion: the run that trained the model.")
    model_version: str = Field("", max_length=256, description="promotion: the promoted model.")
    model_field: str = Field(
        "", max_length=64, description="promotion: collect only records whose field of this "
        "name equals model_version (records without the field all count); empty: every record.")
    at_unix_nano: int = UnixNano()


class ReferenceVersionInfo(BaseModel):
    """One version of a segment's reference: where it came from and what it holds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = Field(ge=1)
    source: ReferenceSource
    created_at_unix_nano: int = Field(description="Kafka time of the record that closed it, "
                                      "or of the command that set it.")
    n: int = Field(ge=0, description="Records in it.")
    ranges: list[OffsetRange] = Field(
        default_factory=list, description="Kafka offsets of its records (stream-built).")
    detail: dict[str, Any] = Field(
        default_factory=dict, description="path, window, command_id, by: as applicable; "
        "source promotion: episode_id, run, model_version (and model_field).")
    values_kept: bool = Field(True, description="Its values are still held (drift."
                              "reference_history_values).")


class ReferenceState(Record):
    """One segment's references as the drift engine holds them, on the compacted
    ``observer.references`` (key ``record_type/segment_key``): the read model of
    ``observer references`` and ``/api/v1/references``."""

    schema_id: ClassVar[str] = "observer.references/v1"
    schema_: Literal["observer.references/v1"] = Field("observer.references/v1", alias="schema")
    segment: dict[str, str]
    segment_key: str
    record_type: str
    current: int | None = Field(None, description="The version windows are scored against; "
                                "None while the first reference is being collected.")
    pinned: bool = False
    versions: list[ReferenceVersionInfo] = Field(default_factory=list, description="Oldest first.")
    collecting: dict[str, Any] | None = Field(
        None, description="A rebaseline --next in progress: version, records wanted, command_id.")
    last_command: dict[str, Any] | None = Field(
        None, description="The last command applied: command_id, command, outcome (applied, "
        "refused, failed), message.")


class TriggerEvent(Record):
    """A trigger decision or one delivery outcome, as written to ``observer.triggers``."""

    schema_id: ClassVar[str] = "observer.triggers/v1"
    schema_: Literal["observer.triggers/v1"] = Field("observer.triggers/v1", alias="schema")
    policy: str
    segment_key: str
    record_type: str
    episode_id: str
    event: Literal[
        "fired", "suppressed", "held", "approved", "rejected", "delivery",
        "run_started", "run_succeeded", "run_failed", "run_lost", "run_timed_out",
        "promoted", "rolled_back", "rebaselined", "rebaseline_refused", "cleared", "reopened",
    ] = Field(
        description="fired/suppressed: a decision; held: fired, its actions wait for approval; "
        "approved/rejected: the approval of a held decision (reason says who); delivery: "
        "one action's outcome; run_*: a submitted run (Argo, KFP) started, succeeded, failed "
        "(reason names the failed step), disappeared (lost) or outlived trigger.runs.timeout_s "
        "(target: the run's URL, status: its upstream phase); promoted/rolled_back: the "
        "pipeline's promotion callback; rebaselined/rebaseline_refused: the drift engine took "
        "(or a pin refused) the promoted model's reference; cleared: the first window scored "
        "against it did not drift, the episode is resolved (reason names the run); reopened: "
        "after a rollback, the policy is re-armed for the segment."
    )
    reason: str
    action: str = ""
    target: str = ""
    status: str = Field(
        "", description="pending, held, delivered, failed, dead_letter, disabled, cancelled."
    )
    attempts: int = 0
    window_index: int | None = None
    at_unix_nano: int


class GPUSample(Record):
    """One reading of one GPU, MIG instance or time-sliced share (``observer.gpu``).

    Fields NVML or DCGM could not read are None, never 0: a missing reading is not an idle GPU.
    """

    schema_id: ClassVar[str] = "observer.gpu/v1"
    schema_: Literal["observer.gpu/v1"] = Field("observer.gpu/v1", alias="schema")
    source: Literal["nvml", "dcgm", "replay"]
    cluster: str = ClusterName()
    node: str
    gpu_uuid: str
    gpu_index: int | None = None
    gpu_model: str = Field("", description="Device name, e.g. 'NVIDIA H100 80GB HBM3'.")
    mig_instance: str = Field("", description="MIG GPU instance id (DCGM GPU_I_ID) or MIG UUID.")
    mig_profile: str = Field("", description="MIG profile, e.g. '1g.10gb'.")
    fraction: float = Field(1.0, gt=0, le=1, description="Share of the physical GPU it stands for.")
    pod: str = ""
    namespace: str = ""
    container: str = ""
    pod_uid: str = ""
    time_unix_nano: int
    utilization_pct: float | None = None
    memory_util_pct: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    power_w: float | None = None
    energy_j: float | None = Field(None, description="The device's cumulative energy counter.")
    temperature_c: float | None = None
    sm_clock_mhz: float | None = None
    profiling: dict[str, float] = Field(
        default_factory=dict, description="DCGM_FI_PROF_* fields when exported (0-1)."
    )
    phase: str = Field("", description="Label of a replayed trace's phase.")
    capacity_type: str = ""
    price_per_hour: float | None = Field(None, description="Dollars per hour for this share.")
    cost_per_s: float | None = None
    idle: bool = False


class ServingSample(Record):
    """One serving engine's figures for one model in one pod, over a rate window."""

    schema_id: ClassVar[str] = "observer.serving/v1"
    schema_: Literal["observer.serving/v1"] = Field("observer.serving/v1", alias="schema")
    engine: Literal["vllm", "sglang"]
    cluster: str = ClusterName()
    model: str
    pod: str = ""
    namespace: str = ""
    instance: str = ""
    time_unix_nano: int
    window_s: float
    prompt_tokens_per_s: float | None = None
    generation_tokens_per_s: float | None = None
    requests_running: float | None = None
    requests_waiting: float | None = None
    kv_cache_usage: float | None = Field(None, description="KV-cache usage, 0-1.")
    ttft_mean_s: float | None = None
    itl_mean_s: float | None = None
    e2e_mean_s: float | None = None


class GPUEconomics(Record):
    """Tokens, dollars and joules over one window, for a GPU, a pod or a model.

    Formulas: docs/stages/collect-gpu.md, "Formulas". An idle GPU has ``tokens_per_dollar == 0`` and its
    cost in ``idle_cost_per_s``: waste, not an absent series.
    """

    schema_id: ClassVar[str] = "observer.gpu-economics/v1"
    schema_: Literal["observer.gpu-economics/v1"] = Field(
        "observer.gpu-economics/v1", alias="schema"
    )
    scope: Literal["gpu", "pod", "model", "phase"]
    cluster: str = Field("", max_length=253, description="The GPU collector's cluster "
                         "(gpu.cluster); \"\" when unset. A fleet's figures are the sum (or "
                         "the tokens-weighted ratio) over clusters.")
    name: str
    time_unix_nano: int
    window_s: float
    gpus: list[str] = Field(default_factory=list)
    gpu_fraction: float = 0.0
    tokens: float = 0.0
    tokens_per_s: float = 0.0
    power_w: float | None = None
    energy_j: float | None = None
    cost_per_s: float | None = None
    cost_dollars: float | None = None
    tokens_per_dollar: float | None = None
    tokens_per_dollar_per_second: float | None = None
    tokens_per_joule: float | None = None
    cost_per_million_tokens: float | None = None
    idle: bool = False
    idle_cost_per_s: float | None = None


def _scalar_cell(cell: Any) -> bool:
    """JSON values without NaN, infinities or integers past int64 (lists and maps too)."""
    if isinstance(cell, float):
        return math.isfinite(cell)
    if isinstance(cell, int) and not isinstance(cell, bool):
        return -(2**63) <= cell < 2**63
    if isinstance(cell, list):
        return all(_scalar_cell(c) for c in cell)
    if isinstance(cell, dict):
        return all(_scalar_cell(c) for c in cell.values())
    return cell is None or isinstance(cell, (str, bool))


RECORD_TYPES: dict[str, type[Record]] = {
    cls.schema_id: cls
    for cls in (LLMCall, EmbeddingRecord, ToolCall, RetrievalRecord, EvalRecord, PathRecord, Prediction, GenAIMetric, DriftResult, ReferenceCommand, ReferenceState, TriggerEvent, GPUSample, ServingSample, GPUEconomics)
}


class RecordError(ValueError):
    """A message on an observer.* topic is not a known, valid record.

    ``reason`` is the dead-letter reason (:mod:`observer.core.dead_letter`): ``decode_error``
    (not JSON), ``schema_error`` (no known ``schema``) or ``invalid_value`` (a field breaks
    its type or bounds: a negative count, a NaN...).
    """

    def __init__(self, message: str, reason: str = "invalid_value") -> None:
        super().__init__(message)
        self.reason = reason


def encode(record: Record) -> bytes:
    return record.model_dump_json(by_alias=True).encode()


_SCHEMA_ERRORS = frozenset({"union_tag_invalid", "union_tag_not_found", "dict_type", "model_type"})
"""pydantic error types, at the top of a message, that mean "not a record of a known schema"."""
_DECODERS: dict[tuple[type[Record], ...], TypeAdapter[Any]] = {}


def _decoder() -> TypeAdapter[Any]:
    """One validator for every record type, picked by ``schema`` inside pydantic-core: the
    bytes are parsed and validated in Rust, about 4x faster than ``json.loads`` and then
    ``model_validate`` (built again if ``RECORD_TYPES`` gained a type)."""
    types = tuple(RECORD_TYPES.values())
    adapter = _DECODERS.get(types)
    if adapter is None:
        _DECODERS.clear()
        adapter = _DECODERS[types] = TypeAdapter(
            Annotated[Union[types], Field(discriminator="schema_")]  # noqa: UP007 (a tuple)
        )
    return adapter


def _record_error(e: ValidationError) -> RecordError:
    """The :class:`RecordError` of a failed validation, with the reason the old two-step
    decode gave and without the values (they can be anything a client sent)."""
    first = e.errors(include_url=False, include_input=False)[0]
    kind, loc = first["type"], first["loc"]
    if kind == "json_invalid":
        # Python's json module took integers past int64, but not past 4300 digits.
        usable = "number out of range" not in first["msg"]
        return RecordError(f"record is not {'' if usable else 'usable '}JSON: {first['msg']}",
                           "decode_error" if usable else "invalid_value")
    if not loc and kind in _SCHEMA_ERRORS:
        tag = (first.get("ctx") or {}).get("tag")
        return RecordError(f"unknown record schema {str(tag)[:80]!r}", "schema_error")
    schema = loc[0] if loc else "?"
    where = "; ".join(
        f"{'.'.join(map(str, err['loc'][1:])) or '(record)'}: {err['msg']}"
        for err in e.errors(include_url=False, include_input=False)[:3]
    )
    return RecordError(f"invalid {schema} record: {where}")


def decode(raw: bytes | str | dict[str, Any]) -> Record:
    """The record of a JSON message (or an already parsed object); :class:`RecordError`
    with its dead-letter reason for anything else.

    >>> decode(b'{"schema": "observer.llm/v1", "service": "s", "model": "m", "trace_id": "t",'
    ...        b' "span_id": "p", "latency_ms": -1}')
    Traceback (most recent call last):
    ...
    observer.core.records.RecordError: invalid observer.llm/v1 record: latency_ms: Input should be greater than or equal to 0
    >>> for raw in (b"{", b"[]", b'{"schema": "x"}'):
    ...     try:
    ...         decode(raw)
    ...     except RecordError as e:
    ...         print(e.reason, e)
    decode_error record is not JSON: Invalid JSON: EOF while parsing an object at line 1 column 1
    schema_error unknown record schema 'None'
    schema_error unknown record schema 'x'
    """
    if not isinstance(raw, dict):
        try:
            return _decoder().validate_json(raw)  # type: ignore[no-any-return]
        except ValidationError as e:
            raise _record_error(e) from None
    try:
        data = raw if isinstance(raw, dict) else json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise RecordError(f"record is not JSON: {e}", "decode_error") from None
    except ValueError as e:  # an integer of more digits than int() takes
        raise RecordError(f"record is not usable JSON: {e}", "invalid_value") from None
    schema = data.get("schema") if isinstance(data, dict) else None
    cls = RECORD_TYPES.get(schema) if isinstance(schema, str) else None
    if cls is None:
        raise RecordError(f"unknown record schema {str(schema)[:80]!r}", "schema_error")
    try:
        return cls.model_validate(data)
    except Exception as e:
        raise RecordError(f"invalid {schema} record: {e}") from None
