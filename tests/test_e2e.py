"""The whole loop on real parts: OTel SDK exporter -> receiver -> Kafka (embedded Tansu) ->
normaliser -> drift engine -> trigger -> signed webhook, checked from the outside (admin API
over HTTP, signature verified with the independent `standardwebhooks` package)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import standardwebhooks
from fastapi import FastAPI, Request, Response
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from observer.config import ObserverConfig
from observer.collectors.receiver.config import ReceiverConfig
from observer.core.config import AdminConfig, KafkaConfig
from observer.drift.config import DriftConfig, DriftReportsConfig
from observer.triggers.config import PolicyConfig, TriggerConfig, WebhookConfig
from observer.core.http import ServerThread
from observer.demo.agent import BASELINE, DRIFTED, SupportAgent
from observer.runtime import ALL_STAGES, Runtime
from observer.triggers.signing import generate_secret

pytestmark = pytest.mark.e2e


def wait_for(cond, timeout_s: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_span_in_drift_scored_webhook_signed(kafka_config: KafkaConfig, tmp_path: Path, free_port) -> None:
    secret = generate_secret()
    received: list[dict] = []
    lock = threading.Lock()
    hooks = FastAPI()

    @hooks.post("/hook")
    async def hook(request: Request) -> Response:
        body = await request.body()
        # Raises on a bad signature: the request then fails and is retried, never recorded.
        payload = standardwebhooks.Webhook(secret).verify(body, dict(request.headers))
        with lock:
            received.append({"id": request.headers["webhook-id"], "payload": payload})
        return Response(status_code=204)

    with ServerThread(hooks) as hook_server:
        cfg = ObserverConfig(
            kafka=kafka_config,
            receiver=ReceiverConfig(http_port=free_port(), grpc_port=free_port()),
            admin=AdminConfig(port=free_port()),
            drift=DriftConfig(window_size=1000, group_id="e2e-drift",
                              reports=DriftReportsConfig(dir=tmp_path / "reports")),
            trigger=TriggerConfig(
                ledger_path=tmp_path / "ledger.sqlite",
                policies=[
                    PolicyConfig(
                        name="retrain",
                        consecutive_windows=2,
                        record_types=["llm"],
                        webhooks=[WebhookConfig(url=f"{hook_server.url}/hook", secret=secret,
                                                backoff_initial_s=0.2)],
                    )
                ],
            ),
        )
        runtime = Runtime(cfg, ALL_STAGES).start()
        try:
            assert runtime.wait_assigned(60)
            admin = runtime.endpoints()["admin"]
            assert httpx.get(f"{admin}/readyz", timeout=10).status_code == 200

            provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
            provider.add_span_processor(
                BatchSpanProcessor(
                    OTLPSpanExporter(endpoint=runtime.endpoints()["otlp_http"]), max_queue_size=10_000
                )
            )
            agent = SupportAgent(provider.get_tracer("test"), seed=3, model="m1")
            # 1500 conversations = 3000 LLM calls: the default reference (the first 2000)
            # and window 1, all baseline.
            for _ in range(1500):
                agent.converse(BASELINE)
            provider.force_flush()

            def drift_results() -> list[dict]:
                r = httpx.get(f"{admin}/api/v1/drift", timeout=10)
                return [x for x in r.json()["results"] if x["record_type"] == "llm"]

            wait_for(lambda: any(x["window_index"] == 1 for x in drift_results()), 90, "window 1")
            assert not received, "no webhook may fire on baseline data"
            for _ in range(1500):
                agent.converse(DRIFTED)
            provider.force_flush()
            provider.shutdown()
            wait_for(lambda: received, 90, "the webhook")
            wait_for(lambda: any(x["window_index"] == 4 for x in drift_results()), 90, "window 4")
            # The drift episode's Evidently report (reference against window 2, where the
            # episode began), read back from Kafka and rendered.
            [latest] = drift_results()
            assert latest["dataset_drift"] and latest["report"].startswith("/reports/llm-w2-")
            page = httpx.get(f"{admin}{latest['report']}", timeout=120)
            assert page.status_code == 200 and "observer-report-header" in page.text
        finally:
            runtime.stop()

    history = [r for r in runtime.drift_view.history() if r.record_type == "llm"]
    by_window = {r.window_index: r for r in history}
    assert sorted(by_window) == [1, 2, 3, 4]
    assert all(r.segment == {"service": "shop", "model": "m1"} for r in history)
    assert not by_window[1].dataset_drift
    assert all(by_window[w].dataset_drift for w in (2, 3, 4))
    assert {by_window[w].episode_start_window for w in (2, 3, 4)} == {2}
    drifted = {f.name for f in by_window[3].features if f.drifted}
    assert {"output_tokens", "finish_reason"} <= drifted

    # Exactly one episode fired (consecutive windows 2 and 3), delivered once.
    assert len({r["id"] for r in received}) == 1
    payload = received[0]["payload"]
    assert payload["type"]
    assert json.dumps(payload).count("shop") >= 1


def _broker_children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_observer_up_stops_cleanly_and_leaves_no_broker(sig: signal.Signals, tmp_path: Path, free_port) -> None:
    env = {
        **os.environ,
        "OBSERVER_KAFKA__EMBEDDED_LISTEN": f"127.0.0.1:{free_port()}",
        "OBSERVER_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "OBSERVER_RECEIVER__HTTP_PORT": str(free_port()),
        "OBSERVER_RECEIVER__GRPC_PORT": str(free_port()),
        "OBSERVER_ADMIN__PORT": str(free_port()),
        "OBSERVER_TRIGGER__LEDGER_PATH": str(tmp_path / "ledger.sqlite"),
        # Durable state of this run only: never the working directory's .observer/state.
        "OBSERVER_KAFKA__EMBEDDED_STATE_DIR": str(tmp_path / "state"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "observer.cli", "up"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.strip().startswith("kafka"):
                break
        out = "".join(lines)
        assert "observer running" in out and "/v1/traces" in out, out
        children = _broker_children(proc.pid)
        assert children, "the embedded broker runs as a child process"
        proc.send_signal(sig)
        assert proc.wait(30) == 0
        for pid in children:
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    finally:
        if proc.poll() is None:
            proc.kill()
