"""The record types the drift engine scores, and how a record becomes feature rows.

One table (:data:`RECORD_TYPES`) says, per record type, which record class it carries, which
topic it arrives on, and which field holds its event time. The engine, the runtime (which
topics the drift stage subscribes to) and the HTML reports all read it, so a record type is
added in one place.

================  ===================  =========================  ========================
record type       record class         topic                      event time
================  ===================  =========================  ========================
``llm``           ``LLMCall``          ``observer.llm``           ``start_time_unix_nano``
``tools``         ``ToolCall``         ``observer.tools``         ``start_time_unix_nano``
``retrievals``    ``RetrievalRecord``  ``observer.retrievals``    ``start_time_unix_nano``
``paths``         ``PathRecord``       ``observer.paths``         ``start_time_unix_nano``
``predictions``   ``Prediction``       ``observer.predictions``   ``time_unix_nano``
``gpu``           ``GPUSample``        ``observer.gpu`` (shared)  ``time_unix_nano``
``embeddings``    ``EmbeddingRecord``  ``observer.embeddings``    ``start_time_unix_nano``
``evals``         ``EvalRecord``       ``observer.evals-joined``  ``time_unix_nano``
================  ===================  =========================  ========================

``evals`` are evaluation scores and feedback joined to their target's segment, one stream per
eval name (:mod:`observer.drift.quality`); an ``unjoined`` one has no segment and is skipped.

Feature names: a record field (``output_tokens``), or ``field.key`` for a key of a mapping
field (``inputs.age`` reads ``record.inputs["age"]``; ``profiling.DCGM_FI_PROF_SM_ACTIVE``
reads ``record.profiling[...]``). A mapping whose values are lists holds one value per
instance (a prediction's ``inputs``/``outputs`` columns): a record with such a feature
contributes one row per instance, the record's plain fields repeated on each of its rows.

Values are coerced to what the statistics accept: a numeric feature keeps numbers (booleans
as 1/0) and turns anything else (text, lists, a missing key) into a missing value; a
categorical feature keeps text, numbers and booleans as they are and writes lists and maps
as their JSON text, so every category is hashable and checkpointable; an embedding feature
(``prompt_embedding``) keeps the vector as float32 with the record's trace and span ids
(:class:`observer.drift.embedding.columns.VectorRow`), so a drifted window can name its records.

>>> from observer.drift.config import FeatureSpec
>>> from observer.core.records import Prediction
>>> p = Prediction(service="s", model="m", request_id="r", protocol="v1", instances=2,
...                inputs={"age": [41, 17], "city": ["Oslo", "Rome"]})
>>> specs = [FeatureSpec(name="inputs.age", kind="numeric"),
...          FeatureSpec(name="inputs.city", kind="categorical"),
...          FeatureSpec(name="model_version", kind="categorical")]
>>> feature_rows(p, specs)
[{'inputs.age': 41, 'inputs.city': 'Oslo', 'model_version': ''}, {'inputs.age': 17, 'inputs.city': 'Rome', 'model_version': ''}]
"""

from __future__ import annotations

import json
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from observer.drift.config import DriftConfig, FeatureSpec
from observer.core.records import (
    EmbeddingRecord,
    EvalRecord,
    GPUSample,
    LLMCall,
    PathRecord,
    Prediction,
    Record,
    RetrievalRecord,
    ToolCall,
)
from observer.drift.embedding.columns import VectorRow, embedding_value
from observer.drift.quality import admits as eval_admits
from observer.core.topics import Topics


@dataclass(frozen=True)
class RecordType:
    """One record type the engine can score.

    Parameters
    ----------
    record_class
        The record schema its messages carry.
    topic
        The :class:`~observer.core.topics.Topics` attribute naming its topic.
    time_field
        The record field holding its event time (Unix ns; 0 when unknown).
    shared_topic
        The topic also carries other record schemas, skipped without counting an error.
    admits
        Whether a record of the type is scored (``None``: all are); one it refuses is
        skipped before any stream sees it.
    """

    record_class: type[Record]
    topic: str
    time_field: str
    shared_topic: bool = False
    admits: Callable[[Record], bool] | None = None


RECORD_TYPES: dict[str, RecordType] = {
    "llm": RecordType(LLMCall, "llm", "start_time_unix_nano"),
    "tools": RecordType(ToolCall, "tools", "start_time_unix_nano"),
    # Retrieval and rerank steps (issue 16): a retriever whose scores fall drifts.
    "retrievals": RecordType(RetrievalRecord, "retrievals", "start_time_unix_nano"),
    "paths": RecordType(PathRecord, "paths", "start_time_unix_nano"),
    "predictions": RecordType(Prediction, "predictions", "time_unix_nano"),
    # observer.gpu also carries serving figures and GPU economics (collectors.gpu).
    "gpu": RecordType(GPUSample, "gpu", "time_unix_nano", shared_topic=True),
    # Prompt and response vectors (issue 15); segments also key on the embedder.
    "embeddings": RecordType(EmbeddingRecord, "embeddings", "start_time_unix_nano"),
    # Quality (issue 16): scores joined to their segment; unjoined ones have no segment.
    "evals": RecordType(EvalRecord, "evals_joined", "time_unix_nano", admits=eval_admits),
}
"""Record type -> record class, topic and event-time field."""

