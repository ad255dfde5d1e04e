"""The durable ledger: every decision, an outbox of the actions it owes, and the policies' state.

One SQLite file (WAL mode) holds these tables:

* ``decisions``: one row per episode. ``episode_id`` is unique, so a run replayed after a
  restart cannot be decided twice: :meth:`Ledger.record_decision` answers ``False``. A
  decision of a policy with ``approval`` (mode ``ledger``) is *held*: ``approval`` is
  ``held`` until :meth:`Ledger.resolve_approval` records ``approved`` or ``rejected``, who
  did it and when.
* ``deliveries``: the outbox. The rows a decision owes are written in the same transaction as
  the decision and *before* anything is sent; the stage then works through the due rows, so
  a crash or restart resumes them. Statuses: ``pending`` (not tried yet), ``failed`` (tried,
  another attempt scheduled), ``held`` (planned, waiting for approval: never attempted before
  it), and the final ``delivered``, ``dead_letter`` (gave up after ``max_attempts``),
  ``disabled`` (the receiver answered 410, or its target was disabled), ``cancelled`` (the
  decision was rejected).
* ``disabled_targets``: targets that answered 410; new deliveries to them are recorded as
  ``disabled`` and not attempted, until :meth:`Ledger.enable_target`.
* ``tracker_state``: per policy, segment and record type, the
  :class:`~observer.triggers.policy.TrackerState` (last windows, open episode, clear count, last window
  seen). It is written in the decision's transaction when there is one, and once per
  processed batch otherwise (:meth:`Ledger.save_states`), so trackers resume after a restart.
* ``runs`` and ``run_events``: every submitted run (Argo, KFP) followed to its end, and the
  ``run_*`` events it went through (:mod:`observer.triggers.tracking`).

One connection behind a lock serves every thread (the stage writes, the admin API reads);
each call is short. Other processes (``observer triggers approve``) open the same file.

>>> import tempfile, pathlib
>>> from observer.triggers.policy import Decision
>>> d = Decision(policy="p", segment_key="shop", record_type="llm", episode_id="e1",
...     kind="fired", reason="r", window_index=2, first_window_index=1, decided_at=10.0)
>>> with tempfile.TemporaryDirectory() as tmp:
...     with Ledger(pathlib.Path(tmp) / "l.sqlite") as ledger:
...         first = ledger.record_decision(d, [NewDelivery("http://h/x", b"{}")])
...         again = ledger.record_decision(d, [NewDelivery("http://h/x", b"{}")])
...         due = ledger.due_deliveries(now=10.0)
>>> first, again, [x.status for x in due]
(True, False, ['pending'])
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from observer.triggers.policy import Decision, TrackerState
from observer.triggers.redact import public_target

SCHEMA_VERSION = 2

PENDING, FAILED, HELD, DELIVERED, DEAD_LETTER, DISABLED, CANCELLED = (
    "pending",
    "failed",
    "held",
    "delivered",
    "dead_letter",
    "disabled",
    "cancelled",
)
OPEN_STATUSES = (PENDING, FAILED)
FINAL_STATUSES = (DELIVERED, DEAD_LETTER, DISABLED, CANCELLED)
_STATUSES = ", ".join(f"'{s}'" for s in (*OPEN_STATUSES, HELD, *FINAL_STATUSES))

# The approval column of a decision: NULL when its policy needs none.
APPROVED, REJECTED = "approved", "rejected"
Verdict = Literal["approved", "rejected"]
_APPROVALS = f"'{HELD}', '{APPROVED}', '{REJECTED}'"

_DELIVERIES_TABLE = f"""
CREATE TABLE IF NOT EXISTS deliveries (
    delivery_id      TEXT PRIMARY KEY,
    episode_id       TEXT NOT NULL REFERENCES decisions (episode_id),
    action           TEXT NOT NULL,
    target           TEXT NOT NULL,
    payload          TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ({_STATUSES})),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL,
    last_error       TEXT,
    last_status_code INTEGER,
    updated_at       REAL NOT NULL
)
"""

_SCHEMA = [
    f"""
