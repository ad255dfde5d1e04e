"""Render the retraining pipeline: one WorkflowTemplate and every manifest it creates.

``observer pipeline render --out DIR`` writes :func:`render`'s documents as YAML, one document
per file. The WorkflowTemplate runs, for one drift episode:

1. ``preprocess``: a ``SparkApplication`` running :mod:`observer.triggers.pipeline.preprocess` over the
   exported windows plus the history location; it succeeds on
   ``status.applicationState.state == COMPLETED`` and fails on ``FAILED``/``SUBMISSION_FAILED``;
2. ``approve`` (when the run's ``approval`` parameter is ``required``): an Argo suspend step,
   resumed by a person (``argo resume``);
3. ``train``: a ``TrainJob``, ``PyTorchJob`` or ``JobSet`` (``pipeline.trainer``) with Kueue,
   Volcano or YuniKorn hooks (``pipeline.scheduler``). Argo's conditions cannot pick a list item
   by content, so a TrainJob (whose completion is only a ``conditions`` entry) is awaited on the
   JobSet the Trainer creates under the same name (``status.terminalState``);
4. ``evaluate``: :mod:`observer.triggers.pipeline.evaluate` compares the candidate's metrics with the
   serving model's and fails the run when the candidate is worse;
5. ``canary``: a KServe ``InferenceService`` canary (Knative: ``canaryTrafficPercent``;
   Standard: ``spec.canary``), a soak (``canary-soak``), a health check, then ``promote``; the
   exit handler rolls back to the serving model when any step failed. With
   ``pipeline.serving: llminferenceservice`` the candidate is a KServe ``LLMInferenceService``
   on a LeaderWorkerSet instead (:mod:`observer.triggers.pipeline.llm_serving`).

Every pod these steps create meets the restricted Pod Security Standard, and runs under
``pipeline.runtime_class_name`` when set (:mod:`~.security_context`, where each resource's
schema allows: Argo's ``securityContext`` and ``podSpecPatch``, Spark's ``podSecurityContext``
and pod ``template``, a TrainJob's ``runtimePatches``, the training and serving pod specs).

Integers in manifests (traffic share, node counts) come from the configuration, not from
parameters: Argo substitutes parameters as text, and a quoted number would fail the CRD's
integer type.

>>> from observer.triggers.config import TriggerConfig
>>> docs = render(TriggerConfig())
>>> sorted(docs)[:3]
['manifests/inferenceservice-canary.yaml', 'manifests/inferenceservice-promote.yaml', 'manifests/inferenceservice-rollback.yaml']
>>> docs["workflowtemplate.yaml"]["kind"]
'WorkflowTemplate'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from observer.triggers.config import ArgoConfig, PipelineConfig, TriggerConfig
from observer.triggers.naming import EPISODE_LABEL, POLICY_LABEL
from observer.triggers.pipeline import llm_serving
from observer.triggers.pipeline.security_context import (
    container_context,
    pod_context,
    pod_spec_patch,
    restrict,
    runtime_class,
)

WF = "{{workflow.name}}"
NS = "{{workflow.namespace}}"
RUN_DIR = "{{workflow.parameters.output-base}}/{{workflow.name}}"
DATASET = f"{RUN_DIR}/dataset"
MODEL = f"{RUN_DIR}/model"
PREPROCESS_FILE = "local:///opt/observer/triggers/pipeline/preprocess.py"
EPISODE = "{{workflow.parameters.episode-id}}"

# Run parameters: (name, description). Defaults come from the configuration in _parameters.
PARAMETERS: tuple[tuple[str, str], ...] = (
    ("episode-id", "the drift episode (observer fills it in)"),
    ("policy", "the policy that fired"),
    ("segment", "the segment key that drifted"),
    ("record-type", "llm, tools..."),
    ("current-data", "Parquet of the drifted window"),
    ("reference-data", "Parquet of the reference window"),
    ("history-data", "earlier training data (Parquet; empty: none)"),
    ("output-base", "where each run writes its dataset and model"),
    ("train-image", "training image"),
    ("serving-model-uri", "storageUri of the model now serving"),
    ("serving-metrics", "metrics JSON of the model now serving"),
    ("approval", "none or required: wait for `argo resume` before training"),
    ("canary-soak", "how long the canary serves before promotion"),
    ("conditions", "JSON list of a combined policy's conditions and their figures"),
)

# Resource kinds the workflow touches and the verbs its steps use (the executor's RBAC).
SUCCESS = {
    "SparkApplication": "status.applicationState.state == COMPLETED",
    "PyTorchJob": "status.replicaStatuses.Master.succeeded > 0",
    "JobSet": "status.terminalState == Completed",
    "InferenceService": "status.modelStatus.transitionStatus == UpToDate",
}
FAILURE = {
    "SparkApplication": "status.applicationState.state in (FAILED,SUBMISSION_FAILED)",
    "PyTorchJob": "status.replicaStatuses.Master.failed > 0",
    "JobSet": "status.terminalState == Failed",
    "InferenceService": "status.modelStatus.transitionStatus in (BlockedByFailedLoad,InvalidSpec)",
}


def _parameters(p: PipelineConfig) -> list[dict[str, Any]]:
    defaults = {
        "history-data": p.history_uri,
        "output-base": p.output_uri,
        "train-image": p.train_image,
        "serving-model-uri": p.serving_model_uri,
        "serving-metrics": f"{p.serving_model_uri.rstrip('/')}/metrics.json"
        if p.serving_model_uri
        else "",
        "approval": "none",
        "canary-soak": p.canary_soak,
        "conditions": "[]",
    }
    out = []
    for name, text in PARAMETERS:
        param: dict[str, Any] = {"name": name, "value": defaults.get(name, ""), "description": text}
        if name == "approval":
            param["enum"] = ["none", "required"]
        out.append(param)
    return out


def _labels(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        "app.kubernetes.io/part-of": "observer",
        EPISODE_LABEL: EPISODE,
        POLICY_LABEL: "{{workflow.parameters.policy}}",
        **(extra or {}),
    }


# -- scheduling hooks -------------------------------------------------------------------------


def _queue_labels(p: PipelineConfig) -> dict[str, str]:
    return {"kueue.x-k8s.io/queue-name": p.queue} if p.scheduler == "kueue" else {}


def _pod_hooks(p: PipelineConfig, group: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod metadata, pod spec fields) for the gang scheduler."""
    if p.scheduler == "volcano":
        return (
            {"annotations": {"scheduling.k8s.io/group-name": group}},
            {"schedulerName": "volcano"},
        )
    if p.scheduler == "yunikorn":
        groups = [
            {
                "name": "trainer",
                "minMember": p.num_nodes,
                "minResource": {"nvidia.com/gpu": str(p.gpus_per_node)} if p.gpus_per_node else {},
            }
        ]
        return (
            {
                "labels": {"queue": f"root.{p.queue}"},
                "annotations": {
                    "yunikorn.apache.org/task-group-name": "trainer",
                    "yunikorn.apache.org/task-groups": json.dumps(groups, separators=(",", ":")),
                },
            },
            {"schedulerName": "yunikorn"},
        )
    return {}, {}


