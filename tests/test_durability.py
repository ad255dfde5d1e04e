"""Embedded durable mode's parts: the receiver spool (torn tails, fsync before the answer,
group commit, settling, replay rewrite), the drift state file and its incarnation rule, and
the settle watermark against the real broker."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from kafka import OffsetAndMetadata, TopicPartition

from observer.collectors.receiver.spool import SPOOL_DROPPED, Entry, Spool, encode
from observer.core.compacted import MemoryCompactedStore
from observer.drift.engine import DriftEngine
from observer.drift.local_state import LocalDriftState, MirroredEngine
from observer.drift.published import MemoryResultLog
from observer.core.bus import Message, make_consumer, make_producer
from observer.core.config import KafkaConfig
from observer.core.settle import Flow, KafkaPositions, Settler
from observer.core.topics import Topics
from tests.drift_support import TOPICS, first_window_config, keyed, messages, results_of


def entries(topic: str, partition: int, offsets: range, size: int = 10) -> list[Entry]:
    return [Entry(topic, partition, o, b"k%d" % o, bytes([o % 256]) * size, (("h", b"v"),))
            for o in offsets]


# -- spool -------------------------------------------------------------------------------------


def test_spool_drops_a_torn_tail_and_keeps_every_whole_record(tmp_path: Path) -> None:
    spool = Spool(tmp_path).open()
    spool.write(entries("otlp_spans", 0, range(3)))
    spool.close()
    [segment] = tmp_path.glob("*.seg")
    whole = segment.read_bytes()
    # A crash in the middle of the next write: half a record at the end.
    torn = encode(entries("otlp_spans", 0, range(3, 4))[0])
    segment.write_bytes(whole + torn[: len(torn) // 2])
    dropped = SPOOL_DROPPED._value.get()
    again = Spool(tmp_path).open()
    assert [e.offset for e in again.pending()] == [0, 1, 2]
    assert SPOOL_DROPPED._value.get() - dropped == len(torn) // 2
    again.close()
    # A corrupt record (a flipped bit) ends what is trusted in its segment.
    data = bytearray(whole)
    data[len(whole) - 3] ^= 0x40
    segment.write_bytes(bytes(data))
    third = Spool(tmp_path).open()
    assert [e.offset for e in third.pending()] == [0, 1]
    third.close()


def test_spool_answers_only_after_fsync_and_one_fsync_serves_every_waiter(tmp_path: Path) -> None:
    calls: list[bytes] = []
    entered, release = threading.Event(), threading.Event()

    def fsync(fd: int) -> None:
        # What is on disk (in the file) when fsync is called: the write comes first.
        [segment] = sorted(tmp_path.glob("*.seg"))[-1:]
        calls.append(segment.read_bytes())
        entered.set()
        release.wait(10)
        os.fsync(fd)

    spool = Spool(tmp_path, fsync=fsync).open()
    first = spool.append(entries("t", 0, range(1)))
    assert entered.wait(10)
    # While the first fsync runs, more requests queue up; none is answered before its fsync.
    waiting = [spool.append(entries("t", 0, range(i, i + 1))) for i in range(1, 11)]
    assert not first.done() and not any(f.done() for f in waiting)
    entered.clear()
    release.set()
    first.result(10)
    for f in waiting:
        f.result(10)
    # One fsync for the first request, one for the ten that waited meanwhile.
    assert len(calls) == 2
    assert encode(entries("t", 0, range(1))[0]) in calls[0]
    assert all(encode(e) in calls[1] for e in entries("t", 0, range(1, 11)))
    spool.close()


def test_spool_settles_whole_segments_and_skips_settled_entries_at_load(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=200, readers={"spans": {"norm", "paths"}}).open()
    for start in range(0, 40, 4):  # about one segment per request
        spool.write(entries("spans", 0, range(start, start + 4))
                    + entries("spans", 1, range(start, start + 4)))
    before = len(list(tmp_path.glob("*.seg")))
    # Two groups read the topic; trace grouping lags on partition 1: only segments whose
    # entries both groups have settled go.
    assert spool.settle("norm", {("spans", 0): 30, ("spans", 1): 30}) == 0
    removed = spool.settle("paths", {("spans", 0): 30, ("spans", 1): 12})
    assert removed >= 2 and len(list(tmp_path.glob("*.seg"))) == before - removed
    spool.close()
    again = Spool(tmp_path, segment_bytes=200).open()
    left = {(e.partition, e.offset) for e in again.pending()}
    # Nothing unsettled is lost, nothing settled is replayed.
    assert left == {(0, o) for o in range(30, 40)} | {(1, o) for o in range(12, 40)}
    # An unread topic (no stage reads it) is settled whatever its offsets.
    again.write(entries("otlp_logs", 0, range(3)))
    assert again.watermarks() == {"norm": {("spans", 0): 30, ("spans", 1): 30},
                                  "paths": {("spans", 0): 30, ("spans", 1): 12}}
    again.settle("norm", {("spans", 0): 40, ("spans", 1): 40})
    again.settle("paths", {("spans", 0): 40, ("spans", 1): 40}, unread={"otlp_logs"})
    again.close()
    third = Spool(tmp_path).open()
    assert third.pending() == []
    third.close()


def test_spool_rewrite_replaces_everything_with_the_new_offsets(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=100).open()
    for start in range(100, 110, 2):
        spool.write(entries("spans", 0, range(start, start + 2)))
    spool.close()
    replaying = Spool(tmp_path, segment_bytes=100).open()
    old = replaying.pending()
    old_segments = set(tmp_path.glob("*.seg"))
    assert len(old) == 10 and len(old_segments) > 2
    replaying.rewrite([Entry(e.topic, e.partition, i, e.key, e.value, e.headers)
                       for i, e in enumerate(old)])
    replaying.close()
    assert not old_segments & set(tmp_path.glob("*.seg"))
    again = Spool(tmp_path).open()
    assert [e.offset for e in again.pending()] == list(range(10))
    assert [e.value for e in again.pending()] == [e.value for e in old]
    again.close()


# -- drift state file and the incarnation rule ------------------------------------------------


def _run(engine, batch: list[Message], store: MemoryCompactedStore | None = None) -> list:
    outputs = engine.process(batch)
    outputs += engine.tick()
    if store is not None:
        store.apply(outputs)
    return outputs


def _renumbered(stream: list[Message]) -> list[Message]:
    """The same records as a new broker incarnation numbers them: from 0 per partition."""
    next_offset: dict[tuple[str, int], int] = {}
    out = []
    for m in stream:
        tp = (m.topic, m.partition)
        o = next_offset.get(tp, 0)
        next_offset[tp] = o + 1
        out.append(Message(m.topic, m.partition, o, m.key, m.value, m.timestamp_ms))
    return out


@pytest.mark.parametrize("rebased", [True, False])
def test_seeded_state_continues_exactly_in_a_new_incarnation(tmp_path: Path, rebased: bool) -> None:
    cfg = first_window_config(window_size=50, checkpoints=True)
    stream = messages(seed=11, n=700)
    head, tail = stream[:400], stream[400:]
    whole = keyed(results_of(_run(DriftEngine(cfg, TOPICS), stream)))

    # Incarnation i1: the engine, mirrored to the state file, sees the head.
    local = LocalDriftState(tmp_path / "drift.sqlite", TOPICS, "i1")
    engine = DriftEngine(cfg, TOPICS, store=MemoryCompactedStore(TOPICS.drift_state),
                         results=MemoryResultLog(TOPICS.drift))
    before = MirroredEngine(engine, local)
    produced = []
    for i in range(0, len(head), 50):
        produced += _run(before, head[i:i + 50])
    local.close()

    # Incarnation i2: a new, empty broker seeded from the file; offsets start at 0 again.
    seed = LocalDriftState(tmp_path / "drift.sqlite", TOPICS, "i2" if rebased else "i1").seed()
    store = MemoryCompactedStore(TOPICS.drift_state)
    store.apply(seed)
    log = MemoryResultLog(TOPICS.drift)
    log.apply(seed, at_ms=0)
    after = DriftEngine(cfg, TOPICS, store=store, results=log)
    renumbered = _renumbered(tail)
    for i in range(0, len(renumbered), 50):
        produced += _run(after, renumbered[i:i + 50], store)

    got = keyed(results_of(produced))
    if not rebased:
        # Old positions read as new offsets: the new log's first records are skipped.
        assert got.keys() != whole.keys()
        return
    # Exactly the results of one uninterrupted engine: same windows, same reference, same
    # statistics, same episodes (only the offset ranges differ: those records are gone).
    assert got.keys() == whole.keys()
    for k, r in got.items():
        w = whole[k]
        assert (r.n_reference, r.n_current, r.drift_share, r.dataset_drift,
                r.episode_start_window) == (w.n_reference, w.n_current, w.drift_share,
                                            w.dataset_drift, w.episode_start_window), k
        assert [f.statistics for f in r.features] == [f.statistics for f in w.features], k
    # The results kept in the file are seeded back too, their ranges emptied.
    seeded = [o for o in seed if o.topic == TOPICS.drift]
    assert seeded and all(not r.current_ranges for r in results_of(seeded))


# -- the settle watermark on the real broker ---------------------------------------------------


def _commit(kafka: KafkaConfig, group: str, offsets: dict[tuple[str, int], int]) -> None:
    consumer = make_consumer(kafka, group)
    try:
        tps = [TopicPartition(t, p) for t, p in offsets]
        consumer.assign(tps)
        consumer.commit({TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                         for (t, p), o in offsets.items()})
    finally:
        consumer.close(autocommit=False)


def test_settle_waits_for_each_stage_down_the_chain(
    kafka_config: KafkaConfig, topics: Topics
) -> None:
    flows = {
        "normalize": Flow("g-norm", (topics.spans,), (topics.llm,)),
        "drift": Flow("g-drift", (topics.llm,), (topics.drift, topics.drift_state)),
        "trigger": Flow("g-trig", (topics.drift,), (topics.triggers,)),
    }
    settled: list[tuple[str, dict, set]] = []
    positions = KafkaPositions(kafka_config)
    settler = Settler(flows, [topics.spans, topics.logs], positions,
                      lambda group, below, unread: settled.append((group, below, unread)) or 0)
    producer = make_producer(kafka_config, linger_ms=50)
    try:
        for i in range(6):
            producer.send(topics.spans, b"raw", partition=0)
        # One batch of five derived records: the embedded broker reports its end as 1.
        for i in range(5):
            producer.send(topics.llm, b"llm", partition=1)
        producer.flush()
        _commit(kafka_config, "g-norm", {(topics.spans, 0): 4})
        assert not settler.step()  # A read; the drift group has committed nothing
        _commit(kafka_config, "g-drift", {(topics.llm, 1): 1})
        assert not settler.step() and settler.phase == 2  # 1 is the reported end, not the real one
        _commit(kafka_config, "g-drift", {(topics.llm, 1): 5})
        producer.send(topics.drift, b"result", partition=0)
        producer.flush()
        assert not settler.step() and settler.phase == 3  # the trigger group is behind
        _commit(kafka_config, "g-trig", {(topics.drift, 0): 1})
        assert settler.step()
        [(group, below, unread)] = settled
        assert group == "g-norm"
        # Phase A's offsets: what the raw readers had committed when the round began.
        assert below[(topics.spans, 0)] == 4 and below[(topics.spans, 1)] == 0
        assert unread == {topics.logs}
    finally:
        producer.close()
        positions.close()


def test_settle_waits_on_every_path_to_the_drift_engine(
    kafka_config: KafkaConfig, topics: Topics
) -> None:
    """Scores from traces reach the drift engine through the eval join: a spool entry settles
    only once the drift engine has read both the normaliser's records and what the join made
    of the normaliser's scores (a chain that waited on one path would settle it early)."""
    flows = {
        "normalize": Flow("g2-norm", (topics.spans,), (topics.llm, topics.evals)),
        "eval-join": Flow("g2-join", (topics.llm, topics.evals), (topics.evals_joined,)),
        "drift": Flow("g2-drift", (topics.llm, topics.evals_joined), (topics.drift,)),
        "trigger": Flow("g2-trig", (topics.drift,), (topics.triggers,)),
    }
    settled: list[str | None] = []
    positions = KafkaPositions(kafka_config)
    settler = Settler(flows, [topics.spans], positions,
                      lambda group, below, unread: settled.append(group) or 0)
    producer = make_producer(kafka_config, linger_ms=0)
    try:
        llm_end = _send_one(producer, topics.llm)
        evals_end = _send_one(producer, topics.evals)
        _commit(kafka_config, "g2-norm", {(topics.spans, 0): 0})
        assert not settler.step() and settler.phase == 2  # the join has read nothing
        _commit(kafka_config, "g2-join", {(topics.evals, evals_end[1]): evals_end[0],
                                          (topics.llm, llm_end[1]): llm_end[0]})
        joined_end = _send_one(producer, topics.evals_joined)
        assert not settler.step() and settler.phase == 3  # the drift engine has read nothing
        _commit(kafka_config, "g2-drift", {(topics.llm, llm_end[1]): llm_end[0]})
        assert not settler.step() and settler.phase == 3  # ... but not the joined score
        _commit(kafka_config, "g2-drift", {(topics.evals_joined, joined_end[1]): joined_end[0]})
        assert settler.step() and settled == ["g2-norm"]  # the trigger has nothing to read
    finally:
        producer.close()
        positions.close()


