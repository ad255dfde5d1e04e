"""Engine state checkpoints on the compacted topic ``observer.drift-state``.

What is stored, per stream (one segment and record type), all JSON with
``"schema": "observer.drift-state/v1"``:

- a **reference** record, key ``{record_type}/{segment_key}/ref``: the reference window's values
  and Kafka offset ranges. Written once, when the reference closes.
- **chunk** records, key ``{record_type}/{segment_key}/{window}/{seq}``: the values appended to
  the open window ``window`` during one processed batch (``seq`` counts the batches), plus the
  stream's *positions* (the last input offset it absorbed, per topic partition) and the open
  window's offset ranges, the window where the stream's current drift episode began
  (``episode_start``, ``null`` outside an episode), and the values fed to its degradation
  detectors during the batch (:mod:`observer.drift.degradation`; chunk 0 also has their state as the
  window opened). The first chunk of a window (``seq`` 0) also carries the drift results
  emitted in that batch and, when the reference closed in it, the reference inline. Every
  chunk has a ``horizon_ms``: the earliest Unix ms at which a result that a replay from this
  chunk's positions could derive again may have been published (the batch's processing time,
  or earlier while the engine is still replaying what a killed predecessor had published;
  :mod:`observer.drift.published`).

Embedding rows are stored as ``{"@vec": base64 of float32, "t": trace id, "s": span id}``
(:mod:`observer.drift.embedding.columns`), and a record larger than 256 kB is written in parts
(:mod:`observer.drift.state_parts`), so every record stays well under a megabyte.

One chunk per touched stream per batch, and only the new values: checkpoint bytes grow with
the input, not with window size x batches. Every chunk is produced, and acknowledged, together
with the batch's drift results *before* the input offsets are committed (the StageRunner
guarantee), so a stream's checkpoint always covers at least what the committed offsets say.

Restoring (:func:`restore_streams`): the latest window of a stream is the highest ``window``
among its chunks; its chunks 0..k in order give the open window's values, chunk k the
positions. A batch's chunk is only sent after the previous batch was fully acknowledged, so
the chunks of a window are always a gap-free prefix, and a chunk that carries a window
advance also carries what it needs (the reference inline, the results). Records that are
confirmed (a later batch went through) are cleaned up: old windows' chunks get tombstones,
and chunk 0 of a window is rewritten without its results and inline reference.

:mod:`observer.core.compacted` reads the whole topic back (latest value per key), from Kafka
or, for offline runs and tests, from a dict.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pydantic_core

from observer.drift.embedding.columns import json_default, object_hook

log = logging.getLogger(__name__)

SCHEMA = "observer.drift-state/v1"
"""Value schema of every checkpoint record."""

TP = tuple[str, int]


# --- keys and values --------------------------------------------------------------------------


def reference_key(record_type: str, segment_key: str) -> str:
    return f"{record_type}/{segment_key}/ref"


def chunk_key(record_type: str, segment_key: str, window: int, seq: int) -> str:
    """Key of one chunk.

    >>> chunk_key("llm", "shop|m1", 3, 0)
    'llm/shop|m1/3/0'
    """
    return f"{record_type}/{segment_key}/{window}/{seq}"


def encode_state(value: Mapping[str, Any]) -> bytes:
    """The checkpoint record's bytes: the same as ``json.dumps(..., separators=(",", ":"))``
    (ints stay ints, floats their shortest round-trip repr, NaN as ``NaN``), written by
    pydantic's Rust serialiser, about 1.3x faster on the engine's chunks. Embedding rows are
    base64 float32 (:mod:`observer.drift.embedding.columns`), exact and ~15x smaller than
    floats.

    >>> encode_state({"n": 2, "x": [0.1, float("nan"), 10**20]})
    b'{"schema":"observer.drift-state/v1","n":2,"x":[0.1,NaN,100000000000000000000]}'
    """
    return pydantic_core.to_json({"schema": SCHEMA, **value}, fallback=json_default,
                                 inf_nan_mode="constants")


def decode_state(raw: bytes) -> Any:
    """A checkpoint value back, embedding rows as :class:`VectorRow` again."""
    return json.loads(raw, object_hook=object_hook)


def positions_to_json(positions: Mapping[TP, int]) -> list[list[Any]]:
    return [[t, p, o] for (t, p), o in sorted(positions.items())]


def positions_from_json(rows: Iterable[list[Any]]) -> dict[TP, int]:
    return {(str(t), int(p)): int(o) for t, p, o in rows}


@dataclass
class RestoredStream:
    """What a stream's checkpoints say, ready to rebuild it."""

    segment: dict[str, str]
    segment_key: str
    record_type: str
    window: int
    """The open window's index."""
    chunks: int
    """Chunks written for the open window (the next one gets this ``seq``)."""
    columns: dict[str, list[Any]]
    """The open window's values so far."""
    open_ranges: dict[TP, list[int]]
    positions: dict[TP, int]
    reference: dict[str, Any] | None
    """``{"n", "columns", "ranges"}`` (and ``sketches``, ``external``, ``start``/``end`` when
    written) or ``None`` while window 0 (the reference) is open."""
    unconfirmed_results: list[bytes] = field(default_factory=list)
    """Results of the batch that wrote chunk 0 of the open window, if not yet confirmed."""
    stale_keys: list[str] = field(default_factory=list)
    """Chunks of older windows whose tombstones were not written yet."""
    first_chunk: dict[str, Any] | None = None
    """The open window's chunk 0 as stored (rewritten without extras once confirmed)."""
    degradation_snapshot: dict[str, Any] | None = None
    """Degradation detectors' state when the open window started (from its chunk 0)."""
    degradation_values: dict[str, list[float]] = field(default_factory=dict)
    """Values fed to each degradation detector after that snapshot, in order."""
    marks: list[tuple[int | None, dict[TP, int]]] = field(default_factory=list)
    """Per chunk of the open window: its ``horizon_ms`` (``None`` when not written) and its
    positions, to tell chunks of committed batches (see :mod:`observer.drift.published`)."""
    episode_start: int | None = None
    """The window where the stream's current drift episode began; ``None`` when the last
    scored window did not drift (or chunks written before episodes were checkpointed)."""
    reference_inline: bool = False
    """The reference came from a chunk (its reference record may be older or missing)."""