# -- manifests ----------------------------------------------------------------------------------


def _spark_pod(p: PipelineConfig) -> dict[str, Any]:
    """A Spark pod's restricted contexts; the runtime class through Spark's pod template (the
    SparkPodSpec has no runtimeClassName field)."""
    out: dict[str, Any] = {"podSecurityContext": pod_context(p),
                           "securityContext": container_context()}
    if p.runtime_class_name:
        out["template"] = {"spec": runtime_class(p)}
    return out


def spark_application(p: PipelineConfig) -> dict[str, Any]:
    """The preprocessing ``SparkApplication`` (sparkoperator.k8s.io/v1beta2)."""
    spec: dict[str, Any] = {
        "type": "Python",
        "pythonVersion": "3",
        "mode": "cluster",
        "image": p.spark_image,
        "sparkVersion": p.spark_version,
        "mainApplicationFile": PREPROCESS_FILE,
        "arguments": [
            "--current", "{{workflow.parameters.current-data}}",
            "--reference", "{{workflow.parameters.reference-data}}",
            "--history", "{{workflow.parameters.history-data}}",
            "--episode", EPISODE,
            "--out", DATASET,
        ],
        "restartPolicy": {"type": "Never"},
        "driver": {"cores": 1, "memory": p.spark_memory, "serviceAccount": p.service_account,
                   "labels": _labels(), **_spark_pod(p)},
        "executor": {"instances": p.spark_executors, "cores": 1, "memory": p.spark_memory,
                     "labels": _labels(), **_spark_pod(p)},
    }
    if p.scheduler in ("volcano", "yunikorn"):
        spec["batchScheduler"] = p.scheduler
        spec["batchSchedulerOptions"] = {"queue": p.queue if p.scheduler == "volcano"
                                         else f"root.{p.queue}"}
    return {
        "apiVersion": "sparkoperator.k8s.io/v1beta2",
        "kind": "SparkApplication",
        "metadata": {"name": f"{WF}-preprocess", "namespace": NS, "labels": _labels()},
        "spec": spec,
    }


