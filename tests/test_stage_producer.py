"""The stages' producer (observer.core.stage_producer) and the one-pass record decode, on the
real embedded broker: both Kafka clients place and deliver the same, fail the same way, and
decode gives every hostile message the dead-letter reason the two-step decode gave."""

from __future__ import annotations

import time

import pytest
from kafka import TopicPartition
from kafka.errors import MessageSizeTooLargeError

from observer.core.bus import MAX_MESSAGE_BYTES, Output, make_consumer
from observer.core.config import ConfigError, KafkaConfig
from observer.core.faults import Fault, classify
from observer.core.records import LLMCall, RecordError, decode, encode
from observer.core.stage_producer import open_stage_producer

from tests.collectors_support import new_topic

CLIENTS = ["librdkafka", "kafka-python"]




def read_back(cfg: KafkaConfig, topic: str, n: int, timeout_s: float = 20) -> list:
    """Every record of ``topic`` from the start, ``n`` expected."""
    consumer = make_consumer(cfg, None)
    deadline = time.monotonic() + timeout_s
    try:
        parts = consumer.partitions_for_topic(topic)
        while not parts:
            assert time.monotonic() < deadline, f"no metadata for {topic}"
            time.sleep(0.2)
            parts = consumer.partitions_for_topic(topic)
        consumer.assign([TopicPartition(topic, p) for p in sorted(parts)])
        got: list = []
        while len(got) < n and time.monotonic() < deadline:
            for records in consumer.poll(200).values():
                got += records
        return got
    finally:
        consumer.close()


@pytest.mark.parametrize("client", CLIENTS)
def test_outputs_are_acknowledged_with_keys_headers_and_kafkas_placement(
    kafka_config: KafkaConfig, client: str
) -> None:
    cfg = kafka_config.model_copy(update={"stage_client": client})
    topic = new_topic(cfg, "stage-producer")
    outputs = [Output(topic, f"segment-{i % 7}", b"v%d" % i, (("h", b"%d" % i),))
               for i in range(60)]
    producer = open_stage_producer(cfg, 10)
    try:
        producer.send_all(outputs, 10)  # returns only once all are acknowledged
    finally:
        producer.close(5)
    got = read_back(cfg, topic, len(outputs))
    assert sorted(r.value for r in got) == sorted(o.value for o in outputs)
    by_value = {r.value: r for r in got}
    for o in outputs:
        record = by_value[o.value]
        assert record.key == o.key.encode() and list(record.headers) == list(o.headers)
    # One key, one partition, whichever client wrote it: the drift engine's segments are
    # placed by key, and a Collector or a Java client puts a key where kafka-python does.
    placed = {r.key: r.partition for r in got}
    assert {r.partition for r in got if r.key == b"segment-0"} == {placed[b"segment-0"]}
    from kafka.partitioner.default import murmur2

    assert all(p == (murmur2(k) & 0x7FFFFFFF) % 4 for k, p in placed.items())


@pytest.mark.parametrize("client", CLIENTS)
def test_an_output_over_the_limit_is_a_poison_fault(kafka_config: KafkaConfig, client: str) -> None:
    cfg = kafka_config.model_copy(update={"stage_client": client})
    topic = new_topic(cfg, "stage-producer", 1)
    producer = open_stage_producer(cfg, 10)
    try:
        with pytest.raises(MessageSizeTooLargeError) as raised:
            producer.send_all([Output(topic, "k", b"x" * (MAX_MESSAGE_BYTES + 1))], 10)
    finally:
        producer.close(5)
    # The runner quarantines the input of such an output (too_large) rather than restart.
    assert classify(raised.value) is Fault.POISON


def test_options_librdkafka_cannot_take_are_a_permanent_configuration_error() -> None:
    cfg = KafkaConfig(stage_client="librdkafka", client_options={"api_version": (3, 0)})
    with pytest.raises(ConfigError, match="api_version.*kafka.stage_client: kafka-python") as e:
        open_stage_producer(cfg, 5)
    assert classify(e.value) is Fault.PERMANENT
    open_stage_producer(cfg.model_copy(update={"stage_client": "kafka-python"}), 5).close(1)


GOOD = encode(LLMCall(service="shop", model="m", trace_id="t", span_id="s", latency_ms=3.0))
HOSTILE = [
    (b"not json", "decode_error"),
    (b"\xff\xfe{}", "decode_error"),                         # not UTF-8
    (b"[" * 100_000 + b"]" * 100_000, "decode_error"),      # nested past any recursion limit
    (b"[1, 2]", "schema_error"),
    (b'"observer.llm/v1"', "schema_error"),
    (b"{}", "schema_error"),
    (b'{"schema": "observer.nope/v9"}', "schema_error"),
    (b'{"schema": 5}', "schema_error"),
    (GOOD.replace(b'"latency_ms":3.0', b'"latency_ms":NaN'), "invalid_value"),
    (GOOD.replace(b'"latency_ms":3.0', b'"latency_ms":-1'), "invalid_value"),
    (GOOD.replace(b'"latency_ms":3.0', b'"latency_ms":"fast"'), "invalid_value"),
    (GOOD.replace(b'"latency_ms":3.0', b'"latency_ms":1' + b"0" * 5000), "invalid_value"),
    (GOOD.replace(b'"span_id":"s"', b'"span_id":"s","secret_extra":"hunter2"'), "invalid_value"),
]


@pytest.mark.parametrize(("raw", "reason"), HOSTILE, ids=range(len(HOSTILE)))
def test_decode_gives_each_bad_message_its_dead_letter_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(RecordError) as e:
        decode(raw)
    assert e.value.reason == reason
    assert "hunter2" not in str(e.value)  # a client's values stay out of logs and dead letters


def test_decode_reads_bytes_text_and_objects_alike() -> None:
    import json

    record = decode(GOOD)
    assert isinstance(record, LLMCall) and record.latency_ms == 3.0
    assert decode(GOOD.decode()) == record == decode(json.loads(GOOD))
