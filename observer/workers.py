"""The worker processes of ``observer up --workers N``: stages out of the receivers' GIL.

One Python process runs one thread of Python at a time: with every stage in ``observer up``,
the stages and the receivers took turns on one core. With ``--workers N`` the runtime starts
N-1 worker processes (spawned, so nothing of the parent's threads or sockets is inherited)
and gives each its share of the consuming stages (:mod:`observer.worker_plan`). A worker
runs its stages exactly as the runtime runs its own (:class:`~observer.stage_threads.StageThreads`:
supervisors, restarts, suspects) against the same broker; stages still meet only at topics.

The parent talks to each worker over a pipe, one request at a time: ``status`` (each stage's
state and permanent failures, whether its groups hold partitions) and ``metrics`` (its
Prometheus exposition, merged into the admin API's ``/metrics``). What the user sees stays
one observer: ``/healthz`` and ``/readyz`` list every stage wherever it runs, a stage that
fails for good in a worker stops ``observer up`` with its reason, and so does a worker that
dies. A worker dies with its parent (``PR_SET_PDEATHSIG``, as the embedded broker): a
SIGKILLed observer leaves nothing running; on a clean stop the parent asks each worker to
stop its stages (committed offsets, closed clients) before it settles and stops the broker.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from observer.core.extras import MissingExtra

log = logging.getLogger(__name__)

ANSWER_TIMEOUT_S = 10.0
"""How long the parent waits for one answer of a worker (then :class:`WorkerSlow`)."""
UNRESPONSIVE_S = 60.0
"""A worker alive but silent this long has failed: ``observer up`` stops, naming it."""


class WorkerGone(RuntimeError):
    """The worker exited (or its pipe broke)."""


class WorkerSlow(RuntimeError):
    """The worker is alive but did not answer in time (a long batch holding its GIL): its
    answer, when it comes, is dropped; the caller decides how long is too long."""


class WorkerProcess:
    """The parent's handle on one worker: start, ask, stop."""

    def __init__(self, index: int, cfg: Any, stages: list[str]) -> None:
        self.index = index
        self.cfg = cfg
        self.stages = stages
        self.name = f"worker-{index}"
        self._lock = threading.Lock()
        self._seq = 0  # requests are numbered: a late answer is not taken for the next one
        self._conn: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self.gone: str | None = None
        """Why the worker is no longer usable (``None`` while it is)."""

    def start(self) -> WorkerProcess:
        """Spawn the worker; its stages are being built when this returns (:meth:`started`)."""
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self._process = context.Process(
            target=worker_main, args=(self.cfg, self.stages, child, os.getpid()),
            name=f"observer-{self.name}", daemon=False,
        )
        self._process.start()
        child.close()
        self._conn = parent
        return self

    def started(self, timeout_s: float = 120.0) -> None:
        """Wait for the worker's first answer: its stages are built and running. A stage
        that cannot be built fails the start, as it does in the parent."""
        answer = self._receive(0, timeout_s)
        if answer.get("missing_extra"):  # exits 2 with its one line, as in one process
            raise MissingExtra.relayed(answer["error"])
        if answer.get("error"):
            raise RuntimeError(f"{self.name} ({', '.join(self.stages)}): {answer['error']}")

    def ask(self, op: str, timeout_s: float = ANSWER_TIMEOUT_S) -> dict[str, Any]:
        """One request, one answer; :class:`WorkerGone` once the worker is not there,
        :class:`WorkerSlow` when it is but did not answer within ``timeout_s``."""
        with self._lock:
            if self.gone is not None or self._conn is None:
                raise WorkerGone(self.gone or "not started")
            self._seq += 1
            try:
                self._conn.send((self._seq, op))
            except (OSError, ValueError) as e:
                self._mark_gone(self._exit_reason() or f"{self.name}: its pipe broke: {e}")
                raise WorkerGone(self.gone) from None
            return self._receive(self._seq, timeout_s)

    def _receive(self, seq: int, timeout_s: float) -> dict[str, Any]:
        """The answer numbered ``seq`` (older ones, answered too late, are dropped)."""
        assert self._conn is not None
        deadline = time.monotonic() + timeout_s
        try:
            while self._conn.poll(max(deadline - time.monotonic(), 0)):
                number, answer = self._conn.recv()
                if number == seq:
                    return answer  # type: ignore[no-any-return]
        except (EOFError, OSError):
            pass
        why = self._exit_reason()
        if why is None:
            raise WorkerSlow(f"{self.name} ({', '.join(self.stages)}) did not answer in "
                             f"{timeout_s:.0f} s")
        self._mark_gone(why)
        raise WorkerGone(self.gone)

    def _exit_reason(self) -> str | None:
        """How the worker ended, once it has (it is given a moment: a broken pipe comes
        first)."""
        process = self._process
        if process is None:
            return None
        process.join(2.0)
        if process.is_alive():
            return None
        code = process.exitcode
        how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 \
            else f"exited with code {code}"
        return f"{self.name} ({', '.join(self.stages)}) {how}"

    def _mark_gone(self, why: str) -> None:
        if self.gone is None:
            self.gone = why
            log.error("%s", why)

    def stop(self, timeout_s: float = 20.0) -> None:
        """Ask the worker to stop its stages and exit; terminate it if it does not."""
        process = self._process
        if process is None:
            return
        if self.gone is None and self._conn is not None:
            with self._lock:
                try:
                    self._conn.send((self._seq + 1, "stop"))
                except (OSError, ValueError):
                    pass
        process.join(timeout_s)
        if process.is_alive():
            log.warning("%s did not stop in %.0f s: terminating it", self.name, timeout_s)
            process.terminate()
            process.join(5)
        if self._conn is not None:
            self._conn.close()
        self.gone = self.gone or "stopped"


