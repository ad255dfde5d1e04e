"""kill -9 of ``observer up`` (embedded broker, durable mode) loses nothing accepted.

Real parts throughout: ``observer up`` as a subprocess with its embedded Tansu broker, the
OpenTelemetry SDK's OTLP/HTTP exporter as the client, a webhook receiver that verifies
signatures, and the restarted observer's own broker read back over Kafka.

The drift engine learns its reference from baseline traffic, scores a drift episode (the
policy fires once), then ``observer up`` is SIGKILLed right after a last batch of spans was
acknowledged, and restarted with the same state directory. The checks:

- the reference survives: every window after the restart is scored against the 200-record
  reference learned before the crash, drift is still detected (a reference learned from
  post-crash, drifted traffic would see none) and window numbering continues;
- the open window and the episode resume: the window open at the kill closes with exactly
  the records it should hold, inside the same episode (same ``episode_start_window``), and
  the policy does not fire a second time;
- every span acknowledged before the kill is accounted for: the last batch (acknowledged,
  never settled) must close the open window with no new traffic, which it can only do if it
  was replayed from the spool (or absorbed before the kill).
"""

from __future__ import annotations

import json
import os
import re
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
from kafka import TopicPartition
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from observer.core.bus import make_consumer
from observer.core.config import KafkaConfig
from observer.core.http import ServerThread
from observer.core.records import DriftResult, decode
from observer.demo.agent import BASELINE, DRIFTED, Behaviour, SupportAgent
from observer.demo.run import CountingExporter
from observer.triggers.signing import generate_secret
from tests.collectors_support import wait_for

pytestmark = pytest.mark.e2e

WINDOW = 100  # LLM calls per window; a conversation makes 2
REFERENCE = 200



class Observer:
    """``observer up`` in a subprocess on fresh ports, with the given state directory."""

    def __init__(self, tmp: Path, name: str, env: dict[str, str], free_port,
                 kafka: str | None = None) -> None:
        self.kafka = kafka or f"127.0.0.1:{free_port()}"
        self.log = tmp / f"{name}.log"
        self.env = {
            **os.environ, **env,
            "OBSERVER_KAFKA__EMBEDDED_LISTEN": self.kafka,
            "OBSERVER_RECEIVER__HTTP_PORT": str(free_port()),
            "OBSERVER_RECEIVER__GRPC_PORT": str(free_port()),
            "OBSERVER_ADMIN__PORT": str(free_port()),
        }

    def start(self) -> Observer:
        out = open(self.log, "w")  # noqa: SIM115 (the child writes it until killed)
        self.proc = subprocess.Popen([sys.executable, "-m", "observer.cli", "up"],
                                     env=self.env, stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: re.search(r"^\s+kafka\s", self.log.read_text(), re.M) or
                 self.proc.poll() is not None, 60, "observer up to start")
        text = self.log.read_text()
        assert self.proc.poll() is None, text
        self.admin = re.search(r"^\s+admin\s+(\S+)", text, re.M).group(1)
        self.otlp = re.search(r"^\s+otlp_http\s+(\S+)", text, re.M).group(1)
        return self

    def metric(self, name: str, **labels: str) -> float:
        total = 0.0
        for line in httpx.get(f"{self.admin}/metrics", timeout=10).text.splitlines():
            if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
                if line[len(name)] in " {":
                    total += float(line.rsplit(" ", 1)[1])
        return total

    def results(self) -> dict[int, DriftResult]:
        """Every llm drift result on this incarnation's ``observer.drift``, by window."""
        cfg = KafkaConfig(bootstrap_servers=self.kafka)
        consumer = make_consumer(cfg, None)
        try:
            tps = [TopicPartition("observer.drift", p)
                   for p in consumer.partitions_for_topic("observer.drift") or ()]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            found: dict[int, DriftResult] = {}
            for _ in range(5):
                for records in consumer.poll(timeout_ms=300).values():
                    for r in records:
                        result = decode(r.value)
                        if isinstance(result, DriftResult) and result.record_type == "llm":
                            found[result.window_index] = result
            return found
        finally:
            consumer.close()

    def decisions(self) -> list[dict]:
        body = httpx.get(f"{self.admin}/api/v1/triggers", timeout=10).json()
        return body.get("decisions") or []

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)


class Traffic:
    """The demo agent through the OTel SDK's OTLP/HTTP exporter, counting acknowledged spans."""

    def __init__(self, endpoint: str) -> None:
        self.exporter = CountingExporter(OTLPSpanExporter(endpoint=endpoint))
        self.provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
        self.provider.add_span_processor(BatchSpanProcessor(self.exporter, max_queue_size=10_000))
        self.agent = SupportAgent(self.provider.get_tracer("chaos"), seed=5, model="m1")

    def send(self, behaviour: Behaviour, conversations: int) -> None:
        for _ in range(conversations):
            self.agent.converse(behaviour)
        assert self.provider.force_flush(30_000)
        assert self.exporter.failed == 0, "every export must be acknowledged"

    def close(self) -> None:
        self.provider.shutdown()


