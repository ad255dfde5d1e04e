"""Reading back what reached ``observer.drift`` (drift.published), on the real broker: the
tail since a point in time, found backwards in bounded steps, whatever else the topic holds."""

from __future__ import annotations

import pytest

from observer.drift.published import KafkaResultLog, MemoryResultLog, parse
from observer.core.bus import make_producer
from observer.core.config import KafkaConfig
from observer.core.records import DriftResult, OffsetRange, encode
from observer.core.topics import Topics

T0 = 1_800_000_000_000


def result(key: str, window: int, last: int) -> bytes:
    return encode(DriftResult(
        segment={"service": key}, segment_key=key, record_type="llm", window_index=window,
        n_reference=10, n_current=10, features=[], drift_share=0.0, dataset_drift=False,
        closed_at_unix_nano=1, current_ranges=[
            OffsetRange(topic="observer.llm", partition=0, first_offset=last - 9, last_offset=last),
            OffsetRange(topic="observer.llm", partition=1, first_offset=0, last_offset=3),
        ],
    ))


def test_the_tail_since_a_time_on_every_partition(kafka_config: KafkaConfig,
                                                  topics: Topics) -> None:
    producer = make_producer(kafka_config)
    sent = []
    for i in range(23):
        key = f"seg{i % 4}"
        partition = i % 2
        producer.send(topics.drift, key=key.encode(), value=result(key, i, 100 + i),
                      partition=partition, timestamp_ms=T0 + i * 1000)
        sent.append((i, partition))
    # Not a result: skipped, and it does not end the walk back.
    producer.send(topics.drift, key=b"x", value=b"garbage", partition=0, timestamp_ms=T0 + 30_000)
    producer.flush()
    producer.close()
    log = KafkaResultLog(kafka_config, topics.drift, step=3)
    got = log.since(T0 + 11_000)
    assert sorted(p.id[2] for p in got) == list(range(11, 23))
    assert {p.id for p in got} == {(f"seg{i % 4}", "llm", i) for i in range(11, 23)}
    first = next(p for p in got if p.id[2] == 11)
    assert first.last_offsets == {("observer.llm", 0): 111, ("observer.llm", 1): 3}
    assert sorted(p.id[2] for p in log.since(None)) == list(range(23))
    assert log.since(T0 + 60_000) == []


def test_an_empty_topic_and_bad_settings(kafka_config: KafkaConfig, topics: Topics) -> None:
    assert KafkaResultLog(kafka_config, topics.drift).since(None) == []
    with pytest.raises(ValueError, match="step must be at least 1"):
        KafkaResultLog(kafka_config, topics.drift, step=0)


def test_memory_log_keeps_only_results() -> None:
    from observer.core.bus import Output

    log = MemoryResultLog("d")
    log.apply([Output("d", "a", result("a", 1, 50)), Output("d", "b", b"{}"),
               Output("other", "a", result("a", 2, 60))], at_ms=5)
    assert [p.id for p in log.since(None)] == [("a", "llm", 1)]
    assert parse(b'{"segment_key": "a"}') is None
