"""Hostile clients at the receivers, on real sockets: slowloris senders, a JSON body whose
decoded size the budget must see, and clients that hang up mid-request."""

from __future__ import annotations

import logging
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from observer.collectors.receiver import otlp_json
from observer.collectors.receiver.decoded_size import factor
from observer.core.config import KafkaConfig
from observer.core.http import ServerThread
from observer.core.topics import Topics
from tests.collectors_support import receivers, sample, wait_for

JSON = "application/json"
PROTOBUF = "application/x-protobuf"
SLOW = 70  # more than max_inflight_requests (64)


def sdk_spans(traces: int) -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    for _ in range(traces):
        with tracer.start_as_current_span("chat gpt-4o") as chat:
            chat.set_attribute("gen_ai.operation.name", "chat")
    provider.shutdown()
    return list(memory.get_finished_spans())


def request_of(spans: int, attributes: int = 8) -> ExportTraceServiceRequest:
    """An export request of ``spans`` spans with small attributes (the costly kind to decode)."""
    request = ExportTraceServiceRequest()
    scope = request.resource_spans.add().scope_spans.add()
    for i in range(spans):
        span = scope.spans.add(
            trace_id=(i + 1).to_bytes(16, "big"),
            span_id=(i + 1).to_bytes(8, "big"),
            name=f"chat {i}",
            start_time_unix_nano=1,
            end_time_unix_nano=2,
        )
        for a in range(attributes):
            span.attributes.add(key=f"attr.{a}").value.int_value = a
    return request


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    return parts.hostname or "127.0.0.1", parts.port or 80


def open_socket(addr: tuple[str, int], first: bytes) -> socket.socket:
    s = socket.create_connection(addr, timeout=10)
    s.sendall(first)
    return s


def closed_by_server(s: socket.socket) -> bytes | None:
    """What the server sent before closing ``s``, or None while it is still open."""
    s.setblocking(False)
    try:
        data = s.recv(65536, socket.MSG_PEEK)
    except BlockingIOError:
        return None
    except OSError:
        return b""
    finally:
        s.setblocking(True)
    if not data:
        return b""
    s.settimeout(5)
    got = b""
    while True:
        try:
            chunk = s.recv(65536)
        except OSError:
            return got
        if not chunk:
            return got
        got += chunk


