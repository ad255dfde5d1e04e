"""The join's checkpoint on the compacted topic ``observer.eval-join-state``.

Two kinds of record, JSON with ``"schema": "observer.eval-join-state/v1"``:

- a **target**, key ``t:["span"|"trace"|"session", tenant, id]``: the segment a join key
  leads to and when it was first seen (``seen_ms``, record time);
- a **pending** evaluation, key ``p:{partition}/{offset}`` (where it was read on
  ``observer.evals``): the record and its deadline (``due_ms``).

A target that leaves the index and an evaluation that leaves the buffer (joined, expired or
evicted) get a tombstone. Every record is produced, and acknowledged, with the batch that made
it, *before* that batch's input offsets are committed (the StageRunner guarantee): the
checkpoint always holds at least what the committed offsets say was read.
:func:`restore` reads them back at a start, from a :mod:`observer.core.compacted` store.

>>> target = Target("acme", "shop", "gpt-4o", "", seen_ms=5)
>>> out = target_output("s", ("span", "acme", "ab"), target)
>>> out.key
't:["span","acme","ab"]'
>>> state = restore({out.key: out.value})
>>> state.targets == [(("span", "acme", "ab"), target)]
True
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from observer.collectors.eval_join.pending import Pending
from observer.collectors.eval_join.targets import JoinKey, Target, eval_keys

from observer.core.bus import Output
from observer.core.records import EvalRecord, RecordError, decode, encode

log = logging.getLogger(__name__)

SCHEMA = "observer.eval-join-state/v1"
TARGET_PREFIX = "t:"
PENDING_PREFIX = "p:"


def target_key(key: JoinKey) -> str:
    # JSON: a session id may hold any character, and the key must read back unambiguously.
    return TARGET_PREFIX + json.dumps(list(key), separators=(",", ":"))


def pending_key(eval_id: str) -> str:
    return PENDING_PREFIX + eval_id


def _value(**fields: Any) -> bytes:
    return json.dumps({"schema": SCHEMA, **fields}, separators=(",", ":")).encode()


def target_output(topic: str, key: JoinKey, target: Target) -> Output:
    """The checkpoint record of one held join key."""
    return Output(topic, target_key(key), _value(
        kind="target", tenant=target.tenant, service=target.service, model=target.model,
        cluster=target.cluster, seen_ms=target.seen_ms))


def pending_output(topic: str, pending: Pending) -> Output:
    """The checkpoint record of one waiting evaluation."""
    return Output(topic, pending_key(pending.eval_id), _value(
        kind="pending", due_ms=pending.due_ms, record=json.loads(encode(pending.record))))


def tombstone(topic: str, key: str) -> Output:
    """Deletes ``key`` from the compacted topic."""
    return Output(topic, key, None)  # type: ignore[arg-type]  # a tombstone has no value


@dataclass
class Restored:
    """The checkpoint's contents, oldest first, ready to refill the index and the buffer."""

    targets: list[tuple[JoinKey, Target]] = field(default_factory=list)
    pending: list[Pending] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Keys of records that did not read back (deleted with the first batch)."""

    @property
    def now_ms(self) -> int:
        """The record time the checkpoint had reached (at least)."""
        return max([t.seen_ms for _, t in self.targets] + [0])


def _target(key: str, value: dict[str, Any]) -> tuple[JoinKey, Target]:
    kind, tenant, ident = json.loads(key[len(TARGET_PREFIX):])
    if kind not in ("span", "trace", "session"):
        raise ValueError(f"unknown join key kind {kind!r}")
    fields = [value[f] for f in ("tenant", "service", "model", "cluster")]
    if not all(isinstance(f, str) for f in (tenant, ident, *fields)):
        raise ValueError("a target's fields are strings")
    return (kind, tenant, ident), Target(*fields, seen_ms=int(value["seen_ms"]))


def _pending(key: str, value: dict[str, Any]) -> Pending:
    record = decode(value["record"])
    if not isinstance(record, EvalRecord):
        raise RecordError(f"not an evaluation: {record.schema_id}", "schema_error")
    keys = eval_keys(record.target, record.tenant, record.trace_id, record.span_id,
                     record.session_id)
    return Pending(key[len(PENDING_PREFIX):], record, keys, due_ms=int(value["due_ms"]))


def restore(values: Mapping[str, bytes]) -> Restored:
    """Targets and waiting evaluations from the checkpoint's latest values, oldest first; a
    record that does not read back is skipped and named in ``skipped``."""
    out = Restored()
    for key, raw in values.items():
        try:
            value = json.loads(raw)
            if not isinstance(value, dict) or value.get("schema") != SCHEMA:
                raise ValueError("unknown schema")
            if key.startswith(TARGET_PREFIX) and value.get("kind") == "target":
                out.targets.append(_target(key, value))
            elif key.startswith(PENDING_PREFIX) and value.get("kind") == "pending":
                out.pending.append(_pending(key, value))
            else:
                raise ValueError("unknown kind")
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as e:
            log.warning("eval join: skipping checkpoint record %r: %s", key[:200], e)
            out.skipped.append(key)
    out.targets.sort(key=lambda kt: kt[1].seen_ms)
    out.pending.sort(key=lambda p: p.due_ms)
    return out
