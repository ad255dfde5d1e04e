"""The approval gate in observer's own ledger: held decisions, approve and reject.

A policy with ``approval: true`` (mode ``ledger``) records a fired decision as held: its
webhook and Argo run are planned in the outbox and never attempted until someone approves
it (``observer triggers approve``, or ``POST /api/v1/triggers/{episode}/approve`` on the admin
API, behind its bearer token). A rejection cancels them. Both are in the ledger (who, when,
why) and on ``observer.triggers``. Run against the contract Argo server and a Standard
Webhooks receiver verifying with the reference package.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from observer.core.bus import Message, Output, make_consumer, make_producer, produce_all
from observer.config import ObserverConfig
from observer.core.config import AdminConfig, KafkaConfig
from observer.triggers.config import TriggerConfig
from observer.core.records import DriftResult, TriggerEvent, decode, encode
from observer.core.topics import Topics
from observer.runtime import Runtime
from tests.triggers_support import ARGO_TOKEN, ROOT, SECRET, Servers
from observer.triggers.stage import TriggerStage

ADMIN_TOKEN = "admin-t0ken"
TOPICS = Topics.from_config(KafkaConfig())


def trigger_data(tmp_path: Path, argo_url: str, hook_url: str) -> dict[str, Any]:
    return {
        "ledger_path": str(tmp_path / "ledger.sqlite"),
        "argo": {"server": argo_url, "token": ARGO_TOKEN},
        "policies": [{
            "name": "retrain", "threshold": 0.5, "consecutive_windows": 2, "min_samples": 10,
            "cooldown_s": 0, "actions": ["argo"], "approval": True,
            "webhooks": [{"url": hook_url, "secret": SECRET}],
        }],
    }


def window(i: int, segment: str = "shop|gpt-4o") -> DriftResult:
    service, model = segment.split("|")
    return DriftResult(
        segment={"service": service, "model": model}, segment_key=segment, record_type="llm",
        window_index=i, n_reference=500, n_current=500, features=[], drift_share=0.9,
        dataset_drift=True, closed_at_unix_nano=i,
    )


def messages(*results: DriftResult) -> list[Message]:
    return [Message(TOPICS.drift, 0, k, b"k", encode(r), 0) for k, r in enumerate(results)]


def events(outputs: list[Output]) -> list[TriggerEvent]:
    return [decode(o.value) for o in outputs]  # type: ignore[misc]


def observer_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "observer.cli", "--config", str(config), *args],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )


def test_held_until_approved_on_the_command_line(tmp_path: Path, trigger_env: Servers) -> None:
    argo_url, contract, hook_url, receiver = trigger_env
    data = trigger_data(tmp_path, argo_url, hook_url)
    stage = TriggerStage(TriggerConfig.model_validate(data), TOPICS)
    (held,) = events(stage.process(messages(window(1), window(2))))
    assert (held.event, held.status) == ("held", "held")
    assert held.reason.endswith("; held for approval")
    # Planned, not attempted: nothing is due, nothing is sent, not even after a restart.
    assert stage.tick() == [] and contract.created == [] and receiver.received == []
    stage.close()
    stage = TriggerStage(TriggerConfig.model_validate(data), TOPICS)
    assert stage.tick() == []
    (decision,) = stage.ledger.list_decisions(approval="held")
    assert {d["action"]: d["status"] for d in decision["deliveries"]} == {
        "webhook": "held", "argo": "held"
    }

    config = tmp_path / "observer.yaml"
    config.write_text(yaml.safe_dump({"trigger": data}))
    done = observer_cli(config, "triggers", "approve", held.episode_id, "--by", "ana",
                        "--note", "checked the dashboard")
    assert done.returncode == 0, done.stderr
    assert f"episode {held.episode_id} approved by ana: 2 held action(s) released" in done.stdout
    again = observer_cli(config, "triggers", "approve", held.episode_id, "--by", "bo")
    assert again.returncode == 0 and "already approved by ana" in again.stdout
    refused = observer_cli(config, "triggers", "reject", held.episode_id)
    assert refused.returncode == 1 and "already approved by ana" in refused.stderr
    unknown = observer_cli(config, "triggers", "approve", "0" * 32)
    assert unknown.returncode == 1 and "no decision with episode id" in unknown.stderr
    listed = observer_cli(config, "triggers", "list")
    assert "approval: approved by ana at " in listed.stdout and "checked the dashboard" in listed.stdout

    out = events(stage.tick())
    approved = out[0]
    assert (approved.event, approved.episode_id, approved.reason) == (
        "approved", held.episode_id, "approved by ana: checked the dashboard"
    )
    assert sorted((e.action, e.status) for e in out[1:]) == [
        ("argo", "delivered"), ("webhook", "delivered")
    ]
    name = f"retrain-{held.episode_id}"
    assert contract.created == [name]
    params = {p["name"]: p["value"] for p in contract.workflows[("argo", name)]["spec"]["arguments"]["parameters"]}
    assert params["approval"] == "none"  # approved already: no suspend step in the run
    (payload,) = receiver.payloads
    assert payload["data"]["episode_id"] == held.episode_id
    # The next tick means the runner published the approval: it is not announced again.
    assert stage.tick() == []
    assert stage.ledger.unannounced_approvals() == []
    stage.close()


def test_approval_announced_again_after_a_crash(tmp_path: Path, trigger_env: Servers) -> None:
    argo_url, _, hook_url, _ = trigger_env
    data = trigger_data(tmp_path, argo_url, hook_url)
    data["policies"][0]["actions"] = []
    data["policies"][0]["webhooks"] = []
    stage = TriggerStage(TriggerConfig.model_validate(data), TOPICS)
    (held,) = events(stage.process(messages(window(1), window(2))))
    stage.ledger.resolve_approval(held.episode_id, "rejected", by="bo", now=time.time())
    (rejected,) = events(stage.tick())
    assert (rejected.event, rejected.reason) == ("rejected", "rejected by bo")
    stage.close()  # gone before the runner produced that tick's outputs
    stage = TriggerStage(TriggerConfig.model_validate(data), TOPICS)
    (again,) = events(stage.tick())
    assert again == rejected
    assert stage.tick() == []
    stage.close()


@pytest.mark.e2e
def test_admin_api_approves_and_rejects_behind_its_token(
    tmp_path: Path, trigger_env: Servers, kafka_config: KafkaConfig, topics: Topics, free_port: Any
) -> None:
    argo_url, contract, hook_url, receiver = trigger_env
    cfg = ObserverConfig(
        kafka=kafka_config,
        admin=AdminConfig(port=free_port(), auth_token=ADMIN_TOKEN),
        trigger=TriggerConfig.model_validate(trigger_data(tmp_path, argo_url, hook_url)),
    )
    runtime = Runtime(cfg, ["trigger"]).start()
    admin = httpx.Client(base_url=runtime.endpoints()["admin"], timeout=10)
    auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    consumer = make_consumer(kafka_config, None, [topics.triggers])
    seen: list[TriggerEvent] = []

    def wait_for(check: Any) -> None:
        deadline = time.monotonic() + 60
        while not check():
            assert time.monotonic() < deadline, seen
            for batch in consumer.poll(200).values():
                seen.extend(decode(r.value) for r in batch)  # type: ignore[misc]

    try:
        producer = make_producer(kafka_config)
        results = [window(1), window(2), window(1, "bank|gpt-4o"), window(2, "bank|gpt-4o")]
        produce_all(producer, [Output(topics.drift, r.segment_key, encode(r)) for r in results], 10)
        producer.close()
        wait_for(lambda: len({e.episode_id for e in seen if e.event == "held"}) == 2)
        shop, bank = (
            next(e.episode_id for e in seen if e.event == "held" and e.segment_key == s)
            for s in ("shop|gpt-4o", "bank|gpt-4o")
        )
        url = f"/api/v1/triggers/{shop}/approve"
        assert admin.post(url).status_code == 401  # the admin token is required
        assert admin.post(url, headers={"authorization": "Bearer wrong"}).status_code == 401
        missing = admin.post("/api/v1/triggers/nope/approve", headers=auth)
        assert missing.status_code == 404 and "no decision with episode id" in missing.json()["detail"]
        assert admin.post(f"/api/v1/triggers/{shop}/promote", headers=auth).status_code == 404
        assert contract.created == []

        ok = admin.post(url, headers=auth, json={"by": "ana", "note": "go"})
        assert ok.status_code == 200, ok.text
        body = ok.json()
        assert body["changed"] and body["decision"]["approval_by"] == "ana"
        assert admin.post(url, headers=auth).json()["changed"] is False  # a retried request
        no = admin.post(f"/api/v1/triggers/{bank}/reject", headers=auth)  # no body: the client
        assert no.status_code == 200 and no.json()["decision"]["approval_by"].startswith("admin-api@")
        conflict = admin.post(f"/api/v1/triggers/{bank}/approve", headers=auth)
        assert conflict.status_code == 409 and "already rejected" in conflict.json()["detail"]

        wait_for(lambda: any(e.event == "delivery" and e.action == "argo" for e in seen))
        wait_for(lambda: {e.event for e in seen} >= {"approved", "rejected"})
        assert contract.created == [f"retrain-{shop}"]  # the rejected one never ran
        assert {p["data"]["episode_id"] for p in receiver.payloads} == {shop}
        listed = admin.get("/api/v1/triggers", headers=auth).json()["decisions"]
        by_id = {d["episode_id"]: d for d in listed}
        assert by_id[shop]["approval"] == "approved"
        assert {d["status"] for d in by_id[bank]["deliveries"]} == {"cancelled"}
    finally:
        consumer.close()
        admin.close()
        runtime.stop()
    assert runtime.errors() == {}
