"""Run tracking: submitted runs followed to their end on the contract Argo and KFP servers.

The servers move runs only along the phases the real ones go through (tests/argo_contract.py,
tests/kfp_contract.py); the stage's clock is a test clock, so polls happen when the test says.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import REGISTRY

from observer.config import ObserverConfig
from observer.core.http import ServerThread
from observer.core.records import TriggerEvent, decode
from observer.triggers.config import (
    ArgoConfig,
    KfpConfig,
    PolicyConfig,
    RunsConfig,
    TriggerConfig,
    WebhookConfig,
)
from observer.triggers.stage import TriggerStage
from observer.triggers.tracking.phases import argo_failed_step, kfp_failed_step
from tests.argo_contract import Impossible as ArgoImpossible
from tests.kfp_contract import Impossible as KfpImpossible
from tests.kfp_contract import KfpContract
from tests.test_triggers_argo import TOPICS, Clock, messages, window
from tests.triggers_support import ARGO_TOKEN, SECRET, Servers

POLL_S = 30.0


@pytest.fixture
def argo(trigger_env: Servers) -> Servers:
    """The contract Argo server and a verifying webhook receiver (conftest), emptied."""
    return trigger_env


def argo_stage(tmp_path: Path, servers: Servers, clock: Clock, **runs: Any) -> TriggerStage:
    url, _, hook, _ = servers
    policy = PolicyConfig(
        name="track", min_samples=10, cooldown_s=0, actions=["argo"], max_concurrent_runs=10,
        run_webhooks=[WebhookConfig(url=hook, secret=SECRET)],
    )
    cfg = TriggerConfig(
        ledger_path=tmp_path / "ledger.sqlite",
        policies=[policy],
        argo=ArgoConfig(server=url, token=ARGO_TOKEN),
        runs=RunsConfig(poll_interval_s=POLL_S, **runs),
    )
    return TriggerStage(cfg, TOPICS, clock=clock)


def tick(stage: TriggerStage) -> list[TriggerEvent]:
    return [decode(o.value) for o in stage.tick()]  # type: ignore[misc]


def submit(stage: TriggerStage, segment: str = "shop|gpt-4o") -> str:
    """Fire one episode and submit its run; the run's name."""
    stage.process(messages(window(1, 0.9, segment), window(2, 0.9, segment)))
    delivered = [e for e in tick(stage) if e.event == "delivery" and e.status == "delivered"]
    assert len(delivered) == 1, delivered
    return f"retrain-{delivered[0].episode_id}"


def later(stage: TriggerStage, clock: Clock, s: float = POLL_S) -> list[TriggerEvent]:
    clock.advance(s)
    return tick(stage)


def run_events(events: list[TriggerEvent]) -> list[TriggerEvent]:
    """Without the delivery events (completion webhooks) among them."""
    return [e for e in events if e.event != "delivery"]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_argo_run_followed_to_succeeded_then_its_completion_webhook(
    tmp_path: Path, argo: Servers
) -> None:
    url, contract, _, receiver = argo
    clock = Clock()
    stage = argo_stage(tmp_path, argo, clock)
    before = sample("observer_runs_total", policy="track", outcome="succeeded")
    durations = sample("observer_run_duration_seconds_count", policy="track", outcome="succeeded")
    name = submit(stage)
    assert later(stage, clock) == []  # Pending: nothing to tell

    contract.advance(name, "Running")
    contract.step(name, "preprocess", "Running")
    (started,) = later(stage, clock)
    assert (started.event, started.action, started.status) == ("run_started", "argo", "Running")
    assert started.target == f"{url}/api/v1/workflows/argo/{name}"
    for step in ("preprocess", "train", "evaluate", "promote"):
        if step != "preprocess":
            contract.step(name, step, "Running")
        contract.step(name, step, "Succeeded")
    contract.advance(name, "Succeeded")
    (done,) = later(stage, clock)
    assert (done.event, done.status) == ("run_succeeded", "Succeeded")
    assert done.episode_id == started.episode_id and done.reason == f"argo run {name} succeeded"

    (run,) = stage.runs.store.runs()
    assert (run.outcome, run.phase, run.next_poll_at, run.failed_step) == (
        "succeeded", "Succeeded", None, None
    )
    assert [e[0] for e in stage.runs.store.events(run.delivery_id)] == [
        "run_started", "run_succeeded"
    ]
    (decision,) = stage.ledger.list_decisions()  # the decision's view shows its run
    (shown,) = decision["runs"]
    assert (shown["name"], shown["outcome"], shown["action"]) == (name, "succeeded", "argo")
    assert sample("observer_runs_total", policy="track", outcome="succeeded") == before + 1
    assert (
        sample("observer_run_duration_seconds_count", policy="track", outcome="succeeded")
        == durations + 1
    )

    # The completion webhook went to the outbox with the event, and is delivered, signed.
    (hook,) = tick(stage)
    assert (hook.event, hook.action, hook.status) == ("delivery", "run_webhook", "delivered")
    (payload,) = receiver.payloads
    assert payload["type"] == "observer.run.completed"
    data = payload["data"]
    assert (data["run"], data["outcome"], data["episode_id"]) == (name, "succeeded", done.episode_id)
    assert data["duration_s"] >= 0 and data["finished_at"].endswith("Z")

    # A finished run is polled no more.
    polls = len([r for r in contract.requests if r[1].endswith(f"/{name}")])
    assert later(stage, clock, 10 * POLL_S) == []
    assert len([r for r in contract.requests if r[1].endswith(f"/{name}")]) == polls
    stage.close()