def _train_args() -> list[str]:
    return ["--data", DATASET, "--out", MODEL, "--metrics-out", f"{MODEL}/metrics.json"]


def _resources(p: PipelineConfig) -> dict[str, Any]:
    return {"limits": {"nvidia.com/gpu": p.gpus_per_node}} if p.gpus_per_node else {}


def _container(p: PipelineConfig, name: str) -> dict[str, Any]:
    c: dict[str, Any] = {
        "name": name,
        "image": "{{workflow.parameters.train-image}}",
        "command": list(p.train_command),
        "args": _train_args(),
        "securityContext": container_context(),
    }
    if p.gpus_per_node:
        c["resources"] = _resources(p)
    return c


# The torch runtimes' replicated job and its container (Kubeflow Trainer's constants.Node).
TRAINER_NODE = "node"


def train_job(p: PipelineConfig) -> dict[str, Any]:
    """A Kubeflow Trainer ``TrainJob`` (trainer.kubeflow.org/v1alpha1)."""
    spec: dict[str, Any] = {
        "runtimeRef": {"name": p.trainer_runtime},
        "trainer": {
            "image": "{{workflow.parameters.train-image}}",
            "command": list(p.train_command),
            "args": _train_args(),
            "numNodes": p.num_nodes,
        },
    }
    if p.gpus_per_node:
        spec["trainer"]["resourcesPerNode"] = _resources(p)
    meta, _ = _pod_hooks(p, f"{WF}-train")
    # The runtime's pods: its schema lets a patch set the pod's and the containers' security
    # contexts (by name), not a runtimeClassName (PipelineConfig refuses one for a TrainJob).
    pod = {"securityContext": pod_context(p),
           "containers": [{"name": TRAINER_NODE, "securityContext": container_context()}]}
    template: dict[str, Any] = {"spec": {"replicatedJobs": [
        {"name": TRAINER_NODE, "template": {"spec": {"template": {"spec": pod}}}}]}}
    if meta:
        # Volcano and YuniKorn read the JobSet's pods; the Trainer copies these onto the JobSet
        # its runtime creates, where the runtime's podGroupPolicy sets the scheduler.
        template["metadata"] = meta
    spec["runtimePatches"] = [{"manager": "observer", "trainingRuntimeSpec": {"template": template}}]
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": "TrainJob",
        "metadata": {"name": f"{WF}-train", "namespace": NS, "labels": _labels(_queue_labels(p))},
        "spec": spec,
    }


def pytorch_job(p: PipelineConfig) -> dict[str, Any]:
    """A ``PyTorchJob`` (kubeflow.org/v1): one Master, ``num_nodes - 1`` Workers."""
    meta, pod_spec = _pod_hooks(p, f"{WF}-train")

    def replica(count: int) -> dict[str, Any]:
        return {
            "replicas": count,
            "restartPolicy": "OnFailure",
            "template": {
                "metadata": {"labels": _labels(), **meta} if not meta.get("labels")
                else {**meta, "labels": {**_labels(), **meta["labels"]}},
                "spec": restrict({**pod_spec, "containers": [_container(p, "pytorch")]}, p),
            },
        }

    replicas = {"Master": replica(1)}
    if p.num_nodes > 1:
        replicas["Worker"] = replica(p.num_nodes - 1)
    spec: dict[str, Any] = {"pytorchReplicaSpecs": replicas}
    if p.scheduler == "volcano":
        # The training operator creates the PodGroup (minMember) from this.
        spec["runPolicy"] = {"schedulingPolicy": {"minAvailable": p.num_nodes, "queue": p.queue}}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": f"{WF}-train", "namespace": NS, "labels": _labels(_queue_labels(p))},
        "spec": spec,
    }


