"""``observer up --workers N``: the stages shared between processes, still one observer.

The plan places every consuming stage in exactly one process; the admin API answers for
every stage wherever it runs and serves one merged ``/metrics``; a worker that dies stops
``observer up`` naming it and its stages; a SIGKILLed observer leaves no worker behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_client.parser import text_string_to_metric_families

from observer import stages as registry
from observer.demo.agent import BASELINE, SupportAgent
from observer.metrics_merge import merge
from observer.worker_plan import plan
from tests.collectors_support import wait_for, workers_of

CONSUMERS = list(registry.consumers().values())


@pytest.mark.parametrize("workers", range(1, 9))
def test_every_stage_runs_in_exactly_one_process(workers: int) -> None:
    shares = plan(CONSUMERS, workers)
    placed = [name for share in shares for name in share]
    assert sorted(placed) == sorted(s.name for s in CONSUMERS)
    assert "trigger" in shares[0]  # its admin routes read its ledger
    assert len(shares) <= workers and all(shares[1:])
    if workers > 1:  # the heaviest stage leaves the receivers' process
        assert max(CONSUMERS, key=lambda s: s.cpu_weight).name not in shares[0]


def test_plan_refuses_no_process() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        plan(CONSUMERS, 0)


def test_merged_exposition_adds_counts_and_keeps_what_is_not_a_sum() -> None:
    main = (
        "# HELP h_seconds H.\n# TYPE h_seconds histogram\n"
        'h_seconds_bucket{le="1.0"} 2.0\nh_seconds_bucket{le="+Inf"} 3.0\n'
        "h_seconds_count 3.0\nh_seconds_sum 2.5\n"
        "# HELP c_total C.\n# TYPE c_total counter\nc_total 1.0\nc_created 100.0\n"
        "# HELP process_start_time_seconds S.\n# TYPE process_start_time_seconds gauge\n"
        "process_start_time_seconds 50.0\n"
    )
    worker = (
        "# HELP h_seconds H.\n# TYPE h_seconds histogram\n"
        'h_seconds_bucket{le="1.0"} 1.0\nh_seconds_bucket{le="+Inf"} 1.0\n'
        "h_seconds_count 1.0\nh_seconds_sum 0.5\n"
        "# HELP c_total C.\n# TYPE c_total counter\nc_total 4.0\nc_created 90.0\n"
        "# HELP process_start_time_seconds S.\n# TYPE process_start_time_seconds gauge\n"
        "process_start_time_seconds 60.0\n"
        "# HELP only_here Only in the worker.\n# TYPE only_here gauge\n"
        'only_here{stage="drift"} 7.0\n'
    )
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(merge([main, worker]).decode())
               for s in f.samples}
    assert samples[("h_seconds_bucket", (("le", "1.0"),))] == 3.0
    assert samples[("h_seconds_count", ())] == 4.0 and samples[("h_seconds_sum", ())] == 3.0
    assert samples[("c_total", ())] == 5.0 and samples[("c_created", ())] == 90.0
    assert samples[("process_start_time_seconds", ())] == 50.0
    assert samples[("only_here", (("stage", "drift"),))] == 7.0


# -- observer up --workers 2, as a user runs it ---------------------------------------------------
def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@contextmanager
def observer_up(tmp_path: Path, free_port, workers: int) -> Iterator[tuple[subprocess.Popen, dict]]:
    ports = {"http": free_port(), "admin": free_port()}
    env = {
        **os.environ,
        "OBSERVER_KAFKA__EMBEDDED_LISTEN": f"127.0.0.1:{free_port()}",
        "OBSERVER_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "OBSERVER_RECEIVER__HTTP_PORT": str(ports["http"]),
        "OBSERVER_RECEIVER__GRPC_PORT": str(free_port()),
        "OBSERVER_ADMIN__PORT": str(ports["admin"]),
        "OBSERVER_TRIGGER__LEDGER_PATH": str(tmp_path / "ledger.sqlite"),
        "OBSERVER_KAFKA__EMBEDDED_STATE_DIR": str(tmp_path / "state"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "observer.cli", "up", "--workers", str(workers)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.strip().startswith("kafka"):
                break
        assert "observer running" in "".join(lines), "".join(lines)
        yield proc, ports
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def _send_conversations(http_port: int, conversations: int) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "support"}))
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{http_port}/v1/traces")
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=100))
    agent = SupportAgent(provider.get_tracer("test"), seed=3)
    for _ in range(conversations):
        agent.converse(BASELINE)
    provider.shutdown()


def _samples(admin: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{admin}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_two_workers_answer_as_one_observer_and_a_dead_worker_stops_it(
    tmp_path: Path, free_port
) -> None:
    with observer_up(tmp_path, free_port, workers=2) as (proc, ports):
        admin = f"http://127.0.0.1:{ports['admin']}"
        health = httpx.get(f"{admin}/healthz", timeout=10).json()
        assert health["status"] == "ok"
        stages = health["stages"]
        assert set(stages) == {s.name for s in CONSUMERS}
        assert stages["trigger"]["worker"] == 0
        assert {stages["normalize"]["worker"], stages["drift"]["worker"]} == {0, 1}
        wait_for(lambda: httpx.get(f"{admin}/readyz", timeout=10).status_code == 200, 60,
                 "every stage running", poll_s=0.5)

        # Spans in at the receivers (process 0), normalised in one process and scored by the
        # drift engine in the other: both stages' series on the one /metrics.
        _send_conversations(ports["http"], 60)  # 4 spans each, 2 of them LLM calls
        llm_records = ("observer_drift_records_total", (("record_type", "llm"),))
        normalised = ("observer_normalizer_spans_total", (("kind", "llm"),))
        wait_for(lambda: _samples(admin).get(llm_records, 0) >= 120, 90,
                 "the drift engine in the worker scoring the LLM records", poll_s=0.5)
        samples = _samples(admin)
        assert samples[normalised] >= 120
        assert samples[("observer_stage_messages_total", (("stage", "drift"),))] > 0

        # A worker killed under it: observer up stops, naming the worker and its stages.
        worker = workers_of(proc.pid)
        assert len(worker) == 1
        os.kill(worker[0], signal.SIGKILL)
        assert proc.wait(60) == 1
        out = proc.stdout.read() if proc.stdout is not None else ""
        in_worker = ", ".join(n for n, s in stages.items() if s["worker"] == 1)
        assert f"worker-1 ({in_worker}) killed by SIGKILL" in out, out[-2000:]


def test_a_sigkilled_observer_leaves_no_worker(tmp_path: Path, free_port) -> None:
    from benchmarks.e2e_observe import observer_processes

    with observer_up(tmp_path, free_port, workers=2) as (proc, _ports):
        workers = workers_of(proc.pid)
        assert len(workers) == 1
        # The broker runs behind setpriv (observer.core.children): the parent-death signal
        # it sets must outlive the exec into Tansu.
        broker = observer_processes(proc.pid)["broker"]
        proc.kill()
        proc.wait(30)
        wait_for(lambda: _gone(workers[0]), 30, "the worker to die with its observer", poll_s=0.1)
        wait_for(lambda: _gone(broker), 30, "the broker to die with its observer", poll_s=0.1)


def test_workers_below_one_is_refused(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "observer.cli", "up", "--workers", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--workers must be at least 1" in done.stderr


def test_a_stage_a_worker_cannot_build_fails_the_start_naming_it(
    tmp_path: Path, free_port
) -> None:
    env = {
        **os.environ,
        "OBSERVER_KAFKA__EMBEDDED_LISTEN": f"127.0.0.1:{free_port()}",
        "OBSERVER_RECEIVER__HTTP_PORT": str(free_port()),
        "OBSERVER_RECEIVER__GRPC_PORT": str(free_port()),
        "OBSERVER_ADMIN__PORT": str(free_port()),
        "OBSERVER_TRIGGER__LEDGER_PATH": str(tmp_path / "ledger.sqlite"),
        "OBSERVER_KAFKA__EMBEDDED_STATE_DIR": str(tmp_path / "state"),
        # The drift engine (in the worker) cannot load its reference dataset.
        "OBSERVER_DRIFT__REFERENCE": "parquet",
        "OBSERVER_DRIFT__REFERENCE_PATH": str(tmp_path / "missing.parquet"),
    }
    # The fewest processes that put the drift engine in a worker, and that worker's number.
    workers, index = next((n, i) for n in range(2, 9)
                          for i, share in enumerate(plan(CONSUMERS, n)) if "drift" in share and i)
    done = subprocess.run([sys.executable, "-m", "observer.cli", "up", "--workers", str(workers)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    (said,) = [line for line in done.stderr.splitlines() if line.startswith("observer:")]
    assert f"worker-{index}" in said and "drift" in said
    assert "missing.parquet does not exist" in said


def test_a_missing_extra_found_in_a_worker_is_the_same_error() -> None:
    from observer.core.extras import MissingExtra

    found = MissingExtra("pyarrow", "parquet", "drift.reference: parquet")
    relayed = MissingExtra.relayed(str(found))
    assert isinstance(relayed, MissingExtra) and str(relayed) == str(found)


def test_a_worker_silent_past_one_answer_is_waited_for(tmp_path: Path, free_port) -> None:
    """A worker that does not answer within one request's time (SIGSTOP here; a long batch
    holding its GIL in life) is not taken for dead: observer keeps running and takes its
    answers again once it is back; a late answer is not mistaken for the next one."""
    from observer.workers import ANSWER_TIMEOUT_S

    with observer_up(tmp_path, free_port, workers=2) as (proc, ports):
        admin = f"http://127.0.0.1:{ports['admin']}"
        (worker,) = workers_of(proc.pid)
        os.kill(worker, signal.SIGSTOP)
        try:
            time.sleep(ANSWER_TIMEOUT_S + 3)  # the watcher's request timed out meanwhile
            assert proc.poll() is None, "observer stopped over a silent worker"
        finally:
            os.kill(worker, signal.SIGCONT)
        wait_for(lambda: httpx.get(f"{admin}/healthz", timeout=10).status_code == 200, 30,
                 "healthy again", poll_s=0.5)
        health = httpx.get(f"{admin}/healthz", timeout=10).json()
        assert health["errors"] == {} and all(
            s["state"] == "running" for s in health["stages"].values())
        proc.terminate()
        assert proc.wait(60) == 0
