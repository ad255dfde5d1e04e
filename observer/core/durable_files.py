"""Small files that must survive a crash whole: written aside, fsynced, renamed, dir fsynced.

The embedded mode's state directory holds a few such files (the broker incarnation, the
spool's settle watermarks, the seal key): a reader after kill -9 sees the old content or the
new one, never half of either.

>>> import tempfile
>>> d = Path(tempfile.mkdtemp())
>>> write_atomically(d / "a.json", b'{"x": 1}', mode=0o600)
>>> (d / "a.json").read_bytes(), oct((d / "a.json").stat().st_mode & 0o777)
(b'{"x": 1}', '0o600')
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a file's creation, rename or removal in ``directory`` survive a crash."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` (file mode ``mode`` from creation on), durably."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
