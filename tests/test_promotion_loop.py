"""Promotion closes the episode (issue 17): drift fires, the run is submitted to the contract
Argo server and succeeds, the pipeline's signed callback reports the promotion, the drift
engine re-baselines on the promoted model's traffic and the next window clears the episode;
a rollback keeps the old reference and re-opens it. The loop runs on the shared broker with
the drift engine and the trigger stage in their own StageRunners; the callback goes over real
HTTP through the admin API, signed with observer's signer and verified by the route."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
from observer.drift.config import DriftConfig, FeatureSpec
from observer.drift.engine import DriftEngine
from observer.triggers.admin_routes import stage_life, stage_promote, trigger_router
from observer.triggers.config import (
    ArgoConfig,
    PolicyConfig,
    PromotionConfig,
    RunsConfig,
    TriggerConfig,
)
from observer.triggers.pipeline import notify
from observer.triggers.pipeline.render import workflow_template
from observer.triggers.pipeline.validate import validate_argo
from observer.triggers.promotion_callback import promotion_body
from observer.triggers.signing import generate_secret, signed_headers
from observer.triggers.stage import TriggerStage
from prometheus_client import REGISTRY

from observer.admin import create_admin_app
from observer.core.bus import Message, StageRunner, make_consumer, make_producer
from observer.core.config import AdminConfig, KafkaConfig
from observer.core.http import ServerThread
from observer.core.records import (
    LLMCall,
    ReferenceCommand,
    ReferenceState,
    TriggerEvent,
    decode,
    encode,
)
from observer.core.topics import Topics
from tests.drift_support import TOPICS as UNIT_TOPICS
from tests.drift_support import Runner
from tests.test_triggers_argo import Clock, messages, window
from tests.triggers_support import ARGO_TOKEN, SCHEMAS, Servers

T = TypeVar("T")
SEGMENT = "shop|m1"
PROMOTION_SECRET = generate_secret()
ADMIN_TOKEN = "adm1n"
FEATURES = {"llm": [FeatureSpec(name="output_tokens", kind="numeric")]}


def drift_config() -> DriftConfig:
    return DriftConfig(window_size=20, reference="first_window", numeric_method="ks",
                       features=FEATURES)  # type: ignore[arg-type]


def trigger_config(tmp_path: Path, argo_url: str, *, secret: str | None = PROMOTION_SECRET,
                   poll_s: float = 0.2) -> TriggerConfig:
    policy = PolicyConfig(name="loop", threshold=0.5, consecutive_windows=2, min_samples=10,
                          cooldown_s=0, clear_windows=2, actions=["argo"],
                          max_concurrent_runs=5)
    return TriggerConfig(
        ledger_path=tmp_path / "ledger.sqlite", policies=[policy],
        argo=ArgoConfig(server=argo_url, token=ARGO_TOKEN),
        runs=RunsConfig(poll_interval_s=poll_s),
        promotion=PromotionConfig(secret=secret),  # type: ignore[arg-type]
    )


def until(what: Callable[[], T | None], why: str, timeout_s: float = 60.0) -> T:
    """Wait for ``what`` to answer something truthy (a bound, not a speed assertion)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {why}")


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- the callback over HTTP ---------------------------------------------------------------


@contextmanager
def admin_api(stage: TriggerStage) -> Iterator[httpx.Client]:
    """The admin API (token on) with the trigger routes over ``stage``."""
    router = trigger_router(None, promote=lambda *a: stage_promote(stage, *a),
                            life=lambda e: stage_life(stage, e))
    app = create_admin_app(AdminConfig(auth_token=ADMIN_TOKEN), kafka_ready=lambda: True,
                           stage_errors=dict, routers=[router])
    with ServerThread(app) as server, httpx.Client(
        base_url=server.url, timeout=10, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ) as client:
        yield client


def callback(client: httpx.Client, episode: str, body: bytes, *, secret: str = PROMOTION_SECRET,
             msg_id: str | None = None, at: float | None = None) -> httpx.Response:
    """POST a promotion callback signed as the pipeline step signs it."""
    headers = signed_headers(secret, msg_id or f"msg_{uuid.uuid4().hex}",
                             int(time.time() if at is None else at), body)
    return client.post(f"/api/v1/episodes/{episode}/promotion", content=body,
                       headers={**headers, "content-type": "application/json"})


# -- the loop on the broker ---------------------------------------------------------------


