"""An episode's life after its run: promotion, re-baselining and clearing, in the ledger.

Two tables of the ledger (:mod:`observer.triggers.ledger`), through its own connection and
transactions, as :mod:`observer.triggers.tracking.store` does:

* ``promotions``: one row per episode whose pipeline reported a promotion or a rollback
  (:meth:`EpisodeLife.record_promotion`), with where it stands (``state``): ``promoted``
  (no reference command sent yet), ``commanded`` (the drift engine was asked for a new
  reference version), ``rebaselined`` (it took it: ``new_version``), ``refused`` (a pin
  refused it), ``cleared`` (resolved), ``rolled_back`` (the policy not re-armed yet),
  ``reopened``.
* ``episode_steps``: the steps after the run (``promoted``, ``rolled_back``, ``rebaselined``,
  ``rebaseline_refused``, ``cleared``, ``reopened``), each announced on ``observer.triggers``
  at least once (``announced`` stays 0 until the stage knows the event is published).
* ``promotion_callbacks``: the ``webhook-id`` of every accepted callback: a replayed request
  is refused even within the signature's timestamp tolerance.

:meth:`EpisodeLife.life` puts an episode's whole life in order, from every table: fired ->
(held -> approved) -> submitted -> run_started -> run_succeeded | run_failed -> promoted |
rolled_back -> rebaselined -> cleared.

>>> import tempfile, pathlib
>>> from observer.triggers.ledger import Ledger
>>> from observer.triggers.policy import Decision
>>> d = Decision(policy="p", segment_key="shop", record_type="llm", episode_id="e1",
...     kind="fired", reason="drifted", window_index=2, first_window_index=1, decided_at=10.0)
>>> with tempfile.TemporaryDirectory() as tmp:
...     with Ledger(pathlib.Path(tmp) / "l.sqlite") as ledger:
...         _ = ledger.record_decision(d)
...         life = EpisodeLife(ledger)
...         try:
...             life.record_promotion("e1", "retrain-e1", "v2", "promoted", at=11.0, callback_id="m1")
...         except PromotionConflict as e:
...             print(e)
...         steps = [s["step"] for s in life.life("e1")["steps"]]
episode e1 has no run named 'retrain-e1'
>>> steps
['fired']
"""

from __future__ import annotations

import sqlite3
from typing import Any, Literal

from observer.triggers.ledger import Ledger, UnknownEpisode

Outcome = Literal["promoted", "rolled_back"]

