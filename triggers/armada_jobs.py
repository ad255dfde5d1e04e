"""What an episode's Armada job set is: the ``JobSubmitRequest`` and its jobs' status.

Pure functions over ``armada-client``'s protobuf messages (the API's own request types), used
by :mod:`observer.triggers.armada` to submit and by a run poller to follow the jobs.

* :func:`submit_request`: one ``JobSubmitRequestItem`` per training node, each with a
  ``client_id`` derived from the episode (Armada deduplicates by it within a queue), the
  ``external_job_uri`` of the episode (the status lookup key), and the gang annotations when
  there is more than one node.
* :func:`run_status`: Armada's ``JobState`` of every job folded into one run phase
  (:data:`JOB_PHASES`, then :data:`PHASE_ORDER`).

>>> run_status({"01j": 2, "01k": 3}).phase   # RUNNING, SUCCEEDED
'running'
>>> run_status({"01j": 3, "01k": 4}).phase   # SUCCEEDED, FAILED
'failed'
>>> run_status({}).phase
'missing'
>>> run_status({"01j": 99}).phase   # a state newer than this client: polled on
'running'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from observer.core.extras import require
from observer.triggers.config import ArmadaConfig, PipelineConfig
from observer.triggers.naming import EPISODE_LABEL, POLICY_LABEL, SEGMENT_ANNOTATION, label_value
from observer.triggers.pipeline.security_context import restrict

require("armada_client", extra="armada", feature="Armada jobs (a trigger policy's 'armada' action)")

from armada_client.armada import submit_pb2  # noqa: E402
from armada_client.k8s.io.api.core.v1 import generated_pb2 as core_v1  # noqa: E402
from google.protobuf import json_format  # noqa: E402

# Armada's annotations (internal/common/constants): a gang is scheduled all at once or not.
GANG_ID = "armadaproject.io/gangId"
GANG_CARDINALITY = "armadaproject.io/gangCardinality"
GANG_NODE_UNIFORMITY = "armadaproject.io/gangNodeUniformityLabel"

# Armada JobState name -> run phase. Queued in Armada, leased to an executor or waiting for
# its pod: all "pending" to a poller; preempted, cancelled and rejected jobs did not train.
JOB_PHASES: dict[str, str] = {
    "QUEUED": "pending",
    "SUBMITTED": "pending",
    "LEASED": "pending",
    "PENDING": "pending",
    "RUNNING": "running",
    "SUCCEEDED": "succeeded",
    "FAILED": "failed",
    "REJECTED": "failed",
    "PREEMPTED": "failed",
    "CANCELLED": "failed",
    "UNKNOWN": "missing",
}
# A gang's phase: the first phase in this order that some job is in ("succeeded" only when
# every job is).
PHASE_ORDER = ("failed", "running", "pending", "missing", "succeeded")


@dataclass(frozen=True)
class JobSetStatus:
    """The episode's jobs as Armada reports them."""

    phase: str
    """pending, running, succeeded, failed, or missing (Armada knows no job of the episode)."""
    jobs: dict[str, str] = field(default_factory=dict)
    """job id -> Armada JobState name."""

    @property
    def job_ids(self) -> list[str]:
        return sorted(self.jobs)

    @property
    def finished(self) -> bool:
        return self.phase in ("succeeded", "failed")


def run_status(states: dict[str, int]) -> JobSetStatus:
    """Fold ``job id -> JobState`` (``JobStatusResponse.job_states``) into a :class:`JobSetStatus`."""
    names = {job: _state_name(state) for job, state in states.items()}
    # A state this client does not know (a newer server): polled on, as running.
    phases = {JOB_PHASES.get(name, "running") for name in names.values()}
    phase = next((p for p in PHASE_ORDER if p in phases), "missing")
    return JobSetStatus(phase, names)


def _state_name(state: int) -> str:
    """``JobState`` name of a number; an unknown number (proto3 keeps them) says so.

    >>> _state_name(3), _state_name(99)
    ('SUCCEEDED', 'JobState(99)')
    """
    try:
        return submit_pb2.JobState.Name(state)
    except ValueError:
        return f"JobState({state})"


def episode_uri(episode_id: str) -> str:
    """The ``external_job_uri`` every job of an episode carries (the status lookup key).

    >>> episode_uri("31f3")
    'observer://episode/31f3'
    """
    return f"observer://episode/{episode_id}"


def client_id(job_set: str, index: int) -> str:
    """The job's ``client_id``: the episode's job set and the node index (at most 100 chars).

    >>> client_id("retrain-31f3", 0)
    'retrain-31f3-0'
    """
    return f"{job_set}-{index}"[:100]