class Feed:
    """LLM calls of one segment to the broker: output_tokens around 200 x ``scale``."""

    def __init__(self, kafka: KafkaConfig, topics: Topics, seed: int = 7) -> None:
        self.rng = np.random.default_rng(seed)
        self.producer = make_producer(kafka)
        self.topic = topics.llm

    def calls(self, n: int, scale: float, model: str = "m1") -> None:
        for _ in range(n):
            rec = LLMCall(service="shop", model=model, trace_id=uuid.uuid4().hex, span_id="s",
                          output_tokens=int(self.rng.lognormal(np.log(200 * scale), 0.2)))
            self.producer.send(self.topic, key=f"shop|{model}".encode(), value=encode(rec))
        self.producer.flush(30)

    def close(self) -> None:
        self.producer.close(5)


class Topic:
    """Everything on one topic so far, decoded (its own consumer, no group)."""

    def __init__(self, kafka: KafkaConfig, topic: str) -> None:
        self.consumer = make_consumer(kafka, None, [topic])
        self.records: list[Any] = []

    def read(self) -> list[Any]:
        for batch in self.consumer.poll(200).values():
            self.records += [decode(m.value) for m in batch]
        return self.records

    def close(self) -> None:
        self.consumer.close()


@contextmanager
def running(kafka: KafkaConfig, processor: Any, topics: list[str]) -> Iterator[None]:
    runner = StageRunner(kafka, processor, f"g-{uuid.uuid4().hex[:8]}", topics)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(15)
        assert runner.error is None, runner.error


@contextmanager
def loop(tmp_path: Path, kafka: KafkaConfig, topics: Topics, servers: Servers
         ) -> Iterator[tuple[TriggerStage, Feed, Topic, Topic, httpx.Client]]:
    """The drift engine (checkpoints on the broker) and the trigger stage, running; the feed,
    the triggers and references topics, and an admin API client."""
    engine = DriftEngine.for_kafka(drift_config(), kafka, topics)
    stage = TriggerStage(trigger_config(tmp_path, servers[0]), topics, kafka=kafka)
    feed, events, refs = Feed(kafka, topics), Topic(kafka, topics.triggers), Topic(
        kafka, topics.references)
    try:
        with running(kafka, engine, engine.inputs), running(
            kafka, stage, [topics.drift, topics.references]
        ), admin_api(stage) as client:
            yield stage, feed, events, refs, client
    finally:
        feed.close(), events.close(), refs.close()
        stage.close()


def fired_and_succeeded(stage: TriggerStage, feed: Feed, servers: Servers) -> tuple[str, str]:
    """Reference, then drift until the policy fires; the run submitted and succeeded. The
    episode id and the run's name."""
    feed.calls(20, 1.0)  # window 0: reference v1
    feed.calls(40, 3.0)  # windows 1, 2 drift: the policy fires
    run = until(lambda: next(iter(stage.runs.store.runs()), None), "the run's submission")
    contract = servers[1]
    contract.complete("argo", run.name)
    until(lambda: stage.runs.store.runs()[0].outcome == "succeeded", "run_succeeded")
    return run.episode_id, run.name


def of(events: Topic, kind: str) -> list[TriggerEvent]:
    return [e for e in events.read() if isinstance(e, TriggerEvent) and e.event == kind]


