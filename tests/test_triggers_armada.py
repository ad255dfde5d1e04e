"""Armada action against the contract Armada server (real gRPC, armada-client's protos):
submission, client_id deduplication, a missing queue, validation, retries and job status."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from armada_client.armada import submit_pb2, submit_pb2_grpc
from armada_client.client import ArmadaClient

from observer.core.bus import Message
from observer.core.config import KafkaConfig
from observer.core.records import DriftResult, TriggerEvent, decode, encode
from observer.core.topics import Topics
from observer.triggers.action import ALREADY_DONE, DELIVERED, PERMANENT, RETRY
from observer.triggers.armada import ArmadaAction, grpc_verdict
from observer.triggers.armada_jobs import GANG_CARDINALITY, GANG_ID, episode_uri, submit_request
from observer.triggers.config import ArmadaConfig, PipelineConfig, PolicyConfig, TriggerConfig
from observer.triggers.ledger import Delivery
from observer.triggers.naming import EPISODE_LABEL
from observer.triggers.stage import TriggerStage
from tests.armada_contract import S, ArmadaContract, item_problem, pod_json

TOKEN = "armada-t0ken"
TOPICS = Topics.from_config(KafkaConfig())


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def server() -> Iterator[ArmadaContract]:
    contract = ArmadaContract(token=TOKEN).start()
    yield contract
    contract.stop()


@pytest.fixture
def armada(server: ArmadaContract) -> Iterator[ArmadaContract]:
    """The contract server, emptied, with queue ``ml`` created through armada-client."""
    with server.lock:
        server.queues.clear()
        server.jobs.clear()
        server.dedup.clear()
        server.requests.clear()
        server.faults.clear()
    with grpc.insecure_channel(server.address) as channel:
        client = ArmadaClient(grpc.intercept_channel(channel, _Auth(TOKEN)))
        client.create_queue(client.create_queue_request(name="ml", priority_factor=1.0))
    yield server


class _Auth(grpc.UnaryUnaryClientInterceptor):
    """armada-client's own calls, with the bearer token the contract server asks for."""

    def __init__(self, token: str) -> None:
        self.token = token

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        metadata = list(details.metadata or []) + [("authorization", f"Bearer {self.token}")]
        return continuation(details._replace(metadata=metadata), request)


def armada_cfg(contract: ArmadaContract, **kw: Any) -> ArmadaConfig:
    return ArmadaConfig(**{"server": contract.address, "token": TOKEN, "queue": "ml",
                           "namespace": "training", "max_attempts": 3, **kw})


def window(i: int, share: float) -> DriftResult:
    return DriftResult(
        segment={"service": "shop", "model": "gpt-4o"}, segment_key="shop|gpt-4o",
        record_type="llm", window_index=i, n_reference=500, n_current=500, features=[],
        drift_share=share, dataset_drift=share >= 0.5, closed_at_unix_nano=0,
    )


def events(outputs: list[Any]) -> list[TriggerEvent]:
    return [decode(o.value) for o in outputs]  # type: ignore[misc]


def fire(stage: TriggerStage) -> TriggerEvent:
    msgs = [Message(TOPICS.drift, 0, k, b"k", encode(r), 0)
            for k, r in enumerate((window(1, 0.9), window(2, 0.9)))]
    (fired,) = events(stage.process(msgs))
    return fired


def stage_for(tmp_path: Path, server: ArmadaContract, **armada: Any) -> TriggerStage:
    cfg = TriggerConfig(
        ledger_path=tmp_path / "ledger.sqlite",
        policies=[PolicyConfig(name="retrain", min_samples=10, cooldown_s=3600,
                               actions=["armada"])],
        armada=armada_cfg(server, **armada),
        pipeline=PipelineConfig(num_nodes=2, gpus_per_node=1, scheduler="kueue"),
    )
    return TriggerStage(cfg, TOPICS, clock=Clock())


def run_of(episode: str = "e1") -> dict[str, Any]:
    return {"workflow_name": f"retrain-{episode}", "episode_id": episode, "policy": "p",
            "segment_key": "shop|gpt-4o", "record_type": "llm", "model": "gpt-4o",
            "export": {"current": "s3://x/current.parquet", "reference": "s3://x/ref.parquet"}}


