"""Keeps one consuming stage running: restarts with backoff, fails only for good reasons.

A :class:`Supervisor` runs a :class:`~observer.core.bus.StageRunner` until it stops on an
error, then decides with the one fault table (:mod:`observer.core.faults`):

- permanent (configuration, credentials): the stage is ``failed``; the process exits saying
  why;
- anything else: the stage is ``restarting``: after a backoff (``restart_initial_s`` doubling
  to ``restart_max_s``, back to the start once a run lasted ``healthy_after_s``) it runs again
  with a processor rebuilt from its factory (stateful processors restore from their
  checkpoints rather than keep half-applied state), new Kafka clients, from the committed
  offsets. The suspect ranges of a failed batch outlive the runner, so the next one re-reads
  them one message at a time and quarantines a poison message instead of failing on it again.

A processor that cannot be built ``max_build_failures`` times in a row (other than for a
transient Kafka fault) is a permanent failure too.

>>> RestartPolicy(restart_initial_s=0.5, restart_max_s=30.0).delays(8)
[0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from observer.core.bus import Processor, StageRunner
from observer.core.faults import Fault, classify
from observer.core.suspects import SuspectRanges

log = logging.getLogger(__name__)

STAGE_RESTARTS = Counter(
    "observer_stage_restarts_total",
    "Times a stage was restarted after an error (a new processor, new Kafka clients).",
    ["stage"],
)
MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class RestartPolicy:
    restart_initial_s: float = 0.5
    restart_max_s: float = 30.0
    healthy_after_s: float = 60.0
    max_build_failures: int = 5

    def delays(self, n: int) -> list[float]:
        """The first ``n`` backoff delays."""
        out, delay = [], self.restart_initial_s
        for _ in range(n):
            out.append(delay)
            delay = min(delay * 2, self.restart_max_s)
        return out


class Supervisor:
    """Runs stage ``name`` until ``stop`` is set or it fails permanently.

    ``build()`` makes a new processor; ``runner(processor, suspects, assigned)`` the runner of
    one attempt. ``processor``: the first one, when the caller already built it (start-up
    errors then surface at start, not in a thread).
    """

    def __init__(
        self,
        name: str,
        build: Callable[[], Processor],
        runner: Callable[[Processor, SuspectRanges, threading.Event], StageRunner],
        policy: RestartPolicy = RestartPolicy(),
        processor: Processor | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.policy = policy
        self._build = build
        self._make_runner = runner
        self._clock = clock
        self.processor: Processor | None = processor
        self.runner: StageRunner | None = None
        self.suspects = SuspectRanges()
        self.assigned = threading.Event()
        self.restarts = 0
        self.failure: str | None = None
        """Why the stage failed permanently (``None`` while it has not)."""
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {"state": "starting"}

    # -- what health endpoints read ----------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """``{"state": "starting" | "running" | "restarting" | "failed" | "stopped", ...}``:
        restarting adds ``last_error`` and ``retry_at`` (Unix seconds), failed adds ``error``;
        every state says ``restarts``."""
        with self._lock:
            return {**self._state, "restarts": self.restarts}

    @property
    def running(self) -> bool:
        return self.status()["state"] == "running"

    def _set(self, **state: Any) -> None:
        with self._lock:
            self._state = state

    # -- the loop ------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        delay = self.policy.restart_initial_s
        build_failures = 0
        while not stop.is_set():
            if self.processor is None:
                try:
                    self.processor = self._build()
                    build_failures = 0
                except Exception as e:
                    fault = classify(e)
                    build_failures += fault is not Fault.TRANSIENT
                    if fault is Fault.PERMANENT or build_failures >= self.policy.max_build_failures:
                        self._fail(f"cannot build the stage ({build_failures} tries): {e!r}", e)
                        return
                    delay = self._back_off(stop, e, delay)
                    continue
            runner = self.runner = self._make_runner(self.processor, self.suspects, self.assigned)
            started = time.monotonic()
            self._set(state="running", since=self._clock())
            try:
                runner.run(stop)
            except Exception as e:
                if classify(e) is Fault.PERMANENT:
                    self._fail(f"{e!r}", e)
                    return
                self._discard_processor()
                if time.monotonic() - started >= self.policy.healthy_after_s:
                    delay = self.policy.restart_initial_s
                delay = self._back_off(stop, e, delay)
                continue
            except BaseException as e:  # SystemExit, KeyboardInterrupt in a thread: give up
                self._fail(f"{e!r}", e)
                raise
        self._set(state="stopped")

    def _back_off(self, stop: threading.Event, e: BaseException, delay: float) -> float:
        """Wait ``delay`` (or until ``stop``) as ``restarting``; the next delay."""
        self.restarts += 1
        STAGE_RESTARTS.labels(self.name).inc()
        error = repr(e)[:MAX_ERROR_CHARS]
        self._set(state="restarting", last_error=error, retry_at=self._clock() + delay,
                  fault=classify(e).value)
        log.warning("stage %s: %s; restarting in %.1f s", self.name, error, delay)
        stop.wait(delay)
        return min(delay * 2, self.policy.restart_max_s)

    def _fail(self, why: str, e: BaseException) -> None:
        self.failure = why[:MAX_ERROR_CHARS]
        self._set(state="failed", error=self.failure, fault=classify(e).value)
        log.error("stage %s failed permanently: %s", self.name, self.failure, exc_info=e)

    def _discard_processor(self) -> None:
        """Drop the processor (its state may be half-applied); release what it holds."""
        processor, self.processor = self.processor, None
        close = getattr(processor, "close", None)
        if callable(close):
            try:
                close()
            except Exception as e:  # a broken processor may fail to close too
                log.warning("stage %s: closing the failed processor: %r", self.name, e)
