"""What a run server says about a run, and what it means for observer: :data:`PHASE_TABLE`.

Argo Workflows reports a workflow's ``status.phase`` (``""`` until the controller picks it up,
``Pending``, ``Running``, ``Succeeded``, ``Failed``, ``Error``) and a status per node; Kubeflow
Pipelines (v2beta1) a run's ``state`` (``RuntimeState``) with ``error`` and
``run_details.task_details``. One table maps every upstream phase to observer's outcome:

==========  ==========================  ==========  ==========================================
server      upstream phase              outcome     why
==========  ==========================  ==========  ==========================================
argo        ``""``, Pending             pending     not started (the controller, a semaphore)
argo        Running                     running
argo        Succeeded                   succeeded
argo        Failed                      failed      a step failed
argo        Error                       failed      the controller could not run it
kfp         RUNTIME_STATE_UNSPECIFIED,  pending
            PENDING
kfp         RUNNING, PAUSED, CANCELING  running     not final yet
kfp         SUCCEEDED                   succeeded
kfp         FAILED                      failed
kfp         CANCELED                    failed      stopped before it finished
kfp         SKIPPED                     failed      nothing ran: no model was trained
==========  ==========================  ==========  ==========================================

A phase the table does not know counts as ``running``: the run is polled on, and
``trigger.runs.timeout_s`` bounds how long.

>>> outcome_of("argo", "Error"), outcome_of("kfp", "CANCELING"), outcome_of("kfp", "NEW?")
('failed', 'running', 'running')
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

Upstream = Literal["pending", "running", "succeeded", "failed"]
FINAL: tuple[str, ...] = ("succeeded", "failed")

PHASE_TABLE: tuple[tuple[str, str, Upstream, str], ...] = (
    ("argo", "", "pending", "not yet picked up by the controller"),
    ("argo", "Pending", "pending", "waiting to start"),
    ("argo", "Running", "running", ""),
    ("argo", "Succeeded", "succeeded", ""),
    ("argo", "Failed", "failed", ""),
    ("argo", "Error", "failed", "the workflow controller could not run it"),
    ("kfp", "RUNTIME_STATE_UNSPECIFIED", "pending", "waiting to start"),
    ("kfp", "PENDING", "pending", "waiting to start"),
    ("kfp", "RUNNING", "running", ""),
    ("kfp", "PAUSED", "running", "paused"),
    ("kfp", "CANCELING", "running", "being cancelled"),
    ("kfp", "SUCCEEDED", "succeeded", ""),
    ("kfp", "FAILED", "failed", ""),
    ("kfp", "CANCELED", "failed", "cancelled before it finished"),
    ("kfp", "SKIPPED", "failed", "skipped: nothing ran, no model was trained"),
)
_BY_PHASE = {(server, phase): (outcome, why) for server, phase, outcome, why in PHASE_TABLE}


def outcome_of(server: str, phase: str) -> Upstream:
    """The outcome of an upstream phase (see :data:`PHASE_TABLE`); unknown ones: running."""
    return _BY_PHASE.get((server, phase), ("running", ""))[0]


def why_of(server: str, phase: str) -> str:
    """The table's explanation of a phase ('' when it needs none)."""
    return _BY_PHASE.get((server, phase), ("running", f"unknown phase {phase!r}"))[1]


class PollError(Exception):
    """A poll got no usable answer (network, 5xx, 401...): the run is polled again later."""


@dataclass(frozen=True)
class RunStatus:
    """One poll's answer about one run."""

    found: bool
    """False: the server answered 404 (the run is not there)."""
    phase: str = ""
    outcome: Upstream = "pending"
    failed_step: str = ""
    message: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    run_id: str = ""
    """The server's id of the run, when it is not its name (KFP)."""

    @classmethod
    def missing(cls) -> RunStatus:
        return cls(found=False)


def unix(stamp: Any) -> float | None:
    """Unix seconds of an RFC 3339 time (``2026-01-02T03:04:05Z``); None when absent or bad.

    >>> unix("1970-01-01T00:01:00Z"), unix("1970-01-01T00:01:00.5+00:00"), unix(None), unix("x")
    (60.0, 60.5, None, None)
    """
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        parsed = datetime.fromisoformat(stamp)  # Python 3.11 reads the "Z"
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


def _text(value: Any, limit: int = 300) -> str:
    """A server's string, bounded (a hostile or broken server may send anything)."""
    return value[:limit] if isinstance(value, str) else ""


def argo_failed_step(status: dict[str, Any]) -> tuple[str, str]:
    """The step that failed (a leaf node, earliest finished) and its message, from a Workflow's
    ``status``; falls back to the workflow's own message.

    >>> nodes = {"a": {"id": "a", "name": "w", "type": "Steps", "phase": "Failed"},
    ...          "b": {"id": "b", "name": "w[0].train", "displayName": "train", "type": "Pod",
    ...                "phase": "Failed", "message": "OOMKilled", "finishedAt": "2026-01-01T00:00:00Z"}}
    >>> argo_failed_step({"phase": "Failed", "nodes": nodes, "message": "child failed"})
    ('train', 'OOMKilled')
    >>> argo_failed_step({"phase": "Error", "message": "invalid spec"})
    ('', 'invalid spec')
    """
    nodes = status.get("nodes")
    failed = [
        n for n in (nodes.values() if isinstance(nodes, dict) else ())
        if isinstance(n, dict) and n.get("phase") in ("Failed", "Error")
        # Steps/DAG/retry nodes only say a child failed: the leaf names the step.
        and n.get("type") not in ("Steps", "DAG", "StepGroup", "TaskGroup", "Retry")
    ]
    failed.sort(key=lambda n: unix(n.get("finishedAt")) or float("inf"))
    fallback = _text(status.get("message"))
    if not failed:
        return "", fallback
    node = failed[0]
    step = _text(node.get("displayName")) or _text(node.get("templateName")) or _text(node.get("name"))
    return step, _text(node.get("message")) or fallback


def kfp_failed_step(run: dict[str, Any]) -> tuple[str, str]:
    """The task that failed (a leaf task, earliest ended) and a message, from a v2beta1 Run.

    >>> run = {"state": "FAILED", "error": {"code": 2, "message": "task train failed"},
    ...        "run_details": {"task_details": [
    ...            {"display_name": "root", "state": "FAILED", "child_tasks": [{"task_id": "t"}]},
    ...            {"display_name": "train", "state": "FAILED", "error": {"message": "OOM"}}]}}
    >>> kfp_failed_step(run)
    ('train', 'OOM')
    """
    error = run.get("error")
    fallback = _text(error.get("message")) if isinstance(error, dict) else ""
    details = run.get("run_details")
    tasks = details.get("task_details") if isinstance(details, dict) else None
    failed = [
        t for t in (tasks if isinstance(tasks, list) else ())
        if isinstance(t, dict) and t.get("state") == "FAILED" and not t.get("child_tasks")
    ]
    failed.sort(key=lambda t: unix(t.get("end_time")) or float("inf"))
    if not failed:
        return "", fallback
    task = failed[0]
    task_error = task.get("error")
    message = _text(task_error.get("message")) if isinstance(task_error, dict) else ""
    return _text(task.get("display_name")), message or fallback


def kfp_started_at(run: dict[str, Any]) -> float | None:
    """When a v2beta1 Run first reached RUNNING (its ``state_history``), if it says."""
    history = run.get("state_history")
    for entry in history if isinstance(history, list) else ():
        if isinstance(entry, dict) and entry.get("state") == "RUNNING":
            return unix(entry.get("update_time"))
    return None
