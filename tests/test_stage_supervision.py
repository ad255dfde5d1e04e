"""Supervised stages on the real embedded broker: a poison message is quarantined after one
restart, Kafka faults restart with backoff and quarantine nothing, permanent faults stop the
process and say why; /healthz and /readyz name every stage's state."""

from __future__ import annotations

import base64
import json
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from kafka import TopicPartition
from kafka.errors import KafkaTimeoutError, TopicAuthorizationFailedError

from observer.core.bus import Message, Output, StageRunner, make_consumer, make_producer
from observer.config import ObserverConfig
from observer.collectors.receiver.config import ReceiverConfig
from observer.core.config import AdminConfig, KafkaConfig, SupervisorConfig
from observer.core.dead_letter import DEAD_LETTERS
from observer.core.supervisor import STAGE_RESTARTS, RestartPolicy, Supervisor
from observer.core.topics import Topics
from observer.core.stage import StageSpec
from observer.runtime import CONSUMING_STAGES, Runtime
from tests.collectors_support import wait_for

FAST = RestartPolicy(restart_initial_s=0.05, restart_max_s=0.5, max_build_failures=3)



class Picky:
    """Uppercases every message, except that it raises on ``b"poison"`` (as any processor
    may on a record it was never meant to see). ``faults`` is shared by every instance
    built: each entry is raised once by the next ``process`` call, whatever it holds."""

    def __init__(self, name: str, out: str, built: list[Picky], faults: list[Exception]) -> None:
        self.name, self.out, self.faults = name, out, faults
        self.closed = False
        self.batches: list[int] = []
        built.append(self)

    def process(self, messages: list[Message]) -> list[Output]:
        if self.faults:
            raise self.faults.pop(0)
        self.batches.append(len(messages))
        for m in messages:
            if m.value == b"poison":
                raise KeyError("no field 'gen_ai.request.model' in this record")
        # b"huge" yields an output past the producers' 16 MiB limit: no broker takes it.
        return [Output(self.out, m.key, b"X" * (17 << 20) if m.value == b"huge" else m.value.upper())
                for m in messages]

    def tick(self) -> list[Output]:
        return []

    def close(self) -> None:
        self.closed = True


def drain(cfg: KafkaConfig, topic: str, n: int, timeout_s: float = 60) -> list[Any]:
    consumer = make_consumer(cfg, None, [topic])
    got: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < n and time.monotonic() < deadline:
            for records in consumer.poll(200).values():
                got += records
    finally:
        consumer.close()
    return got


def send(cfg: KafkaConfig, topic: str, values: list[bytes]) -> list[tuple[int, int]]:
    """Produce ``values`` in order (keys spread them over partitions); (partition, offset)s."""
    producer = make_producer(cfg)
    futures = [producer.send(topic, key=b"k%d" % i, value=v) for i, v in enumerate(values)]
    producer.flush(10)
    placed = [(f.get(10).partition, f.get(10).offset) for f in futures]
    producer.close()
    return placed


def committed_to_end(cfg: KafkaConfig, group: str, topic: str, placed: list[tuple[int, int]]) -> bool:
    ends: dict[int, int] = {}
    for partition, offset in placed:
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    consumer = make_consumer(cfg, group)
    try:
        return all(consumer.committed(TopicPartition(topic, p)) == end for p, end in ends.items())
    finally:
        consumer.close()


