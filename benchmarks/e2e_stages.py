"""Each consuming stage alone from Kafka, on topics the real receivers filled.

An in-process runtime with only the receivers (``collect``, embedded broker) takes the
requests, so ``observer.otlp_spans`` holds exactly what ``observer up`` would consume (sealed,
split by trace). Then each stage runs alone under a :class:`StageRunner` (fresh group, from
the earliest offset, the registry's build: checkpoints and detectors as configured by
default), in pipeline order so that each fills the next one's topics: the normaliser, trace
grouping, then the drift engine. A stage's figure is its units (spans for the first two, whose
messages each hold one trace's spans of a request; records for drift) divided by the time from
its group's first assignment to its last input message processed. The stages read and write
with the client ``kafka.stage_client`` names (``OBSERVER_KAFKA__STAGE_CLIENT`` in the
environment beats the default, as for ``observer up``).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.collectors_otlp import _free_port
from benchmarks.e2e_load import drive
from observer import stages as registry
from observer.config import ObserverConfig
from observer.core.bus import Message, StageRunner, make_consumer
from observer.runtime import Runtime

ORDER = ("normalize", "paths", "drift")


def end_offsets(cfg: Any, topics: list[str], timeout_s: float = 60) -> dict[str, int]:
    """Messages on each of ``topics`` now: the high watermarks fetch responses carry (the
    topics start empty). Not ``end_offsets()``: the embedded broker answers it with the base
    offset of a partition's last batch + 1, short of the log end by the rest of that batch
    (see :func:`observer.core.bus.read_to_end`), which would stop the clock early."""
    from kafka import TopicPartition

    consumer = make_consumer(cfg.kafka, None)
    try:
        parts = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        consumer.assign(parts)
        consumer.seek_to_end(*parts)  # near the end: the fetches below carry little
        deadline = time.monotonic() + timeout_s
        while any(consumer.highwater(tp) is None for tp in parts):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no high watermark of {topics} in {timeout_s:g} s")
            consumer.poll(timeout_ms=200)
        return {t: sum(consumer.highwater(tp) for tp in parts if tp.topic == t) for t in topics}
    finally:
        consumer.close(autocommit=False)


def run_stage(runtime: Runtime, name: str, units: int | None = None, linger_s: float = 0.0,
              timeout_s: float = 1800) -> dict[str, float]:
    """One stage alone over everything on its input topics; ``units`` (default: its input
    messages) per second."""
    spec = registry.BY_NAME[name]
    cfg, topics = runtime.cfg, runtime.topics
    inputs = spec.input_topics(cfg, topics)
    per_topic = end_offsets(cfg, inputs)
    total = sum(per_topic.values())
    processor = spec.build(cfg, topics)
    assigned = threading.Event()
    runner = StageRunner(cfg.kafka, processor, f"bench-alone-{name}-{time.time_ns()}", inputs,
                         dead_letter_topic=topics.dead_letter, assigned=assigned)
    # Counted at the commit: a batch is done once its outputs are acknowledged.
    counted = 0
    done = threading.Event()
    commit = runner._commit

    def counting_commit(consumer: Any, messages: list[Message]) -> None:
        nonlocal counted
        commit(consumer, messages)
        counted += len(messages)
        if counted >= total:
            done.set()

    runner._commit = counting_commit  # type: ignore[method-assign]
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    assigned.wait(120)
    started = time.perf_counter()
    finished = done.wait(timeout_s) if total else True
    elapsed = time.perf_counter() - started
    # Not timed: what the stage still holds (trace grouping closes a trace grace_s after its
    # root) goes out to the next stage's topics.
    time.sleep(linger_s)
    stop.set()
    thread.join(30)
    if not finished:
        raise TimeoutError(f"{name}: {counted} of {total} messages in {timeout_s}s")
    units = total if units is None else units
    return {"client": cfg.kafka.stage_client,
            "inputs": {t: n for t, n in per_topic.items() if n}, "messages": total,
            "units": units, "seconds": round(elapsed, 2),
            "per_s": round(units / elapsed, 1) if elapsed else 0.0}


def stages_alone(bodies_path: Path, clients: int, spans_per_request: int) -> dict[str, Any]:
    """Fill ``otlp_spans`` through the receivers, then time each stage alone."""
    cfg = ObserverConfig(
        kafka={"embedded_listen": f"127.0.0.1:{_free_port()}", "session_timeout_ms": 6000},
        receiver={"http_port": _free_port(), "grpc_port": _free_port()},
        admin={"port": _free_port()},
    )
    runtime = Runtime(cfg, ["collect"]).start()
    try:
        url = runtime.endpoints()["otlp_http"]
        sent = drive(url, bodies_path, clients, spans_per_request)
        out: dict[str, Any] = {"spans_acked": sent["spans_acked"]}
        for name in ORDER:
            linger = runtime.cfg.paths.grace_s + 3 if name == "paths" else 1.0
            out[name] = run_stage(runtime, name, None if name == "drift" else sent["spans_acked"],
                                  linger)
            print(f"alone: {name} {out[name]}", flush=True)
        return out
    finally:
        runtime.stop()
