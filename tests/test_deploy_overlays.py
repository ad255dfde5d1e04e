"""The multi-cluster overlays (deploy/kubernetes/overlays), as kustomize renders them: a workload
cluster runs the receivers (namespace observer, restricted Pod Security) and the GPU DaemonSet
(namespace observer-gpu, privileged, for hostPID and a hostPath); the central overlay runs the
stages once. Every object passes its schema, every configuration loads, every reference
resolves within its namespace, every pod of a restricted namespace meets the restricted Pod
Security Standard (tests/pod_security.py), the runtimeClassName components sandbox the
Deployments, a central configuration reads the topics MirrorMaker 2 mirrors, and the
documented SPIFFE settings are observer's TLS knobs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from observer.config import load_config
from observer.core.config import KafkaConfig
from observer.core.topics import Topics
from observer.stages import BY_NAME
from tests.deploy_support import env_field_problem, load_with_env
from tests.pod_security import violations
from tests.test_deploy_kubernetes import K8S, KEDA_CRD, KUBERNETES_VERSION, name_of, rendered

CENTRAL = {"normalize", "paths", "drift", "trigger", "metrics"}
PER_CLUSTER = {"collect", "collect-gpu"}
RUNTIMES = {"runtime-gvisor": "gvisor", "runtime-kata": "kata"}
PSS = "pod-security.kubernetes.io/enforce"


def overlay(name: str) -> tuple[dict[str, Any], ...]:
    return rendered(f"overlays/{name}")


def with_component(folder: str, component: str, tmp: Path) -> list[dict[str, Any]]:
    """``folder`` rendered with ``component`` enabled, as a user's kustomization would."""
    # Relative paths: kustomize refuses absolute ones.
    (tmp / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(K8S / folder, tmp)],
        "components": [os.path.relpath(K8S / component, tmp)]}))
    out = subprocess.run([shutil.which("kubectl") or "kubectl", "kustomize", str(tmp)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def workloads(objs: Any) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] in ("Deployment", "DaemonSet")]


def command(w: dict[str, Any]) -> str:
    return w["spec"]["template"]["spec"]["containers"][0]["args"][0]


def namespaced(objs: Any, kind: str, namespace: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs
            if o["kind"] == kind and o["metadata"].get("namespace") == namespace}


def config_of(objs: Any, namespace: str, tmp: Path) -> Any:
    """The observer configuration a pod of ``namespace`` loads (``observer config``'s loader)."""
    cm = namespaced(objs, "ConfigMap", namespace)["observer-config"]
    f = tmp / f"{namespace}.yaml"
    f.write_text(cm["data"]["observer.yaml"])
    return load_config(f, env={})


def validate(obj: dict[str, Any]) -> None:
    if obj["kind"] == "ScaledObject":
        crd = yaml.safe_load(KEDA_CRD.read_text())
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == obj["apiVersion"].split("/")[1]]
        jsonschema.validate(obj, version["schema"]["openAPIV3Schema"])
    else:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


ALL = [*overlay("central"), *overlay("cluster")]


@pytest.mark.parametrize("obj", ALL, ids=lambda o: f"{name_of(o)}@{o['metadata'].get('namespace', '-')}")
def test_overlay_object_passes_its_schema(obj: dict[str, Any]) -> None:
    validate(obj)
    assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "observer"


def test_a_workload_cluster_runs_the_receivers_and_the_gpu_daemonset_only() -> None:
    objs = overlay("cluster")
    where = {(command(w), w["kind"], w["metadata"]["namespace"]) for w in workloads(objs)}
    assert where == {("collect", "Deployment", "observer"), ("collect-gpu", "DaemonSet", "observer-gpu")}
    assert not [o for o in objs if o["kind"] in ("ScaledObject", "PersistentVolumeClaim", "Secret")]


