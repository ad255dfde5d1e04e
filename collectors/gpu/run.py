"""``observer collect-gpu``: the live node collector (NVML), the cluster collector
(Prometheus), and the replay of a recorded NVML trace, all through one
:class:`~observer.collectors.gpu.pipeline.GPUPipeline`.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, IO

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from observer.collectors.gpu.nvml import NVMLSampler, NVMLUnavailable, Schedule
from observer.collectors.gpu.phases import phase_economics, summarise_phases
from observer.collectors.gpu.pipeline import GPUPipeline, JsonLinesSink, KafkaSink, Sink, dumps_summary
from observer.collectors.gpu.prometheus import PROMETHEUS_FEATURE, PrometheusCollector
from observer.collectors.gpu.replay import TraceError, read_token_phases, read_trace, token_windows
from observer.core.bus import ensure_topics
from observer.core.extras import require
from observer.core.http import ServerThread
from observer.core.topics import Topics

if TYPE_CHECKING:  # the shell composes the configuration; stages only read it
    from observer.config import ObserverConfig

log = logging.getLogger(__name__)


def node_name(configured: str) -> str:
    """``gpu.node_name``, else $NODE_NAME (the downward API's spec.nodeName), else the host."""
    return configured or os.environ.get("NODE_NAME") or socket.gethostname()


def make_sink(cfg: ObserverConfig, stdout: bool, out: IO[str]) -> Sink:
    if stdout:
        return JsonLinesSink(out)
    topics = Topics.from_config(cfg.kafka)
    if cfg.kafka.create_topics:
        ensure_topics(cfg.kafka, topics)
    return KafkaSink(cfg.kafka, topics.gpu)


def metrics_app(registry: CollectorRegistry, healthy: threading.Event) -> FastAPI:
    app = FastAPI(title="observer collect-gpu", docs_url=None, redoc_url=None)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        ok = healthy.is_set()
        return JSONResponse({"status": "ok" if ok else "failed"}, status_code=200 if ok else 500)

    return app


def replay(
    cfg: ObserverConfig,
    path: Path,
    sink: Sink,
    *,
    tokens: Path | None = None,
    gpu_model: str = "",
    batch: int = 200,
) -> dict:
    """Feed a recorded trace through the pipeline; returns the per-phase summary."""
    pipeline = GPUPipeline(cfg.gpu, sink)
    try:
        with open(path, newline="") as f:
            samples = list(
                read_trace(
                    f,
                    node=node_name(cfg.gpu.node_name),
                    gpu_model=gpu_model,
                    base_unix_nano=time.time_ns(),
                    name=str(path),
                )
            )
    except FileNotFoundError:
        raise TraceError(f"trace not found: {path}") from None
    windows = token_windows(samples, read_token_phases(tokens)) if tokens else []
    t0 = samples[0].time_unix_nano if samples else 0
    # Samples inside a window with tokens are working, whatever NVML's utilisation says.
    priced = [
        pipeline.price(
            s,
            tokens_seen=any(
                w.start_s <= (s.time_unix_nano - t0) / 1e9 <= w.end_s and w.tokens > 0
                for w in windows
            ),
        )
        for s in samples
    ]
    for i in range(0, len(priced), batch):
        pipeline.process(priced[i : i + batch])
    economics = phase_economics(priced, windows)
    pipeline.process(economics)
    pipeline.close()
    return {
        "replay": str(path),
        "samples": len(priced),
        "records": len(priced) + len(economics),
        "phases": summarise_phases(priced),
        "economics": [e.model_dump(by_alias=True, exclude={"schema_"}) for e in economics],
        "idle_dollars": round(sum(pipeline.metrics.idle_dollars.values()), 9),
    }


def _loop(interval_s: float, stop: threading.Event, duration_s: float | None, step) -> None:
    deadline = None if duration_s is None else time.monotonic() + duration_s
    while not stop.is_set():
        started = time.monotonic()
        step(started)
        if deadline is not None and time.monotonic() >= deadline:
            return
        stop.wait(max(interval_s - (time.monotonic() - started), 0.0))


def run_collect_gpu(
    cfg: ObserverConfig,
    *,
    replay_path: Path | None = None,
    tokens: Path | None = None,
    gpu_model: str = "",
    source: str | None = None,
    stdout: bool = False,
    duration_s: float | None = None,
    stop: threading.Event | None = None,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
) -> int:
    """The command's body; returns its exit status. ``out``/``err``: sys.stdout/stderr."""
    out = out or sys.stdout
    err = err or sys.stderr
    stop = stop or threading.Event()
    source = source or cfg.gpu.source
    if replay_path is not None:
        try:
            sink = make_sink(cfg, stdout, out)
            summary = replay(cfg, replay_path, sink, tokens=tokens, gpu_model=gpu_model)
        except TraceError as e:
            print(f"observer collect-gpu: {e}", file=err)
            return 2
        print(dumps_summary(summary), file=out)
        return 0

    if source == "prometheus":  # before serving anything: the extra, named (exit 2)
        require("prometheus_api_client", extra="gpu", feature=PROMETHEUS_FEATURE)
    sampler = None
    if source == "nvml":
        sampler = NVMLSampler(cfg.gpu, node_name(cfg.gpu.node_name))
        try:
            sampler.open()  # before anything else: no NVML, no collector
        except NVMLUnavailable as e:
            print(f"observer collect-gpu: {e}", file=err)
            return 1
    registry = CollectorRegistry()
    sink = make_sink(cfg, stdout, out)
    pipeline = GPUPipeline(cfg.gpu, sink)
    registry.register(pipeline.metrics)
    healthy = threading.Event()
    healthy.set()
    server = ServerThread(
        metrics_app(registry, healthy), cfg.admin.host, cfg.admin.port, name="gpu-metrics"
    ).start()
    print(f"observer collect-gpu ({source}): metrics on {server.url}/metrics", file=err)
    try:
        if sampler is not None:
            schedule = Schedule(cfg.gpu.slow_interval_s)
            _loop(
                cfg.gpu.sample_interval_s,
                stop,
                duration_s,
                lambda now: pipeline.process(sampler.sample(slow=schedule.slow_due(now))),
            )
        else:
            collector = PrometheusCollector(cfg.gpu, pipeline.price)
            _loop(
                cfg.gpu.prometheus_interval_s,
                stop,
                duration_s,
                lambda now: pipeline.process(collector.collect(), replace=True),
            )
        return 0
    except Exception as e:
        healthy.clear()
        log.exception("GPU collector failed")
        print(f"observer collect-gpu: {e}", file=err)
        return 1
    finally:
        server.stop()
        pipeline.close()
        if sampler is not None:
            sampler.close()
