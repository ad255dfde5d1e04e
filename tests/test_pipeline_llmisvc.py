"""The `--serving llminferenceservice` deploy option: KServe LLMInferenceService manifests on a
LeaderWorkerSet, validated against the upstream CRDs vendored in tests/schemas."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from observer.cli import main
from observer.triggers.config import PipelineConfig, TriggerConfig
from observer.triggers.pipeline.render import render
from observer.triggers.pipeline.validate import (
    SchemaError,
    check_all,
    crd_files,
    example_values,
    substitute,
    validate_resource,
)

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = Path(os.environ.get("OBSERVER_SCHEMAS", ROOT / "tests" / "schemas"))
EXTRA_CRDS = sorted((ROOT / "tests" / "schemas").glob("*.yaml"))
LWS_CRD = ROOT / "tests" / "schemas" / "leaderworkerset.x-k8s.io_leaderworkersets.yaml"
PHASES = ("canary", "promote", "rollback")


def llm_docs(**kw: Any) -> dict[str, dict[str, Any]]:
    pipeline = PipelineConfig(serving="llminferenceservice", serving_model_uri="s3://m/v1", **kw)
    return render(TriggerConfig(pipeline=pipeline))


def concrete(docs: dict[str, dict[str, Any]], phase: str) -> dict[str, Any]:
    """A phase's manifest as the cluster would get it (Argo's parameters filled in)."""
    values = example_values(docs["workflowtemplate.yaml"])
    text = yaml.safe_dump(docs[f"manifests/llminferenceservice-{phase}.yaml"])
    return yaml.safe_load(substitute(text, values))


def leader_worker_set(llmisvc: dict[str, Any]) -> dict[str, Any]:
    """The LeaderWorkerSet KServe's controller derives from a multi-node LLMInferenceService
    (pkg/controller/v1alpha2/llmisvc/workload_multi_node.go, expectedMainMultiNodeLWS):
    size = parallelism.pipeline, leader = spec.template, workers = spec.worker."""
    spec = llmisvc["spec"]
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": f"{llmisvc['metadata']['name']}-kserve-mn",
                     "namespace": llmisvc["metadata"]["namespace"]},
        "spec": {
            "replicas": spec["replicas"],
            "leaderWorkerTemplate": {
                "size": spec["parallelism"]["pipeline"],
                "leaderTemplate": {"spec": spec["template"]},
                "workerTemplate": {"spec": spec["worker"]},
                "restartPolicy": "RecreateGroupOnPodRestart",
            },
            "rolloutStrategy": {"type": "RollingUpdate"},
            "startupPolicy": "LeaderCreated",
        },
    }


@pytest.mark.parametrize("nodes,gpus,replicas", [(2, 8, 1), (4, 4, 2), (1, 1, 1)])
def test_every_llm_document_validates(nodes: int, gpus: int, replicas: int) -> None:
    docs = llm_docs(llm_pipeline_parallel=nodes, llm_tensor_parallel=gpus, llm_replicas=replicas)
    skipped = check_all(docs, SCHEMAS, EXTRA_CRDS)
    assert skipped and all(s.startswith("rbac/") for s in skipped)
    kinds = {d["kind"] for d in docs.values()}
    assert "LLMInferenceService" in kinds and "InferenceService" not in kinds
    canary = concrete(docs, "canary")
    assert canary["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert canary["metadata"]["name"] == "support-agent-candidate"
    spec = canary["spec"]
    assert spec["parallelism"] == {"tensor": gpus, "pipeline": nodes}
    assert spec["replicas"] == replicas
    assert spec["template"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == gpus
    # Multi-node: a worker spec (a LeaderWorkerSet); one node: a plain Deployment.
    assert ("worker" in spec) == (nodes > 1)
    assert concrete(docs, "rollback")["spec"]["model"]["uri"] == "s3://m/v1"
    assert concrete(docs, "promote")["metadata"]["name"] == "support-agent"
    # The storage version of the same CRD accepts them too.
    for phase in PHASES:
        doc = concrete(docs, phase)
        doc["apiVersion"] = "serving.kserve.io/v1alpha2"
        validate_resource(doc, crd_files(SCHEMAS))


def test_the_leader_worker_set_it_becomes_validates() -> None:
    docs = llm_docs(llm_pipeline_parallel=4, llm_tensor_parallel=8, llm_replicas=2)
    lws = leader_worker_set(concrete(docs, "canary"))
    validate_resource(lws, [LWS_CRD])
    assert lws["spec"]["leaderWorkerTemplate"]["size"] == 4
    broken = copy.deepcopy(lws)
    broken["spec"]["leaderWorkerTemplate"]["restartPolicy"] = "Always"
    with pytest.raises(SchemaError, match="'Always' is not one of"):
        validate_resource(broken, [LWS_CRD])


def test_an_invalid_llm_inference_service_is_rejected() -> None:
    docs = llm_docs()
    crds = crd_files(SCHEMAS)
    bad = concrete(docs, "canary")
    bad["spec"]["parallelism"]["pipeline"] = 0
    with pytest.raises(SchemaError, match="0 is less than the minimum of 1"):
        validate_resource(bad, crds)
    bad = concrete(docs, "canary")
    del bad["spec"]["worker"]["containers"][0]["name"]
    with pytest.raises(SchemaError, match="'name' is a required property"):
        validate_resource(bad, crds)
    bad = concrete(docs, "canary")
    bad["spec"]["model"] = {"name": "m"}  # a model without its URI
    with pytest.raises(SchemaError, match="'uri' is a required property"):
        validate_resource(bad, crds)
    # The same broken manifest inside the WorkflowTemplate is caught by the full check.
    wf = docs["workflowtemplate.yaml"]
    canary = next(t for t in wf["spec"]["templates"] if t["name"] == "canary")
    manifest = yaml.safe_load(canary["resource"]["manifest"])
    manifest["spec"]["parallelism"]["tensor"] = 0
    canary["resource"]["manifest"] = yaml.safe_dump(manifest)
    with pytest.raises(SchemaError, match="template canary"):
        check_all(docs, SCHEMAS, EXTRA_CRDS)


VERBS = {"create": {"create"}, "get": {"get"}, "apply": {"get", "create", "patch"},
         "delete": {"delete"}}


def test_steps_rollback_and_role_of_the_llm_deploy() -> None:
    docs = llm_docs()
    wf = docs["workflowtemplate.yaml"]["spec"]
    names = [group[0]["name"] for group in wf["templates"][0]["steps"]]
    assert names[-5:] == ["canary", "soak", "canary-health", "promote", "retire-candidate"]
    health = next(t for t in wf["templates"] if t["name"] == "canary-health")
    assert health["container"]["args"][:2] == ["wait", "--for=condition=Ready"]
    assert health["container"]["args"][-1] == "llminferenceservice/support-agent-candidate"
    on_exit = next(t for t in wf["templates"] if t["name"] == wf["onExit"])
    assert on_exit["steps"][0][0]["template"] == "rollback"
    granted = {
        (g, r): set(rule["verbs"])
        for rule in docs["rbac/pipeline-role.yaml"]["rules"]
        for g in rule["apiGroups"] for r in rule["resources"]
    }
    assert ("serving.kserve.io", "inferenceservices") not in granted
    # kubectl wait gets, lists and watches the candidate.
    assert {"get", "list", "watch"} <= granted[("serving.kserve.io", "llminferenceservices")]
    for t in wf["templates"]:
        if "resource" in t:
            m = yaml.safe_load(t["resource"]["manifest"])
            key = (m["apiVersion"].split("/")[0], m["kind"].lower() + "s")
            assert VERBS[t["resource"]["action"]] <= granted[key], t["name"]


def test_the_inference_service_stays_the_default() -> None:
    docs = render(TriggerConfig())
    assert "manifests/inferenceservice-canary.yaml" in docs
    assert not any("llminferenceservice" in k for k in docs)


def test_cli_serving_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "observer.yaml"
    cfg.write_text("trigger:\n  pipeline:\n    llm_pipeline_parallel: 3\n")
    out = tmp_path / "out"
    assert main(["--config", str(cfg), "pipeline", "render", "--out", str(out),
                 "--serving", "llminferenceservice", "--validate", str(SCHEMAS)]) == 0
    printed = capsys.readouterr().out
    for phase in PHASES:
        path = out / "manifests" / f"llminferenceservice-{phase}.yaml"
        assert str(path) in printed
        doc = yaml.safe_load(path.read_text())
        assert doc["kind"] == "LLMInferenceService" and doc["spec"]["parallelism"]["pipeline"] == 3
    assert not (out / "manifests" / "inferenceservice-canary.yaml").exists()
