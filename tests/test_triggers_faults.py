"""Fault tests: a killed trigger stage, a restart, and a storm of drift results.

The stage runs in a child process that is killed with SIGKILL at the worst moments: right
after the decision and its outbox rows are committed (nothing sent yet), and while Argo is
accepting the submission (the outcome never recorded). A restarted stage must then start
exactly one Argo run and deliver the webhook with the same ``webhook-id``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from observer.core.bus import (
    Message,
    Output,
    StageRunner,
    make_consumer,
    make_producer,
    produce_all,
)
from observer.core.config import KafkaConfig
from observer.triggers.config import TriggerConfig
from observer.core.records import DriftResult, TriggerEvent, decode, encode
from observer.core.topics import Topics
from tests.triggers_support import ARGO_TOKEN, ROOT, SECRET, Servers
from observer.triggers.stage import TriggerStage

TOPICS = Topics.from_config(KafkaConfig())


def config_data(tmp_path: Path, argo_url: str, hook_url: str, **policy: Any) -> dict[str, Any]:
    return {
        "ledger_path": str(tmp_path / "ledger.sqlite"),
        "argo": {"server": argo_url, "token": ARGO_TOKEN, "busy_retry_s": 1.0},
        "policies": [{
            "name": "retrain", "threshold": 0.5, "consecutive_windows": 2, "min_samples": 10,
            "cooldown_s": 3600, "actions": ["argo"],
            "webhooks": [{"url": hook_url, "secret": SECRET, "backoff_initial_s": 0.1}],
            **policy,
        }],
    }


def window(i: int, share: float = 0.9, segment: str = "shop|gpt-4o") -> DriftResult:
    service, model = segment.split("|")
    return DriftResult(
        segment={"service": service, "model": model}, segment_key=segment, record_type="llm",
        window_index=i, n_reference=500, n_current=500, features=[], drift_share=share,
        dataset_drift=share >= 0.5, closed_at_unix_nano=0,
    )


def messages(*results: DriftResult) -> list[Message]:
    return [Message(TOPICS.drift, 0, k, b"k", encode(r), 0) for k, r in enumerate(results)]


# The child: decide (ledger committed), optionally tick, then die without closing anything.
CHILD = textwrap.dedent("""
    import json, os, signal, sys
    from observer.core.config import KafkaConfig
    from observer.triggers.config import TriggerConfig
    from observer.core.bus import Message
    from observer.core.records import decode
    from observer.core.topics import Topics
    from observer.triggers.stage import TriggerStage

    cfg = TriggerConfig.model_validate(json.loads(sys.argv[1]))
    values = [bytes.fromhex(v) for v in json.loads(sys.argv[2])]
    tick = sys.argv[3] == "tick"
    topics = Topics.from_config(KafkaConfig())
    stage = TriggerStage(cfg, topics)
    stage.process([Message(topics.drift, 0, k, b"k", v, 0) for k, v in enumerate(values)])
    print("decided", flush=True)
    if tick:
        while True:
            stage.tick()
    os.kill(os.getpid(), signal.SIGKILL)
