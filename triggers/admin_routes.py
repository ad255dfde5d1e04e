"""The trigger stage's admin routes: decisions and deliveries, and approving held decisions.

Mounted by the admin API (``observer.admin``) behind its guard, in every process: the events
come from ``observer.triggers`` through a view; the ledger (decisions, approvals) only where
the trigger stage runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, Field

from observer.core.records import Record, TriggerEvent
from observer.core.stage import AdminContext, View
from observer.triggers.ledger import ApprovalConflict, UnknownEpisode

# The path's verb -> the verdict the ledger records.
VERDICTS = {"approve": "approved", "reject": "rejected"}
APPROVAL_ERRORS: dict[type[Exception], int] = {UnknownEpisode: 404, ApprovalConflict: 409}

Decisions = Callable[[int], "list[dict[str, Any]] | None"]
Resolve = Callable[[str, str, str, str], "tuple[dict[str, Any], bool] | None"]


class ApprovalRequest(BaseModel):
    """Optional body of an approve or reject request."""

    by: str = Field("", max_length=200, description="Who decides (recorded as given).")
    note: str = Field("", max_length=2000, description="Why; kept in the ledger and the event.")


def trigger_slot(r: Record) -> str:
    """A view of ``observer.triggers`` keeps the latest event per episode."""
    return r.episode_id if isinstance(r, TriggerEvent) else ""


def routes(ctx: AdminContext) -> APIRouter:
    """The routes over this process's trigger stage (``ctx.processor()``), if it runs here."""
    from observer.triggers.stage import TriggerStage

    def ledger() -> Any:
        stage = ctx.processor()
        return stage.ledger if isinstance(stage, TriggerStage) else None

    def decisions(limit: int) -> list[dict[str, Any]] | None:
        held = ledger()
        return None if held is None else held.list_decisions(limit)

    def resolve(episode_id: str, verdict: str, by: str, note: str
                ) -> tuple[dict[str, Any], bool] | None:
        held = ledger()
        if held is None:
            return None
        return held.resolve_approval(episode_id, verdict, by=by, now=time.time(), note=note)

    view = ctx.topic_view(ctx.topics.triggers, trigger_slot)
    return trigger_router(view, decisions=decisions, resolve=resolve)


def trigger_router(view: View | None, *, decisions: Decisions | None = None,
                   resolve: Resolve | None = None) -> APIRouter:
    """``/api/v1/triggers`` (events from ``view``, ``decisions(limit)`` from the ledger) and
    ``POST /api/v1/triggers/{episode}/approve|reject`` (``resolve``; None: not here)."""
    router = APIRouter()

    @router.get("/api/v1/triggers")
    def triggers(limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        """Trigger decisions and delivery outcomes, most recent first.

        ``events`` come from ``observer.triggers``; ``decisions`` from the ledger (each with
        its deliveries and their attempts) when this process runs the trigger stage.
        """
        history = [] if view is None else view.history()
        events = [e for e in history if isinstance(e, TriggerEvent)][:limit]
        body: dict[str, Any] = {"events": [e.model_dump(by_alias=True) for e in events]}
        listed = decisions(limit) if decisions is not None else None
        if listed is not None:
            body["decisions"] = listed
        return body

    @router.post("/api/v1/triggers/{episode_id}/{verb}")
    def approval(
        episode_id: str, verb: str, request: Request, body: ApprovalRequest | None = None
    ) -> dict[str, Any]:
        """Approve (release its held actions) or reject (cancel them) a held decision.

        ``by`` names who decides (default: the client address); it is recorded as given.
        The same verdict again answers 200 with ``changed: false``.
        """
        verdict = VERDICTS.get(verb)
        if verdict is None:
            raise HTTPException(404, f"unknown action {verb!r}; use approve or reject")
        body = body or ApprovalRequest()
        client = request.client.host if request.client else "unknown"
        by = body.by or f"admin-api@{client}"
        try:
            answer = resolve(episode_id, verdict, by, body.note) if resolve else None
        except (UnknownEpisode, ApprovalConflict) as e:
            raise HTTPException(APPROVAL_ERRORS[type(e)], str(e)) from None
        if answer is None:
            raise HTTPException(404, "no trigger stage runs in this process (its ledger is "
                                     "elsewhere): ask that process, or `observer triggers approve`")
        stored, changed = answer
        return {"decision": stored, "changed": changed}

    return router
