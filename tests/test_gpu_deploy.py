"""The GPU collectors' Kubernetes manifests: the cluster-side Deployment
(deploy/kubernetes/gpu-economics.yaml) valid against the upstream Kubernetes definitions (as
vendored in Argo's schema, tests/schemas/argo/schema.json) with every environment variable
and argument accepted by observer itself; and the node DaemonSet of the kustomize base giving
the NVML collector what it needs."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from observer.cli import _parser
from observer.config import load_config

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "deploy" / "kubernetes" / "gpu-economics.yaml"
NODE_DAEMONSET = REPO / "deploy" / "kubernetes" / "base" / "gpu-collector.yaml"
K8S = json.loads((REPO / "tests" / "schemas" / "argo" / "schema.json").read_text())


def _validate(instance: object, definition: str) -> None:
    schema = {"$ref": f"#/definitions/{definition}", "definitions": K8S["definitions"]}
    jsonschema.Draft202012Validator(schema).validate(instance)


DOCS = list(yaml.safe_load_all(MANIFEST.read_text()))
WORKLOADS = [d for d in DOCS if d["kind"] in ("DaemonSet", "Deployment")]


@pytest.mark.parametrize("doc", WORKLOADS, ids=lambda d: d["metadata"]["name"])
def test_pod_spec_parts_are_valid_kubernetes(doc: dict) -> None:
    assert doc["apiVersion"] == "apps/v1"
    _validate(doc["metadata"], "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")
    _validate(doc["spec"]["selector"], "io.k8s.apimachinery.pkg.apis.meta.v1.LabelSelector")
    template = doc["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items()
    spec = template["spec"]
    for c in spec["containers"]:
        _validate(c, "io.k8s.api.core.v1.Container")
    for v in spec.get("volumes", []):
        _validate(v, "io.k8s.api.core.v1.Volume")
    for t in spec.get("tolerations", []):
        _validate(t, "io.k8s.api.core.v1.Toleration")


@pytest.mark.parametrize("doc", WORKLOADS, ids=lambda d: d["metadata"]["name"])
def test_args_and_environment_are_observers(doc: dict) -> None:
    [container] = doc["spec"]["template"]["spec"]["containers"]
    args = _parser().parse_args(container["args"])
    assert args.command == "collect-gpu"
    prices = next(d for d in DOCS if d["kind"] == "ConfigMap")["data"]["prices.json"]
    env = {}
    for e in container["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "configMapKeyRef" in e["valueFrom"]:
            env[e["name"]] = prices
    cfg = load_config(None, env={k: v for k, v in env.items() if k.startswith("OBSERVER_")})
    assert cfg.admin.host == "0.0.0.0" and not cfg.kafka.embedded
    assert cfg.gpu.prices["H100"]["spot"] > 0
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == cfg.admin.port


def test_node_collector_sees_every_gpu_without_taking_one() -> None:
    [ds] = [d for d in yaml.safe_load_all(NODE_DAEMONSET.read_text()) if d["kind"] == "DaemonSet"]
    assert _parser().parse_args(ds["spec"]["template"]["spec"]["containers"][0]["args"]).command == (
        "collect-gpu"
    )
    spec = ds["spec"]["template"]["spec"]
    [c] = spec["containers"]
    assert "nvidia.com/gpu" not in json.dumps(c.get("resources", {}))
    env = {e["name"]: e for e in c["env"]}
    assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert spec["hostPID"] is True  # process -> cgroup -> pod
    pod_logs = [m for m in c["volumeMounts"] if m["mountPath"] == "/var/log/pods"]
    assert pod_logs and pod_logs[0]["readOnly"] is True  # pod names for the pod UIDs
