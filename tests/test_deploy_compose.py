"""docker-compose.yml and the Dockerfile: the Compose Specification's own JSON Schema accepts
the file (no Docker engine here), and everything they name exists in the project: the
commands, the OBSERVER_* knobs, the ports, the mounted files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from observer.collectors.receiver.config import ReceiverConfig
from observer.core.config import AdminConfig
from tests.deploy_support import cli_commands, env_field_problem, load_with_env

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "tests" / "schemas" / "compose" / "compose-spec.json"
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PORTS = {ReceiverConfig().grpc_port, ReceiverConfig().http_port, AdminConfig().port}


def compose_errors(doc: object) -> list[str]:
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_compose_validates_against_the_compose_spec() -> None:
    assert compose_errors(COMPOSE) == []


def test_the_schema_check_catches_mistakes() -> None:
    broken = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    broken["services"]["observer"]["healthcheck"]["interval"] = ["15s"]
    broken["services"]["kafka"]["restart_policy"] = "always"
    errors = compose_errors(broken)
    assert any("healthcheck/interval" in e for e in errors)
    assert any("restart_policy" in e for e in errors)


def test_the_stack() -> None:
    services = COMPOSE["services"]
    assert set(services) == {"kafka", "observer", "prometheus", "grafana"}
    assert services["kafka"]["image"].startswith("apache/kafka:")
    kafka_env = services["kafka"]["environment"]
    assert "controller" in kafka_env["KAFKA_PROCESS_ROLES"], "KRaft: no ZooKeeper"
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has a healthcheck"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is missing"
            else:
                assert source in COMPOSE["volumes"], f"{name}: named volume {source} is declared"
    assert services["observer"]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_observer_service_uses_real_commands_knobs_and_ports() -> None:
    observer = COMPOSE["services"]["observer"]
    assert observer["build"] == "." and (ROOT / "Dockerfile").exists()
    assert observer["command"][0] in cli_commands()
    env = {k: str(v) for k, v in observer["environment"].items()}
    assert [p for p in map(env_field_problem, env) if p] == []
    cfg = load_with_env(env)
    assert cfg.kafka.bootstrap_servers == "kafka:9092" and not cfg.kafka.embedded
    assert cfg.receiver.host == "0.0.0.0" and cfg.admin.host == "0.0.0.0"
    published = {int(p.split(":")[1]) for p in observer["ports"]}
    assert published == PORTS
    assert str(cfg.trigger.ledger_path).startswith("/var/lib/observer/")
    assert any(v.endswith(":/var/lib/observer") for v in observer["volumes"])


def test_env_check_names_the_problem() -> None:
    assert "no field 'bootstrap_server'" in env_field_problem("OBSERVER_KAFKA__BOOTSTRAP_SERVER")
    assert "no field 'kafkaa'" in env_field_problem("OBSERVER_KAFKAA__PARTITIONS")
    assert env_field_problem("OBSERVER_KAFKA__CLIENT_OPTIONS__SECURITY_PROTOCOL") is None


def dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [tuple(line.split(None, 1)) for line in text.splitlines()  # type: ignore[misc]
            if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_refers_to_what_exists() -> None:
    instructions = dockerfile()
    for op, arg in instructions:
        if op == "COPY" and not arg.startswith("--from"):
            for source in arg.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: missing"
    exposed = {int(p) for op, arg in instructions if op == "EXPOSE" for p in arg.split()}
    assert exposed == PORTS
    entry = json.loads(next(arg for op, arg in instructions if op == "ENTRYPOINT"))
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert entry == ["observer"] and re.search(r'^observer = "observer\.cli:main"', pyproject, re.MULTILINE)
    cmd = json.loads(next(arg for op, arg in instructions if op == "CMD"))
    assert cmd[0] in cli_commands()
    env = dict(re.findall(r"(OBSERVER_[A-Z_]+)=(\S+)", " ".join(a for o, a in instructions if o == "ENV")))
    assert env and [p for p in map(env_field_problem, env) if p] == []
    assert load_with_env(env).admin.host == "0.0.0.0"
    user = next(arg for op, arg in instructions if op == "USER")
    assert user != "root" and user != "0"


@pytest.mark.parametrize("service", ["observer", "prometheus", "grafana"])
def test_healthchecks_probe_real_endpoints(service: str) -> None:
    test = " ".join(COMPOSE["services"][service]["healthcheck"]["test"])
    if service == "observer":
        from tests.deploy_support import admin_routes

        path = re.search(r"127\.0\.0\.1:8080(/[a-z/]+)", test).group(1)
        assert path in admin_routes()
    else:
        assert "127.0.0.1" in test
