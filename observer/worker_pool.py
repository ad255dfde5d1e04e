"""The runtime's worker processes as one: what they run, how they are, their metrics.

:class:`WorkerPool` starts the workers of ``observer up --workers N`` (:mod:`observer.workers`),
keeps each one's last reported stage states (a watcher thread asks every
:data:`WATCH_INTERVAL_S`), and answers for all of them: their stages' states and permanent
failures, whether their groups hold partitions, their Prometheus expositions. A stage failed
for good in a worker, a worker gone, or one silent for :data:`~observer.workers.UNRESPONSIVE_S`
sets the runtime's stop event, as a local permanent failure does.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from observer.workers import (
    UNRESPONSIVE_S,
    WorkerGone,
    WorkerProcess,
    WorkerSlow,
    stop_helper_processes,
)

WATCH_INTERVAL_S = 0.5
"""How often the pool asks its workers for their stages' states."""


class WorkerPool:
    """The workers running ``shares`` (one list of stage names per worker, numbered from 1:
    process 0 is the runtime's own)."""

    def __init__(self, cfg: Any, shares: list[list[str]]) -> None:
        self.workers = [WorkerProcess(i, cfg, names) for i, names in enumerate(shares, start=1)]
        self._status: dict[str, dict[str, Any]] = {}
        self._failed: dict[str, str] = {}

    def start(self) -> WorkerPool:
        """Spawn every worker (they import and build while the caller goes on)."""
        for worker in self.workers:
            worker.start()
        return self

    def started(self, stop: threading.Event) -> None:
        """Wait until every worker runs its stages (a stage one cannot build raises), then
        watch them until ``stop``; a failure there sets ``stop``."""
        for worker in self.workers:
            worker.started()
        if self.workers:
            threading.Thread(target=self._run, args=(stop,), name="workers", daemon=True).start()

    def _run(self, stop: threading.Event) -> None:
        silent_since: dict[str, float] = {}
        while not stop.is_set():
            for worker in self.workers:
                try:
                    status = worker.ask("status")
                except WorkerGone as e:
                    self._failed[worker.name] = str(e)
                    stop.set()
                    continue
                except WorkerSlow as e:  # busy: its last states stand, for a while
                    since = silent_since.setdefault(worker.name, time.monotonic())
                    if time.monotonic() - since >= UNRESPONSIVE_S:
                        self._failed[worker.name] = f"{e} for {UNRESPONSIVE_S:.0f} s"
                        stop.set()
                    continue
                silent_since.pop(worker.name, None)
                self._status[worker.name] = status
                if status["errors"]:
                    stop.set()
            stop.wait(WATCH_INTERVAL_S)

    def wait_assigned(self, deadline: float) -> bool:
        """Block until every worker's stages hold partitions (``time.monotonic()`` deadline)."""
        for worker in self.workers:
            while True:
                try:
                    if worker.ask("status")["assigned"]:
                        break
                except WorkerGone:
                    return False
                except WorkerSlow:
                    pass
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.1)
        return True

    def errors(self) -> dict[str, str]:
        """Stages failed for good in a worker, and workers gone, with why."""
        errors: dict[str, str] = {}
        for status in list(self._status.values()):
            errors.update(status["errors"])
        errors.update(self._failed)
        return errors

    def states(self) -> dict[str, dict[str, Any]]:
        """Each worker stage's last reported state, with its ``worker`` number."""
        states: dict[str, dict[str, Any]] = {}
        for worker in self.workers:
            status = self._status.get(worker.name)
            for name in worker.stages:
                state = status["states"].get(name) if status is not None else None
                if worker.name in self._failed:
                    state = {"state": "failed", "error": self._failed[worker.name]}
                states[name] = {**(state or {"state": "starting"}), "worker": worker.index}
        return states

    def expositions(self) -> list[str]:
        """Every answering worker's Prometheus exposition (one silent or gone is left out)."""
        texts = []
        for worker in self.workers:
            try:
                texts.append(worker.ask("metrics")["text"])
            except (WorkerGone, WorkerSlow):
                continue  # its stages' series are missing from this scrape
        return texts

    def stop(self) -> None:
        """Stop every worker (its stages commit and close), then the helper process
        multiprocessing started beside them."""
        for worker in self.workers:
            worker.stop()
        if self.workers:
            stop_helper_processes()
