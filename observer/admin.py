"""The admin API: Prometheus metrics, health, and the drift and trigger read models."""

from __future__ import annotations

from typing import Any, Callable

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from observer.drift.reports import DriftReports, Episode, ReportError, ReportNotFound, episodes, report_id
from observer.admin_guard import AdminGuard
from observer.core.config import AdminConfig
from observer.core.records import DriftResult, TriggerEvent
from observer.views import TopicView
from observer.triggers.ledger import ApprovalConflict, UnknownEpisode

# A report is one self-contained page: forbid it any network access in the browser too.
REPORT_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; font-src data:; img-src data: blob:",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "private, max-age=3600",
}


def create_admin_app(
    cfg: AdminConfig,
    *,
    kafka_ready: Callable[[], bool],
    stage_errors: Callable[[], dict[str, str]],
    stage_states: Callable[[], dict[str, dict[str, Any]]] | None = None,
    drift_view: TopicView,
    trigger_view: TopicView,
    decisions: Callable[[int], list[dict[str, Any]] | None] | None = None,
    reports: DriftReports | None = None,
    resolve: Callable[[str, str, str, str], tuple[dict[str, Any], bool] | None] | None = None,
) -> FastAPI:
    """``stage_errors`` maps a component that failed for good to why; empty means alive.
    ``stage_states`` maps each consuming stage to its supervisor's status (``state``:
    running, restarting with ``last_error`` and ``retry_at``, failed with ``error``...).

    ``decisions(limit)`` lists the trigger ledger (``None`` while no trigger stage runs here).
    ``reports`` serves ``/reports/{id}`` (None: reports are off).
    """
    app = FastAPI(title="observer admin", docs_url=None, redoc_url=None)
    # Token, duplicate Authorization headers, cross-site writes: one gate for every route.
    app.add_middleware(AdminGuard, cfg=cfg)
    guard = AdminGuard(None, cfg)

    def authorised(request: Request) -> None:
        # The middleware refused already; kept so a route mounted elsewhere stays guarded.
        refusal = guard.refusal(request.scope)
        if refusal is not None:
            status, detail = refusal
            challenge = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            raise HTTPException(status, detail, challenge)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        """Liveness: fails (500) only when a stage failed for good; a stage restarting
        after an error is alive (a process restart would not help it)."""
        errors = stage_errors()
        stages = stage_states() if stage_states is not None else {}
        return JSONResponse(
            {"status": "failed" if errors else "ok", "errors": errors, "stages": stages},
            status_code=500 if errors else 200,
        )

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        """Readiness: Kafka answers and every stage is running (503 otherwise)."""
        kafka = kafka_ready()
        stages = stage_states() if stage_states is not None else {}
        ready = (kafka and not stage_errors()
                 and all(s.get("state") == "running" for s in stages.values()))
        return JSONResponse({"ready": ready, "kafka": kafka, "stages": stages},
                            status_code=200 if ready else 503)

    @app.get("/api/v1/drift", dependencies=[Depends(authorised)])
    def drift() -> dict[str, Any]:
        """The latest scored window of every (segment, record type)."""
        results = sorted(
            (r for r in drift_view.latest() if isinstance(r, DriftResult)),
            key=lambda r: (r.segment_key, r.record_type),
        )
        return {"results": [_with_report(r) for r in results]}

    def _with_report(r: DriftResult) -> dict[str, Any]:
        body = r.model_dump(by_alias=True)
        if reports is not None and r.dataset_drift:
            body["report"] = f"/reports/{report_id(r)}"
        return body

    def _drifted() -> dict[str, Episode]:
        """Drift episodes this process still holds (the drift view's history), by report id."""
        held = [*drift_view.history(), *drift_view.latest()]
        return episodes(r for r in held if isinstance(r, DriftResult))

    @app.get("/api/v1/reports", dependencies=[Depends(authorised)])
    def report_list(limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        """One report per drift episode held here (newest first); rendered on demand."""
        if reports is None:
            raise HTTPException(404, "drift reports are disabled (drift.reports.enabled)")
        held = sorted(_drifted().values(), key=lambda e: e.last_closed_at_unix_nano,
                      reverse=True)[:limit]
        return {"reports": [
            {"id": e.report_id, "url": f"/reports/{e.report_id}", "segment": e.first.segment,
             "record_type": e.first.record_type,
             "episode_start_window": e.first.episode_start_window,
             "window_index": e.first.window_index, "windows": e.windows,
             "drift_share": e.first.drift_share, "closed_at_unix_nano": e.first.closed_at_unix_nano,
             "last_closed_at_unix_nano": e.last_closed_at_unix_nano,
             "rendered": reports.cached(e.report_id) is not None}
            for e in held
        ]}

    @app.get("/reports/{rid}", dependencies=[Depends(authorised)])
    def report(rid: str) -> Response:
        """The Evidently report of a drift episode (the reference against its first drifted
        window): rendered on first request, then cached."""
        if reports is None:
            raise HTTPException(404, "drift reports are disabled (drift.reports.enabled)")
        try:
            path = reports.cached(rid)
            if path is None:
                episode = _drifted().get(rid)
                if episode is None:
                    raise ReportNotFound(
                        f"no drifted window with report id {rid!r} is known here"
                    )
                path = reports.get(episode.first)
        except ReportNotFound as e:
            raise HTTPException(404, str(e)) from None
        except ReportError as e:
            raise HTTPException(503, f"the report cannot be rendered now: {e}") from None
        return FileResponse(path, media_type="text/html; charset=utf-8", headers=REPORT_HEADERS)

    @app.get("/api/v1/triggers", dependencies=[Depends(authorised)])
    def triggers(limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        """Trigger decisions and delivery outcomes, most recent first.

        ``events`` come from ``observer.triggers``; ``decisions`` from the ledger (each with
        its deliveries and their attempts) when this process runs the trigger stage.
        """
        events = [e for e in trigger_view.history() if isinstance(e, TriggerEvent)][:limit]
        body: dict[str, Any] = {"events": [e.model_dump(by_alias=True) for e in events]}
        listed = decisions(limit) if decisions is not None else None
        if listed is not None:
            body["decisions"] = listed
        return body

    @app.post("/api/v1/triggers/{episode_id}/{verb}", dependencies=[Depends(authorised)])
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

    return app


# The path's verb -> the verdict the ledger records.
VERDICTS = {"approve": "approved", "reject": "rejected"}
APPROVAL_ERRORS: dict[type[Exception], int] = {UnknownEpisode: 404, ApprovalConflict: 409}


class ApprovalRequest(BaseModel):
    """Optional body of an approve or reject request."""

    by: str = Field("", max_length=200, description="Who decides (recorded as given).")
    note: str = Field("", max_length=2000, description="Why; kept in the ledger and the event.")
