"""Chaos: ``observer up`` frozen with SIGSTOP, then thawed, heals by itself.

In production, SIGSTOP for 3 minutes then SIGCONT killed the normaliser and trace grouping
on a Kafka timeout, and observer exited. A thawed process finds every Kafka request it had in
flight older than the clients' request timeout (30 s, kafka-python's default): those requests
fail at once (a commit raises ``KafkaTimeoutError``), and its consumer groups expelled it after
the session timeout. Here the session timeout is 6 s (heartbeat 1 s, via
``OBSERVER_KAFKA__SESSION_TIMEOUT_MS``/``HEARTBEAT_INTERVAL_MS``) and the stop lasts 35 s, past
both: the same fault as 3 minutes with the defaults. (A 20 s stop, under the request timeout,
does not reproduce it against the embedded broker, which accepts commits of an expelled
member: measured, the code before supervision survived it.) The stop lands while the stages
work through a burst of spans, as production traffic keeps them; before supervision this
test failed with ``a stage failed: {'metrics': 'KafkaTimeoutError(None)'}`` and exit 1.

The stages must restart on their own (the supervisor), the process must stay up and ready
again, and every span exported before and after the stop must be normalised.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind

from observer.core.bus import make_consumer
from observer.core.config import KafkaConfig
from observer.core.records import LLMCall, decode
from tests.collectors_support import wait_for, workers_of

pytestmark = pytest.mark.e2e

STOP_S = 35
BURST = 5000
ROOT = Path(__file__).resolve().parents[1]



def export_chats(endpoint: str, n: int, tag: str) -> set[str]:
    """``n`` chat spans, each its own trace, through the real OTLP/HTTP exporter; their
    span ids (hex)."""
    provider = TracerProvider(resource=Resource.create({"service.name": "chaos"}))
    provider.add_span_processor(BatchSpanProcessor(
        OTLPSpanExporter(endpoint=endpoint, timeout=30), max_queue_size=max(n, 512)
    ))
    tracer = provider.get_tracer("chaos")
    ids = set()
    for i in range(n):
        span = tracer.start_span(f"chat m-{tag}", kind=SpanKind.CLIENT, attributes={
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
            "gen_ai.request.model": f"m-{tag}", "gen_ai.usage.input_tokens": 10 + i,
            "gen_ai.usage.output_tokens": 20 + i,
        })
        span.end()
        ids.add(format(span.get_span_context().span_id, "016x"))
    assert provider.force_flush(60_000)
    provider.shutdown()
    return ids


def test_sigstop_past_the_kafka_timeouts_heals(tmp_path: Path, free_port: Callable[[], int]) -> None:
    kafka_port, http_port, admin_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "OBSERVER_KAFKA__EMBEDDED_LISTEN": f"127.0.0.1:{kafka_port}",
        "OBSERVER_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "OBSERVER_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
        "OBSERVER_RECEIVER__HTTP_PORT": str(http_port),
        "OBSERVER_RECEIVER__GRPC_PORT": str(free_port()),
        "OBSERVER_ADMIN__PORT": str(admin_port),
        "OBSERVER_TRIGGER__LEDGER_PATH": str(tmp_path / "ledger.sqlite"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    log_path = tmp_path / "observer.log"
    log = log_path.open("w")  # a file: a pipe nobody reads would block the process
    # In tmp_path: whatever observer keeps under its working directory is this test's own.
    proc = subprocess.Popen([sys.executable, "-m", "observer.cli", "up"], env=env, cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    admin = f"http://127.0.0.1:{admin_port}"
    traces = f"http://127.0.0.1:{http_port}/v1/traces"
    kafka = KafkaConfig(bootstrap_servers=f"127.0.0.1:{kafka_port}")

    def output() -> str:
        return log_path.read_text()[-4000:]

    def ready() -> bool:
        assert proc.poll() is None, f"observer exited with {proc.returncode}:\n{output()}"
        try:
            return httpx.get(f"{admin}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    seen: set[str] = set()
    consumer = None

    def normalised(ids: set[str]) -> bool:
        assert proc.poll() is None, f"observer exited with {proc.returncode}:\n{output()}"
        for records in consumer.poll(200).values():
            for r in records:
                record = decode(r.value)
                if isinstance(record, LLMCall):
                    seen.add(record.span_id)
        return ids <= seen

    try:
        wait_for(ready, 60, "observer up to be ready")
        consumer = make_consumer(kafka, None, ["observer.llm"])
        # A burst, and the stop once the normaliser is on it: the stop catches the stages in
        # the middle of their work (a batch in hand, its outputs or its commit on the way).
        before = export_chats(traces, BURST, "before")
        wait_for(lambda: normalised(set()) and seen, 60, "the normaliser at work")
        # observer's processes (with --workers, its workers too), not its broker child
        frozen = [proc.pid, *workers_of(proc.pid)]
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(STOP_S)
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)

        after = export_chats(traces, 30, "after")
        wait_for(lambda: normalised(before | after), 60, "the spans sent after the stop")
        wait_for(ready, 60, "ready again")
        metrics = httpx.get(f"{admin}/metrics", timeout=10).text
        assert proc.poll() is None
    finally:
        if consumer is not None:
            consumer.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
    # Reported, not asserted: whether a stage needed a restart depends on where the stop
    # caught it (a commit in flight, a heartbeat); the test asserts the healing.
    restarts = [line for line in metrics.splitlines()
                if line.startswith("observer_stage_restarts_total")]
    print("\n".join(restarts))
