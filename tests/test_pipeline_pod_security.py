"""The retraining pipeline's pods under the restricted Pod Security Standard, and in a sandbox.

Every pod spec (or the part of one an upstream resource's schema lets observer set) in every
document ``observer pipeline render`` writes, for each serving option, trainer and gang
scheduler, and every Armada job's pod, passes tests/pod_security.py's restricted rules; with
``pipeline.runtime_class_name`` each of them names that runtime class, and the documents still
validate against the vendored upstream schemas."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from observer.triggers.armada_jobs import submit_request
from observer.triggers.config import ArmadaConfig, PipelineConfig, TriggerConfig
from observer.triggers.pipeline.render import render
from observer.triggers.pipeline.validate import check_all
from tests.armada_contract import item_problem, pod_json
from tests.pod_security import violations

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = Path(os.environ.get("OBSERVER_SCHEMAS", ROOT / "tests" / "schemas"))
EXTRA_CRDS = sorted((ROOT / "tests" / "schemas").glob("*.yaml"))

Pod = dict[str, Any]
SERVING = [{"serving": "inferenceservice", "deployment_mode": "Standard"},
           {"serving": "inferenceservice", "deployment_mode": "Knative"},
           {"serving": "llminferenceservice", "llm_pipeline_parallel": 2}]
SCHEDULERS = ["none", "kueue", "volcano", "yunikorn"]
TRAINERS = ["trainjob", "pytorchjob", "jobset"]
# The kinds whose pods observer describes; a case must find pods in each it renders.
POD_KINDS = {"WorkflowTemplate", "SparkApplication", "TrainJob", "PyTorchJob", "JobSet",
             "InferenceService", "LLMInferenceService"}


def config(**kw: Any) -> TriggerConfig:
    return TriggerConfig(pipeline=PipelineConfig(
        serving_model_uri="s3://m/v1", promotion_callback_url="https://observer.example/api",
        num_nodes=2, **kw))


# -- where each kind keeps its pods --------------------------------------------------------------


def _workflow(doc: dict[str, Any]) -> Iterator[tuple[str, Pod]]:
    """A pod per container template: the workflow's pod context, patch and the main container.

    Argo's own executor containers are not in the document: Argo locks a resource step's
    down itself (MinimalCtrSC), a container step's follow the controller's executor setting."""
    spec = doc["spec"]
    patch = json.loads(spec.get("podSpecPatch", "{}"))
    for t in spec["templates"]:
        if "container" in t:
            pod = {**patch, "securityContext": {**spec.get("securityContext", {}),
                                                **t.get("securityContext", {})},
                   "containers": [{"name": "main", **t["container"]}]}
            yield f"template {t['name']}", pod


def _spark(doc: dict[str, Any]) -> Iterator[tuple[str, Pod]]:
    for role in ("driver", "executor"):
        part = doc["spec"][role]
        pod = {**(part.get("template") or {}).get("spec", {}),
               "securityContext": part.get("podSecurityContext"),
               "containers": [{"name": f"spark-{role}", "securityContext": part.get("securityContext")}]}
        yield role, pod


def _train_job(doc: dict[str, Any]) -> Iterator[tuple[str, Pod]]:
    # What the TrainJob sets on its runtime's pods (the rest is the runtime's).
    for patch in doc["spec"].get("runtimePatches", []):
        for job in patch["trainingRuntimeSpec"]["template"].get("spec", {}).get("replicatedJobs", []):
            yield f"runtime job {job['name']}", job["template"]["spec"]["template"]["spec"]


def _pytorch_job(doc: dict[str, Any]) -> Iterator[tuple[str, Pod]]:
    for role, replica in doc["spec"]["pytorchReplicaSpecs"].items():
        yield role, replica["template"]["spec"]


def _job_set(doc: dict[str, Any]) -> Iterator[tuple[str, Pod]]:
    for job in doc["spec"]["replicatedJobs"]:
        yield job["name"], job["template"]["spec"]["template"]["spec"]


def _predictor_pod(predictor: dict[str, Any]) -> Pod:
    pod = {k: v for k, v in predictor.items() if k not in ("model", "canaryTrafficPercent", "name")}
    return {**pod, "containers": [{"name": "kserve-container", **predictor["model"]}]}


def _inference_service(doc: dict[str, Any]) -> Iterator[tuple[str, Pod]]:
    yield "predictor", _predictor_pod(doc["spec"]["predictor"])
    for i, canary in enumerate(doc["spec"].get("canary", [])):
        yield f"canary {i}", _predictor_pod(canary["predictor"])


def _llm_inference_service(doc: dict[str, Any]) -> Iterator[tuple[str, Pod]]:
    yield "leader", doc["spec"]["template"]
    if "worker" in doc["spec"]:
        yield "worker", doc["spec"]["worker"]


PODS: dict[str, Callable[[dict[str, Any]], Iterator[tuple[str, Pod]]]] = {
    "WorkflowTemplate": _workflow, "SparkApplication": _spark, "TrainJob": _train_job,
    "PyTorchJob": _pytorch_job, "JobSet": _job_set, "InferenceService": _inference_service,
    "LLMInferenceService": _llm_inference_service,
}


def documents(docs: dict[str, dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every document, and every manifest inside the WorkflowTemplate's resource steps."""
    for rel, doc in sorted(docs.items()):
        yield rel, doc
        if doc["kind"] == "WorkflowTemplate":
            for t in doc["spec"]["templates"]:
                if "resource" in t:
                    yield f"{rel}#{t['name']}", yaml.safe_load(t["resource"]["manifest"])