def job_set(p: PipelineConfig) -> dict[str, Any]:
    """A ``JobSet`` (jobset.x-k8s.io/v1alpha2): one indexed Job of ``num_nodes`` pods."""
    meta, pod_spec = _pod_hooks(p, f"{WF}-train")
    pod_meta = {**meta, "labels": {**_labels(), **meta.get("labels", {})}}
    return {
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {"name": f"{WF}-train", "namespace": NS, "labels": _labels(_queue_labels(p))},
        "spec": {
            "replicatedJobs": [
                {
                    "name": "trainer",
                    "replicas": 1,
                    "template": {
                        "spec": {
                            "parallelism": p.num_nodes,
                            "completions": p.num_nodes,
                            "completionMode": "Indexed",
                            "backoffLimit": 0,
                            "template": {
                                "metadata": pod_meta,
                                "spec": restrict({
                                    **pod_spec,
                                    "restartPolicy": "Never",
                                    "containers": [_container(p, "trainer")],
                                }, p),
                            },
                        }
                    },
                }
            ]
        },
    }


def pod_group(p: PipelineConfig) -> dict[str, Any]:
    """Volcano's PodGroup for a JobSet (the JobSet controller does not create one)."""
    return {
        "apiVersion": "scheduling.volcano.sh/v1beta1",
        "kind": "PodGroup",
        "metadata": {"name": f"{WF}-train", "namespace": NS, "labels": _labels()},
        "spec": {"minMember": p.num_nodes, "queue": p.queue},
    }


TRAINERS = {"trainjob": train_job, "pytorchjob": pytorch_job, "jobset": job_set}


def _predictor(p: PipelineConfig, uri: str) -> dict[str, Any]:
    # A predictor is a pod spec inline; its model is the kserve-container. Knative's webhook
    # refuses a pod-level securityContext unless its kubernetes.podspec-securitycontext flag is
    # on, so there the container's own context carries the UID (runAsNonRoot and seccomp it
    # has anyway); runtimeClassName needs Knative's kubernetes.podspec-runtimeclassname flag.
    model: dict[str, Any] = {"modelFormat": {"name": p.model_format}, "storageUri": uri,
                             "securityContext": container_context()}
    predictor: dict[str, Any] = {"model": model, **runtime_class(p)}
    if p.deployment_mode == "Knative":
        if p.run_as_user is not None:
            model["securityContext"]["runAsUser"] = p.run_as_user
    else:
        predictor["securityContext"] = pod_context(p)
    return predictor


def inference_service(p: PipelineConfig, phase: str) -> dict[str, Any]:
    """The ``InferenceService`` of a deploy phase: ``canary``, ``promote`` or ``rollback``."""
    candidate, serving = MODEL, "{{workflow.parameters.serving-model-uri}}"
    spec: dict[str, Any]
    if p.deployment_mode == "Knative":
        # KServe keeps the last ready revision: canaryTrafficPercent splits between it and the
        # new one; dropping the field promotes, rolling back redeploys the serving model.
        predictor = _predictor(p, candidate if phase != "rollback" else serving)
        if phase == "canary":
            predictor["canaryTrafficPercent"] = p.canary_traffic_percent
        spec = {"predictor": predictor}
    else:
        spec = {"predictor": _predictor(p, candidate if phase == "promote" else serving)}
        if phase == "canary":
            spec["canary"] = [
                {
                    # Standard mode names the canary's predictor and its model container.
                    "predictor": {
                        **_predictor(p, candidate),
                        "name": "candidate",
                        "model": {**_predictor(p, candidate)["model"], "name": "candidate"},
                    },
                    "trafficPercent": p.canary_traffic_percent,
                }
            ]
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": p.model_name,
            "namespace": NS,
            "labels": _labels(),
            "annotations": {"serving.kserve.io/deploymentMode": p.deployment_mode},
        },
        "spec": spec,
    }


# -- the WorkflowTemplate -----------------------------------------------------------------------