def test_promotion_rebaselines_and_the_promoted_traffic_clears_the_episode(
    tmp_path: Path, kafka_config: KafkaConfig, topics: Topics, trigger_env: Servers
) -> None:
    closed = sample("observer_episodes_closed_total", policy="loop", how="resolved")
    counted = {s: sample("observer_episode_steps_total", policy="loop", step=s)
               for s in ("promoted", "rebaselined", "cleared")}
    with loop(tmp_path, kafka_config, topics, trigger_env) as (stage, feed, events, refs, client):
        episode, run = fired_and_succeeded(stage, feed, trigger_env)
        # What the rendered pipeline's notify-promotion step runs.
        status = notify.send(str(client.base_url), episode, run, "m1-v2", "promoted",
                             PROMOTION_SECRET, token=ADMIN_TOKEN, attempts=1)
        assert status == 200
        assert stage.life.promotion(episode)["outcome"] == "promoted"  # type: ignore[index]
        # The engine starts collecting v2 from the next records: the promoted model's traffic.
        until(lambda: any(isinstance(s, ReferenceState) and s.collecting for s in refs.read()),
              "the engine collecting v2")
        feed.calls(20, 3.0)  # v2: the promoted model's (drifted) distribution
        feed.calls(40, 3.0)  # scored against v2: no drift
        life = until(lambda: (lf := stage.life.life(episode))["status"] == "resolved" and lf,
                     "the episode to clear")
        assert until(lambda: of(events, "cleared"), "the cleared event")

        # The ledger shows the whole life, in order, through the admin API too.
        shown = client.get(f"/api/v1/episodes/{episode}").json()
        steps = [s["step"] for s in shown["steps"]]
        main = ["fired", "submitted", "run_succeeded", "promoted", "rebaselined", "cleared"]
        assert [s for s in steps if s in main] == main, steps
        assert shown["status"] == "resolved" and shown["resolution"] == f"resolved by run {run}"
        assert life["promotion"]["new_version"] == 2
        (cleared,) = of(events, "cleared")
        assert cleared.episode_id == episode and f"resolved by run {run}" in cleared.reason
        assert "reference v2 did not drift" in cleared.reason
        assert [e.event for e in of(events, "promoted") + of(events, "rebaselined")] == [
            "promoted", "rebaselined"]

        # v2 came from the promotion, with its provenance; v1 is kept in the history.
        state = [s for s in refs.read() if isinstance(s, ReferenceState)][-1]
        assert state.current == 2
        assert [(v.version, v.source) for v in state.versions] == [
            (1, "first_window"), (2, "promotion")]
        detail = state.versions[1].detail
        assert (detail["run"], detail["model_version"], detail["episode_id"]) == (
            run, "m1-v2", episode)
        assert state.versions[1].n == 20 and state.versions[0].values_kept

        # The promoted traffic scored against v2 does not drift.
        drift = Topic(kafka_config, topics.drift)
        until(lambda: any(r.reference_version == 2 for r in drift.read()), "results against v2")
        drift.close()
        against_v2 = [r for r in drift.records if r.reference_version == 2]
        assert against_v2 and not any(r.dataset_drift for r in against_v2)
        assert any(r.dataset_drift for r in drift.records if r.reference_version == 1)
    assert sample("observer_episodes_closed_total", policy="loop", how="resolved") == closed + 1
    for step, before in counted.items():  # the dashboard's annotations count these
        assert sample("observer_episode_steps_total", policy="loop", step=step) == before + 1


