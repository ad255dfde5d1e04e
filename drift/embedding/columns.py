"""How the drift engine holds embedding features: one :class:`VectorRow` per record, a seeded
:class:`Reservoir` per window in sketch mode, and a compact checkpoint encoding.

A row keeps the vector as float32 plus the ids of the record it came from (and its content
snippet, present only under ``normalizer.content.capture``), so a drifted window can name the
records behind the verdict. In checkpoints (``observer.drift-state``) a row is a small JSON
object whose vector is base64 of its little-endian float32 bytes (``{"@vec": ...}``), about
1.37 bytes per dimension instead of ~20 for a JSON float list: :func:`json_default` encodes it
and :func:`object_hook` decodes it, so every place a column is checkpointed (chunks,
references, time-window panes, reservoirs) carries rows as they are.

>>> row = VectorRow(np.array([0.5, -1.0], dtype=np.float32), "t1", "s1")
>>> import json
>>> text = json.dumps({"rows": [row]}, default=json_default)
>>> text
'{"rows": [{"@vec": "AAAAPwAAgL8=", "t": "t1", "s": "s1"}]}'
>>> json.loads(text, object_hook=object_hook)["rows"][0] == row
True
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from observer.core import vectors

TAG = "@vec"
"""Key marking an encoded :class:`VectorRow` in checkpoint JSON."""

EMBEDDING_KIND = "embedding"

BYTES_PER_ROW_OVERHEAD = 200
"""Python objects around one row's vector (the row, its array header, two id strings),
measured with ``tracemalloc`` (``tests/test_drift_embeddings.py`` prints per-segment figures)."""


class VectorRow:
    """One record's vector of one embedding feature, and where it came from.

    >>> VectorRow([1, 2], "t", "s").vector.dtype
    dtype('float32')
    """

    __slots__ = ("vector", "trace_id", "span_id", "snippet")

    def __init__(self, vector: Any, trace_id: str, span_id: str, snippet: str | None = None) -> None:
        with np.errstate(over="ignore"):  # too large for float32: inf, which the engine rejects
            self.vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        self.trace_id = trace_id
        self.span_id = span_id
        self.snippet = snippet

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, VectorRow) and self.trace_id == other.trace_id
                and self.span_id == other.span_id and self.snippet == other.snippet
                and np.array_equal(self.vector, other.vector))

    def __repr__(self) -> str:
        return f"VectorRow(dim={len(self.vector)}, trace_id={self.trace_id!r}, span_id={self.span_id!r})"

    def nbytes(self) -> int:
        return self.vector.nbytes + BYTES_PER_ROW_OVERHEAD


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)``: a :class:`VectorRow` as ``{"@vec": base64, "t", "s"[, "x"]}``."""
    if isinstance(value, VectorRow):
        out = {TAG: vectors.to_base64(value.vector),  # as on observer.embeddings
               "t": value.trace_id, "s": value.span_id}
        if value.snippet is not None:
            out["x"] = value.snippet
        return out
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def object_hook(obj: dict[str, Any]) -> Any:
    """``json.loads(object_hook=...)``: an encoded row back to a :class:`VectorRow`."""
    if TAG in obj and isinstance(obj[TAG], str):
        vector = np.frombuffer(base64.b64decode(obj[TAG]), dtype="<f4").astype(np.float32)
        return VectorRow(vector, str(obj.get("t", "")), str(obj.get("s", "")), obj.get("x"))
    return obj


def snippet_field(feature: str) -> str:
    """The record field holding a feature's content snippet.

    >>> snippet_field("prompt_embedding")
    'prompt_snippet'
    """
    return feature.removesuffix("_embedding") + "_snippet"


def embedding_value(record: Any, feature: str) -> VectorRow | None:
    """A record's row of one embedding feature (``None`` when the record has no vector)."""
    vector = getattr(record, feature, None)
    if vector is None:
        return None
    snippet = getattr(record, snippet_field(feature), None)
    return VectorRow(vector, str(getattr(record, "trace_id", "")),
                     str(getattr(record, "span_id", "")),
                     snippet if isinstance(snippet, str) else None)


def as_row(value: Any) -> VectorRow | None:
    """A row from what a column may hold: a row, an encoded row, a plain list (a Parquet
    reference's list column), or ``None``."""
    if value is None or isinstance(value, VectorRow):
        return value
    if isinstance(value, Mapping):
        row = object_hook(dict(value))
        return row if isinstance(row, VectorRow) else None
    return VectorRow(value, "", "")


