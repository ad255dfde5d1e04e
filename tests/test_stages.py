"""No stage fact is written by hand twice: each stage's spec (``observer.core.stage.StageSpec``,
beside its code, listed in ``observer.stages``) is what the runtime runs, what the CLI help
says, what the admin API mounts and what the generated docs list; the kernel imports no
stage, and no stage imports the shell."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from observer.config import ObserverConfig
from observer.core.config import AdminConfig
from observer.core.http import ServerThread
from observer.core.stage import AdminContext, StageSpec
from observer.core.topics import TOPIC_TABLE, Topics
from observer.stages import BY_NAME, STAGES, admin_routers

ROOT = Path(__file__).resolve().parent.parent
CFG = ObserverConfig()
TOPICS = Topics.from_config(CFG.kafka)
TOPIC_NAMES = {getattr(TOPICS, field) for field in TOPIC_TABLE}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    from observer.cli import _parser

    action = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _help_lines() -> dict[str, str]:
    from observer.cli import _parser

    action = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a.help or "" for a in action._choices_actions}


def _topics_named(text: str) -> list[str]:
    """The topic names a text mentions, in order (observer.drift is not observer.drift-state)."""
    return [w for w in re.findall(r"[\w.\-]+", text) if w in TOPIC_NAMES]


@pytest.mark.parametrize("spec", STAGES, ids=lambda s: s.name)
def test_the_cli_help_names_exactly_the_specs_topics(spec: StageSpec) -> None:
    help_line = _help_lines()[spec.name]
    named = _topics_named(help_line)
    expected = [*spec.topic_names(spec.inputs, TOPICS), *spec.output_topics(TOPICS)]
    assert named == expected, help_line
    # Reads left of the arrow, writes right of it.
    reads, writes = help_line.rsplit("->", 1)
    assert _topics_named(reads) == spec.topic_names(spec.inputs, TOPICS)
    assert _topics_named(writes) == spec.output_topics(TOPICS)
    assert help_line.startswith(spec.help)


def test_every_stage_has_a_subcommand_and_its_arguments() -> None:
    parsers = _subparsers()
    assert set(BY_NAME) <= set(parsers)
    drift = parsers["drift"].parse_args(["score", "--reference", "r", "--current", "c"])
    assert drift.drift_command == "score"  # the drift spec adds `drift score`
    gpu = parsers["collect-gpu"].parse_args(["--source", "prometheus", "--stdout"])
    assert gpu.source == "prometheus" and gpu.stdout


def test_the_runtime_runs_the_registrys_stages() -> None:
    from observer import runtime

    assert runtime.ALL_STAGES == [s.name for s in STAGES if s.command is None]
    assert runtime.CONSUMING_STAGES == {s.name: s for s in STAGES if s.kind == "consumer"}
    assert all(runtime.CONSUMING_STAGES[n] is BY_NAME[n] for n in runtime.CONSUMING_STAGES)
    # The settle watermark's graph is the specs' groups and topics.
    flows = runtime.Runtime(CFG, runtime.ALL_STAGES)._flows()
    for name, flow in flows.items():
        spec = BY_NAME[name]
        assert flow.group == spec.group_id(CFG)  # type: ignore[misc]
        assert list(flow.inputs) == spec.input_topics(CFG, TOPICS)
        assert list(flow.outputs) == spec.output_topics(TOPICS)
    assert set(flows) == set(runtime.CONSUMING_STAGES)


def test_consumers_are_built_from_their_section() -> None:
    for spec in STAGES:
        # The section is a field of the composed configuration, declared beside a stage.
        field = ObserverConfig.model_fields[spec.config_section]
        module = field.annotation.__module__  # type: ignore[union-attr]
        assert module.startswith(("observer.collectors.", "observer.drift.", "observer.triggers.")), (
            spec.name, module)
        if spec.kind == "consumer":
            assert spec.group_id is not None and spec.group_id(CFG)
            assert set(spec.input_topics(CFG, TOPICS)) <= set(spec.topic_names(spec.inputs, TOPICS))


def test_a_spec_naming_an_unknown_topic_is_refused() -> None:
    with pytest.raises(ValueError, match="'observer.llm' is not a topic"):
        StageSpec(name="bad", help="h", config_section="drift", inputs=("observer.llm",),
                  build=lambda c, t: None, group_id=lambda c: "g")
    with pytest.raises(ValueError, match="a consumer needs build, group_id and inputs"):
        StageSpec(name="bad", help="h", config_section="drift", inputs=("llm",))


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs" / "gen_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_reference", module)
    spec.loader.exec_module(module)
    return module


def test_the_generated_stages_page_lists_every_specs_topics() -> None:
    gen = _generator()
    page = gen.stages_page()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([\w-]+)` \| (?:consumer|producer) .*$",
                                                         page, re.M)}
    assert list(rows) == [s.name for s in STAGES]
    for spec in STAGES:
        reads, writes = rows[spec.name].split(" | ")[2:4]
        for topic in spec.topic_names(spec.inputs, TOPICS):
            assert f"`{topic}`" in reads, (spec.name, topic)
        assert _topics_named(writes) == spec.output_topics(TOPICS), spec.name
    # The diagram has one edge per input and output of every spec, and nothing else.
    diagram = page.split("```mermaid\n", 1)[1].split("```", 1)[0]
    edges = set(re.findall(r"^\s+(\w+) -\.?-> (\w+)$", diagram, re.M))
    expected = set()
    for spec in STAGES:
        stage = gen._node("s", spec.name)
        expected |= {(gen._node("t", t), stage) for t in spec.topic_names(spec.inputs, TOPICS)}
        expected |= {(stage, gen._node("t", t)) for t in spec.output_topics(TOPICS)}
        expected |= {(gen._node("x", x), stage) for x in spec.sources}
        expected |= {(stage, gen._node("x", x)) for x in spec.sinks}
    assert edges == expected
    # Every topic's writers, from the specs.
    for field in TOPIC_TABLE:
        writers = [s.name for s in STAGES if field in s.outputs]
        if writers:
            assert re.search(rf"^\| `{re.escape(getattr(TOPICS, field))}` \| {', '.join(writers)} \|",
                             page, re.M), field


def test_every_stage_route_is_mounted_and_guarded() -> None:
    from observer.admin import create_admin_app

    context = AdminContext(CFG, TOPICS, processor=lambda: None, topic_view=lambda t, s: None)
    routers = admin_routers(lambda spec: context)
    paths = {r.path for router in routers for r in router.routes}
    assert {"/api/v1/drift", "/api/v1/reports", "/reports/{rid}", "/api/v1/triggers",
            "/api/v1/triggers/{episode_id}/{verb}"} <= paths
    app = create_admin_app(AdminConfig(auth_token="adm1n"), kafka_ready=lambda: True,
                           stage_errors=dict, routers=routers)
    with ServerThread(app) as server:
        for path in paths:
            concrete = path.format(rid="llm-w1-0123456789abcdef", episode_id="e", verb="approve")
            method = "POST" if "{verb}" in path else "GET"
            refused = httpx.request(method, server.url + concrete, timeout=10)
            assert refused.status_code == 401, (path, refused.text)
        # With the token, a route that needs the trigger stage says it runs elsewhere.
        approve = httpx.post(server.url + "/api/v1/triggers/e/approve", timeout=10,
                             headers={"Authorization": "Bearer adm1n"})
        assert approve.status_code == 404 and "no trigger stage runs" in approve.json()["detail"]


def _module_imports(path: Path) -> list[str]:
    """Modules a file imports when it loads (imports under ``if TYPE_CHECKING`` and inside
    functions are left out: they do not run at import time)."""
    names = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


SHELL = ("observer.config", "observer.stages", "observer.runtime", "observer.admin", "observer.cli",
         "observer.views", "observer.durability")
STAGE_PACKAGES = ("observer.collectors", "observer.drift", "observer.triggers", "observer.dashboards")


def test_the_kernel_imports_no_stage_and_no_stage_imports_the_shell() -> None:
    kernel = sorted((ROOT / "observer" / "core").glob("*.py"))
    assert kernel
    for path in kernel:
        wrong = [m for m in _module_imports(path) if m.startswith(STAGE_PACKAGES + SHELL)]
        assert not wrong, f"{path.relative_to(ROOT)} imports {wrong}"
    for folder in ("collectors", "drift", "triggers"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            wrong = [m for m in _module_imports(path) if m.startswith(SHELL)]
            assert not wrong, f"{path.relative_to(ROOT)} imports the shell: {wrong}"
