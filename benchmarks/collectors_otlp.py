"""OTLP/HTTP intake throughput against its ceiling, and the normaliser's spans/s.

    .venv/bin/python -m benchmarks.collectors_otlp [--seconds 10] [--clients 4]

Each run measures, side by side on this machine:

1. ``ceiling``: a bare FastAPI endpoint (uvicorn, its own process) that only parses the
   request as an ``ExportTraceServiceRequest`` and answers 200; measured first and last, and
   the ratios use the mean of the two;
2. ``observer up``: every stage in one process on the embedded broker; a 200 means the spans
   are in Kafka (acks=all), and the normaliser, trace grouping and drift consume meanwhile,
   giving way to the receivers while requests are in flight (``receiver.stage_yield_ms``);
   the seconds they gave way (all stages together) are printed with it;
3. ``observer collect``: the receivers alone on the embedded broker.

Clients are separate processes (``--clients``, default 4), each posting the same protobuf
request of 500 GenAI spans (50 agent traces of 10 spans, with message content) in a loop on a
keep-alive connection for ``--seconds``. The figure is spans acknowledged with 200 per second
of wall time. The normaliser and trace grouping are then timed in this process on the same
spans, packed per partition as the receiver writes them. Prints one JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

SPANS_PER_REQUEST = 500
SPANS_PER_TRACE = 10

CEILING_APP = """
import sys, uvicorn
from fastapi import FastAPI, Request, Response
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
app = FastAPI()
@app.post("/v1/traces")
async def traces(request: Request) -> Response:
    ExportTraceServiceRequest.FromString(await request.body())
    return Response(b"", 200, media_type="application/x-protobuf")
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


def _kv(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def genai_request(seed: int = 0) -> ExportTraceServiceRequest:
    """500 spans: 50 traces of an agent span, 5 chat calls and 4 tool calls each."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.extend([_kv("service.name", "support"), _kv("host.name", "pod-1")])
    scope = rs.scope_spans.add()
    scope.scope.name = "opentelemetry.instrumentation.openai_v2"
    content = '[{"role":"user","parts":[{"type":"text","content":"' + "where is my order? " * 8
    for t in range(SPANS_PER_REQUEST // SPANS_PER_TRACE):
        trace_id = (seed * 1000 + t + 1).to_bytes(16, "big")
        root = (1).to_bytes(8, "big")
        spans = [
            Span(trace_id=trace_id, span_id=root, name="invoke_agent support",
                 start_time_unix_nano=1, end_time_unix_nano=10_000_000,
                 attributes=[_kv("gen_ai.operation.name", "invoke_agent"),
                             _kv("gen_ai.agent.name", "support")])
        ]
        for i in range(SPANS_PER_TRACE - 1):
            sid = (i + 2).to_bytes(8, "big")
            if i % 2 == 0:
                attrs = [
                    _kv("gen_ai.operation.name", "chat"), _kv("gen_ai.provider.name", "openai"),
                    _kv("gen_ai.request.model", "gpt-4o"), _kv("gen_ai.usage.input_tokens", 800 + i),
                    _kv("gen_ai.usage.output_tokens", 40 + i), _kv("gen_ai.response.id", f"chatcmpl-{t}-{i}"),
                    _kv("gen_ai.input.messages", content + '"}]}]'),
                ]
                attrs.append(KeyValue(key="gen_ai.response.finish_reasons"))
                attrs[-1].value.array_value.values.add(string_value="stop")
                name = "chat gpt-4o"
            else:
                attrs = [_kv("gen_ai.operation.name", "execute_tool"),
                         _kv("gen_ai.tool.name", "lookup_order"), _kv("gen_ai.tool.call.id", f"call_{i}")]
                name = "execute_tool lookup_order"
            spans.append(Span(trace_id=trace_id, span_id=sid, parent_span_id=root, name=name,
                              start_time_unix_nano=1_000 * i, end_time_unix_nano=1_000 * i + 500_000,
                              attributes=attrs))
        scope.spans.extend(spans)
    return request


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client(url: str, body: bytes, seconds: float, start_at: float, out: multiprocessing.Queue) -> None:
    headers = {"Content-Type": "application/x-protobuf"}
    acked = refused = 0
    with httpx.Client(timeout=60) as client:
        while time.time() < start_at:
            time.sleep(0.005)
        deadline = start_at + seconds
        while time.time() < deadline:
            r = client.post(url, content=body, headers=headers)
            if r.status_code == 200:
                acked += 1
            else:
                refused += 1
    out.put((acked, refused))


def drive(url: str, body: bytes, clients: int, seconds: float) -> dict[str, float]:
    """Run ``clients`` processes against ``url``; spans acknowledged per second."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 2.0  # all clients start together, after their imports
    procs = [ctx.Process(target=_client, args=(url, body, seconds, start_at, out)) for _ in range(clients)]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    for p in procs:
        p.join(30)
    wall = time.time() - start_at
    acked = sum(a for a, _ in results)
    return {
        "requests_acked": acked,
        "requests_refused": sum(r for _, r in results),
        "spans_per_s": round(acked * SPANS_PER_REQUEST / wall, 1),
    }


def _wait_http(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.post(url, content=ExportTraceServiceRequest().SerializeToString(),
                       headers={"Content-Type": "application/x-protobuf"}, timeout=5)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in {timeout_s}s")


@contextmanager
def ceiling_server() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", CEILING_APP, str(port)])
    try:
        url = f"http://127.0.0.1:{port}/v1/traces"
        _wait_http(url)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


@contextmanager
def observer_server(command: str) -> Iterator[tuple[str, str]]:
    """``observer COMMAND`` on fresh ports; yields the traces URL and the admin /metrics URL."""
    port = _free_port()
    admin = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "OBSERVER_LOG_LEVEL": "WARNING",
            "OBSERVER_KAFKA__EMBEDDED_LISTEN": f"127.0.0.1:{_free_port()}",
            "OBSERVER_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "OBSERVER_RECEIVER__HTTP_PORT": str(port),
            "OBSERVER_RECEIVER__GRPC_PORT": str(_free_port()),
            "OBSERVER_ADMIN__PORT": str(admin),
            "OBSERVER_TRIGGER__LEDGER_PATH": f"{tmp}/ledger.sqlite",
            # Each run starts empty: no spool or drift state of an earlier run replayed.
            "OBSERVER_KAFKA__EMBEDDED_STATE_DIR": f"{tmp}/state",
        }
        proc = subprocess.Popen([sys.executable, "-m", "observer.cli", command], env=env)
        try:
            url = f"http://127.0.0.1:{port}/v1/traces"
            _wait_http(url, 120)
            yield url, f"http://127.0.0.1:{admin}/metrics"
        finally:
            proc.terminate()
            proc.wait(60)


def stage_state(metrics_url: str) -> dict[str, float]:
    """Seconds the consuming stages gave way to the receivers meanwhile (observer's /metrics)."""
    text = httpx.get(metrics_url, timeout=10).text
    waited = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("observer_stage_yield_seconds_total{")
    )
    return {"stage_yield_s": round(waited, 1)}


