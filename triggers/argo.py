"""Start a retraining run on Argo Workflows through Hera's ``WorkflowsService``.

One call of :meth:`ArgoAction.attempt` is one delivery attempt of an ``argo`` outbox row:

1. export the drifted window and its reference as Parquet (idempotent: same paths, same data);
2. list the model's workflows that are not completed (label selector
   ``observer.dev/model=<m>,workflows.argoproj.io/completed!=true``): when one of them carries
   this episode's label the run already exists; when ``max_concurrent_runs`` are in progress
   the attempt waits (``busy``) and is tried again after ``busy_retry_s``;
3. submit from the WorkflowTemplate (``POST /api/v1/workflows/{ns}/submit``) or create the
   Workflow inline (``POST /api/v1/workflows/{ns}``), named after the episode, so that a
   repeat is answered 409 by Argo and counts as already submitted.

How an answer is classified (:data:`ARGO_STATUS_TABLE`, first matching row wins):

==============================  ==========  =============================================
answer                          verdict     why
==============================  ==========  =============================================
2xx                             submitted   the run exists now
409 Conflict                    submitted   a run with the episode's name exists already
400 Bad Request                 rejected    the request is invalid: retrying cannot help
401, 403                        retry       a token mid-rotation; bounded by max_attempts
404 Not Found                   retry       the WorkflowTemplate may not be applied yet
429, 5xx                        retry       transient; ``Retry-After`` is honoured
other, connection errors        retry
==============================  ==========  =============================================

>>> argo_verdict(200), argo_verdict(409), argo_verdict(400), argo_verdict(503)
('submitted', 'submitted', 'rejected', 'retry')
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from typing import Any, Literal

import requests
from hera.exceptions import HeraException
from hera.workflows.models import (
    ObjectMeta,
    SubmitOpts,
    Workflow,
    WorkflowCreateRequest,
    WorkflowSpec,
    WorkflowSubmitRequest,
)
from hera.workflows.service import WorkflowsService

from observer.core.config import ArgoConfig, PipelineConfig
from observer.triggers.ledger import DEAD_LETTER, DELIVERED, FAILED
from observer.triggers.naming import (
    ARGO_COMPLETED_LABEL,
    EPISODE_LABEL,
    MODEL_LABEL,
    POLICY_LABEL,
    SEGMENT_ANNOTATION,
    SEGMENT_LABEL,
    label_value,
)
from observer.triggers.webhook import AttemptResult, backoff_delay, parse_retry_after

log = logging.getLogger(__name__)

ArgoVerdict = Literal["submitted", "rejected", "retry"]

ARGO_STATUS_TABLE: tuple[tuple[int, int, ArgoVerdict], ...] = (
    (200, 299, "submitted"),
    (409, 409, "submitted"),
    (400, 400, "rejected"),
    (401, 404, "retry"),
    (429, 429, "retry"),
    (500, 599, "retry"),
)


def argo_verdict(status_code: int) -> ArgoVerdict:
    """The verdict for an Argo Server answer (see :data:`ARGO_STATUS_TABLE`)."""
    for low, high, verdict in ARGO_STATUS_TABLE:
        if low <= status_code <= high:
            return verdict
    return "retry"


class _TimedSession(requests.Session):
    """Hera passes no timeout: without one a stalled server would stall the stage."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        self.timeout_s = timeout_s
        self.last_response: requests.Response | None = None

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("timeout", self.timeout_s)
        kwargs.setdefault("allow_redirects", False)
        self.last_response = None
        response = super().request(method, url, **kwargs)
        self.last_response = response
        return response


def run_labels(run: dict[str, Any]) -> dict[str, str]:
    """The labels a run carries: policy, segment, episode and model (label-safe values)."""
    return {
        POLICY_LABEL: label_value(run["policy"]),
        SEGMENT_LABEL: label_value(run["segment_key"]),
        EPISODE_LABEL: label_value(run["episode_id"]),
        MODEL_LABEL: label_value(run["model"] or "unknown"),
    }


