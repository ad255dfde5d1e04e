"""checkov's Kubernetes checks on every manifest observer ships: the kustomize base and Argo
folder, both multi-cluster overlays, deploy/kubernetes/gpu-economics.yaml and what
``observer pipeline render`` writes (both serving modes). No check may fail; a skipped check
must carry its reason in the manifest (``checkov.io/skipN: <check>=<reason>``) and be one of
:data:`SKIPS`, so a new skip is a reviewed change to this table.

checkov pins packages older than observer's (packaging<24), so it lives in its own virtualenv,
``build/checkov-venv``, created here when missing (``pip install checkov==CHECKOV_VERSION``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.test_deploy_kubernetes import K8S

ROOT = K8S.parents[1]
CHECKOV_VERSION = "3.3.30"
VENV = ROOT / "build" / "checkov-venv"
RENDERED = ("base", "argo", "overlays/central", "overlays/cluster")
# The checks observer skips, and where (kind/name): each reason is in the manifest itself.
SKIPS = {
    "CKV_K8S_11": "every workload: no CPU limits (CFS throttling), CPU requested, memory limited",
    "CKV_K8S_43": "every workload: images pinned by release tag, digests are the user's choice",
    "CKV_K8S_17": "DaemonSet/observer-gpu-collector only: NVML pod attribution needs hostPID",
    "CKV_K8S_35": "Deployment/observer-trigger only: the Argo token is read from the environment",
}
ONLY_ON = {"CKV_K8S_17": "DaemonSet.observer-gpu-collector",
           "CKV_K8S_35": "Deployment.observer-trigger"}
# A workload that breaks checks on purpose: proves the scan reads what it is given.
CANARY = """apiVersion: v1
kind: Pod
metadata:
  name: canary
  namespace: canary
spec:
  containers:
    - name: c
      image: example/canary:latest
      securityContext:
        privileged: true
"""


def checkov() -> Path:
    exe = VENV / "bin" / "checkov"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, timeout=120)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "--quiet",
                        f"checkov=={CHECKOV_VERSION}"], check=True, timeout=600)
    return exe


def render_all(out: Path) -> None:
    for folder in RENDERED:
        text = subprocess.run([shutil.which("kubectl") or "kubectl", "kustomize", str(K8S / folder)],
                              capture_output=True, text=True, timeout=120, check=True).stdout
        target = out / folder.replace("/", "-")
        target.mkdir(parents=True)
        (target / "all.yaml").write_text(text)
    (out / "plain").mkdir()
    shutil.copy(K8S / "gpu-economics.yaml", out / "plain")
    observer = Path(sys.executable).with_name("observer")
    # What observer ships: the defaults, whatever OBSERVER_* this shell has.
    defaults = {k: v for k, v in os.environ.items() if not k.startswith("OBSERVER_")}
    for serving in ("inferenceservice", "llminferenceservice"):
        subprocess.run([str(observer), "pipeline", "render", "--out", str(out / f"pipeline-{serving}"),
                        "--serving", serving], capture_output=True, text=True, timeout=120,
                       check=True, env=defaults)
    (out / "canary").mkdir()
    (out / "canary" / "pod.yaml").write_text(CANARY)


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("rendered")
    render_all(out)
    # --skip-download and BC_SKIP_MAPPING: offline, no platform look-ups.
    # Failed checks exit non-zero: the report says which.
    run = subprocess.run([str(checkov()), "-d", str(out), "--framework", "kubernetes", "--compact",
                          "-o", "json", "--skip-download"], capture_output=True, text=True,
                         timeout=300, check=False, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
    assert run.stdout.strip(), f"checkov wrote nothing (rc {run.returncode}): {run.stderr[-2000:]}"
    report = json.loads(run.stdout)
    assert isinstance(report, dict) and report["check_type"] == "kubernetes", run.stdout[:500]
    return report


def checks(scan: dict[str, Any], outcome: str, canary: bool = False) -> list[dict[str, Any]]:
    return [c for c in scan["results"].get(outcome, [])
            if c["file_path"].startswith("/canary/") == canary]


def test_no_check_fails(scan: dict[str, Any]) -> None:
    assert scan["summary"]["parsing_errors"] == 0
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
              for c in checks(scan, "failed_checks")]
    assert failed == []


def test_the_scan_covers_every_workload_and_catches_a_bad_one(scan: dict[str, Any]) -> None:
    seen = {(c["file_path"].split("/")[1], c["resource"]) for c in checks(scan, "passed_checks")}
    folders = {folder for folder, _ in seen}
    assert {f.replace("/", "-") for f in RENDERED} | {"plain"} <= folders
    assert {f for f in folders if f.startswith("pipeline-")} == {
        "pipeline-inferenceservice", "pipeline-llminferenceservice"}
    workloads = {r for _, r in seen if r.split(".")[0] in ("Deployment", "DaemonSet")}
    assert {"Deployment.observer.observer-collect", "Deployment.observer.observer-drift",
            "DaemonSet.observer-gpu.observer-gpu-collector",
            "Deployment.observer.observer-gpu-economics"} <= workloads
    caught = {c["check_id"] for c in checks(scan, "failed_checks", canary=True)}
    assert {"CKV_K8S_16", "CKV_K8S_14"} <= caught  # privileged, :latest


def test_every_skip_is_listed_and_justified(scan: dict[str, Any]) -> None:
    skipped = checks(scan, "skipped_checks")
    assert {c["check_id"] for c in skipped} == set(SKIPS), "SKIPS lists a check nothing skips"
    for c in skipped:
        assert c["check_id"] in SKIPS, f"{c['check_id']} skipped on {c['resource']}: add it to SKIPS"
        reason = c["check_result"].get("suppress_comment") or ""
        assert len(reason.split()) >= 8, f"{c['check_id']} on {c['resource']}: no reason given"
        kind, _namespace, name = c["resource"].split(".", 2)
        if c["check_id"] in ONLY_ON:
            assert f"{kind}.{name}" == ONLY_ON[c["check_id"]], c["resource"]