def stop_helper_processes() -> None:
    """Stop multiprocessing's resource tracker, which spawning started beside the workers: it
    would otherwise outlive a stopped observer for a moment (it exits when this process's end
    closes its pipe). Private in the standard library: skipped where it is not there."""
    from multiprocessing import resource_tracker

    stop = getattr(getattr(resource_tracker, "_resource_tracker", None), "_stop", None)
    if callable(stop):
        try:
            stop()
        except (OSError, ChildProcessError):  # already gone
            pass


# -- the worker's side --------------------------------------------------------------------------
def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process when its parent dies (Linux), like a pod's processes all going."""
    try:
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not Linux: the closed pipe still stops the worker
        pass
    if os.getppid() != parent_pid:  # the parent died before the prctl
        os._exit(1)


def worker_main(cfg: Any, stages: list[str], conn: Connection, parent_pid: int) -> None:
    """A worker process: run ``stages`` and answer the parent until told to stop."""
    _die_with_parent(parent_pid)
    # Ctrl-C reaches the whole process group: the parent decides when the stages stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=cfg.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)

    from prometheus_client import generate_latest

    from observer.core.topics import Topics
    from observer.stage_threads import StageThreads

    threads = StageThreads(cfg, Topics.from_config(cfg.kafka), stages)
    signal.signal(signal.SIGTERM, lambda *_: threads.stop_event.set())
    try:
        threads.start()
    except Exception as e:  # a stage that cannot be built: say why, as the parent would
        conn.send((0, {"error": f"{e}", "missing_extra": isinstance(e, MissingExtra)}))
        return
    conn.send((0, {"started": stages}))
    answers = {
        "status": lambda: {"states": threads.states(), "errors": threads.errors(),
                           "assigned": threads.assigned()},
        "metrics": lambda: {"text": generate_latest().decode()},
    }
    try:
        while True:
            try:
                if not conn.poll(0.5):
                    continue
                seq, op = conn.recv()
            except (EOFError, OSError):
                break  # the parent is gone
            if op == "stop":
                break
            answer = answers.get(op)
            conn.send((seq, answer() if answer is not None
                       else {"error": f"unknown request {op!r}"}))
    finally:
        started = time.monotonic()
        threads.stop()
        log.info("%s stopped in %.1f s", multiprocessing.current_process().name,
                 time.monotonic() - started)
