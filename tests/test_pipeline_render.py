"""The rendered pipeline: every document validates against the upstream schemas."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from observer.cli import main
from observer.triggers.config import PipelineConfig, TriggerConfig
from observer.triggers.pipeline.render import FAILURE, SUCCESS, render
from observer.triggers.pipeline.validate import SchemaError, check_all, crd_files, validate_resource

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = Path(os.environ.get("OBSERVER_SCHEMAS", ROOT / "tests" / "schemas"))
EXTRA_CRDS = sorted((ROOT / "tests" / "schemas").glob("*.yaml"))

CASES = [
    {"trainer": "trainjob", "scheduler": "kueue", "deployment_mode": "Standard"},
    {"trainer": "trainjob", "scheduler": "yunikorn", "deployment_mode": "Knative"},
    {"trainer": "pytorchjob", "scheduler": "volcano", "deployment_mode": "Knative", "num_nodes": 4},
    {"trainer": "jobset", "scheduler": "volcano", "deployment_mode": "Standard", "num_nodes": 2},
    {"trainer": "jobset", "scheduler": "yunikorn", "deployment_mode": "Standard", "gpus_per_node": 0},
]


def manifests(docs: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(template name, parsed manifest) of every resource step of the WorkflowTemplate."""
    wf = docs["workflowtemplate.yaml"]
    return [
        (t["name"], t["resource"]) for t in wf["spec"]["templates"] if "resource" in t
    ]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_every_document_validates(case: dict[str, Any]) -> None:
    docs = render(TriggerConfig(pipeline=PipelineConfig(serving_model_uri="s3://m/v1", **case)))
    skipped = check_all(docs, SCHEMAS, EXTRA_CRDS)
    # Only core Kubernetes kinds (RBAC) go unchecked: no schema for them in the set.
    assert skipped and all(s.startswith("rbac/") for s in skipped)
    kinds = {d["kind"] for d in docs.values()}
    trainer = {"trainjob": "TrainJob", "pytorchjob": "PyTorchJob", "jobset": "JobSet"}
    assert trainer[case["trainer"]] in kinds
    assert {"WorkflowTemplate", "SparkApplication", "InferenceService"} <= kinds


def test_a_broken_manifest_is_caught() -> None:
    docs = render(TriggerConfig())
    isvc = docs["manifests/inferenceservice-canary.yaml"]
    isvc["spec"]["canary"][0]["trafficPercent"] = 150
    with pytest.raises(SchemaError, match="150 is greater than the maximum of 100"):
        validate_resource(isvc, crd_files(SCHEMAS))
    wf = docs["workflowtemplate.yaml"]
    wf["spec"]["templates"][0]["steps"] = "preprocess"
    with pytest.raises(SchemaError, match="steps"):
        check_all({"workflowtemplate.yaml": wf}, SCHEMAS)


