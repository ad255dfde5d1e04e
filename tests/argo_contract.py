"""A stand-in Argo Server that enforces the contract observer relies on (test code).

No Argo Server runs here, so this one serves the three endpoints observer calls and holds
them to Argo's own description of them:

* ``POST /api/v1/workflows/{ns}/submit``: the body must validate against the
  ``WorkflowSubmitRequest`` definition of ``argo/swagger.json``; the WorkflowTemplate must
  exist (404) and declare every parameter passed (400); the Workflow it creates must validate
  against ``argo/schema.json``;
* ``POST /api/v1/workflows/{ns}``: the body must validate against ``WorkflowCreateRequest``
  and its workflow against ``argo/schema.json``;
* ``GET /api/v1/workflows/{ns}?listOptions.labelSelector=...``: equality and inequality
  selectors, as observer's in-progress check uses them;
* ``GET /api/v1/workflows/{ns}/{name}``: the workflow with its ``status`` (phase, times,
  node statuses), 404 once deleted.

The test drives what Argo's controller does (:meth:`ArgoContract.advance` for the workflow's
phase, :meth:`ArgoContract.step` for a step's node, :meth:`ArgoContract.delete`), and only
along the phases the controller goes through (:data:`WORKFLOW_PHASES`, :data:`NODE_PHASES`):
``Succeeded -> Running``, a workflow succeeding with a failed or unfinished step, or a node
of a step the workflow does not have raise :class:`Impossible`. Every status written is
checked against ``argo/schema.json``.

A repeated workflow name is answered 409 ``AlreadyExists``; a missing or wrong bearer token
401; errors carry grpc-gateway bodies ``{code, message}``. :attr:`ArgoContract.fail_next`
queues answers (503 with ``Retry-After``...) for the next requests (of one method when an
entry names it), for fault tests.
"""

from __future__ import annotations

import copy
import hmac
import threading
import time
import zlib
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from observer.triggers.naming import ARGO_COMPLETED_LABEL
from observer.triggers.webhook import iso8601
from observer.triggers.pipeline.validate import SchemaError, validate_argo, validate_argo_body

# grpc codes of the answers (google.rpc.Code), as grpc-gateway puts them in error bodies.
_GRPC = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6, 429: 8, 500: 13, 503: 14}
_KIND_NAMES = {"WorkflowTemplate", "workflowtemplate", "wftmpl"}

# What the workflow controller moves a phase to, from each phase ("" until it first looks).
WORKFLOW_PHASES: dict[str, set[str]] = {
    "": {"Pending", "Running", "Failed", "Error"},
    "Pending": {"Running", "Failed", "Error"},
    "Running": {"Succeeded", "Failed", "Error"},
    "Succeeded": set(), "Failed": set(), "Error": set(),
}
# A node's (a step's): created Pending or Running (Skipped, Omitted: never run).
NODE_PHASES: dict[str | None, set[str]] = {
    None: {"Pending", "Running", "Skipped", "Omitted"},
    "Pending": {"Running", "Failed", "Error", "Skipped", "Omitted"},
    "Running": {"Succeeded", "Failed", "Error"},
    "Succeeded": set(), "Failed": set(), "Error": set(), "Skipped": set(), "Omitted": set(),
}
_DONE_NODE = {"Succeeded", "Skipped", "Omitted"}


class Impossible(ValueError):
    """A transition Argo's controller never makes."""


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"code": _GRPC.get(status, 2), "message": message, "error": message}
    return JSONResponse(body, status_code=status, headers=headers)


def _pairs(text: str | None) -> dict[str, str]:
    out = {}
    for item in (text or "").split(","):
        if item:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"expected key=value, got {item!r}")
            out[key] = value
    return out


