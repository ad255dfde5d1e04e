"""The repository stands alone: nothing in it reads from a folder beside the clone.

A user clones observer with nothing next to it, so no tracked file may point at the team's
reference folder that sits beside the working copy in development (upstream schemas and
recordings are vendored under ``tests/schemas`` and ``tests/fixtures`` with their sources).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Spelt in pieces so that this file does not match itself.
OUTSIDE = re.compile(r"\.\./" + "shared" + r"|parent\s*/\s*[\"']" + "shared" + r"[\"']|parents\[2\]")


def tracked_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    return [ROOT / name.decode() for name in listed if name]


def test_no_tracked_file_reads_outside_the_repository():
    offenders = []
    for path in tracked_files():
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        text = path.read_bytes().decode(errors="replace")
        offenders += [
            f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
            for m in OUTSIDE.finditer(text)
        ]
    assert not offenders, "files refer outside the repository:\n" + "\n".join(offenders)


def test_vendored_files_name_their_source():
    """Every vendored schema and recording is listed, with its source, in its folder's README."""
    for folder, readme in [("tests/schemas", "README.md"), ("tests/fixtures/gpu", "H100_RECORDINGS.md")]:
        listing = (ROOT / folder / readme).read_text()
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in {".json", ".yaml", ".csv"}:
                assert path.name in listing, f"{path.relative_to(ROOT)} is not in {folder}/{readme}"