def test_argo_failed_run_names_the_failed_step(tmp_path: Path, argo: Servers) -> None:
    _, contract, _, receiver = argo
    clock = Clock()
    stage = argo_stage(tmp_path, argo, clock)
    before = sample("observer_runs_total", policy="track", outcome="failed")
    name = submit(stage)
    contract.advance(name, "Running")
    contract.step(name, "preprocess", "Running")
    contract.step(name, "preprocess", "Succeeded")
    contract.step(name, "train", "Running")
    contract.step(name, "train", "Failed", message="OOMKilled (exit code 137)")
    contract.advance(name, "Failed", message=f"child '{name}-1' failed")
    started, failed = later(stage, clock)
    assert (started.event, failed.event, failed.status) == ("run_started", "run_failed", "Failed")
    assert failed.reason == f"argo run {name} step train failed (Failed): OOMKilled (exit code 137)"
    (run,) = stage.runs.store.runs()
    assert (run.outcome, run.failed_step) == ("failed", "train")
    assert sample("observer_runs_total", policy="track", outcome="failed") == before + 1
    tick(stage)
    (payload,) = receiver.payloads
    assert (payload["data"]["outcome"], payload["data"]["failed_step"]) == ("failed", "train")

    # An Error before any step ran (Argo stamps startedAt on it): the controller's message.
    other = submit(stage, "bank|gpt-4o")
    contract.advance(other, "Error", message="spec.templates: invalid")
    _, errored = run_events(later(stage, clock))
    assert errored.event == "run_failed"
    assert errored.reason == f"argo run {other} failed (Error): spec.templates: invalid"
    stage.close()


def test_a_disappearing_run_is_reported_lost(tmp_path: Path, argo: Servers) -> None:
    _, contract, _, _ = argo
    clock = Clock()
    stage = argo_stage(tmp_path, argo, clock, lost_after_polls=2)
    before = sample("observer_runs_total", policy="track", outcome="lost")
    name = submit(stage)
    contract.advance(name, "Running")
    assert [e.event for e in later(stage, clock)] == ["run_started"]
    contract.delete(name)
    assert later(stage, clock) == []  # one 404 may be the API server failing over
    (lost,) = later(stage, clock)
    assert (lost.event, lost.status) == ("run_lost", "Running")
    assert "not found (2 polls in a row)" in lost.reason
    (run,) = stage.runs.store.runs()
    assert (run.outcome, run.next_poll_at) == ("lost", None)
    assert sample("observer_runs_total", policy="track", outcome="lost") == before + 1
    stage.close()


