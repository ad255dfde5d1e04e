"""The trigger stage end to end: drift results in, ledger rows, events and signed webhooks out."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request, Response
from prometheus_client import REGISTRY
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from observer.core.bus import (
    Message,
    Output,
    StageRunner,
    make_consumer,
    make_producer,
    produce_all,
)
from observer.core.config import KafkaConfig
from observer.triggers.config import PolicyConfig, TriggerConfig, WebhookConfig
from observer.core.http import ServerThread
from observer.core.records import DriftResult, LLMCall, TriggerEvent, decode, encode
from observer.core.topics import Topics
from observer.triggers.signing import generate_secret
from observer.triggers.stage import TriggerStage

SECRET = generate_secret()
TOPICS = Topics.from_config(KafkaConfig())


class Receiver:
    """A Standard Webhooks receiver verifying with the reference package; answers from a script."""

    def __init__(self, secret: str) -> None:
        self.verifier = Webhook(secret)
        self.script: list[int] = []
        self.received: list[tuple[dict[str, str], Any]] = []
        app = FastAPI()

        @app.post("/{name}")
        async def hook(name: str, request: Request) -> Response:
            body = await request.body()
            headers = dict(request.headers)
            try:
                payload = self.verifier.verify(body, headers)
            except WebhookVerificationError:
                payload = None
            self.received.append((headers, payload))
            return Response(status_code=self.script.pop(0) if self.script else 204)

        self.app = app


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[ServerThread, Receiver]]:
    receiver = Receiver(SECRET)
    with ServerThread(receiver.app) as srv:
        yield srv, receiver


@pytest.fixture
def receiver(server: tuple[ServerThread, Receiver]) -> Receiver:
    server[1].script.clear()
    server[1].received.clear()
    return server[1]


class Clock:
    """Real time that a test can move forward (signatures use the true time regardless)."""

    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def config(tmp_path: Path, url: str | None, **policy: Any) -> TriggerConfig:
    hooks = (
        []
        if url is None
        else [
            WebhookConfig(
                url=url,
                secret=SECRET,
                timeout_s=2.0,
                max_attempts=3,
                backoff_initial_s=1.0,
                backoff_max_s=4.0,
            )
        ]
    )
    opts: dict[str, Any] = {
        "name": "retrain",
        "threshold": 0.5,
        "consecutive_windows": 2,
        "min_samples": 100,
        "cooldown_s": 3600,
        "webhooks": hooks,
        **policy,
    }
    return TriggerConfig(
        ledger_path=tmp_path / "state" / "ledger.sqlite", policies=[PolicyConfig(**opts)]
    )


def window(i: int, share: float, segment: str = "shop|gpt-4o") -> DriftResult:
    service, model = segment.split("|")
    return DriftResult(
        segment={"service": service, "model": model},
        segment_key=segment,
        record_type="llm",
        window_index=i,
        n_reference=500,
        n_current=500,
        features=[],
        drift_share=share,
        dataset_drift=share >= 0.5,
        closed_at_unix_nano=time.time_ns(),
    )


def messages(*records: Any) -> list[Message]:
    return [
        Message(TOPICS.drift, 0, k, b"k", r if isinstance(r, bytes) else encode(r), 0)
        for k, r in enumerate(records)
    ]


def events(outputs: list[Output]) -> list[TriggerEvent]:
    assert all(o.topic == TOPICS.triggers for o in outputs)
    out = [decode(o.value) for o in outputs]
    typed = [e for e in out if isinstance(e, TriggerEvent)]
    assert len(typed) == len(out)
    assert all(o.key == f"{e.policy}/{e.segment_key}" for o, e in zip(outputs, typed))
    return typed


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_fired_decision_is_recorded_then_delivered(
    tmp_path: Path, server: Any, receiver: Receiver
) -> None:
    url = f"{server[0].url}/hook?token=s3cret"
    fired_before = metric("observer_triggers_total", policy="retrain", kind="fired")
    delivered_before = metric("observer_webhook_deliveries_total", outcome="delivered")
    stage = TriggerStage(config(tmp_path, url), TOPICS, clock=Clock())
    assert stage.name == "trigger"

    (fired,) = events(stage.process(messages(window(1, 0.2), window(2, 0.7), window(3, 0.8))))
    assert (fired.event, fired.policy, fired.segment_key, fired.window_index) == (
        "fired",
        "retrain",
        "shop|gpt-4o",
        3,
    )
    assert fired.reason == "drift_share 0.7 >= 0.5 for 2 consecutive windows (windows 2-3, n=500)"
    # The ledger has the decision and its pending delivery before anything was sent.
    assert receiver.received == []
    (decision,) = stage.ledger.list_decisions()
    assert decision["episode_id"] == fired.episode_id
    (delivery,) = decision["deliveries"]
    assert delivery["status"] == "pending" and delivery["target"] == f"{server[0].url}/hook"

    (outcome,) = events(stage.tick())
    assert (outcome.event, outcome.action, outcome.status, outcome.attempts) == (
        "delivery",
        "webhook",
        "delivered",
        1,
    )
    assert outcome.target == f"{server[0].url}/hook"  # no query string: it may hold a token
    assert outcome.episode_id == fired.episode_id
    ((headers, payload),) = receiver.received
    assert payload is not None, "standardwebhooks rejected the signature"
    assert headers["webhook-id"] == delivery["delivery_id"]
    assert payload["data"]["episode_id"] == fired.episode_id
    assert payload["data"]["drift"]["window_index"] == 3
    assert stage.ledger.get_decision(fired.episode_id)["deliveries"][0]["status"] == "delivered"  # type: ignore[index]
    assert stage.tick() == []
    assert metric("observer_triggers_total", policy="retrain", kind="fired") == fired_before + 1
    assert metric("observer_webhook_deliveries_total", outcome="delivered") == delivered_before + 1
    stage.close()


def test_suppressed_and_undecodable(tmp_path: Path, server: Any, receiver: Receiver) -> None:
    errors_before = metric("observer_trigger_errors_total")
    stage = TriggerStage(config(tmp_path, f"{server[0].url}/hook"), TOPICS, clock=Clock())
    llm = LLMCall(service="shop", model="gpt-4o", trace_id="t", span_id="s")
    outputs = stage.process(
        messages(
            window(1, 0.9),
            b"not json",
            window(2, 0.9),
            encode(llm),
            b'{"schema": "nope"}',
            window(3, 0.9),
            window(4, 0.9),
        )
    )
    dead = [json.loads(o.value) for o in outputs if o.topic == TOPICS.dead_letter]
    assert [(d["reason"], d["source"]["offset"]) for d in dead] == [
        ("decode_error", 1), ("schema_error", 3), ("schema_error", 4)
    ]
    out = events([o for o in outputs if o.topic != TOPICS.dead_letter])
    assert [e.event for e in out] == ["fired", "suppressed"]
    assert metric("observer_trigger_errors_total") == errors_before + 3
    suppressed = stage.ledger.list_decisions(kind="suppressed")
    assert len(suppressed) == 1 and suppressed[0]["deliveries"] == []  # recorded, no action
    assert "cooldown 3600s" in suppressed[0]["reason"]
    assert len(events(stage.tick())) == 1  # only the fired one is delivered
    stage.close()


def test_restart_resumes_delivery_and_does_not_decide_again(
    tmp_path: Path, server: Any, receiver: Receiver
) -> None:
    receiver.script.append(503)
    clock = Clock()
    cfg = config(tmp_path, f"{server[0].url}/hook")
    results = messages(window(1, 0.9), window(2, 0.9))
    stage = TriggerStage(cfg, TOPICS, clock=clock, rng=lambda: 1.0)
    (fired,) = events(stage.process(results))
    (failed,) = events(stage.tick())
    assert (failed.status, failed.attempts, failed.reason) == (
        "failed",
        1,
        "HTTP 503; attempt 2 in 1s",
    )
    assert stage.tick() == []  # not due yet
    stage.close()  # the process goes away with the delivery still owed

    clock.advance(1.0)
    again = TriggerStage(cfg, TOPICS, clock=clock)
    # The same drift results replayed (the consumer group re-delivers after a crash): the run
    # gets the same episode id, the ledger refuses it, and the event is announced as recorded.
    (replayed,) = events(again.process(results))
    assert replayed == fired
    assert len(again.ledger.list_decisions()) == 1
    (delivered,) = events(again.tick())
    assert (delivered.status, delivered.attempts) == ("delivered", 2)
    first, second = receiver.received
    assert first[0]["webhook-id"] == second[0]["webhook-id"]  # the idempotency key survives
    assert second[1] is not None
    assert again.tick() == []
    # Cooldown is restored from the ledger: a new run for the segment is suppressed.
    (later,) = events(again.process(messages(window(3, 0.9), window(4, 0.9))))
    assert later.event == "suppressed"
    again.close()


def test_410_disables_the_target(tmp_path: Path, server: Any, receiver: Receiver) -> None:
    receiver.script.append(410)
    stage = TriggerStage(
        config(tmp_path, f"{server[0].url}/gone", cooldown_s=0),
        TOPICS,
        clock=Clock(),
        max_deliveries_per_tick=1,
    )
    fired = events(stage.process(messages(*(window(i, 0.9) for i in range(1, 7)))))
    assert [e.event for e in fired] == ["fired"] * 3
    out = events(stage.tick())
    # One attempt answered 410; the two other open deliveries to that target stop with it.
    assert [(e.status, e.attempts) for e in out] == [
        ("disabled", 1),
        ("disabled", 0),
        ("disabled", 0),
    ]
    assert len(receiver.received) == 1
    assert stage.tick() == []
    # Later decisions for the target are recorded as disabled, not sent.
    out = events(stage.process(messages(window(7, 0.9), window(8, 0.9))))
    assert [(e.event, e.status) for e in out] == [("fired", ""), ("delivery", "disabled")]
    assert stage.tick() == [] and len(receiver.received) == 1
    stage.close()


def test_tick_is_bounded_and_unconfigured_targets_dead_letter(
    tmp_path: Path, server: Any, receiver: Receiver
) -> None:
    clock = Clock()
    cfg = config(tmp_path, f"{server[0].url}/hook", cooldown_s=0)
    stage = TriggerStage(cfg, TOPICS, clock=clock, max_deliveries_per_tick=2)
    stage.process(messages(*(window(i, 0.9) for i in range(1, 7))))
    assert len(stage.tick()) == 2
    assert len(stage.tick()) == 1
    assert len(receiver.received) == 3
    stage.process(messages(window(7, 0.9), window(8, 0.9)))
    stage.close()

    # The webhook left the configuration: its owed delivery can never be signed.
    gone = TriggerStage(config(tmp_path, None, cooldown_s=0), TOPICS, clock=clock)
    (out,) = events(gone.tick())
    assert (out.status, out.attempts) == ("dead_letter", 0)
    assert "configuration" in out.reason
    gone.close()


def test_unusable_secret_is_refused_at_start(tmp_path: Path) -> None:
    hook = WebhookConfig(url="http://h/x?token=t", secret="whsec_***")
    cfg = TriggerConfig(ledger_path=tmp_path / "l.sqlite", policies=[PolicyConfig(webhooks=[hook])])
    with pytest.raises(ValueError, match=r"webhook http://h/x: webhook secret is not") as err:
        TriggerStage(cfg, TOPICS)
    assert "***" not in str(err.value) and "token" not in str(err.value)


def test_duplicate_policy_names_are_refused(tmp_path: Path) -> None:
    cfg = TriggerConfig(
        ledger_path=tmp_path / "l.sqlite", policies=[PolicyConfig(name="a"), PolicyConfig(name="a")]
    )
    with pytest.raises(ValueError, match="unique"):
        TriggerStage(cfg, TOPICS)


@pytest.mark.e2e
def test_on_the_broker(
    tmp_path: Path, kafka_config: KafkaConfig, topics: Topics, server: Any, receiver: Receiver
) -> None:
    stage = TriggerStage(config(tmp_path, f"{server[0].url}/hook"), topics)
    producer = make_producer(kafka_config)
    produce_all(
        producer, [Output(topics.drift, "shop|gpt-4o", encode(window(i, 0.9))) for i in (1, 2)], 10
    )
    producer.close()
    runner = StageRunner(kafka_config, stage, "g-trigger", [topics.drift])
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,))
    thread.start()
    consumer = make_consumer(kafka_config, None, [topics.triggers])
    got: list[TriggerEvent] = []
    deadline = time.monotonic() + 30
    while len(got) < 2 and time.monotonic() < deadline:
        for records in consumer.poll(200).values():
            got += [decode(r.value) for r in records]  # type: ignore[misc]
    consumer.close()
    stop.set()
    thread.join(10)
    stage.close()
    assert runner.error is None
    assert [(e.event, e.status) for e in got] == [("fired", ""), ("delivery", "delivered")]
    assert len(receiver.received) == 1 and receiver.received[0][1] is not None