FIELD_SEPARATOR = "."
"""Separates a mapping field from its key in a feature name (``inputs.age``)."""


def topics_by_type(cfg: DriftConfig, topics: Topics) -> dict[str, str]:
    """Topic -> record type, for the record types that have features configured: the topics
    the drift stage consumes (nothing else is read, so an unused topic costs nothing).

    >>> from observer.core.config import KafkaConfig
    >>> topics = Topics.from_config(KafkaConfig())
    >>> sorted(topics_by_type(DriftConfig(), topics).values())
    ['embeddings', 'evals', 'llm', 'paths', 'retrievals', 'tools']
    >>> list(topics_by_type(DriftConfig(features={"gpu": [FeatureSpec(name="power_w",
    ...     kind="numeric")]}), topics))
    ['observer.gpu']
    """
    return {
        getattr(topics, rt.topic): name
        for name, rt in RECORD_TYPES.items()
        if cfg.features.get(name)
    }


def segment_keys(cfg: DriftConfig, record_type: str) -> list[str]:
    """The record fields forming a segment of ``record_type``: its entry in
    ``segment_keys_by_record_type``, else ``segment_keys``.

    >>> segment_keys(DriftConfig(), "gpu"), segment_keys(DriftConfig(), "llm")
    (['node', 'gpu_uuid', 'mig_instance'], ['service', 'model'])
    """
    return cfg.keys_for(record_type)


def _mapping_field(cls: type[Record], name: str) -> bool:
    """Whether field ``name`` of ``cls`` is a mapping (``dict[...]``, optional or not)."""
    annotation = cls.model_fields[name].annotation
    options = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Union \
        else (annotation,)
    return any(typing.get_origin(a) is dict or a is dict for a in options)


def check_features(record_type: str, specs: Sequence[FeatureSpec]) -> None:
    """Fail with a clear error when a feature of ``record_type`` names no field of its records.

    >>> check_features("predictions", [FeatureSpec(name="inputz.age", kind="numeric")])
    Traceback (most recent call last):
    ...
    ValueError: drift feature 'inputz.age' of predictions records: 'inputz' is not a field of predictions records (observer.predictions/v1)
    >>> check_features("llm", [FeatureSpec(name="model.x", kind="categorical")])
    Traceback (most recent call last):
    ...
    ValueError: drift feature 'model.x' of llm records: 'model' is not a mapping field, so it has no keys (observer.llm/v1)
    """
    cls = RECORD_TYPES[record_type].record_class
    # A multivariate feature names its own vector; its columns must be fields of the record.
    specs = [FeatureSpec(name=c, kind="numeric") for s in specs if s.columns for c in s.columns] \
        + [s for s in specs if not s.columns]
    for spec in specs:
        head, sep, key = spec.name.partition(FIELD_SEPARATOR)
        problem = None
        if head not in cls.model_fields:
            problem = f"{head!r} is not a field of {record_type} records"
        elif sep and not key:
            problem = f"a key is missing after {head!r}."
        elif sep and not _mapping_field(cls, head):
            problem = f"{head!r} is not a mapping field, so it has no keys"
        if problem:
            raise ValueError(
                f"drift feature {spec.name!r} of {record_type} records: {problem} "
                f"({cls.schema_id})"
            )


def check_segment_keys(record_type: str, keys: Sequence[str]) -> None:
    """Fail with a clear error when a segment key of ``record_type`` is not a field of it.

    >>> check_segment_keys("gpu", ["service"])
    Traceback (most recent call last):
    ...
    ValueError: drift segment key 'service' is not a field of gpu records (observer.gpu/v1)
    """
    cls = RECORD_TYPES[record_type].record_class
    for k in keys:
        if k not in cls.model_fields:
            raise ValueError(
                f"drift segment key {k!r} is not a field of {record_type} records ({cls.schema_id})"
            )


