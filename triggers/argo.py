"""Start a retraining run on Argo Workflows through Hera's ``WorkflowsService``.

:class:`ArgoAction` is the ``argo`` :class:`~observer.triggers.action.Action`. One call of
:meth:`ArgoAction.attempt` is one attempt of an ``argo`` outbox row:

1. export the drifted window and its reference as Parquet (idempotent: same paths, same data);
2. list the model's workflows that are not completed (label selector
   ``observer.dev/model=<m>,workflows.argoproj.io/completed!=true``): when one of them carries
   this episode's label the run already exists (``already_done``); when
   ``max_concurrent_runs`` are in progress the attempt waits (``wait``, not counted) and is
   tried again after ``busy_retry_s``;
3. submit from the WorkflowTemplate (``POST /api/v1/workflows/{ns}/submit``) or create the
   Workflow inline (``POST /api/v1/workflows/{ns}``), named after the episode, so that a
   repeat is answered 409 by Argo and counts as already submitted.

Answers are classified by :data:`observer.triggers.runs.RUN_STATUS_TABLE` (409 at submission:
``already_done``; 400: ``permanent``; 401, 403, 404, 429, 5xx: ``retry``), and retried by the
shared :class:`~observer.triggers.retry.RetryPolicy` with ``trigger.argo``'s ``max_attempts``
and backoff.
"""

from __future__ import annotations

import json
import time
from typing import Any, Self

from observer.core.extras import require
from observer.triggers.action import (
    ALREADY_DONE,
    DELIVERED,
    PERMANENT,
    RETRY,
    WAIT,
    Exporter,
    Outcome,
    export_first,
)
from observer.triggers.config import ArgoConfig, PipelineConfig, TriggerConfig
from observer.triggers.ledger import Delivery
from observer.triggers.naming import (
    ARGO_COMPLETED_LABEL,
    EPISODE_LABEL,
    MODEL_LABEL,
    POLICY_LABEL,
    SEGMENT_ANNOTATION,
    SEGMENT_LABEL,
    label_value,
)
from observer.triggers.retry import RetryPolicy, parse_retry_after
from observer.triggers.runs import RunAction, run_parameters, run_verdict
from observer.triggers.tracking.phases import (
    PollError,
    RunStatus,
    argo_failed_step,
    outcome_of,
    unix,
    why_of,
)
from observer.triggers.tracking.store import TrackedRun

# Hera (and requests, which it brings) is the `argo` extra. This module is imported only when a
# policy lists the argo action (observer.triggers.action.ACTIONS), so a missing extra fails at
# start, naming it; what KFP runs share with Argo's is in observer.triggers.runs.
ARGO_FEATURE = "Argo Workflows runs (a trigger policy's 'argo' action)"
require("hera", extra="argo", feature=ARGO_FEATURE)

import requests  # noqa: E402
from hera.exceptions import HeraException  # noqa: E402
from hera.workflows.models import (  # noqa: E402
    ObjectMeta,
    SubmitOpts,
    Workflow,
    WorkflowCreateRequest,
    WorkflowSpec,
    WorkflowSubmitRequest,
)
from hera.workflows.service import WorkflowsService  # noqa: E402


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


