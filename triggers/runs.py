"""A retraining run, whatever starts it (Argo Workflows or Kubeflow Pipelines).

The run's payload is fixed when the decision is recorded (:func:`build_run`, the outbox row),
its parameters are the WorkflowTemplate's (:func:`run_parameters`), and both run servers'
answers are classified by one table (:data:`RUN_STATUS_TABLE`, first matching row wins):

==============================  =============  ==========================================
answer                          outcome        why
==============================  =============  ==========================================
2xx                             delivered      the run exists now
409 Conflict                    already_done   a run with the episode's name exists
400 Bad Request                 permanent      the request is invalid: retrying cannot help
401, 403                        retry          a token mid-rotation; bounded by max_attempts
404 Not Found                   retry          the WorkflowTemplate may not be applied yet
429, 5xx                        retry          transient; ``Retry-After`` is honoured
other, connection errors        retry
==============================  =============  ==========================================

>>> run_verdict(200), run_verdict(409), run_verdict(400), run_verdict(503)
('delivered', 'already_done', 'permanent', 'retry')
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from observer.triggers.action import OutcomeKind, StatusTable, outcome_of, unconfigured
from observer.triggers.ledger import Delivery, NewDelivery
from observer.triggers.naming import workflow_name

if TYPE_CHECKING:
    from observer.core.records import DriftResult
    from observer.triggers.config import PolicyConfig
    from observer.triggers.policy import Decision

RUN_STATUS_TABLE: StatusTable = (
    (200, 299, "delivered"),
    (409, 409, "already_done"),
    (400, 400, "permanent"),
    (401, 404, "retry"),
    (429, 429, "retry"),
    (500, 599, "retry"),
)


def run_verdict(status_code: int) -> OutcomeKind:
    """The outcome of a run server's answer (see :data:`RUN_STATUS_TABLE`)."""
    return outcome_of(RUN_STATUS_TABLE, status_code)


def run_parameters(run: dict[str, Any]) -> dict[str, str]:
    """The WorkflowTemplate parameters an episode fills in (names as in the template).

    ``conditions`` (JSON text) only for a combined policy's run: a single-signal policy sends
    the parameters it always did, so pipelines that do not declare it keep working.
    """
    export = run.get("export") or {}
    params = {
        "episode-id": run["episode_id"],
        "policy": run["policy"],
        "segment": run["segment_key"],
        "record-type": run["record_type"],
        "current-data": export.get("current", ""),
        "reference-data": export.get("reference", ""),
        "approval": "required" if run.get("approval") else "none",
    }
    if run.get("conditions"):  # a combined policy's conditions and their figures
        params["conditions"] = json.dumps(run["conditions"], separators=(",", ":"))
    return params


def build_run(
    *,
    decision: Any,
    result: Any,
    policy: Any,
    name_prefix: str,
    export: dict[str, Any] | None,
) -> dict[str, Any]:
    """The payload of a run action, fixed when the decision is recorded (the outbox row).

    Everything a later attempt needs is here, so a restarted stage submits the same run:
    the episode-derived workflow name, labels' sources, and what to export where
    (``export``: :func:`observer.triggers.export.export_spec`). The run's ``approval`` parameter
    asks for the Argo suspend step only with ``approval_mode: argo``; with ``ledger`` the
    decision was approved in observer's ledger before this run was ever submitted.
    """
    return {
        "episode_id": decision.episode_id,
        "policy": decision.policy,
        "segment_key": decision.segment_key,
        "segment": dict(result.segment),
        "record_type": decision.record_type,
        "model": result.segment.get(policy.model_field, ""),
        "reason": decision.reason,
        "window_index": decision.window_index,
        "first_window_index": decision.first_window_index,
        "workflow_name": workflow_name(name_prefix, decision.episode_id),
        "approval": policy.approval and policy.approval_mode == "argo",
        "max_concurrent_runs": policy.max_concurrent_runs,
        "export": export,
        "conditions": [v.as_dict() for v in getattr(decision, "conditions", ())],
    }


def run_payload(run: dict[str, Any]) -> bytes:
    """The outbox row's payload: compact, sorted JSON (the same bytes for the same run)."""
    return json.dumps(run, separators=(",", ":"), sort_keys=True).encode()


class RunAction:
    """What the two run actions (Argo, KFP) share: one outbox row per decision, sent to the one
    server the action is configured for, with a run named after the episode. Subclasses set
    ``name``, ``target`` and ``name_prefix``."""

    name: str
    target: str
    name_prefix: str

    def plan(
        self,
        policy: PolicyConfig,
        decision: Decision,
        result: DriftResult,
        export: dict[str, Any] | None,
    ) -> list[NewDelivery]:
        """One run, named after the episode (:func:`build_run`)."""
        run = build_run(decision=decision, result=result, policy=policy,
                        name_prefix=self.name_prefix, export=export)
        return [NewDelivery(self.target, run_payload(run), self.name)]

    def cannot_attempt(self, delivery: Delivery) -> str | None:
        """A row owed to another server than the configured one can never be attempted."""
        return None if delivery.target == self.target else unconfigured(self.name, delivery.target)