def run_parameters(run: dict[str, Any]) -> dict[str, str]:
    """The WorkflowTemplate parameters an episode fills in (names as in the template)."""
    export = run.get("export") or {}
    return {
        "episode-id": run["episode_id"],
        "policy": run["policy"],
        "segment": run["segment_key"],
        "record-type": run["record_type"],
        "current-data": export.get("current", ""),
        "reference-data": export.get("reference", ""),
        "approval": "required" if run.get("approval") else "none",
    }


class ArgoAction:
    """Submits runs to one Argo Server; the stage calls :meth:`attempt` for each due row."""

    def __init__(
        self,
        cfg: ArgoConfig,
        pipeline: PipelineConfig | None = None,
        *,
        exporter: Callable[[dict[str, Any]], dict[str, int]] | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not cfg.server:
            raise ValueError("a policy lists the argo action but trigger.argo.server is empty")
        self.cfg = cfg
        self.pipeline = pipeline or PipelineConfig()
        self.exporter = exporter
        self.rng = rng
        self.session = _TimedSession(cfg.timeout_s)
        verify: bool | str = cfg.ca_file or cfg.verify_ssl
        certs = (cfg.client_cert, cfg.client_key) if cfg.client_cert else None
        self.service = WorkflowsService(
            host=cfg.server,
            token=cfg.token.get_secret_value() if cfg.token else None,
            namespace=cfg.namespace,
            verify_ssl=verify,  # type: ignore[arg-type]  # requests takes a CA path here too
            client_certs=certs,
            session=self.session,
        )

    @property
    def target(self) -> str:
        """The endpoint runs go to: the ledger's target of every ``argo`` row."""
        base = f"{self.cfg.server.rstrip('/')}/api/v1/workflows/{self.cfg.namespace}"
        return f"{base}/submit" if self.cfg.mode == "template" else base

    def close(self) -> None:
        self.service.close()

    # -- requests -------------------------------------------------------------------------

    def in_progress(self, model: str) -> list[dict[str, str]]:
        """Labels of the model's workflows that have not completed."""
        selector = f"{MODEL_LABEL}={label_value(model or 'unknown')},{ARGO_COMPLETED_LABEL}!=true"
        listed = self.service.list_workflows(namespace=self.cfg.namespace, label_selector=selector)
        return [
            {"name": w.metadata.name or "", **(w.metadata.labels or {})} for w in listed.items or []
        ]

    def submit_request(self, run: dict[str, Any]) -> WorkflowSubmitRequest | WorkflowCreateRequest:
        """The body for this run, in the configured mode."""
        labels = run_labels(run)
        params = run_parameters(run)
        name = run["workflow_name"]
        if self.cfg.mode == "template":
            return WorkflowSubmitRequest(
                namespace=self.cfg.namespace,
                resource_kind="WorkflowTemplate",
                resource_name=self.cfg.workflow_template,
                submit_options=SubmitOpts(
                    name=name,
                    labels=",".join(f"{k}={v}" for k, v in labels.items()),
                    annotations=f"{SEGMENT_ANNOTATION}={run['segment_key']}",
                    parameters=[f"{k}={v}" for k, v in params.items()],
                    service_account=self.cfg.service_account or None,
                ),
            )
        from observer.triggers.pipeline.render import workflow_spec

        spec = workflow_spec(self.pipeline, self.cfg)
        spec["arguments"] = {
            "parameters": [
                {"name": p["name"], "value": params.get(p["name"], p.get("value", ""))}
                for p in spec["arguments"]["parameters"]
            ]
        }
        if self.cfg.service_account:
            spec["serviceAccountName"] = self.cfg.service_account
        return WorkflowCreateRequest(
            namespace=self.cfg.namespace,
            workflow=Workflow(
                api_version="argoproj.io/v1alpha1",
                kind="Workflow",
                metadata=ObjectMeta(
                    name=name,
                    namespace=self.cfg.namespace,
                    labels=labels,
                    annotations={SEGMENT_ANNOTATION: run["segment_key"]},
                ),
                spec=WorkflowSpec.model_validate(spec),
            ),
        )

    # -- one attempt ----------------------------------------------------------------------

    def attempt(self, run: dict[str, Any], attempts_before: int, now: float) -> AttemptResult:
        """Export, check, submit; never raises for server or network failures."""
        attempts = attempts_before + 1
        name = run["workflow_name"]
        step = "export"
        try:
            if self.exporter is not None and run.get("export"):
                self.exporter(run)
            step = "list"
            running = self.in_progress(run["model"])
            if any(r.get(EPISODE_LABEL) == label_value(run["episode_id"]) for r in running):
                return self._done(attempts, None, f"workflow {name} already in progress")
            policy_max = int(run.get("max_concurrent_runs", 1))
            if len(running) >= policy_max:
                names = ", ".join(sorted(r["name"] for r in running))
                delay = self.cfg.busy_retry_s
                # Waiting for a free slot is not a failure: the attempt does not count.
                return AttemptResult(
                    FAILED,
                    attempts_before,
                    now + delay,
                    None,
                    f"busy: {len(running)} run(s) in progress for model {run['model']!r}",
                    f"waiting: {len(running)} run(s) in progress for model {run['model']!r} "
                    f"(max {policy_max}: {names}); checking again in {delay:g}s",
                )
            step = "submit"
            request = self.submit_request(run)
            if isinstance(request, WorkflowSubmitRequest):
                self.service.submit_workflow(request, namespace=self.cfg.namespace)
            else:
                self.service.create_workflow(request, namespace=self.cfg.namespace)
            return self._done(attempts, 200, f"workflow {name} submitted")
        except HeraException as exc:
            code = int(getattr(exc, "status_code", 0) or self._last_code() or 0)
            return self._answer(code, attempts, now, step, name, str(exc))
        # Network errors, and the export's many failure types (Kafka, storage, credentials):
        # all transient as far as we can tell, retried and bounded by max_attempts.
        except Exception as exc:  # noqa: BLE001
            return self._retry(attempts, now, None, f"{step}: {type(exc).__name__}: {exc}"[:300])

    def _last_code(self) -> int | None:
        r = self.session.last_response
        return r.status_code if r is not None else None

    def _answer(
        self, code: int, attempts: int, now: float, step: str, name: str, message: str
    ) -> AttemptResult:
        real = self._last_code() or code  # Hera maps unknown codes (429, 503) to its base class
        verdict = argo_verdict(real)
        if verdict == "submitted" and step == "submit":
            return self._done(attempts, real, f"workflow {name} already submitted (HTTP {real})")
        if verdict == "rejected":
            error = f"{step}: HTTP {real}: {_message(self.session.last_response, message)}"
            return AttemptResult(
                DEAD_LETTER, attempts, None, real, error, f"{error}; not retried (invalid request)"
            )
        return self._retry(attempts, now, real, f"{step}: HTTP {real}")

    def _done(self, attempts: int, code: int | None, detail: str) -> AttemptResult:
        log.info("argo: %s", detail)
        return AttemptResult(DELIVERED, attempts, None, code, None, detail)

    def _retry(self, attempts: int, now: float, code: int | None, error: str) -> AttemptResult:
        if attempts >= self.cfg.max_attempts:
            return AttemptResult(
                DEAD_LETTER, attempts, None, code, error, f"{error}; gave up after {attempts} attempts"
            )
        delay = backoff_delay(attempts, self.cfg.backoff_initial_s, self.cfg.backoff_max_s, self.rng)
        response = self.session.last_response
        if response is not None and code is not None:
            retry_after = parse_retry_after(response.headers.get("retry-after"), now)
            if retry_after is not None:
                delay = max(delay, retry_after)
        detail = f"{error}; attempt {attempts + 1} in {delay:.3g}s"
        log.info("argo: %s", detail)
        return AttemptResult(FAILED, attempts, now + delay, code, error, detail)


def _message(response: requests.Response | None, fallback: str) -> str:
    """The grpc-gateway error's ``message`` when there is one."""
    if response is not None:
        try:
            return str(json.loads(response.text).get("message", ""))[:300] or fallback[:300]
        except (ValueError, AttributeError):
            pass
    return fallback[:300]


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
    (``export``: :func:`observer.triggers.export.export_spec`). The run's ``approval`` parameter asks
    for the Argo suspend step only with ``approval_mode: argo``; with ``ledger`` the decision
    was approved in observer's ledger before this run was ever submitted.
    """
    from observer.triggers.naming import workflow_name

    run: dict[str, Any] = {
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
    }
    return run