""")


def run_child(cfg: dict[str, Any], results: list[DriftResult], mode: str) -> subprocess.Popen[str]:
    values = json.dumps([encode(r).hex() for r in results])
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(cfg), values, mode],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )


def restart_and_deliver(cfg: dict[str, Any], results: list[DriftResult]) -> TriggerStage:
    stage = TriggerStage(TriggerConfig.model_validate(cfg), TOPICS)
    # The consumer group never committed: the same drift results come again.
    replayed = [decode(o.value) for o in stage.process(messages(*results))]
    assert [e.event for e in replayed] == ["fired"]  # announced as recorded, not decided again
    deadline = time.monotonic() + 30
    while stage.ledger.due_deliveries(time.time()) or any(
        d["status"] in ("pending", "failed")
        for d in stage.ledger.list_decisions()[0]["deliveries"]
    ):
        assert time.monotonic() < deadline, stage.ledger.list_decisions()
        stage.tick()
        time.sleep(0.05)
    return stage


def test_killed_after_the_ledger_write_resumes_with_one_run(tmp_path: Path, trigger_env: Servers) -> None:
    argo_url, contract, hook_url, receiver = trigger_env
    cfg = config_data(tmp_path, argo_url, hook_url)
    results = [window(1), window(2)]
    child = run_child(cfg, results, "die")
    out, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err
    assert "decided" in out
    # Killed between the ledger write and any delivery: all owed, nothing sent.
    assert contract.created == [] and receiver.received == []

    stage = restart_and_deliver(cfg, results)
    (decision,) = stage.ledger.list_decisions()
    rows = {d["action"]: d for d in decision["deliveries"]}
    assert rows["argo"]["status"] == rows["webhook"]["status"] == "delivered"
    assert contract.created == [f"retrain-{decision['episode_id']}"]
    assert receiver.received and all(p is not None for _, p in receiver.received)
    assert {i for i, _ in receiver.received} == {rows["webhook"]["delivery_id"]}
    stage.close()


def test_killed_while_argo_accepts_submits_once(tmp_path: Path, trigger_env: Servers) -> None:
    argo_url, contract, hook_url, receiver = trigger_env
    cfg = config_data(tmp_path, argo_url, hook_url)
    results = [window(1), window(2)]
    box: dict[str, subprocess.Popen[str]] = {}
    # Argo has created the workflow; the child dies before it hears back.
    contract.on_create.append(lambda name: box["child"].kill())
    box["child"] = child = run_child(cfg, results, "tick")
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    (name,) = contract.created
    contract.on_create.clear()
    contract.complete("argo", name)  # it even finished: the in-progress check cannot see it

    stage = restart_and_deliver(cfg, results)
    assert contract.created == [name]  # the repeat was answered 409, not run again
    (decision,) = stage.ledger.list_decisions()
    rows = {d["action"]: d for d in decision["deliveries"]}
    assert rows["argo"]["status"] == "delivered" and rows["argo"]["last_status_code"] == 409
    assert {i for i, _ in receiver.received} == {rows["webhook"]["delivery_id"]}
    stage.close()


def episodes(events: list[TriggerEvent], kind: str) -> set[str]:
    return {e.episode_id for e in events if e.event == kind}


@pytest.mark.e2e
def test_storm_inside_the_cooldown_starts_one_run(
    tmp_path: Path, trigger_env: Servers, kafka_config: KafkaConfig, topics: Topics
) -> None:
    argo_url, contract, hook_url, receiver = trigger_env
    cfg = TriggerConfig.model_validate(config_data(tmp_path, argo_url, hook_url))
    # Forty windows of one segment, every one drifted, some delivered twice (at least once).
    storm = [window(i) for i in range(1, 41)] + [window(i) for i in (7, 8, 9)]
    producer = make_producer(kafka_config)
    produce_all(producer, [Output(topics.drift, "shop|gpt-4o", encode(r)) for r in storm], 10)
    producer.close()
    stage = TriggerStage(cfg, topics)
    runner = StageRunner(kafka_config, stage, "g-storm", [topics.drift])
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,))
    thread.start()
    consumer = make_consumer(kafka_config, None, [topics.triggers])
    got: list[TriggerEvent] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for batch in consumer.poll(200).values():
            got += [decode(r.value) for r in batch]  # type: ignore[misc]
        if len(episodes(got, "suppressed")) == 19 and len(episodes(got, "delivery")) == 1:
            break
    consumer.close()
    stop.set()
    thread.join(15)
    assert runner.error is None
    # A replayed window re-announces its episode as recorded: count episodes, not events.
    assert len(episodes(got, "fired")) == 1 and len(episodes(got, "suppressed")) == 19
    assert episodes(got, "delivery") == episodes(got, "fired")
    assert len(contract.created) == 1
    assert len({i for i, _ in receiver.received}) == 1
    stage.close()
