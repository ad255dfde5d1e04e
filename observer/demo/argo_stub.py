"""A stand-in Argo Server for ``observer demo``: it accepts the retraining runs a fired episode
submits and lets the demo finish them, as Argo's controller would.

It answers the four calls observer makes (submit from a WorkflowTemplate, create inline, list
by label selector, get by name) with the fields observer reads; nothing runs. The repository's
tests hold observer to the real API's schemas with a stricter server (tests/argo_contract.py).

>>> stub = ArgoStub()
>>> stub.workflows["retrain-e1"] = {"metadata": {"name": "retrain-e1", "labels": {}},
...     "status": {"phase": "Pending"}}
>>> stub.complete("retrain-e1")
>>> stub.workflows["retrain-e1"]["status"]["phase"]
'Succeeded'
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from observer.triggers.naming import ARGO_COMPLETED_LABEL
from observer.triggers.webhook import iso8601


def _matches(selector: str, labels: dict[str, str]) -> bool:
    """Equality and inequality terms of a label selector (what observer's check uses).

    >>> _matches("a=1,b!=2", {"a": "1"}), _matches("a=1", {"a": "2"})
    (True, False)
    """
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, sep, value = term.partition("!=")
        if sep:
            if labels.get(key) == value:
                return False
            continue
        key, sep, value = term.partition("=")
        if sep and labels.get(key.rstrip("=")) != value.lstrip("="):
            return False
        if not sep and term not in labels:
            return False
    return True


class ArgoStub:
    """Workflows by name, and the FastAPI app serving them (:meth:`app`); thread-safe."""

    def __init__(self) -> None:
        self.workflows: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        with self._lock:
            return list(self.workflows)

    def complete(self, name: str, phase: str = "Succeeded") -> None:
        """What the controller does when the run's steps are done: its phase, times and the
        ``completed`` label."""
        now = iso8601(time.time())[:19] + "Z"
        with self._lock:
            wf = self.workflows[name]
            status = wf.setdefault("status", {})
            status.setdefault("startedAt", now)
            status.update(phase=phase, finishedAt=now)
            wf["metadata"].setdefault("labels", {})[ARGO_COMPLETED_LABEL] = "true"

    def _store(self, namespace: str, name: str, labels: dict[str, str],
               spec: dict[str, Any]) -> JSONResponse:
        with self._lock:
            if name in self.workflows:
                return JSONResponse({"code": 6, "message": f'workflows.argoproj.io "{name}" '
                                     "already exists"}, status_code=409)
            wf = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
                  "metadata": {"name": name, "namespace": namespace, "labels": labels},
                  "spec": spec, "status": {"phase": "Pending"}}
            self.workflows[name] = wf
            return JSONResponse(copy.deepcopy(wf))

    def app(self) -> FastAPI:
        app = FastAPI(title="demo argo")

        @app.post("/api/v1/workflows/{namespace}/submit")
        async def submit(namespace: str, request: Request) -> JSONResponse:
            body = await request.json()
            opts = body.get("submitOptions") or {}
            labels = dict(p.split("=", 1) for p in (opts.get("labels") or "").split(",") if "=" in p)
            spec = {"workflowTemplateRef": {"name": body.get("resourceName", "")}}
            return self._store(namespace, opts.get("name", ""), labels, spec)

        @app.post("/api/v1/workflows/{namespace}")
        async def create(namespace: str, request: Request) -> JSONResponse:
            wf = (await request.json()).get("workflow") or {}
            meta = wf.get("metadata") or {}
            return self._store(namespace, meta.get("name", ""), meta.get("labels") or {},
                               wf.get("spec") or {})

        @app.get("/api/v1/workflows/{namespace}")
        async def listing(namespace: str, request: Request) -> JSONResponse:
            selector = request.query_params.get("listOptions.labelSelector", "")
            with self._lock:
                items = [copy.deepcopy(w) for w in self.workflows.values()
                         if _matches(selector, w["metadata"].get("labels", {}))]
            return JSONResponse({"metadata": {}, "items": items})

        @app.get("/api/v1/workflows/{namespace}/{name}")
        async def get(namespace: str, name: str) -> JSONResponse:
            with self._lock:
                wf = self.workflows.get(name)
                if wf is None:
                    return JSONResponse({"code": 5, "message": f'workflows.argoproj.io "{name}" '
                                         "not found"}, status_code=404)
                return JSONResponse(copy.deepcopy(wf))

        return app
