"""The trigger stage's admin routes: decisions and deliveries, approving held decisions, an
episode's life and the pipeline's promotion callback
(:mod:`observer.triggers.promotion_callback`).

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
from starlette.concurrency import run_in_threadpool

from observer.core.records import Record, TriggerEvent
from observer.core.stage import AdminContext, View
from observer.triggers.ledger import ApprovalConflict, UnknownEpisode

# The path's verb -> the verdict the ledger records.
VERDICTS = {"approve": "approved", "reject": "rejected"}
APPROVAL_ERRORS: dict[type[Exception], int] = {UnknownEpisode: 404, ApprovalConflict: 409}

Decisions = Callable[[int], "list[dict[str, Any]] | None"]
Resolve = Callable[[str, str, str, str], "tuple[dict[str, Any], bool] | None"]
Promote = Callable[[str, "dict[str, str]", bytes], "dict[str, Any] | None"]
"""``(episode_id, headers, raw body)`` -> the promotion recorded (None: no stage here);
raises :class:`~observer.triggers.promotion_callback.CallbackRefused`."""
Life = Callable[[str], "dict[str, Any] | None"]
MAX_CALLBACK_BYTES = 64 * 1024
NOT_HERE = ("no trigger stage runs in this process (its ledger is elsewhere): ask that "
            "process")


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
    stage = ctx.processor
    return trigger_router(view, decisions=decisions, resolve=resolve,
                          promote=lambda *a: stage_promote(stage(), *a),
                          life=lambda e: stage_life(stage(), e))


def stage_promote(stage: Any, episode_id: str, headers: dict[str, str], body: bytes
                  ) -> dict[str, Any] | None:
    """The callback, recorded by ``stage`` (a TriggerStage; None when it does not run here)."""
    from observer.triggers.promotion_callback import accept_callback
    from observer.triggers.stage import TriggerStage

    if not isinstance(stage, TriggerStage):
        return None
    return accept_callback(stage.life, stage.cfg.promotion, episode_id, headers, body,
                           time.time())


def stage_life(stage: Any, episode_id: str) -> dict[str, Any] | None:
    """The episode's life from ``stage``'s ledger (None when the stage does not run here)."""
    from observer.triggers.stage import TriggerStage

    return stage.life.life(episode_id) if isinstance(stage, TriggerStage) else None


def trigger_router(view: View | None, *, decisions: Decisions | None = None,
                   resolve: Resolve | None = None, promote: Promote | None = None,
                   life: Life | None = None) -> APIRouter:
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

    @router.get("/api/v1/episodes/{episode_id}")
    def episode(episode_id: str) -> dict[str, Any]:
        """An episode's whole life in order: fired, (held, approved), submitted, the run's
        events, promoted or rolled_back, rebaselined, cleared; ``status`` (open, resolved,
        reopened) and ``resolution`` ("resolved by run X")."""
        try:
            answer = life(episode_id) if life is not None else None
        except UnknownEpisode as e:
            raise HTTPException(404, str(e)) from None
        if answer is None:
            raise HTTPException(404, NOT_HERE)
        return answer

    @router.post("/api/v1/episodes/{episode_id}/promotion")
    async def promotion(episode_id: str, request: Request) -> dict[str, Any]:
        """The retraining pipeline reports the episode's run promoted or rolled back: body
        ``{run, model_version, outcome, at?}``, signed (Standard Webhooks headers,
        ``trigger.promotion.secret``). 401 bad or missing signature, 404 unknown episode,
        409 impossible transition or replay, 422 bad body."""
        from observer.triggers.promotion_callback import CallbackRefused

        body = await request.body()
        if len(body) > MAX_CALLBACK_BYTES:
            raise HTTPException(413, f"promotion body over {MAX_CALLBACK_BYTES} bytes")
        headers = dict(request.headers)
        try:
            answer = (await run_in_threadpool(promote, episode_id, headers, body)
                      if promote is not None else None)
        except CallbackRefused as e:
            raise HTTPException(e.status, str(e)) from None
        if answer is None:
            raise HTTPException(404, NOT_HERE)
        return {"promotion": answer}

    return router