def _send_one(producer: object, topic: str) -> tuple[int, int]:
    """Send one record to partition 0 of ``topic``; its (end offset, partition)."""
    meta = producer.send(topic, b"x", partition=0).get(timeout=10)  # type: ignore[attr-defined]
    return meta.offset + 1, meta.partition


# -- replay at start ----------------------------------------------------------------------------


def test_replay_resumes_each_group_where_it_had_settled(tmp_path: Path, kafka_config: KafkaConfig,
                                                       topics: Topics) -> None:
    from observer.durability import Durability

    flows = {"normalize": Flow("g-norm", (topics.spans,), (topics.llm,)),
             "paths": Flow("g-paths", (topics.spans,), (topics.paths,))}
    spool = Spool(tmp_path / "spool").open()
    spool.write(entries(topics.spans, 0, range(100, 110)))
    # The normaliser had settled up to 108, trace grouping up to 103 (it holds traces).
    spool.settle("g-norm", {(topics.spans, 0): 108, (topics.spans, 1): 0})
    spool.settle("g-paths", {(topics.spans, 0): 103, (topics.spans, 1): 0})
    spool.close()

    durability = Durability(kafka_config, topics, flows, tmp_path, "i2",
                            settle_interval_s=60).open()
    positions = KafkaPositions(kafka_config)
    try:
        assert durability.replayed == 7  # 103..109: what trace grouping still needed
        tps = positions.partitions([topics.spans])
        # Each group resumes at its own point of the new log.
        assert positions.committed("g-norm", tps)[(topics.spans, 0)] == 5  # old 108
        assert positions.committed("g-paths", tps)[(topics.spans, 0)] == 0  # old 103
        assert positions.ends(tps)[(topics.spans, 0)] == 7
        consumer = make_consumer(kafka_config, None)
        consumer.assign([TopicPartition(topics.spans, 0)])
        consumer.seek(TopicPartition(topics.spans, 0), 0)
        values = []
        while len(values) < 7:
            for rs in consumer.poll(timeout_ms=500).values():
                values += [(r.offset, r.key, r.value) for r in rs]
        consumer.close()
        assert [k for _, k, _ in values] == [b"k%d" % o for o in range(103, 110)]
    finally:
        positions.close()
        durability.close()
    # The spool now speaks the new offsets, watermarks included.
    again = Spool(tmp_path / "spool").open()
    assert [e.offset for e in again.pending()] == list(range(7))
    assert again.watermarks()["g-norm"][(topics.spans, 0)] == 5
    again.close()