@contextmanager
def dribbling(sockets: list[socket.socket], byte: bytes) -> Iterator[None]:
    """Send ``byte`` on every socket every 100 ms (slowloris) while the block runs."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(0.1):
            for s in sockets:
                try:
                    s.send(byte)
                except OSError:
                    pass  # closed by the server: what the test waits for

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def test_slow_http_clients_hold_no_slot_and_are_cut_off(
    kafka_config: KafkaConfig, topics: Topics
) -> None:
    """70 connections dribbling headers or a body one byte at a time (more than the 64 request
    slots) do not stop real exports over HTTP and gRPC; the server answers each 408 (or
    closes it) once its header or body deadline passes, and counts the cut-off bodies."""
    with receivers(kafka_config, topics, header_timeout_s=5, body_timeout_s=5) as r:
        http = address(r.http)
        head = (
            b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
            b"Content-Length: 100000\r\n\r\n"
        )
        in_body = [open_socket(http, head + b"\x0a") for _ in range(SLOW // 2)]
        in_headers = [open_socket(http, b"POST /v1/traces HTTP/1.1\r\nHo") for _ in range(SLOW // 2)]
        cut = sample("observer_receiver_requests_total", code="408")
        with dribbling(in_body, b"\x00"), dribbling(in_headers, b"x"):
            wait_for(lambda: r.intake.budget.bytes >= len(in_body), what="the slow bodies")
            http_exporter = HttpSpanExporter(endpoint=f"{r.http}/v1/traces", timeout=10)
            grpc_exporter = GrpcSpanExporter(endpoint=r.grpc, insecure=True, timeout=10)
            try:
                assert http_exporter.export(sdk_spans(2)) is SpanExportResult.SUCCESS
                assert grpc_exporter.export(sdk_spans(2)) is SpanExportResult.SUCCESS
            finally:
                http_exporter.shutdown()
                grpc_exporter.shutdown()
            # The exports passed while the slow senders were still connected.
            still_open = [s for s in in_body + in_headers if closed_by_server(s) is None]
            assert len(still_open) > SLOW // 2
            answers: dict[int, bytes] = {}
            wait_for(
                lambda: all(
                    answers.setdefault(i, a) is not None
                    for i, s in enumerate(in_body + in_headers)
                    if i not in answers and (a := closed_by_server(s)) is not None
                ) and len(answers) == SLOW,
                timeout_s=20,
                what="the server closing every slow connection",
            )
    for s in in_body + in_headers:
        s.close()
    for answer in answers.values():
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408 "), answer[:80]
    assert sum(a.startswith(b"HTTP/1.1 408 ") for a in answers.values()) >= SLOW // 2
    assert sample("observer_receiver_requests_total", code="408") - cut == len(in_body)
    assert r.intake.budget.requests == 0 and r.intake.budget.bytes == 0


def test_slow_grpc_connections_do_not_block_others(
    kafka_config: KafkaConfig, topics: Topics
) -> None:
    """70 connections trickling the HTTP/2 preface to the gRPC port: an SDK export passes,
    and the server drops them once the handshake deadline (header_timeout_s) passes."""
    with receivers(kafka_config, topics, header_timeout_s=2) as r:
        slow = [open_socket(address(r.grpc), b"PRI * HTT") for _ in range(SLOW)]
        with dribbling(slow, b"P"):
            exporter = GrpcSpanExporter(endpoint=r.grpc, insecure=True, timeout=10)
            try:
                assert exporter.export(sdk_spans(2)) is SpanExportResult.SUCCESS
            finally:
                exporter.shutdown()
            closed: set[int] = set()
            wait_for(
                lambda: len(closed.update(
                    i for i, s in enumerate(slow) if closed_by_server(s) is not None
                ) or closed) == SLOW,
                timeout_s=20,
                what="the gRPC server closing every slow connection",
            )
    for s in slow:
        s.close()


def test_json_is_charged_its_decoded_size(kafka_config: KafkaConfig, topics: Topics) -> None:
    """Rule: a body is charged (body bytes x factor of its encoding): JSON 16, protobuf 8.
    A JSON body that fits what is left of the budget by its raw size but not by its decoded
    size is refused 429 with Retry-After; the same spans as protobuf pass; a JSON body whose
    charge is over the whole budget is 413 (retrying cannot help)."""
    request = request_of(200)
    body, pb = otlp_json.encode(request), request.SerializeToString()
    budget = 20 * len(body)
    with receivers(kafka_config, topics, max_inflight_bytes=budget, retry_after_s=3) as r:
        held = r.intake.admit()  # another request in flight holds 8 body-sizes
        held.add_bytes(8 * len(body))
        try:
            refused = httpx.post(f"{r.http}/v1/traces", content=body, headers={"Content-Type": JSON})
            passed = httpx.post(f"{r.http}/v1/traces", content=pb, headers={"Content-Type": PROTOBUF})
        finally:
            held.release()
        alone = httpx.post(f"{r.http}/v1/traces", content=body, headers={"Content-Type": JSON})
    assert len(body) < budget - 8 * len(body) < factor(JSON) * len(body)  # the premise
    assert refused.status_code == 429 and refused.headers["retry-after"] == "3"
    assert passed.status_code == 200 and alone.status_code == 200
    with receivers(kafka_config, topics, max_inflight_bytes=10 * len(body)) as r:
        too_big = httpx.post(f"{r.http}/v1/traces", content=body, headers={"Content-Type": JSON})
    assert too_big.status_code == 413 and "in-flight budget" in too_big.json()["message"]


SLACK_BYTES = 6 << 20
"""Measured memory beyond the budget allowed for in the test below: the servers' and
clients' own buffers, the tracemalloc bookkeeping of live threads, Kafka client batches."""


