"""The normaliser's, trace grouping's and the drift engine's own work, in process:
``python -m benchmarks.stage_hot_paths``.

No Kafka: the messages are what the receivers write to ``otlp_spans`` (demo-agent spans with
message content through the real OpenTelemetry SDK, :func:`benchmarks.e2e_load.make_bodies`,
split by trace over the default partitions and sealed as the receivers do), handed straight to
each stage's ``process`` as the registry builds it (default configuration: text descriptors and
the hashing embedder on). The peer is ``ExportTraceServiceRequest.ParseFromString`` of the same
request bodies, measured in the same run, interleaved, best of ``--rounds``; every rate is also
printed as a ratio to it. The drift engine reads what the normaliser made of them (LLM, tool and
embedding records), with checkpoints and detectors on as by default (its checkpoints go to an
in-memory compacted store, as the runner would acknowledge them); its rate is in records/s,
and is also given against its own plain-parse peer, ``pydantic_core.from_json`` of the same
records (no validation, nothing scored), timed in the same rounds.
``--profile normalize`` (or ``paths``, ``drift``) prints the top lines of a cProfile of one
pass instead.

    .venv/bin/python -m benchmarks.stage_hot_paths --spans 20000
    .venv/bin/python -m benchmarks.stage_hot_paths --profile normalize
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import time
from collections.abc import Callable
from typing import Any

import pydantic_core

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from benchmarks.e2e_load import make_bodies
from observer import stages as registry
from observer.collectors.common.tenant_seal import TenantSeal
from observer.collectors.receiver.trace_split import split_by_trace
from observer.config import ObserverConfig
from observer.core.bus import Message, Output
from observer.core.compacted import MemoryCompactedStore
from observer.core.topics import Topics
from observer.drift.engine import DriftEngine
from observer.drift.published import MemoryResultLog

STAGES = ("normalize", "paths", "drift")


def messages(bodies: list[bytes], cfg: ObserverConfig, topics: Topics) -> list[Message]:
    """The ``otlp_spans`` messages the receivers make of ``bodies`` (split, sealed)."""
    seal = TenantSeal.for_stages(cfg.receiver)
    out: list[Message] = []
    for body in bodies:
        request = ExportTraceServiceRequest.FromString(body)
        split = split_by_trace(request, cfg.kafka.partitions, raw=body)
        for key, value in split.encoded.items():
            sealed = seal.sealed(Output(topics.spans, key, value))
            out.append(Message(topics.spans, 0, len(out), sealed.key, sealed.value, 0))
    return out


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
"""``cpu`` (this process's CPU time) steadies comparisons on a machine shared with other work."""


def _timed(run: Callable[[], Any], clock: Callable[[], float] = time.perf_counter) -> float:
    started = clock()
    run()
    return clock() - started


def records(spans: list[Message], cfg: ObserverConfig, topics: Topics) -> list[Message]:
    """What the normaliser writes of ``spans``, as the drift engine reads it (one partition,
    offsets in order, Kafka timestamps 1 ms apart)."""
    normalizer = registry.BY_NAME["normalize"].build(cfg, topics)
    outputs = [o for i in range(0, len(spans), 50)
               for o in normalizer.process(spans[i:i + 50]) + normalizer.tick()]
    offsets: dict[str, int] = {}
    out = []
    for o in outputs:
        offset = offsets[o.topic] = offsets.get(o.topic, -1) + 1
        key = o.key if isinstance(o.key, bytes) or o.key is None else str(o.key).encode()
        out.append(Message(o.topic, 0, offset, key, o.value, 1_700_000_000_000 + len(out)))
    return out


def _stage_pass(name: str, cfg: ObserverConfig, topics: Topics,
                batch: list[list[Message]]) -> Callable[[], Any]:
    def run() -> None:
        processor = registry.BY_NAME[name].build(cfg, topics)
        for chunk in batch:
            processor.process(chunk)
            processor.tick()

    def drift() -> None:
        # The registry's engine but on in-memory stores: every output is acknowledged
        # before the next batch, as the runner would.
        store = MemoryCompactedStore(topics.drift_state)
        engine = DriftEngine(cfg.drift, topics, store=store, results=MemoryResultLog(topics.drift))
        for chunk in batch:
            store.apply(engine.process(chunk))
            store.apply(engine.tick())
    return drift if name == "drift" else run


def _inputs(name: str, spans: list[Message], cfg: ObserverConfig, topics: Topics,
            batch: int) -> list[list[Message]]:
    """A stage's input in batches: the spans' messages, or for the drift engine their records
    in batches of 10x as many messages (a record is a tenth of an OTLP message's work)."""
    if name != "drift":
        return [spans[i:i + batch] for i in range(0, len(spans), batch)]
    read = set(DriftEngine(cfg.drift, topics).inputs)
    recs = [m for m in records(spans, cfg, topics) if m.topic in read]
    return [recs[i:i + 10 * batch] for i in range(0, len(recs), 10 * batch)]


def measure(spans: int, spans_per_request: int = 500, rounds: int = 3,
            batch: int = 50, clock: str = "wall") -> dict[str, Any]:
    """Spans/s of the parse peer and of each stage's ``process`` (best of ``rounds``)."""
    cfg = ObserverConfig()
    topics = Topics.from_config(cfg.kafka)
    bodies = make_bodies(spans, spans_per_request)
    total = len(bodies) * spans_per_request
    msgs = messages(bodies, cfg, topics)
    inputs = {name: _inputs(name, msgs, cfg, topics, batch) for name in STAGES}
    best: dict[str, float] = {}
    for _ in range(rounds):
        runs = {"parse_peer": lambda: [ExportTraceServiceRequest.FromString(b) for b in bodies],
                "records_parse_peer": lambda: [pydantic_core.from_json(m.value)
                                               for chunk in inputs["drift"] for m in chunk]}
        runs.update({name: _stage_pass(name, cfg, topics, inputs[name]) for name in STAGES})
        for name, run in runs.items():
            best[name] = min(best.get(name, float("inf")), _timed(run, CLOCKS[clock]))
    peer = total / best["parse_peer"]
    out: dict[str, Any] = {"spans": total, "messages": len(msgs), "clock": clock,
                           "parse_peer_spans_per_s": round(peer)}
    for name in ("normalize", "paths"):
        rate = total / best[name]
        out[name] = {"spans_per_s": round(rate), "ratio": round(rate / peer, 4)}
    drift_records = sum(map(len, inputs["drift"]))
    rate = drift_records / best["drift"]
    records_peer = drift_records / best["records_parse_peer"]
    out["drift"] = {"records": drift_records, "records_per_s": round(rate),
                    "ratio": round(rate / peer, 4),
                    "records_parse_peer_per_s": round(records_peer),
                    "ratio_to_records_parse": round(rate / records_peer, 4)}
    return out


def profile(name: str, spans: int, top: int = 15) -> str:
    """The top ``top`` lines (by own time) of a cProfile of one pass of stage ``name``."""
    cfg = ObserverConfig()
    topics = Topics.from_config(cfg.kafka)
    msgs = messages(make_bodies(spans), cfg, topics)
    run = _stage_pass(name, cfg, topics, _inputs(name, msgs, cfg, topics, 50))
    run()  # warm: tables built on first use are not the steady state
    profiler = cProfile.Profile()
    profiler.runcall(run)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spans", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or this process's CPU time on a busy machine")
    parser.add_argument("--profile", choices=STAGES, help="print a cProfile of one pass instead")
    args = parser.parse_args(argv)
    if args.profile:
        print(profile(args.profile, args.spans))
        return 0
    print(json.dumps(measure(args.spans, rounds=args.rounds, clock=args.clock)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
