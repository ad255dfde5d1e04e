"""Drive the drift engine as the StageRunner does (process, produce, commit, tick) against an
in-memory checkpoint store, with or without kills: shared by the sketch, window and reference
tests, which check that every new window kind, reference and sketch mode checkpoints exactly.
"""

from __future__ import annotations

import io
import json
import random
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from observer.core.compacted import MemoryCompactedStore
from observer.drift.engine import DriftEngine
from observer.drift.offline import ScoreOptions, run
from observer.drift.published import MemoryResultLog
from observer.core.bus import Message, Output, StageRunner, make_consumer
from observer.core.config import KafkaConfig
from observer.drift.config import DriftConfig
from observer.core.records import DriftResult, LLMCall, ToolCall, decode, encode
from observer.core.topics import Topics

TOPICS = Topics.from_config(KafkaConfig(topic_prefix="dsup."))

FIRST_WINDOW = {"reference": "first_window", "numeric_method": "psi",
                "categorical_method": "jensenshannon"}
"""The engine's settings before Evidently's ``auto`` over a 2000-record reference became the
default: each stream's first window is its reference, PSI decides numeric features and
Jensen-Shannon categorical ones. For tests about windows, segments, checkpoints and restarts
(not about the default method), whose streams are a few windows long."""


def first_window_config(**settings: Any) -> DriftConfig:
    """A :class:`DriftConfig` with :data:`FIRST_WINDOW` under ``settings``."""
    return DriftConfig(**{**FIRST_WINDOW, **settings})
T0_MS = 1_700_000_000_000


def messages(seed: int, n: int = 700, *, ms_per_record: int = 1, drift_at: float = 0.5,
             disorder_ms: int = 0) -> list[Message]:
    """LLM and tool calls of 3 segments on 2 partitions, drifting at ``drift_at`` of the
    stream; Kafka timestamps ``ms_per_record`` apart, record start times jittered back by up
    to ``disorder_ms`` (out-of-order event time)."""
    rng = np.random.default_rng(seed)
    segments = [("shop", "m1"), ("shop", "m2"), ("bank", "m1")]
    offsets: dict[tuple[str, int], int] = {}
    out = []
    for i in range(n):
        which = int(rng.integers(len(segments)))
        service, model = segments[which]
        drifted = i > n * drift_at
        ts = T0_MS + i * ms_per_record
        start = (ts - int(rng.integers(0, disorder_ms + 1))) * 1_000_000
        if rng.random() < 0.7:
            rec: LLMCall | ToolCall = LLMCall(
                service=service, model=model, trace_id=uuid.uuid4().hex, span_id="s",
                output_tokens=int(rng.lognormal(np.log(200 * (2 if drifted else 1)), 0.5)),
                input_tokens=int(rng.poisson(800)),
                latency_ms=float(rng.normal(900, 100)),
                finish_reason=str(rng.choice(["stop", "length"], p=[0.9, 0.1])),
                start_time_unix_nano=start,
            )
            topic = TOPICS.llm
        else:
            rec = ToolCall(service=service, model=model, tool_name="search",
                           trace_id=uuid.uuid4().hex, span_id="s", start_time_unix_nano=start,
                           status="error" if rng.random() < (0.4 if drifted else 0.05) else "ok")
            topic = TOPICS.tools
        partition = which % 2  # a segment lives in one partition
        tp = (topic, partition)
        offsets[tp] = offsets.get(tp, -1) + 1
        out.append(Message(topic, partition, offsets[tp], f"{service}|{model}".encode(),
                           encode(rec), ts))
    return out


