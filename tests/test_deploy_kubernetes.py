"""The Kubernetes manifests, as kustomize renders them: every object passes the Kubernetes API
schemas (kubernetes-validate, strict) or, for KEDA's ScaledObject, KEDA's own CRD schema; they
carry the documented labels, probes and resource requests; and they refer only to what exists:
the image observer builds, its commands, its configuration knobs, ports, routes, accounts."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from observer.config import load_config
from observer.collectors.receiver.config import ReceiverConfig
from observer.core.config import AdminConfig
from observer.drift.config import DriftConfig
from observer.triggers.config import PipelineConfig
from observer.core.topics import Topics
from tests.deploy_support import cli_commands, env_field_problem, load_with_env, routes_for

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.37.0"
KEDA_CRD = ROOT / "tests" / "schemas" / "keda.sh_scaledobjects.yaml"
LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/part-of")
WORKLOADS = ("Deployment", "DaemonSet")
STAGES = {"collect", "normalize", "paths", "drift", "trigger", "metrics"}
# What each command uses here beyond the core: the drift stage serves HTML reports, the trigger
# stage exports windows (export.uri in the ConfigMap) and may start Argo runs.
COMMAND_EXTRAS = {"drift": {"reports"}, "trigger": {"parquet", "argo"}, "collect-gpu": {"gpu"}}


@cache
def role_images() -> dict[str, set[str]]:
    """Image -> its extras, from the Dockerfile: ``FROM runtime AS <role>`` copies the prefix of
    ``install-<role>``, which installs the wheel with ``[extras]``; ``full`` is the pipeline's
    image (trigger.pipeline.image), the others ``<that image>-<role>``."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    repo = PipelineConfig().image.rsplit(":", 1)[0]
    images = {}
    for role in re.findall(r"^FROM runtime AS (\S+)$", text, re.M):
        install = re.search(rf"^FROM build AS install-{role}\n(RUN .*)$", text, re.M)
        assert install, f"the Dockerfile has no install-{role} stage"
        extras = re.search(r"\[([a-z,]+)\]\"?\s*$", install.group(1))
        name = repo if role == "full" else f"{repo}-{role}"
        images[name] = set(extras.group(1).split(",")) if extras else set()
    return images


@cache
def rendered(folder: str) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (kustomize) is missing: `make install` installs it"
    out = subprocess.run([kubectl, "kustomize", str(K8S / folder)], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def objects() -> list[dict[str, Any]]:
    return [*rendered("base"), *rendered("argo")]


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [o for o in objects() if o["kind"] == kind]


def workloads() -> list[dict[str, Any]]:
    return [o for o in objects() if o["kind"] in WORKLOADS]


def observer_yaml() -> dict[str, Any]:
    (cm,) = [c for c in by_kind("ConfigMap") if c["metadata"]["name"] == "observer-config"]
    return yaml.safe_load(cm["data"]["observer.yaml"])


def name_of(o: dict[str, Any]) -> str:
    return f"{o['kind']}/{o['metadata']['name']}"


def test_kustomize_renders_everything() -> None:
    kinds = {o["kind"] for o in objects()}
    assert {"Namespace", "Deployment", "DaemonSet", "Service", "ScaledObject", "ServiceAccount",
            "Role", "RoleBinding", "NetworkPolicy", "ConfigMap"} <= kinds
    assert {o["metadata"].get("namespace") for o in rendered("base") if o["kind"] != "Namespace"} == {"observer"}
    assert {o["metadata"]["namespace"] for o in rendered("argo")} == {"argo"}


@pytest.mark.parametrize("obj", objects(), ids=name_of)
def test_object_passes_its_schema(obj: dict[str, Any]) -> None:
    if obj["kind"] == "ScaledObject":
        crd = yaml.safe_load(KEDA_CRD.read_text())
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == obj["apiVersion"].split("/")[1]]
        jsonschema.validate(obj, version["schema"]["openAPIV3Schema"])
    else:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_schema_validation_catches_mistakes() -> None:
    deployment = yaml.safe_load(yaml.safe_dump(by_kind("Deployment")[0]))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    scaled = yaml.safe_load(yaml.safe_dump(by_kind("ScaledObject")[0]))
    del scaled["spec"]["scaleTargetRef"]
    crd = yaml.safe_load(KEDA_CRD.read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


@pytest.mark.parametrize("obj", objects(), ids=name_of)
def test_documented_labels(obj: dict[str, Any]) -> None:
    labels = obj["metadata"].get("labels", {})
    assert labels.get("app.kubernetes.io/part-of") == "observer"
    if obj["kind"] != "Namespace":
        assert labels.get("app.kubernetes.io/name") == "observer"


def test_one_deployment_per_stage_and_the_gpu_daemonset() -> None:
    components = {d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]: d
                  for d in by_kind("Deployment")}
    assert set(components) == STAGES
    for stage, d in components.items():
        assert d["spec"]["template"]["spec"]["containers"][0]["args"] == [stage]
    (ds,) = by_kind("DaemonSet")
    assert ds["spec"]["template"]["spec"]["containers"][0]["args"] == ["collect-gpu"]
    assert any(t["key"] == "nvidia.com/gpu" for t in ds["spec"]["template"]["spec"]["tolerations"])


