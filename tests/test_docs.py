"""The documentation site builds with ``mkdocs build --strict`` (as ``make docs`` does), and
its generated reference pages hold what the code defines: every configuration knob, the
metrics, every CLI subcommand, every record schema and topic."""

from __future__ import annotations

import doctest
import functools
import html
import importlib.util
import os
import re
import subprocess
import sys
import typing
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import BaseModel, Field

from observer.config import ObserverConfig

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def _load(name: str, script: str) -> ModuleType:
    """A build script of docs/ as a module (the scripts sit outside the packages)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _generator() -> ModuleType:
    return _load("gen_reference", "gen_reference.py")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "DISABLE_MKDOCS_2_WARNING": "true", "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    return out


def _page_text(site: Path, page: str) -> str:
    """The page's HTML with tags dropped and entities decoded: what a reader sees."""
    raw = (site / page / "index.html").read_text()
    return html.unescape(re.sub(r"<[^>]+>", "", raw))


def _knobs(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted knob of the configuration, walked here independently of the generator:
    ``[]`` for the items of a list of models, ``.<key>`` for the values of a mapping."""
    paths = []
    for name, field in model.model_fields.items():
        path, annotation = f"{prefix}{name}", field.annotation
        suffix = ""
        while True:  # unwrap list[...] / dict[str, ...] / X | None down to a model, if any
            origin, args = typing.get_origin(annotation), typing.get_args(annotation)
            if origin is list:
                suffix, annotation = suffix + "[]", args[0]
            elif origin is dict:
                suffix, annotation = suffix + ".<key>", args[1]
            elif args and origin is not typing.Literal:
                models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
                if not models:
                    break
                annotation = models[0]
            else:
                break
        is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if not (is_model and suffix == "" and not field.description):
            paths.append(path)  # a plain section is not a knob; its fields are
        if is_model:
            paths += _knobs(annotation, f"{path}{suffix}.")
    return paths


def test_configuration_reference_has_every_knob(site: Path) -> None:
    text = _page_text(site, "reference/configuration")
    knobs = _knobs(ObserverConfig)
    assert len(knobs) > 150
    missing = [k for k in knobs if k not in text]
    assert not missing, f"knobs missing from the configuration reference: {missing}"
    # The environment variable and default of a plain knob, and a secret's placeholder.
    assert "OBSERVER_DRIFT__WINDOW_SIZE" in text and "OBSERVER_KAFKA__BOOTSTRAP_SERVERS" in text
    for description in (ObserverConfig.model_fields["log_level"].description,):
        assert description in text


def test_metric_reference_lists_the_registered_metrics(site: Path) -> None:
    text = _page_text(site, "reference/metrics")
    for name in ("observer_stage_messages_total", "observer_dead_letters_total",
                 "observer_receiver_spans_total", "observer_llm_calls_total",
                 "observer_gpu_power_watts"):
        assert name in text
    # Every observer_* family registered in this process (whatever the tests imported so far)
    # is on the page.
    from prometheus_client import REGISTRY

    import observer.core.bus  # noqa: F401 (registers the stage series)

    registered = {m.name + ("_total" if m.type == "counter" else "")
                  for m in REGISTRY.collect() if m.name.startswith("observer_")}
    assert registered and not [n for n in registered if n not in text]


def test_cli_reference_has_every_subcommand(site: Path) -> None:
    import argparse

    from observer.cli import _parser

    text = _page_text(site, "reference/cli")
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert {"up", "collect", "drift", "collect-gpu"} <= set(sub.choices)
    for name in sub.choices:
        assert f"observer {name}" in text and f"usage: observer {name}" in text
    assert "usage: observer drift score" in text and "--reference" in text


def test_record_reference_has_every_schema_and_topic(site: Path) -> None:
    from observer.core.records import RECORD_TYPES
    from observer.core.topics import TOPIC_TABLE

    text = _page_text(site, "reference/records")
    for schema_id, cls in RECORD_TYPES.items():
        assert schema_id in text and cls.__name__ in text
        assert all((f.alias or name) in text for name, f in cls.model_fields.items())
    for spec in TOPIC_TABLE.values():
        assert spec.suffix in text


def test_hand_written_pages_are_built(site: Path) -> None:
    for page in ("getting-started", "concepts", "guarantees", "deployment", "benchmarks",
                 "stages/collect", "stages/drift", "stages/trigger", "stages/collect-gpu",
                 "api/records", "api/config"):
        assert (site / page / "index.html").is_file(), page
    assert "load_config" in _page_text(site, "api/config")


def test_a_knob_without_a_description_stops_the_generator() -> None:
    gen = _generator()

    class Inner(BaseModel):
        documented: int = Field(1, description="Has one.")
        bare: int = 2

    class Settings(BaseModel):
        section: Inner = Field(default_factory=Inner)
        items: list[Inner] = Field(default_factory=list, description="A list of them.")

    with pytest.raises(gen.MissingDescriptions) as caught:
        gen.configuration_page(Settings)
    assert str(caught.value).endswith("section.bare, items[].bare")


@pytest.mark.parametrize("script", ["gen_reference.py", "griffe_rst.py"])
def test_build_script_doctests(script: str) -> None:
    # docs/ is outside pytest's --doctest-modules paths: its scripts' doctests run here.
    module = _generator() if script == "gen_reference.py" else _load("griffe_rst", script)
    failures, tried = doctest.testmod(module)
    assert tried and not failures
