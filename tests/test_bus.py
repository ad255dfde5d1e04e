"""The kernel's bus on the real embedded broker: produce, group-consume, commit."""

from __future__ import annotations

import threading
import time

import pytest

from observer.core.bus import (
    KafkaProbe,
    Message,
    Output,
    StageRunner,
    ensure_topics,
    make_consumer,
    make_producer,
    produce_all,
)
from observer.core.config import KafkaConfig
from observer.core.topics import Topics

CLIENTS = ["librdkafka", "kafka-python"]
"""``kafka.stage_client``: every runner test runs on both clients."""


@pytest.fixture(params=CLIENTS)
def stage_config(request: pytest.FixtureRequest, kafka_config: KafkaConfig) -> KafkaConfig:
    return kafka_config.model_copy(update={"stage_client": request.param})


class Upper:
    name = "upper"

    def __init__(self, out_topic: str) -> None:
        self.out_topic = out_topic
        self.seen: list[bytes] = []
        self.batches: list[int] = []

    def process(self, messages: list[Message]) -> list[Output]:
        self.seen += [m.value for m in messages]
        self.batches.append(len(messages))
        return [Output(self.out_topic, m.key, m.value.upper()) for m in messages]

    def tick(self) -> list[Output]:
        return []


def drain(cfg: KafkaConfig, topic: str, n: int, timeout_s: float = 20) -> list[bytes]:
    consumer = make_consumer(cfg, None, [topic])
    got: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        for records in consumer.poll(200).values():
            got += [r.value for r in records]
    consumer.close()
    return got


def run_until_drained(cfg: KafkaConfig, runner: StageRunner, topic: str, n: int) -> list[bytes]:
    """Run ``runner`` in a thread until ``n`` records are read back from ``topic``."""
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,))
    thread.start()
    try:
        return drain(cfg, topic, n)
    finally:
        stop.set()
        thread.join(10)


def test_topics_created_once(kafka_config: KafkaConfig, topics: Topics) -> None:
    assert ensure_topics(kafka_config, topics) == []  # the fixture already created them


def test_stage_runner_produces_then_commits(stage_config: KafkaConfig, topics: Topics) -> None:
    kafka_config = stage_config
    producer = make_producer(kafka_config)
    produce_all(producer, [Output(topics.llm, f"k{i}", b"v%d" % i) for i in range(50)], 10)
    proc = Upper(topics.drift)
    runner = StageRunner(kafka_config, proc, f"g-upper-{kafka_config.stage_client}", [topics.llm])
    out = run_until_drained(kafka_config, runner, topics.drift, 50)
    assert sorted(out) == sorted(b"V%d" % i for i in range(50))

    # A second runner in the same group starts after the committed offsets: nothing replayed.
    produce_all(producer, [Output(topics.llm, "k", b"late")], 10)
    proc2 = Upper(topics.drift)
    runner2 = StageRunner(kafka_config, proc2, f"g-upper-{kafka_config.stage_client}", [topics.llm])
    stop2 = threading.Event()
    t2 = threading.Thread(target=runner2.run, args=(stop2,))
    t2.start()
    deadline = time.monotonic() + 20
    while not proc2.seen and time.monotonic() < deadline:
        time.sleep(0.1)
    stop2.set()
    t2.join(10)
    assert proc2.seen == [b"late"]


def test_kafka_probe(kafka_config: KafkaConfig) -> None:
    assert KafkaProbe(kafka_config).ready()
    # Nothing listens on port 1: the probe says so within its timeout, not kafka-python's.
    started = time.monotonic()
    assert not KafkaProbe(KafkaConfig(bootstrap_servers="127.0.0.1:1"), timeout_s=1).ready()
    assert time.monotonic() - started < 5