def test_kill9_keeps_reference_windows_episode_and_acknowledged_spans(
    tmp_path: Path, free_port
) -> None:
    secret = generate_secret()
    received: list[str] = []
    lock = threading.Lock()
    hooks = FastAPI()

    @hooks.post("/hook")
    async def hook(request: Request) -> Response:
        body = await request.body()
        standardwebhooks.Webhook(secret).verify(body, dict(request.headers))
        with lock:
            received.append(request.headers["webhook-id"])
        return Response(status_code=204)

    with ServerThread(hooks) as hook_server:
        policy = {"name": "retrain", "record_types": ["llm"], "consecutive_windows": 2,
                  "clear_windows": 2, "min_samples": 10,
                  "webhooks": [{"url": f"{hook_server.url}/hook", "secret": secret,
                                "backoff_initial_s": 0.2}]}
        env = {
            "OBSERVER_KAFKA__EMBEDDED_STATE_DIR": str(tmp_path / "state"),
            "OBSERVER_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "OBSERVER_DRIFT__WINDOW_SIZE": str(WINDOW),
            "OBSERVER_DRIFT__REFERENCE_RECORDS": str(REFERENCE),
            "OBSERVER_DRIFT__REPORTS__DIR": str(tmp_path / "reports"),
            "OBSERVER_TRIGGER__LEDGER_PATH": str(tmp_path / "ledger.sqlite"),
            "OBSERVER_TRIGGER__POLICIES": json.dumps([policy]),
            # Traces and KServe events leave the stages' memory within a second, so the
            # settle watermark passes them quickly (observer.core.settle).
            "OBSERVER_PATHS__GRACE_S": "0.2",
            "OBSERVER_PATHS__TIMEOUT_S": "1",
            "OBSERVER_KSERVE__PAIR_TIMEOUT_S": "1",
        }
        first = Observer(tmp_path, "first", env, free_port).start()
        try:
            traffic = Traffic(first.otlp)
            # The reference (200 LLM calls) and window 1, baseline.
            traffic.send(BASELINE, (REFERENCE + WINDOW) // 2)
            wait_for(lambda: first.metric("observer_drift_records_total", record_type="llm")
                     >= REFERENCE + WINDOW, 60, "the baseline in the drift engine")
            # Windows 2 and 3 drifted (the policy fires), half of window 4.
            traffic.send(DRIFTED, (2 * WINDOW + WINDOW // 2) // 2)
            wait_for(lambda: len(received) == 1, 60, "the webhook of the episode")
            # Everything so far settled: the spool is empty.
            wait_for(lambda: first.metric("observer_spool_bytes") == 0, 60, "the spool settled")
            # The other half of window 4: acknowledged, then kill -9 at once.
            traffic.send(DRIFTED, WINDOW // 4)
            acknowledged = traffic.exporter.exported
            first.kill9()
            traffic.close()
        finally:
            if first.proc.poll() is None:
                first.proc.kill()
        assert acknowledged == 4 * (REFERENCE + WINDOW + 3 * WINDOW) // 2

        # The same broker port, as a supervisor restarting it would: the killed observer's
        # broker is dying meanwhile (PDEATHSIG) and the new one waits for its port.
        second = Observer(tmp_path, "second", env, free_port, kafka=first.kafka).start()
        try:
            # No new traffic yet: window 4 closes only if the last acknowledged batch was
            # replayed from the spool (or reached the drift state before the kill).
            wait_for(lambda: 4 in second.results(), 60, "window 4 from what was acknowledged")
            traffic = Traffic(second.otlp)
            traffic.send(DRIFTED, WINDOW // 2)
            wait_for(lambda: 5 in second.results(), 60, "window 5 after the restart")
            traffic.close()
            time.sleep(1.0)  # a second webhook, if one were (wrongly) due, gets the time to come
            decisions = second.decisions()
            results = second.results()
        finally:
            second.proc.send_signal(signal.SIGTERM)
            try:
                second.proc.wait(30)
            except subprocess.TimeoutExpired:
                second.proc.kill()

    log = second.log.read_text()
    assert set(results) >= {1, 2, 3, 4, 5}, (sorted(results), log[-3000:])
    # Scored against the reference learned before the crash, all of them.
    assert {r.n_reference for r in results.values()} == {REFERENCE}
    assert {r.n_current for r in results.values()} == {WINDOW}
    assert not results[1].dataset_drift
    # Drift detected after the restart: a reference learned from the drifted post-crash
    # traffic would have found none (and numbered windows from 1 again).
    assert results[4].dataset_drift and results[5].dataset_drift
    # The episode that began at window 2 goes on across the crash ...
    assert {results[w].episode_start_window for w in (2, 3, 4, 5)} == {2}
    # ... and fired once: one delivery, one decision.
    assert len(set(received)) == 1, received
    assert [d["kind"] for d in decisions] == ["fired"], decisions