class ArgoAction(RunAction):
    """Submits runs to one Argo Server (see the module docstring)."""

    name = "argo"

    def __init__(
        self,
        cfg: ArgoConfig,
        pipeline: PipelineConfig | None = None,
        *,
        exporter: Exporter | None = None,
    ) -> None:
        if not cfg.server:
            raise ValueError("a policy lists the argo action but trigger.argo.server is empty")
        self.cfg = cfg
        self.pipeline = pipeline or PipelineConfig()
        self.exporter = exporter
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

    @classmethod
    def from_config(cls, cfg: TriggerConfig, exporter: Exporter | None = None) -> Self:
        return cls(cfg.argo, cfg.pipeline, exporter=exporter)

    @property
    def name_prefix(self) -> str:
        return self.cfg.name_prefix

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

    # -- the action -----------------------------------------------------------------------

    def retry_policy(self, delivery: Delivery) -> RetryPolicy:
        return RetryPolicy.of(self.cfg)

    def attempt(self, delivery: Delivery) -> Outcome:
        """Export, check, submit; never raises for server or network failures."""
        run = json.loads(delivery.payload)
        name = run["workflow_name"]
        failed = export_first(self.exporter, run.get("export"))
        if failed is not None:
            return failed
        step = "list"
        try:
            running = self.in_progress(run["model"])
            if any(r.get(EPISODE_LABEL) == label_value(run["episode_id"]) for r in running):
                return Outcome(ALREADY_DONE, f"workflow {name} already in progress")
            policy_max = int(run.get("max_concurrent_runs", 1))
            if len(running) >= policy_max:
                names = ", ".join(sorted(r["name"] for r in running))
                return Outcome(
                    WAIT,
                    f"waiting: {len(running)} run(s) in progress for model {run['model']!r} "
                    f"(max {policy_max}: {names})",
                    retry_after_s=self.cfg.busy_retry_s,
                )
            step = "submit"
            request = self.submit_request(run)
            if isinstance(request, WorkflowSubmitRequest):
                self.service.submit_workflow(request, namespace=self.cfg.namespace)
            else:
                self.service.create_workflow(request, namespace=self.cfg.namespace)
            return Outcome(DELIVERED, f"workflow {name} submitted", 200)
        except HeraException as exc:
            code = int(getattr(exc, "status_code", 0) or self._last_code() or 0)
            return self._answer(code, step, name, str(exc))
        # Network errors: transient as far as we can tell, retried and bounded.
        except Exception as exc:  # noqa: BLE001
            return Outcome(RETRY, f"{step}: {type(exc).__name__}: {exc}"[:300])

    # -- tracking (observer.triggers.tracking) --------------------------------------------

    def run_url(self, run: TrackedRun) -> str:
        """The workflow's ``GET`` endpoint."""
        return f"{self.cfg.server.rstrip('/')}/api/v1/workflows/{self.cfg.namespace}/{run.name}"

    def poll(self, run: TrackedRun) -> RunStatus:
        """The workflow's phase, and the step that failed (``GET /api/v1/workflows/{ns}/{name}``);
        404: not found; no answer: :class:`~observer.triggers.tracking.phases.PollError`."""
        try:
            workflow = self.service.get_workflow(run.name, namespace=self.cfg.namespace)
        # Hera's errors, network errors, answers that are not a Workflow (Hera fails reading
        # an error body without `message` too): the status line decides; polled again later.
        except Exception as exc:  # noqa: BLE001
            code = self._last_code()
            if code == 404:
                return RunStatus.missing()
            if code is not None and not 200 <= code < 300:
                detail = _message(self.session.last_response, str(exc))
                raise PollError(f"HTTP {code}: {detail}") from None
            raise PollError(f"{type(exc).__name__}: {exc}"[:300]) from None
        status = workflow.model_dump(mode="json", by_alias=True, exclude_none=True).get("status") or {}
        phase = status.get("phase")[:64] if isinstance(status.get("phase"), str) else ""
        outcome = outcome_of("argo", phase)
        step, message = argo_failed_step(status) if outcome == "failed" else ("", "")
        return RunStatus(
            found=True,
            phase=phase,
            outcome=outcome,
            failed_step=step,
            message=message or (why_of("argo", phase) if outcome == "failed" else ""),
            started_at=unix(status.get("startedAt")),
            finished_at=unix(status.get("finishedAt")),
        )

    def _last_code(self) -> int | None:
        r = self.session.last_response
        return r.status_code if r is not None else None

    def _answer(self, code: int, step: str, name: str, message: str) -> Outcome:
        real = self._last_code() or code  # Hera maps unknown codes (429, 503) to its base class
        kind = run_verdict(real)
        if kind in (DELIVERED, ALREADY_DONE) and step == "submit":
            return Outcome(ALREADY_DONE, f"workflow {name} already submitted (HTTP {real})", real)
        if kind == PERMANENT:
            detail = _message(self.session.last_response, message)
            return Outcome(PERMANENT, f"{step}: HTTP {real}: {detail}", real)
        response = self.session.last_response
        header = response.headers.get("retry-after") if response is not None else None
        return Outcome(RETRY, f"{step}: HTTP {real}", real, parse_retry_after(header, time.time()))


def _message(response: requests.Response | None, fallback: str) -> str:
    """The grpc-gateway error's ``message`` when there is one."""
    if response is not None:
        try:
            return str(json.loads(response.text).get("message", ""))[:300] or fallback[:300]
        except (ValueError, AttributeError):
            pass
    return fallback[:300]
