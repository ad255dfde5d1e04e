"""The admin API: Prometheus metrics, health, and the drift and trigger read models."""

from __future__ import annotations

import hmac
from typing import Any, Callable

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from observer.core.config import AdminConfig
from observer.core.records import DriftResult, TriggerEvent
from observer.views import TopicView


def create_admin_app(
    cfg: AdminConfig,
    *,
    kafka_ready: Callable[[], bool],
    stage_errors: Callable[[], dict[str, str]],
    drift_view: TopicView,
    trigger_view: TopicView,
    decisions: Callable[[int], list[dict[str, Any]] | None] | None = None,
) -> FastAPI:
    """``stage_errors`` maps a failed component to its error; empty means healthy.

    ``decisions(limit)`` lists the trigger ledger (``None`` while no trigger stage runs here).
    """
    app = FastAPI(title="observer admin", docs_url=None, redoc_url=None)
    token = cfg.auth_token.get_secret_value().encode() if cfg.auth_token else None

    def authorised(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.encode(), token):
            raise HTTPException(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        errors = stage_errors()
        return JSONResponse({"status": "failed" if errors else "ok", "errors": errors},
                            status_code=500 if errors else 200)

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        ready = kafka_ready() and not stage_errors()
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @app.get("/api/v1/drift", dependencies=[Depends(authorised)])
    def drift() -> dict[str, Any]:
        """The latest scored window of every (segment, record type)."""
        results = sorted(
            (r for r in drift_view.latest() if isinstance(r, DriftResult)),
            key=lambda r: (r.segment_key, r.record_type),
        )
        return {"results": [r.model_dump(by_alias=True) for r in results]}

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

    return app
