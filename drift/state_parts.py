"""Large checkpoint records split into parts, so that every record on ``observer.drift-state``
stays well under a megabyte (brokers' default ``message.max.bytes`` is about 1 MB).

Embedding features make checkpoints large: a 2000-record reference of two 256-dimension
features is ~2.8 MB even as base64 float32. A record whose encoding exceeds
:data:`PART_CHARS` keeps its small fields (positions, ranges, episode, results) under its own
key, and its bulky fields (:data:`BULKY`: the rows, columns, sketches and window state) move,
as one JSON text cut into pieces, into *part* records keyed ``{key}#{digest}/{i}``. The main
record then says ``"parts": [digest, count, chars]``.

Restores (:func:`join_parts`) put the bulky fields back; a record whose parts are not all
there, or do not add up to its digest, is left out as if it had never been written (the
chunk prefix rule of :mod:`observer.drift.checkpoint` then treats its batch as unacknowledged
and the replay redoes it). Parts are named by the digest of their content, so rewriting a
record never mixes old and new pieces; parts a newer write superseded are deleted once that
write is confirmed (:class:`StateParts`, one tick later).

>>> from observer.core.bus import Output
>>> parts = StateParts("s", part_chars=40)
>>> big = encode_state({"kind": "chunk", "segment_key": "a", "rows": {"x": list(range(30))}})
>>> outs = parts.split([Output("s", "llm/a/1/0", big)])
>>> len(outs), [o.key.split("#")[0] for o in outs][:2]
(4, ['llm/a/1/0', 'llm/a/1/0'])
>>> values = {o.key: decode_state(o.value) for o in outs}
>>> join_parts(values)["llm/a/1/0"]["rows"]["x"][-1]
29
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import pydantic_core

from observer.core.bus import Output
from observer.drift.checkpoint import decode_state, encode_state  # noqa: F401 (the doctest uses decode_state)
from observer.drift.embedding.columns import object_hook

log = logging.getLogger(__name__)

PART_CHARS = 256 * 1024
"""Largest record written whole, and the characters of JSON text per part (a part's own
escaping adds a little: every record stays far under 1 MB)."""

BULKY: tuple[tuple[str, ...], ...] = (
    ("rows",), ("columns",), ("sketches",), ("state",),
    ("reference", "columns"), ("reference", "sketches"),
)
"""Fields moved into parts: the values; everything a restore decides on stays in the record."""

SEPARATOR = "#"


def _json(value: Any) -> bytes:
    """The bytes of ``json.dumps(value, separators=(",", ":"))``, written in Rust. ASCII, as
    json's: a part of :data:`PART_CHARS` characters is then as many bytes.

    >>> value = {"a": [1, 0.1, float("nan"), 10**20], "s": "é漢😀"}
    >>> _json(value) == json.dumps(value, separators=(",", ":")).encode()
    True
    """
    return pydantic_core.to_json(value, inf_nan_mode="constants", ensure_ascii=True)


def _is_part(value: Any) -> bool:
    return isinstance(value, Mapping) and value.get("kind") == "part"


def _take(value: dict[str, Any]) -> dict[str, Any]:
    bulky: dict[str, Any] = {}
    for path in BULKY:
        holder: Any = value
        for step in path[:-1]:
            holder = holder.get(step) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and path[-1] in holder:
            bulky[".".join(path)] = holder.pop(path[-1])
    return bulky


def _put(value: dict[str, Any], bulky: Mapping[str, Any]) -> None:
    for dotted, field in bulky.items():
        *steps, last = dotted.split(".")
        holder = value
        for step in steps:
            holder = holder.setdefault(step, {})
        holder[last] = field


class StateParts:
    """Splits the large checkpoint records among a batch's outputs and deletes parts that
    newer writes superseded.

    Parameters
    ----------
    topic
        The checkpoint topic; outputs to other topics pass through.
    part_chars
        Default :data:`PART_CHARS` (smaller in tests).
    """

    def __init__(self, topic: str, part_chars: int | None = None) -> None:
        self.topic = topic
        self.part_chars = part_chars or PART_CHARS
        self._live: dict[str, set[str]] = {}  # record key -> its part keys on the topic
        self._obsolete: list[Output] = []  # deletions waiting for the next confirmed batch

    def learn(self, values: Mapping[str, bytes | None]) -> None:
        """Note the parts a restore found on the topic, so later writes can delete them; parts
        no record refers to any more (their record was deleted, or rewritten, before their
        deletion went out) are deleted with the next confirmed batch."""
        referenced: set[str] = set()
        found: list[str] = []
        for key, raw in values.items():
            if raw is None:
                continue
            if b'"kind":"part"' in raw[:120] and SEPARATOR in key:
                found.append(key)
            elif b'"parts":[' in raw:
                try:
                    digest, count, _ = json.loads(raw)["parts"]
                    referenced |= {f"{key}{SEPARATOR}{digest}/{i}" for i in range(int(count))}
                except (ValueError, KeyError, TypeError):
                    continue
        for key in found:
            self._live.setdefault(key.rsplit(SEPARATOR, 1)[0], set()).add(key)
            if key not in referenced:
                self._obsolete.append(Output(self.topic, key, None))

    def confirmed(self) -> list[Output]:
        """Deletions of superseded parts, safe now that the batch that superseded them went
        through (called from the engine's ``tick``)."""
        out, self._obsolete = self._obsolete, []
        return out

    def split(self, outputs: Iterable[Output]) -> list[Output]:
        """``outputs`` with every large checkpoint record replaced by its parts and a small
        main record."""
        result: list[Output] = []
        for o in outputs:
            if o.topic != self.topic:
                result.append(o)
                continue
            key = o.key.decode() if isinstance(o.key, bytes) else str(o.key)
            if o.value is None or len(o.value) <= self.part_chars:
                result.append(o)
                self._supersede(key, set())
                continue
            # Parsed and written again in Rust (pydantic-core): the same bytes as json's, about
            # 2x (parse) and 4x (write) faster on the megabytes of an embeddings reference.
            # Embedding rows stay encoded: only moved.
            value = pydantic_core.from_json(o.value)
            text = _json(_take(value)).decode()
            digest = hashlib.sha256(text.encode()).hexdigest()[:16]
            pieces = [text[i:i + self.part_chars] for i in range(0, len(text), self.part_chars)]
            keys = [f"{key}{SEPARATOR}{digest}/{i}" for i in range(len(pieces))]
            result += [Output(o.topic, k, encode_state({"kind": "part", "of": key, "i": i,
                                                        "data": piece}))
                       for i, (k, piece) in enumerate(zip(keys, pieces))]
            value["parts"] = [digest, len(pieces), len(text)]
            # Written again (a replay): no longer to be deleted.
            self._obsolete = [d for d in self._obsolete if d.key not in keys]
            result.append(Output(o.topic, o.key, _json(value)))
            self._supersede(key, set(keys))
        return result

    def _supersede(self, key: str, keys: set[str]) -> None:
        old = self._live.get(key, set()) - keys
        self._obsolete += [Output(self.topic, k, None) for k in sorted(old)]
        if keys:
            self._live[key] = keys
        else:
            self._live.pop(key, None)


def join_parts(values: Mapping[str, Any]) -> dict[str, Any]:
    """Decoded checkpoint values with their parts joined back; part records and records
    whose parts are incomplete are left out (see the module doc)."""
    pieces = {k: v for k, v in values.items() if _is_part(v)}
    out: dict[str, Any] = {}
    for key, value in values.items():
        if _is_part(value):
            continue
        if not isinstance(value, dict) or "parts" not in value:
            out[key] = value
            continue
        try:
            digest, count, chars = value["parts"]
            text = "".join(pieces[f"{key}{SEPARATOR}{digest}/{i}"]["data"] for i in range(count))
        except (KeyError, TypeError, ValueError):
            log.warning("checkpoint %r misses some of its parts; treated as not written", key)
            continue
        if len(text) != chars or hashlib.sha256(text.encode()).hexdigest()[:16] != digest:
            log.warning("checkpoint %r: its parts do not match its digest; treated as not written", key)
            continue
        joined = {k: v for k, v in value.items() if k != "parts"}
        _put(joined, json.loads(text, object_hook=object_hook))
        out[key] = joined
    return out
