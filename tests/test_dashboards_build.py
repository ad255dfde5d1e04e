"""The dashboards as code: the committed JSON is exactly what the generator writes, every
panel says what question it answers, and the template variables are the documented ones."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from observer.dashboards.build import DASHBOARDS, JSON_DIR, generate, main
from observer.dashboards.spec import VARIABLES

ROOT = Path(__file__).resolve().parent.parent


def test_committed_json_equals_generated() -> None:
    files = generate()
    committed = {p.name: p.read_text() for p in JSON_DIR.glob("*.json")}
    assert committed.keys() == files.keys()
    for name, text in files.items():
        assert committed[name] == text, f"{name} is stale: run python -m observer.dashboards.build"


def test_check_mode_reports_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path)]) == 0
    assert main(["--check", "--out", str(tmp_path)]) == 0
    victim = tmp_path / "observer-tools.json"
    victim.write_text(victim.read_text().replace("Calls by tool", "Calls per tool"))
    (tmp_path / "stray.json").write_text("{}")
    assert main(["--check", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "out of date" in err and "observer-tools.json" in err and "stray.json" in err
    # Regenerating repairs the file and removes what the code no longer generates.
    assert main(["--out", str(tmp_path)]) == 0
    assert main(["--check", "--out", str(tmp_path)]) == 0
    assert not (tmp_path / "stray.json").exists()


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_dashboard_model(uid: str) -> None:
    model = json.loads((JSON_DIR / f"{uid}.json").read_text())
    assert model["uid"] == uid and model["title"].startswith("observer / ")
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert set(variables) - {"datasource"} <= set(VARIABLES)
    assert "cluster" in variables
    for name, v in variables.items():
        if name != "datasource":
            assert v["includeAll"] and v["allValue"] == ".*" and v["multi"]
    panels = [p for p in model["panels"] if p["type"] != "row"]
    assert panels
    ids = [p["id"] for p in model["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for p in panels:
        assert p["description"].endswith("?"), f"{p['title']}: the question it answers"
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert p["targets"] and all(t["expr"] for t in p["targets"])
        for t in p["targets"]:
            # A variable used in a query must exist on the dashboard.
            for used in re.findall(r"\$([a-z][a-z_]*)", t["expr"]):
                assert used in variables, f"{p['title']}: ${used} is not a variable"
        pos = p["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24


def test_docs_describe_every_panel() -> None:
    page = (ROOT / "docs" / "dashboards.md").read_text()
    for spec in DASHBOARDS.values():
        assert spec.title in page, spec.title
        for panel in spec.panels():
            assert panel.title in page, f"{spec.title} / {panel.title} missing from docs/dashboards.md"