def _selector_matches(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.split("=", 1)
            if labels.get(key.rstrip("=")) != value.lstrip("="):
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


class ArgoContract:
    """The server's state and its FastAPI app (:meth:`app`); thread-safe."""

    def __init__(
        self,
        schemas: Path | str,
        templates: list[dict[str, Any]] | None = None,
        token: str | None = None,
    ) -> None:
        self.schemas = Path(schemas)
        self.token = token
        self.templates: dict[tuple[str, str], dict[str, Any]] = {}
        for t in templates or []:
            self.add_template(t)
        self.workflows: dict[tuple[str, str], dict[str, Any]] = {}
        # (status, headers) or (status, headers, method): answers for the next requests.
        self.fail_next: list[tuple[Any, ...]] = []
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self.created: list[str] = []  # names, in creation order
        self.on_create: list[Any] = []  # callbacks(name) after a workflow is created
        self._lock = threading.Lock()

    def add_template(self, template: dict[str, Any]) -> None:
        validate_argo(template, self.schemas)
        meta = template["metadata"]
        self.templates[(meta.get("namespace", "argo"), meta["name"])] = template

    def complete(self, namespace: str, name: str, phase: str = "Succeeded") -> None:
        """What Argo's controller does when a workflow ends: phase and ``completed`` labels
        (through ``Running`` when it had not started)."""
        if self.workflows[(namespace, name)].get("status", {}).get("phase", "") in ("", "Pending"):
            self.advance(name, "Running", namespace=namespace)
        self.advance(name, phase, namespace=namespace)

    def advance(
        self, name: str, phase: str, *, namespace: str = "argo", message: str = "",
        at: float | None = None,
    ) -> None:
        """Move the workflow to ``phase`` as the controller would (:data:`WORKFLOW_PHASES`)."""
        at = time.time() if at is None else at
        with self._lock:
            wf = self.workflows[(namespace, name)]
            status = wf.setdefault("status", {})
            wf["metadata"].setdefault("labels", {})
            current = status.get("phase", "")
            if phase not in WORKFLOW_PHASES.get(current, set()):
                raise Impossible(f"workflow {name}: {current or '(new)'} -> {phase} is not a "
                                 "transition Argo makes")
            nodes = [n for n in status.get("nodes", {}).values() if n["type"] != "Steps"]
            if phase == "Succeeded" and any(n["phase"] not in _DONE_NODE for n in nodes):
                raise Impossible(f"workflow {name} cannot succeed with steps "
                                 f"{sorted((n['displayName'], n['phase']) for n in nodes)}")
            status["phase"] = phase
            wf["metadata"]["labels"]["workflows.argoproj.io/phase"] = phase
            if phase != "Pending":
                status.setdefault("startedAt", iso8601(at)[:19] + "Z")
            if message:
                status["message"] = message
            if phase in ("Succeeded", "Failed", "Error"):
                status["finishedAt"] = iso8601(at)[:19] + "Z"
                wf["metadata"]["labels"][ARGO_COMPLETED_LABEL] = "true"
                root = status.get("nodes", {}).get(name)
                if root is not None:
                    root.update(phase=phase, finishedAt=status["finishedAt"])
            validate_argo(wf, self.schemas)

    def step(
        self, name: str, step: str, phase: str, *, namespace: str = "argo", message: str = "",
        at: float | None = None,
    ) -> None:
        """Move one step's node to ``phase`` (:data:`NODE_PHASES`); the workflow must be
        running and have that step."""
        at = time.time() if at is None else at
        stamp = iso8601(at)[:19] + "Z"
        with self._lock:
            wf = self.workflows[(namespace, name)]
            status = wf["status"]
            if status.get("phase") != "Running":
                raise Impossible(f"workflow {name} is {status.get('phase')!r}: its steps do not run")
            templates = self._templates_of(namespace, wf)
            if step not in templates:
                raise Impossible(f"workflow {name} has no step {step!r} ({sorted(templates)})")
            nodes = status.setdefault("nodes", {})
            entry = wf["spec"].get("entrypoint") or "retrain"
            nodes.setdefault(name, {"id": name, "name": name, "displayName": name, "type": "Steps",
                                    "templateName": entry, "phase": "Running", "startedAt": stamp})
            node_id = f"{name}-{zlib.crc32(step.encode())}"
            node = nodes.get(node_id)
            current = node["phase"] if node else None
            if phase not in NODE_PHASES[current]:
                raise Impossible(f"step {step} of {name}: {current or '(new)'} -> {phase} is not a "
                                 "transition Argo makes")
            if node is None:
                kind = "Suspend" if "suspend" in templates[step] else "Pod"
                node = nodes[node_id] = {
                    "id": node_id, "name": f"{name}[0].{step}", "displayName": step, "type": kind,
                    "templateName": step, "boundaryID": name, "startedAt": stamp,
                }
                nodes[name].setdefault("children", []).append(node_id)
            node["phase"] = phase
            if message:
                node["message"] = message
            if phase in ("Succeeded", "Failed", "Error", "Skipped", "Omitted"):
                node["finishedAt"] = stamp
            validate_argo(wf, self.schemas)

    def delete(self, name: str, namespace: str = "argo") -> None:
        """``argo delete`` (or the controller's TTL): the workflow is gone."""
        with self._lock:
            del self.workflows[(namespace, name)]

    def _templates_of(self, namespace: str, wf: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """The step templates a workflow runs: its own, or its WorkflowTemplate's."""
        ref = wf["spec"].get("workflowTemplateRef")
        spec = self.templates[(namespace, ref["name"])]["spec"] if ref else wf["spec"]
        return {t["name"]: t for t in spec.get("templates", []) if "steps" not in t and "dag" not in t}

    def _injected(self, method: str) -> tuple[int, dict[str, str]] | None:
        """The next queued answer meant for this method (entries may name one)."""
        with self._lock:
            for i, entry in enumerate(self.fail_next):
                if len(entry) < 3 or entry[2] == method:  # type: ignore[misc]
                    del self.fail_next[i]
                    return entry[0], entry[1]
        return None

    # -- handlers -----------------------------------------------------------------------

    def _authorised(self, request: Request) -> bool:
        if self.token is None:
            return True
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.encode(), self.token.encode())

    def _store(self, namespace: str, workflow: dict[str, Any]) -> JSONResponse:
        try:
            validate_argo(workflow, self.schemas)
        except SchemaError as e:
            return _error(400, str(e))
        name = workflow["metadata"]["name"]
        with self._lock:
            if (namespace, name) in self.workflows:
                return _error(409, f'workflows.argoproj.io "{name}" already exists')
            labels = workflow["metadata"].setdefault("labels", {})
            labels.setdefault("workflows.argoproj.io/phase", "Pending")
            workflow["status"] = {"phase": "Pending"}
            self.workflows[(namespace, name)] = workflow
            self.created.append(name)
        for callback in self.on_create:
            callback(name)
        return JSONResponse(workflow)

    def _submit(self, namespace: str, body: Any) -> JSONResponse:
        try:
            validate_argo_body(body, "WorkflowSubmitRequest", self.schemas)
        except SchemaError as e:
            return _error(400, str(e))
        if body.get("resourceKind") not in _KIND_NAMES:
            return _error(400, f"resourceKind {body.get('resourceKind')!r} is not supported here")
        template = self.templates.get((namespace, body.get("resourceName", "")))
        if template is None:
            return _error(404, f'workflowtemplates.argoproj.io "{body.get("resourceName")}" not found')
        opts = body.get("submitOptions") or {}
        declared = {p["name"]: p for p in template["spec"].get("arguments", {}).get("parameters", [])}
        values: dict[str, str] = {}
        for item in opts.get("parameters") or []:
            key, sep, value = item.partition("=")
            if not sep:
                return _error(400, f"parameter {item!r} is not name=value")
            if key not in declared:
                return _error(400, f"parameter {key!r} is not declared by the template")
            if declared[key].get("enum") and value not in declared[key]["enum"]:
                return _error(400, f"parameter {key}={value!r} not in {declared[key]['enum']}")
            values[key] = value
        try:
            labels = _pairs(opts.get("labels"))
            annotations = _pairs(opts.get("annotations"))
        except ValueError as e:
            return _error(400, str(e))
        if not opts.get("name"):
            return _error(400, "this contract expects submitOptions.name (observer names its runs)")
        labels["workflows.argoproj.io/workflow-template"] = template["metadata"]["name"]
        spec: dict[str, Any] = {
            "workflowTemplateRef": {"name": template["metadata"]["name"]},
            "arguments": {
                "parameters": [
                    {"name": n, "value": values.get(n, p.get("value", ""))} for n, p in declared.items()
                ]
            },
        }
        if opts.get("serviceAccount"):
            spec["serviceAccountName"] = opts["serviceAccount"]
        workflow = {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Workflow",
            "metadata": {"name": opts["name"], "namespace": namespace, "labels": labels,
                         "annotations": annotations},
            "spec": spec,
        }
        return self._store(namespace, workflow)

    def _create(self, namespace: str, body: Any) -> JSONResponse:
        try:
            validate_argo_body(body, "WorkflowCreateRequest", self.schemas)
        except SchemaError as e:
            return _error(400, str(e))
        workflow = body.get("workflow")
        if not isinstance(workflow, dict) or not workflow.get("metadata", {}).get("name"):
            return _error(400, "workflow with metadata.name required")
        return self._store(namespace, workflow)

    def _list(self, namespace: str, selector: str) -> JSONResponse:
        with self._lock:
            items = [
                wf for (ns, _), wf in self.workflows.items()
                if ns == namespace and _selector_matches(selector, wf["metadata"].get("labels", {}))
            ]
        return JSONResponse({"metadata": {}, "items": items})

    def _get(self, namespace: str, name: str) -> JSONResponse:
        with self._lock:
            wf = self.workflows.get((namespace, name))
            if wf is None:
                return _error(404, f'workflows.argoproj.io "{name}" not found')
            return JSONResponse(copy.deepcopy(wf))

    def app(self) -> FastAPI:
        app = FastAPI(title="argo contract")

        @app.middleware("http")
        async def gate(request: Request, call_next: Any) -> Any:
            if not self._authorised(request):
                response = _error(401, "Unauthorized: token not valid")
            else:
                injected = self._injected(request.method)
                if injected is not None:
                    response = _error(injected[0], "injected failure", injected[1])
                else:
                    response = await call_next(request)
            self.requests.append((request.method, request.url.path, response.status_code))
            return response

        @app.post("/api/v1/workflows/{namespace}/submit")
        async def submit(namespace: str, request: Request) -> JSONResponse:
            return self._submit(namespace, await _json(request))

        @app.post("/api/v1/workflows/{namespace}")
        async def create(namespace: str, request: Request) -> JSONResponse:
            return self._create(namespace, await _json(request))

        @app.get("/api/v1/workflows/{namespace}")
        async def listing(namespace: str, request: Request) -> JSONResponse:
            return self._list(namespace, request.query_params.get("listOptions.labelSelector", ""))

        @app.get("/api/v1/workflows/{namespace}/{name}")
        async def get(namespace: str, name: str) -> JSONResponse:
            return self._get(namespace, name)

        return app


async def _json(request: Request) -> Any:
    import json

    try:
        return json.loads(await request.body())
    except ValueError:
        return None
