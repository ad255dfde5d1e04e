"""Export a drifted window and its reference from Kafka to Parquet, for the retraining run.

A :class:`~observer.core.records.DriftResult` names where its records are
(``reference_ranges``, ``current_ranges``: topic, partition, first and last offset). Other
segments' records sit between them, so :func:`~observer.core.windows.read_window` (shared
with the drift reports, hence in the kernel) keeps only the records of the result's segment.
:func:`write_parquet` writes them with an Arrow schema derived from the record model (one
column per field, nullable where the field is optional), to a local path or any URI pyarrow
or fsspec opens (``s3://bucket/prefix/...``, ``gs://``, ``memory://``).

Paths are a pure function of the episode (:func:`export_uris`), and the records at given
offsets never change, so an export repeated after a crash writes the same files again.

>>> export_uris("s3://bucket/exports/", "retrain", "e1")
{'current': 's3://bucket/exports/retrain/e1/current.parquet', 'reference': 's3://bucket/exports/retrain/e1/reference.parquet'}
>>> from observer.core.records import LLMCall
>>> arrow_schema(LLMCall).field("input_tokens").type
DataType(int64)
"""

from __future__ import annotations

import json
import logging
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from observer.core.extras import require

# pyarrow and fsspec are the `parquet` extra: the trigger stage imports this module at start
# when trigger.export.uri is set, so a missing extra fails there, naming it.
EXPORT_FEATURE = "Parquet exports of drifted windows (trigger.export.uri)"
require("pyarrow", extra="parquet", feature=EXPORT_FEATURE)

import pyarrow as pa  # noqa: E402
import pyarrow.fs as pafs  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from observer.core import vectors
from observer.core.config import KafkaConfig
from observer.core.records import OffsetRange, Record
from observer.core.windows import WindowReadError, read_window

log = logging.getLogger(__name__)

# Python annotation -> Arrow type; one table instead of a ladder of ifs.
_ARROW_TYPES: dict[Any, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
}


class ExportError(RuntimeError):
    """The window could not be exported; the message says why."""


def export_uris(base: str, policy: str, episode_id: str) -> dict[str, str]:
    """Where an episode's current and reference windows go."""
    root = f"{base.rstrip('/')}/{policy}/{episode_id}"
    return {"current": f"{root}/current.parquet", "reference": f"{root}/reference.parquet"}


def export_spec(
    base: str, policy: str, episode_id: str, result: Any
) -> dict[str, Any] | None:
    """What to export for a decision completed by drift result ``result``: the destination
    URIs and the offset ranges of both windows (None when the result names no records).

    Fixed when the decision is recorded, in every action's outbox payload, so each action
    and every retry export the same records to the same place.

    >>> from observer.core.records import DriftResult, OffsetRange
    >>> r = DriftResult(segment={"service": "shop"}, segment_key="shop", record_type="llm",
    ...     window_index=2, n_reference=1, n_current=1, features=[], drift_share=1.0,
    ...     dataset_drift=True, closed_at_unix_nano=0,
    ...     current_ranges=[OffsetRange(topic="t", partition=0, first_offset=5, last_offset=9)])
    >>> spec = export_spec("s3://b/x", "p", "e1", r)
    >>> spec["current"], spec["current_ranges"][0]["first_offset"], spec["record_schema"]
    ('s3://b/x/p/e1/current.parquet', 5, 'observer.llm/v1')
    """
    if not result.current_ranges:
        return None
    return {
        **export_uris(base, policy, episode_id),
        "episode_id": episode_id,
        "segment": dict(result.segment),
        "record_type": result.record_type,
        "record_schema": f"observer.{result.record_type}/v1",
        "current_ranges": [r.model_dump() for r in result.current_ranges],
        "reference_ranges": [r.model_dump() for r in result.reference_ranges],
    }