def test_a_stuck_run_times_out_and_unanswered_polls_do_not_end_it(
    tmp_path: Path, argo: Servers
) -> None:
    _, contract, _, receiver = argo
    clock = Clock()
    stage = argo_stage(tmp_path, argo, clock, timeout_s=100.0)
    before = sample("observer_runs_total", policy="track", outcome="timed_out")
    name = submit(stage)
    contract.advance(name, "Running")
    assert [e.event for e in later(stage, clock)] == ["run_started"]
    contract.fail_next.append((503, {}, "GET"))
    assert later(stage, clock) == []  # no answer: nothing changes
    (run,) = stage.runs.store.runs()
    assert run.outcome == "running" and run.last_error.startswith("HTTP 503")
    assert later(stage, clock) == []  # 90 s
    (stuck,) = later(stage, clock)  # 120 s after submission, still Running
    assert stuck.event == "run_timed_out" and "(last phase 'Running')" in stuck.reason
    (run,) = stage.runs.store.runs()
    assert (run.outcome, run.next_poll_at) == ("timed_out", None)
    assert sample("observer_runs_total", policy="track", outcome="timed_out") == before + 1
    (hook,) = later(stage, clock)  # its completion webhook, and no more news
    assert (hook.action, hook.status) == ("run_webhook", "delivered")
    assert receiver.payloads[-1]["data"]["outcome"] == "timed_out"
    contract.advance(name, "Succeeded")
    assert later(stage, clock) == []  # no longer followed
    stage.close()


def test_a_restarted_stage_resumes_tracking(tmp_path: Path, argo: Servers) -> None:
    _, contract, _, _ = argo
    clock = Clock()
    stage = argo_stage(tmp_path, argo, clock)
    before = sample("observer_runs_total", policy="track", outcome="succeeded")
    name = submit(stage)
    contract.advance(name, "Running")
    (started,) = later(stage, clock)
    stage.close()  # a crash: the run_started event may not have been published

    contract.advance(name, "Succeeded")
    again = argo_stage(tmp_path, argo, clock)
    # Announced again (at least once), then the news of the poll.
    assert [(e.event, e.episode_id) for e in later(again, clock)] == [
        ("run_started", started.episode_id), ("run_succeeded", started.episode_id)
    ]
    assert run_events(tick(again)) == []  # published: not announced a third time
    assert sample("observer_runs_total", policy="track", outcome="succeeded") == before + 1
    again.close()


def test_argo_contract_refuses_impossible_transitions(argo: Servers) -> None:
    url, contract, _, _ = argo
    import httpx

    body = {"resourceKind": "WorkflowTemplate", "resourceName": "observer-retrain",
            "submitOptions": {"name": "wf-x"}}
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {ARGO_TOKEN}"}) as c:
        assert c.post("/api/v1/workflows/argo/submit", json=body).status_code == 200
        assert c.get("/api/v1/workflows/argo/wf-x").json()["status"]["phase"] == "Pending"
        with pytest.raises(ArgoImpossible, match="Pending -> Succeeded"):
            contract.advance("wf-x", "Succeeded")
        with pytest.raises(ArgoImpossible, match="its steps do not run"):
            contract.step("wf-x", "train", "Running")
        contract.advance("wf-x", "Running")
        with pytest.raises(ArgoImpossible, match="no step 'fine-tune'"):
            contract.step("wf-x", "fine-tune", "Running")
        contract.step("wf-x", "train", "Running")
        with pytest.raises(ArgoImpossible, match="Running -> Pending"):
            contract.step("wf-x", "train", "Pending")
        contract.step("wf-x", "train", "Failed")
        with pytest.raises(ArgoImpossible, match="cannot succeed"):
            contract.advance("wf-x", "Succeeded")
        contract.advance("wf-x", "Failed")
        with pytest.raises(ArgoImpossible, match="Failed -> Running"):
            contract.advance("wf-x", "Running")
        got = c.get("/api/v1/workflows/argo/wf-x").json()
        assert got["metadata"]["labels"]["workflows.argoproj.io/completed"] == "true"
        contract.delete("wf-x")
        missing = c.get("/api/v1/workflows/argo/wf-x")
        assert missing.status_code == 404 and missing.json()["code"] == 5


# -- Kubeflow Pipelines ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kfp_server() -> Iterator[tuple[str, KfpContract]]:
    contract = KfpContract(token="kfp-t0ken")
    with ServerThread(contract.app()) as srv:
        yield srv.url, contract