def test_one_state_directory_serves_one_observer_at_a_time(tmp_path: Path, free_port) -> None:
    from observer.core.broker import BrokerError, EmbeddedBroker, read_incarnation

    first = EmbeddedBroker(f"127.0.0.1:{free_port()}", state_dir=tmp_path).start()
    try:
        with pytest.raises(BrokerError, match="in use by another observer process"):
            EmbeddedBroker(f"127.0.0.1:{free_port()}", state_dir=tmp_path).start()
        assert read_incarnation(tmp_path) == first.incarnation  # not overwritten
    finally:
        first.stop()
    with EmbeddedBroker(f"127.0.0.1:{free_port()}", state_dir=tmp_path) as second:
        assert second.incarnation not in (None, first.incarnation)
        assert read_incarnation(tmp_path) == second.incarnation


def test_a_spool_that_cannot_write_makes_the_receiver_answer_503(
    tmp_path: Path, kafka_config: KafkaConfig, topics: Topics
) -> None:
    from observer.collectors.receiver.intake import Intake, Refusal
    from observer.core.bus import Output
    from observer.collectors.receiver.config import ReceiverConfig

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    spool = Spool(tmp_path, fsync=disk_full).open()
    intake = Intake(ReceiverConfig(ack_timeout_s=10), kafka_config, topics, spool=spool).open()
    try:
        with pytest.raises(Refusal) as refused:
            intake.write([Output(topics.spans, b"trace", b"spans")], "spans")
        assert refused.value.http_status == 503 and refused.value.retry_after_s
        assert "could not be kept on local disk" in refused.value.message
        assert "No space left" in refused.value.message
    finally:
        intake.close()
        spool.close()