def _numeric(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return value
    return None  # text, lists or a missing key: not a number to score


def _categorical(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    # Lists and maps have no hash and no single category: their JSON text is the category.
    return json.dumps(value, sort_keys=True, default=str)


_COERCE = {"numeric": _numeric, "categorical": _categorical, "embedding": lambda v: v}


def feature_rows(record: Record, specs: Sequence[FeatureSpec]) -> list[dict[str, Any]]:
    """The feature rows ``record`` contributes: one, or one per instance when a feature reads
    a per-instance column (a mapping of lists). A record with per-instance features but no
    instances (empty columns) contributes no row.

    >>> from observer.core.records import LLMCall
    >>> call = LLMCall(service="s", model="m", trace_id="t", span_id="a", output_tokens=7)
    >>> feature_rows(call, [FeatureSpec(name="output_tokens", kind="numeric")])
    [{'output_tokens': 7}]
    """
    multivariate = [s for s in specs if s.columns]
    if multivariate:
        return _with_vectors(record, specs, multivariate)
    scalars: dict[str, Any] = {}
    columns: dict[str, list[Any]] = {}
    for spec in specs:
        if spec.kind == "embedding":
            scalars[spec.name] = embedding_value(record, spec.name)
            continue
        head, sep, key = spec.name.partition(FIELD_SEPARATOR)
        value = getattr(record, head, None)
        if sep:
            value = value.get(key) if isinstance(value, Mapping) else None
        if isinstance(value, list) and sep:
            columns[spec.name] = value
        else:
            scalars[spec.name] = value
    coerce = {s.name: _COERCE[s.kind] for s in specs}
    if not columns:
        return [{name: coerce[name](v) for name, v in scalars.items()}]
    # Columns of a truncated payload may differ in length: the short ones miss values.
    n = max(len(c) for c in columns.values())
    rows = []
    for i in range(n):
        row = {name: coerce[name](v) for name, v in scalars.items()}
        for name, column in columns.items():
            row[name] = coerce[name](column[i] if i < len(column) else None)
        rows.append({s.name: row[s.name] for s in specs})
    return rows


def row_maker(specs: Sequence[FeatureSpec]) -> Callable[[Record], list[dict[str, Any]]]:
    """:func:`feature_rows` for one fixed list of ``specs``, what it decides per spec taken
    once: the engine calls it for every record. Record fields (no ``inputs.x`` paths, no
    multivariate columns) read straight into one row; anything else goes the general way.

    >>> from observer.core.records import LLMCall
    >>> specs = [FeatureSpec(name="output_tokens", kind="numeric"),
    ...          FeatureSpec(name="finish_reason", kind="categorical")]
    >>> call = LLMCall(service="s", model="m", trace_id="t", span_id="a", output_tokens=7)
    >>> row_maker(specs)(call) == feature_rows(call, specs)
    True
    """
    if any(s.columns or FIELD_SEPARATOR in s.name for s in specs):
        return lambda record: feature_rows(record, specs)
    plan = [(s.name, s.kind == "embedding", _COERCE[s.kind]) for s in specs]

    def rows(record: Record) -> list[dict[str, Any]]:
        return [{name: embedding_value(record, name) if embedding
                 else coerce(getattr(record, name, None)) for name, embedding, coerce in plan}]
    return rows


def _with_vectors(record: Record, specs: Sequence[FeatureSpec],
                  multivariate: Sequence[FeatureSpec]) -> list[dict[str, Any]]:
    """Rows of ``specs`` where each multivariate feature (an embedding built from ``columns``)
    holds the vector of its numeric columns, per instance; ``None`` when one is missing.

    >>> p = Prediction(service="s", model="m", request_id="r", protocol="v1", instances=2,
    ...                inputs={"a": [1, 2], "b": [3, None]})
    >>> rows = feature_rows(p, [FeatureSpec(name="ab", kind="embedding", columns=["inputs.a",
    ...                                                                       "inputs.b"])])
    >>> rows[0]["ab"].vector.tolist(), rows[0]["ab"].trace_id, rows[1]["ab"]
    ([1.0, 3.0], 'r', None)
    """
    hidden = [FeatureSpec(name=c, kind="numeric") for s in multivariate for c in s.columns or ()]
    plain = [s for s in specs if not s.columns]
    trace_id = str(getattr(record, "trace_id", "") or getattr(record, "request_id", ""))
    span_id = str(getattr(record, "span_id", ""))
    rows = []
    for row in feature_rows(record, [*plain, *hidden]):
        out = {s.name: row[s.name] for s in plain}
        for spec in multivariate:
            values = [row[c] for c in spec.columns or ()]
            out[spec.name] = None if any(v is None for v in values) else \
                VectorRow(values, trace_id, span_id)
        rows.append({s.name: out[s.name] for s in specs})
    return rows


def event_time(record: Record, kafka_timestamp_ms: int) -> int:
    """A record's event time in Unix ns: its record type's time field (``time_field``), else
    the Kafka timestamp (``-1``/``0`` when the producer set none: then 0).

    >>> from observer.core.records import GPUSample
    >>> event_time(GPUSample(source="replay", node="n", gpu_uuid="g", time_unix_nano=5), 9)
    5
    """
    t = 0
    for rt in RECORD_TYPES.values():
        if isinstance(record, rt.record_class):
            t = getattr(record, rt.time_field, 0) or 0
            break
    return int(t) if t > 0 else max(kafka_timestamp_ms, 0) * 1_000_000
