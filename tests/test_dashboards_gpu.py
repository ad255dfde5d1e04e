"""The GPU economics dashboard against real data: every panel query returns data from the
Prometheus of the GPU collector's test (tests/test_gpu_prometheus.py: a real Prometheus scraping
DCGM exporter, vLLM, SGLang and kube-state-metrics fixtures whose counters grow, and the
economics that `observer collect-gpu --source prometheus` computed from them)."""

from __future__ import annotations

import time

from prometheus_api_client import PrometheusConnect

from tests.dashboard_queries import dashboard_queries, expand, has_data
from tests.test_gpu_prometheus import PRICES, scraped  # noqa: F401  (scraped: the fixture)


def test_every_gpu_panel_query_returns_data(scraped) -> None:  # noqa: F811
    prom, _, pipeline, _ = scraped
    # Idle dollars accrue over the interval before an idle sample: collect a second cycle.
    from observer.collectors.gpu.prometheus import PrometheusCollector
    from observer.collectors.gpu.config import GPUConfig

    time.sleep(1.5)
    collector = PrometheusCollector(
        GPUConfig(prometheus_url=prom.url, rate_window="5s", prices=PRICES),
        pipeline.price)
    pipeline.process(collector.collect(), replace=True)
    client = PrometheusConnect(url=prom.url, disable_ssl=True)
    queries = dashboard_queries("observer-gpu")
    assert len(queries) >= 9
    missing = queries
    deadline = time.monotonic() + 30
    while missing and time.monotonic() < deadline:
        missing = [q for q in missing if not has_data(client.custom_query(expand(q[2])))]
        if missing:
            time.sleep(1)
    assert not missing, "queries without data:\n" + "\n".join(
        f"{title}: {expand(expr)}" for _, title, expr in missing)