def test_kfp_runs_followed_to_succeeded_failed_cancelled_and_lost(
    tmp_path: Path, kfp_server: tuple[str, KfpContract]
) -> None:
    url, contract = kfp_server
    contract.runs.clear()
    clock = Clock()
    policy = PolicyConfig(name="kfp-track", min_samples=10, cooldown_s=0, actions=["kfp"])
    cfg = TriggerConfig(
        ledger_path=tmp_path / "ledger.sqlite",
        policies=[policy],
        kfp=KfpConfig(host=url, token="kfp-t0ken", pipeline_id="p", pipeline_version_id="v"),
        runs=RunsConfig(poll_interval_s=POLL_S, lost_after_polls=1),
    )
    stage = TriggerStage(cfg, TOPICS, clock=clock)
    before = {o: sample("observer_runs_total", policy="kfp-track", outcome=o)
              for o in ("succeeded", "failed", "lost")}
    names = {seg: submit(stage, f"{seg}|m") for seg in ("ok", "bad", "stop", "gone", "early")}
    assert later(stage, clock) == []  # all PENDING

    ok, bad, stop, gone, early = names.values()
    contract.advance(early, "FAILED", message="pipeline spec invalid")  # never RUNNING
    for name in (ok, bad, stop):
        contract.advance(name, "RUNNING")
    contract.task(ok, "train", "RUNNING")
    contract.task(ok, "train", "SUCCEEDED")
    contract.advance(ok, "SUCCEEDED")
    contract.task(bad, "preprocess", "RUNNING")
    contract.task(bad, "preprocess", "SUCCEEDED")
    contract.task(bad, "train", "RUNNING")
    contract.task(bad, "train", "FAILED", message="NCCL timeout on rank 3")
    contract.advance(bad, "FAILED", message="task train failed")
    contract.advance(stop, "CANCELING")
    contract.delete(gone)
    news = later(stage, clock)
    by_run: dict[str, list[tuple[str, str]]] = {}
    for e in news:
        by_run.setdefault(e.episode_id, []).append((e.event, e.status))
    runs = {r.name: r for r in stage.runs.store.runs()}
    assert by_run[runs[ok].episode_id] == [("run_started", "SUCCEEDED"), ("run_succeeded", "SUCCEEDED")]
    assert by_run[runs[bad].episode_id] == [("run_started", "FAILED"), ("run_failed", "FAILED")]
    assert by_run[runs[stop].episode_id] == [("run_started", "CANCELING")]
    assert by_run[runs[gone].episode_id] == [("run_lost", "PENDING")]
    assert by_run[runs[early].episode_id] == [("run_failed", "FAILED")]  # never started
    assert runs[bad].failed_step == "train"
    assert runs[bad].message == f"kfp run {bad} step train failed (FAILED): NCCL timeout on rank 3"
    assert runs[ok].run_id == contract.run(ok)["run_id"]  # found by name, then polled by id
    (succeeded,) = [e for e in news if e.event == "run_succeeded"]
    assert succeeded.target == f"{url}/apis/v2beta1/runs/{runs[ok].run_id}"

    contract.advance(stop, "CANCELED")
    (cancelled,) = later(stage, clock)
    assert (cancelled.event, cancelled.status) == ("run_failed", "CANCELED")
    assert cancelled.reason.endswith("failed (CANCELED): cancelled before it finished")
    assert ("GET", f"/apis/v2beta1/runs/{runs[stop].run_id}", 200) in contract.requests
    after = {o: sample("observer_runs_total", policy="kfp-track", outcome=o) for o in before}
    assert {o: after[o] - before[o] for o in before} == {"succeeded": 1, "failed": 3, "lost": 1}
    stage.close()