CREATE TABLE IF NOT EXISTS decisions (
    episode_id         TEXT PRIMARY KEY,
    policy             TEXT NOT NULL,
    segment_key        TEXT NOT NULL,
    record_type        TEXT NOT NULL,
    kind               TEXT NOT NULL CHECK (kind IN ('fired', 'suppressed')),
    reason             TEXT NOT NULL,
    window_index       INTEGER NOT NULL,
    first_window_index INTEGER NOT NULL,
    decided_at         REAL NOT NULL,
    approval           TEXT CHECK (approval IN ({_APPROVALS})),
    approval_by        TEXT,
    approval_at        REAL,
    approval_note      TEXT,
    -- 0 while the approval's event is not yet known to be on observer.triggers
    approval_announced INTEGER NOT NULL DEFAULT 1
)""",
    "CREATE INDEX IF NOT EXISTS decisions_by_time ON decisions (decided_at)",
    (
        "CREATE INDEX IF NOT EXISTS decisions_by_key"
        " ON decisions (policy, segment_key, record_type, kind)"
    ),
    (
        "CREATE INDEX IF NOT EXISTS decisions_by_window"
        " ON decisions (policy, segment_key, record_type, window_index)"
    ),
    _DELIVERIES_TABLE,
    "CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_attempt_at)",
    "CREATE INDEX IF NOT EXISTS deliveries_by_episode ON deliveries (episode_id)",
    """
CREATE TABLE IF NOT EXISTS disabled_targets (
    target      TEXT PRIMARY KEY,
    disabled_at REAL NOT NULL,
    reason      TEXT NOT NULL
)""",
    """
CREATE TABLE IF NOT EXISTS tracker_state (
    policy         TEXT NOT NULL,
    segment_key    TEXT NOT NULL,
    record_type    TEXT NOT NULL,
    last_window    INTEGER,
    last_closed_at INTEGER,
    recent         TEXT NOT NULL,  -- JSON [[window index, value or null, n], ...], oldest first
    episode_open   INTEGER NOT NULL,
    episode_id     TEXT,
    episode_start  INTEGER,
    clear_count    INTEGER NOT NULL,
    last_fired_at  REAL,
    generation     INTEGER NOT NULL DEFAULT 0,  -- times the drift engine restarted numbering
    updated_at     REAL NOT NULL,
    PRIMARY KEY (policy, segment_key, record_type)
)""",
    # Submitted runs followed to their end (observer.triggers.tracking): one row per run
    # delivery, written in the transaction that records the delivery as delivered. Added
    # without a schema bump: older code ignores the tables.
    """
CREATE TABLE IF NOT EXISTS runs (
    delivery_id   TEXT PRIMARY KEY REFERENCES deliveries (delivery_id),
    name          TEXT NOT NULL,  -- the workflow's name, the KFP run's display name
    run_id        TEXT,           -- the server's id when it is not the name (KFP)
    phase         TEXT NOT NULL DEFAULT '',  -- last upstream phase seen
    outcome       TEXT NOT NULL CHECK (outcome IN
                  ('submitted', 'running', 'succeeded', 'failed', 'lost', 'timed_out')),
    failed_step   TEXT,
    message       TEXT,
    submitted_at  REAL NOT NULL,
    started_at    REAL,
    finished_at   REAL,
    polls         INTEGER NOT NULL DEFAULT 0,
    misses        INTEGER NOT NULL DEFAULT 0,  -- 404 answers in a row
    last_error    TEXT,                        -- the last poll that got no answer
    next_poll_at  REAL,                        -- NULL once final
    updated_at    REAL NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS runs_due ON runs (next_poll_at)",
    """
CREATE TABLE IF NOT EXISTS run_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id TEXT NOT NULL REFERENCES runs (delivery_id),
    event       TEXT NOT NULL,
    phase       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    at          REAL NOT NULL,
    -- 0 while its event is not yet known to be on observer.triggers
    announced   INTEGER NOT NULL DEFAULT 0
)""",
    "CREATE INDEX IF NOT EXISTS run_events_unannounced ON run_events (announced, id)",
]

