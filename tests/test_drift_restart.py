"""The drift engine as separate processes on the real broker: SIGKILL and restart, and two
processes in one consumer group. Both must produce exactly the results one uninterrupted
engine computes from the same Kafka records, each exactly once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from kafka import KafkaAdminClient

from observer.drift.engine import DriftEngine
from observer.core.bus import (
    Message,
    Output,
    make_producer,
    produce_all,
    read_topic,
)
from observer.core.config import KafkaConfig
from observer.drift.config import DriftConfig
from observer.core.records import DriftResult, LLMCall, ToolCall, decode, encode
from observer.core.topics import Topics

WINDOW = 100
OBSERVER = str(Path(sys.executable).with_name("observer"))


def engine_process(kafka: KafkaConfig, group: str, admin_port: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "OBSERVER_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "OBSERVER_KAFKA__TOPIC_PREFIX": kafka.topic_prefix,
        "OBSERVER_KAFKA__OTLP_TOPIC_PREFIX": kafka.otlp_topic_prefix,
        "OBSERVER_KAFKA__PARTITIONS": str(kafka.partitions),
        "OBSERVER_KAFKA__SESSION_TIMEOUT_MS": str(kafka.session_timeout_ms),
        "OBSERVER_KAFKA__HEARTBEAT_INTERVAL_MS": str(kafka.heartbeat_interval_ms),
        "OBSERVER_ADMIN__PORT": str(admin_port),
        "OBSERVER_DRIFT__WINDOW_SIZE": str(WINDOW),
        "OBSERVER_DRIFT__REFERENCE": "first_window",  # short streams: a one-window reference
        "OBSERVER_DRIFT__GROUP_ID": group,
        "OBSERVER_LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen([OBSERVER, "drift"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)


def records(rng: np.random.Generator, n: int, segments: list[tuple[str, str]],
            drifted: bool) -> list[tuple[str, str, LLMCall | ToolCall]]:
    out = []
    for _ in range(n):
        service, model = segments[int(rng.integers(len(segments)))]
        key = f"{service}|{model}"
        if rng.random() < 0.75:
            out.append(("llm", key, LLMCall(
                service=service, model=model, trace_id=uuid.uuid4().hex, span_id="s",
                input_tokens=int(rng.poisson(700)),
                output_tokens=int(rng.lognormal(np.log(180 * (2.5 if drifted else 1)), 0.5)),
                latency_ms=float(rng.normal(800, 80)),
                finish_reason=str(rng.choice(["stop", "length"], p=[0.9, 0.1])),
            )))
        else:
            out.append(("tools", key, ToolCall(
                service=service, model=model, tool_name=str(rng.choice(["search", "refund"])),
                trace_id=uuid.uuid4().hex, span_id="s",
                status="error" if rng.random() < (0.4 if drifted else 0.05) else "ok",
            )))
    return out


def produce(kafka: KafkaConfig, topics: Topics, recs: list, chunk: int = 150,
            pause_s: float = 0.0) -> None:
    producer = make_producer(kafka)
    try:
        for i in range(0, len(recs), chunk):
            outs = [Output(getattr(topics, t), key, encode(r)) for t, key, r in recs[i:i + chunk]]
            produce_all(producer, outs, 30)
            time.sleep(pause_s)
    finally:
        producer.close()


def read_all(kafka: KafkaConfig, topic: str) -> list[Message]:
    """Every message of a topic, partition by partition in offset order (to the fetched high
    watermarks: the embedded broker's end_offsets can stop inside the last batch)."""
    got: dict[int, list[Message]] = {}
    for r in read_topic(kafka, topic, 30):
        got.setdefault(r.partition, []).append(
            Message(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp))
    return [m for p in sorted(got) for m in got[p]]


def expected_results(kafka: KafkaConfig, topics: Topics, n_records: int) -> dict[tuple, DriftResult]:
    """What one uninterrupted engine computes from the ``n_records`` records sent."""
    engine = DriftEngine(DriftConfig(window_size=WINDOW, reference="first_window"), topics)
    # Read until all of them are back: a short read would expect too little (read_all goes
    # by the fetched high watermark; this guards the count all the same).
    deadline = time.monotonic() + 30
    while True:
        records = read_all(kafka, topics.llm) + read_all(kafka, topics.tools)
        if len(records) >= n_records:
            break
        assert time.monotonic() < deadline, f"{len(records)} of {n_records} records read back"
        time.sleep(0.5)
    outputs = engine.process(records)
    results = [decode(o.value) for o in outputs]
    return {(r.segment_key, r.record_type, r.window_index): r for r in results}  # type: ignore


def published(kafka: KafkaConfig, topics: Topics) -> tuple[dict[tuple, DriftResult], int]:
    """Results on observer.drift by id (a copy must at least be identical; the tests then
    check there is none), and the raw count."""
    keyed: dict[tuple, DriftResult] = {}
    messages = read_all(kafka, topics.drift)
    for m in messages:
        r = decode(m.value)
        k = (r.segment_key, r.record_type, r.window_index)
        assert keyed.get(k, r) == r, f"two different results for {k}"
        keyed[k] = r
    return keyed, len(messages)


def wait_results(kafka: KafkaConfig, topics: Topics, n: int, timeout_s: float,
                 procs: list[subprocess.Popen]) -> dict[tuple, DriftResult]:
    deadline = time.monotonic() + timeout_s
    while True:
        got, _ = published(kafka, topics)
        if len(got) >= n:
            return got
        for p in procs:
            assert p.poll() is None, p.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, f"{len(got)} of {n} results"
        time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(240)
def test_sigkill_and_restart_give_the_uninterrupted_results(
    kafka_config: KafkaConfig, topics: Topics, free_port
) -> None:
    rng = np.random.default_rng(4)
    segments = [("shop", "m1"), ("shop", "m2"), ("bank", "m1"), ("bank", "m3")]
    recs = records(rng, 5000, segments, False) + records(rng, 3000, segments, True)
    # The records trickle in while the engine is killed and restarted.
    feeder = threading.Thread(target=produce, args=(kafka_config, topics, recs, 200, 0.4))
    feeder.start()
    group = f"drift-{uuid.uuid4().hex[:6]}"
    rnd = random.Random(4)
    kills = 0
    published_before = 0
    for _ in range(3):
        proc = engine_process(kafka_config, group, free_port())
        try:
            # Kill only once this incarnation has produced something, at a random moment.
            deadline = time.monotonic() + 60
            while published(kafka_config, topics)[1] <= published_before:
                assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
                assert time.monotonic() < deadline, "the engine produced nothing"
                time.sleep(0.2)
            time.sleep(rnd.uniform(0.0, 1.5))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        kills += 1
        published_before = published(kafka_config, topics)[1]
    feeder.join()
    expected = expected_results(kafka_config, topics, len(recs))
    assert len(expected) > 40 and any(r.dataset_drift for r in expected.values())
    proc = engine_process(kafka_config, group, free_port())
    try:
        got = wait_results(kafka_config, topics, len(expected), 90, [proc])
    finally:
        stop(proc)
    assert kills == 3
    assert got == expected
    assert published(kafka_config, topics)[1] == len(expected), "a result was published twice"


def stable_members(kafka: KafkaConfig, group: str) -> int:
    """Members of a group whose rebalance has completed (0 while it is rebalancing)."""
    admin = KafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    # Tansu answers authorized_operations with codes kafka-python cannot map; not needed here.
    admin._process_acl_operations = lambda group_dict: group_dict  # type: ignore[method-assign]
    try:
        desc = admin.describe_groups([group])[group]
        return len(desc["members"]) if desc["group_state"] == "Stable" else 0
    finally:
        admin.close()


def windows_closed(admin_port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("observer_drift_windows_total{"))


@pytest.mark.timeout(180)
def test_two_processes_split_the_segments_and_agree_with_one(
    kafka_config: KafkaConfig, topics: Topics, free_port
) -> None:
    group = f"drift-{uuid.uuid4().hex[:6]}"
    ports = [free_port(), free_port()]
    procs = [engine_process(kafka_config, group, port) for port in ports]
    try:
        deadline = time.monotonic() + 60
        while stable_members(kafka_config, group) < 2:
            for p in procs:
                assert p.poll() is None, p.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "both engines never joined the group"
            time.sleep(0.5)
        rng = np.random.default_rng(9)
        # Three segments on each of the two partitions (murmur2 of the key, as Kafka's).
        segments = [("shop", "m1"), ("bank", "m1"), ("help", "m1"),
                    ("bank", "m3"), ("help", "m3"), ("maps", "m1")]
        sent = records(rng, 4000, segments, False) + records(rng, 2000, segments, True)
        produce(kafka_config, topics, sent)
        expected = expected_results(kafka_config, topics, len(sent))
        got = wait_results(kafka_config, topics, len(expected), 90, procs)
        per_process = [windows_closed(port) for port in ports]
    finally:
        for p in procs:
            stop(p)
    assert got == expected
    assert published(kafka_config, topics)[1] == len(expected), "a result was published twice"
    assert all(n > 0 for n in per_process), f"one engine did all the work: {per_process}"
