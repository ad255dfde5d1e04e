"""Following submitted runs to their end: polls, transitions, metrics, completion webhooks.

:class:`RunTracker` is called by the trigger stage on every tick. It polls the runs whose next
poll is due (at most ``trigger.runs.max_polls_per_tick``) through the action that submitted
them (:class:`Trackable`: Argo's ``GET /api/v1/workflows/{ns}/{name}``, KFP's
``GET /apis/v2beta1/runs/{id}``), and turns what changed into ``run_*`` events:

================  ===========================================================================
event             when
================  ===========================================================================
run_started       the run is first seen running, or finished (unless it failed unstarted)
run_succeeded     its phase maps to ``succeeded`` (:data:`~.phases.PHASE_TABLE`)
run_failed        its phase maps to ``failed``; the reason names the failed step and message
run_lost          ``lost_after_polls`` polls in a row answered 404: deleted before it ended
run_timed_out     not finished ``timeout_s`` after submission; no longer polled
================  ===========================================================================

A poll without an answer (network, 5xx, 401) changes nothing but ``last_error``: the run is
polled again after ``poll_interval_s``, and the timeout still applies. Events, the run's new
state and its completion webhooks (the policy's ``run_webhooks``) are written to the ledger
in one transaction, then announced on ``observer.triggers`` until known to be published, so
a restarted stage resumes tracking and re-announces what it may not have published.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from prometheus_client import Counter, Histogram

from observer.triggers.config import TriggerConfig
from observer.triggers.ledger import NewDelivery
from observer.triggers.tracking.phases import FINAL, PollError, RunStatus
from observer.triggers.tracking.store import RunEvent, RunStore, TrackedRun

log = logging.getLogger(__name__)

RUN_WEBHOOK = "run_webhook"
"""The outbox action of completion webhooks."""
COMPLETED_EVENT_TYPE = "observer.run.completed"
OUTCOMES = ("succeeded", "failed", "lost", "timed_out")

RUNS = Counter(
    "observer_runs_total",
    "Submitted runs (Argo, KFP) that ended, by policy and outcome: succeeded, failed, lost "
    "(deleted before it ended), timed_out (trigger.runs.timeout_s).",
    ["policy", "outcome"],
)
RUN_DURATION = Histogram(
    "observer_run_duration_seconds",
    "From a run's start to its end (the server's times when it gives them), succeeded or "
    "failed runs, by policy and outcome.",
    ["policy", "outcome"],
    buckets=(60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800, 604800),
)


@runtime_checkable
class Trackable(Protocol):
    """An action whose deliveries are runs that can be polled (Argo, KFP)."""

    target: str

    def poll(self, run: TrackedRun) -> RunStatus:
        """The run's status; raises :class:`~.phases.PollError` when there is no answer."""
        ...

    def run_url(self, run: TrackedRun) -> str:
        """Where the run's status is read (the ``target`` of its events)."""
        ...


Event = tuple[str, str, str, float]  # (event, phase, reason, at)


