"""The GPU collector's Prometheus scene, shared by tests/test_gpu_prometheus.py and
tests/test_dashboards_gpu.py through the session fixture ``scraped`` (tests/conftest.py): a
real Prometheus scraping DCGM exporter, vLLM, SGLang and kube-state-metrics exposition
fixtures (tests/fixtures/gpu/*.prom) whose counters grow at known rates, plus the economics
metrics of a :class:`GPUPipeline` that processed one collection cycle.

Started once per session: a Prometheus waiting for 7 scrapes costs about 12 s, and both
modules only read it (test_dashboards_gpu puts the first cycle back when it is done).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from observer.collectors.gpu.pipeline import GPUPipeline, ListSink
from observer.collectors.gpu.prometheus import PrometheusCollector
from observer.collectors.gpu.config import GPUConfig

FIXTURES = Path(__file__).parent / "fixtures" / "gpu"
N1 = "GPU-0a1b2c3d-0000-4000-8000-00000000000"  # + index on gpu-node-1
N2 = "GPU-5e6f7a8b-0000-4000-8000-000000000000"
PRICES = {"H100": {"on-demand": 4.0, "spot": 1.6}}

Rate = tuple[str, str, float]  # metric name, substring of its labels, increase per second


def histogram(name: str, count_per_s: float, mean_s: float) -> list[Rate]:
    return [
        (f"{name}_count", "", count_per_s),
        (f"{name}_bucket", 'le="+Inf"', count_per_s),
        (f"{name}_sum", "", count_per_s * mean_s),
    ]


def ramping(path: Path, rates: list[Rate]) -> Callable[[], str]:
    """The fixture's text, its counters grown linearly since the server started."""
    lines = path.read_text().splitlines()
    t0 = time.monotonic()

    def render() -> str:
        dt = time.monotonic() - t0
        out = []
        for line in lines:
            if line and not line.startswith("#"):
                series, _, value = line.rpartition(" ")
                name = series.split("{", 1)[0]
                for metric, labels, per_s in rates:
                    if name == metric and labels in series:
                        line = f"{series} {float(value) + per_s * dt!r}"
                        break
            out.append(line)
        return "\n".join(out) + "\n"

    return render


def energy(uuid: str, watts: float) -> Rate:
    return ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", f'UUID="{uuid}"', watts * 1000.0)


Scene = tuple[Any, list[Any], GPUPipeline, CollectorRegistry]
"""(prometheus, records, pipeline, registry)"""


def scraped_scene(start_prometheus: Callable[..., Any]) -> Iterator[Scene]:
    """Prometheus scraping every fixture (plus our own /metrics), and the collector's records:
    yields ``(prometheus, records, pipeline, registry)``, then stops the exposition servers."""
    from tests.prometheus_harness import ExpositionServer

    servers: list[ExpositionServer] = []

    def serve(name: str, rates: list[Rate]) -> str:
        s = ExpositionServer(ramping(FIXTURES / name, rates)).start()
        servers.append(s)
        return s.address

    # Energy counters advance at 450 W while the power gauges read 451.2 / 448.8 W: the
    # collector must use the counter's rate (the window's average), not the last gauge.
    dcgm1 = serve(
        "dcgm_node1.prom",
        [energy(N1 + "0", 450), energy(N1 + "1", 450), energy(N1 + "2", 70), energy(N1 + "3", 280)],
    )
    dcgm2 = serve("dcgm_node2.prom", [energy(N2, 300)])
    llama0 = serve(
        "vllm_llama0.prom",
        [
            ("vllm:prompt_tokens_total", "", 2000),
            ("vllm:generation_tokens_total", "", 1000),
            *histogram("vllm:time_to_first_token_seconds", 10, 0.05),
            *histogram("vllm:inter_token_latency_seconds", 1000, 0.018),
            *histogram("vllm:e2e_request_latency_seconds", 10, 4.0),
        ],
    )
    llama1 = serve(
        "vllm_llama1.prom",
        [
            ("vllm:prompt_tokens_total", "", 1000),
            ("vllm:generation_tokens_total", "", 500),
            *histogram("vllm:time_to_first_token_seconds", 5, 0.08),
            *histogram("vllm:time_per_output_token_seconds", 500, 0.02),
        ],
    )
    qwen0 = serve(
        "sglang_qwen0.prom",
        [
            ("sglang:prompt_tokens_total", "", 400),
            ("sglang:generation_tokens_total", "", 600),
            *histogram("sglang:time_to_first_token_seconds", 2, 0.07),
        ],
    )
    ksm = serve("kube_state_metrics.prom", [])

    registry = CollectorRegistry()
    pipeline = GPUPipeline(GPUConfig(prices=PRICES), ListSink())
    registry.register(pipeline.metrics)
    ours = ExpositionServer(lambda: generate_latest(registry).decode()).start()
    servers.append(ours)

    def pod_target(address: str, pod: str) -> dict:
        return {"targets": [address], "labels": {"namespace": "llm", "pod": pod}}

    prom = start_prometheus(
        {"dcgm": [dcgm1, dcgm2], "kube-state-metrics": [ksm], "observer": [ours.address]},
        scrape_interval="1s",
        jobs=[
            {
                "job_name": "serving",
                "static_configs": [
                    pod_target(llama0, "llama-0"),
                    pod_target(llama1, "llama-1"),
                    pod_target(qwen0, "qwen-0"),
                ],
            }
        ],
    )
    # A 5 s rate window fully covered by samples: rate() is then the counters' slope.
    prom.wait_for_scrapes(7)
    cfg = GPUConfig(prometheus_url=prom.url, rate_window="5s", prices=PRICES)
    collector = PrometheusCollector(cfg, pipeline.price)
    records = collector.collect()
    pipeline.process(records, replace=True)
    yield prom, records, pipeline, registry
    for s in servers:
        s.stop()