def pods(docs: dict[str, dict[str, Any]]) -> list[tuple[str, str, Pod]]:
    """(document, kind, pod) of every pod spec the rendered documents describe (a step that
    only names a resource, to wait for or delete it, has no spec)."""
    return [(f"{rel}: {where}", doc["kind"], pod) for rel, doc in documents(docs)
            if doc["kind"] in PODS and "spec" in doc for where, pod in PODS[doc["kind"]](doc)]


def cases() -> list[dict[str, Any]]:
    return [{**s, "scheduler": sched, "trainer": t}
            for s in SERVING for sched in SCHEDULERS for t in TRAINERS]


def run_as_users(pod: Pod) -> set[int | None]:
    """The UID each container runs as (its own runAsUser, else the pod's; None: the image's)."""
    default = (pod.get("securityContext") or {}).get("runAsUser")
    return {(c.get("securityContext") or {}).get("runAsUser", default) for c in pod["containers"]}


# -- the tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", cases(), ids=lambda c: "-".join(str(v) for v in c.values()))
def test_every_rendered_pod_meets_restricted(case: dict[str, Any]) -> None:
    found = pods(render(config(**case)))
    kinds = {kind for _, kind, _ in found}
    trainer = {"trainjob": "TrainJob", "pytorchjob": "PyTorchJob", "jobset": "JobSet"}[case["trainer"]]
    serving = {"inferenceservice": "InferenceService",
               "llminferenceservice": "LLMInferenceService"}[case["serving"]]
    assert kinds == {"WorkflowTemplate", "SparkApplication", trainer, serving}
    for where, _, pod in found:
        assert violations(pod, "restricted") == [], where
        assert run_as_users(pod) == {10001}, where
        assert "runtimeClassName" not in pod, where


@pytest.mark.parametrize("runtime", ["gvisor", "kata"])
@pytest.mark.parametrize("trainer", ["pytorchjob", "jobset"])
@pytest.mark.parametrize("serving", SERVING, ids=lambda s: "-".join(map(str, s.values())))
def test_the_runtime_class_reaches_every_pod_and_validates(runtime: str, trainer: str,
                                                           serving: dict[str, Any]) -> None:
    docs = render(config(runtime_class_name=runtime, trainer=trainer, scheduler="volcano",
                         run_as_user=2000, **serving))
    found = pods(docs)
    assert len({kind for _, kind, _ in found}) == 4
    for where, _, pod in found:
        assert pod["runtimeClassName"] == runtime, where
        assert violations(pod, "restricted") == [], where
        assert run_as_users(pod) == {2000}, where
    # Every document still validates against the upstream schemas (only RBAC has none).
    skipped = check_all(docs, SCHEMAS, EXTRA_CRDS)
    assert skipped and all(s.startswith("rbac/") for s in skipped)


def test_the_checks_read_the_rendered_pods() -> None:
    # Loosen what the renderer set, and the restricted rules see it: the pods found are the
    # documents' own, not copies that would pass whatever was rendered.
    docs = render(config(trainer="pytorchjob"))
    wf = docs["workflowtemplate.yaml"]["spec"]
    del next(t for t in wf["templates"] if t["name"] == "evaluate")["container"]["securityContext"]
    spark = docs["manifests/sparkapplication.yaml"]["spec"]["executor"]
    spark["securityContext"]["allowPrivilegeEscalation"] = True
    master = docs["manifests/pytorchjob.yaml"]["spec"]["pytorchReplicaSpecs"]["Master"]
    master["template"]["spec"]["hostNetwork"] = True
    isvc = docs["manifests/inferenceservice-canary.yaml"]["spec"]["predictor"]
    isvc["model"]["securityContext"]["capabilities"] = {"add": ["NET_RAW"]}
    broken = {where: violations(pod, "restricted") for where, _, pod in pods(docs)
              if violations(pod, "restricted")}
    assert broken == {
        "workflowtemplate.yaml: template evaluate": [
            "allowPrivilegeEscalation not false: main", "capabilities do not drop ALL: main"],
        "manifests/sparkapplication.yaml: executor": [
            "allowPrivilegeEscalation not false: spark-executor"],
        "manifests/pytorchjob.yaml: Master": ["host namespaces: hostNetwork"],
        "manifests/inferenceservice-canary.yaml: predictor": [
            "capabilities do not drop ALL: kserve-container",
            "capability added: kserve-container NET_RAW"],
    }


