"""Which spans are retrieval or rerank steps, and where each convention puts their documents.

Three conventions describe retrievals (the data below is all the normaliser and trace grouping
know; supporting another convention means adding names here):

- **OpenInference**: a ``RETRIEVER`` span lists ``retrieval.documents.N.document.{id,score,
  metadata}`` and its query in ``input.value``; a ``RERANKER`` span lists
  ``reranker.output_documents.N.document.*`` with ``reranker.query`` and ``reranker.model_name``.
- **OpenTelemetry GenAI**: ``gen_ai.operation.name=retrieval`` with ``gen_ai.data_source.id``,
  the query in ``gen_ai.retrieval.query.text`` and, opt-in, ``gen_ai.retrieval.documents``
  (``[{"id", "score"}]``, structured or as a JSON string).
- **OpenLLMetry**: a vector-store span (``db.system``) with one ``db.query.result`` (or
  ``db.search.result``) event per document: ``.id``, ``.score``, ``.distance``. A distance is
  lower-is-better, so it is recorded as the score ``-distance``: the order, the spread and the
  top margin are kept in the distance's own unit, and "scores fall" still means "worse".

Where a document carries no id or score of its own (LangChain's documents, as OpenInference's
LangChain instrumentation records them, carry only content and metadata), the keys of
:data:`METADATA_SCORE_KEYS` and :data:`METADATA_ID_KEYS` in its metadata JSON are read.

>>> retrieval_operation({"openinference.span.kind": "RETRIEVER"}, ())
'retrieve'
>>> retrieval_operation({"gen_ai.operation.name": "chat"}, ()) is None
True
>>> retrieval_operation({}, ("db.query.result",))
'retrieve'
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from observer.core import validate

Operation = Literal["retrieve", "rerank"]

# Attribute -> value (lowercased) -> operation; tried in order, the first listed value decides.
OPERATION_BY_ATTRIBUTE: dict[str, dict[str, Operation]] = {
    "gen_ai.operation.name": {"retrieval": "retrieve", "retrieve": "retrieve", "rerank": "rerank"},
    "openinference.span.kind": {"retriever": "retrieve", "reranker": "rerank"},
    "llm.request.type": {"rerank": "rerank"},  # OpenLLMetry (Cohere rerank...)
}


@dataclass(frozen=True)
class IndexedDocuments:
    """Documents flattened as ``<prefix>N.<field suffix>`` span attributes (OpenInference)."""

    prefix: str
    id: str = "document.id"
    score: str = "document.score"
    metadata: str = "document.metadata"


@dataclass(frozen=True)
class EventDocuments:
    """Documents as span events, one per document, named ``event`` (OpenLLMetry)."""

    event: str
    id: str
    score: str
    distance: str
    metadata: str


# Per operation, the places its documents may be listed, in priority order: the first that
# lists any document is used.
INDEXED_DOCUMENTS: dict[Operation, tuple[IndexedDocuments, ...]] = {
    "retrieve": (IndexedDocuments("retrieval.documents."),),
    "rerank": (IndexedDocuments("reranker.output_documents."),),
}
JSON_DOCUMENTS: tuple[str, ...] = ("gen_ai.retrieval.documents",)
"""Attributes holding ``[{"id", "score"}]``, structured or as JSON text (GenAI, opt-in)."""
EVENT_DOCUMENTS: tuple[EventDocuments, ...] = tuple(
    EventDocuments(name, f"{name}.id", f"{name}.score", f"{name}.distance", f"{name}.metadata")
    for name in ("db.query.result", "db.search.result")
)
EVENT_NAMES = frozenset(e.event for e in EVENT_DOCUMENTS)

METADATA_SCORE_KEYS: tuple[str, ...] = ("score", "relevance_score", "similarity_score", "_score")
"""Keys of a document's metadata read as its score when it has none (LangChain compressors
and rerankers write ``relevance_score``)."""
METADATA_DISTANCE_KEYS: tuple[str, ...] = ("distance", "_distance")
METADATA_ID_KEYS: tuple[str, ...] = ("id", "doc_id", "document_id", "chunk_id")

# Span attributes naming the query, the data source and the reranker, highest priority first.
QUERY: tuple[str, ...] = (
    "gen_ai.retrieval.query.text", "reranker.query", "db.query.text", "input.value",
)
DATA_SOURCE: tuple[str, ...] = (
    "gen_ai.data_source.id", "db.collection.name", "db.namespace", "db.system.name", "db.system",
)
RERANKER_MODEL: tuple[str, ...] = (
    "reranker.model_name", "gen_ai.request.model", "llm.request.model",
)
SPAN_METADATA = "metadata"
"""OpenInference's span metadata (JSON text): LangChain's run metadata on its spans."""
SPAN_METADATA_SOURCE_KEYS: tuple[str, ...] = ("ls_vector_store_provider", "ls_retriever_name")
"""Keys of the span metadata naming the data source when no attribute does (LangChain names
the vector store of a ``VectorStoreRetriever``: ``Chroma``, ``FAISS``...)."""
NAMES: frozenset[str] = frozenset(
    (*QUERY, *DATA_SOURCE, *RERANKER_MODEL, *JSON_DOCUMENTS, SPAN_METADATA)
)
"""The plain (not indexed) attributes a retrieval record reads."""

MAX_DOCUMENTS = 1000
"""Documents read per span; a higher index is ignored (and counted as invalid)."""
MAX_METADATA_CHARS = 65536
"""A document's metadata JSON longer than this is not parsed."""

