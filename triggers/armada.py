"""Submit the retraining job to an Armada queue, through Armada's gRPC API (``armada-client``).

:class:`ArmadaAction` is the ``armada`` :class:`~observer.triggers.action.Action`. One episode is
one Armada *job set* (named like the Argo workflow, ``retrain-<episode>``) holding
``pipeline.num_nodes`` jobs, one pod each; more than one is an Armada gang
(``armadaproject.io/gangId``/``gangCardinality``: all pods are scheduled together or none).
One call of :meth:`ArmadaAction.attempt`:

1. exports the drifted window and its reference as Parquet (idempotent);
2. asks Armada for the jobs of this episode (``Jobs/GetJobStatusUsingExternalJobUri``; every
   job carries ``external_job_uri = observer://episode/<id>``): jobs found, ``already_done``
   (a server without the query API answers ``UNIMPLEMENTED``: the submission goes ahead);
3. submits ``Submit/SubmitJobs`` with each job's ``client_id`` derived from the episode,
   so that Armada itself deduplicates a repeat within the job set (it answers the original
   job ids, submits nothing) even when step 2 has not seen the first submission yet.

Armada is a scheduler with its own queues: ``trigger.armada.queue`` is the queue, and the
Kubernetes gang schedulers of ``pipeline.scheduler`` (Kueue, Volcano, YuniKorn) do not apply
to these pods (no ``schedulerName``, queue label or PodGroup annotation is set: Armada's
executor places the pods itself). The pod spec keeps what Armada's submit validation asks:
a namespace, every container's resources with requests equal to limits.

gRPC answers are classified by one table (:data:`ARMADA_STATUS_TABLE`, first match wins):

=======================  ============  ===================================================
gRPC status              outcome       why
=======================  ============  ===================================================
OK                       delivered     the jobs are queued (or were: client_id dedup)
ALREADY_EXISTS           already_done
INVALID_ARGUMENT         permanent     Armada's submit validation refused the request
NOT_FOUND                permanent     no such queue
FAILED_PRECONDITION      permanent
PERMISSION_DENIED        retry         a token mid-rotation; bounded by max_attempts,
                                       *except* Armada's ``could not find queue "q"``:
                                       permanent (the queue must be created)
other                    retry         UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED
=======================  ============  ===================================================

>>> import grpc
>>> grpc_verdict(grpc.StatusCode.INVALID_ARGUMENT, "namespace is a required field")
'permanent'
>>> grpc_verdict(grpc.StatusCode.PERMISSION_DENIED, 'could not find queue "ml"')
'permanent'
>>> grpc_verdict(grpc.StatusCode.PERMISSION_DENIED, "token expired"), grpc_verdict(
...     grpc.StatusCode.UNAVAILABLE, "")
('retry', 'retry')
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Self

import grpc

from observer.triggers.action import (
    ALREADY_DONE,
    DELIVERED,
    PERMANENT,
    RETRY,
    Exporter,
    Outcome,
    OutcomeKind,
    export_first,
)
from observer.triggers.armada_jobs import JobSetStatus, episode_uri, run_status, submit_request
from observer.triggers.config import ArmadaConfig, PipelineConfig, TriggerConfig
from observer.triggers.ledger import Delivery
from observer.triggers.retry import RetryPolicy
from observer.triggers.runs import RunAction
from observer.triggers.tracking.phases import PollError, RunStatus
from observer.triggers.tracking.store import TrackedRun

# armada-client is the `armada` extra (observer.triggers.armada_jobs requires it first, naming
# the extra); this module is imported only when a policy lists the armada action.
from armada_client.armada import job_pb2, job_pb2_grpc, submit_pb2_grpc  # noqa: E402

ARMADA_STATUS_TABLE: tuple[tuple[grpc.StatusCode, OutcomeKind], ...] = (
    (grpc.StatusCode.OK, "delivered"),
    (grpc.StatusCode.ALREADY_EXISTS, "already_done"),
    (grpc.StatusCode.INVALID_ARGUMENT, "permanent"),
    (grpc.StatusCode.NOT_FOUND, "permanent"),
    (grpc.StatusCode.FAILED_PRECONDITION, "permanent"),
)
# Armada's submit authorises against the queue first and answers a missing queue as
# PERMISSION_DENIED with this text (internal/server/queue ErrQueueNotFound).
QUEUE_MISSING = re.compile(r'could not find queue "([^"]*)"')


def grpc_verdict(code: grpc.StatusCode, details: str) -> OutcomeKind:
    """The outcome of an Armada answer (see :data:`ARMADA_STATUS_TABLE`)."""
    if code == grpc.StatusCode.PERMISSION_DENIED and QUEUE_MISSING.search(details or ""):
        return "permanent"
    for known, kind in ARMADA_STATUS_TABLE:
        if code == known:
            return kind
    return "retry"


class ArmadaAction(RunAction):
    """Submits one job set per episode to one Armada server (see the module docstring)."""

    name = "armada"

    def __init__(
        self,
        cfg: ArmadaConfig,
        pipeline: PipelineConfig,
        *,
        name_prefix: str = "retrain-",
        exporter: Exporter | None = None,
        channel: grpc.Channel | None = None,
    ) -> None:
        if not cfg.server:
            raise ValueError("a policy lists the armada action but trigger.armada.server is empty")
        if not cfg.queue:
            raise ValueError("trigger.armada.queue is empty: Armada submits to a queue")
        self.cfg = cfg
        self.pipeline = pipeline
        self.name_prefix = name_prefix
        self.exporter = exporter
        self.channel = channel or _channel(cfg)
        self.submit = submit_pb2_grpc.SubmitStub(self.channel)
        self.jobs = job_pb2_grpc.JobsStub(self.channel)
        # Metadata rather than call credentials: gRPC refuses those on a plaintext channel.
        token = cfg.token.get_secret_value() if cfg.token else ""
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    @classmethod
    def from_config(cls, cfg: TriggerConfig, exporter: Exporter | None = None) -> Self:
        # Job sets are named like Argo's workflows (trigger.argo.name_prefix).
        return cls(cfg.armada, cfg.pipeline, name_prefix=cfg.argo.name_prefix, exporter=exporter)

    @property
    def target(self) -> str:
        return f"armada://{self.cfg.server}/{self.cfg.queue}"

    def close(self) -> None:
        self.channel.close()

    def retry_policy(self, delivery: Delivery) -> RetryPolicy:
        return RetryPolicy.of(self.cfg)

    # -- requests -------------------------------------------------------------------------

    def status(self, run: dict[str, Any]) -> JobSetStatus:
        """Where the episode's jobs are (the outbox row's payload in, :class:`JobSetStatus` out).

        Raises :class:`grpc.RpcError` when Armada cannot answer; a poller retries later.
        """
        request = job_pb2.JobStatusUsingExternalJobUriRequest(
            queue=self.cfg.queue, jobset=run["workflow_name"],
            external_job_uri=episode_uri(run["episode_id"]),
        )
        answer = self.jobs.GetJobStatusUsingExternalJobUri(
            request, timeout=self.cfg.timeout_s, metadata=self.metadata
        )
        return run_status(dict(answer.job_states))

    # -- tracking (observer.triggers.tracking) --------------------------------------------

    def run_url(self, run: TrackedRun) -> str:
        """Where the job set's status is read (queue / job set / the episode's URI)."""
        return f"{self.target}/{run.name}?external_job_uri={episode_uri(run.episode_id)}"

    def poll(self, run: TrackedRun) -> RunStatus:
        """The job set's phase (:data:`~observer.triggers.armada_jobs.JOB_PHASES`); Armada
        knowing no job of the episode: not found; no answer:
        :class:`~observer.triggers.tracking.phases.PollError`."""
        try:
            found = self.status({"workflow_name": run.name, "episode_id": run.episode_id})
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            raise PollError(f"{code.name}: {exc.details() if hasattr(exc, 'details') else ''}"
                            [:300]) from None
        if found.phase == "missing":
            return RunStatus.missing()
        states = ", ".join(f"{job} {state}" for job, state in sorted(found.jobs.items()))
        return RunStatus(
            found=True,
            phase=found.phase,
            outcome=found.phase,  # type: ignore[arg-type]  (pending/running/succeeded/failed)
            failed_step="train" if found.phase == "failed" else "",
            message=f"armada jobs: {states}"[:300],
            run_id=",".join(found.job_ids)[:200],
        )

    def attempt(self, delivery: Delivery) -> Outcome:
        """Export, look for the jobs, submit; never raises for server or network failures."""
        run = json.loads(delivery.payload)
        name = run["workflow_name"]
        failed = export_first(self.exporter, run.get("export"))
        if failed is not None:
            return failed
        step = "status"
        try:
            try:
                found = self.status(run)
            except grpc.RpcError as exc:
                # A server without the query API: Armada's client_id dedup still holds.
                if not hasattr(exc, "code") or exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise
            else:
                if found.job_ids:
                    return Outcome(
                        ALREADY_DONE, f"armada job set {name} already submitted ({found.phase})"
                    )
            step = "submit"
            request = submit_request(self.cfg, self.pipeline, run)
            answer = self.submit.SubmitJobs(
                request, timeout=self.cfg.timeout_s, metadata=self.metadata
            )
        except grpc.RpcError as exc:
            return self._answer(exc, step)
        errors = [item.error for item in answer.job_response_items if item.error]
        if errors:
            return Outcome(PERMANENT, f"submit: {'; '.join(errors)}"[:300])
        ids = ", ".join(item.job_id for item in answer.job_response_items)
        return Outcome(DELIVERED, f"armada job set {name} in queue {self.cfg.queue}: {ids}"[:300])

    def _answer(self, exc: grpc.RpcError, step: str) -> Outcome:
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = (exc.details() if hasattr(exc, "details") else "") or ""
        kind = grpc_verdict(code, details)
        missing = QUEUE_MISSING.search(details) if kind == PERMANENT else None
        if missing:
            queue = missing.group(1)[:100]
            return Outcome(
                PERMANENT,
                f"{step}: armada queue {queue!r} does not exist: create it "
                f"(armadactl create queue {queue}) or set trigger.armada.queue",
            )
        if kind == PERMANENT:
            return Outcome(PERMANENT, f"{step}: {code.name}: {details}"[:300])
        if kind == ALREADY_DONE:
            return Outcome(ALREADY_DONE, f"{step}: {code.name}: {details}"[:300])
        return Outcome(RETRY, f"{step}: {code.name}: {details}"[:300])


def _channel(cfg: ArmadaConfig) -> grpc.Channel:
    if not cfg.use_tls:
        return grpc.insecure_channel(cfg.server)
    roots = Path(cfg.ca_file).read_bytes() if cfg.ca_file else None
    return grpc.secure_channel(cfg.server, grpc.ssl_channel_credentials(root_certificates=roots))
