"""The stages' consumer (observer.core.stage_consumer) on the real embedded broker: both Kafka
clients hand out the same messages, commit synchronously where the group resumes, and fail
the way observer.core.faults expects; and a read to the end of a topic is never cut short by
the embedded broker's end offsets."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import KafkaError, Producer
from kafka import TopicPartition

from observer.core.bus import Message, make_consumer, read_to_end
from observer.core.config import ConfigError, KafkaConfig
from observer.core.faults import Fault, classify
from observer.core.stage_consumer import (
    StageConsumer,
    kafka_python_error,
    open_stage_consumer,
)

from tests.collectors_support import new_topic

CLIENTS = ["librdkafka", "kafka-python"]




def write(cfg: KafkaConfig, topic: str, n: int, partitions: int) -> None:
    """``n`` records with keys, headers and a distinct timestamp each, in few large batches."""
    producer = Producer({"bootstrap.servers": cfg.servers, "linger.ms": 50})
    for i in range(n):
        producer.produce(topic, value=b"v%d" % i, key=b"k%d" % i, partition=i % partitions,
                         headers=[("ce_id", b"%d" % i), ("empty", b"")],
                         timestamp=1_700_000_000_000 + i)
    assert producer.flush(30) == 0


def take(consumer: StageConsumer, n: int, timeout_s: float = 30) -> list[Message]:
    got: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n:
        assert time.monotonic() < deadline, f"{len(got)} of {n} messages"
        got += consumer.poll(0.2, None)
    return got


def test_both_clients_hand_out_the_same_messages(kafka_config: KafkaConfig) -> None:
    topic = new_topic(kafka_config, "stage-consumer", 3)
    write(kafka_config, topic, 1200, 3)
    read: dict[str, list[Message]] = {}
    for client in CLIENTS:
        cfg = kafka_config.model_copy(update={"stage_client": client})
        consumer = open_stage_consumer(cfg, f"g-same-{client}-{topic}", [topic])
        try:
            read[client] = take(consumer, 1200)
            assert consumer.holds_partitions()
        finally:
            consumer.close()
    for client, messages in read.items():
        # Each partition in offset order, every message once, as Message.of builds it.
        for p in range(3):
            offsets = [m.offset for m in messages if m.partition == p]
            assert offsets == list(range(400)), client
    assert sorted(read["librdkafka"], key=lambda m: (m.partition, m.offset)) == \
        sorted(read["kafka-python"], key=lambda m: (m.partition, m.offset))
    first = next(m for m in read["librdkafka"] if m.value == b"v7")
    assert (first.key, first.timestamp_ms, first.headers) == \
        (b"k7", 1_700_000_000_007, (("ce_id", b"7"), ("empty", b"")))


@pytest.mark.parametrize("client", CLIENTS)
def test_a_commit_is_where_the_group_resumes(kafka_config: KafkaConfig, client: str) -> None:
    cfg = kafka_config.model_copy(update={"stage_client": client})
    topic = new_topic(cfg, "stage-consumer", 2)
    write(cfg, topic, 100, 2)
    group = f"g-commit-{client}-{topic}"
    consumer = open_stage_consumer(cfg, group, [topic])
    try:
        take(consumer, 100)
        consumer.commit({(topic, 0): 30, (topic, 1): 40})
        # Synchronous: the coordinator has the offsets when commit returns.
        reader = make_consumer(cfg, group)
        try:
            assert {p: reader.committed(TopicPartition(topic, p)) for p in (0, 1)} == {0: 30, 1: 40}
        finally:
            reader.close(autocommit=False)
    finally:
        consumer.close()  # no commit of its own on close
    again = open_stage_consumer(cfg, group, [topic])
    try:
        resumed = take(again, 20 + 10)  # 50 records a partition
        assert sorted((m.partition, m.offset) for m in resumed) == \
            [(0, o) for o in range(30, 50)] + [(1, o) for o in range(40, 50)]
    finally:
        again.close()


@pytest.mark.parametrize("client", CLIENTS)
def test_lag_is_the_backlog_of_the_partitions_held(kafka_config: KafkaConfig, client: str) -> None:
    cfg = kafka_config.model_copy(update={"stage_client": client})
    topic = new_topic(cfg, "stage-consumer", 2)
    write(cfg, topic, 600, 2)
    consumer = open_stage_consumer(cfg, f"g-lag-{client}-{topic}", [topic])
    try:
        got = take(consumer, 1)
        got += consumer.poll(0.2, 10)
        # What was written less what was handed out; a partition nothing was handed out
        # from yet counts from the start.
        deadline = time.monotonic() + 10
        while consumer.lag() != {topic: 600 - len(got)}:
            assert time.monotonic() < deadline, (consumer.lag(), 600 - len(got))
            time.sleep(0.2)
    finally:
        consumer.close()


@pytest.mark.parametrize(("code", "fault"), [
    (KafkaError.REBALANCE_IN_PROGRESS, Fault.TRANSIENT),   # a commit during a rebalance
    (KafkaError.ILLEGAL_GENERATION, Fault.TRANSIENT),      # ... after one
    (KafkaError.UNKNOWN_MEMBER_ID, Fault.TRANSIENT),       # ... after leaving the group
    (KafkaError._TRANSPORT, Fault.TRANSIENT),
    (KafkaError._TIMED_OUT, Fault.TRANSIENT),
    (KafkaError.NOT_COORDINATOR, Fault.TRANSIENT),
    (KafkaError.TOPIC_AUTHORIZATION_FAILED, Fault.PERMANENT),
    (KafkaError.GROUP_AUTHORIZATION_FAILED, Fault.PERMANENT),
    (KafkaError._AUTHENTICATION, Fault.PERMANENT),
])
def test_librdkafka_errors_classify_as_kafka_pythons(code: int, fault: Fault) -> None:
    error = kafka_python_error(KafkaError(code))
    assert classify(error) is fault
    assert KafkaError(code).name() in str(error)  # the log says which error it was


def test_options_librdkafka_cannot_take_are_a_permanent_configuration_error() -> None:
    cfg = KafkaConfig(stage_client="librdkafka", client_options={"api_version": (3, 0)})
    with pytest.raises(ConfigError, match="api_version.*kafka.stage_client: kafka-python") as e:
        open_stage_consumer(cfg, "g", ["t"])
    assert classify(e.value) is Fault.PERMANENT


def test_read_to_end_reads_past_the_embedded_brokers_end_offset(kafka_config: KafkaConfig) -> None:
    """1,200 records in one batch: the embedded broker reports the partition's end as that
    batch's base offset + 1; a read stopping there while polls are capped at 500 records
    would miss most of it."""
    topic = new_topic(kafka_config, "stage-consumer", 1)
    write(kafka_config, topic, 1200, 1)
    consumer = make_consumer(kafka_config, None)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        reported = consumer.end_offsets([tp])[tp]
        records = read_to_end(consumer, time.monotonic() + 30)
    finally:
        consumer.close()
    assert [r.offset for r in records] == list(range(1200))
    assert reported < 1200  # what a read to end_offsets would have stopped at
