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


class TriggerEvent(Record):
    """A trigger decision or one delivery outcome, as written to ``observer.triggers``."""

    schema_id: ClassVar[str] = "observer.triggers/v1"
    schema_: Literal["observer.triggers/v1"] = Field("observer.triggers/v1", alias="schema")
    policy: str
    segment_key: str
    record_type: str
    episode_id: str
    event: Literal["fired", "suppressed", "delivery"]
    reason: str
    action: str = ""
    target: str = ""
    status: str = Field("", description="pending, delivered, failed, dead_letter, skipped.")
    attempts: int = 0
    window_index: int | None = None
    at_unix_nano: int


RECORD_TYPES: dict[str, type[Record]] = {
    cls.schema_id: cls for cls in (LLMCall, ToolCall, DriftResult, TriggerEvent)
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