def _arrow_type(annotation: Any) -> tuple[pa.DataType, bool]:
    """The Arrow type of a field's annotation, and whether it is nullable."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        inner, _ = _arrow_type(args[0])
        return inner, True
    if origin is list:
        (item,) = typing.get_args(annotation)
        inner, _ = _arrow_type(item)
        return pa.list_(inner), False
    if origin is typing.Literal:
        return _arrow_type(type(typing.get_args(annotation)[0]))
    if origin is dict:
        return pa.map_(pa.string(), pa.string()), False
    if annotation in _ARROW_TYPES:
        return _ARROW_TYPES[annotation], False
    raise TypeError(f"no Arrow type for {annotation!r}")


def arrow_schema(model: type[Record]) -> pa.Schema:
    """One column per record field, by its JSON name (``schema`` for ``schema_``)."""
    fields = []
    for name, info in model.model_fields.items():
        arrow_type, nullable = _arrow_type(info.annotation)
        fields.append(pa.field(info.alias or name, arrow_type, nullable=nullable))
    return pa.schema(fields)


def _filesystem(uri: str, storage_options: dict[str, Any]) -> tuple[pafs.FileSystem, str]:
    if "://" not in uri:
        path = Path(uri).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return pafs.LocalFileSystem(), str(path)
    if not storage_options:
        try:
            return pafs.FileSystem.from_uri(uri)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass  # a scheme pyarrow does not know: fsspec may
    fsspec = require("fsspec", extra="parquet", feature=EXPORT_FEATURE)
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = fsspec.core.url_to_fs(uri, **storage_options)
    return PyFileSystem(FSSpecHandler(fs)), path


def write_parquet(
    records: Iterable[Record],
    model: type[Record],
    uri: str,
    storage_options: dict[str, Any] | None = None,
    metadata: dict[str, str] | None = None,
) -> int:
    """Write ``records`` (all of type ``model``) to ``uri``; returns the row count."""
    schema = arrow_schema(model)
    rows = [r.model_dump(by_alias=True, mode="json") for r in records]
    # Lists of numbers that travel as base64 on Kafka (embedding vectors) are lists again here.
    vector_columns = {f.name for f in schema if pa.types.is_list(f.type)
                      and pa.types.is_floating(f.type.value_type)}
    for row in rows:
        for name, value in row.items():
            if isinstance(value, dict):
                row[name] = list(value.items())
            elif isinstance(value, str) and name in vector_columns:
                row[name] = vectors.from_base64(value)
    if metadata:
        schema = schema.with_metadata({k: v.encode() for k, v in metadata.items()})
    table = pa.Table.from_pylist(rows, schema=schema)
    fs, path = _filesystem(uri, storage_options or {})
    pq.write_table(table, path, filesystem=fs)
    return table.num_rows


def export_episode(
    kafka: KafkaConfig,
    spec: dict[str, Any],
    *,
    max_records: int = 200_000,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, int]:
    """Export both windows of an episode as described by the run payload's ``export`` part.

    ``spec`` holds ``segment``, ``record_type``, ``current``/``reference`` (URIs) and
    ``current_ranges``/``reference_ranges``. Returns the rows written per window; raises
    :class:`ExportError` when the drifted window has no records (nothing to retrain on).
    """
    from observer.core.records import RECORD_TYPES

    counts: dict[str, int] = {}
    for part in ("current", "reference"):
        ranges = [OffsetRange.model_validate(r) for r in spec.get(f"{part}_ranges", [])]
        try:
            records = read_window(kafka, ranges, spec["segment"], max_records=max_records)
        except WindowReadError as e:
            raise ExportError(str(e)) from None
        if part == "current" and not records:
            raise ExportError(
                "no records of the drifted window were found on Kafka "
                f"({len(ranges)} offset ranges; retention may have removed them)"
            )
        types_seen = {type(r) for r in records}
        if len(types_seen) > 1:
            raise ExportError(f"the {part} window mixes record types: {sorted(map(str, types_seen))}")
        model = next(iter(types_seen)) if records else RECORD_TYPES[spec["record_schema"]]
        meta = {"observer.episode": json.dumps({k: spec[k] for k in ("episode_id", "segment")})}
        counts[part] = write_parquet(records, model, spec[part], storage_options, meta)
        log.info("exported %d %s records of episode %s to %s", counts[part], part,
                 spec["episode_id"], spec[part])
    return counts
