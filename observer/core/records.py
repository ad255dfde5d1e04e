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
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

SEGMENT_SEPARATOR = "|"


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
    service: str
    model: str
    provider: str = ""
    operation: str = "chat"
    trace_id: str
    span_id: str
    parent_span_id: str = ""
    start_time_unix_nano: int = 0
    latency_ms: float = 0.0
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    reasoning_tokens: int | None = None
    finish_reason: str = ""
    finish_reasons: list[str] = Field(default_factory=list)
    time_to_first_token_ms: float | None = None
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
    input_messages: int | None = None
    input_chars: int | None = None
    input_hash: str = Field("", description="sha256 (16 hex) of the input messages.")
    output_messages: int | None = None
    output_chars: int | None = None
    output_hash: str = Field("", description="sha256 (16 hex) of the output messages.")
    input_content: list[dict[str, str]] | None = Field(
        None, description="[{role, content}] when content capture is enabled."
    )
    output_content: list[dict[str, str]] | None = Field(
        None, description="[{role, content}] when content capture is enabled."
    )
    content_truncated: bool = False


class ToolCall(Record):
    """One tool execution, normalised from an ``execute_tool`` span."""

    schema_id: ClassVar[str] = "observer.tools/v1"
    schema_: Literal["observer.tools/v1"] = Field("observer.tools/v1", alias="schema")
    tenant: str = ""
    service: str
    model: str = ""
    agent: str = ""
    tool_name: str
    tool_call_id: str = ""
    tool_type: str = ""
    trace_id: str
    span_id: str
    parent_span_id: str = ""
    start_time_unix_nano: int = 0
    latency_ms: float = 0.0
    status: Literal["ok", "error"] = "ok"
    error_type: str = ""


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
    service: str
    model: str = Field("", description="Model of the trace's first LLM call.")
    agent: str = Field("", description="The outermost agent named in the trace.")
    trace_id: str
    root_span_id: str = ""
    root_name: str = ""
    start_time_unix_nano: int = 0
    duration_ms: float = 0.0
    span_count: int = 0
    llm_calls: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    loop_iterations: int = Field(0, description="Chat/completion calls: one per loop turn.")
    loop_bound_exceeded: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    llm_latency_ms: float = 0.0
    tool_latency_ms: float = 0.0
    error: bool = False
    models: list[str] = Field(default_factory=list)
    tool_sequence: list[ToolStep] = Field(default_factory=list)
    prompt_path: list[str] = Field(
        default_factory=list, description="Ordered steps: llm[:prompt@version], tool:<name>."
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
    instances: int = 0
    inputs: dict[str, list[Any]] = Field(
        default_factory=dict, description="Input features as columns (one value per instance)."
    )
    outputs: dict[str, list[Any]] = Field(
        default_factory=dict, description="Outputs as columns (one value per instance)."
    )
    paired: bool = Field(True, description="False when only the request or the response came.")
    time_unix_nano: int = 0
    latency_ms: float | None = None
    truncated: bool = Field(False, description="Features or instances over the limits dropped.")
    payload_error: str = Field("", description="Why a body gave no columns (not v1/v2 JSON).")


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
    start_time_unix_nano: int = 0
    time_unix_nano: int = 0
    count: int | None = None
    sum: float | None = None
    min: float | None = None
    max: float | None = None
    bucket_bounds: list[float] = Field(default_factory=list)
    bucket_counts: list[int] = Field(default_factory=list)
    value: float | None = Field(None, description="Sums and gauges.")


class FeatureDrift(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: Literal["numeric", "categorical"]
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


class TriggerEvent(Record):
    """A trigger decision or one delivery outcome, as written to ``observer.triggers``."""

    schema_id: ClassVar[str] = "observer.triggers/v1"
    schema_: Literal["observer.triggers/v1"] = Field("observer.triggers/v1", alias="schema")
    policy: str
    segment_key: str
    record_type: str
    episode_id: str
    event: Literal["fired", "suppressed", "held", "approved", "rejected", "delivery"] = Field(
        description="fired/suppressed: a decision; held: fired, its actions wait for approval; "
        "approved/rejected: the approval of a held decision (reason says who); delivery: "
        "one action's outcome."
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

    Formulas: README, "GPU economics". An idle GPU has ``tokens_per_dollar == 0`` and its
    cost in ``idle_cost_per_s``: waste, not an absent series.
    """

    schema_id: ClassVar[str] = "observer.gpu-economics/v1"
    schema_: Literal["observer.gpu-economics/v1"] = Field(
        "observer.gpu-economics/v1", alias="schema"
    )
    scope: Literal["gpu", "pod", "model", "phase"]
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


RECORD_TYPES: dict[str, type[Record]] = {
    cls.schema_id: cls
    for cls in (LLMCall, ToolCall, PathRecord, Prediction, GenAIMetric, DriftResult, TriggerEvent, GPUSample, ServingSample, GPUEconomics)
}


class RecordError(ValueError):
    """A message on an observer.* topic is not a known, valid record."""


def encode(record: Record) -> bytes:
    return record.model_dump_json(by_alias=True).encode()


def decode(raw: bytes | str | dict[str, Any]) -> Record:
    try:
        data = raw if isinstance(raw, dict) else json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecordError(f"record is not JSON: {e}") from None
    schema = data.get("schema") if isinstance(data, dict) else None
    cls = RECORD_TYPES.get(schema)  # type: ignore[arg-type]
    if cls is None:
        raise RecordError(f"unknown record schema {schema!r}")
    try:
        return cls.model_validate(data)
    except Exception as e:
        raise RecordError(f"invalid {schema} record: {e}") from None