def test_rollback_keeps_the_old_reference_and_reopens_the_episode(
    tmp_path: Path, kafka_config: KafkaConfig, topics: Topics, trigger_env: Servers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    commands = Topic(kafka_config, topics.drift_commands)
    rolled = sample("observer_episode_steps_total", policy="loop", step="rolled_back")
    with loop(tmp_path, kafka_config, topics, trigger_env) as (stage, feed, events, refs, client):
        episode, run = fired_and_succeeded(stage, feed, trigger_env)
        # The exit handler's notify-rollback step, as the workflow's pod runs it.
        monkeypatch.setenv(notify.SECRET_ENV, PROMOTION_SECRET)
        monkeypatch.setenv(notify.TOKEN_ENV, ADMIN_TOKEN)
        assert notify.main(["--url", str(client.base_url), "--episode", episode, "--run", run,
                            "--model-version", "m1", "--outcome", "rolled_back"]) == 0
        until(lambda: of(events, "reopened"), "the reopened event")
        life = stage.life.life(episode)
        assert life["status"] == "reopened" and life["resolution"] is None
        assert [s["step"] for s in life["steps"]][-2:] == ["rolled_back", "reopened"]
        # The drift goes on: scored against v1 still, the re-armed policy fires again.
        feed.calls(40, 3.0)
        again = until(lambda: [e for e in of(events, "fired") if e.episode_id != episode],
                      "a new episode")
        assert again[0].segment_key == SEGMENT
        assert commands.read() == []  # no re-baselining was asked for
        states = [s for s in refs.read() if isinstance(s, ReferenceState)]
        assert {s.current for s in states} == {1}
    commands.close()
    assert sample("observer_episode_steps_total", policy="loop", step="rolled_back") == rolled + 1


# -- the callback's refusals --------------------------------------------------------------


@pytest.fixture
def fired(tmp_path: Path, trigger_env: Servers) -> Iterator[tuple[TriggerStage, str, str]]:
    """A trigger stage (test clock) whose episode's run is submitted, not finished."""
    stage = TriggerStage(trigger_config(tmp_path, trigger_env[0]), UNIT_TOPICS, clock=Clock())
    stage.process(messages(window(1, 0.9, SEGMENT), window(2, 0.9, SEGMENT)))
    stage.tick()
    (run,) = stage.runs.store.runs()
    yield stage, run.episode_id, run.name
    stage.close()


def test_callback_refusals_name_the_problem(
    fired: tuple[TriggerStage, str, str], trigger_env: Servers
) -> None:
    stage, episode, run = fired
    body = promotion_body(run, "m1-v2")
    with admin_api(stage) as client:
        unsigned = client.post(f"/api/v1/episodes/{episode}/promotion", content=body)
        forged = callback(client, episode, body, secret=generate_secret())
        stale = callback(client, episode, body, at=time.time() - 3600)
        unknown = callback(client, "0" * 32, body)
        early = callback(client, episode, body)  # the run has not started
        bad = callback(client, episode, json.dumps({"run": run, "model_version": "v2",
                                                    "outcome": "shipped"}).encode())
        extra = callback(client, episode, body[:-1] + b',"evil":1}')
        no_token = httpx.post(f"{client.base_url}/api/v1/episodes/{episode}/promotion",
                              content=body)
        # The pipeline's promote step reports from inside the run: Running is enough.
        trigger_env[1].advance(run, "Running")
        stage.clock.advance(60)  # type: ignore[attr-defined]
        stage.tick()  # polls: Running
        ok = callback(client, episode, body, msg_id="msg_once")
        replay = callback(client, episode, body, msg_id="msg_once")
        twice = callback(client, episode, promotion_body(run, "m1-v3"))
        wrong_run = callback(client, episode, promotion_body("retrain-other", "v2"))
    assert (unsigned.status_code, forged.status_code, stale.status_code) == (401, 401, 401)
    assert "missing webhook-id header" in unsigned.json()["detail"]
    assert "no matching signature" in forged.json()["detail"]
    assert "outside the tolerance" in stale.json()["detail"]
    assert unknown.status_code == 404 and "no decision with episode id" in unknown.json()["detail"]
    assert early.status_code == 409
    assert early.json()["detail"] == f"run {run} cannot be promoted: it has not started (it is submitted)"
    assert bad.status_code == 422 and "outcome" in bad.json()["detail"]
    assert extra.status_code == 422 and "evil" in extra.json()["detail"]
    assert no_token.status_code == 401  # the admin token first, like every admin route
    assert ok.status_code == 200, ok.text
    assert replay.status_code == 409 and "replay" in replay.json()["detail"]
    assert twice.status_code == 409 and "already promoted" in twice.json()["detail"]
    assert wrong_run.status_code == 409
    # Only the accepted callback is in the ledger.
    steps = [s["step"] for s in stage.life.life(episode)["steps"]]
    assert steps.count("promoted") == 1


def test_a_failed_run_cannot_be_promoted_but_can_be_rolled_back(
    fired: tuple[TriggerStage, str, str], trigger_env: Servers
) -> None:
    stage, _, _ = fired
    stage.process(messages(window(1, 0.9, "bank|m1"), window(2, 0.9, "bank|m1")))
    stage.tick()
    run = next(r for r in stage.runs.store.runs() if r.segment_key == "bank|m1")
    contract = trigger_env[1]
    contract.advance(run.name, "Running")
    contract.advance(run.name, "Failed", message="train OOMKilled")
    stage.clock.advance(60)  # type: ignore[attr-defined]
    stage.tick()
    with admin_api(stage) as client:
        promoted = callback(client, run.episode_id, promotion_body(run.name, "v2"))
        rolled = callback(client, run.episode_id, promotion_body(run.name, "v1", "rolled_back"))
    assert promoted.status_code == 409
    assert promoted.json()["detail"] == (
        f"run {run.name} cannot be promoted: it did not succeed (it is failed)")
    assert rolled.status_code == 200, rolled.text
    events = [decode(o.value) for o in stage.tick()]
    assert [e.event for e in events if e.event in ("rolled_back", "reopened")] == [
        "rolled_back", "reopened"]
    assert stage.life.life(run.episode_id)["status"] == "reopened"


def test_without_a_secret_callbacks_are_refused(tmp_path: Path, trigger_env: Servers) -> None:
    stage = TriggerStage(trigger_config(tmp_path, trigger_env[0], secret=None), UNIT_TOPICS,
                         clock=Clock())
    with admin_api(stage) as client:
        answer = callback(client, "e1", promotion_body("r", "v"))
    stage.close()
    assert answer.status_code == 503 and "trigger.promotion.secret" in answer.json()["detail"]


# -- the engine's side ----------------------------------------------------------------------


def _calls(rng: np.random.Generator, offset: int, n: int, scale: float, model: str,
           every: int = 1) -> list[Message]:
    """``n`` calls of ``model`` at offsets ``offset``, ``offset + every``, ..."""
    out = []
    for i in range(n):
        rec = LLMCall(service="shop", model=model, trace_id=uuid.uuid4().hex, span_id="s",
                      output_tokens=int(rng.lognormal(np.log(200 * scale), 0.2)))
        at = offset + i * every
        out.append(Message(UNIT_TOPICS.llm, 0, at, b"shop", encode(rec), 1_700_000_000_000 + at))
    return out


def _promotion(offset: int, **fields: Any) -> Message:
    cmd = ReferenceCommand(command_id=uuid.uuid4().hex, command="rebaseline", segment_key="shop",
                           record_type="llm", source="promotion", episode_id="e1",
                           run="retrain-e1", model_version="m2", **fields)
    return Message(UNIT_TOPICS.drift_commands, 0, offset, b"llm/shop", encode(cmd), 1_700_000_100_000)


def _step(runner: Runner, engine: Any, batch: list[Message]) -> list[Any]:
    outputs = engine.process(batch) + engine.tick()
    runner.acknowledge(outputs)
    runner.commit(batch)
    return [decode(o.value) for o in outputs if o.topic == UNIT_TOPICS.references]


def test_promotion_collects_only_the_promoted_models_records() -> None:
    rng = np.random.default_rng(3)
    runner = Runner(DriftConfig(window_size=20, reference="first_window", numeric_method="ks",
                                features=FEATURES, segment_keys=["service"]))  # type: ignore[arg-type]
    engine = runner.engine()
    _step(runner, engine, _calls(rng, 0, 20, 1.0, "m1"))
    _step(runner, engine, [_promotion(0, model_field="model")])
    # Old and promoted model interleaved: only m2's 20 records make v2.
    mixed = [m for pair in zip(_calls(rng, 20, 20, 1.0, "m1", every=2),
                               _calls(rng, 21, 20, 3.0, "m2", every=2)) for m in pair]
    state = _step(runner, engine, mixed)[-1]
    assert state.current == 2 and state.versions[1].source == "promotion"
    assert (state.versions[1].n, state.versions[1].detail["model_field"]) == (20, "model")
    # v2 holds the promoted model's distribution only: its traffic does not drift against it
    # (a v2 of both models' records would).
    outputs = engine.process(_calls(rng, 60, 20, 3.0, "m2"))
    (result,) = [decode(o.value) for o in outputs if o.topic == UNIT_TOPICS.drift]
    assert result.reference_version == 2 and not result.dataset_drift


def test_a_pinned_reference_refuses_the_promotion_even_forced() -> None:
    rng = np.random.default_rng(4)
    runner = Runner(DriftConfig(window_size=20, reference="first_window", numeric_method="ks",
                                features=FEATURES, segment_keys=["service"]))  # type: ignore[arg-type]
    engine = runner.engine()
    _step(runner, engine, _calls(rng, 0, 20, 1.0, "m1"))
    pin = ReferenceCommand(command_id="pin1", command="pin", segment_key="shop", record_type="llm")
    _step(runner, engine, [Message(UNIT_TOPICS.drift_commands, 0, 0, b"llm/shop", encode(pin), 1)])
    (state,) = _step(runner, engine, [_promotion(1, force=True)])
    assert state.current == 1 and state.collecting is None
    assert state.last_command["outcome"] == "refused"  # type: ignore[index]
    assert "automatic re-baselining leaves it" in state.last_command["message"]  # type: ignore[index]


# -- the rendered pipeline sends it ---------------------------------------------------------


def test_the_rendered_pipeline_notifies_observer_after_promote_and_rollback() -> None:
    from observer.triggers.config import PipelineConfig

    plain = workflow_template(PipelineConfig(), ArgoConfig())
    assert "notify-promotion" not in json.dumps(plain)  # opt-in: no URL, no step
    p = PipelineConfig(promotion_callback_url="http://observer-admin.observer:8080")
    doc = workflow_template(p, ArgoConfig())
    validate_argo(doc, SCHEMAS)  # the vendored Argo schema
    templates = {t["name"]: t for t in doc["spec"]["templates"]}
    steps = [g[0]["name"] for g in templates["retrain"]["steps"]]
    assert steps[-2:] == ["promote", "notify-promotion"]
    exit_steps = [g[0]["name"] for g in templates["on-exit"]["steps"]]
    assert exit_steps == ["rollback", "notify-rollback"]
    rollback_when = templates["on-exit"]["steps"][0][0]["when"]
    assert templates["on-exit"]["steps"][1][0]["when"] == rollback_when
    container = templates["notify-promotion"]["container"]
    assert container["command"] == ["python", "-m", "observer.triggers.pipeline.notify"]
    args = dict(zip(container["args"][::2], container["args"][1::2]))
    assert args == {"--url": p.promotion_callback_url,
                    "--episode": "{{workflow.parameters.episode-id}}", "--run": "{{workflow.name}}",
                    "--model-version": "{{workflow.parameters.output-base}}/{{workflow.name}}/model",
                    "--outcome": "promoted"}
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert env[notify.SECRET_ENV] == {"name": "observer-promotion", "key": "secret"}
    assert env[notify.TOKEN_ENV]["optional"] is True
    rollback = dict(zip(templates["notify-rollback"]["container"]["args"][::2],
                        templates["notify-rollback"]["container"]["args"][1::2]))
    assert rollback["--outcome"] == "rolled_back"


def test_a_pinned_reference_refusal_is_recorded_in_the_ledger(
    fired: tuple[TriggerStage, str, str], trigger_env: Servers
) -> None:
    stage, episode, run = fired
    trigger_env[1].advance(run, "Running")
    stage.clock.advance(60)  # type: ignore[attr-defined]
    stage.tick()
    with admin_api(stage) as client:
        assert callback(client, episode, promotion_body(run, "m1-v2")).status_code == 200
    outputs = stage.tick()
    (sent,) = [o for o in outputs if o.topic == UNIT_TOPICS.drift_commands]
    command = decode(sent.value)
    assert isinstance(command, ReferenceCommand) and sent.key == f"llm/{SEGMENT}"
    assert (command.command, command.source, command.segment_key, command.record_type) == (
        "rebaseline", "promotion", SEGMENT, "llm")
    assert (command.episode_id, command.run, command.model_version) == (episode, run, "m1-v2")
    assert [decode(o.value).event for o in outputs if o.topic == UNIT_TOPICS.triggers] == [
        "promoted"]
    # The engine answers on observer.references: the pin refused it (its own message).
    refused = ReferenceState(
        segment={"service": "shop", "model": "m1"}, segment_key=SEGMENT, record_type="llm",
        current=1, pinned=True, last_command={
            "command_id": command.command_id, "command": "rebaseline", "outcome": "refused",
            "message": "reference v1 is pinned: automatic re-baselining leaves it as it is"})
    stage.process([Message(UNIT_TOPICS.references, 0, 0, sent.key, encode(refused), 0)])
    (event,) = [decode(o.value) for o in stage.tick() if o.topic == UNIT_TOPICS.triggers]
    assert event.event == "rebaseline_refused" and "is pinned" in event.reason
    life = stage.life.life(episode)
    assert [s["step"] for s in life["steps"]][-2:] == ["promoted", "rebaseline_refused"]
    assert life["promotion"]["state"] == "refused" and life["status"] == "open"
    assert stage.tick() == []  # announced once; the command is not sent again


def test_a_restarted_stage_sends_the_command_again_and_keeps_the_life(
    fired: tuple[TriggerStage, str, str], trigger_env: Servers, tmp_path: Path
) -> None:
    stage, episode, run = fired
    trigger_env[1].advance(run, "Running")
    stage.clock.advance(60)  # type: ignore[attr-defined]
    stage.tick()
    with admin_api(stage) as client:
        assert callback(client, episode, promotion_body(run, "m1-v2")).status_code == 200
    first = [o for o in stage.tick() if o.topic == UNIT_TOPICS.drift_commands]
    stage.close()  # crashed before its outputs were known to be produced
    again = TriggerStage(trigger_config(tmp_path, trigger_env[0]), UNIT_TOPICS, clock=Clock())
    resent = [o for o in again.tick() if o.topic == UNIT_TOPICS.drift_commands]
    assert [decode(o.value).command_id for o in resent] == [
        decode(o.value).command_id for o in first]  # the engine ignores a command id it applied
    assert all(o.topic != UNIT_TOPICS.drift_commands for o in again.tick())  # once only
    steps = [s["step"] for s in again.life.life(episode)["steps"]]
    assert steps[0] == "fired" and steps[-1] == "promoted"
    again.close()