def test_concurrent_json_bodies_stay_within_the_budget(
    kafka_config: KafkaConfig, topics: Topics
) -> None:
    """Four senders of ~0.7 MB JSON bodies at once against a budget with room for one decoded
    body: the peak of Python allocations (tracemalloc) stays under the budget plus
    :data:`SLACK_BYTES`; the senders retry their 429s until every body is accepted."""
    request = request_of(1500)
    body = otlp_json.encode(request)
    budget = 12 << 20
    assert factor(JSON) * len(body) < budget < 2 * factor(JSON) * len(body)
    statuses: list[int] = []
    with receivers(kafka_config, topics, max_inflight_bytes=budget, retry_after_s=1) as r:
        url = f"{r.http}/v1/traces"

        def send() -> None:
            with httpx.Client(timeout=60) as client:
                for _ in range(200):
                    status = client.post(url, content=body, headers={"Content-Type": JSON}).status_code
                    statuses.append(status)
                    if status == 200:
                        return
                    time.sleep(0.25)

        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            senders = [threading.Thread(target=send) for _ in range(4)]
            for t in senders:
                t.start()
            for t in senders:
                t.join(120)
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
    assert statuses.count(200) == 4 and set(statuses) <= {200, 429}
    assert peak < budget + SLACK_BYTES, f"peak {peak >> 20} MiB over budget {budget >> 20} MiB"


def test_client_hanging_up_mid_body_is_counted_not_a_traceback(
    kafka_config: KafkaConfig, topics: Topics, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that sends half its body and closes: one INFO line, no traceback, counted as
    ``code="client_disconnected"``; nothing stays charged to the budget."""
    uvicorn_log = logging.getLogger("uvicorn.error")  # uvicorn's loggers do not propagate
    uvicorn_log.addHandler(caplog.handler)
    caplog.set_level(logging.INFO)
    try:
        with receivers(kafka_config, topics) as r:
            before = sample("observer_receiver_requests_total", code="client_disconnected")
            s = open_socket(
                address(r.http),
                b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n" + b'{"resourceSpans": [' + b" " * 480,
            )
            wait_for(lambda: r.intake.budget.bytes > 0, what="the half body")
            s.close()
            wait_for(
                lambda: sample("observer_receiver_requests_total", code="client_disconnected")
                > before,
                what="the disconnect counted",
            )
            assert r.intake.budget.requests == 0 and r.intake.budget.bytes == 0
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    assert not [rec for rec in caplog.records if rec.exc_info or rec.levelno >= logging.ERROR]
    (line,) = [rec for rec in caplog.records if "disconnected" in rec.getMessage()]
    assert line.levelno == logging.INFO and line.name == "observer.collectors.receiver.otlp_http"


def test_every_server_thread_cuts_slow_requests_on_kept_alive_connections() -> None:
    """The deadlines belong to ``ServerThread`` (the admin API's server too): a request on a
    kept-alive connection whose headers then trickle is answered 408 and closed."""
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    with ServerThread(app, header_timeout_s=1, body_timeout_s=1) as server:
        s = open_socket(address(server.url), b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = s.recv(65536)
        s.sendall(b"GET /heal")  # the next request, never finished
        with dribbling([s], b"t"):
            closed: list[bytes] = []
            wait_for(
                lambda: (a := closed_by_server(s)) is not None and not closed.append(a),
                timeout_s=10,
                what="the server closing the kept-alive connection",
            )
        s.close()
    assert first.startswith(b"HTTP/1.1 200 ")
    assert closed[0].startswith(b"HTTP/1.1 408 "), closed[0][:80]