def test_argo_pods_get_the_runtime_class_through_the_pod_spec_patch() -> None:
    spec = render(config(runtime_class_name="gvisor", trainer="jobset"))["workflowtemplate.yaml"]["spec"]
    assert json.loads(spec["podSpecPatch"]) == {"runtimeClassName": "gvisor"}
    assert spec["securityContext"] == {"runAsNonRoot": True, "runAsUser": 10001,
                                       "seccompProfile": {"type": "RuntimeDefault"}}
    assert "podSpecPatch" not in render(config())["workflowtemplate.yaml"]["spec"]


@pytest.mark.parametrize("mode", ["Standard", "Knative"])
def test_without_run_as_user_the_images_user_is_kept_and_still_non_root(mode: str) -> None:
    for where, _, pod in pods(render(config(run_as_user=None, trainer="jobset",
                                            deployment_mode=mode))):
        assert run_as_users(pod) == {None}, where
        assert violations(pod, "restricted") == [], where


def test_a_train_job_cannot_take_a_runtime_class_and_says_where_it_goes() -> None:
    with pytest.raises(ValidationError, match="ClusterTrainingRuntime 'torch-distributed'"):
        PipelineConfig(runtime_class_name="gvisor")
    # Its security contexts go through the runtime patch the Trainer merges by name.
    doc = render(config(trainer="trainjob", scheduler="yunikorn"))["manifests/trainjob.yaml"]
    (patch,) = doc["spec"]["runtimePatches"]
    template = patch["trainingRuntimeSpec"]["template"]
    assert "yunikorn.apache.org/task-groups" in template["metadata"]["annotations"]
    (job,) = template["spec"]["replicatedJobs"]
    assert job["name"] == "node" and job["template"]["spec"]["template"]["spec"]["containers"][0][
        "name"] == "node"


@pytest.mark.parametrize("value", ["gVisor", "kata; rm -rf /", "../kata", "-kata", "a" * 254, "é"])
def test_a_bad_runtime_class_name_is_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="is not a RuntimeClass name"):
        PipelineConfig(runtime_class_name=value, trainer="jobset")


@pytest.mark.parametrize("value", [0, -1])
def test_root_is_refused(value: int) -> None:
    with pytest.raises(ValidationError, match="run_as_user"):
        PipelineConfig(run_as_user=value)


def test_armada_job_pods_meet_restricted_and_take_the_runtime_class() -> None:
    run = {"workflow_name": "retrain-e1", "episode_id": "e1", "policy": "p",
           "segment_key": "shop", "record_type": "llm"}
    for runtime in ("", "kata"):
        p = PipelineConfig(num_nodes=3, trainer="jobset", runtime_class_name=runtime)
        req = submit_request(ArmadaConfig(queue="ml"), p, run)
        assert len(req.job_request_items) == 3
        for item in req.job_request_items:
            # What Armada receives: the protobuf pod spec, read back as Kubernetes JSON.
            pod = pod_json(item.pod_spec)
            assert item_problem(item) is None
            assert violations(pod, "restricted") == []
            assert pod.get("runtimeClassName", "") == runtime
            assert pod["securityContext"]["runAsUser"] == 10001


def test_a_knative_predictor_sets_its_context_on_the_container_only() -> None:
    # Knative refuses a pod-level securityContext unless a feature flag allows it.
    docs = render(config(deployment_mode="Knative", run_as_user=4000))
    for phase in ("canary", "promote", "rollback"):
        predictor = docs[f"manifests/inferenceservice-{phase}.yaml"]["spec"]["predictor"]
        assert "securityContext" not in predictor
        assert predictor["model"]["securityContext"]["runAsUser"] == 4000
        assert violations(_predictor_pod(predictor), "restricted") == []
    standard = render(config())["manifests/inferenceservice-canary.yaml"]["spec"]
    assert standard["predictor"]["securityContext"]["runAsNonRoot"] is True
    assert standard["canary"][0]["predictor"]["securityContext"]["runAsUser"] == 10001