def test_the_central_overlay_runs_each_stage_once_and_no_receiver() -> None:
    objs = overlay("central")
    stages = [command(w) for w in workloads(objs)]
    assert sorted(stages) == sorted(CENTRAL) and not set(stages) & PER_CLUSTER
    assert {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"} == {"observer"}
    assert "observer-otlp" not in namespaced(objs, "Service", "observer")


def test_every_configuration_loads_and_the_cluster_writes_to_the_central_kafka(tmp_path: Path) -> None:
    objs = overlay("cluster")
    receivers, gpu = config_of(objs, "observer", tmp_path), config_of(objs, "observer-gpu", tmp_path)
    assert not receivers.kafka.embedded and receivers.kafka == gpu.kafka
    assert receivers.kafka.bootstrap_servers != KafkaConfig().bootstrap_servers
    assert receivers.receiver.host == "0.0.0.0" and gpu.admin.host == "0.0.0.0"
    central = config_of(overlay("central"), "observer", tmp_path)
    assert not central.kafka.embedded
    (scaled,) = [o for o in overlay("central") if o["kind"] == "ScaledObject"]
    meta = scaled["spec"]["triggers"][0]["metadata"]
    assert meta["bootstrapServers"] == central.kafka.bootstrap_servers
    assert meta["topic"] == Topics.from_config(central.kafka).llm


@pytest.mark.parametrize("name", ["central", "cluster"])
def test_references_resolve_within_each_namespace(name: str) -> None:
    objs = overlay(name)
    for w in workloads(objs):
        ns, spec = w["metadata"]["namespace"], w["spec"]["template"]["spec"]
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert spec["serviceAccountName"] in namespaced(objs, "ServiceAccount", ns), name_of(w)
        for volume in spec["volumes"]:
            if "configMap" in volume:
                assert volume["configMap"]["name"] in namespaced(objs, "ConfigMap", ns)
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in namespaced(
                    objs, "PersistentVolumeClaim", ns)
        for env in spec["containers"][0].get("env", []):
            if "secretKeyRef" in env.get("valueFrom", {}):
                assert env["valueFrom"]["secretKeyRef"]["name"] in namespaced(objs, "Secret", ns)
        policies = [p for p in namespaced(objs, "NetworkPolicy", ns).values()
                    if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()]
        assert policies, f"{name_of(w)} in {ns}: no NetworkPolicy selects its pods"
    for svc in [o for o in objs if o["kind"] == "Service"]:
        ns = svc["metadata"]["namespace"]
        pods = [w for w in workloads(objs) if w["metadata"]["namespace"] == ns and
                svc["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert pods, f"Service {svc['metadata']['name']} in {ns} selects no pod"


def pod_security_cases() -> list[tuple[str, dict[str, Any], str]]:
    cases = []
    for name in ("central", "cluster"):
        objs = overlay(name)
        levels = {n["metadata"]["name"]: n["metadata"]["labels"].get(PSS)
                  for n in objs if n["kind"] == "Namespace"}
        cases += [(name, w, levels[w["metadata"]["namespace"]]) for w in workloads(objs)]
    return cases


@pytest.mark.parametrize("overlay_name,w,level", pod_security_cases(),
                         ids=lambda x: x if isinstance(x, str) else name_of(x))
def test_pods_meet_their_namespace_pod_security_level(overlay_name: str, w: dict[str, Any],
                                                      level: str) -> None:
    assert level in ("restricted", "privileged"), f"{w['metadata']['namespace']}: no enforce label"
    assert violations(w["spec"]["template"]["spec"], level) == []
    if command(w) != "collect-gpu":
        assert level == "restricted"


def test_only_the_gpu_daemonset_needs_more_than_restricted_and_only_for_nvml() -> None:
    (ds,) = [w for w in workloads(overlay("cluster")) if w["kind"] == "DaemonSet"]
    assert violations(ds["spec"]["template"]["spec"], "restricted") == [
        "host namespaces: hostPID", "hostPath volume: pod-logs", "volume type: pod-logs"]
    # Everything else of restricted still holds there.
    pod = yaml.safe_load(yaml.safe_dump(ds["spec"]["template"]["spec"]))
    pod["hostPID"] = False
    pod["volumes"] = [v for v in pod["volumes"] if "hostPath" not in v]
    assert violations(pod, "restricted") == []


def test_the_restricted_rules_catch_a_root_or_privileged_pod() -> None:
    (w,) = [w for w in workloads(overlay("central")) if command(w) == "normalize"]
    for mutate, expected in [
        (lambda p: p["securityContext"].update(runAsUser=0), "runAsUser 0: pod"),
        (lambda p: p["securityContext"].pop("runAsNonRoot"), "runAsNonRoot not true: observer"),
        (lambda p: p["securityContext"].pop("seccompProfile"),
         "seccompProfile not RuntimeDefault/Localhost: observer"),
        (lambda p: p["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
         "allowPrivilegeEscalation not false: observer"),
        (lambda p: p["containers"][0]["securityContext"]["capabilities"].update(add=["NET_RAW"]),
         "capability added: observer NET_RAW"),
        (lambda p: p["containers"][0]["securityContext"].update(privileged=True),
         "privileged: observer"),
        (lambda p: p["containers"][0]["ports"][0].update(hostPort=8080), "hostPort: observer"),
    ]:
        pod = yaml.safe_load(yaml.safe_dump(w["spec"]["template"]["spec"]))
        mutate(pod)
        assert expected in violations(pod, "restricted")


@pytest.mark.parametrize("component", sorted(RUNTIMES))
@pytest.mark.parametrize("folder", ["overlays/central", "overlays/cluster"])
def test_runtime_class_component_sandboxes_every_deployment(folder: str, component: str,
                                                            tmp_path: Path) -> None:
    objs = with_component(folder, f"components/{component}", tmp_path)
    for w in workloads(objs):
        validate(w)
        spec = w["spec"]["template"]["spec"]
        if w["kind"] == "Deployment":
            assert spec["runtimeClassName"] == RUNTIMES[component], name_of(w)
            assert violations(spec, "restricted") == []
        else:  # NVML needs the host's GPU devices: the node's own runtime
            assert "runtimeClassName" not in spec
    assert {name_of(w) for w in workloads(objs)} == {name_of(w) for w in workloads(rendered(folder))}


def mirror_maker_name(policy: str, source: str, topic: str) -> str:
    """The name MirrorMaker 2 gives ``topic`` of cluster alias ``source`` in the target Kafka."""
    return {"DefaultReplicationPolicy": f"{source}.{topic}", "IdentityReplicationPolicy": topic}[policy]


@pytest.mark.parametrize("policy,prefixes", [
    # One central stage set per source cluster: its topics carry the source alias.
    ("DefaultReplicationPolicy", {"otlp_topic_prefix": "east.", "topic_prefix": "east.observer."}),
    # Every cluster's mirror lands in the same topics: one stage set for the fleet.
    ("IdentityReplicationPolicy", {}),
])
def test_central_stages_read_the_topics_mirror_maker_writes(policy: str, prefixes: dict[str, str],
                                                            tmp_path: Path) -> None:
    cluster = Topics.from_config(config_of(overlay("cluster"), "observer", tmp_path).kafka)
    central_yaml = yaml.safe_load(namespaced(overlay("central"), "ConfigMap", "observer")[
        "observer-config"]["data"]["observer.yaml"])
    central_yaml["kafka"].update(prefixes)
    f = tmp_path / "central.yaml"
    f.write_text(yaml.safe_dump(central_yaml))
    central = Topics.from_config(load_config(f, env={}).kafka)
    mirrored = {field: mirror_maker_name(policy, "east", getattr(cluster, field))
                for spec in PER_CLUSTER for field in BY_NAME[spec].outputs}
    read = {field for stage in CENTRAL for field in BY_NAME[stage].inputs}
    assert {"spans", "gpu"} <= read & set(mirrored)
    for field, name in mirrored.items():
        assert getattr(central, field) == name, field
    if policy == "DefaultReplicationPolicy":
        assert (central.spans, central.gpu, central.llm) == (
            "east.otlp_spans", "east.observer.gpu", "east.observer.llm")


# spiffe-helper's default file names in its cert_dir (docs/deployment.md, "SPIFFE/SPIRE").
SPIFFE_ENV = {
    "OBSERVER_RECEIVER__TLS__CERT_FILE": "/run/observer/svid/svid.pem",
    "OBSERVER_RECEIVER__TLS__KEY_FILE": "/run/observer/svid/svid_key.pem",
    "OBSERVER_RECEIVER__TLS__CLIENT_CA_FILE": "/run/observer/svid/svid_bundle.pem",
    "OBSERVER_ADMIN__TLS__CERT_FILE": "/run/observer/svid/svid.pem",
    "OBSERVER_ADMIN__TLS__KEY_FILE": "/run/observer/svid/svid_key.pem",
}


def test_the_documented_spiffe_settings_are_observers_tls_knobs() -> None:
    assert [p for p in map(env_field_problem, SPIFFE_ENV) if p] == []
    cfg = load_with_env(SPIFFE_ENV)
    assert cfg.receiver.tls.enabled and cfg.receiver.tls.client_ca_file is not None
    assert cfg.admin.tls.enabled and cfg.admin.tls.client_ca_file is None


PLACEHOLDER_CLUSTER = "change-me-cluster"


def test_the_cluster_overlay_names_its_cluster_with_a_placeholder_to_change() -> None:
    objs = overlay("cluster")
    env = {command(w): {e["name"]: e.get("value") for e in
                        w["spec"]["template"]["spec"]["containers"][0].get("env", [])}
           for w in workloads(objs)}
    assert env["collect"]["OBSERVER_RECEIVER__CLUSTER"] == PLACEHOLDER_CLUSTER
    assert env["collect-gpu"]["OBSERVER_GPU__CLUSTER"] == PLACEHOLDER_CLUSTER
    # Real knobs, and what they load to: the collector pins its cluster on every span.
    cluster_env = {k: v for e in env.values() for k, v in e.items() if "CLUSTER" in k}
    assert [p for p in map(env_field_problem, cluster_env) if p] == []
    cfg = load_with_env(cluster_env)
    assert (cfg.receiver.cluster, cfg.receiver.cluster_pinned, cfg.gpu.cluster) == (
        PLACEHOLDER_CLUSTER, True, PLACEHOLDER_CLUSTER)
    # The placeholder says, where it is set, that it must be changed.
    text = (K8S / "overlays" / "cluster" / "cluster-name.yaml").read_text()
    assert all("CHANGE ME" in line for line in text.splitlines()
               if f"value: {PLACEHOLDER_CLUSTER}" in line)
    # The central stages stamp no cluster of their own.
    assert not [w for w in workloads(overlay("central"))
                if any("CLUSTER" in e["name"] for e in
                       w["spec"]["template"]["spec"]["containers"][0].get("env", []))]