@contextmanager
def supervised(cfg: KafkaConfig, topics: Topics, build: Callable[[], Any], name: str,
               policy: RestartPolicy = FAST) -> Iterator[tuple[Supervisor, threading.Thread]]:
    """``build``'s stage on ``topics.llm`` under a supervisor, until the block ends."""
    def runner(processor: Any, suspects: Any, assigned: threading.Event) -> StageRunner:
        return StageRunner(cfg, processor, f"g-{name}", [topics.llm],
                           dead_letter_topic=topics.dead_letter, suspects=suspects,
                           assigned=assigned)

    supervisor = Supervisor(name, build, runner, policy)
    stop = threading.Event()
    thread = threading.Thread(target=supervisor.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield supervisor, thread
    finally:
        stop.set()
        thread.join(20)


def test_poison_message_costs_one_restart_and_is_quarantined(
    kafka_config: KafkaConfig, topics: Topics
) -> None:
    name = f"picky-{uuid.uuid4().hex[:6]}"
    built: list[Picky] = []
    values = [b"m%d" % i for i in range(30)]
    values.insert(15, b"poison")
    placed = send(kafka_config, topics.llm, values)
    poison_at = placed[15]

    with supervised(kafka_config, topics, lambda: Picky(name, topics.drift, built, []), name) as (sup, _):
        outputs = drain(kafka_config, topics.drift, 30)
        [letter] = drain(kafka_config, topics.dead_letter, 1)
        # The stage goes on after the quarantine, without another restart.
        placed += send(kafka_config, topics.llm, [b"after%d" % i for i in range(5)])
        outputs = drain(kafka_config, topics.drift, 35)  # from the start again
        wait_for(lambda: committed_to_end(kafka_config, f"g-{name}", topics.llm, placed),
                   what="the commits past every message, the poison included")
        status = sup.status()

    # Every good message of the failed batch went through alone, once (the failed batch
    # produced nothing before it raised).
    assert sorted(r.value for r in outputs) == sorted(
        [v.upper() for v in values if v != b"poison"] + [b"AFTER%d" % i for i in range(5)]
    )
    body = json.loads(letter.value)
    assert (body["stage"], body["reason"]) == (name, "processing_error")
    assert "KeyError" in body["detail"] and "gen_ai.request.model" in body["detail"]
    assert (body["source"]["partition"], body["source"]["offset"]) == poison_at
    assert base64.b64decode(body["original"]) == b"poison"
    assert DEAD_LETTERS.labels(name, "processing_error")._value.get() == 1
    # One restart, with a processor rebuilt from the factory; the failed one was closed.
    assert sup.restarts == 1 and STAGE_RESTARTS.labels(name)._value.get() == 1
    assert len(built) == 2 and built[0].closed and not built[1].closed
    assert status["state"] == "running" and not sup.suspects


def test_an_output_too_large_quarantines_its_input(kafka_config: KafkaConfig, topics: Topics) -> None:
    name = f"huge-{uuid.uuid4().hex[:6]}"
    built: list[Picky] = []
    placed = send(kafka_config, topics.llm, [b"a", b"huge", b"b"])
    with supervised(kafka_config, topics, lambda: Picky(name, topics.drift, built, []), name) as (sup, _):
        [letter] = drain(kafka_config, topics.dead_letter, 1)
        wait_for(lambda: committed_to_end(kafka_config, f"g-{name}", topics.llm, placed),
                   what="the commits")
        outputs = drain(kafka_config, topics.drift, 3, timeout_s=3)  # 2 or 3 there
    # At least once: an output sent before the failing one may be there twice.
    assert {r.value for r in outputs} == {b"A", b"B"}
    body = json.loads(letter.value)
    assert body["reason"] == "too_large" and "MessageSizeTooLargeError" in body["detail"]
    assert base64.b64decode(body["original"]) == b"huge"
    assert sup.restarts == 1


def test_kafka_fault_restarts_without_quarantine(kafka_config: KafkaConfig, topics: Topics) -> None:
    name = f"timeout-{uuid.uuid4().hex[:6]}"
    built: list[Picky] = []
    faults: list[Exception] = [KafkaTimeoutError("checkpoint store: no answer in 60 s")]
    values = [b"m%d" % i for i in range(20)]
    placed = send(kafka_config, topics.llm, values)
    with supervised(kafka_config, topics, lambda: Picky(name, topics.drift, built, faults), name) as (sup, _):
        outputs = drain(kafka_config, topics.drift, 20)
        wait_for(lambda: committed_to_end(kafka_config, f"g-{name}", topics.llm, placed),
                   what="the commits")
    assert sorted(r.value for r in outputs) == sorted(v.upper() for v in values)
    assert sup.restarts == 1 and len(built) == 2
    # A transient fault marks nothing suspect: the batch is re-read as a batch, and nothing
    # reaches the dead-letter topic.
    assert not sup.suspects and max(built[1].batches) > 1
    assert DEAD_LETTERS.labels(name, "processing_error")._value.get() == 0
    consumer = make_consumer(kafka_config, None)
    ends = consumer.end_offsets([TopicPartition(topics.dead_letter, p) for p in range(2)])
    consumer.close()
    assert sum(ends.values()) == 0


def test_permanent_fault_fails_the_stage_without_restarts(kafka_config: KafkaConfig, topics: Topics) -> None:
    name = f"denied-{uuid.uuid4().hex[:6]}"
    built: list[Picky] = []
    faults: list[Exception] = [TopicAuthorizationFailedError("not authorised to read")]
    send(kafka_config, topics.llm, [b"m0"])
    with supervised(kafka_config, topics, lambda: Picky(name, topics.drift, built, faults), name) as (sup, thread):
        thread.join(60)  # it returns by itself: nothing to retry
        assert not thread.is_alive()
    assert sup.failure is not None and "TopicAuthorizationFailedError" in sup.failure
    assert sup.status()["state"] == "failed" and sup.restarts == 0 and len(built) == 1


def test_a_stage_that_cannot_be_built_fails_after_n_tries() -> None:
    tries: list[int] = []

    def build() -> Any:
        tries.append(1)
        raise ValueError("drift.features configures no feature")

    sup = Supervisor("unbuildable", build, lambda *a: pytest.fail("no runner without a processor"), FAST)
    sup.run(threading.Event())  # returns: failed for good
    assert len(tries) == FAST.max_build_failures
    assert sup.status()["state"] == "failed" and "cannot build" in (sup.failure or "")


def test_builds_failing_on_kafka_do_not_count(kafka_config: KafkaConfig, topics: Topics) -> None:
    """A stage whose build needs Kafka (the drift engine's checkpoints) waits out an outage."""
    name = f"late-{uuid.uuid4().hex[:6]}"
    built: list[Picky] = []
    refusals = [KafkaTimeoutError("no broker")] * (FAST.max_build_failures + 2)

    def build() -> Picky:
        if refusals:
            raise refusals.pop()
        return Picky(name, topics.drift, built, [])

    send(kafka_config, topics.llm, [b"m0"])
    with supervised(kafka_config, topics, build, name) as (sup, _):
        assert drain(kafka_config, topics.drift, 1)
    assert sup.failure is None and sup.restarts == FAST.max_build_failures + 2


# -- the runtime: health endpoints and the process's exit --------------------------------------


class Switchable:
    """A stage whose tick raises what ``fault[0]`` holds (nothing while it holds None)."""

    name = "normalize"

    def __init__(self, fault: list[Exception | None]) -> None:
        self.fault = fault

    def process(self, messages: list[Message]) -> list[Output]:
        return []

    def tick(self) -> list[Output]:
        if self.fault[0] is not None:
            raise self.fault[0]
        return []


def switchable_stage(fault: list[Exception | None]) -> StageSpec:
    return StageSpec(name="normalize", help="switchable", config_section="normalizer",
                     build=lambda _cfg, _t: Switchable(fault),
                     group_id=lambda _cfg: f"g-switch-{uuid.uuid4().hex[:6]}", inputs=("spans",))


def test_health_names_restarting_and_failed_stages(
    kafka_config: KafkaConfig, free_port: Callable[[], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    fault: list[Exception | None] = [KafkaTimeoutError("broker away")]
    monkeypatch.setitem(CONSUMING_STAGES, "normalize", switchable_stage(fault))
    cfg = ObserverConfig(
        kafka=kafka_config,
        receiver=ReceiverConfig(http_port=free_port(), grpc_port=free_port()),
        admin=AdminConfig(port=free_port()),
        supervisor=SupervisorConfig(restart_initial_s=2, restart_max_s=2),
    )
    runtime = Runtime(cfg, ["normalize"]).start()
    try:
        admin = runtime.endpoints()["admin"]

        def readyz() -> httpx.Response:
            return httpx.get(f"{admin}/readyz", timeout=10)

        # A transient fault: not ready, named with its error and the next try; still alive.
        r = wait_for(lambda: (r := readyz()).json()["stages"]["normalize"]["state"]
                       == "restarting" and r, what="restarting")
        stage = r.json()["stages"]["normalize"]
        assert r.status_code == 503 and "broker away" in stage["last_error"]
        assert stage["retry_at"] > time.time() - 5 and stage["restarts"] >= 1
        assert httpx.get(f"{admin}/healthz", timeout=10).status_code == 200
        # Healed: ready again.
        fault[0] = None
        r = wait_for(lambda: (r := readyz()).status_code == 200 and r, what="ready")
        assert r.json()["stages"]["normalize"]["state"] == "running" and r.json()["kafka"]
        # A permanent fault: liveness fails, naming the stage and why; the runtime stops.
        fault[0] = TopicAuthorizationFailedError("not authorised")
        assert runtime.stop_event.wait(60)
        health = httpx.get(f"{admin}/healthz", timeout=10)
        assert health.status_code == 500
        assert "TopicAuthorizationFailedError" in health.json()["errors"]["normalize"]
        assert health.json()["stages"]["normalize"]["state"] == "failed"
        assert readyz().status_code == 503
    finally:
        runtime.stop()


def test_cli_exits_non_zero_naming_a_permanent_failure(
    kafka_config: KafkaConfig, free_port: Callable[[], int], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from observer.cli import main

    fault: list[Exception | None] = [TopicAuthorizationFailedError("not authorised to read")]
    monkeypatch.setitem(CONSUMING_STAGES, "normalize", switchable_stage(fault))
    env = {"BOOTSTRAP_SERVERS": kafka_config.bootstrap_servers,
           "TOPIC_PREFIX": kafka_config.topic_prefix,
           "OTLP_TOPIC_PREFIX": kafka_config.otlp_topic_prefix,
           "SESSION_TIMEOUT_MS": "6000", "PARTITIONS": "2"}
    for knob, value in env.items():
        monkeypatch.setenv(f"OBSERVER_KAFKA__{knob}", value)
    monkeypatch.setenv("OBSERVER_ADMIN__PORT", str(free_port()))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert main(["normalize"]) == 1
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    err = capsys.readouterr().err
    assert "stage normalize failed permanently" in err and "TopicAuthorizationFailedError" in err
