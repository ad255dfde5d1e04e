"""The engine from Kafka: records/s on the embedded broker, and engine state per segment.

- throughput: ``records`` LLM records of 100 segments are produced to the embedded broker
  first; then the engine (the StageRunner, checkpoints on) consumes them all. Measured from
  the group's first assignment to the last record counted.
- state: ``segments`` segments x 20 features (6 numeric, 14 categorical fields of the llm
  record) fed in process until each holds its reference and half a window; the engine's
  allocations are measured with ``tracemalloc``.

Both use a one-window reference (``reference: first_window``), as measured before the default
became a 2000-record reference: with the default, exact mode holds 2000 reference records per
segment instead of one window's.
"""

from __future__ import annotations

import threading
import time
import tracemalloc
import uuid

import numpy as np

from observer.drift.engine import DriftEngine
from observer.core.broker import EmbeddedBroker
from observer.core.bus import (
    Message,
    Output,
    StageRunner,
    ensure_topics,
    make_producer,
    produce_all,
)
from observer.core.config import KafkaConfig
from observer.drift.config import DriftConfig, FeatureSpec
from observer.core.records import LLMCall, encode
from observer.core.topics import Topics

NUMERIC = ["input_tokens", "output_tokens", "cache_read_tokens", "reasoning_tokens",
           "latency_ms", "time_to_first_token_ms"]
CATEGORICAL = ["tenant", "provider", "operation", "finish_reason", "error", "error_type", "agent",
               "prompt_version", "span_id", "parent_span_id", "conversation_id", "trace_id",
               "start_time_unix_nano", "service"]
FEATURES_20 = [FeatureSpec(name=n, kind="numeric") for n in NUMERIC] + [
    FeatureSpec(name=n, kind="categorical") for n in CATEGORICAL]


def calls(rng: np.random.Generator, n: int, segments: int) -> list[LLMCall]:
    seg = rng.integers(0, segments, n)
    out = rng.lognormal(5, 0.6, n).astype(int)
    return [
        LLMCall(service=f"svc{seg[i] % 50}", model=f"m{seg[i]}", trace_id=uuid.uuid4().hex[:8],
                span_id="s", input_tokens=int(out[i] * 3), output_tokens=int(out[i]),
                cache_read_tokens=int(out[i] % 7), reasoning_tokens=int(out[i] % 11),
                latency_ms=float(out[i] * 12.5), time_to_first_token_ms=float(out[i] % 97),
                finish_reason="stop" if out[i] % 10 else "length", provider="openai",
                prompt_version=f"v{out[i] % 3}")
        for i in range(n)
    ]


def throughput(records: int, window: int = 500) -> float:
    """Records per second through the engine (StageRunner, checkpoints on) on Tansu."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with EmbeddedBroker(f"127.0.0.1:{port}") as broker:
        kafka = KafkaConfig(bootstrap_servers=broker.bootstrap_servers, partitions=4,
                            session_timeout_ms=6000, heartbeat_interval_ms=1000)
        topics = Topics.from_config(kafka)
        ensure_topics(kafka, topics)
        producer = make_producer(kafka)
        rng = np.random.default_rng(1)
        batch = calls(rng, records, 100)
        produce_all(producer, [Output(topics.llm, f"{c.service}|{c.model}", encode(c))
                               for c in batch], 120)
        producer.close()
        # A one-window reference, so that 200 records per segment close windows (the default
        # 2000-record reference would still be filling).
        engine = DriftEngine.for_kafka(DriftConfig(window_size=window, reference="first_window"),
                                       kafka, topics)
        counted = 0
        done = threading.Event()
        original = engine.process

        def process(messages: list[Message]) -> list[Output]:
            nonlocal counted
            out = original(messages)
            counted += len(messages)
            if counted >= records:
                done.set()
            return out

        engine.process = process  # type: ignore[method-assign]
        runner = StageRunner(kafka, engine, "bench", engine.inputs)
        stop = threading.Event()
        thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
        thread.start()
        runner.assigned.wait(60)
        started = time.perf_counter()
        done.wait(600)
        elapsed = time.perf_counter() - started
        stop.set()
        thread.join(15)
        return records / elapsed


DETECTOR_MODULES = ("drift/detectors.py", "drift/degradation.py")
"""Where the per-segment change detectors allocate (reported apart from windows and
references)."""


def state_mb(segments: int, window: int, mode: str = "exact") -> tuple[float, float, int]:
    """MB allocated by the engine holding ``segments`` x 20 features: in total, and the part
    of it the change detectors hold; and the records fed.

    ``mode`` is ``drift.mode`` (``exact`` or ``sketch``). Records are made and fed in chunks
    of 5,000 so that only the engine's state stays allocated at the end.
    """
    topics = Topics.from_config(KafkaConfig())
    rng = np.random.default_rng(2)
    per_segment = window + window // 2
    total = segments * per_segment
    cfg = DriftConfig(window_size=window, features={"llm": FEATURES_20}, mode=mode,
                      checkpoints=False, reference="first_window", max_streams=segments)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    engine = DriftEngine(cfg, topics)
    for start in range(0, total, 5000):
        n = min(5000, total - start)
        # Round-robin so that every segment gets exactly its share.
        batch = [r.model_copy(update={"model": f"m{(start + i) % segments}", "service": "svc"})
                 for i, r in enumerate(calls(rng, n, segments))]
        engine.process([Message(topics.llm, 0, start + i, None, encode(r), 0)
                        for i, r in enumerate(batch)])
        del batch
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    diffs = after.compare_to(before, "filename")
    grown = sum(s.size_diff for s in diffs)
    detectors = sum(s.size_diff for s in diffs
                    if s.traceback[0].filename.replace("\\", "/").endswith(DETECTOR_MODULES))
    assert engine.streams == segments
    return grown / 1e6, detectors / 1e6, total