def test_stage_gives_way_while_told_to_then_goes_on(
    stage_config: KafkaConfig, topics: Topics
) -> None:
    """A stage sharing the process with busy receivers waits before its batches, but at most
    ``max_yield_s`` each time, then takes a small batch: it is slowed, never starved."""
    from observer.core.bus import BUSY_BATCH_RECORDS, STAGE_YIELD_SECONDS

    kafka_config = stage_config
    producer = make_producer(kafka_config)
    produce_all(producer, [Output(topics.llm, f"k{i}", b"v%d" % i) for i in range(20)], 10)
    proc = Upper(topics.drift)
    proc.name = f"upper-yielding-{kafka_config.stage_client}"
    asked = threading.Event()

    def receivers_busy() -> bool:
        asked.set()
        return True  # saturated for the whole test

    runner = StageRunner(
        kafka_config, proc, f"g-yield-{kafka_config.stage_client}", [topics.llm], yield_to=receivers_busy, max_yield_s=0.2
    )
    out = run_until_drained(kafka_config, runner, topics.drift, 20)
    assert asked.is_set()
    assert sorted(out) == sorted(b"V%d" % i for i in range(20))  # it went on all the same
    assert STAGE_YIELD_SECONDS.labels(proc.name)._value.get() > 0
    assert proc.batches and max(proc.batches) <= BUSY_BATCH_RECORDS < 20


class Paused:
    """Takes its first batch, then holds it until ``release`` is set: a stage stuck behind
    a backlog."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.in_hand: list[Message] = []
        self.handed = threading.Event()
        self.release = threading.Event()

    def process(self, messages: list[Message]) -> list[Output]:
        if not self.handed.is_set():
            self.in_hand = messages
            self.handed.set()
        self.release.wait(60)
        return []

    def tick(self) -> list[Output]:
        return []


@pytest.mark.parametrize("client", CLIENTS)
def test_lag_gauge_counts_every_partition_of_a_backlog(broker, client: str) -> None:
    """5,000 messages over 4 partitions, a stage holding its first batch: the gauge is the
    backlog (high watermark - position, summed over every partition), counted exactly,
    including the partitions no fetch has returned a high watermark for yet."""
    import uuid

    from kafka import TopicPartition

    from observer.core.bus import STAGE_LAG

    tag = uuid.uuid4().hex[:8]
    cfg = KafkaConfig(bootstrap_servers=broker.bootstrap_servers, topic_prefix=f"lag{tag}.",
                      otlp_topic_prefix=f"lag{tag}.", partitions=4,
                      session_timeout_ms=6000, heartbeat_interval_ms=1000, stage_client=client)
    topic = Topics.from_config(cfg).llm
    ensure_topics(cfg, Topics.from_config(cfg))
    produced = {0: 900, 1: 1100, 2: 1300, 3: 1700}
    producer = make_producer(cfg)
    for partition, n in produced.items():
        for i in range(n - 1):
            producer.send(topic, value=b"x%d" % i, partition=partition)
    producer.flush(30)
    # The last message of each partition in a batch of its own: Tansu answers ListOffsets
    # (end offsets) with the base offset of the partition's last batch + 1, which is the
    # log end only for a one-record batch (Kafka's answer is the log end whatever the batch).
    for partition in produced:
        producer.send(topic, value=b"last", partition=partition).get(10)
    producer.close()

    proc = Paused(f"paused-{tag}")
    group = f"g-lag-{tag}"
    runner = StageRunner(cfg, proc, group, [topic], lag_interval_s=0)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,))
    thread.start()
    try:
        assert proc.handed.wait(60)
        gauge = STAGE_LAG.labels(proc.name, topic)._value.get()
        # The backlog, counted without the runner: what was produced, less what the group
        # committed (nothing yet), less the batch the stage holds (its position is past it).
        consumer = make_consumer(cfg, group)
        committed = {p: consumer.committed(TopicPartition(topic, p)) or 0 for p in produced}
        consumer.close()
        held = {p: sum(1 for m in proc.in_hand if m.partition == p) for p in produced}
        backlog = sum(produced[p] - committed[p] - held[p] for p in produced)
    finally:
        proc.release.set()
        stop.set()
        thread.join(15)
    assert 0 < len(proc.in_hand) < 5000
    assert gauge == backlog