def stack(values: Iterable[Any], dimension: int | None = None) -> tuple[np.ndarray, list[VectorRow]]:
    """The rows of a column as an ``(n, d)`` float32 matrix, and the rows kept: missing
    values are skipped, and so are rows of another dimension than ``dimension`` (default:
    the first row's).

    >>> m, rows = stack([VectorRow([1, 2], "a", "x"), None, VectorRow([1, 2, 3], "b", "y")])
    >>> m.shape, [r.trace_id for r in rows]
    ((1, 2), ['a'])
    """
    rows = [r for r in (as_row(v) for v in values) if r is not None]
    if rows and dimension is None:
        dimension = len(rows[0].vector)
    rows = [r for r in rows if len(r.vector) == dimension]
    if not rows:
        return np.zeros((0, dimension or 0), dtype=np.float32), []
    return np.stack([r.vector for r in rows]), rows


def _mix(seed: int, i: int) -> int:
    """SplitMix64 of ``(seed, i)``: a reproducible draw per position, so a replay of the same
    rows (a restart) samples exactly the same reservoir, whatever happened in between."""
    z = (seed * 0x9E3779B97F4A7C15 + i * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & (2**64 - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return z ^ (z >> 31)


class Reservoir:
    """Sketch mode's summary of an embedding column: a uniform sample of at most ``size``
    rows (Vitter's algorithm R, with :func:`_mix` draws, so it is deterministic).

    >>> r = Reservoir(size=3)
    >>> r.extend(VectorRow([float(i)], f"t{i}", "s") for i in range(100))
    >>> r.n, len(r.rows), r.rows == Reservoir.from_json(r.to_json()).rows
    (100, 3, True)
    """

    kind = EMBEDDING_KIND

    def __init__(self, size: int = 512, seed: int = 0) -> None:
        if size < 1:
            raise ValueError(f"reservoir size must be at least 1, got {size}")
        self.size, self.seed = size, seed
        self.n = 0
        self.rows: list[VectorRow] = []

    def add(self, value: Any) -> None:
        row = as_row(value)
        if row is None:
            return
        self.n += 1
        if len(self.rows) < self.size:
            self.rows.append(row)
            return
        j = _mix(self.seed, self.n) % self.n
        if j < self.size:
            self.rows[j] = row

    def extend(self, values: Iterable[Any]) -> None:
        for v in values:
            self.add(v)

    def flush(self) -> None:
        """Nothing buffered (the sketch protocol)."""

    def merge(self, other: Reservoir) -> None:
        """Both populations in one sample: each side contributes in proportion to the rows it
        saw (a sample's order is already random, so its first rows are a sample too)."""
        total = self.n + other.n
        if total == 0:
            return
        keep = min(self.size, len(self.rows) + len(other.rows))
        mine = min(len(self.rows), round(keep * self.n / total))
        theirs = min(len(other.rows), keep - mine)
        mine = min(len(self.rows), keep - theirs)
        self.rows = self.rows[:mine] + other.rows[:theirs]
        self.n = total

    def nbytes(self) -> int:
        return sum(r.nbytes() for r in self.rows)

    def to_json(self) -> dict[str, Any]:
        # The rows stay VectorRow objects: encode_state writes them as base64 (json_default).
        return {"kind": self.kind, "size": self.size, "seed": self.seed, "n": self.n,
                "rows": list(self.rows)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Reservoir:
        r = cls(int(data["size"]), int(data.get("seed", 0)))
        r.n = int(data["n"])
        r.rows = [row for row in (as_row(v) for v in data["rows"]) if row is not None]
        return r


def state_values(kinds: Sequence[str]) -> int:
    """What a stream's features cost against ``drift.exact_budget_mb``, in raw-value units
    (:data:`observer.drift.sketch.EXACT_BYTES_PER_VALUE`, 40 bytes): an embedding row of the
    default 256 dimensions is ~1.2 kB, so an embedding feature counts as 32 values.

    >>> state_values(["numeric", "embedding"])
    33
    """
    return sum(32 if k == EMBEDDING_KIND else 1 for k in kinds)


def first_dimension(*columns: Any) -> int | None:
    """The length of the first vector found in checkpointed columns or references (nested
    dicts and lists), or ``None``: what a restored embedding stream's vectors measure.

    >>> first_dimension({"x": [None, VectorRow([1, 2, 3], "t", "s")]}, None)
    3
    """
    todo = list(columns)
    while todo:
        item = todo.pop(0)
        if isinstance(item, VectorRow):
            return len(item.vector)
        if isinstance(item, Mapping):
            todo.extend(item.values())
        elif isinstance(item, (list, tuple)):
            todo.extend(item)
    return None
