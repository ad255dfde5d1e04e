"""Prometheus deployment files: promtool (Debian's prometheus package) accepts the scrape
configurations and recording rules, the rules follow the naming convention, and every recorded
series a dashboard reads is recorded here."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "deploy" / "prometheus"
RULES = sorted(PROM.glob("rules/*.yml"))
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
# level:metric:operations (Prometheus's recording-rule naming practice).
RECORD_NAME = re.compile(r"^[a-z_]+:[a-z_]+:[a-z0-9_]+$")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("config", ["prometheus.yml", "kubernetes.yml"])
def test_promtool_check_config(config: str) -> None:
    result = promtool("check", "config", str(PROM / config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", *map(str, RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    """The check above could fail: a rule with bad PromQL is refused."""
    bad = tmp_path / "bad.yml"
    bad.write_text("groups:\n  - name: x\n    rules:\n      - record: a:b:c\n        expr: sum by (\n")
    assert promtool("check", "rules", str(bad)).returncode != 0


def recorded() -> dict[str, str]:
    out = {}
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                out[rule["record"]] = rule["expr"]
    return out


def test_recording_rules_are_named_by_convention_and_keep_cluster() -> None:
    rules = recorded()
    assert rules
    for name, expr in rules.items():
        assert RECORD_NAME.match(name), name
        level = name.split(":")[0].split("_")
        assert level[0] == "cluster", f"{name}: cluster is kept at every level"
        assert "by (cluster" in expr, f"{name}: aggregates by cluster"


def test_dashboards_read_only_recorded_series_that_exist() -> None:
    rules = recorded()
    used = set()
    for path in (ROOT / "dashboards" / "json").glob("*.json"):
        used |= set(re.findall(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", path.read_text()))
    assert used, "the dashboards read recorded series"
    assert used <= set(rules), f"not recorded: {used - set(rules)}"


def test_scrape_job_points_at_the_observer_admin_port() -> None:
    from observer.core.config import AdminConfig

    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    targets = [t for s in job["static_configs"] for t in s["targets"]]
    assert targets == [f"observer:{AdminConfig().port}"]
    assert job["metrics_path"] == "/metrics"
    assert all(s["labels"]["cluster"] for s in job["static_configs"])
    k8s = yaml.safe_load((PROM / "kubernetes.yml").read_text())
    (job,) = k8s["scrape_configs"]
    assert job["dns_sd_configs"][0]["port"] == AdminConfig().port
    assert any(r.get("target_label") == "cluster" for r in job["relabel_configs"])


def test_grafana_provisioning_matches_compose() -> None:
    grafana = ROOT / "deploy" / "grafana" / "provisioning"
    ds = yaml.safe_load((grafana / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((grafana / "dashboards" / "observer.yml").read_text())["providers"][0]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounts["./dashboards/json"] == provider["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    home = compose["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    name = home.rsplit("/", 1)[1]
    assert json.loads((ROOT / "dashboards" / "json" / name).read_text())["uid"]


def test_promtool_unit_tests_of_the_recording_rules() -> None:
    result = promtool("test", "rules", str(ROOT / "tests" / "prometheus" / "observer_rules_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
