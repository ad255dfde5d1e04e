"""Child programs that end with the process that started them, with no Python code run
between fork and exec.

A ``preexec_fn`` makes CPython ``fork()`` rather than ``vfork()`` and runs, in the child, the
fork handlers of every C library loaded. gRPC's (grpcio 1.80 to at least 1.84) restart its
poller there, and the child then aborts on a descriptor closed before ``exec``
(grpc/grpc#43055): with a gRPC channel busy in another thread, 2 of 150 such children died
before starting here. ``setpriv`` (util-linux) sets the parent-death signal and then runs the
program, so Python forks without a ``preexec_fn``; where it is missing, the ``prctl`` call
runs in the child as before.

>>> command(["tansu", "broker"])[-2:]
['tansu', 'broker']
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None
PR_SET_PDEATHSIG = 1


def command(argv: Sequence[str]) -> list[str]:
    """``argv`` behind ``setpriv --pdeathsig TERM`` when setpriv is there."""
    return [SETPRIV, "--pdeathsig", "TERM", "--", *argv] if SETPRIV else list(argv)


def _die_with_parent() -> None:  # runs in the child between fork and exec (no setpriv)
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start(argv: Sequence[str], **popen: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(argv, **popen)``, the child getting SIGTERM when the thread that
    started it ends (Linux ``PR_SET_PDEATHSIG``): a killed observer or test run leaves no
    broker or server behind. Elsewhere than Linux, a plain ``Popen``."""
    if SETPRIV or not sys.platform.startswith("linux"):
        return subprocess.Popen(command(argv), **popen)
    return subprocess.Popen(list(argv), preexec_fn=_die_with_parent, **popen)
