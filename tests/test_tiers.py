"""Every collected test, doctests included, carries exactly one tier (unit, broker, system),
and every entry of the system list still names a collected test (tests/tiers.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


def test_every_test_has_exactly_one_tier() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("TIERS ")]
    assert lines, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(lines[-1][len("TIERS "):])
    assert report["code"] == 0, done.stdout[-3000:]
    found: dict[str, list[str]] = report["found"]

    assert {node: tiers for node, tiers in found.items() if len(tiers) != 1} == {}
    per_tier = {t: sum(tiers == [t] for tiers in found.values()) for t in TIERS}
    assert all(per_tier.values()), per_tier
    assert all(tiers == ["unit"] for node, tiers in found.items() if "::" in node
               and not node.split("::")[0].startswith("tests/test_")), "doctests are unit"

    # A renamed or deleted test must leave the list too, or it silently stops applying.
    modules = {node.split("::")[0] for node in found}
    tests = {node.split("::")[0] + "::" + node.split("::")[-1].split("[")[0] for node in found}
    assert sorted(SYSTEM - modules - tests) == []
