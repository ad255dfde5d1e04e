"""Reference versions: each segment's references as first-class, versioned state.

Per stream (segment x record type) the engine holds :class:`Versions`: the current reference's
:class:`~observer.core.records.ReferenceVersionInfo` (version 1, 2, ..., its ``source``, when it
was made, its record count and, for stream-built ones, its Kafka offsets), whether it is
pinned, a ``rebaseline --next`` being collected, and the older versions (metadata always;
values of the last ``drift.reference_history_values``). They travel inside the stream's
reference checkpoint record (``{record_type}/{segment}/ref`` on ``observer.drift-state``), so
they are written atomically with the reference itself and survive every restart the
reference survives; every change is also published to ``observer.references``
(:class:`~observer.core.records.ReferenceState`), the read model of ``observer references``.

Pinning freezes a reference against automatic changes: :func:`rebaseline_refusal` is the one
rule every re-baseline goes through (operator commands, and re-baselining on promotion).

>>> v = Versions(current=first_version("first_n", 10, at=5))
>>> v.current.version, v.current.source, rebaseline_refusal(v, force=False)
(1, 'first_n', None)
>>> v.pinned = True
>>> rebaseline_refusal(v, force=False)
'reference v1 is pinned: unpin it first, or force the rebaseline'
>>> rebaseline_refusal(v, force=True) is None, rebaseline_refusal(v, automatic=True, force=True)
(True, 'reference v1 is pinned: automatic re-baselining leaves it as it is')
>>> Versions.from_json(v.to_json()) == v
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from observer.core.records import ReferenceState, ReferenceVersionInfo, OffsetRange

INITIAL_SOURCES = {"first_n": "first_n", "first_window": "first_window",
                   "time_range": "time_range", "parquet": "parquet"}
"""``drift.reference`` -> the source of a stream's first reference version."""


def first_version(source: str, n: int, *, at: int, detail: dict[str, Any] | None = None,
                  ) -> ReferenceVersionInfo:
    """Version 1 of a stream's reference."""
    return ReferenceVersionInfo(version=1, source=source, created_at_unix_nano=at, n=n,
                                detail=detail or {})


@dataclass
class Versions:
    """One stream's reference versions (see the module docstring)."""

    current: ReferenceVersionInfo | None = None
    pinned: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    """Older versions, oldest first: ``{"info": ..., "values": reference values or None}``."""
    collecting: dict[str, Any] | None = None
    """``rebaseline --next`` in progress: version, records, window, command_id, by."""
    last_command: dict[str, Any] | None = None

    def next_version(self) -> int:
        known = [h["info"]["version"] for h in self.history]
        if self.current is not None:
            known.append(self.current.version)
        return max(known, default=0) + 1

    def applied(self, command_id: str) -> bool:
        """Whether a rebaseline command already took effect (a replay after a restart)."""
        infos = [h["info"] for h in self.history]
        if self.current is not None:
            infos.append(self.current.model_dump(mode="json"))
        if self.collecting is not None and self.collecting.get("command_id") == command_id:
            return True
        return any(i.get("detail", {}).get("command_id") == command_id for i in infos)

    def retire(self, values: dict[str, Any] | None, keep_values: int,
               ranges: list[OffsetRange] = ()) -> None:  # type: ignore[assignment]
        """The current version (whose records were at ``ranges``) becomes history, with its
        values; only the newest ``keep_values`` older versions keep theirs."""
        if self.current is None:
            return
        info = self.current.model_copy(update={"ranges": list(ranges)}).model_dump(mode="json")
        self.history.append({"info": info, "values": values})
        self.current = None
        kept = 0
        for entry in reversed(self.history):
            if entry["values"] is None:
                continue
            kept += 1
            if kept > keep_values:
                entry["values"] = None

    def to_json(self) -> dict[str, Any]:
        return {
            "current": None if self.current is None else self.current.model_dump(mode="json"),
            "pinned": self.pinned,
            "history": self.history,
            "last_command": self.last_command,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Versions:
        data = data or {}
        current = data.get("current")
        return cls(
            current=None if current is None else ReferenceVersionInfo.model_validate(current),
            pinned=bool(data.get("pinned", False)),
            history=list(data.get("history", [])),
            last_command=data.get("last_command"),
        )


def without_ranges(versions: dict[str, Any]) -> dict[str, Any]:
    """Stored versions for a new broker incarnation, whose offsets mean nothing to it
    (:func:`observer.drift.local_state.rebase`): the older versions' ranges emptied.

    >>> without_ranges({"history": [{"info": {"ranges": [{}]}, "values": {"ranges": [{}]}}]})
    {'history': [{'info': {'ranges': []}, 'values': {'ranges': []}}]}
    """
    history = []
    for entry in versions.get("history", []):
        info = {**entry.get("info", {}), "ranges": []}
        values = entry.get("values")
        history.append({**entry, "info": info,
                        "values": None if values is None else {**values, "ranges": []}})
    return {**versions, "history": history}


def rebaseline_refusal(versions: Versions, *, force: bool, automatic: bool = False) -> str | None:
    """Why a re-baseline of this stream must not happen now, or ``None`` when it may.

    ``automatic``: a re-baseline nobody asked for explicitly (on promotion): a pinned
    reference always refuses it, ``force`` or not. An operator's ``force`` overrides a pin.
    """
    if not versions.pinned or (force and not automatic):
        return None
    version = versions.current.version if versions.current is not None else "?"
    if automatic:
        return f"reference v{version} is pinned: automatic re-baselining leaves it as it is"
    return f"reference v{version} is pinned: unpin it first, or force the rebaseline"


def state_record(segment: dict[str, str], segment_key: str, record_type: str,
                 versions: Versions, ranges: list[OffsetRange]) -> ReferenceState:
    """What ``observer.references`` says of one stream (values left out)."""
    infos = [ReferenceVersionInfo.model_validate({**h["info"], "values_kept": h["values"] is not None})
             for h in versions.history]
    if versions.current is not None:
        infos.append(versions.current.model_copy(update={"ranges": list(ranges)}))
    collecting = None
    if versions.collecting is not None:
        collecting = {k: versions.collecting[k] for k in ("version", "records", "window", "command_id")
                      if k in versions.collecting}
    return ReferenceState(
        segment=segment, segment_key=segment_key, record_type=record_type,
        current=None if versions.current is None else versions.current.version,
        pinned=versions.pinned, versions=infos, collecting=collecting,
        last_command=versions.last_command,
    )


def state_key(record_type: str, segment_key: str) -> str:
    """Key of a stream's record on ``observer.references`` (and of its commands).

    >>> state_key("llm", "shop|m1")
    'llm/shop|m1'
    """
    return f"{record_type}/{segment_key}"


def parse_state_key(key: str) -> tuple[str, str]:
    """``(record_type, segment_key)`` of a :func:`state_key` (a segment key may hold "/").

    >>> parse_state_key("llm/shop|m/1")
    ('llm', 'shop|m/1')
    """
    record_type, _, segment = key.partition("/")
    return record_type, segment