def normaliser_rate(request: ExportTraceServiceRequest, rounds: int = 20) -> dict[str, float]:
    """Spans/s of the normaliser and of trace grouping on the receiver's messages, in-process."""
    from observer.collectors.normalize.normalizer import Normalizer
    from observer.collectors.paths.trace_grouping import FakeClock, TraceGrouper
    from observer.collectors.receiver.trace_split import split_by_trace
    from observer.core.bus import Message
    from observer.collectors.paths.config import PathsConfig
    from observer.core.config import KafkaConfig
    from observer.core.topics import Topics

    kafka = KafkaConfig()
    topics = Topics.from_config(kafka)
    messages = [
        Message(topics.spans, 0, i, key.encode(), raw, 0)
        for i, (key, raw) in enumerate(split_by_trace(request, kafka.partitions).encoded.items())
    ]
    normalizer = Normalizer(topics)
    started = time.perf_counter()
    for _ in range(rounds):
        normalizer.process(messages)
    normalize_s = time.perf_counter() - started

    clock = FakeClock()
    grouper = TraceGrouper(topics, PathsConfig(grace_s=0), clock=clock)
    started = time.perf_counter()
    for _ in range(rounds):
        grouper._closed.clear()  # the same traces again: not "late"
        grouper.process(messages)
        grouper.tick()
    group_s = time.perf_counter() - started
    spans = rounds * SPANS_PER_REQUEST
    return {
        "normalizer_spans_per_s": round(spans / normalize_s, 1),
        "paths_spans_per_s": round(spans / group_s, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="load per measurement")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client processes")
    args = parser.parse_args(argv)

    request = genai_request()
    body = request.SerializeToString()
    print(f"request: {SPANS_PER_REQUEST} spans, {len(body)} bytes; {args.clients} clients, "
          f"{args.seconds:g} s each", flush=True)
    results: dict[str, object] = {"cpus": os.cpu_count(), "request_bytes": len(body)}
    # The ceiling runs first and last; ratios use the mean of the two, which evens out a
    # machine whose load changes during the run.
    with ceiling_server() as url:
        first = drive(url, body, args.clients, args.seconds)
    print(f"ceiling (bare FastAPI parse), before: {first}", flush=True)
    for command in ("up", "collect"):
        with observer_server(command) as (url, metrics_url):
            results[f"observer_{command}"] = drive(url, body, args.clients, args.seconds)
            if command == "up":
                results["observer_up"].update(stage_state(metrics_url))  # type: ignore[union-attr]
        print(f"observer {command}: {results[f'observer_{command}']}", flush=True)
    with ceiling_server() as url:
        last = drive(url, body, args.clients, args.seconds)
    print(f"ceiling (bare FastAPI parse), after: {last}", flush=True)
    results["ceiling"] = {"before": first, "after": last}
    ceiling = (first["spans_per_s"] + last["spans_per_s"]) / 2
    results["ceiling_spans_per_s"] = round(ceiling, 1)
    for command in ("up", "collect"):
        rate = results[f"observer_{command}"]["spans_per_s"]  # type: ignore[index]
        results[f"ratio_{command}"] = round(rate / ceiling, 3) if ceiling else None
    results.update(normaliser_rate(request))
    print(f"observer up / ceiling = {results['ratio_up']}, observer collect / ceiling = "
          f"{results['ratio_collect']}; normaliser {results['normalizer_spans_per_s']} spans/s, "
          f"trace grouping {results['paths_spans_per_s']} spans/s", flush=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
