"""A stand-in Kubeflow Pipelines API server (v2beta1) for the endpoints observer calls (test code).

* ``POST /apis/v2beta1/runs``: a ``display_name``, a ``pipeline_version_reference`` with both
  ids and ``runtime_config.parameters`` as an object are required, unknown fields are refused
  (400, as grpc-gateway does); the run is created ``PENDING`` with a ``run_id``;
* ``GET /apis/v2beta1/runs?filter=...``: the ``display_name EQUALS`` predicate observer uses;
* ``GET /apis/v2beta1/runs/{run_id}``: the run (``state``, ``state_history``, ``error``,
  ``run_details.task_details``), 404 once deleted.

The test drives the run as KFP's backend would (:meth:`KfpContract.advance` for the run's
``state``, :meth:`KfpContract.task` for one task), only along the states KFP goes through
(:data:`RUN_STATES`, :data:`TASK_STATES`); anything else raises :class:`Impossible`:
``SUCCEEDED -> RUNNING``, a run succeeding with a failed task, a task of a pipeline without it.
Errors carry grpc-gateway bodies ``{code, message}``; :attr:`KfpContract.fail_next` queues
answers (503...) for the next requests.
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from observer.triggers.webhook import iso8601

RUN_STATES: dict[str, set[str]] = {
    "PENDING": {"RUNNING", "FAILED", "SKIPPED", "CANCELING"},
    "RUNNING": {"SUCCEEDED", "FAILED", "CANCELING", "PAUSED"},
    "PAUSED": {"RUNNING", "CANCELING"},
    "CANCELING": {"CANCELED"},
    "SUCCEEDED": set(), "FAILED": set(), "SKIPPED": set(), "CANCELED": set(),
}
TASK_STATES: dict[str | None, set[str]] = {
    None: {"PENDING", "RUNNING", "SKIPPED"},
    "PENDING": {"RUNNING", "SKIPPED", "FAILED"},
    "RUNNING": {"SUCCEEDED", "FAILED"},
    "SUCCEEDED": set(), "FAILED": set(), "SKIPPED": set(),
}
_FINAL = {"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED"}
_FIELDS = {"display_name", "description", "pipeline_version_reference", "runtime_config",
           "experiment_id", "service_account"}
_GRPC = {400: 3, 401: 16, 404: 5, 503: 14, 500: 13, 429: 8}


class Impossible(ValueError):
    """A transition Kubeflow Pipelines never makes."""


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": _GRPC.get(status, 2), "message": message, "error": message},
                        status_code=status, headers=headers)


def _stamp(at: float | None) -> str:
    return iso8601(time.time() if at is None else at)[:19] + "Z"


class KfpContract:
    """The server's state and its FastAPI app (:meth:`app`); thread-safe."""

    def __init__(self, tasks: Sequence[str] = ("preprocess", "train", "evaluate", "promote"),
                 token: str | None = None) -> None:
        self.tasks = tuple(tasks)
        self.token = token
        self.runs: dict[str, dict[str, Any]] = {}
        self.fail_next: list[tuple[int, dict[str, str]]] = []
        self.requests: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()

    def run(self, display_name: str) -> dict[str, Any]:
        """The run named ``display_name`` (a copy)."""
        with self._lock:
            return copy.deepcopy(self._named(display_name))

    def _named(self, display_name: str) -> dict[str, Any]:
        found = [r for r in self.runs.values() if r["display_name"] == display_name]
        if len(found) != 1:
            raise KeyError(f"{len(found)} runs named {display_name!r}")
        return found[0]

    def advance(self, display_name: str, state: str, *, message: str = "",
                at: float | None = None) -> None:
        """Move the run to ``state`` as KFP's backend would (:data:`RUN_STATES`)."""
        with self._lock:
            run = self._named(display_name)
            if state not in RUN_STATES.get(run["state"], set()):
                raise Impossible(f"run {display_name}: {run['state']} -> {state} is not a "
                                 "transition KFP makes")
            tasks = [t for t in run["run_details"]["task_details"] if not t.get("child_tasks")]
            if state == "SUCCEEDED" and any(t["state"] not in ("SUCCEEDED", "SKIPPED") for t in tasks):
                raise Impossible(f"run {display_name} cannot succeed with tasks "
                                 f"{sorted((t['display_name'], t['state']) for t in tasks)}")
            run["state"] = state
            run["state_history"].append({"update_time": _stamp(at), "state": state})
            if state in _FINAL:
                run["finished_at"] = _stamp(at)
                for t in run["run_details"]["task_details"]:
                    if t.get("child_tasks"):  # the root DAG ends with the run
                        t.update(state=state, end_time=_stamp(at))
            if state == "FAILED":
                run["error"] = {"code": 2, "message": message or "a task failed"}

    def task(self, display_name: str, task: str, state: str, *, message: str = "",
             at: float | None = None) -> None:
        """Move one task of the run to ``state`` (:data:`TASK_STATES`); the run must be
        running and its pipeline have that task."""
        with self._lock:
            run = self._named(display_name)
            if run["state"] != "RUNNING":
                raise Impossible(f"run {display_name} is {run['state']}: its tasks do not run")
            if task not in self.tasks:
                raise Impossible(f"the pipeline has no task {task!r} ({list(self.tasks)})")
            details = run["run_details"]["task_details"]
            if not details:
                details.append({"run_id": run["run_id"], "task_id": str(uuid.uuid4()),
                                "display_name": "root", "state": "RUNNING",
                                "create_time": _stamp(at), "start_time": _stamp(at),
                                "child_tasks": []})
            entry = next((t for t in details if t["display_name"] == task), None)
            current = entry["state"] if entry else None
            if state not in TASK_STATES[current]:
                raise Impossible(f"task {task} of {display_name}: {current or '(new)'} -> "
                                 f"{state} is not a transition KFP makes")
            if entry is None:
                entry = {"run_id": run["run_id"], "task_id": str(uuid.uuid4()),
                         "display_name": task, "create_time": _stamp(at), "start_time": _stamp(at)}
                details.append(entry)
                details[0]["child_tasks"].append({"task_id": entry["task_id"], "pod_name": task})
            entry["state"] = state
            if state in _FINAL:
                entry["end_time"] = _stamp(at)
            if message:
                entry["error"] = {"code": 2, "message": message}

    def delete(self, display_name: str) -> None:
        with self._lock:
            del self.runs[self._named(display_name)["run_id"]]

    # -- handlers -----------------------------------------------------------------------

    def _create(self, body: Any) -> JSONResponse:
        if not isinstance(body, dict):
            return _error(400, "the body is not a v2beta1.Run")
        unknown = sorted(set(body) - _FIELDS)
        if unknown:
            return _error(400, f"unknown field {unknown[0]!r} in v2beta1.Run")
        ref = body.get("pipeline_version_reference")
        params = (body.get("runtime_config") or {}).get("parameters")
        if not isinstance(body.get("display_name"), str) or not body["display_name"]:
            return _error(400, "display_name is required")
        if not isinstance(ref, dict) or not ref.get("pipeline_id") or not ref.get("pipeline_version_id"):
            return _error(400, "pipeline_version_reference needs pipeline_id and pipeline_version_id")
        if not isinstance(params, dict):
            return _error(400, "runtime_config.parameters must be an object")
        now = _stamp(None)
        run = {**body, "run_id": str(uuid.uuid4()), "state": "PENDING", "storage_state": "AVAILABLE",
               "created_at": now, "scheduled_at": now,
               "state_history": [{"update_time": now, "state": "PENDING"}],
               "run_details": {"task_details": []}}
        with self._lock:
            self.runs[run["run_id"]] = run
            return JSONResponse(copy.deepcopy(run))

    def _list(self, query: dict[str, str]) -> JSONResponse:
        try:
            predicates = json.loads(query.get("filter") or "{}").get("predicates", [])
        except ValueError:
            return _error(400, "filter is not JSON")
        with self._lock:
            runs = list(self.runs.values())
            for p in predicates:
                if p.get("key") != "display_name" or p.get("operation") != "EQUALS":
                    return _error(400, f"this contract filters on display_name EQUALS, not {p}")
                runs = [r for r in runs if r["display_name"] == p.get("string_value")]
            return JSONResponse({"runs": copy.deepcopy(runs), "total_size": len(runs)})

    def _get(self, run_id: str) -> JSONResponse:
        with self._lock:
            run = self.runs.get(run_id)
            if run is None:
                return _error(404, f"Failed to get run: run {run_id} not found")
            return JSONResponse(copy.deepcopy(run))

    def app(self) -> FastAPI:
        app = FastAPI(title="kfp contract")

        @app.middleware("http")
        async def gate(request: Request, call_next: Any) -> Any:
            bearer = request.headers.get("authorization", "")
            if self.token is not None and bearer != f"Bearer {self.token}":
                response = _error(401, "Unauthenticated")
            elif self.fail_next:
                status, headers = self.fail_next.pop(0)
                response = _error(status, "injected failure", headers)
            else:
                response = await call_next(request)
            self.requests.append((request.method, request.url.path, response.status_code))
            return response

        @app.post("/apis/v2beta1/runs")
        async def create(request: Request) -> JSONResponse:
            try:
                body = json.loads(await request.body())
            except ValueError:
                body = None
            return self._create(body)

        @app.get("/apis/v2beta1/runs")
        async def listing(request: Request) -> JSONResponse:
            return self._list(dict(request.query_params))

        @app.get("/apis/v2beta1/runs/{run_id}")
        async def get(run_id: str) -> JSONResponse:
            return self._get(run_id)

        return app
