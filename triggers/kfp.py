"""Start a retraining run on Kubeflow Pipelines (``POST /apis/v2beta1/runs``).

:class:`KfpAction` is the ``kfp`` :class:`~observer.triggers.action.Action`. Kubeflow
Pipelines does not refuse a repeated run name, so idempotency is checked here: the run's
``display_name`` is the episode's workflow name, and an attempt first lists runs with that
display name (``GET /apis/v2beta1/runs?filter=...``); one found means ``already_done``.
Answers are classified like Argo's (:data:`observer.triggers.runs.RUN_STATUS_TABLE`) and
retried by the shared :class:`~observer.triggers.retry.RetryPolicy` (``trigger.kfp.max_attempts``,
the backoff of :data:`BACKOFF_INITIAL_S` and :data:`BACKOFF_MAX_S`).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Self

import httpx

from observer.triggers.action import (
    ALREADY_DONE,
    DELIVERED,
    PERMANENT,
    RETRY,
    Exporter,
    Outcome,
    export_first,
)
from observer.triggers.config import KfpConfig, TriggerConfig
from observer.triggers.ledger import Delivery
from observer.triggers.retry import RetryPolicy, parse_retry_after
from observer.triggers.runs import RunAction, run_parameters, run_verdict
from observer.triggers.tracking.phases import (
    PollError,
    RunStatus,
    kfp_failed_step,
    kfp_started_at,
    outcome_of,
    unix,
    why_of,
)
from observer.triggers.tracking.store import TrackedRun

# What a run id may look like before it goes into a URL path (KFP's are UUIDs); another
# answer is not trusted, and the run is found by its display name again.
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")

# Backoff of KFP attempts: the same shape as Argo's defaults.
BACKOFF_INITIAL_S, BACKOFF_MAX_S = 2.0, 600.0


def run_body(cfg: KfpConfig, run: dict[str, Any]) -> dict[str, Any]:
    """The ``v2beta1.Run`` to create for an episode.

    >>> cfg = KfpConfig(pipeline_id="p", pipeline_version_id="v")
    >>> run = {"workflow_name": "retrain-e1", "episode_id": "e1", "policy": "p",
    ...        "segment_key": "shop", "record_type": "llm", "model": "m"}
    >>> body = run_body(cfg, run)
    >>> body["display_name"], body["pipeline_version_reference"]
    ('retrain-e1', {'pipeline_id': 'p', 'pipeline_version_id': 'v'})
    >>> body["runtime_config"]["parameters"]["episode-id"]
    'e1'
    """
    body: dict[str, Any] = {
        "display_name": run["workflow_name"],
        "description": f"observer episode {run['episode_id']}: {run.get('reason', '')}"[:1000],
        "pipeline_version_reference": {
            "pipeline_id": cfg.pipeline_id,
            "pipeline_version_id": cfg.pipeline_version_id,
        },
        "runtime_config": {"parameters": run_parameters(run)},
    }
    if cfg.experiment_id:
        body["experiment_id"] = cfg.experiment_id
    return body


class KfpAction(RunAction):
    """Creates runs on one Kubeflow Pipelines API server (see the module docstring)."""

    name = "kfp"

    def __init__(
        self, cfg: KfpConfig, *, name_prefix: str = "retrain-", exporter: Exporter | None = None
    ) -> None:
        if not cfg.host:
            raise ValueError("a policy lists the kfp action but trigger.kfp.host is empty")
        if not (cfg.pipeline_id and cfg.pipeline_version_id):
            raise ValueError("trigger.kfp needs pipeline_id and pipeline_version_id")
        self.cfg = cfg
        self.name_prefix = name_prefix
        self.exporter = exporter
        headers = {"authorization": f"Bearer {cfg.token.get_secret_value()}"} if cfg.token else {}
        self.client = httpx.Client(
            base_url=cfg.host.rstrip("/"),
            headers=headers,
            timeout=cfg.timeout_s,
            verify=cfg.verify_ssl,
            follow_redirects=False,
        )

    @classmethod
    def from_config(cls, cfg: TriggerConfig, exporter: Exporter | None = None) -> Self:
        # Runs are named like Argo's (trigger.argo.name_prefix), whichever server starts them.
        return cls(cfg.kfp, name_prefix=cfg.argo.name_prefix, exporter=exporter)

    @property
    def target(self) -> str:
        return f"{self.cfg.host.rstrip('/')}/apis/v2beta1/runs"

    def close(self) -> None:
        self.client.close()

    def existing(self, display_name: str) -> list[dict[str, Any]]:
        """Runs already named ``display_name``."""
        predicate = {
            "predicates": [
                {"key": "display_name", "operation": "EQUALS", "string_value": display_name}
            ]
        }
        params = {"filter": json.dumps(predicate)}
        if self.cfg.experiment_id:
            params["experiment_id"] = self.cfg.experiment_id
        response = self.client.get("/apis/v2beta1/runs", params=params)
        response.raise_for_status()
        return [r for r in response.json().get("runs") or [] if r.get("display_name") == display_name]

    # -- the action -----------------------------------------------------------------------

    def retry_policy(self, delivery: Delivery) -> RetryPolicy:
        return RetryPolicy(self.cfg.max_attempts, BACKOFF_INITIAL_S, BACKOFF_MAX_S)

    def attempt(self, delivery: Delivery) -> Outcome:
        """Export, look for the run, create it; never raises for server or network failures."""
        run = json.loads(delivery.payload)
        name = run["workflow_name"]
        failed = export_first(self.exporter, run.get("export"))
        if failed is not None:
            return failed
        step = "list"
        try:
            if self.existing(name):
                return Outcome(ALREADY_DONE, f"kfp run {name} already exists")
            step = "create"
            response = self.client.post("/apis/v2beta1/runs", json=run_body(self.cfg, run))
        except httpx.HTTPStatusError as exc:
            return self._answer(exc.response, step, name)
        except Exception as exc:  # noqa: BLE001  (network: retried, bounded)
            return Outcome(RETRY, f"{step}: {type(exc).__name__}: {exc}"[:300])
        return self._answer(response, step, name)

    # -- tracking (observer.triggers.tracking) --------------------------------------------

    def run_url(self, run: TrackedRun) -> str:
        """The run's ``GET`` endpoint (by display name until its id is known)."""
        if run.run_id:
            return f"{self.target}/{run.run_id}"
        return f"{self.target}?display_name={run.name}"

    def poll(self, run: TrackedRun) -> RunStatus:
        """The run's ``state``, and the task that failed: ``GET /apis/v2beta1/runs/{run_id}``
        once its id is known, before that the run listed under its display name; 404 or no
        such run: not found; no answer: :class:`~observer.triggers.tracking.phases.PollError`."""
        try:
            if run.run_id:
                response = self.client.get(f"/apis/v2beta1/runs/{run.run_id}")
                if response.status_code == 404:
                    return RunStatus.missing()
                response.raise_for_status()
                body = response.json()
            else:
                found = self.existing(run.name)
                if not found:
                    return RunStatus.missing()
                body = found[0]
        except httpx.HTTPStatusError as exc:
            raise PollError(f"HTTP {exc.response.status_code}: {exc.response.text[:200]}") from None
        except Exception as exc:  # noqa: BLE001  (network, a body that is not JSON)
            raise PollError(f"{type(exc).__name__}: {exc}"[:300]) from None
        if not isinstance(body, dict):
            raise PollError("the answer is not a run object")
        state = body.get("state")[:64] if isinstance(body.get("state"), str) else ""
        outcome = outcome_of("kfp", state)
        step, message = kfp_failed_step(body) if outcome == "failed" else ("", "")
        run_id = body.get("run_id")
        return RunStatus(
            found=True,
            phase=state,
            outcome=outcome,
            failed_step=step,
            message=message or why_of("kfp", state),
            started_at=kfp_started_at(body),
            finished_at=unix(body.get("finished_at")),
            run_id=run_id if isinstance(run_id, str) and _RUN_ID.fullmatch(run_id) else "",
        )

    def _answer(self, response: httpx.Response, step: str, name: str) -> Outcome:
        code = response.status_code
        kind = run_verdict(code)
        if kind == DELIVERED and step == "create":
            return Outcome(DELIVERED, f"kfp run {name} created (HTTP {code})", code)
        if kind == ALREADY_DONE and step == "create":
            return Outcome(ALREADY_DONE, f"kfp run {name} already exists (HTTP {code})", code)
        if kind == PERMANENT:
            return Outcome(PERMANENT, f"{step}: HTTP {code}: {response.text[:300]}", code)
        retry_after = parse_retry_after(response.headers.get("retry-after"), time.time())
        return Outcome(RETRY, f"{step}: HTTP {code}", code, retry_after)