class RunTracker:
    """Polls due runs and records their transitions (see the module docstring)."""

    def __init__(
        self,
        cfg: TriggerConfig,
        ledger: Any,
        actions: dict[str, Any],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg.runs
        self.store = RunStore(ledger)
        self.actions = actions
        self.clock = clock
        self.run_webhooks = {p.name: p.run_webhooks for p in cfg.policies}
        self._announcing: list[int] = []
        for policy in cfg.policies:
            for outcome in OUTCOMES:  # series exist at 0, so increase() sees the first one
                RUNS.labels(policy.name, outcome)

    def next_poll(self, now: float) -> float:
        return now + self.cfg.poll_interval_s

    def tick(self, budget_left: Callable[[], bool]) -> list[RunEvent]:
        """Poll due runs while ``budget_left()``; the events to announce (new and older)."""
        # Called again: the stage published what the last tick handed out.
        self.store.mark_announced(self._announcing)
        self._announcing = []
        for i, run in enumerate(self.store.due(self.clock(), self.cfg.max_polls_per_tick)):
            if i and not budget_left():
                break
            self._follow(run)
        pending = self.store.unannounced()
        self._announcing = [e.id for e in pending]
        return pending

    # -- one run --------------------------------------------------------------------------

    def _poll(self, run: TrackedRun) -> RunStatus | str:
        """The run's status, or why there is none."""
        action = self.actions.get(run.action)
        if not isinstance(action, Trackable):
            return f"no {run.action} configuration to poll it with"
        if action.target != run.target:
            return f"submitted to {run.target}, no longer the configured {run.action} server"
        try:
            return action.poll(run)
        except PollError as exc:
            return str(exc)[:300]

    def _follow(self, run: TrackedRun) -> None:
        now = self.clock()
        status = self._poll(run)
        events: list[Event] = []
        new = dataclasses.replace(run, polls=run.polls + 1, next_poll_at=self.next_poll(now))
        if isinstance(status, str):
            new = dataclasses.replace(new, last_error=status)
            log.warning("run %s (%s): no status: %s", run.name, run.action, status)
        elif not status.found:
            new = dataclasses.replace(new, misses=run.misses + 1, last_error="404: not found")
            if new.misses >= self.cfg.lost_after_polls:
                reason = (
                    f"{run.action} run {run.name} not found ({new.misses} polls in a row) after "
                    f"its submission: deleted before observer saw it end"
                )
                new = dataclasses.replace(new, outcome="lost", finished_at=now, message=reason)
                events.append(("run_lost", run.phase, reason, now))
        else:
            new, events = self._transition(new, status, now)
        if new.outcome in ("submitted", "running") and now - run.submitted_at >= self.cfg.timeout_s:
            reason = (
                f"{run.action} run {run.name} not finished {self.cfg.timeout_s:g}s after its "
                f"submission (last phase {new.phase or 'unknown'!r}); no longer followed"
            )
            new = dataclasses.replace(new, outcome="timed_out", finished_at=now, message=reason)
            events.append(("run_timed_out", new.phase, reason, now))
        if new.outcome not in ("submitted", "running"):
            new = dataclasses.replace(new, next_poll_at=None)
        hooks = self._completion_webhooks(new) if new.outcome in OUTCOMES else []
        self.store.record(new, now, events, hooks)
        for event, _, reason, _ in events:
            log.log(logging.INFO if event in ("run_started", "run_succeeded") else logging.WARNING,
                    "%s %s: %s", event, run.name, reason)
        if new.outcome in OUTCOMES:
            RUNS.labels(run.policy, new.outcome).inc()
            if new.outcome in FINAL:
                start = new.started_at or new.submitted_at
                RUN_DURATION.labels(run.policy, new.outcome).observe(
                    max(0.0, (new.finished_at or now) - start)
                )

    @staticmethod
    def _transition(run: TrackedRun, status: RunStatus, now: float) -> tuple[TrackedRun, list[Event]]:
        """The run after a found status, and the events of what changed."""
        events: list[Event] = []
        new = dataclasses.replace(
            run, misses=0, last_error=None, phase=status.phase, run_id=status.run_id or run.run_id
        )
        if status.outcome == "pending":
            return new, events
        # A run that failed before it started (Argo's Error from Pending) never started.
        never_started = status.outcome == "failed" and status.started_at is None
        if run.outcome == "submitted" and not never_started:
            started = status.started_at or now
            new = dataclasses.replace(new, outcome="running", started_at=started)
            events.append(("run_started", status.phase, f"{run.action} run {run.name} started",
                           started))
        if status.outcome in FINAL:
            finished = status.finished_at or now
            if status.outcome == "succeeded":
                reason = f"{run.action} run {run.name} succeeded"
            else:
                where = f"step {status.failed_step} failed" if status.failed_step else "failed"
                reason = f"{run.action} run {run.name} {where} ({status.phase})"
                if status.message:
                    reason += f": {status.message}"
            new = dataclasses.replace(
                new, outcome=status.outcome, finished_at=finished, failed_step=status.failed_step
                or None, message=reason,
            )
            events.append((f"run_{status.outcome}", status.phase, reason, finished))
        return new, events

    # -- completion webhooks --------------------------------------------------------------

    def _completion_webhooks(self, run: TrackedRun) -> list[NewDelivery]:
        hooks = self.run_webhooks.get(run.policy) or []
        if not hooks:
            return []
        payload = completion_payload(run)
        return [NewDelivery(h.url, payload, RUN_WEBHOOK) for h in hooks]


def completion_payload(run: TrackedRun) -> bytes:
    """The Standard Webhooks body of a run's end: ``{type, timestamp, data}``, compact JSON."""
    from observer.triggers.webhook import iso8601

    def stamp(t: float | None) -> str | None:
        return None if t is None else iso8601(t)

    start = run.started_at or run.submitted_at
    data = {
        "episode_id": run.episode_id,
        "policy": run.policy,
        "segment_key": run.segment_key,
        "record_type": run.record_type,
        "action": run.action,
        "run": run.name,
        "run_id": run.run_id,
        "outcome": run.outcome,
        "phase": run.phase,
        "failed_step": run.failed_step,
        "message": run.message,
        "submitted_at": stamp(run.submitted_at),
        "started_at": stamp(run.started_at),
        "finished_at": stamp(run.finished_at),
        "duration_s": None if run.finished_at is None else max(0.0, run.finished_at - start),
    }
    at = run.finished_at or run.submitted_at
    body = {"type": COMPLETED_EVENT_TYPE, "timestamp": iso8601(at), "data": data}
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
