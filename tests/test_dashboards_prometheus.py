"""The key proof for the dashboards: a real Prometheus (Debian's binary, with the repository's
scrape job and recording rules) scrapes a running observer fed by the demo workload through
the real OpenTelemetry SDK exporter, and every panel query and annotation of every committed
dashboard (dashboards/json/) returns data through prometheus-api-client.

The GPU economics dashboard is checked the same way in tests/test_dashboards_gpu.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI, Request, Response
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_api_client import PrometheusConnect

from observer.config import ObserverConfig
from observer.collectors.paths.config import PathsConfig
from observer.collectors.receiver.config import ReceiverConfig
from observer.core.config import AdminConfig, KafkaConfig
from observer.drift.config import DriftConfig
from observer.triggers.config import PolicyConfig, TriggerConfig, WebhookConfig
from observer.core.http import ServerThread
from observer.demo.agent import BASELINE, DRIFTED, SupportAgent
from observer.runtime import ALL_STAGES, Runtime
from tests.dashboard_queries import dashboard_queries, expand, has_data
from observer.triggers.signing import generate_secret

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"

# Queries this test cannot feed, and why. They must still be valid PromQL (Prometheus
# answers them); everything else must return data.
NOT_FED = {
    ("observer-drift", "annotation: Retraining runs submitted"):
        "needs an Argo Workflows or Kubeflow Pipelines server to accept a run",
    **{("observer-drift", f"annotation: {name}"): "needs a retraining run and the pipeline's "
       "promotion callback (tests/test_promotion_loop.py checks the counters)"
       for name in ("Models promoted", "Models rolled back", "Episodes cleared")},
}
# The GPU economics dashboard is fed by `observer collect-gpu`: tests/test_dashboards_gpu.py
# runs its queries against Prometheus scraping the DCGM, vLLM and SGLang fixtures.
# The fleet dashboard is fed by peer drift and per-cluster economics:
# tests/test_peer_drift.py runs its queries against a Prometheus scraping both.
# The quality dashboard is fed by evals and retrievals: tests/test_quality_signals.py runs its
# queries against a Prometheus scraping the drift engine's metrics.
ELSEWHERE = {"observer-gpu", "observer-fleet", "observer-quality"}

def scrape_job(admin_address: str) -> dict[str, Any]:
    """The repository's scrape job (deploy/prometheus/prometheus.yml), aimed at this observer."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    for static in job["static_configs"]:
        static["targets"] = [admin_address]
    return job


@pytest.fixture
def webhook_receiver() -> Iterator[tuple[str, list[bytes]]]:
    received: list[bytes] = []
    app = FastAPI()

    @app.post("/hook")
    async def hook(request: Request) -> Response:
        received.append(await request.body())
        return Response(status_code=204)

    with ServerThread(app) as server:
        yield f"{server.url}/hook", received


def wait_for_series(prom: Any, names: list[str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(prom.query(f"sum({name})") for name in names):
            return
        time.sleep(0.5)
    raise AssertionError(f"Prometheus never scraped {names}")


def test_every_dashboard_query_returns_data(
    kafka_config: KafkaConfig, tmp_path: Path, free_port, start_prometheus, webhook_receiver,
) -> None:
    hook_url, received = webhook_receiver
    cfg = ObserverConfig(
        kafka=kafka_config,
        receiver=ReceiverConfig(http_port=free_port(), grpc_port=free_port()),
        admin=AdminConfig(port=free_port()),
        paths=PathsConfig(grace_s=0.5),
        drift=DriftConfig(window_size=100, group_id="dash-drift", checkpoints=False,
                          reference="first_window"),  # 12 short windows, not 2000 records
        trigger=TriggerConfig(
            ledger_path=tmp_path / "ledger.sqlite",
            policies=[PolicyConfig(
                name="retrain", consecutive_windows=2, record_types=["llm"],
                webhooks=[WebhookConfig(url=hook_url, secret=generate_secret(), backoff_initial_s=0.2)],
            )],
        ),
    )
    runtime = Runtime(cfg, ALL_STAGES).start()
    try:
        assert runtime.wait_assigned(60)
        admin = runtime.endpoints()["admin"]
        prom = start_prometheus(
            jobs=[scrape_job(admin.removeprefix("http://"))],
            rule_files=sorted(PROMETHEUS_DIR.glob("rules/*.yml")),
        )
        prom.wait_for_scrapes(2)

        provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
        provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=runtime.endpoints()["otlp_http"]), max_queue_size=10_000))
        agent = SupportAgent(provider.get_tracer("dashboards"), seed=5, model="m1")
        # 300 + 300 conversations = 1,200 LLM calls = 12 windows of 100: drift fires a policy.
        for behaviour in (BASELINE, DRIFTED):
            for _ in range(300):
                agent.converse(behaviour)
            provider.force_flush()
            if behaviour is BASELINE:
                # Rates need the counters scraped before the second phase adds to them: a fast
                # pipeline can otherwise create and finish a series between two scrapes, and
                # its rate is then 0/0.
                wait_for_series(prom, ["observer_llm_calls_total", "observer_tool_calls_total"])
        provider.shutdown()
        deadline = time.monotonic() + 90
        while not received and time.monotonic() < deadline:
            time.sleep(0.2)
        assert received, "the drift policy fired and its webhook arrived"

        client = PrometheusConnect(url=prom.url, disable_ssl=True)
        queries = [q for q in dashboard_queries() if q[0] not in ELSEWHERE]
        assert {uid for uid, _, _ in queries} == {
            "observer-inference", "observer-tools", "observer-paths", "observer-drift",
            "observer-stages"}
        # Rates and recording rules need a few evaluations after the last record: poll.
        missing = queries
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            # custom_query raises on a PromQL error: every query is checked for validity too.
            missing = [q for q in missing if not has_data(client.custom_query(expand(q[2])))]
            if all((uid, title) in NOT_FED for uid, title, _ in missing):
                break
            time.sleep(1)
        unexplained = [q for q in missing if (q[0], q[1]) not in NOT_FED]
        assert not unexplained, "queries without data:\n" + "\n".join(
            f"{uid} / {title}: {expand(expr)}" for uid, title, expr in unexplained)
        assert len(queries) - len(missing) >= 45, "nearly every panel was fed"

        # The domain series carry what the workload did: spot-check against the agent.
        def total(promql: str) -> float:
            result = client.custom_query(promql)
            return sum(float(r["value"][1]) for r in result)

        deadline = time.monotonic() + 30
        while total('observer_llm_calls_total{service="shop", model="m1"}') < 1200 \
                and time.monotonic() < deadline:
            time.sleep(0.5)
        assert total('observer_llm_calls_total{service="shop", model="m1"}') == 1200
        assert total('observer_llm_tokens_total{type="output"}') > 0
        tools = client.custom_query('sum by (tool) (observer_tool_calls_total{service="shop"})')
        assert sum(float(t["value"][1]) for t in tools) == 600
        assert {t["metric"]["tool"] for t in tools} <= {
            "lookup_order", "issue_refund", "search_faq", "update_address"}
        length = client.custom_query('observer_llm_calls_total{finish_reason="length"}')
        assert length, "the drifted phase's length stops are counted"
        scraped = httpx.get(f"{admin}/metrics", timeout=10).text
        assert "observer_llm_time_to_first_token_seconds_bucket" in scraped
    finally:
        runtime.stop()
