"""The SQLite ledger on real files: dedupe, outbox, persistence, targets, concurrent readers."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from triggers.ledger import Ledger, NewDelivery, delivery_id
from triggers.policy import Decision, episode_id

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
            "deliveries",
        }
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
