"""Configuration: defaults, YAML file, OBSERVER_* environment overrides, clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from observer.config import ObserverConfig, load_config
from observer.core.config import ConfigError
from observer.core.topics import Topics

def test_defaults_work_on_one_machine() -> None:
    cfg = load_config(None, env={})
    assert cfg.kafka.embedded and cfg.kafka.servers == "127.0.0.1:9092"
    assert cfg.receiver.http_port == 4318 and cfg.admin.port == 8080
    assert Topics.from_config(cfg.kafka).spans == "otlp_spans"
    assert Topics.from_config(cfg.kafka).drift_state == "observer.drift-state"


def test_yaml_then_env_overrides(tmp_path: Path) -> None:
    f = tmp_path / "observer.yaml"
    f.write_text(
        "kafka:\n  bootstrap_servers: k1:9092,k2:9092\n  partitions: 12\n"
        "drift:\n  window_size: 1000\n"
        "trigger:\n  policies:\n    - name: p\n      webhooks:\n"
        "        - url: https://hooks.example/x\n          secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n"
    )
    cfg = load_config(f, env={"OBSERVER_DRIFT__WINDOW_SIZE": "250", "OBSERVER_KAFKA__TOPIC_PREFIX": "acme."})
    assert cfg.kafka.bootstrap_servers == "k1:9092,k2:9092" and not cfg.kafka.embedded
    assert cfg.kafka.partitions == 12
    assert cfg.drift.window_size == 250  # the environment wins over the file
    assert Topics.from_config(cfg.kafka).llm == "acme.llm"
    assert cfg.trigger.policies[0].webhooks[0].url == "https://hooks.example/x"
    # Secrets stay masked in anything printed.
    assert "whsec_" not in cfg.model_dump_json()


def test_config_file_named_by_environment(tmp_path: Path) -> None:
    f = tmp_path / "o.yaml"
    f.write_text("admin:\n  port: 9999\n")
    assert load_config(None, env={"OBSERVER_CONFIG": str(f)}).admin.port == 9999


@pytest.mark.parametrize(
    "text, env, message",
    [
        ("kafka:\n  bootstrap_server: x\n", {}, "bootstrap_server"),  # misspelt knob
        ("drift:\n  window_size: -3\n", {}, "window_size"),
        ("- a list\n", {}, "mapping"),
        ("kafka: [\n", {}, "not valid YAML"),
        ("", {"OBSERVER_DRIFT__WINDOW_SIZE": "lots"}, "window_size"),
        ("trigger:\n  policies:\n    - webhooks:\n        - url: http://x\n          secret: plain\n", {}, "whsec_"),
    ],
)
def test_bad_configuration_names_the_problem(tmp_path: Path, text: str, env: dict, message: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(f, env=env)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/observer.yaml", env={})


def _knobs(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _knobs(ann, f"{prefix}{name}.")
        else:
            out.append(prefix + name)
    return out


def _value(cfg: BaseModel, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_every_knob_parses_back_from_yaml_and_env(tmp_path: Path) -> None:
    """Every knob (the generated configuration reference lists the same walk, tests/test_docs.py)
    survives a round trip: the effective configuration written as YAML loads back equal, and each
    scalar knob set through its OBSERVER_* variable reaches the same field."""
    import yaml

    cfg = load_config(None, env={})
    f = tmp_path / "all.yaml"
    f.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))
    assert load_config(f, env={}) == cfg
    knobs = _knobs(ObserverConfig)
    assert len(knobs) > 100
    for knob in knobs:
        value = _value(cfg, knob)
        if isinstance(value, bool) or not isinstance(value, (int, float, str)) or value == "":
            continue
        env = {"OBSERVER_" + knob.upper().replace(".", "__"): str(value)}
        assert _value(load_config(None, env=env), knob) == value, knob