def _resource(
    name: str, action: str, manifest: dict[str, Any], kind: str | None = None,
    owner: bool = True,
) -> dict[str, Any]:
    res: dict[str, Any] = {
        "action": action,
        "manifest": yaml.safe_dump(manifest, sort_keys=False),
    }
    if kind:
        res["successCondition"] = SUCCESS[kind]
        res["failureCondition"] = FAILURE[kind]
    if owner and action == "create":
        res["setOwnerReference"] = True  # deleted with the workflow
    return {"name": name, "resource": res}


def _step(name: str, template: str, when: str | None = None) -> list[dict[str, Any]]:
    step: dict[str, Any] = {"name": name, "template": template}
    if when:
        step["when"] = when
    return [step]


def _evaluate_template(p: PipelineConfig) -> dict[str, Any]:
    args = [
        "--candidate", f"{MODEL}/metrics.json",
        "--serving", "{{workflow.parameters.serving-metrics}}",
        "--metric", p.eval_metric,
        "--min-delta", repr(p.eval_min_delta),
        "--out", "/tmp/verdict.json",
    ]
    if not p.eval_higher_is_better:
        args.append("--lower-is-better")
    return {
        "name": "evaluate",
        "container": {
            "image": p.image,
            "command": ["python", "-m", "observer.triggers.pipeline.evaluate"],
            "args": args,
            "securityContext": container_context(),
        },
        "outputs": {"parameters": [{"name": "verdict", "valueFrom": {"path": "/tmp/verdict.json"}}]},
    }


def _notify_template(p: PipelineConfig, name: str, outcome: str, model: str) -> dict[str, Any]:
    """A step sending observer the signed promotion callback (triggers.pipeline.notify)."""
    def secret(env: str, key: str, optional: bool = False) -> dict[str, Any]:
        ref: dict[str, Any] = {"name": p.promotion_secret_name, "key": key}
        if optional:
            ref["optional"] = True
        return {"name": env, "valueFrom": {"secretKeyRef": ref}}

    return {
        "name": name,
        "container": {
            "image": p.image,
            "command": ["python", "-m", "observer.triggers.pipeline.notify"],
            "args": ["--url", p.promotion_callback_url, "--episode", EPISODE, "--run", WF,
                     "--model-version", model, "--outcome", outcome],
            "env": [secret("OBSERVER_PROMOTION_SECRET", "secret"),
                    secret("OBSERVER_ADMIN_TOKEN", "admin-token", optional=True)],
            "securityContext": container_context(),
        },
    }


def _soak() -> dict[str, Any]:
    return {"name": "soak", "suspend": {"duration": "{{workflow.parameters.canary-soak}}"}}


def _isvc_deploy(p: PipelineConfig) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    """InferenceService canary, soak, health, promote (+ the exit handler's rollback)."""
    templates = [
        _resource("canary", "apply", inference_service(p, "canary"), "InferenceService"),
        _soak(),
        _resource("canary-health", "get", {
            "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": p.model_name, "namespace": NS}}, "InferenceService"),
        _resource("promote", "apply", inference_service(p, "promote"), "InferenceService"),
        _resource("rollback", "apply", inference_service(p, "rollback")),
    ]
    names = ("canary", "soak", "canary-health", "promote")
    return templates, [_step(n, n) for n in names]


def llm_inference_service(p: PipelineConfig, phase: str) -> dict[str, Any]:
    """The ``LLMInferenceService`` of a deploy phase (:mod:`~.llm_serving`)."""
    return llm_serving.llm_inference_service(
        p, phase, model_uri=MODEL, serving_uri="{{workflow.parameters.serving-model-uri}}",
        namespace=NS, labels=_labels(),
    )


def _llmisvc_deploy(p: PipelineConfig) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    """LLMInferenceService candidate, soak, Ready wait, promote, retire (+ rollback)."""
    candidate = llm_serving.reference(p, NS, llm_serving.candidate_name(p))
    templates = [
        _resource("canary", "create", llm_inference_service(p, "canary")),
        _soak(),
        llm_serving.ready_wait(p, NS),
        _resource("promote", "apply", llm_inference_service(p, "promote")),
        _resource("retire-candidate", "delete", candidate),
        _resource("rollback", "apply", llm_inference_service(p, "rollback")),
    ]
    names = ("canary", "soak", "canary-health", "promote", "retire-candidate")
    return templates, [_step(n, n) for n in names]


