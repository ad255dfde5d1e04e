"""Vectors that arrive in traces, used as sent.

Two layouts (table :data:`LAYOUTS`):

- OpenInference EMBEDDING spans: ``embedding.embeddings.<i>.embedding.vector`` (a list of
  numbers), ``embedding.embeddings.<i>.embedding.text`` and ``embedding.model_name``;
- OpenLLMetry vector-database spans: ``db.query.embeddings`` span events whose
  ``db.query.embeddings.vector`` attribute is the query vector (a list, or its JSON text as
  OpenLLMetry's JavaScript SDK sends it).

The embedder id is ``trace:<model or "unknown">/<dimension>``: another embedding model or
dimension is another id, so another stream in the drift engine, never drift. Every value is
hostile: a vector that is not a list of finite numbers, is longer than ``max_dimension``, or
whose span mixes dimensions is dropped and counted in
``observer_trace_vectors_dropped_total{reason}``; the span's other records are unaffected.

>>> found = from_span({"embedding.model_name": "text-embedding-3-small",
...                    "embedding.embeddings.0.embedding.vector": [0.6, 0.8],
...                    "embedding.embeddings.0.embedding.text": "hello"}, [])
>>> found.embedder, found.vectors[0].tolist(), found.texts
('trace:text-embedding-3-small/2', [0.6000000238418579, 0.800000011920929], ['hello'])
>>> from_span({"embedding.embeddings.0.embedding.vector": [float("nan")]}, []) is None
True
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import Counter

from observer.core import validate

DROPPED = Counter(
    "observer_trace_vectors_dropped_total",
    "Embedding vectors sent in traces that the normaliser dropped, by reason (not_numeric, "
    "not_finite, too_long, empty, ragged).",
    ["reason"],
)

OPENINFERENCE_PREFIX = "embedding.embeddings."
OPENINFERENCE_MODEL = "embedding.model_name"
OPENLLMETRY_EVENT = "db.query.embeddings"
OPENLLMETRY_VECTOR = "db.query.embeddings.vector"
# Attribute name prefixes the normaliser converts for this module (the rest stay protobuf).
ATTRIBUTE_PREFIXES: tuple[str, ...] = (OPENINFERENCE_PREFIX, OPENINFERENCE_MODEL)
MAX_INDEX_DIGITS = 6
MAX_MODEL_CHARS = 200
DEFAULT_MAX_DIMENSION = 4096

Event = tuple[str, Mapping[str, Any]]


@dataclass
class TraceVectors:
    """A span's vectors, all of one dimension, with their texts ("" where none was sent)."""

    embedder: str
    vectors: list[np.ndarray] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)


class Oversized:
    """Stands for an array attribute longer than any vector we take: it is never converted."""


def vector(value: Any, max_dimension: int = DEFAULT_MAX_DIMENSION) -> np.ndarray | str:
    """``value`` as a float32 vector, or the reason it is not one.

    >>> vector([1, 2.5]).tolist(), vector("[1, 2]").tolist()
    ([1.0, 2.5], [1.0, 2.0])
    >>> vector(["a"]), vector([1e39]), vector([]), vector([0.0] * 5, max_dimension=4)
    ('not_numeric', 'not_finite', 'empty', 'too_long')
    """
    if isinstance(value, Oversized):
        return "too_long"
    if isinstance(value, str):
        # A JSON list: bounded before parsing (a number needs at least 2 characters).
        if len(value) > max_dimension * 32 + 2:
            return "too_long"
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            return "not_numeric"
    if not isinstance(value, list | tuple):
        return "not_numeric"
    if not value:
        return "empty"
    if len(value) > max_dimension:
        return "too_long"
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in value):
        return "not_numeric"
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            array = np.asarray(value, dtype=np.float64).astype(np.float32)
    except (OverflowError, ValueError):  # an int past float64
        return "not_finite"
    if not np.isfinite(array).all():
        return "not_finite"
    return array


def _openinference(attributes: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """``index -> {"vector": ..., "text": ...}`` of ``embedding.embeddings.<i>.embedding.*``."""
    by_index: dict[int, dict[str, Any]] = {}
    for name, value in attributes.items():
        if not name.startswith(OPENINFERENCE_PREFIX):
            continue
        index, _, key = name[len(OPENINFERENCE_PREFIX):].partition(".")
        if not (index.isascii() and index.isdigit() and len(index) <= MAX_INDEX_DIGITS):
            continue
        if key in ("embedding.vector", "embedding.text"):
            by_index.setdefault(int(index), {})[key.rsplit(".", 1)[1]] = value
    return by_index


def from_span(attributes: Mapping[str, Any], events: Sequence[Event], model: str = "",
              max_dimension: int = DEFAULT_MAX_DIMENSION) -> TraceVectors | None:
    """The vectors a span sent (OpenInference attributes, else OpenLLMetry events); None when
    it sent none that are usable. ``model`` is the span's model, used when the layout names
    none."""
    sent: list[tuple[Any, Any]] = [
        (item.get("vector"), item.get("text", ""))
        for _, item in sorted(_openinference(attributes).items()) if "vector" in item
    ]
    if not sent:
        sent = [(a.get(OPENLLMETRY_VECTOR), "") for name, a in events
                if name == OPENLLMETRY_EVENT and OPENLLMETRY_VECTOR in a]
    if not sent:
        return None
    kept: list[tuple[np.ndarray, str]] = []
    for value, text in sent:
        found = vector(value, max_dimension)
        if isinstance(found, str):
            DROPPED.labels(found).inc()
        else:
            kept.append((found, text if isinstance(text, str) else ""))
    if len({len(v) for v, _ in kept}) > 1:  # one model gives one dimension: not to be trusted
        DROPPED.labels("ragged").inc(len(kept))
        return None
    if not kept:
        return None
    named = attributes.get(OPENINFERENCE_MODEL)
    name = validate.text(named if isinstance(named, str) else model, max_chars=MAX_MODEL_CHARS)
    return TraceVectors(embedder=f"trace:{name or 'unknown'}/{len(kept[0][0])}",
                        vectors=[v for v, _ in kept], texts=[t for _, t in kept])

