"""A retrieval or rerank span becomes the fields of an ``observer.retrievals/v1`` record.

Where each convention lists documents is :mod:`observer.collectors.common.retrieval_mapping`;
this module reads them, checks every value (client values are hostile) and summarises them:
the score statistics (max, mean, min, and the top score's margin over the next), the documents
ranked by score (best first; documents without a score after, in their listed order), the
top-1 and top-k ids, and the query's hash. No text leaves here: neither the query nor the
documents' content.

A value that breaks its rule is left out and counted in
``observer_invalid_values_total{stage="normalizer",field}``: a score that is not a finite
number within ``±MAX_SCORE`` (``document_score``), an id that is not a name
(``document_id``), documents past ``MAX_DOCUMENTS`` (``documents``), documents JSON that does
not parse (``retrieval_documents``).

>>> from opentelemetry.proto.trace.v1.trace_pb2 import Span
>>> from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
>>> def kv(k, **v): return KeyValue(key=k, value=AnyValue(**v))
>>> span = Span(name="VectorStoreRetriever", attributes=[
...     kv("input.value", string_value="what is observer?"),
...     kv("retrieval.documents.0.document.id", string_value="a"),
...     kv("retrieval.documents.0.document.score", double_value=0.75),
...     kv("retrieval.documents.1.document.id", string_value="b"),
...     kv("retrieval.documents.1.document.score", double_value=0.5)])
>>> f = retrieval_fields(span, "retrieve", "doc")
>>> f["k"], f["score_max"], f["score_margin"], f["topk_document_ids"], f["data_source"]
(2, 0.75, 0.25, ['a', 'b'], 'VectorStoreRetriever')
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from observer.collectors.common.otlp_attributes import attribute_values
from observer.collectors.common.retrieval_mapping import (
    EVENT_NAMES,
    INDEXED_DOCUMENTS,
    JSON_DOCUMENTS,
    MAX_DOCUMENTS,
    MAX_METADATA_CHARS,
    METADATA_DISTANCE_KEYS,
    METADATA_ID_KEYS,
    METADATA_SCORE_KEYS,
    NAMES,
    QUERY,
    Operation,
    event_documents,
    indexed_documents,
    source_name,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from observer.core import validate
from observer.core.records import MAX_SCORE, MAX_TOPK_IDS

_PREFIXES = tuple(p.prefix for places in INDEXED_DOCUMENTS.values() for p in places)
_MAX_JSON_CHARS = MAX_DOCUMENTS * 512
"""Documents JSON longer than this is not parsed (ids and scores only are expected)."""


def query_hash(value: Any) -> str:
    """sha256 (16 hex) of a query's text; "" when there is no text.

    >>> query_hash("what is observer?") == query_hash("what is observer?"), query_hash(3)
    (True, '')
    """
    if not isinstance(value, str) or not value:
        return ""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _json(value: Any, max_chars: int) -> Any:
    """Parsed JSON text (None when not text, too long, or not JSON)."""
    if not isinstance(value, str) or len(value) > max_chars:
        return None
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        return None


def _json_documents(value: Any, stage: str) -> list[dict[str, Any]]:
    """GenAI ``gen_ai.retrieval.documents``: a list of maps, structured or as JSON text."""
    parsed = _json(value, _MAX_JSON_CHARS) if isinstance(value, str) else value
    if not isinstance(parsed, list):
        validate.invalid(stage, "retrieval_documents")
        return []
    if len(parsed) > MAX_DOCUMENTS:
        validate.invalid(stage, "documents")
    return [d if isinstance(d, dict) else {} for d in parsed[:MAX_DOCUMENTS]]


def _metadata(document: Mapping[str, Any]) -> dict[str, Any]:
    """A document's metadata: a map, or JSON text of one (OpenInference); else empty."""
    value = document.get("metadata")
    parsed = _json(value, MAX_METADATA_CHARS) if isinstance(value, str) else value
    return parsed if isinstance(parsed, dict) else {}


def _score(document: Mapping[str, Any], metadata: Mapping[str, Any], stage: str) -> float | None:
    """A document's score (higher is better), a distance ``d`` giving ``-d``; metadata keys
    when it has neither; None when absent or invalid (counted)."""
    candidates = [(document.get("score"), 1.0), (document.get("distance"), -1.0)]
    candidates += [(metadata.get(k), 1.0) for k in METADATA_SCORE_KEYS]
    candidates += [(metadata.get(k), -1.0) for k in METADATA_DISTANCE_KEYS]
    present = False
    for value, sign in candidates:
        if value is None:
            continue
        present = True
        number = validate.finite(value, min=-MAX_SCORE, max=MAX_SCORE)
        if number is not None:
            return sign * number + 0.0  # + 0.0: -0.0 for a distance of 0 prints as 0.0
    if present:
        validate.invalid(stage, "document_score")
    return None


def _document_id(document: Mapping[str, Any], metadata: Mapping[str, Any], stage: str) -> str:
    value = document.get("id")
    if value is None:
        value = next((metadata[k] for k in METADATA_ID_KEYS if metadata.get(k) is not None), None)
    if value is None:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # OpenInference allows integer ids
    name = validate.text(value)
    if not name:
        validate.invalid(stage, "document_id")
    return name


def _documents(span: Span, operation: Operation, attributes: Mapping[str, Any],
               stage: str) -> list[dict[str, Any]]:
    documents, dropped = indexed_documents(operation, attributes)
    if dropped:
        validate.invalid(stage, "documents")
    if not documents:
        name = next((n for n in JSON_DOCUMENTS if n in attributes), None)
        if name is not None:
            documents = _json_documents(attributes[name], stage)
    if not documents and span.events:
        events = [
            (e.name, attribute_values(e.attributes, frozenset(kv.key for kv in e.attributes)))
            for e in span.events[:MAX_DOCUMENTS + 1] if e.name in EVENT_NAMES
        ]
        if len(events) > MAX_DOCUMENTS:
            validate.invalid(stage, "documents")
        documents = event_documents(events[:MAX_DOCUMENTS])
    return documents


def retrieval_fields(span: Span, operation: Operation, stage: str) -> dict[str, Any]:
    """The retrieval record's own fields of a span (``operation`` from
    :func:`~observer.collectors.common.retrieval_mapping.retrieval_operation`)."""
    wanted = frozenset(
        kv.key for kv in span.attributes if kv.key in NAMES or kv.key.startswith(_PREFIXES)
    )
    attributes = attribute_values(span.attributes, wanted) if wanted else {}
    ranked = []
    for document in _documents(span, operation, attributes, stage):
        metadata = _metadata(document)
        ranked.append((_score(document, metadata, stage), _document_id(document, metadata, stage)))
    # Best first; unscored documents after, in their listed order (sort is stable).
    ranked.sort(key=lambda d: (d[0] is None, -(d[0] or 0.0)))
    scores = [s for s, _ in ranked if s is not None]
    ids = [i for _, i in ranked if i]
    return {
        "operation": operation,
        "data_source": source_name(operation, attributes, span.name),
        "query_hash": query_hash(next((attributes[n] for n in QUERY if n in attributes), None)),
        "k": len(ranked),
        "score_max": scores[0] if scores else None,
        "score_mean": sum(scores) / len(scores) if scores else None,
        "score_min": scores[-1] if scores else None,
        "score_margin": scores[0] - scores[1] if len(scores) > 1 else None,
        "top1_document_id": ranked[0][1] if ranked else "",
        "topk_document_ids": ids[:MAX_TOPK_IDS],
    }
