"""The consuming stages of one process, each under its :class:`Supervisor` in a thread.

The runtime holds one :class:`StageThreads` for the stages it runs itself, and every worker
process of ``observer up --workers N`` (:mod:`observer.workers`) holds one for its share: the
same build, restart policy, runner and health answers in either place.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from observer import stages as registry
from observer.core.bus import Processor, StageRunner
from observer.core.stage import StageSpec
from observer.core.supervisor import RestartPolicy, Supervisor
from observer.core.suspects import SuspectRanges
from observer.core.topics import Topics

log = logging.getLogger(__name__)

CONSUMING_STAGES: dict[str, StageSpec] = registry.consumers()
"""The consuming stages, from their specs (observer.stages): builds, groups, topics, hold times."""


class StageThreads:
    """Build and run ``names`` (consuming stages) until :meth:`stop`; a permanent failure of
    one sets ``stop_event`` (the process then stops and says why).

    ``busy``: when given (the receivers of this process have requests in flight), each
    stage waits up to ``yield_ms`` before its next batch: the stages share the GIL with them.
    """

    def __init__(self, cfg: Any, topics: Topics, names: Iterable[str], *,
                 busy: Callable[[], bool] | None = None, yield_ms: int = 0,
                 stop_event: threading.Event | None = None) -> None:
        self.cfg = cfg
        self.topics = topics
        self.names = [n for n in names if n in CONSUMING_STAGES]
        self.busy = busy if yield_ms else None
        self.yield_ms = yield_ms
        self.stop_event = stop_event if stop_event is not None else threading.Event()
        self.supervisors: dict[str, Supervisor] = {}
        self._threads: list[threading.Thread] = []

    def start(self) -> StageThreads:
        for name in self.names:
            spec = CONSUMING_STAGES[name]
            build = functools.partial(spec.build, self.cfg, self.topics)  # type: ignore[arg-type]
            # The first processor is built here: a configuration error fails the start.
            supervisor = Supervisor(
                name, build, functools.partial(self._runner, spec),
                RestartPolicy(**self.cfg.supervisor.model_dump()), processor=build(),
            )
            thread = threading.Thread(target=self._run, args=(supervisor,), name=name,
                                      daemon=True)
            self.supervisors[name] = supervisor
            self._threads.append(thread)
            thread.start()
        return self

    def _runner(self, spec: StageSpec, processor: Processor, suspects: SuspectRanges,
                assigned: threading.Event) -> StageRunner:
        """One run of a stage: new Kafka clients, the supervisor's suspect ranges."""
        return StageRunner(
            self.cfg.kafka, processor, spec.group_id(self.cfg),  # type: ignore[misc]
            spec.input_topics(self.cfg, self.topics),
            yield_to=self.busy,
            max_yield_s=self.yield_ms / 1000,
            dead_letter_topic=self.topics.dead_letter,
            suspects=suspects,
            assigned=assigned,
        )

    def _run(self, supervisor: Supervisor) -> None:
        """Run a stage under its supervisor; only a permanent failure returns before the stop,
        and then it stops the process (``/healthz`` fails, ``observer up`` exits non-zero)."""
        try:
            supervisor.run(self.stop_event)
        finally:
            if supervisor.failure is not None:
                self.stop_event.set()

    # -- what the admin API and the callers read ------------------------------------------------
    def wait_assigned(self, timeout_s: float) -> bool:
        """Block until every stage here has joined its group and holds partitions."""
        return all(s.assigned.wait(timeout_s) for s in self.supervisors.values())

    def assigned(self) -> bool:
        return all(s.assigned.is_set() for s in self.supervisors.values())

    def errors(self) -> dict[str, str]:
        """The stages that failed permanently, and why (empty: none did)."""
        return {n: s.failure for n, s in self.supervisors.items() if s.failure is not None}

    def states(self) -> dict[str, dict[str, Any]]:
        """Each stage's state (``Supervisor.status``): running, restarting..."""
        return {n: s.status() for n, s in self.supervisors.items()}

    def stop(self, timeout_s: float = 15.0) -> None:
        self.stop_event.set()
        for t in self._threads:
            t.join(timeout_s)