def _degradation_values(chunks: list[dict[str, Any]]) -> dict[str, list[float]]:
    values: dict[str, list[float]] = {}
    for c in chunks:
        for name, fed in (c.get("degradation") or {}).get("values", {}).items():
            values.setdefault(name, []).extend(fed)
    return values


def restore_streams(values: Mapping[str, bytes | None]) -> dict[tuple[str, str], RestoredStream]:
    """Rebuild every stream from the latest checkpoint records, keyed ``(segment_key, type)``."""
    from observer.drift.state_parts import join_parts  # it builds on this module

    refs: dict[tuple[str, str], dict[str, Any]] = {}
    chunks: dict[tuple[str, str], dict[int, dict[int, tuple[str, dict[str, Any]]]]] = {}
    decoded: dict[str, Any] = {}
    for key, raw in values.items():
        if raw is None:
            continue
        try:
            decoded[key] = decode_state(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("skipping an undecodable checkpoint %r", key)
    # Large records come in parts (drift.state_parts): whole again, or left out if incomplete.
    for key, value in join_parts(decoded).items():
        if not isinstance(value, dict) or value.get("schema") != SCHEMA:
            log.warning("skipping checkpoint %r with an unknown schema", key)
            continue
        stream = (value["segment_key"], value["record_type"])
        if value["kind"] == "reference":
            refs[stream] = value
        elif value["kind"] == "chunk":
            by_window = chunks.setdefault(stream, {})
            by_window.setdefault(int(value["window"]), {})[int(value["seq"])] = (key, value)
    restored: dict[tuple[str, str], RestoredStream] = {}
    for stream, by_window in chunks.items():
        window = max(by_window)
        seqs = by_window[window]
        prefix = []
        while len(prefix) in seqs:
            prefix.append(seqs[len(prefix)][1])
        if not prefix:
            log.warning("checkpoint of %s/%s misses chunk 0 of window %d", *stream, window)
            continue
        last = prefix[-1]
        first = prefix[0]
        # A reference record without a window past 0 is from a batch that was not fully
        # acknowledged: window 0 is still open and will close again on the replay. A chunk's
        # inline reference is at least as new as the reference record (a rebaseline or pin
        # rewrites both in one batch, and only a confirmed batch loses the inline copy).
        inline = [c["reference"] for c in prefix if c.get("reference")]
        reference = (inline[-1] if inline else refs.get(stream)) if window > 0 else None
        if window > 0 and reference is None:
            log.warning("checkpoint of %s/%s has window %d but no reference", *stream, window)
            continue
        columns: dict[str, list[Any]] = {}
        for c in prefix:
            for name, values_ in c["rows"].items():
                columns.setdefault(name, []).extend(values_)
        restored[stream] = RestoredStream(
            segment=dict(last["segment"]),
            segment_key=stream[0],
            record_type=stream[1],
            window=window,
            chunks=len(prefix),
            columns=columns,
            open_ranges={(t, int(p)): [int(a), int(b)] for t, p, a, b in last["open_ranges"]},
            positions=positions_from_json(last["positions"]),
            reference=(
                # n, columns, ranges; sketches, external, start/end when the engine wrote them
                {k: v for k, v in reference.items()
                 if k not in ("schema", "kind", "segment", "segment_key", "record_type")}
                if reference else None
            ),
            # A second chunk proves the batch of the first went through: its results are out.
            unconfirmed_results=(
                [r.encode() for r in first.get("results", [])] if len(prefix) == 1 else []
            ),
            stale_keys=sorted(
                key for w, s in by_window.items() if w != window for key, _ in s.values()
            ) + [key for seq, (key, _) in seqs.items() if seq >= len(prefix)],
            first_chunk=first,
            degradation_snapshot=(first.get("degradation") or {}).get("snapshot"),
            degradation_values=_degradation_values(prefix),
            marks=[(c.get("horizon_ms"), positions_from_json(c["positions"])) for c in prefix],
            episode_start=last.get("episode_start"),
            reference_inline=bool(inline) and window > 0,
        )
    return restored