_INDEXED = {
    op: [(d, re.compile(re.escape(d.prefix) + r"(\d{1,6})\.(.+)\Z")) for d in places]
    for op, places in INDEXED_DOCUMENTS.items()
}


def retrieval_operation(attributes: Mapping[str, Any], event_names: Iterable[str]) -> Operation | None:
    """``retrieve`` or ``rerank`` when a span (its converted attributes, the names of its
    events) is a retrieval step by :data:`OPERATION_BY_ATTRIBUTE` or :data:`EVENT_NAMES`;
    None otherwise.

    >>> retrieval_operation({"openinference.span.kind": "RERANKER"}, ())
    'rerank'
    >>> retrieval_operation({"gen_ai.operation.name": "retrieval"}, ())
    'retrieve'
    """
    for attribute, values in OPERATION_BY_ATTRIBUTE.items():
        value = attributes.get(attribute)
        if isinstance(value, str) and value.lower() in values:
            return values[value.lower()]
    if any(name in EVENT_NAMES for name in event_names):
        return "retrieve"
    return None


def indexed_documents(
    operation: Operation, attributes: Mapping[str, Any]
) -> tuple[list[dict[str, Any]], bool]:
    """Documents flattened into ``attributes`` (all of a span's), in index order, as
    ``{"id", "score", "metadata"}`` raw values (checked later), and whether some were
    dropped: an index of :data:`MAX_DOCUMENTS` or more, or one that is not a number.

    >>> indexed_documents("retrieve", {"retrieval.documents.1.document.score": 0.5,
    ...                                "retrieval.documents.0.document.id": "a"})
    ([{'id': 'a'}, {'score': 0.5}], False)
    """
    for place, pattern in _INDEXED[operation]:
        found: dict[int, dict[str, Any]] = {}
        dropped = False
        fields = {place.id: "id", place.score: "score", place.metadata: "metadata"}
        for key, value in attributes.items():
            if not key.startswith(place.prefix):
                continue
            match = pattern.match(key)
            field = fields.get(match.group(2)) if match else None
            index = int(match.group(1)) if match else MAX_DOCUMENTS
            if index >= MAX_DOCUMENTS:
                dropped = True
                continue
            document = found.setdefault(index, {})
            if field is not None:
                document[field] = value
        if found or dropped:
            return [found[i] for i in sorted(found)], dropped
    return [], False


def event_documents(events: Iterable[tuple[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Documents from OpenLLMetry result events ``(name, attributes)``, in event order, as
    ``{"id", "score" | "distance", "metadata"}`` raw values.

    >>> event_documents([("db.query.result", {"db.query.result.id": "a",
    ...                                        "db.query.result.distance": 0.2})])
    [{'id': 'a', 'distance': 0.2}]
    """
    by_name = {e.event: e for e in EVENT_DOCUMENTS}
    documents = []
    for name, attributes in events:
        place = by_name.get(name)
        if place is None:
            continue
        keys = {"id": place.id, "score": place.score, "distance": place.distance,
                "metadata": place.metadata}
        documents.append({f: attributes[k] for f, k in keys.items() if k in attributes})
    return documents


def source_name(operation: Operation, attributes: Mapping[str, Any], span_name: str) -> str:
    """What a step searched (:data:`DATA_SOURCE`, else :data:`SPAN_METADATA_SOURCE_KEYS`) or,
    for a rerank, the reranker model (:data:`RERANKER_MODEL`); else the span's name (a
    LangChain retriever's class). Checked as a name (:func:`observer.core.validate.text`).

    >>> source_name("retrieve", {"db.system": "chroma", "gen_ai.data_source.id": "kb"}, "q")
    'kb'
    >>> source_name("retrieve", {"metadata": '{"ls_vector_store_provider": "FAISS"}'}, "q")
    'FAISS'
    >>> source_name("rerank", {}, "CohereRerank")
    'CohereRerank'
    """
    for name in RERANKER_MODEL if operation == "rerank" else DATA_SOURCE:
        value = validate.text(attributes.get(name))
        if value:
            return value
    metadata = attributes.get(SPAN_METADATA)
    if operation == "retrieve" and isinstance(metadata, str) and len(metadata) <= MAX_METADATA_CHARS:
        try:
            parsed = json.loads(metadata)
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, dict):
            for key in SPAN_METADATA_SOURCE_KEYS:
                value = validate.text(parsed.get(key))
                if value:
                    return value
    return validate.text(span_name)