def test_kfp_contract_refuses_impossible_transitions(kfp_server: tuple[str, KfpContract]) -> None:
    url, contract = kfp_server
    import httpx

    body = {"display_name": "r-x", "pipeline_version_reference": {"pipeline_id": "p",
            "pipeline_version_id": "v"}, "runtime_config": {"parameters": {}}}
    with httpx.Client(base_url=url, headers={"authorization": "Bearer kfp-t0ken"}) as c:
        assert c.post("/apis/v2beta1/runs", json={**body, "nope": 1}).status_code == 400
        run_id = c.post("/apis/v2beta1/runs", json=body).json()["run_id"]
        with pytest.raises(KfpImpossible, match="PENDING -> SUCCEEDED"):
            contract.advance("r-x", "SUCCEEDED")
        with pytest.raises(KfpImpossible, match="its tasks do not run"):
            contract.task("r-x", "train", "RUNNING")
        contract.advance("r-x", "RUNNING")
        with pytest.raises(KfpImpossible, match="no task 'fine-tune'"):
            contract.task("r-x", "fine-tune", "RUNNING")
        contract.task("r-x", "train", "RUNNING")
        with pytest.raises(KfpImpossible, match="cannot succeed"):
            contract.advance("r-x", "SUCCEEDED")
        contract.task("r-x", "train", "SUCCEEDED")
        contract.advance("r-x", "SUCCEEDED")
        with pytest.raises(KfpImpossible, match="SUCCEEDED -> RUNNING"):
            contract.advance("r-x", "RUNNING")
        got = c.get(f"/apis/v2beta1/runs/{run_id}").json()
        assert [h["state"] for h in got["state_history"]] == ["PENDING", "RUNNING", "SUCCEEDED"]
        contract.delete("r-x")
        assert c.get(f"/apis/v2beta1/runs/{run_id}").status_code == 404


def test_hostile_statuses_are_read_safely() -> None:
    assert argo_failed_step({"nodes": "x", "message": 7}) == ("", "")
    assert argo_failed_step({"nodes": {"a": None, "b": {"phase": "Failed", "type": "Pod",
                                                         "displayName": "x" * 1000}}})[0] == "x" * 300
    assert kfp_failed_step({"run_details": {"task_details": [1, None, {"state": "FAILED"}]},
                            "error": "boom"}) == ("", "")


def test_runs_knobs_load_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBSERVER_TRIGGER__RUNS__TIMEOUT_S", "7200")
    monkeypatch.setenv("OBSERVER_TRIGGER__RUNS__POLL_INTERVAL_S", "15")
    runs = ObserverConfig().trigger.runs
    assert (runs.timeout_s, runs.poll_interval_s, runs.lost_after_polls) == (7200.0, 15.0, 2)
    with pytest.raises(ValueError, match="poll_interval_s"):
        RunsConfig(poll_interval_s=0)


def test_a_hostile_kfp_run_id_never_reaches_a_url(tmp_path: Path) -> None:
    paths: list[str] = []
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def anything(path: str, request: Request) -> JSONResponse:
        paths.append(f"{request.method} /{path}")
        run = {"display_name": "", "run_id": "../../../apis/v1/delete-all", "state": "RUNNING"}
        if request.method == "POST":
            return JSONResponse({**run, **(await request.json())})
        name = json.loads(request.query_params.get("filter", "{}") or "{}")
        wanted = name.get("predicates", [{}])[0].get("string_value", "")
        return JSONResponse({"runs": [{**run, "display_name": wanted}] if created else []})

    created: list[bool] = []
    clock = Clock()
    with ServerThread(app) as srv:
        cfg = TriggerConfig(
            ledger_path=tmp_path / "ledger.sqlite",
            policies=[PolicyConfig(name="k", min_samples=10, cooldown_s=0, actions=["kfp"])],
            kfp=KfpConfig(host=srv.url, pipeline_id="p", pipeline_version_id="v"),
        )
        stage = TriggerStage(cfg, TOPICS, clock=clock)
        stage.process(messages(window(1, 0.9), window(2, 0.9)))
        (submitted,) = tick(stage)
        assert submitted.status == "delivered", submitted.reason
        created.append(True)
        assert [e.event for e in later(stage, clock)] == ["run_started"]
        assert later(stage, clock) == []
        (run,) = stage.runs.store.runs()
        assert run.run_id is None and run.outcome == "running"
        assert {p.split("?")[0] for p in paths} == {"GET /apis/v2beta1/runs", "POST /apis/v2beta1/runs"}
        stage.close()