@dataclass
class Runner:
    """StageRunner's loop: process, produce (store + results), commit, tick.

    The clock moves 10 minutes per reading, far more than ``restore_lookback_s``, so a
    restore that looked back too little would miss a published result and duplicate it."""

    cfg: DriftConfig
    store: MemoryCompactedStore = field(
        default_factory=lambda: MemoryCompactedStore(TOPICS.drift_state))
    log: MemoryResultLog = field(default_factory=lambda: MemoryResultLog(TOPICS.drift))
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    produced: list[Output] = field(default_factory=list)
    now_ns: int = T0_MS * 1_000_000

    def clock(self) -> int:
        self.now_ns += 600 * 10**9
        return self.now_ns

    def engine(self) -> DriftEngine:
        return DriftEngine(self.cfg, TOPICS, store=self.store, results=self.log, clock=self.clock)

    def pending(self, batch: list[Message]) -> list[Message]:
        return [m for m in batch if m.offset >= self.committed.get((m.topic, m.partition), 0)]

    def acknowledge(self, outputs: list[Output]) -> None:
        self.store.apply(outputs)
        self.log.apply(outputs, self.clock() // 1_000_000)
        self.produced += [o for o in outputs if o.topic == TOPICS.drift]

    def commit(self, batch: list[Message]) -> None:
        for m in batch:
            self.committed[(m.topic, m.partition)] = m.offset + 1


def results_of(outputs: list[Output]) -> list[DriftResult]:
    return [decode(o.value) for o in outputs if o.topic == TOPICS.drift]  # type: ignore[misc]


def keyed(results: list[DriftResult]) -> dict[tuple, DriftResult]:
    """Results by (segment, record type, window); each must appear exactly once."""
    out: dict[tuple, DriftResult] = {}
    for r in results:
        k = (r.segment_key, r.record_type, r.window_index)
        assert k not in out, f"a result was published twice: {k}"
        out[k] = r
    return out


def uninterrupted(cfg: DriftConfig, stream: list[Message], batch: int) -> dict[tuple, DriftResult]:
    runner = Runner(cfg)
    engine = runner.engine()
    for i in range(0, len(stream), batch):
        part = stream[i:i + batch]
        runner.acknowledge(engine.process(part) + engine.tick())
        runner.commit(part)
    return keyed(results_of(runner.produced))


def with_kills(cfg: DriftConfig, stream: list[Message], batch: int, seed: int) -> tuple[dict, int]:
    """The results when the engine is killed every few batches, with any subset of the
    killed batch's outputs acknowledged and nothing committed; and the number of kills.
    :func:`keyed` fails if any result was published twice."""
    rnd = random.Random(seed)
    runner = Runner(cfg)
    kills = 0
    while runner.pending(stream):
        engine = runner.engine()
        crash_after = rnd.randint(0, 3)
        # A successor may poll smaller batches: it commits some before it has caught up
        # with what the killed one published, and may be killed in turn.
        size = rnd.choice([batch, max(1, batch // 4)])
        for iteration in range(crash_after + 1):
            part = runner.pending(stream)[:size]
            if not part:
                break
            outputs = engine.process(part) + engine.tick()
            if iteration == crash_after:
                runner.acknowledge([o for o in outputs if rnd.random() < 0.5])
                kills += 1
                break
            runner.acknowledge(outputs)
            runner.commit(part)
    return keyed(results_of(runner.produced)), kills


@contextmanager
def engine_running(kafka: KafkaConfig, cfg: DriftConfig, topics: Topics) -> Iterator[DriftEngine]:
    """A drift engine run by the real StageRunner in its own consumer group, until the block
    ends; the block fails if the runner stopped on an error."""
    engine = DriftEngine(cfg, topics)
    runner = StageRunner(kafka, engine, f"drift-{uuid.uuid4().hex[:6]}", engine.inputs)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield engine
    finally:
        stop.set()
        thread.join(15)
    assert runner.error is None


def drain_results(kafka: KafkaConfig, topic: str, n: int, timeout_s: float = 60) -> list[DriftResult]:
    """At least ``n`` drift results from ``topic`` (fewer if they do not come in time)."""
    consumer = make_consumer(kafka, None, [topic])
    got: list[DriftResult] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < n and time.monotonic() < deadline:
            for records in consumer.poll(200).values():
                got += [decode(r.value) for r in records]  # type: ignore[misc]
    finally:
        consumer.close()
    return got


def score_files(files: dict[str, Path], **options: Any) -> tuple[int, list[dict[str, Any]], str]:
    """``observer drift score`` on ``files["ref"]`` and ``files["cur"]``: exit code, JSON lines,
    stderr."""
    out, err = io.StringIO(), io.StringIO()
    old, sys.stderr = sys.stderr, err
    try:
        code = run(str(files["ref"]), str(files["cur"]), ScoreOptions(**options), "jsonl", out)
    finally:
        sys.stderr = old
    return code, [json.loads(line) for line in out.getvalue().splitlines()], err.getvalue()