# Schema 1 -> 2: the approval columns, and two more delivery statuses (SQLite cannot change a
# CHECK constraint in place: the table is copied). tracker_state is created by _SCHEMA.
_MIGRATE_FROM_1 = [
    f"ALTER TABLE decisions ADD COLUMN approval TEXT CHECK (approval IN ({_APPROVALS}))",
    "ALTER TABLE decisions ADD COLUMN approval_by TEXT",
    "ALTER TABLE decisions ADD COLUMN approval_at REAL",
    "ALTER TABLE decisions ADD COLUMN approval_note TEXT",
    "ALTER TABLE decisions ADD COLUMN approval_announced INTEGER NOT NULL DEFAULT 1",
    "ALTER TABLE deliveries RENAME TO deliveries_v1",
    _DELIVERIES_TABLE,
    "INSERT INTO deliveries SELECT * FROM deliveries_v1",
    "DROP TABLE deliveries_v1",
]


class ApprovalError(Exception):
    """An approval or rejection that cannot be recorded; the message says why."""


class UnknownEpisode(ApprovalError, LookupError):
    """No decision with this episode id."""


class ApprovalConflict(ApprovalError):
    """The decision is not held: it needs no approval, or the other verdict was given."""


def delivery_id(episode_id: str, target: str) -> str:
    """Stable id of one episode's delivery to one target: the ``webhook-id`` on every retry.

    >>> delivery_id("e1", "http://h/x") == delivery_id("e1", "http://h/x")
    True
    >>> delivery_id("e1", "http://h/x")[:4]
    'msg_'
    """
    return "msg_" + hashlib.sha256(f"{episode_id}|{target}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class NewDelivery:
    """An action a decision owes, before its first attempt."""

    target: str
    payload: bytes
    action: str = "webhook"


@dataclass(frozen=True)
class NewRun:
    """A submitted run to follow (:mod:`observer.triggers.tracking`), written with the outcome
    of the attempt that submitted it."""

    name: str
    submitted_at: float
    next_poll_at: float


@dataclass(frozen=True)
class Delivery:
    """One outbox row, with the decision fields a delivery event needs."""

    delivery_id: str
    episode_id: str
    policy: str
    segment_key: str
    record_type: str
    window_index: int
    action: str
    target: str
    payload: bytes
    status: str
    attempts: int
    next_attempt_at: float | None
    last_error: str | None
    last_status_code: int | None
    updated_at: float


_DELIVERY_COLUMNS = """
    d.delivery_id, d.episode_id, c.policy, c.segment_key, c.record_type, c.window_index,
    d.action, d.target, d.payload, d.status, d.attempts, d.next_attempt_at, d.last_error,
    d.last_status_code, d.updated_at
"""


def _delivery(row: sqlite3.Row) -> Delivery:
    values = dict(row)
    values["payload"] = values["payload"].encode()
    return Delivery(**values)


def _public_delivery(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    out["target"] = public_target(out["target"])  # the query string may hold a token
    return out


class Ledger:
    """The SQLite ledger at ``path`` (its parent directory is created); a context manager."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        # isolation_level=None: we open transactions ourselves, so a decision and its outbox
        # rows commit together or not at all.
        self._conn = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=10.0
        )
        self._conn.row_factory = sqlite3.Row
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed outbox row survives power loss, not only a process crash; the
            # write rate (a decision, an attempt, or one state write per batch of drift
            # results, which come one per window) makes the fsync cost irrelevant.
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
        # In a write transaction: the stage and `observer triggers approve` may open an old
        # file at once, and exactly one of them must migrate it.
        with self._tx() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"ledger {self.path} has schema {version}, newer than this code's "
                    f"{SCHEMA_VERSION}"
                )
            if version == 1:
                for statement in _MIGRATE_FROM_1:
                    conn.execute(statement)
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    # -- plumbing -----------------------------------------------------------------------

    def _tx(self) -> _Transaction:
        return _Transaction(self._conn, self._lock)

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- decisions ----------------------------------------------------------------------

    def record_decision(
        self,
        decision: Decision,
        deliveries: Sequence[NewDelivery] = (),
        *,
        policy_states: Iterable[TrackerState] = (),
        hold: bool = False,
    ) -> bool:
        """Record a decision, the deliveries it owes and its policy's tracker state, atomically.

        ``False``, and no decision written, when the episode is already in the ledger (the
        states are written either way). Deliveries to a disabled target are recorded as
        ``disabled`` and never attempted. ``hold``: the decision waits for approval, its
        deliveries are recorded ``held`` and are not due until :meth:`resolve_approval`.
        """
        with self._tx() as conn:
            self._write_states(conn, decision.policy, policy_states, decision.decided_at)
            cur = conn.execute(
                "INSERT OR IGNORE INTO decisions (episode_id, policy, segment_key, record_type,"
                " kind, reason, window_index, first_window_index, decided_at, approval)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    decision.episode_id,
                    decision.policy,
                    decision.segment_key,
                    decision.record_type,
                    decision.kind,
                    decision.reason,
                    decision.window_index,
                    decision.first_window_index,
                    decision.decided_at,
                    HELD if hold else None,
                ),
            )
            if cur.rowcount == 0:
                return False
            for d in deliveries:
                disabled = conn.execute(
                    "SELECT reason FROM disabled_targets WHERE target = ?", (d.target,)
                ).fetchone()
                status = DISABLED if disabled else HELD if hold else PENDING
                conn.execute(
                    "INSERT OR IGNORE INTO deliveries (delivery_id, episode_id, action, target,"
                    " payload, status, attempts, next_attempt_at, last_error, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
                    (
                        delivery_id(decision.episode_id, d.target),
                        decision.episode_id,
                        d.action,
                        d.target,
                        d.payload.decode(),
                        status,
                        decision.decided_at if status == PENDING else None,
                        f"target disabled: {disabled['reason']}" if disabled else None,
                        decision.decided_at,
                    ),
                )
            return True

    def decision_at(
        self, policy: str, segment_key: str, record_type: str, window_index: int
    ) -> dict[str, Any] | None:
        """The decision that window completed, if any (to announce a replayed one again)."""
        rows = self._query(
            "SELECT * FROM decisions WHERE policy = ? AND segment_key = ? AND record_type = ?"
            " AND window_index = ? ORDER BY rowid DESC LIMIT 1",
            (policy, segment_key, record_type, window_index),
        )
        return self._with_deliveries(rows)[0] if rows else None

    # -- approval -----------------------------------------------------------------------

    def resolve_approval(
        self, episode_id: str, verdict: Verdict, *, by: str, now: float, note: str = ""
    ) -> tuple[dict[str, Any], bool]:
        """Approve (its held deliveries become due now) or reject (they are cancelled) a held
        decision; returns the decision and whether this call changed it.

        The same verdict again changes nothing (a retried request); the other verdict, an
        unknown episode or one that needs no approval raise :class:`ApprovalError`.
        """
        if verdict not in (APPROVED, REJECTED):
            raise ValueError(f"verdict must be {APPROVED!r} or {REJECTED!r}, not {verdict!r}")
        with self._tx() as conn:
            row = conn.execute(
                "SELECT approval, approval_by FROM decisions WHERE episode_id = ?", (episode_id,)
            ).fetchone()
            if row is None:
                raise UnknownEpisode(f"no decision with episode id {episode_id!r}")
            current = row["approval"]
            if current is None:
                raise ApprovalConflict(
                    f"episode {episode_id} needs no approval (its policy has no approval gate)"
                )
            changed = current == HELD
            if not changed and current != verdict:
                raise ApprovalConflict(
                    f"episode {episode_id} was already {current} by {row['approval_by']}"
                )
            if changed:
                conn.execute(
                    "UPDATE decisions SET approval = ?, approval_by = ?, approval_at = ?,"
                    " approval_note = ?, approval_announced = 0 WHERE episode_id = ?",
                    (verdict, by, now, note, episode_id),
                )
                if verdict == APPROVED:
                    conn.execute(
                        "UPDATE deliveries SET status = ?, next_attempt_at = ?, updated_at = ?"
                        " WHERE episode_id = ? AND status = ?",
                        (PENDING, now, now, episode_id, HELD),
                    )
                else:
                    conn.execute(
                        "UPDATE deliveries SET status = ?, last_error = ?, updated_at = ?"
                        " WHERE episode_id = ? AND status = ?",
                        (CANCELLED, f"rejected by {by}", now, episode_id, HELD),
                    )
        stored = self.get_decision(episode_id)
        assert stored is not None
        return stored, changed

    def unannounced_approvals(self, limit: int = 100) -> list[dict[str, Any]]:
        """Approvals and rejections whose event is not yet known to be published."""
        rows = self._query(
            "SELECT * FROM decisions WHERE approval_announced = 0 ORDER BY approval_at LIMIT ?",
            (max(0, int(limit)),),
        )
        return self._with_deliveries(rows)

    def mark_announced(self, episode_ids: Sequence[str]) -> None:
        if not episode_ids:
            return
        marks = ",".join("?" * len(episode_ids))
        with self._tx() as conn:
            conn.execute(
                f"UPDATE decisions SET approval_announced = 1 WHERE episode_id IN ({marks})",
                list(episode_ids),
            )

    # -- tracker state ------------------------------------------------------------------

    def save_states(self, policy: str, states: Iterable[TrackerState], now: float) -> None:
        """Store trackers' states (one transaction; nothing when ``states`` is empty)."""
        states = list(states)
        if states:
            with self._tx() as conn:
                self._write_states(conn, policy, states, now)

    @staticmethod
    def _write_states(
        conn: sqlite3.Connection, policy: str, states: Iterable[TrackerState], now: float
    ) -> None:
        for st in states:
            # NaN is not JSON: a window without the signal is stored as null.
            recent = [[i, None if math.isnan(v) else v, n] for i, v, n in st.recent]
            conn.execute(
                "INSERT OR REPLACE INTO tracker_state (policy, segment_key, record_type,"
                " last_window, last_closed_at, recent, episode_open, episode_id, episode_start,"
                " clear_count, last_fired_at, generation, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    policy,
                    st.segment_key,
                    st.record_type,
                    st.last_window,
                    st.last_closed_at,
                    json.dumps(recent, separators=(",", ":")),
                    int(st.episode_open),
                    st.episode_id,
                    st.episode_start,
                    st.clear_count,
                    st.last_fired_at,
                    st.generation,
                    now,
                ),
            )

    def load_states(self, policy: str) -> list[TrackerState]:
        """Every stored tracker state of ``policy``."""
        rows = self._query(
            "SELECT * FROM tracker_state WHERE policy = ? ORDER BY segment_key, record_type",
            (policy,),
        )
        return [
            TrackerState(
                segment_key=r["segment_key"],
                record_type=r["record_type"],
                last_window=r["last_window"],
                last_closed_at=r["last_closed_at"],
                recent=tuple(
                    (i, math.nan if v is None else float(v), n) for i, v, n in json.loads(r["recent"])
                ),
                episode_open=bool(r["episode_open"]),
                episode_id=r["episode_id"],
                episode_start=r["episode_start"],
                clear_count=r["clear_count"],
                last_fired_at=r["last_fired_at"],
                generation=r["generation"],
            )
            for r in rows
        ]

    def open_episodes(self) -> list[dict[str, Any]]:
        """Episodes still open (decided, not cleared), per policy and key."""
        rows = self._query(
            "SELECT policy, segment_key, record_type, episode_id, episode_start, clear_count,"
            " last_window, updated_at FROM tracker_state WHERE episode_open = 1"
            " ORDER BY policy, segment_key, record_type"
        )
        return [dict(r) for r in rows]

    def get_decision(self, episode_id: str) -> dict[str, Any] | None:
        """One decision as a plain dict with its ``deliveries``; ``None`` when unknown."""
        rows = self._query("SELECT * FROM decisions WHERE episode_id = ?", (episode_id,))
        if not rows:
            return None
        return self._with_deliveries(rows)[0]

    def list_decisions(
        self,
        limit: int = 100,
        *,
        policy: str | None = None,
        segment_key: str | None = None,
        kind: str | None = None,
        approval: str | None = None,
    ) -> list[dict[str, Any]]:
        """Newest decisions first, each a plain dict with a ``deliveries`` list.

        Delivery targets are shown without query string or userinfo, and without payloads.
        ``approval``: only decisions in that approval state (``held``, ``approved``,
        ``rejected``).
        """
        where, args = [], []
        filters = (
            ("policy", policy),
            ("segment_key", segment_key),
            ("kind", kind),
            ("approval", approval),
        )
        for column, value in filters:
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = "SELECT * FROM decisions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY decided_at DESC, rowid DESC LIMIT ?"
        rows = self._query(sql, [*args, max(0, int(limit))])
        return self._with_deliveries(rows)

    def _with_deliveries(self, rows: list[sqlite3.Row]) -> list[dict[str, Any]]:
        decisions = [dict(r) for r in rows]
        for d in decisions:
            d.pop("approval_announced", None)  # bookkeeping of the stage, not of the decision
        if not decisions:
            return []
        ids = [d["episode_id"] for d in decisions]
        marks = ",".join("?" * len(ids))
        deliveries = self._query(
            "SELECT delivery_id, episode_id, action, target, status, attempts, next_attempt_at,"
            " last_error, last_status_code, updated_at FROM deliveries"
            f" WHERE episode_id IN ({marks}) ORDER BY rowid",
            ids,
        )
        by_episode: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        for row in deliveries:
            by_episode[row["episode_id"]].append(_public_delivery(row))
        # The runs its deliveries submitted, as far as they were followed.
        runs = self._query(
            "SELECT d.episode_id, r.delivery_id, d.action, r.name, r.run_id, r.outcome, r.phase,"
            " r.failed_step, r.message, r.submitted_at, r.started_at, r.finished_at, r.polls,"
            " r.last_error FROM runs r JOIN deliveries d ON d.delivery_id = r.delivery_id"
            f" WHERE d.episode_id IN ({marks}) ORDER BY r.rowid",
            ids,
        )
        runs_of: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
        for row in runs:
            runs_of[row["episode_id"]].append({k: row[k] for k in row.keys() if k != "episode_id"})
        for d in decisions:
            d["deliveries"] = by_episode[d["episode_id"]]
            d["runs"] = runs_of[d["episode_id"]]
        return decisions

    def last_fired(self, policy: str) -> dict[tuple[str, str], float]:
        """When ``policy`` last fired, per ``(segment_key, record_type)``: cooldowns on restart."""
        rows = self._query(
            "SELECT segment_key, record_type, MAX(decided_at) AS at FROM decisions"
            " WHERE policy = ? AND kind = 'fired' GROUP BY segment_key, record_type",
            (policy,),
        )
        return {(r["segment_key"], r["record_type"]): r["at"] for r in rows}

    # -- deliveries ---------------------------------------------------------------------

    def due_deliveries(
        self, now: float, limit: int = 100, action: str | None = None
    ) -> list[Delivery]:
        """Open deliveries whose next attempt is due, longest waiting first."""
        sql = (
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries d"
            " JOIN decisions c ON c.episode_id = d.episode_id"
            " WHERE d.status IN (?, ?) AND d.next_attempt_at <= ?"
        )
        args: list[Any] = [*OPEN_STATUSES, now]
        if action is not None:
            sql += " AND d.action = ?"
            args.append(action)
        sql += " ORDER BY d.next_attempt_at, d.rowid LIMIT ?"
        rows = self._query(sql, [*args, max(0, int(limit))])
        return [_delivery(r) for r in rows]

    def get_delivery(self, delivery_id: str) -> Delivery | None:
        rows = self._query(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries d"
            " JOIN decisions c ON c.episode_id = d.episode_id WHERE d.delivery_id = ?",
            (delivery_id,),
        )
        return _delivery(rows[0]) if rows else None

    def record_attempt(
        self,
        delivery_id: str,
        *,
        status: str,
        attempts: int,
        next_attempt_at: float | None,
        now: float,
        error: str | None = None,
        status_code: int | None = None,
        run: NewRun | None = None,
    ) -> None:
        """Store the outcome of one attempt (final statuses clear ``next_attempt_at``).

        ``run``: the attempt submitted a run, followed from now on; written in the same
        transaction, so a delivered run is never left untracked by a crash.
        """
        if status not in (*OPEN_STATUSES, *FINAL_STATUSES):
            raise ValueError(f"unknown delivery status {status!r}")
        with self._tx() as conn:
            if run is not None:
                conn.execute(
                    "INSERT OR IGNORE INTO runs (delivery_id, name, outcome, submitted_at,"
                    " next_poll_at, updated_at) VALUES (?, ?, 'submitted', ?, ?, ?)",
                    (delivery_id, run.name, run.submitted_at, run.next_poll_at, now),
                )
            conn.execute(
                "UPDATE deliveries SET status = ?, attempts = ?, next_attempt_at = ?,"
                " last_error = ?, last_status_code = ?, updated_at = ? WHERE delivery_id = ?",
                (
                    status,
                    attempts,
                    None if status in FINAL_STATUSES else next_attempt_at,
                    error,
                    status_code,
                    now,
                    delivery_id,
                ),
            )

    def counts(self) -> dict[str, int]:
        """Deliveries per status (gauges, health checks)."""
        rows = self._query("SELECT status, COUNT(*) AS n FROM deliveries GROUP BY status")
        return {r["status"]: r["n"] for r in rows}

    # -- targets ------------------------------------------------------------------------

    def disable_target(self, target: str, now: float, reason: str) -> list[Delivery]:
        """Stop delivering to ``target``; returns its open deliveries, now ``disabled``."""
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO disabled_targets (target, disabled_at, reason)"
                " VALUES (?, ?, ?)",
                (target, now, reason),
            )
            rows = conn.execute(
                f"SELECT {_DELIVERY_COLUMNS} FROM deliveries d"
                " JOIN decisions c ON c.episode_id = d.episode_id"
                " WHERE d.target = ? AND d.status IN (?, ?)",
                (target, *OPEN_STATUSES),
            ).fetchall()
            conn.execute(
                "UPDATE deliveries SET status = ?, next_attempt_at = NULL, last_error = ?,"
                " updated_at = ? WHERE target = ? AND status IN (?, ?)",
                (DISABLED, f"target disabled: {reason}", now, target, *OPEN_STATUSES),
            )
        return [_delivery(r) for r in rows]

    def enable_target(self, target: str) -> bool:
        """Deliver to ``target`` again (for new decisions); ``True`` when it was disabled."""
        with self._tx() as conn:
            cur = conn.execute("DELETE FROM disabled_targets WHERE target = ?", (target,))
            return cur.rowcount > 0

    def is_disabled(self, target: str) -> bool:
        return bool(self._query("SELECT 1 FROM disabled_targets WHERE target = ?", (target,)))

    def disabled_targets(self) -> list[dict[str, Any]]:
        rows = self._query("SELECT * FROM disabled_targets ORDER BY disabled_at")
        return [{**dict(r), "target": public_target(r["target"])} for r in rows]


class _Transaction:
    """``BEGIN IMMEDIATE`` .. ``COMMIT`` under the ledger's lock; rolls back on error."""

    def __init__(self, conn: sqlite3.Connection, lock: threading.RLock) -> None:
        self.conn = conn
        self.lock = lock

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        try:
            # IMMEDIATE takes the write lock up front, so a second process on the same file
            # waits (busy timeout) instead of failing half way through.
            self.conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise
        return self.conn

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.conn.execute("ROLLBACK" if t is not None else "COMMIT")
        finally:
            self.lock.release()
