"""The ledger's runs: what is known of each submitted run, and the ``run_*`` events it went
through (tables ``runs`` and ``run_events`` of :mod:`observer.triggers.ledger`).

A run row is written with the delivery that submitted it
(:meth:`~observer.triggers.ledger.Ledger.record_attempt`); :meth:`RunStore.record` then stores
each poll's news in one transaction: the row, its new events, and the completion webhooks
it owes (outbox rows, delivered like every webhook). An event stays ``announced = 0`` until
the stage knows it is on ``observer.triggers`` (at least once, across restarts).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from observer.triggers.ledger import DISABLED, PENDING, Ledger, NewDelivery, delivery_id

ACTIVE = ("submitted", "running")
"""Run outcomes still polled."""


@dataclass(frozen=True)
class TrackedRun:
    """One run row, with the decision and delivery fields its events need."""

    delivery_id: str
    episode_id: str
    policy: str
    segment_key: str
    record_type: str
    window_index: int
    action: str
    target: str
    name: str
    run_id: str | None
    phase: str
    outcome: str
    failed_step: str | None
    message: str | None
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    polls: int
    misses: int
    last_error: str | None
    next_poll_at: float | None


@dataclass(frozen=True)
class RunEvent:
    """One stored ``run_*`` event of a run."""

    id: int
    run: TrackedRun
    event: str
    phase: str
    reason: str
    at: float


_COLUMNS = """
    r.delivery_id, d.episode_id, c.policy, c.segment_key, c.record_type, c.window_index,
    d.action, d.target, r.name, r.run_id, r.phase, r.outcome, r.failed_step, r.message,
    r.submitted_at, r.started_at, r.finished_at, r.polls, r.misses, r.last_error, r.next_poll_at
"""
_FROM = (
    " FROM runs r JOIN deliveries d ON d.delivery_id = r.delivery_id"
    " JOIN decisions c ON c.episode_id = d.episode_id"
)
# The columns a poll may change (TrackedRun fields of the runs table).
_MUTABLE = (
    "run_id", "phase", "outcome", "failed_step", "message", "started_at", "finished_at",
    "polls", "misses", "last_error", "next_poll_at",
)


def _run(row: Any) -> TrackedRun:
    return TrackedRun(**dict(row))


class RunStore:
    """Reads and writes the ledger's runs.

    Through the ledger's own connection, lock and transactions (``_query``, ``_tx``): one
    package, and one writer of the file.
    """

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def due(self, now: float, limit: int) -> list[TrackedRun]:
        """Runs in progress whose next poll is due, longest waiting first."""
        rows = self.ledger._query(
            f"SELECT {_COLUMNS}{_FROM} WHERE r.outcome IN (?, ?) AND r.next_poll_at <= ?"
            " ORDER BY r.next_poll_at, r.rowid LIMIT ?",
            (*ACTIVE, now, max(0, int(limit))),
        )
        return [_run(r) for r in rows]

    def runs(self, episode_id: str | None = None) -> list[TrackedRun]:
        """Every run (of one episode), oldest first."""
        where, args = ("", ()) if episode_id is None else (" WHERE d.episode_id = ?", (episode_id,))
        rows = self.ledger._query(f"SELECT {_COLUMNS}{_FROM}{where} ORDER BY r.rowid", args)
        return [_run(r) for r in rows]

    def events(self, delivery_id: str) -> list[tuple[str, str, str, float]]:
        """``(event, phase, reason, at)`` of one run, in order."""
        rows = self.ledger._query(
            "SELECT event, phase, reason, at FROM run_events WHERE delivery_id = ? ORDER BY id",
            (delivery_id,),
        )
        return [(r["event"], r["phase"], r["reason"], r["at"]) for r in rows]

    def record(
        self,
        run: TrackedRun,
        now: float,
        events: Sequence[tuple[str, str, str, float]] = (),
        webhooks: Sequence[NewDelivery] = (),
    ) -> None:
        """Store ``run`` (its changed fields), its new events and the completion webhooks it
        owes, atomically."""
        values = dataclasses.asdict(run)
        with self.ledger._tx() as conn:
            sets = ", ".join(f"{c} = ?" for c in _MUTABLE)
            conn.execute(
                f"UPDATE runs SET {sets}, updated_at = ? WHERE delivery_id = ?",
                (*(values[c] for c in _MUTABLE), now, run.delivery_id),
            )
            conn.executemany(
                "INSERT INTO run_events (delivery_id, event, phase, reason, at)"
                " VALUES (?, ?, ?, ?, ?)",
                [(run.delivery_id, *event) for event in events],
            )
            for hook in webhooks:
                disabled = conn.execute(
                    "SELECT reason FROM disabled_targets WHERE target = ?", (hook.target,)
                ).fetchone()
                conn.execute(
                    "INSERT OR IGNORE INTO deliveries (delivery_id, episode_id, action, target,"
                    " payload, status, attempts, next_attempt_at, last_error, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
                    (
                        completion_delivery_id(run.delivery_id, hook.target),
                        run.episode_id,
                        hook.action,
                        hook.target,
                        hook.payload.decode(),
                        DISABLED if disabled else PENDING,
                        None if disabled else now,
                        f"target disabled: {disabled['reason']}" if disabled else None,
                        now,
                    ),
                )

    def unannounced(self, limit: int = 100) -> list[RunEvent]:
        """Events not yet known to be on ``observer.triggers``, oldest first."""
        rows = self.ledger._query(
            f"SELECT e.id, e.event, e.phase AS event_phase, e.reason, e.at, {_COLUMNS}"
            " FROM run_events e JOIN runs r ON r.delivery_id = e.delivery_id"
            " JOIN deliveries d ON d.delivery_id = r.delivery_id"
            " JOIN decisions c ON c.episode_id = d.episode_id"
            " WHERE e.announced = 0 ORDER BY e.id LIMIT ?",
            (max(0, int(limit)),),
        )
        fields = [f.name for f in dataclasses.fields(TrackedRun)]
        return [
            RunEvent(
                r["id"], TrackedRun(**{k: r[k] for k in fields}), r["event"], r["event_phase"],
                r["reason"], r["at"],
            )
            for r in rows
        ]

    def mark_announced(self, ids: Sequence[int]) -> None:
        if ids:
            marks = ",".join("?" * len(ids))
            with self.ledger._tx() as conn:
                conn.execute(f"UPDATE run_events SET announced = 1 WHERE id IN ({marks})", list(ids))


def completion_delivery_id(run_delivery_id: str, target: str) -> str:
    """The ``webhook-id`` of a run's completion webhook to ``target``: stable, and distinct
    from the episode's own webhook to the same URL.

    >>> completion_delivery_id("msg_1", "http://h/x") != delivery_id("msg_1", "http://h/x")
    True
    """
    return delivery_id(f"{run_delivery_id}|completed", target)