def test_scheduling_hooks() -> None:
    def trainer_doc(**kw: Any) -> dict[str, Any]:
        docs = render(TriggerConfig(pipeline=PipelineConfig(**kw)))
        return next(d for k, d in docs.items() if k.startswith("manifests/") and
                    d["kind"] in ("TrainJob", "PyTorchJob", "JobSet"))

    kueue = trainer_doc(trainer="jobset", scheduler="kueue", queue="gpu")
    assert kueue["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu"
    volcano = trainer_doc(trainer="pytorchjob", scheduler="volcano", num_nodes=3)
    assert volcano["spec"]["runPolicy"]["schedulingPolicy"]["minAvailable"] == 3
    master = volcano["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert master["schedulerName"] == "volcano"
    assert volcano["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2
    yk = trainer_doc(trainer="jobset", scheduler="yunikorn", num_nodes=2)
    pod = yk["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    assert pod["spec"]["schedulerName"] == "yunikorn"
    groups = yaml.safe_load(pod["metadata"]["annotations"]["yunikorn.apache.org/task-groups"])
    assert groups[0]["minMember"] == 2 and groups[0]["name"] == "trainer"
    docs = render(TriggerConfig(pipeline=PipelineConfig(trainer="jobset", scheduler="volcano",
                                                        num_nodes=2)))
    assert docs["manifests/podgroup.yaml"]["spec"]["minMember"] == 2


def test_conditions_are_expressible_in_argo() -> None:
    # Argo's conditions are label selectors over gjson paths: no list item by content (#2288),
    # no spaces inside values (#5958).
    for condition in [*SUCCESS.values(), *FAILURE.values()]:
        path, op, value = condition.split(" ", 2)
        assert "[" not in path and "?" not in path
        assert op in ("==", "!=", ">", "<", "in") and " " not in value
    for trainer in ("trainjob", "pytorchjob", "jobset"):
        docs = render(TriggerConfig(pipeline=PipelineConfig(trainer=trainer)))
        waits = [r for _, r in manifests(docs) if r.get("successCondition")]
        kinds = [yaml.safe_load(r["manifest"])["kind"] for r in waits]
        # Every long-running step is awaited; a TrainJob through its JobSet.
        expected = {"trainjob": "JobSet", "pytorchjob": "PyTorchJob", "jobset": "JobSet"}[trainer]
        assert kinds[:2] == ["SparkApplication", expected]
        assert kinds.count("InferenceService") == 3  # canary, health check, promote


def test_steps_run_in_order_with_gate_and_rollback() -> None:
    wf = render(TriggerConfig())["workflowtemplate.yaml"]["spec"]
    names = [group[0]["name"] for group in wf["templates"][0]["steps"]]
    assert names == ["preprocess", "approve", "train", "wait-train", "evaluate", "canary",
                     "soak", "canary-health", "promote"]
    approve = wf["templates"][0]["steps"][1][0]
    assert approve["when"] == "{{workflow.parameters.approval}} == required"
    evaluate = next(t for t in wf["templates"] if t["name"] == "evaluate")
    assert evaluate["container"]["command"][-1] == "observer.triggers.pipeline.evaluate"
    on_exit = next(t for t in wf["templates"] if t["name"] == wf["onExit"])
    assert on_exit["steps"][0][0]["template"] == "rollback"


PLURAL_VERBS = {"create": {"create"}, "get": {"get"}, "apply": {"get", "create", "patch"}}


@pytest.mark.parametrize("trainer", ["trainjob", "pytorchjob", "jobset"])
def test_pipeline_role_grants_exactly_what_the_steps_use(trainer: str) -> None:
    docs = render(TriggerConfig(pipeline=PipelineConfig(trainer=trainer, scheduler="volcano")))
    granted = {
        (g, r): set(rule["verbs"])
        for rule in docs["rbac/pipeline-role.yaml"]["rules"]
        for g in rule["apiGroups"] for r in rule["resources"]
    }
    for name, res in manifests(docs):
        m = yaml.safe_load(res["manifest"])
        key = (m["apiVersion"].split("/")[0], m["kind"].lower() + "s")
        assert key in granted, f"step {name}: no rule for {key}"
        assert PLURAL_VERBS[res["action"]] <= granted[key], f"step {name}: {key}"
    assert {"create", "patch"} <= granted[("argoproj.io", "workflowtaskresults")]
    submitter = docs["rbac/submitter-role.yaml"]["rules"]
    assert {"get"} == set(submitter[0]["verbs"]) and "create" in submitter[1]["verbs"]


def test_cli_writes_one_document_per_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "observer.yaml"
    cfg.write_text("trigger:\n  argo:\n    namespace: ml\n  pipeline:\n    trainer: pytorchjob\n")
    out = tmp_path / "out"
    assert main(["--config", str(cfg), "pipeline", "render", "--out", str(out),
                 "--validate", str(SCHEMAS)]) == 0
    printed = capsys.readouterr().out
    files = sorted(out.rglob("*.yaml"))
    assert (out / "manifests" / "pytorchjob.yaml") in files
    for f in files:
        assert str(f) in printed
        (doc,) = list(yaml.safe_load_all(f.read_text()))
        assert doc["kind"]
    wf = yaml.safe_load((out / "workflowtemplate.yaml").read_text())
    assert wf["metadata"]["namespace"] == "ml"
    # --validate names what it could not check, and a bad schemas directory is an error.
    assert "rbac/" in printed
    assert main(["--config", str(cfg), "pipeline", "render", "--out", str(out),
                 "--validate", str(tmp_path)]) != 0


def test_cli_renders_sandboxed_restricted_pods(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "observer.yaml"
    cfg.write_text("trigger:\n  pipeline:\n    trainer: jobset\n    runtime_class_name: kata\n"
                   "    run_as_user: 1500\n")
    out = tmp_path / "out"
    assert main(["--config", str(cfg), "pipeline", "render", "--out", str(out),
                 "--validate", str(SCHEMAS)]) == 0
    wf = yaml.safe_load((out / "workflowtemplate.yaml").read_text())["spec"]
    assert yaml.safe_load(wf["podSpecPatch"]) == {"runtimeClassName": "kata"}
    assert wf["securityContext"]["runAsUser"] == 1500
    pod = yaml.safe_load((out / "manifests" / "jobset.yaml").read_text())[
        "spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "kata"
    assert pod["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # A TrainJob cannot carry a runtime class: the command refuses, naming where it goes.
    cfg.write_text("trigger:\n  pipeline:\n    runtime_class_name: kata\n")
    capsys.readouterr()
    assert main(["--config", str(cfg), "pipeline", "render", "--out", str(tmp_path / "x")]) == 2
    assert "ClusterTrainingRuntime 'torch-distributed'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