def delivery(action: ArmadaAction, run: dict[str, Any]) -> Delivery:
    return Delivery("d1", run["episode_id"], "p", "shop|gpt-4o", "llm", 2, "armada",
                    action.target, json.dumps(run).encode(), "pending", 0, None, None, None, 0.0)


def test_a_fired_episode_submits_one_gang_job_set(tmp_path: Path, armada: ArmadaContract) -> None:
    stage = stage_for(tmp_path, armada)
    fired = fire(stage)
    assert armada.requests == []  # the ledger first, the action later
    (out,) = [e for e in events(stage.tick()) if e.event == "delivery"]
    assert (out.action, out.status, out.attempts) == ("armada", "delivered", 1), out.reason
    (request,) = armada.requests  # parsed by the server as the real JobSubmitRequest
    name = f"retrain-{fired.episode_id}"
    assert (request.queue, request.job_set_id) == ("ml", name)
    items = list(request.job_request_items)
    assert [i.client_id for i in items] == [f"{name}-0", f"{name}-1"]
    for item in items:
        assert item.namespace == "training" and item.priority == 1.0
        assert item.external_job_uri == episode_uri(fired.episode_id)
        assert dict(item.labels)[EPISODE_LABEL] == fired.episode_id
        assert dict(item.annotations)[GANG_ID] == name
        assert dict(item.annotations)[GANG_CARDINALITY] == "2"
        pod = pod_json(item.pod_spec)
        (container,) = pod["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert container["resources"]["requests"] == container["resources"]["limits"]
        # Kueue is the Argo pipeline's scheduler: Armada places these pods itself.
        assert "schedulerName" not in pod
    assert len(armada.job_set("ml", name)) == 2
    stage.close()


def test_a_repeated_submission_is_recognised(tmp_path: Path, armada: ArmadaContract) -> None:
    stage = stage_for(tmp_path, armada)
    fire(stage)
    stage.tick()
    row = stage.ledger.list_decisions()[0]["deliveries"][0]
    # The same row attempted again (a crash before the outcome was recorded) finds the jobs.
    stage.ledger.record_attempt(row["delivery_id"], status="pending", attempts=0,
                                next_attempt_at=0.0, now=0.0)
    (again,) = [e for e in events(stage.tick()) if e.event == "delivery"]
    assert again.status == "delivered" and "already submitted" in again.reason
    assert len(armada.jobs) == 2 and len(armada.requests) == 1
    stage.close()
    # Before Armada's query API has seen the first submission, its client_id dedup answers the
    # original job ids and creates nothing.
    cfg, pipeline = armada_cfg(armada), PipelineConfig(num_nodes=2)
    request = submit_request(cfg, pipeline, run_of("e2"))
    with grpc.insecure_channel(armada.address) as channel:
        stub = submit_pb2_grpc.SubmitStub(channel)
        meta = (("authorization", f"Bearer {TOKEN}"),)
        first = [i.job_id for i in stub.SubmitJobs(request, metadata=meta).job_response_items]
        second = [i.job_id for i in stub.SubmitJobs(request, metadata=meta).job_response_items]
    assert first == second and len(armada.job_set("ml", "retrain-e2")) == 2
    # A server without the query API: the action submits, and the dedup holds.
    action = ArmadaAction(cfg, pipeline)
    for _ in range(2):
        armada.fail_next(grpc.StatusCode.UNIMPLEMENTED, "GetJobStatusUsingExternalJobUri")
        out = action.attempt(delivery(action, run_of("e2")))
        assert out.kind == DELIVERED and out.message.endswith(", ".join(first))
    assert len(armada.job_set("ml", "retrain-e2")) == 2
    action.close()


def test_a_missing_queue_is_a_clear_permanent_error(tmp_path: Path, armada: ArmadaContract) -> None:
    action = ArmadaAction(armada_cfg(armada, queue="nope"), PipelineConfig())
    outcome = action.attempt(delivery(action, run_of()))
    assert outcome.kind == PERMANENT
    assert outcome.message == (
        "submit: armada queue 'nope' does not exist: create it (armadactl create queue nope) "
        "or set trigger.armada.queue"
    )
    action.close()
    # Through the stage: dead-lettered at the first attempt, not retried.
    stage = stage_for(tmp_path, armada, queue="nope")
    fire(stage)
    (out,) = [e for e in events(stage.tick()) if e.event == "delivery"]
    assert (out.status, out.attempts) == ("dead_letter", 1) and "does not exist" in out.reason
    assert armada.jobs == {}
    stage.close()


def test_the_contract_server_refuses_what_armada_refuses(armada: ArmadaContract) -> None:
    cfg, pipeline = armada_cfg(armada), PipelineConfig()
    good = submit_request(cfg, pipeline, run_of()).job_request_items[0]
    assert item_problem(good) is None

    def broken(change: Any) -> str | None:
        item = submit_pb2.JobSubmitRequestItem()
        item.CopyFrom(good)
        change(item)
        return item_problem(item)

    assert broken(lambda i: setattr(i, "namespace", "")) == "namespace is a required field"
    assert broken(lambda i: i.pod_spec.containers[0].resources.requests.clear()) == (
        "container trainer defines different resources for requests and limits")
    assert broken(lambda i: i.pod_spec.containers[0].ClearField("resources")) == (
        "container trainer has no resources specified")
    # The Kubernetes schema: the protobuf message allows what a Pod does not (a nameless env
    # var, a container without a name).
    problem = broken(lambda i: i.pod_spec.containers[0].env[0].ClearField("name"))
    assert problem == "pod spec: 'name' is a required property"
    assert broken(lambda i: i.pod_spec.containers[0].ClearField("name")) == (
        "pod spec: 'name' is a required property")
    # And the action classifies the server's INVALID_ARGUMENT as permanent.
    action = ArmadaAction(cfg.model_copy(update={"namespace": ""}), pipeline)
    outcome = action.attempt(delivery(action, run_of()))
    assert (outcome.kind, outcome.message) == (
        PERMANENT, "submit: INVALID_ARGUMENT: namespace is a required field")
    action.close()


def test_transient_answers_are_retried(armada: ArmadaContract) -> None:
    action = ArmadaAction(armada_cfg(armada), PipelineConfig())
    armada.fail_next(grpc.StatusCode.UNAVAILABLE)
    assert action.attempt(delivery(action, run_of())).kind == RETRY
    armada.fail_next(grpc.StatusCode.RESOURCE_EXHAUSTED, "SubmitJobs")
    out = action.attempt(delivery(action, run_of()))
    assert (out.kind, out.message) == (RETRY, "submit: RESOURCE_EXHAUSTED: injected RESOURCE_EXHAUSTED")
    assert action.attempt(delivery(action, run_of())).kind == DELIVERED
    assert action.attempt(delivery(action, run_of())).kind == ALREADY_DONE
    action.close()
    wrong = ArmadaAction(armada_cfg(armada, token="stale"), PipelineConfig())
    out = wrong.attempt(delivery(wrong, run_of("e9")))
    assert (out.kind, out.message) == (RETRY, "status: UNAUTHENTICATED: request could not be authenticated")
    wrong.close()
    assert grpc_verdict(grpc.StatusCode.ALREADY_EXISTS, "") == "already_done"


def test_status_follows_the_jobs_through_armadas_states(armada: ArmadaContract) -> None:
    action = ArmadaAction(armada_cfg(armada), PipelineConfig(num_nodes=2))
    run = run_of()
    assert action.status(run).phase == "missing"
    assert action.attempt(delivery(action, run)).kind == DELIVERED
    first, second = (j.job_id for j in armada.job_set("ml", "retrain-e1"))
    assert action.status(run).phase == "pending"
    armada.advance(first, S.LEASED, S.PENDING, S.RUNNING)
    assert action.status(run).phase == "running"
    armada.advance(second, S.LEASED, S.PENDING, S.RUNNING, S.SUCCEEDED)
    assert action.status(run).phase == "running"  # a gang succeeds when every job has
    armada.advance(first, S.SUCCEEDED)
    status = action.status(run)
    assert status.phase == "succeeded" and status.jobs == {first: "SUCCEEDED", second: "SUCCEEDED"}
    with pytest.raises(AssertionError, match="SUCCEEDED -> RUNNING is not a transition"):
        armada.advance(first, S.RUNNING)
    # armada-client reads the same states from the same server.
    with grpc.insecure_channel(armada.address) as channel:
        client = ArmadaClient(grpc.intercept_channel(channel, _Auth(TOKEN)))
        states = client.get_job_status([first, "no-such-job"]).job_states
    assert dict(states) == {first: S.SUCCEEDED, "no-such-job": S.UNKNOWN}
    action.close()


def test_a_failed_or_preempted_job_fails_the_run(armada: ArmadaContract) -> None:
    action = ArmadaAction(armada_cfg(armada), PipelineConfig(num_nodes=2))
    run = run_of("e3")
    action.attempt(delivery(action, run))
    first, second = (j.job_id for j in armada.job_set("ml", "retrain-e3"))
    armada.advance(first, S.LEASED, S.PENDING, S.RUNNING)
    armada.advance(second, S.LEASED, S.PREEMPTED)
    assert action.status(run).phase == "failed"
    action.close()


@pytest.mark.parametrize("scheduler", ["none", "kueue", "volcano", "yunikorn"])
def test_the_pipelines_scheduler_options_keep_the_armada_pod_valid(scheduler: str) -> None:
    pipeline = PipelineConfig(scheduler=scheduler, num_nodes=3, gpus_per_node=8, queue="gpu")
    request = submit_request(ArmadaConfig(queue="ml", priority_class="armada-default"),
                             pipeline, run_of())
    assert request.queue == "ml"  # Armada's queue, never pipeline.queue
    for item in request.job_request_items:
        assert item_problem(item) is None
        pod = pod_json(item.pod_spec)
        assert "schedulerName" not in pod and pod["priorityClassName"] == "armada-default"
        assert not any(k.startswith(("kueue.", "scheduling.k8s.io", "yunikorn."))
                       for k in [*item.labels, *item.annotations])


def test_the_stage_follows_an_armada_run_to_its_end(tmp_path: Path, armada: ArmadaContract) -> None:
    """The trigger stage's run tracking polls Armada through :meth:`ArmadaAction.poll`."""
    stage = stage_for(tmp_path, armada)
    clock: Clock = stage.clock  # type: ignore[assignment]
    fired = fire(stage)
    stage.tick()
    name = f"retrain-{fired.episode_id}"
    jobs = [j.job_id for j in armada.job_set("ml", name)]
    for job in jobs:
        armada.advance(job, S.LEASED, S.PENDING, S.RUNNING)
    clock.t += stage.cfg.runs.poll_interval_s + 1
    assert [e.event for e in events(stage.tick()) if e.event.startswith("run_")] == ["run_started"]
    armada.advance(jobs[0], S.SUCCEEDED)
    armada.advance(jobs[1], S.FAILED)
    clock.t += stage.cfg.runs.poll_interval_s + 1
    (failed,) = [e for e in events(stage.tick()) if e.event.startswith("run_")]
    assert failed.event == "run_failed" and "FAILED" in failed.reason, failed.reason
    stage.close()


def test_tls_with_the_configured_ca(tmp_path: Path) -> None:
    from tests.tls_support import Authority

    ca = Authority.create()
    contract = ArmadaContract(token=TOKEN).start(tls=ca.issue("localhost"))
    try:
        contract.queues["ml"] = submit_pb2.Queue(name="ml", priority_factor=1.0)
        (tmp_path / "ca.pem").write_bytes(ca.pem)
        cfg = armada_cfg(contract, server=f"localhost:{contract.port}", use_tls=True,
                         ca_file=str(tmp_path / "ca.pem"))
        action = ArmadaAction(cfg, PipelineConfig())
        assert action.attempt(delivery(action, run_of())).kind == DELIVERED
        action.close()
        # Another CA's certificate is not trusted: no answer, retried.
        (tmp_path / "other.pem").write_bytes(Authority.create("other CA").pem)
        other = ArmadaAction(cfg.model_copy(update={"ca_file": str(tmp_path / "other.pem"),
                                                    "timeout_s": 10.0}), PipelineConfig())
        out = other.attempt(delivery(other, run_of("e5")))
        # (gRPC fails the call at once; under heavy load the deadline may come first.)
        assert out.kind == RETRY, out.message
        assert out.message.split(":")[1].strip() in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
        other.close()
        assert len(contract.jobs) == 1
    finally:
        contract.stop()


def test_quantities_are_checked_when_the_configuration_loads() -> None:
    with pytest.raises(ValueError, match="trigger.armada.memory: '16 GB' is not a Kubernetes "
                                         "quantity"):
        ArmadaConfig(memory="16 GB")
    assert ArmadaConfig(cpu="500m", memory="1.5Gi").cpu == "500m"
