"""Every collected test, doctests included, carries exactly one tier (unit, broker, system),
and every entry of the system list still names a collected test (tests/tiers.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiers import SYSTEM, TIERS

ROOT = Path(__file__).resolve().parent.parent

# Collects the whole suite in a child pytest (the same options as `make test`) and prints
# each test's tier markers, read after the conftest hook has marked them.
CHILD = """
import json, pytest
class Tiers:
    found = {}
    def pytest_collection_finish(self, session):
        for item in session.items:
            Tiers.found[item.nodeid] = sorted(
                {m.name for m in item.iter_markers() if m.name in ("unit", "broker", "system")})
code = pytest.main(["--collect-only", "-qq", "-p", "no:cacheprovider"], plugins=[Tiers()])
print("TIERS " + json.dumps({"code": int(code), "found": Tiers.found}))
"""


def collected_whole_suite(config: pytest.Config) -> bool:
    """True when this session collected what the child would: no arguments (the testpaths),
    nothing deselected or ignored, and a collection error would have stopped it before
    any test ran. ``make test`` is such a session: it then need not collect it all again."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    return (
        config.args_source == pytest.Config.ArgsSource.TESTPATHS
        and reporter is not None and not reporter.stats.get("deselected")
        and not (config.option.markexpr or config.option.keyword)
        and not (config.getoption("ignore") or config.getoption("ignore_glob"))
        and not config.getoption("continue_on_collection_errors")
        and not config.getoption("lf", False) and not config.getoption("stepwise", False)
    )


def tiers_of(items: list[pytest.Item]) -> dict[str, list[str]]:
    """Each test's tier markers, as the child prints them (under ``--dist loadgroup`` xdist
    names a grouped test ``<nodeid>@system``: the name without it)."""
    return {item.nodeid.removesuffix("@system"): sorted({m.name for m in item.iter_markers()
                                                        if m.name in ("unit", "broker", "system")})
            for item in items}


def collect_in_a_child() -> dict[str, list[str]]:
    done = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("TIERS ")]
    assert lines, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(lines[-1][len("TIERS "):])
    assert report["code"] == 0, done.stdout[-3000:]
    return report["found"]


def test_every_test_has_exactly_one_tier(request: pytest.FixtureRequest) -> None:
    # The whole suite's own collection when this session is one (about 10 s saved in CI),
    # else a child pytest collecting it all.
    whole = collected_whole_suite(request.config)
    found = tiers_of(request.session.items) if whole else collect_in_a_child()

    assert {node: tiers for node, tiers in found.items() if len(tiers) != 1} == {}
    per_tier = {t: sum(tiers == [t] for tiers in found.values()) for t in TIERS}
    assert all(per_tier.values()), per_tier
    assert all(tiers == ["unit"] for node, tiers in found.items() if "::" in node
               and not node.split("::")[0].startswith("tests/test_")), "doctests are unit"

    # A renamed or deleted test must leave the list too, or it silently stops applying.
    modules = {node.split("::")[0] for node in found}
    tests = {node.split("::")[0] + "::" + node.split("::")[-1].split("[")[0] for node in found}
    assert sorted(SYSTEM - modules - tests) == []
