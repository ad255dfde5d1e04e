"""The drift stage's admin routes: the latest scored windows, the episodes' HTML reports, and
the references (:mod:`observer.drift.reference_routes`).

Mounted by the admin API (``observer.admin``) behind its guard, in every process: they read
``observer.drift`` through a view, so they answer wherever the engine runs.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse, Response

from observer.core.records import DriftResult, Record
from observer.core.stage import AdminContext, View
from observer.drift import reference_client
from observer.drift.reference_routes import references_router, references_slot
from observer.drift.reports import DriftReports, Episode, ReportError, ReportNotFound, episodes, report_id

# A report is one self-contained page: forbid it any network access in the browser too.
REPORT_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; font-src data:; img-src data: blob:",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "private, max-age=3600",
}


def drift_slot(r: Record) -> str:
    """A view of ``observer.drift`` keeps the latest result per (segment, record type)."""
    return f"{r.segment_key}/{r.record_type}" if isinstance(r, DriftResult) else ""


def routes(ctx: AdminContext) -> APIRouter:
    """The routes as the configuration wants them (``drift.reports.enabled``)."""
    drift = ctx.cfg.drift
    reports = DriftReports.from_config(drift, ctx.cfg.kafka) if drift.reports.enabled else None
    view = ctx.topic_view(ctx.topics.drift, drift_slot)
    router = drift_router(view, reports)
    # References: read from what the engine published, written as commands it consumes.
    kafka, topics = ctx.cfg.kafka, ctx.topics
    router.routes.extend(references_router(
        ctx.topic_view(topics.references, references_slot), view,
        lambda command: reference_client.send(kafka, topics, command)).routes)
    return router


def drift_router(view: View | None, reports: DriftReports | None) -> APIRouter:
    """``/api/v1/drift``, ``/api/v1/reports`` and ``/reports/{id}`` over ``view``
    (``reports`` None: reports are off, 404)."""
    router = APIRouter()

    def held() -> list[DriftResult]:
        if view is None:
            return []
        return [r for r in [*view.history(), *view.latest()] if isinstance(r, DriftResult)]

    @router.get("/api/v1/drift")
    def drift() -> dict[str, Any]:
        """The latest scored window of every (segment, record type)."""
        latest = [] if view is None else view.latest()
        results = sorted((r for r in latest if isinstance(r, DriftResult)),
                         key=lambda r: (r.segment_key, r.record_type))
        return {"results": [_with_report(r) for r in results]}

    def _with_report(r: DriftResult) -> dict[str, Any]:
        body = r.model_dump(by_alias=True)
        if reports is not None and r.dataset_drift:
            body["report"] = f"/reports/{report_id(r)}"
        return body

    def _drifted() -> dict[str, Episode]:
        """Drift episodes this process still holds (the view's history), by report id."""
        return episodes(held())

    @router.get("/api/v1/reports")
    def report_list(limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        """One report per drift episode held here (newest first); rendered on demand."""
        if reports is None:
            raise HTTPException(404, "drift reports are disabled (drift.reports.enabled)")
        listed = sorted(_drifted().values(), key=lambda e: e.last_closed_at_unix_nano,
                        reverse=True)[:limit]
        return {"reports": [
            {"id": e.report_id, "url": f"/reports/{e.report_id}", "segment": e.first.segment,
             "record_type": e.first.record_type,
             "episode_start_window": e.first.episode_start_window,
             "window_index": e.first.window_index, "windows": e.windows,
             "drift_share": e.first.drift_share, "closed_at_unix_nano": e.first.closed_at_unix_nano,
             "last_closed_at_unix_nano": e.last_closed_at_unix_nano,
             "rendered": reports.cached(e.report_id) is not None}
            for e in listed
        ]}

    @router.get("/reports/{rid}")
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
                    raise ReportNotFound(f"no drifted window with report id {rid!r} is known here")
                path = reports.get(episode.first)
        except ReportNotFound as e:
            raise HTTPException(404, str(e)) from None
        except ReportError as e:
            raise HTTPException(503, f"the report cannot be rendered now: {e}") from None
        return FileResponse(path, media_type="text/html; charset=utf-8", headers=REPORT_HEADERS)

    return router
