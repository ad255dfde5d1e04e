"""The admin API: Prometheus metrics and health; each stage mounts its own routes.

The stages' routes (the drift read model and reports, trigger decisions and approvals...)
come from their specs (``StageSpec.admin_routes``, collected by ``observer.stages``): this
module imports no stage. Every route, mounted here or by a stage, passes one guard.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from observer.admin_guard import AdminGuard
from observer.core.config import AdminConfig


def create_admin_app(
    cfg: AdminConfig,
    *,
    kafka_ready: Callable[[], bool],
    stage_errors: Callable[[], dict[str, str]],
    stage_states: Callable[[], dict[str, dict[str, Any]]] | None = None,
    metrics: Callable[[], bytes] = generate_latest,
    routers: Sequence[APIRouter] = (),
) -> FastAPI:
    """``stage_errors`` maps a component that failed for good to why; empty means alive.
    ``stage_states`` maps each consuming stage to its supervisor's status (``state``:
    running, restarting with ``last_error`` and ``retry_at``, failed with ``error``...).
    ``metrics()`` is the Prometheus exposition ``/metrics`` serves (the runtime merges its
    worker processes' into it).

    ``routers`` are the stages' routes (``observer.stages.admin_routers``), each mounted
    behind the guard.
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
    def exposition() -> Response:
        return Response(metrics(), media_type=CONTENT_TYPE_LATEST)

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

    for router in routers:
        app.include_router(router, dependencies=[Depends(authorised)])

    return app
