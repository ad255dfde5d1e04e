"""The admin API's references routes (``observer references`` over HTTP).

- ``GET /api/v1/references``: every segment's reference state (``?record_type=`` narrows;
  with ``&segment=`` too, that segment's versions and provenance, 404 when unknown);
- ``POST /api/v1/references/pin`` (``unpin``) with ``{"record_type": T, "segment": S}``:
  freeze the reference (or release it);
- ``POST /api/v1/references/rebaseline`` with the same and exactly one of ``"next": N``,
  ``"from_window": N``, ``"parquet": PATH`` (and ``force``, ``by``).

Reads answer from a view of ``observer.references`` (what the drift engine published); writes
send a command to ``observer.drift-commands`` and answer 202 with its id: the outcome appears
as the segment's ``last_command``. Writes pass the admin guard like every other write (the
bearer token, or same-machine requests without one). 404: an unknown segment or window;
409: a pinned reference without ``force``; 400/422: a bad body.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from observer.core.records import ReferenceCommand, ReferenceState
from observer.core.stage import View
from observer.drift import reference_client as client
from observer.drift.references import state_key

Sender = Callable[[ReferenceCommand], None]


def references_slot(r: Any) -> str:
    """A view of ``observer.references`` keeps the latest state per stream."""
    return state_key(r.record_type, r.segment_key) if isinstance(r, ReferenceState) else ""


class CommandBody(BaseModel):
    """The segment, and for rebaseline its source (exactly one)."""

    model_config = ConfigDict(extra="forbid")

    record_type: str = Field(min_length=1, max_length=64, description="llm, tools, ...")
    segment: str = Field(min_length=1, max_length=1024, description="The segment key.")

    next: int | None = Field(None, ge=1, le=10_000_000, description="The next N records.")
    from_window: int | None = Field(None, ge=1, description="A scored window's records.")
    parquet: str | None = Field(None, min_length=1, max_length=4096, description="A dataset.")
    force: bool = False
    by: str = Field("", max_length=256)


def references_router(view: View | None, drift_view: View | None, send: Sender) -> APIRouter:
    router = APIRouter()

    def states() -> dict[str, ReferenceState]:
        latest = [] if view is None else view.latest()
        return {state_key(s.record_type, s.segment_key): s for s in latest
                if isinstance(s, ReferenceState)}

    @router.get("/api/v1/references")
    def references(record_type: str | None = Query(None, max_length=64),
                   segment: str | None = Query(None, max_length=1024)) -> dict[str, Any]:
        """Every segment's references (current version, pin, history); with ``record_type``
        and ``segment``, that one segment's (404 when unknown)."""
        held = states()
        if record_type is not None and segment is not None:
            state = held.get(state_key(record_type, segment))
            if state is None:
                raise HTTPException(404, f"no reference is known for segment {segment[:200]!r} "
                                    f"of record type {record_type[:64]!r}")
            return {"references": [state.model_dump(by_alias=True)]}
        listed = sorted((s for s in held.values() if record_type in (None, s.record_type)
                         and segment in (None, s.segment_key)),
                        key=lambda s: (s.record_type, s.segment_key))
        return {"references": [s.model_dump(by_alias=True) for s in listed]}

    @router.post("/api/v1/references/{verb}", status_code=202)
    def command(verb: str, body: CommandBody) -> dict[str, Any]:
        """Send a pin, unpin or rebaseline command to the drift engine."""
        if verb not in ("pin", "unpin", "rebaseline"):
            raise HTTPException(404, f"unknown action {verb[:30]!r}; use pin, unpin or rebaseline")
        segment, record_type = body.segment, body.record_type
        state = states().get(state_key(record_type, segment))
        try:
            ranges: list[Any] = []
            if verb == "rebaseline" and body.from_window is not None and state is not None:
                held = [] if drift_view is None else [*drift_view.history(), *drift_view.latest()]
                ranges = client.window_ranges(held, segment, record_type, body.from_window)
            cmd = client.check(state, segment, record_type, verb, next=body.next,
                               from_window=body.from_window, parquet=body.parquet,
                               force=body.force, by=body.by or "admin-api", ranges=ranges)
        except client.CommandError as e:
            raise HTTPException(e.status, str(e)) from None
        send(cmd)
        return {"command_id": cmd.command_id, "command": cmd.model_dump(by_alias=True)}

    return router