# pipeline.serving -> the deploy templates and steps after the evaluation gate.
DEPLOYS = {"inferenceservice": _isvc_deploy, "llminferenceservice": _llmisvc_deploy}


def serving_manifests(p: PipelineConfig) -> dict[str, dict[str, Any]]:
    """The deploy phases' manifests, by the file they are written to."""
    build, kind = ((inference_service, "inferenceservice") if p.serving == "inferenceservice"
                   else (llm_inference_service, "llminferenceservice"))
    return {f"manifests/{kind}-{phase}.yaml": build(p, phase)
            for phase in ("canary", "promote", "rollback")}


def workflow_spec(p: PipelineConfig, argo: ArgoConfig | None = None) -> dict[str, Any]:
    """The ``spec`` shared by the WorkflowTemplate and inline Workflows."""
    trainer = TRAINERS[p.trainer](p)
    train_kind = trainer["kind"]
    templates: list[dict[str, Any]] = [
        _resource("preprocess", "create", spark_application(p), "SparkApplication"),
        {"name": "approve", "suspend": {}},
    ]
    steps: list[list[dict[str, Any]]] = [
        _step("preprocess", "preprocess"),
        _step("approve", "approve", "{{workflow.parameters.approval}} == required"),
    ]
    if p.scheduler == "volcano" and p.trainer == "jobset":
        templates.append(_resource("gang", "create", pod_group(p)))
        steps.append(_step("gang", "gang"))
    if train_kind == "TrainJob":
        templates.append(_resource("train", "create", trainer))
        # The Trainer names the JobSet after the TrainJob; its terminalState is a plain field.
        wait = {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
                "metadata": {"name": f"{WF}-train", "namespace": NS}}
        templates.append(_resource("wait-train", "get", wait, "JobSet"))
        steps += [_step("train", "train"), _step("wait-train", "wait-train")]
    else:
        templates.append(_resource("train", "create", trainer, train_kind))
        steps.append(_step("train", "train"))
    templates.append(_evaluate_template(p))
    steps.append(_step("evaluate", "evaluate"))
    deploy_templates, deploy_steps = DEPLOYS[p.serving](p)
    templates += deploy_templates
    steps += deploy_steps
    # Roll back only when a canary may exist and there is a serving model to go back to.
    rolls_back = ("{{workflow.status}} != Succeeded && "
                  "'{{workflow.parameters.serving-model-uri}}' != ''")
    exit_steps = [_step("rollback", "rollback", rolls_back)]
    if p.promotion_callback_url:
        # observer learns of the promotion (or the rollback) and re-baselines on it.
        serving = "{{workflow.parameters.serving-model-uri}}"
        templates += [_notify_template(p, "notify-promotion", "promoted", MODEL),
                      _notify_template(p, "notify-rollback", "rolled_back", serving)]
        steps.append(_step("notify-promotion", "notify-promotion"))
        exit_steps.append(_step("notify-rollback", "notify-rollback", rolls_back))
    templates.insert(0, {"name": "retrain", "steps": steps})
    templates.append({"name": "on-exit", "steps": exit_steps})
    spec: dict[str, Any] = {
        "entrypoint": "retrain",
        "onExit": "on-exit",
        "serviceAccountName": p.service_account,
        # Every workflow pod: the template's container and Argo's executor containers.
        "securityContext": pod_context(p),
        "arguments": {"parameters": _parameters(p)},
        "podGC": {"strategy": "OnPodSuccess"},
        "templates": templates,
    }
    patch = pod_spec_patch(p)
    if patch:
        spec["podSpecPatch"] = patch
    return spec


def workflow_template(p: PipelineConfig, argo: ArgoConfig) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "WorkflowTemplate",
        "metadata": {
            "name": argo.workflow_template,
            "namespace": argo.namespace,
            "labels": {"app.kubernetes.io/part-of": "observer"},
        },
        "spec": workflow_spec(p, argo),
    }


# -- RBAC ----------------------------------------------------------------------------------------

