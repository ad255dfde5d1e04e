"""Read a scored window's records back from Kafka.

A :class:`~observer.core.records.DriftResult` names where its records are
(``reference_ranges``, ``current_ranges``: topic, partition, first and last offset). Other
segments' records sit between them, so :func:`read_window` keeps only the records of the
result's segment. Several stages need the records themselves (the trigger stage exports them
to Parquet for retraining, the drift reports compare them), so the reader lives in the
kernel, and each stage keeps its own use of it.

The records at given offsets never change, so reading the same ranges twice gives the same
records (unless retention removed them meanwhile: then fewer, never different ones).

>>> read_window(None, [], {"service": "shop"})  # no ranges: nothing to read, no Kafka needed
[]
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from observer.core.config import KafkaConfig
from observer.core.records import OffsetRange, Record, RecordError, decode


class WindowReadError(RuntimeError):
    """The window's records could not be read back from Kafka; the message says why."""


def read_window(
    kafka: KafkaConfig | None,
    ranges: Sequence[OffsetRange],
    segment: dict[str, str],
    *,
    max_records: int = 200_000,
    timeout_s: float = 30.0,
) -> list[Record]:
    """The records of ``segment`` at the given offsets, in offset order per partition.

    Parameters
    ----------
    kafka
        Where the topics are (only used when ``ranges`` is not empty).
    ranges
        Inclusive offset ranges, at most one per (topic, partition).
    segment
        The segment's fields and values (``DriftResult.segment``); records of other segments
        in the ranges are skipped, as are messages that are not valid records.
    max_records
        Stop after this many records of the segment.
    timeout_s
        Raise :class:`WindowReadError` when the ranges are not read within this time.
    """
    timed = read_window_timed(kafka, ranges, segment, max_records=max_records,
                              timeout_s=timeout_s)
    return [record for record, _ in timed]


def read_window_timed(
    kafka: KafkaConfig | None,
    ranges: Sequence[OffsetRange],
    segment: dict[str, str],
    *,
    max_records: int = 200_000,
    timeout_s: float = 30.0,
) -> list[tuple[Record, int]]:
    """Like :func:`read_window`, each record with its Kafka timestamp (ms; -1 when none):
    a record without an event time of its own is placed in time windows by it."""
    from kafka import TopicPartition

    from observer.core.bus import make_consumer

    wanted = {TopicPartition(r.topic, r.partition): r for r in ranges}
    if not wanted:
        return []
    if kafka is None:
        raise WindowReadError("reading a window back needs a Kafka configuration")
    consumer = make_consumer(kafka, None, enable_auto_commit=False)
    out: list[tuple[Record, int]] = []
    try:
        consumer.assign(list(wanted))
        for tp, r in wanted.items():
            consumer.seek(tp, r.first_offset)
        pending = set(wanted)
        deadline = time.monotonic() + timeout_s
        while pending and len(out) < max_records:
            if time.monotonic() > deadline:
                missing = ", ".join(f"{tp.topic}/{tp.partition}" for tp in pending)
                raise WindowReadError(f"timed out reading offsets back from Kafka ({missing})")
            for tp, batch in consumer.poll(timeout_ms=500).items():
                r = wanted[tp]
                for message in batch:
                    if message.offset > r.last_offset:
                        break
                    try:
                        record = decode(message.value)
                    except RecordError:
                        continue  # not ours to judge here: the drift engine skipped it too
                    if record.segment_of(list(segment)) == segment:
                        out.append((record, message.timestamp))
                if batch and batch[-1].offset >= r.last_offset:
                    pending.discard(tp)
                    consumer.pause(tp)
            for tp in list(pending):
                # Retention may have removed the range: then nothing more will come.
                if consumer.position(tp) > wanted[tp].last_offset:
                    pending.discard(tp)
    finally:
        consumer.close(autocommit=False)
    return out[:max_records]
