"""Argo action against the contract Argo server: submit, 409, 401, 5xx, 400, 404, concurrency."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from observer.core.bus import Message
from observer.core.config import KafkaConfig
from observer.triggers.config import ArgoConfig, KfpConfig, PolicyConfig, TriggerConfig
from observer.core.http import ServerThread
from observer.core.records import DriftResult, TriggerEvent, decode, encode
from observer.core.topics import Topics
from tests.argo_contract import ArgoContract
from observer.triggers.naming import EPISODE_LABEL, MODEL_LABEL, POLICY_LABEL, SEGMENT_LABEL, label_value
from observer.triggers.pipeline.render import workflow_template
from observer.triggers.stage import TriggerStage

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = Path(os.environ.get("OBSERVER_SCHEMAS", ROOT / "tests" / "schemas"))
TOKEN = "argo-t0ken"
TOPICS = Topics.from_config(KafkaConfig())


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


@pytest.fixture(scope="module")
def argo_server() -> Iterator[tuple[ServerThread, ArgoContract]]:
    cfg = TriggerConfig()
    contract = ArgoContract(
        SCHEMAS, [workflow_template(cfg.pipeline, cfg.argo)], token=TOKEN
    )
    with ServerThread(contract.app()) as srv:
        yield srv, contract


@pytest.fixture
def argo(argo_server: tuple[ServerThread, ArgoContract]) -> tuple[str, ArgoContract]:
    srv, contract = argo_server
    contract.workflows.clear()
    contract.created.clear()
    contract.fail_next.clear()
    contract.requests.clear()
    contract.on_create.clear()
    return srv.url, contract


def trigger_config(tmp_path: Path, url: str, *, token: str = TOKEN, **kw: Any) -> TriggerConfig:
    argo_opts = {"server": url, "token": token, "max_attempts": 3, "backoff_initial_s": 1.0,
                 "backoff_max_s": 4.0, "busy_retry_s": 60.0}
    argo_opts.update(kw.pop("argo", {}))
    policy = {"name": "retrain", "threshold": 0.5, "consecutive_windows": 2, "min_samples": 10,
              "cooldown_s": 3600, "actions": ["argo"], **kw}
    return TriggerConfig(
        ledger_path=tmp_path / "ledger.sqlite",
        policies=[PolicyConfig(**policy)],
        argo=ArgoConfig(**argo_opts),
    )


def window(i: int, share: float, segment: str = "shop|gpt-4o") -> DriftResult:
    service, model = segment.split("|")
    return DriftResult(
        segment={"service": service, "model": model}, segment_key=segment, record_type="llm",
        window_index=i, n_reference=500, n_current=500, features=[], drift_share=share,
        dataset_drift=share >= 0.5, closed_at_unix_nano=0,
    )


def messages(*results: DriftResult) -> list[Message]:
    return [Message(TOPICS.drift, 0, k, b"k", encode(r), 0) for k, r in enumerate(results)]


def events(outputs: list[Any]) -> list[TriggerEvent]:
    return [decode(o.value) for o in outputs]  # type: ignore[misc]


def test_fired_episode_submits_one_named_labelled_run(tmp_path: Path, argo: Any) -> None:
    url, contract = argo
    stage = TriggerStage(trigger_config(tmp_path, url), TOPICS, clock=Clock())
    (fired,) = events(stage.process(messages(window(1, 0.9), window(2, 0.9))))
    assert contract.created == []  # the ledger first, the action later
    (decision,) = stage.ledger.list_decisions()
    (row,) = decision["deliveries"]
    assert (row["action"], row["status"], row["target"]) == (
        "argo", "pending", f"{url}/api/v1/workflows/argo/submit"
    )
    (out,) = events(stage.tick())
    assert (out.event, out.action, out.status, out.attempts) == ("delivery", "argo", "delivered", 1)
    name = f"retrain-{fired.episode_id}"
    assert contract.created == [name]
    wf = contract.workflows[("argo", name)]
    labels = wf["metadata"]["labels"]
    assert labels[EPISODE_LABEL] == fired.episode_id
    assert labels[POLICY_LABEL] == "retrain"
    assert labels[SEGMENT_LABEL] == label_value("shop|gpt-4o")
    assert labels[MODEL_LABEL] == "gpt-4o"
    assert wf["metadata"]["annotations"]["observer.dev/segment-key"] == "shop|gpt-4o"
    params = {p["name"]: p["value"] for p in wf["spec"]["arguments"]["parameters"]}
    assert params["episode-id"] == fired.episode_id and params["segment"] == "shop|gpt-4o"
    assert params["approval"] == "none"
    # The in-progress check came first, by label.
    assert [m for m, _, _ in contract.requests] == ["GET", "POST"]
    assert stage.tick() == []
    stage.close()


def test_repeat_is_answered_409_and_counts_as_submitted(tmp_path: Path, argo: Any) -> None:
    url, contract = argo
    cfg = trigger_config(tmp_path, url)
    stage = TriggerStage(cfg, TOPICS, clock=Clock())
    (fired,) = events(stage.process(messages(window(1, 0.9), window(2, 0.9))))
    name = f"retrain-{fired.episode_id}"
    # Somebody (an earlier attempt whose answer was lost) created it, and it already finished:
    # the in-progress check does not see it, the submission gets 409.
    contract.workflows[("argo", name)] = {
        "metadata": {"name": name, "labels": {"workflows.argoproj.io/completed": "true"}}
    }
    (out,) = events(stage.tick())
    assert out.status == "delivered" and "already submitted (HTTP 409)" in out.reason
    assert [c for _, _, c in contract.requests] == [200, 409]
    assert contract.created == []
    stage.close()


def test_missing_token_is_401_retried_then_dead_lettered(tmp_path: Path, argo: Any) -> None:
    url, contract = argo
    clock = Clock()
    stage = TriggerStage(trigger_config(tmp_path, url, token="wrong"), TOPICS, clock=clock)
    stage.process(messages(window(1, 0.9), window(2, 0.9)))
    statuses = []
    for _ in range(3):
        (out,) = events(stage.tick())
        statuses.append((out.status, out.attempts))
        clock.advance(10)
    assert statuses == [("failed", 1), ("failed", 2), ("dead_letter", 3)]
    assert {c for _, _, c in contract.requests} == {401}
    (decision,) = stage.ledger.list_decisions()
    assert decision["deliveries"][0]["last_status_code"] == 401
    assert contract.created == []
    stage.close()


def test_503_honours_retry_after_and_400_is_final(tmp_path: Path, argo: Any) -> None:
    url, contract = argo
    clock = Clock()
    stage = TriggerStage(trigger_config(tmp_path, url, cooldown_s=0), TOPICS, clock=clock)
    stage.process(messages(window(1, 0.9), window(2, 0.9)))
    contract.fail_next.append((503, {"retry-after": "120"}))
    (out,) = events(stage.tick())
    assert out.status == "failed" and "list: HTTP 503" in out.reason
    (row,) = stage.ledger.list_decisions()[0]["deliveries"]
    assert row["next_attempt_at"] >= clock() + 120  # Retry-After beats the 1-4 s backoff
    clock.advance(121)
    (out,) = events(stage.tick())
    assert out.status == "delivered" and len(contract.created) == 1

    contract.complete("argo", contract.created[0])  # else the next run waits for a free slot
    stage.process(messages(window(3, 0.9), window(4, 0.9)))
    contract.fail_next.append((400, {}, "POST"))  # the list passes, the submission is refused
    (out,) = events(stage.tick())
    assert (out.status, out.attempts) == ("dead_letter", 1)
    assert "not retried" in out.reason
    stage.close()


def test_missing_template_is_404_and_retried(tmp_path: Path, argo: Any) -> None:
    url, contract = argo
    cfg = trigger_config(tmp_path, url, argo={"workflow_template": "not-applied-yet"})
    stage = TriggerStage(cfg, TOPICS, clock=Clock())
    stage.process(messages(window(1, 0.9), window(2, 0.9)))
    (out,) = events(stage.tick())
    assert (out.status, out.attempts) == ("failed", 1) and "submit: HTTP 404" in out.reason
    assert contract.created == []
    stage.close()


def test_max_concurrent_runs_per_model(tmp_path: Path, argo: Any) -> None:
    url, contract = argo
    clock = Clock()
    cfg = trigger_config(tmp_path, url, max_concurrent_runs=1)
    stage = TriggerStage(cfg, TOPICS, clock=clock)
    # Two segments of one model drift: the second run waits for the first.
    stage.process(messages(window(1, 0.9, "shop|gpt-4o"), window(2, 0.9, "shop|gpt-4o")))
    stage.process(messages(window(1, 0.9, "bank|gpt-4o"), window(2, 0.9, "bank|gpt-4o")))
    first, second = events(stage.tick())
    assert first.status == "delivered"
    assert second.status == "failed" and second.attempts == 0
    assert "waiting: 1 run(s) in progress for model 'gpt-4o'" in second.reason
    assert len(contract.created) == 1
    clock.advance(30)
    assert stage.tick() == []  # busy_retry_s is 60
    contract.complete("argo", contract.created[0])
    clock.advance(31)
    out, *followed = events(stage.tick())
    assert (out.status, out.attempts) == ("delivered", 1)
    assert len(contract.created) == 2
    # Meanwhile the first run was polled (observer.triggers.tracking): it started and ended.
    assert [e.event for e in followed] == ["run_started", "run_succeeded"]
    stage.close()


def test_inline_workflow_validates_and_approval_is_passed(tmp_path: Path, argo: Any) -> None:
    url, contract = argo
    # The in-cluster alternative to the ledger's gate: the run itself waits at a suspend step.
    cfg = trigger_config(tmp_path, url, approval=True, approval_mode="argo", argo={"mode": "inline"})
    stage = TriggerStage(cfg, TOPICS, clock=Clock())
    stage.process(messages(window(1, 0.9), window(2, 0.9)))
    (out,) = events(stage.tick())
    assert out.status == "delivered", out.reason
    assert out.target == f"{url}/api/v1/workflows/argo"
    (wf,) = contract.workflows.values()
    assert wf["kind"] == "Workflow" and wf["spec"]["entrypoint"] == "retrain"
    params = {p["name"]: p["value"] for p in wf["spec"]["arguments"]["parameters"]}
    assert params["approval"] == "required"
    stage.close()


def test_argo_action_without_server_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="trigger.argo.server is empty"):
        TriggerStage(trigger_config(tmp_path, ""), TOPICS)


def test_contract_server_refuses_bad_bodies(argo: Any) -> None:
    import httpx

    url, contract = argo
    auth = {"authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=url, headers=auth) as c:
        bad_type = c.post("/api/v1/workflows/argo/submit", json={"resourceKind": 7})
        assert bad_type.status_code == 400 and "resourceKind" in bad_type.json()["message"]
        unknown = c.post("/api/v1/workflows/argo/submit", json={
            "resourceKind": "WorkflowTemplate", "resourceName": "observer-retrain",
            "submitOptions": {"name": "x", "parameters": ["nope=1"]}})
        assert unknown.status_code == 400 and "not declared" in unknown.json()["message"]
        bad_wf = c.post("/api/v1/workflows/argo", json={
            "workflow": {"metadata": {"name": "w"}, "spec": {"templates": "no"}}})
        assert bad_wf.status_code == 400
        assert c.get("/api/v1/workflows/argo", headers={"authorization": "Bearer x"}).status_code == 401
    assert contract.created == []


# -- Kubeflow Pipelines ---------------------------------------------------------------------------


def test_kfp_run_is_created_once(tmp_path: Path) -> None:
    runs: list[dict[str, Any]] = []
    app = FastAPI()

    @app.post("/apis/v2beta1/runs")
    async def create(request: Request) -> JSONResponse:
        body = await request.json()
        ref = body.get("pipeline_version_reference") or {}
        params = (body.get("runtime_config") or {}).get("parameters")
        if not body.get("display_name") or not ref.get("pipeline_id") or not isinstance(params, dict):
            return JSONResponse({"code": 3, "message": "invalid run"}, status_code=400)
        runs.append(body)
        return JSONResponse({**body, "run_id": f"r{len(runs)}", "state": "PENDING"})

    @app.get("/apis/v2beta1/runs")
    async def listing(request: Request) -> JSONResponse:
        predicate = json.loads(request.query_params["filter"])["predicates"][0]
        assert predicate["key"] == "display_name" and predicate["operation"] == "EQUALS"
        return JSONResponse({"runs": [r for r in runs if r["display_name"] == predicate["string_value"]]})

    with ServerThread(app) as srv:
        cfg = TriggerConfig(
            ledger_path=tmp_path / "l.sqlite",
            policies=[PolicyConfig(name="k", min_samples=10, actions=["kfp"])],
            kfp=KfpConfig(host=srv.url, pipeline_id="p1", pipeline_version_id="v1"),
        )
        stage = TriggerStage(cfg, TOPICS, clock=Clock())
        (fired,) = events(stage.process(messages(window(1, 0.9), window(2, 0.9))))
        (out,) = events(stage.tick())
        assert (out.action, out.status) == ("kfp", "delivered"), out.reason
        (run,) = runs
        assert run["display_name"] == f"retrain-{fired.episode_id}"
        assert run["runtime_config"]["parameters"]["episode-id"] == fired.episode_id
        # The same row attempted again (a crash before the outcome was recorded) finds the run.
        row = stage.ledger.list_decisions()[0]["deliveries"][0]
        stage.ledger.record_attempt(row["delivery_id"], status="pending", attempts=0,
                                    next_attempt_at=0.0, now=0.0)
        (again,) = events(stage.tick())
        assert again.status == "delivered" and "already exists" in again.reason
        assert len(runs) == 1
        stage.close()
