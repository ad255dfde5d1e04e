"""The GPU economics dashboard against real data: every panel query returns data from the
Prometheus of the GPU collector's test (tests/gpu_support.py, shared with
tests/test_gpu_prometheus.py once per session: a real Prometheus scraping
DCGM exporter, vLLM, SGLang and kube-state-metrics fixtures whose counters grow, and the
economics that `observer collect-gpu --source prometheus` computed from them)."""

from __future__ import annotations

import math
import time

from prometheus_api_client import PrometheusConnect

from observer.core.records import GPUEconomics
from tests.dashboard_queries import dashboard_queries, describe, queries_without_data
from tests.gpu_support import PRICES


def test_every_gpu_panel_query_returns_data(scraped) -> None:
    prom, first, pipeline, _ = scraped  # once per session (tests/conftest.py)
    # Idle dollars accrue over the interval before an idle sample: collect a second cycle.
    from observer.collectors.gpu.prometheus import PrometheusCollector
    from observer.collectors.gpu.config import GPUConfig

    time.sleep(1.5)
    collector = PrometheusCollector(
        GPUConfig(prometheus_url=prom.url, rate_window="5s", prices=PRICES),
        pipeline.price)
    client = PrometheusConnect(url=prom.url, disable_ssl=True)
    queries = dashboard_queries("observer-gpu")
    assert len(queries) >= 9
    pipeline.process(collector.collect(), replace=True)
    try:
        missing = queries_without_data(client, queries)
    finally:
        # The scene is shared with tests/test_gpu_prometheus.py: put its first cycle back
        # (the gauges it checks against those records) and wait until Prometheus has it.
        pipeline.process(first, replace=True)
        expected = {e.name: e.tokens_per_joule for e in first if isinstance(e, GPUEconomics)
                    and e.scope == "model" and e.tokens_per_joule is not None}
        deadline = time.monotonic() + 30
        while _tokens_per_joule(client) != expected:
            assert time.monotonic() < deadline, "Prometheus did not scrape the first cycle back"
            time.sleep(0.2)
    assert not missing, describe(missing)


def _tokens_per_joule(client: PrometheusConnect) -> dict[str, float]:
    """Per model, the tokens per joule Prometheus holds now (NaN gauges left out)."""
    values = {r["metric"]["name"]: float(r["value"][1]) for r in
              client.custom_query('observer_gpu_economics_tokens_per_joule{scope="model"}')}
    return {name: v for name, v in values.items() if not math.isnan(v)}