def _quantities(resources: dict[str, str]) -> dict[str, Any]:
    # Kubernetes' protobuf Quantity is a message {string: "4"}, its JSON form a plain string.
    return {k: {"string": str(v)} for k, v in resources.items()}


def pod_spec(cfg: ArmadaConfig, p: PipelineConfig, run: dict[str, Any], index: int) -> dict[str, Any]:
    """The training pod of node ``index``, as Kubernetes JSON (``v1.PodSpec``)."""
    export = run.get("export") or {}
    out = f"{p.output_uri.rstrip('/')}/{run['workflow_name']}"
    resources = {"cpu": cfg.cpu, "memory": cfg.memory}
    if p.gpus_per_node:
        resources["nvidia.com/gpu"] = str(p.gpus_per_node)
    env = {
        "OBSERVER_EPISODE_ID": run["episode_id"],
        "OBSERVER_POLICY": run["policy"],
        "OBSERVER_SEGMENT": run["segment_key"],
        "OBSERVER_RECORD_TYPE": run["record_type"],
        "OBSERVER_NODE_RANK": str(index),
        "OBSERVER_NUM_NODES": str(p.num_nodes),
    }
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [{
            "name": "trainer",
            "image": p.train_image,
            "command": list(p.train_command),
            "args": [
                "--data", export.get("current", ""),
                "--reference", export.get("reference", ""),
                "--out", f"{out}/model",
                "--metrics-out", f"{out}/model/metrics.json",
            ],
            "env": [{"name": k, "value": v} for k, v in env.items()],
            # Armada refuses a container without resources, or with requests != limits.
            "resources": {"requests": dict(resources), "limits": dict(resources)},
        }],
    }
    if p.service_account:
        spec["serviceAccountName"] = p.service_account
    if cfg.priority_class:
        spec["priorityClassName"] = cfg.priority_class
    # Restricted Pod Security, and the sandbox runtime class when pipeline.runtime_class_name.
    return restrict(spec, p)


def to_proto(spec: dict[str, Any]) -> core_v1.PodSpec:
    """Kubernetes JSON -> ``k8s.io.api.core.v1.PodSpec`` (quantities as messages)."""
    wire = {**spec, "containers": [
        {**c, "resources": {k: _quantities(v) for k, v in c.get("resources", {}).items()}}
        for c in spec.get("containers", [])
    ]}
    return json_format.ParseDict(wire, core_v1.PodSpec())


def submit_request(
    cfg: ArmadaConfig, p: PipelineConfig, run: dict[str, Any]
) -> submit_pb2.JobSubmitRequest:
    """The ``JobSubmitRequest`` of an episode: ``pipeline.num_nodes`` jobs in one job set.

    >>> from observer.triggers.config import ArmadaConfig, PipelineConfig
    >>> run = {"workflow_name": "retrain-e1", "episode_id": "e1", "policy": "p",
    ...        "segment_key": "shop", "record_type": "llm"}
    >>> req = submit_request(ArmadaConfig(queue="ml"), PipelineConfig(num_nodes=2), run)
    >>> req.queue, req.job_set_id, [i.client_id for i in req.job_request_items]
    ('ml', 'retrain-e1', ['retrain-e1-0', 'retrain-e1-1'])
    >>> dict(req.job_request_items[1].annotations)["armadaproject.io/gangCardinality"]
    '2'
    """
    job_set = run["workflow_name"]
    labels = {
        "app.kubernetes.io/part-of": "observer",
        EPISODE_LABEL: label_value(run["episode_id"]),
        POLICY_LABEL: label_value(run["policy"]),
    }
    annotations = {SEGMENT_ANNOTATION: run["segment_key"]}
    if p.num_nodes > 1:
        annotations |= {GANG_ID: job_set, GANG_CARDINALITY: str(p.num_nodes)}
        if cfg.gang_node_uniformity_label:
            annotations[GANG_NODE_UNIFORMITY] = cfg.gang_node_uniformity_label
    items = [
        submit_pb2.JobSubmitRequestItem(
            priority=cfg.priority,
            namespace=cfg.namespace,
            client_id=client_id(job_set, i),
            external_job_uri=episode_uri(run["episode_id"]),
            labels=labels,
            annotations=annotations,
            pod_spec=to_proto(pod_spec(cfg, p, run, i)),
        )
        for i in range(p.num_nodes)
    ]
    return submit_pb2.JobSubmitRequest(queue=cfg.queue, job_set_id=job_set, job_request_items=items)