# (api group, resource, verbs) the workflow's steps need; Argo's executor also reports results.
def executor_rules(p: PipelineConfig) -> list[dict[str, Any]]:
    """What the pipeline's service account may do: exactly what its steps use."""
    train = {"trainjob": ("trainer.kubeflow.org", "trainjobs"),
             "pytorchjob": ("kubeflow.org", "pytorchjobs"),
             "jobset": ("jobset.x-k8s.io", "jobsets")}[p.trainer]
    rules = [
        ("argoproj.io", "workflowtaskresults", ["create", "patch"]),
        ("sparkoperator.k8s.io", "sparkapplications", ["create", "get", "list", "watch"]),
        (train[0], train[1], ["create", "get", "list", "watch"]),
        ("serving.kserve.io", "inferenceservices",
         ["create", "get", "list", "watch", "patch", "update"])
        if p.serving == "inferenceservice" else
        # The candidate is created, waited for (kubectl wait: get, list, watch) and deleted.
        ("serving.kserve.io", "llminferenceservices",
         ["create", "get", "list", "watch", "patch", "update", "delete"]),
        # The Spark driver runs as this account too: it creates its executors.
        ("", "pods", ["create", "get", "list", "watch", "delete", "deletecollection"]),
        ("", "services", ["create", "get", "delete", "deletecollection"]),
        ("", "configmaps", ["create", "get", "delete", "deletecollection"]),
        ("", "persistentvolumeclaims", ["create", "get", "list", "delete", "deletecollection"]),
    ]
    if p.trainer == "trainjob":
        rules.append(("jobset.x-k8s.io", "jobsets", ["get", "list", "watch"]))
    if p.scheduler == "volcano" and p.trainer == "jobset":
        rules.append(("scheduling.volcano.sh", "podgroups", ["create", "get"]))
    return [{"apiGroups": [g], "resources": [r], "verbs": v} for g, r, v in rules]


SUBMITTER_RULES = [
    {"apiGroups": ["argoproj.io"], "resources": ["workflowtemplates"], "verbs": ["get"]},
    {"apiGroups": ["argoproj.io"], "resources": ["workflows"], "verbs": ["create", "list", "get"]},
]


def rbac(p: PipelineConfig, argo: ArgoConfig, submitter: str = "observer") -> dict[str, dict]:
    ns = argo.namespace

    def sa(name: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": name, "namespace": ns}}

    def role(name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
        return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": name, "namespace": ns}, "rules": rules}

    def binding(name: str, account: str) -> dict[str, Any]:
        return {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": ns}],
        }

    submitter_token = {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
        "metadata": {"name": f"{submitter}.service-account-token", "namespace": ns,
                     "annotations": {"kubernetes.io/service-account.name": submitter}},
    }
    return {
        "rbac/pipeline-serviceaccount.yaml": sa(p.service_account),
        "rbac/pipeline-role.yaml": role(p.service_account, executor_rules(p)),
        "rbac/pipeline-rolebinding.yaml": binding(p.service_account, p.service_account),
        "rbac/submitter-serviceaccount.yaml": sa(submitter),
        "rbac/submitter-token.yaml": submitter_token,
        "rbac/submitter-role.yaml": role(f"{submitter}-submitter", SUBMITTER_RULES),
        "rbac/submitter-rolebinding.yaml": binding(f"{submitter}-submitter", submitter),
    }


def render(cfg: TriggerConfig) -> dict[str, dict[str, Any]]:
    """Every document, by the relative path it is written to."""
    p, argo = cfg.pipeline, cfg.argo
    trainer = TRAINERS[p.trainer](p)
    docs: dict[str, dict[str, Any]] = {
        "workflowtemplate.yaml": workflow_template(p, argo),
        "manifests/sparkapplication.yaml": spark_application(p),
        f"manifests/{trainer['kind'].lower()}.yaml": trainer,
        **serving_manifests(p),
    }
    if p.scheduler == "volcano" and p.trainer == "jobset":
        docs["manifests/podgroup.yaml"] = pod_group(p)
    docs.update(rbac(p, argo))
    return docs


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the manifests inside resource templates) as literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(doc: dict[str, Any]) -> str:
    """One document as YAML, manifests readable as blocks."""
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=100)


def write(out: Path | str, docs: dict[str, dict[str, Any]]) -> list[Path]:
    """Write each document to ``out/<path>`` as YAML; returns the files written."""
    root = Path(out)
    written = []
    for rel, doc in sorted(docs.items()):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dump(doc))
        written.append(path)
    return written