@pytest.mark.parametrize("w", workloads(), ids=name_of)
def test_workload_refers_only_to_what_exists(w: dict[str, Any]) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    template = w["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert all(labels.get(k) == "observer" for k in LABELS)
    assert labels["app.kubernetes.io/version"] == pyproject["project"]["version"]
    assert w["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = template["spec"]["containers"]
    image, tag = container["image"].rsplit(":", 1)
    roles = role_images()
    assert image in roles, f"{image} is not an image the Dockerfile builds ({sorted(roles)})"
    assert tag == pyproject["project"]["version"]
    command = container["args"][0]
    assert command in cli_commands()
    missing = COMMAND_EXTRAS.get(command, set()) - roles[image]
    assert not missing, f"{command} runs on {image}, which lacks the extras {sorted(missing)}"
    env = {e["name"]: e.get("value", "x") for e in container.get("env", []) if e["name"].startswith("OBSERVER_")}
    assert [p for p in map(env_field_problem, env) if p] == []
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["admin"] == AdminConfig().port
    if command == "collect":
        assert ports["otlp-grpc"] == ReceiverConfig().grpc_port
        assert ports["otlp-http"] == ReceiverConfig().http_port
    routes = routes_for(command)
    for probe in ("livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] == "admin" and get["path"] in routes, f"{probe}: {get}"
    if command != "collect-gpu":
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    requests = container["resources"]["requests"]
    assert requests["cpu"] and requests["memory"] and container["resources"]["limits"]["memory"]
    assert template["spec"]["securityContext"]["runAsNonRoot"] is True
    config_mounts = [m for m in container["volumeMounts"] if m["name"] == "config"]
    assert config_mounts and env.get("OBSERVER_CONFIG", "").startswith(config_mounts[0]["mountPath"])
    accounts = {o["metadata"]["name"] for o in by_kind("ServiceAccount")}
    assert template["spec"]["serviceAccountName"] in accounts
    claims = {o["metadata"]["name"] for o in by_kind("PersistentVolumeClaim")}
    for volume in template["spec"]["volumes"]:
        if "persistentVolumeClaim" in volume:
            assert volume["persistentVolumeClaim"]["claimName"] in claims
        if "configMap" in volume:
            assert volume["configMap"]["name"] in {c["metadata"]["name"] for c in by_kind("ConfigMap")}


def test_config_map_is_a_valid_configuration(tmp_path: Path) -> None:
    f = tmp_path / "observer.yaml"
    f.write_text(yaml.safe_dump(observer_yaml()))
    cfg = load_config(f, env={})
    assert not cfg.kafka.embedded and cfg.receiver.host == "0.0.0.0" and cfg.admin.host == "0.0.0.0"
    assert str(cfg.trigger.ledger_path).startswith("/var/lib/observer/")
    (trigger,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "observer-trigger"]
    mounts = trigger["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert any(m["mountPath"] == "/var/lib/observer" for m in mounts), "the ledger is on the PVC"
    assert trigger["spec"]["strategy"]["type"] == "Recreate", "one SQLite writer at a time"
    env = {e["name"]: "x" for e in trigger["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert load_with_env(env).trigger.argo.token is not None


def test_keda_scales_the_drift_stage_on_its_consumer_group() -> None:
    (scaled,) = by_kind("ScaledObject")
    target = scaled["spec"]["scaleTargetRef"]
    (drift,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == target["name"]]
    assert drift["spec"]["template"]["spec"]["containers"][0]["args"] == ["drift"]
    assert "replicas" not in drift["spec"], "KEDA owns the replica count"
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    cfg = observer_yaml()
    assert trigger["type"] == "kafka"
    assert meta["consumerGroup"] == DriftConfig().group_id
    assert meta["bootstrapServers"] == cfg["kafka"]["bootstrap_servers"]
    from observer.core.config import KafkaConfig

    topics = Topics.from_config(KafkaConfig(**cfg["kafka"]))
    assert meta["topic"] == topics.llm
    assert scaled["spec"]["minReplicaCount"] >= 1, "a never-committed group can stick at zero"
    assert scaled["spec"]["maxReplicaCount"] <= cfg["kafka"]["partitions"]


def test_services_select_pods_and_ports_that_exist() -> None:
    for svc in by_kind("Service"):
        selector = svc["spec"]["selector"]
        pods = [w for w in workloads()
                if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert pods, f"{svc['metadata']['name']} selects no pod"
        for port in svc["spec"]["ports"]:
            for w in pods:
                names = {p["name"] for p in w["spec"]["template"]["spec"]["containers"][0]["ports"]}
                assert port["targetPort"] in names, f"{svc['metadata']['name']}: {port}"
    (otlp,) = [s for s in by_kind("Service") if s["metadata"]["name"] == "observer-otlp"]
    assert {p["port"] for p in otlp["spec"]["ports"]} == {ReceiverConfig().grpc_port, ReceiverConfig().http_port}
    (metrics,) = [s for s in by_kind("Service") if s["metadata"]["name"] == "observer-metrics"]
    assert metrics["spec"]["clusterIP"] == "None"
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "kubernetes.yml").read_text())
    name = prom["scrape_configs"][0]["dns_sd_configs"][0]["names"][0]
    assert name.startswith(f"{metrics['metadata']['name']}.{metrics['metadata']['namespace']}.svc")


def test_network_policies_open_only_named_ports() -> None:
    for policy in by_kind("NetworkPolicy"):
        selector = policy["spec"]["podSelector"]["matchLabels"]
        pods = [w for w in workloads()
                if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert pods
        for rule in policy["spec"]["ingress"]:
            for port in rule["ports"]:
                for w in pods:
                    names = {p["name"] for p in w["spec"]["template"]["spec"]["containers"][0]["ports"]}
                    assert port["port"] in names


def test_rbac_lets_the_trigger_submit_from_a_template_and_nothing_more() -> None:
    accounts = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in by_kind("ServiceAccount")}
    roles = {o["metadata"]["name"]: o for o in by_kind("Role")}
    for binding in by_kind("RoleBinding"):
        assert binding["roleRef"]["name"] in roles
        for s in binding["subjects"]:
            assert (s["namespace"], s["name"]) in accounts
    submitter = roles["observer-argo-submitter"]["rules"]
    verbs = {r["resources"][0]: set(r["verbs"]) for r in submitter}
    assert verbs == {"workflowtemplates": {"get", "list"}, "workflows": {"create", "get", "list", "watch"}}
    (token,) = by_kind("Secret")
    assert token["type"] == "kubernetes.io/service-account-token"
    sa = token["metadata"]["annotations"]["kubernetes.io/service-account.name"]
    assert (token["metadata"]["namespace"], sa) in accounts
    (trigger,) = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "observer-trigger"]
    refs = [e["valueFrom"]["secretKeyRef"]["name"]
            for e in trigger["spec"]["template"]["spec"]["containers"][0]["env"] if "valueFrom" in e]
    assert refs == [token["metadata"]["name"]]
    pipeline_sa = PipelineConfig().service_account
    assert ("argo", pipeline_sa) in accounts
