"""Watching one ``observer up`` process from outside: /metrics until every stage has caught
up, RSS from /proc, drift results and their closing records from Kafka, py-spy samples.

>>> sample = 'observer_stage_lag_messages{stage="drift",topic="observer.llm"} 3.0'
>>> metrics(sample)[("observer_stage_lag_messages", 'stage="drift",topic="observer.llm"')]
3.0
>>> top_frames(["a (x.py:1);b (x.py:2) 3", "a (x.py:1);c (y.py:5) 1"], 2)["own"][0]
('b (x.py)', 75.0)
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from benchmarks.collectors_otlp import _free_port, _wait_http

LINE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$")


@dataclass
class Observer:
    proc: subprocess.Popen
    traces_url: str
    metrics_url: str
    kafka: str


@contextmanager
def observer_up(extra_env: dict[str, str] | None = None,
                workers: int | None = None) -> Iterator[Observer]:
    """``observer up`` (embedded broker, defaults; ``--workers`` when given) on fresh ports,
    in its own process."""
    port, admin, kafka = _free_port(), _free_port(), f"127.0.0.1:{_free_port()}"
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "OBSERVER_LOG_LEVEL": "WARNING",
            "OBSERVER_KAFKA__EMBEDDED_LISTEN": kafka,
            "OBSERVER_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "OBSERVER_RECEIVER__HTTP_PORT": str(port),
            "OBSERVER_RECEIVER__GRPC_PORT": str(_free_port()),
            "OBSERVER_ADMIN__PORT": str(admin),
            "OBSERVER_TRIGGER__LEDGER_PATH": f"{tmp}/ledger.sqlite",
            "OBSERVER_KAFKA__EMBEDDED_STATE_DIR": f"{tmp}/state",
            **(extra_env or {}),
        }
        command = [sys.executable, "-m", "observer.cli", "up"]
        if workers is not None:
            command += ["--workers", str(workers)]
        proc = subprocess.Popen(command, env=env)
        try:
            url = f"http://127.0.0.1:{port}/v1/traces"
            _wait_http(url, 180)
            yield Observer(proc, url, f"http://127.0.0.1:{admin}/metrics", kafka)
        finally:
            proc.terminate()
            proc.wait(60)


def metrics(text: str) -> dict[tuple[str, str], float]:
    """Prometheus text as {(name, labels): value}."""
    out = {}
    for line in text.splitlines():
        m = LINE.match(line)
        if m and not line.startswith("#"):
            out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def progress(metrics_url: str) -> tuple[dict[str, float], float]:
    """Messages consumed per stage, and the stages' total lag."""
    got = metrics(httpx.get(metrics_url, timeout=10).text)
    consumed = {labels: v for (name, labels), v in got.items()
                if name == "observer_stage_messages_total"}
    lag = sum(v for (name, _), v in got.items() if name == "observer_stage_lag_messages")
    return consumed, lag


def wait_caught_up(metrics_url: str, quiet_s: float = 3.0, timeout_s: float = 1800,
                   per_stage: dict[str, float] | None = None) -> float:
    """When the last stage consumed its last message: no lag and no progress for ``quiet_s``.
    ``per_stage`` (when given) gets when each stage's consumer (``stage="..."``, topic)
    last moved: where the pipeline's tail is (trace grouping closes a trace ``paths.grace_s``
    after its root span, and the drift engine reads those paths after that)."""
    last, changed_at = None, time.time()
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        consumed, lag = progress(metrics_url)
        now = time.time()
        if per_stage is not None and last is not None:
            for labels, v in consumed.items():
                if v != last.get(labels):
                    per_stage[labels] = now
        if consumed != last:
            last, changed_at = consumed, now
        elif lag == 0 and now - changed_at >= quiet_s:
            return changed_at
        time.sleep(0.2)
    raise TimeoutError(f"stages did not catch up in {timeout_s}s (last: {last})")


def stage_counts(metrics_url: str) -> dict[str, float]:
    """What each stage got through: normaliser spans, drift records by type, paths closed."""
    got = metrics(httpx.get(metrics_url, timeout=10).text)
    wanted = ("observer_normalizer_spans_total", "observer_drift_records_total",
              "observer_paths_total", "observer_stage_messages_total", "observer_dead_letters_total")
    return {f"{n}{{{l}}}": v for (n, l), v in got.items() if n in wanted}


def process_children(pid: int) -> list[int]:
    """The pids of ``pid``'s children, sorted (none once it is gone)."""
    kids: list[int] = []
    tasks = Path(f"/proc/{pid}/task")
    for task in tasks.iterdir() if tasks.exists() else ():
        try:
            kids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return sorted(kids)


def observer_processes(pid: int) -> dict[str, int]:
    """``observer up`` (``pid``) as ``main``, its workers as ``worker_1``... (spawned Python
    children, not multiprocessing's resource tracker) and the embedded broker as ``broker``."""
    found = {"main": pid}
    for child in process_children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        if b"spawn_main" in cmdline:
            found[f"worker_{sum(k.startswith('worker_') for k in found) + 1}"] = child
        elif b"tansu" in cmdline:
            found["broker"] = child
    return found


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _cpu_s(pid: int) -> float:
    try:  # utime + stime, after the command name (which may hold spaces)
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> list[float]:
    """Resident memory of ``pid``, then of each of its workers (not the embedded broker), MB."""
    return [_rss_mb(p) for name, p in observer_processes(pid).items() if name != "broker"]


