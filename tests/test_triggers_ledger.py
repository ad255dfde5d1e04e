"""The SQLite ledger on real files: dedupe, outbox, persistence, targets, concurrent readers."""

from __future__ import annotations

import math
import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from observer.triggers.ledger import ApprovalConflict, Ledger, NewDelivery, UnknownEpisode, delivery_id
from observer.triggers.policy import Decision, TrackerState, episode_id

HOOK = "https://hooks.example.com/drift?token=s3cret"


def decision(
    first: int = 1, kind: str = "fired", at: float = 100.0, segment: str = "shop"
) -> Decision:
    return Decision(
        policy="p",
        segment_key=segment,
        record_type="llm",
        episode_id=episode_id("p", segment, "llm", first),
        kind=kind,  # type: ignore[arg-type]
        reason=f"run from window {first}",
        window_index=first + 1,
        first_window_index=first,
        decided_at=at,
    )


def test_file_wal_and_parent_dir(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "ledger.sqlite"
    with Ledger(path):
        pass
    assert path.exists()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"decisions", "deliveries", "disabled_targets"} <= tables
    conn.close()


def test_decision_dedupe(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite") as ledger:
        d = decision()
        assert ledger.record_decision(d, [NewDelivery(HOOK, b'{"a":1}')]) is True
        # The same episode again, even with other content: nothing is written.
        again = Decision(**{**d.__dict__, "kind": "suppressed", "reason": "other"})
        assert (
            ledger.record_decision(
                again, [NewDelivery(HOOK, b'{"a":2}'), NewDelivery("http://x/", b"{}")]
            )
            is False
        )
        (stored,) = ledger.list_decisions()
        assert stored["kind"] == "fired" and stored["reason"] == "run from window 1"
        assert len(stored["deliveries"]) == 1
        assert ledger.counts() == {"pending": 1}


def test_persistence_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with Ledger(path) as ledger:
        ledger.record_decision(decision(1, at=100.0), [NewDelivery(HOOK, b'{"a":1}')])
        ledger.record_decision(decision(5, kind="suppressed", at=200.0))
    with Ledger(path) as ledger:
        listed = ledger.list_decisions()
        assert [d["first_window_index"] for d in listed] == [5, 1]  # newest first
        assert listed[0]["deliveries"] == []
        (due,) = ledger.due_deliveries(now=100.0)
        assert due.delivery_id == delivery_id(decision(1).episode_id, HOOK)
        assert due.payload == b'{"a":1}' and due.target == HOOK and due.status == "pending"
        assert (due.policy, due.segment_key, due.record_type, due.window_index) == (
            "p",
            "shop",
            "llm",
            2,
        )
        assert ledger.record_decision(decision(1)) is False
        assert ledger.last_fired("p") == {("shop", "llm"): 100.0}


def test_listing_is_plain_and_redacted(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite") as ledger:
        ledger.record_decision(decision(1, at=1.0), [NewDelivery(HOOK, b"{}")])
        ledger.record_decision(decision(1, at=2.0, segment="bank"))
        (d,) = ledger.list_decisions(segment_key="shop")
        assert set(d) == {
            "episode_id",
            "policy",
            "segment_key",
            "record_type",
            "kind",
            "reason",
            "window_index",
            "first_window_index",
            "decided_at",
            "approval",
            "approval_by",
            "approval_at",
            "approval_note",
            "deliveries",
            "runs",
        }
        assert d["approval"] is None  # the policy has no approval gate
        (delivery,) = d["deliveries"]
        assert delivery["target"] == "https://hooks.example.com/drift"
        assert "payload" not in delivery
        assert all(isinstance(v, (str, int, float, type(None))) for v in delivery.values())
        assert len(ledger.list_decisions(limit=1)) == 1
        assert ledger.list_decisions(kind="suppressed") == []
        assert ledger.list_decisions(policy="p", segment_key="bank")[0]["deliveries"] == []
        assert ledger.get_decision(d["episode_id"]) == d
        assert ledger.get_decision("nope") is None


def test_outbox_schedule_and_attempts(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite") as ledger:
        for first in (1, 3, 5):
            ledger.record_decision(decision(first, at=10.0 * first), [NewDelivery(HOOK, b"{}")])
        assert ledger.due_deliveries(now=9.0) == []
        assert len(ledger.due_deliveries(now=50.0)) == 3
        assert len(ledger.due_deliveries(now=50.0, limit=2)) == 2
        assert ledger.due_deliveries(now=50.0, action="argo") == []
        a, b, c = ledger.due_deliveries(now=50.0)
        ledger.record_attempt(
            a.delivery_id,
            status="failed",
            attempts=1,
            next_attempt_at=70.0,
            now=50.0,
            error="HTTP 503",
            status_code=503,
        )
        ledger.record_attempt(
            b.delivery_id,
            status="delivered",
            attempts=1,
            next_attempt_at=None,
            now=50.0,
            status_code=204,
        )
        ledger.record_attempt(
            c.delivery_id,
            status="dead_letter",
            attempts=6,
            next_attempt_at=99.0,
            now=50.0,
            error="HTTP 500",
        )
        assert ledger.due_deliveries(now=69.0) == []
        (retry,) = ledger.due_deliveries(now=70.0)
        assert (retry.delivery_id, retry.status, retry.attempts) == (a.delivery_id, "failed", 1)
        assert (retry.last_error, retry.last_status_code) == ("HTTP 503", 503)
        final = ledger.get_delivery(c.delivery_id)
        assert final is not None and final.next_attempt_at is None  # final: never due again
        assert ledger.counts() == {"failed": 1, "delivered": 1, "dead_letter": 1}
        with pytest.raises(ValueError):
            ledger.record_attempt(
                a.delivery_id, status="lost", attempts=1, next_attempt_at=None, now=1.0
            )


def test_disabled_targets(tmp_path: Path) -> None:
    other = "http://other.example/hook"
    with Ledger(tmp_path / "l.sqlite") as ledger:
        ledger.record_decision(decision(1), [NewDelivery(HOOK, b"{}"), NewDelivery(other, b"{}")])
        ledger.record_decision(decision(3), [NewDelivery(HOOK, b"{}")])
        stopped = ledger.disable_target(HOOK, now=150.0, reason="HTTP 410")
        assert len(stopped) == 2 and {s.target for s in stopped} == {HOOK}
        assert [d.target for d in ledger.due_deliveries(now=1e9)] == [other]
        assert ledger.is_disabled(HOOK)
        assert ledger.disabled_targets()[0]["target"] == "https://hooks.example.com/drift"
        # A new decision to a disabled target is recorded, not scheduled.
        ledger.record_decision(decision(7), [NewDelivery(HOOK, b"{}")])
        (row,) = ledger.get_decision(decision(7).episode_id)["deliveries"]  # type: ignore[index]
        assert row["status"] == "disabled" and row["last_error"] == "target disabled: HTTP 410"
        assert ledger.enable_target(HOOK) and not ledger.enable_target(HOOK)
        ledger.record_decision(decision(9), [NewDelivery(HOOK, b"{}")])
        assert {d.target for d in ledger.due_deliveries(now=1e9)} == {HOOK, other}


def test_readers_and_a_writer_on_threads(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite") as ledger:
        errors: list[Exception] = []
        done = threading.Event()

        def read() -> None:
            try:
                while not done.is_set():
                    for d in ledger.list_decisions(limit=50):
                        assert len(d["deliveries"]) == 1
            except Exception as e:  # noqa: BLE001 - surfaced below
                errors.append(e)

        readers = [threading.Thread(target=read) for _ in range(3)]
        for r in readers:
            r.start()
        for first in range(200):
            ledger.record_decision(decision(first, at=float(first)), [NewDelivery(HOOK, b"{}")])
        done.set()
        for r in readers:
            r.join(10)
        assert errors == []
        assert len(ledger.list_decisions(limit=1000)) == 200


def state(key: str = "shop", **kw: object) -> TrackerState:
    base: dict[str, object] = {
        "segment_key": key, "record_type": "llm", "last_window": 7, "last_closed_at": 70,
        "recent": ((5, 0.9, 500), (6, math.nan, 0), (7, 0.8, 500)), "episode_open": True,
        "episode_id": "e5", "episode_start": 5, "clear_count": 1, "last_fired_at": 60.0,
    }
    return TrackerState(**{**base, **kw})  # type: ignore[arg-type]


def same(a: TrackerState, b: TrackerState) -> bool:
    """Equal, NaN included (NaN != NaN)."""
    def norm(s: TrackerState) -> TrackerState:
        return replace(s, recent=tuple((i, -1.0 if math.isnan(v) else v, n) for i, v, n in s.recent))
    return norm(a) == norm(b)


def test_tracker_state_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with Ledger(path) as ledger:
        ledger.save_states("p", [state(), state("bank", episode_open=False, episode_id=None)], 1.0)
        ledger.save_states("p", [state(clear_count=2, last_window=8)], 2.0)  # replaces
        ledger.save_states("q", [], 3.0)  # nothing to write
    with Ledger(path) as ledger:
        bank, shop = ledger.load_states("p")
        assert same(shop, state(clear_count=2, last_window=8))
        assert math.isnan(shop.recent[1][1])
        assert same(bank, state("bank", episode_open=False, episode_id=None))
        assert ledger.load_states("q") == []
        (open_,) = ledger.open_episodes()
        assert (open_["segment_key"], open_["episode_id"], open_["clear_count"]) == ("shop", "e5", 2)


def test_state_is_written_with_the_decision(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite") as ledger:
        assert ledger.record_decision(decision(1), policy_states=[state(last_window=2)])
        # A decision already recorded still stores the state (the batch moved on).
        assert not ledger.record_decision(decision(1), policy_states=[state(last_window=3)])
        (saved,) = ledger.load_states("p")
        assert saved.last_window == 3
        found = ledger.decision_at("p", "shop", "llm", 2)
        assert found is not None and found["episode_id"] == decision(1).episode_id
        assert ledger.decision_at("p", "shop", "llm", 3) is None


def test_a_failed_transaction_writes_no_state(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite") as ledger:
        bad = NewDelivery(HOOK, b"\xff")  # not UTF-8: the outbox row cannot be written
        with pytest.raises(UnicodeDecodeError):
            ledger.record_decision(decision(1), [bad], policy_states=[state()])
        assert ledger.load_states("p") == [] and ledger.list_decisions() == []


def test_held_decision_then_approved_or_rejected(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite") as ledger:
        held, other = decision(1), decision(1, segment="bank")
        ledger.record_decision(held, [NewDelivery(HOOK, b"{}")], hold=True)
        ledger.record_decision(other, [NewDelivery(HOOK, b"{}")], hold=True)
        assert ledger.due_deliveries(now=1e12) == []  # planned, never attempted while held
        (row,) = ledger.get_decision(held.episode_id)["deliveries"]  # type: ignore[index]
        assert (row["status"], row["attempts"], row["next_attempt_at"]) == ("held", 0, None)
        assert [d["episode_id"] for d in ledger.list_decisions(approval="held")] == [
            other.episode_id, held.episode_id
        ]

        stored, changed = ledger.resolve_approval(held.episode_id, "approved", by="ana", now=500.0)
        assert changed and (stored["approval"], stored["approval_by"]) == ("approved", "ana")
        (due,) = ledger.due_deliveries(now=500.0)
        assert (due.episode_id, due.status) == (held.episode_id, "pending")
        assert [d["episode_id"] for d in ledger.unannounced_approvals()] == [held.episode_id]
        # Approving again is a retried request: no change. Rejecting now is a conflict.
        assert ledger.resolve_approval(held.episode_id, "approved", by="bo", now=600.0)[1] is False
        with pytest.raises(ApprovalConflict, match="already approved by ana"):
            ledger.resolve_approval(held.episode_id, "rejected", by="bo", now=600.0)

        stored, _ = ledger.resolve_approval(other.episode_id, "rejected", by="bo", now=700.0,
                                            note="false alarm")
        (cancelled,) = stored["deliveries"]
        assert (cancelled["status"], cancelled["last_error"]) == ("cancelled", "rejected by bo")
        assert stored["approval_note"] == "false alarm"
        assert [d.episode_id for d in ledger.due_deliveries(now=1e12)] == [held.episode_id]
        ledger.mark_announced([held.episode_id, other.episode_id])
        assert ledger.unannounced_approvals() == []

        with pytest.raises(UnknownEpisode, match="no decision with episode id 'nope'"):
            ledger.resolve_approval("nope", "approved", by="x", now=1.0)
        plain = decision(3)
        ledger.record_decision(plain)
        with pytest.raises(ApprovalConflict, match="needs no approval"):
            ledger.resolve_approval(plain.episode_id, "approved", by="x", now=1.0)
        with pytest.raises(ValueError, match="verdict must be"):
            ledger.resolve_approval(plain.episode_id, "maybe", by="x", now=1.0)  # type: ignore[arg-type]


# The schema of the first version of the ledger, as files written by it hold it.
LEDGER_V1 = """
CREATE TABLE decisions (
    episode_id TEXT PRIMARY KEY, policy TEXT NOT NULL, segment_key TEXT NOT NULL,
    record_type TEXT NOT NULL, kind TEXT NOT NULL CHECK (kind IN ('fired', 'suppressed')),
    reason TEXT NOT NULL, window_index INTEGER NOT NULL, first_window_index INTEGER NOT NULL,
    decided_at REAL NOT NULL);
CREATE INDEX decisions_by_time ON decisions (decided_at);
CREATE TABLE deliveries (
    delivery_id TEXT PRIMARY KEY, episode_id TEXT NOT NULL REFERENCES decisions (episode_id),
    action TEXT NOT NULL, target TEXT NOT NULL, payload TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN
        ('pending', 'failed', 'delivered', 'dead_letter', 'disabled')),
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL, last_error TEXT,
    last_status_code INTEGER, updated_at REAL NOT NULL);
CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at);
CREATE TABLE disabled_targets (target TEXT PRIMARY KEY, disabled_at REAL NOT NULL,
    reason TEXT NOT NULL);
INSERT INTO decisions VALUES ('old', 'p', 'shop', 'llm', 'fired', 'r', 2, 1, 10.0);
INSERT INTO deliveries VALUES ('msg_1', 'old', 'webhook', 'http://h/x', '{}', 'failed', 1,
    20.0, 'HTTP 503', 503, 11.0);
PRAGMA user_version=1;
"""


def test_a_first_version_ledger_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(LEDGER_V1)
    with Ledger(path) as ledger:
        (old,) = ledger.list_decisions()
        assert old["approval"] is None and old["deliveries"][0]["status"] == "failed"
        (due,) = ledger.due_deliveries(now=20.0)
        assert due.delivery_id == "msg_1"
        # The new statuses and tables work on the migrated file.
        ledger.record_decision(decision(5), [NewDelivery(HOOK, b"{}")], hold=True,
                               policy_states=[state()])
        assert ledger.list_decisions(approval="held")[0]["deliveries"][0]["status"] == "held"
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    with Ledger(path) as ledger:  # opening a current file again changes nothing
        assert len(ledger.list_decisions()) == 2


def test_a_newer_ledger_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(RuntimeError, match="schema 99, newer than this code's 2"):
        Ledger(path)
