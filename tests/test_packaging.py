"""The wheel installs next to anything: its only top-level import package is ``observer``.

The stage folders stay at the root of the repository and install as ``observer.collectors``,
``observer.drift``, ``observer.triggers`` and ``observer.dashboards`` (``pyproject.toml``), so
observer never claims generic names another distribution may own.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE_FOLDERS = {"collectors", "drift", "triggers", "dashboards"}


def test_wheel_has_one_top_level_package_and_every_module(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("observer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"observer"}, f"top-level names in the wheel: {sorted(top)}"
    # Every module of the tree is in the wheel, under observer/.
    expected = {f"observer/{p.relative_to(ROOT).as_posix()}"
                for folder in STAGE_FOLDERS for p in (ROOT / folder).rglob("*.py")
                if "__pycache__" not in p.parts}
    expected |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "observer").rglob("*.py")
                 if "__pycache__" not in p.parts}
    assert not expected - set(names), f"missing from the wheel: {sorted(expected - set(names))}"
    assert any(n.startswith("observer/dashboards/json/") for n in names)
    assert any(n.startswith("observer/collectors/receiver/_trace_split") for n in names)
    assert any(n.startswith("observer/collectors/normalize/_text_scan") for n in names)