@pytest.mark.parametrize("client", ["librdkafka", "kafka-python"])
def test_the_spool_records_where_kafka_put_each_message(
    tmp_path: Path, kafka_config: KafkaConfig, topics: Topics, client: str
) -> None:
    from observer.collectors.receiver.intake import Intake
    from observer.core.bus import Output
    from observer.collectors.receiver.config import ReceiverConfig

    spool = Spool(tmp_path).open()
    intake = Intake(ReceiverConfig(kafka_client=client), kafka_config, topics, spool=spool).open()
    try:
        for i in range(3):
            intake.write([Output(topics.spans, b"t%d" % j, b"v%d-%d" % (i, j), (("h", b"x"),))
                          for j in range(4)], "spans")
    finally:
        intake.close()
        spool.close()
    kept = Spool(tmp_path).open().pending()
    assert len(kept) == 12
    consumer = make_consumer(kafka_config, None)
    try:
        tps = [TopicPartition(topics.spans, p) for p in range(kafka_config.partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        in_kafka = {}
        while len(in_kafka) < 12:
            for rs in consumer.poll(timeout_ms=500).values():
                in_kafka.update({(r.partition, r.offset): (r.key, r.value) for r in rs})
    finally:
        consumer.close()
    assert {(e.partition, e.offset): (e.key, e.value) for e in kept} == in_kafka
    assert all(e.headers == (("h", b"x"),) for e in kept)


def test_a_retired_streams_results_leave_the_state_file(tmp_path: Path) -> None:
    """The engine deletes a retired stream's state on ``observer.references``
    (``drift.stream_idle_s``); the state file then drops its results, which a restart would
    otherwise seed again for a stream that no longer exists, without bound under churn."""
    from observer.core.bus import Output
    from observer.core.records import DriftResult
    from observer.core.records import encode as encode_record

    def result(segment: str, window: int) -> Output:
        return Output(TOPICS.drift, segment, encode_record(DriftResult(
            segment={"service": segment}, segment_key=segment, record_type="llm",
            window_index=window, n_reference=10, n_current=10, features=[], drift_share=0.0,
            dataset_drift=False, closed_at_unix_nano=window)))

    local = LocalDriftState(tmp_path / "drift.sqlite", TOPICS, "i1")
    local.apply([result("a", 1), result("a", 2), result("b", 1)])
    local.apply([Output(TOPICS.references, "llm/a", None), result("b", 2)])
    local.close()
    seeded = LocalDriftState(tmp_path / "drift.sqlite", TOPICS, "i1").seed()
    assert [(o.key, json.loads(o.value)["window_index"]) for o in seeded] == [("b", 1), ("b", 2)]