def broker_mb(pid: int) -> float:
    """Resident memory of the embedded broker (Tansu, memory-only: it holds every topic's
    retained messages), a child of ``pid``; 0 when there is none."""
    broker = observer_processes(pid).get("broker")
    return _rss_mb(broker) if broker is not None else 0.0


def cpu_seconds(pid: int) -> dict[str, float]:
    """CPU time (user + system, s) so far of ``observer up`` (``main``), each worker
    (``worker_N``) and the embedded broker (``broker``): where the cores went."""
    return {name: _cpu_s(p) for name, p in observer_processes(pid).items()}


def sample_rss(pid: int, until: float, path: Path) -> dict[str, float]:
    """RSS every second until ``until`` into a CSV (the Python processes' total, the embedded
    broker, then each Python process); start, max, end and slope (MB/min) of the total, and
    the broker's and each process's start and end."""
    rows = []
    started = time.time()
    while time.time() < until:
        parts = rss_mb(pid)
        rows.append((round(time.time() - started, 1), round(sum(parts), 1),
                     round(broker_mb(pid), 1), *(round(p, 1) for p in parts)))
        time.sleep(1.0)
    processes = max(len(r) for r in rows) - 3
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([("seconds", "rss_mb", "broker_mb", "main_mb",
                                  *(f"worker_{i}_mb" for i in range(1, processes))), *rows])
    t = np.array([r[0] for r in rows])
    mb = np.array([r[1] for r in rows])
    slope = float(np.polyfit(t / 60, mb, 1)[0]) if len(rows) > 2 else float("nan")
    half = mb[len(mb) // 2:]
    slope_late = (float(np.polyfit(t[len(mb) // 2:] / 60, half, 1)[0])
                  if len(half) > 2 else float("nan"))
    return {"samples": len(rows), "start_mb": float(mb[0]), "max_mb": float(mb.max()),
            "end_mb": float(mb[-1]), "slope_mb_per_min": round(slope, 2),
            "slope_second_half_mb_per_min": round(slope_late, 2), "csv": str(path),
            "broker_start_end_mb": (rows[0][2], rows[-1][2]),
            "per_process_start_end_mb": [(rows[0][i] if i < len(rows[0]) else None, rows[-1][i])
                                         for i in range(3, len(rows[-1]))]}


def result_latency(kafka: str, drift_topic: str) -> dict[str, float]:
    """Drift result's Kafka timestamp minus its window's closing record's, p50/p99 (ms)."""
    from kafka import KafkaConsumer, TopicPartition

    from observer.core.records import DriftResult, decode

    consumer = KafkaConsumer(bootstrap_servers=kafka, enable_auto_commit=False,
                             consumer_timeout_ms=3000)
    parts = [TopicPartition(drift_topic, p) for p in consumer.partitions_for_topic(drift_topic) or ()]
    consumer.assign(parts)
    consumer.seek_to_beginning()
    results = []
    for m in consumer:
        record = decode(m.value)
        if isinstance(record, DriftResult) and record.current_ranges:
            results.append((m.timestamp, record))
    delays = []
    for published_ms, record in results:
        closing = max(_timestamp(consumer, r.topic, r.partition, r.last_offset)
                      for r in record.current_ranges)
        delays.append(published_ms - closing)
    consumer.close()
    if not delays:
        return {"results": 0}
    d = np.array(delays, dtype=float)
    return {"results": len(delays), "p50_ms": float(np.percentile(d, 50)),
            "p99_ms": float(np.percentile(d, 99)), "max_ms": float(d.max())}


def _timestamp(consumer, topic: str, partition: int, offset: int) -> int:
    from kafka import TopicPartition

    tp = TopicPartition(topic, partition)
    consumer.assign([tp])
    consumer.seek(tp, offset)
    for m in consumer:
        if m.offset >= offset:
            return m.timestamp
    raise LookupError(f"{topic}[{partition}]@{offset} not readable")


@contextmanager
def py_spy(pid: int, path: Path, gil: bool = True, rate: int = 97) -> Iterator[None]:
    """Sample ``pid`` and its subprocesses (the workers) without blocking them, into py-spy's
    raw (collapsed) format.

    ``gil``: only the thread holding the GIL, i.e. where the one process's Python time goes
    (threads waiting in a selector or on a lock are left out); else every non-idle thread.
    """
    binary = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(binary).exists():
        print("py-spy is not installed (pip install py-spy): no profile", file=sys.stderr)
        yield
        return
    command = [binary, "record", "--pid", str(pid), "--subprocesses",
               "--nonblocking", "-r", str(rate), "-f", "raw", "-o", str(path)]
    spy = subprocess.Popen(command + (["--gil"] if gil else []),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)


WRAPPERS = {"Thread._bootstrap (threading.py)", "Thread._bootstrap_inner (threading.py)",
            "Thread.run (threading.py)"}
"""Frames under every thread's stack: left out of the cumulative top list."""


def top_frames(lines: list[str], n: int = 15) -> dict[str, list[tuple[str, float]]]:
    """Top ``n`` functions by own samples and by cumulative samples (share of all, %)."""
    own: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack:
            continue
        k = int(count)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        total += k
        own[frames[-1]] += k
        for f in set(frames) - WRAPPERS:
            cumulative[f] += k
    share = (lambda c: [(f, round(100 * v / total, 1)) for f, v in c.most_common(n)])
    return {"samples": total, "own": share(own), "cumulative": share(cumulative)}  # type: ignore[dict-item]