_SCHEMA = [
    """
CREATE TABLE IF NOT EXISTS promotions (
    episode_id    TEXT PRIMARY KEY REFERENCES decisions (episode_id),
    run           TEXT NOT NULL,
    model_version TEXT NOT NULL,
    outcome       TEXT NOT NULL CHECK (outcome IN ('promoted', 'rolled_back')),
    at            REAL NOT NULL,   -- when the pipeline says it happened
    received_at   REAL NOT NULL,
    state         TEXT NOT NULL CHECK (state IN
                  ('promoted', 'commanded', 'rebaselined', 'refused', 'cleared', 'rolled_back',
                   'reopened')),
    command_id    TEXT,            -- the ReferenceCommand sent to the drift engine
    old_version   INTEGER,         -- the reference version scored against when it was sent
    new_version   INTEGER,
    updated_at    REAL NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS promotions_by_state ON promotions (state)",
    """
CREATE TABLE IF NOT EXISTS episode_steps (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    episode_id TEXT NOT NULL REFERENCES decisions (episode_id),
    step       TEXT NOT NULL,
    reason     TEXT NOT NULL,
    at         REAL NOT NULL,
    announced  INTEGER NOT NULL DEFAULT 0
)""",
    "CREATE INDEX IF NOT EXISTS episode_steps_unannounced ON episode_steps (announced, id)",
    """
CREATE TABLE IF NOT EXISTS promotion_callbacks (
    callback_id TEXT PRIMARY KEY,
    episode_id  TEXT NOT NULL,
    received_at REAL NOT NULL
)""",
]

# The run outcomes (as tracked) a promotion or rollback may be reported in. Running: the
# pipeline's promote step (and the exit handler's rollback) run inside the run, before Argo
# marks it Succeeded or Failed.
ALLOWED = {"promoted": {"running", "succeeded"}, "rolled_back": {"running", "succeeded", "failed"}}
# Promotion states still waiting for the drift engine or the first clean window.
AWAITING = ("commanded", "rebaselined", "refused")


class PromotionError(Exception):
    """A promotion callback that cannot be recorded; the message says why."""


class PromotionConflict(PromotionError):
    """An impossible transition: the run has not succeeded, or the episode was promoted or
    rolled back already, or the callback is a replay."""


class EpisodeLife:
    """The promotions and post-run steps of the ledger's episodes (see the module docstring)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        with ledger._tx() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)

    # -- the callback ----------------------------------------------------------------------

    def record_promotion(
        self, episode_id: str, run: str, model_version: str, outcome: Outcome, *, at: float,
        callback_id: str, now: float | None = None,
    ) -> dict[str, Any]:
        """Record a promotion or rollback of ``episode_id``'s run; its row.

        Raises :class:`~observer.triggers.ledger.UnknownEpisode` for an episode the ledger
        does not hold, :class:`PromotionConflict` when the transition is impossible: the run
        is not one of the episode's, it has not started (or, for a promotion, it failed: see
        :data:`ALLOWED`), the episode already has an outcome, or the ``callback_id`` was seen
        before (a replay).
        """
        received = at if now is None else now
        with self.ledger._tx() as conn:
            decision = conn.execute(
                "SELECT kind FROM decisions WHERE episode_id = ?", (episode_id,)
            ).fetchone()
            if decision is None:
                raise UnknownEpisode(f"no decision with episode id {episode_id!r}")
            seen = conn.execute(
                "SELECT episode_id FROM promotion_callbacks WHERE callback_id = ?", (callback_id,)
            ).fetchone()
            if seen is not None:
                raise PromotionConflict(f"callback {callback_id!r} was received before (replay)")
            self._check(conn, episode_id, decision["kind"], run, outcome)
            conn.execute(
                "INSERT INTO promotion_callbacks (callback_id, episode_id, received_at)"
                " VALUES (?, ?, ?)", (callback_id, episode_id, received),
            )
            conn.execute(
                "INSERT INTO promotions (episode_id, run, model_version, outcome, at, received_at,"
                " state, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (episode_id, run, model_version, outcome, at, received, outcome, received),
            )
            verb = "promoted" if outcome == "promoted" else "rolled back"
            self._step(conn, episode_id, outcome, f"model {model_version} of run {run} {verb}", at)
        promotion = self.promotion(episode_id)
        assert promotion is not None
        return promotion

    @staticmethod
    def _check(conn: sqlite3.Connection, episode_id: str, kind: str, run: str, outcome: str) -> None:
        if kind != "fired":
            raise PromotionConflict(f"episode {episode_id} was {kind}: it submitted no run")
        done = conn.execute(
            "SELECT outcome, run FROM promotions WHERE episode_id = ?", (episode_id,)
        ).fetchone()
        if done is not None:
            raise PromotionConflict(
                f"episode {episode_id} was already {done['outcome'].replace('_', ' ')} "
                f"(run {done['run']})"
            )
        runs = conn.execute(
            "SELECT r.outcome FROM runs r JOIN deliveries d ON d.delivery_id = r.delivery_id"
            " WHERE d.episode_id = ? AND r.name = ?", (episode_id, run),
        ).fetchall()
        if not runs:
            raise PromotionConflict(f"episode {episode_id} has no run named {run!r}")
        outcomes = {r["outcome"] for r in runs}
        if not outcomes & ALLOWED[outcome]:
            state = ", ".join(sorted(outcomes))
            why = "it has not started" if outcome == "promoted" else "it has not run"
            if outcomes & {"failed", "lost", "timed_out"} and outcome == "promoted":
                why = "it did not succeed"
            raise PromotionConflict(
                f"run {run} cannot be {outcome.replace('_', ' ')}: {why} (it is {state})"
            )

    # -- steps -----------------------------------------------------------------------------

    @staticmethod
    def _step(conn: sqlite3.Connection, episode_id: str, step: str, reason: str, at: float) -> None:
        conn.execute(
            "INSERT INTO episode_steps (episode_id, step, reason, at) VALUES (?, ?, ?, ?)",
            (episode_id, step, reason, at),
        )

    def advance(self, episode_id: str, state: str, *, now: float, steps: list[tuple[str, str]] = (),  # type: ignore[assignment]
                **columns: Any) -> None:
        """Move a promotion to ``state`` (and set ``columns``), recording ``(step, reason)``
        steps, in one transaction."""
        sets = ", ".join(f"{c} = ?" for c in ("state", "updated_at", *columns))
        with self.ledger._tx() as conn:
            conn.execute(f"UPDATE promotions SET {sets} WHERE episode_id = ?",
                         (state, now, *columns.values(), episode_id))
            for step, reason in steps:
                self._step(conn, episode_id, step, reason, now)

    def unannounced(self, limit: int = 100) -> list[dict[str, Any]]:
        """Steps whose event is not yet known to be published, oldest first, with their
        decision's fields."""
        rows = self.ledger._query(
            "SELECT s.id, s.episode_id, s.step, s.reason, s.at, c.policy, c.segment_key,"
            " c.record_type, c.window_index FROM episode_steps s"
            " JOIN decisions c ON c.episode_id = s.episode_id WHERE s.announced = 0"
            " ORDER BY s.id LIMIT ?", (max(0, int(limit)),),
        )
        return [dict(r) for r in rows]

    def mark_announced(self, ids: list[int]) -> None:
        if ids:
            marks = ",".join("?" * len(ids))
            with self.ledger._tx() as conn:
                conn.execute(f"UPDATE episode_steps SET announced = 1 WHERE id IN ({marks})", ids)

    # -- reading ---------------------------------------------------------------------------

    def promotion(self, episode_id: str) -> dict[str, Any] | None:
        rows = self.ledger._query("SELECT * FROM promotions WHERE episode_id = ?", (episode_id,))
        return dict(rows[0]) if rows else None

    def in_state(self, *states: str) -> list[dict[str, Any]]:
        """Promotions in one of ``states``, with their decision's policy and key."""
        marks = ",".join("?" * len(states))
        rows = self.ledger._query(
            "SELECT p.*, c.policy, c.segment_key, c.record_type, c.window_index"
            " FROM promotions p JOIN decisions c ON c.episode_id = p.episode_id"
            f" WHERE p.state IN ({marks}) ORDER BY p.received_at", states,
        )
        return [dict(r) for r in rows]

    def life(self, episode_id: str) -> dict[str, Any]:
        """The episode's decision, promotion, status and every step in order.

        ``status``: ``resolved`` once cleared (``resolution`` names the run), ``reopened``
        after a rollback, else ``open``.
        """
        decision = self.ledger.get_decision(episode_id)
        if decision is None:
            raise UnknownEpisode(f"no decision with episode id {episode_id!r}")
        steps = [{"step": decision["kind"], "at": decision["decided_at"],
                  "reason": decision["reason"]}]
        if decision["approval"] is not None:
            steps.append({"step": "held", "at": decision["decided_at"],
                          "reason": "held for approval"})
            if decision["approval"] != "held":
                steps.append({"step": decision["approval"], "at": decision["approval_at"],
                              "reason": f"by {decision['approval_by']}"})
        for run in decision["runs"]:
            steps.append({"step": "submitted", "at": run["submitted_at"],
                          "reason": f"{run['action']} run {run['name']} submitted"})
        events = self.ledger._query(
            "SELECT e.event AS step, e.at, e.reason FROM run_events e"
            " JOIN deliveries d ON d.delivery_id = e.delivery_id WHERE d.episode_id = ?"
            " ORDER BY e.id", (episode_id,),
        )
        after = self.ledger._query(
            "SELECT step, at, reason FROM episode_steps WHERE episode_id = ? ORDER BY id",
            (episode_id,),
        )
        # In causal order, not by time: a run's events carry the server's times (whole
        # seconds), which may read earlier than the decision that submitted it.
        ordered = [*steps, *(dict(r) for r in events), *(dict(r) for r in after)]
        promotion = self.promotion(episode_id)
        status, resolution = "open", None
        if promotion is not None and promotion["state"] == "cleared":
            status, resolution = "resolved", f"resolved by run {promotion['run']}"
        elif promotion is not None and promotion["state"] in ("rolled_back", "reopened"):
            status = "reopened"
        return {"episode_id": episode_id, "policy": decision["policy"],
                "segment_key": decision["segment_key"], "record_type": decision["record_type"],
                "status": status, "resolution": resolution, "promotion": promotion,
                "steps": ordered}
