"""Chaos at the receivers, on the embedded broker: 100,000 hostile bodies, and a 10x overload
whose accepted spans land in Kafka exactly once.

Both tests run the real receivers (:func:`tests.collectors_support.receivers`: OTLP/HTTP on
uvicorn and OTLP/gRPC on grpcio, one shared intake, Kafka acks before every 200/OK).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import multiprocessing
import random
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import grpc
import httpx
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from observer.collectors.receiver import otlp_json
from observer.collectors.receiver.otlp_http import create_app
from observer.collectors.receiver.signals import SIGNALS
from observer.core.config import KafkaConfig
from observer.core.topics import Topics
from tests.collectors_support import drain_to_end, receivers, spans_of

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
HTTP_OK = {200, 400, 413, 415}
"""What the HTTP receiver may answer a hostile body when it is not saturated."""
GRPC_BAD = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
ASGIApp = Callable[..., Awaitable[None]]


# ---------------------------------------------------------------------------- valid requests


def traces(seed: int, spans: int = 3) -> ExportTraceServiceRequest:
    rnd = random.Random(seed)
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "shop"
    scope = rs.scope_spans.add()
    scope.scope.name = "openai"
    trace_id = rnd.randbytes(16)
    for i in range(spans):
        span = scope.spans.add(
            trace_id=trace_id, span_id=rnd.randbytes(8), name=f"chat gpt-4o {i}", kind=3,
            start_time_unix_nano=1_700_000_000_000_000_000 + i,
            end_time_unix_nano=1_700_000_000_500_000_000 + i,
        )
        span.attributes.add(key="gen_ai.operation.name").value.string_value = "chat"
        span.attributes.add(key="gen_ai.usage.input_tokens").value.int_value = 12 + i
        span.events.add(name="gen_ai.choice", time_unix_nano=5)
        span.links.add(trace_id=rnd.randbytes(16), span_id=rnd.randbytes(8))
    return request


def metrics() -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    metric = request.resource_metrics.add().scope_metrics.add().metrics.add(
        name="gen_ai.client.token.usage"
    )
    point = metric.histogram.data_points.add(count=2, sum=3.0, bucket_counts=[1, 1])
    point.explicit_bounds.append(1.0)
    point.attributes.add(key="gen_ai.token.type").value.string_value = "input"
    return request


def logs() -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    record = request.resource_logs.add().scope_logs.add().log_records.add(
        time_unix_nano=1, trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9))
    )
    record.body.string_value = "hello"
    return request


TEMPLATES = {
    "traces": [traces(seed) for seed in range(64)], "metrics": [metrics()], "logs": [logs()]
}
ENCODED = {  # (protobuf, JSON) of each template, encoded once
    signal: [(t.SerializeToString(), otlp_json.encode(t)) for t in templates]
    for signal, templates in TEMPLATES.items()
}


# ---------------------------------------------------------------------------- mutations


def _bit_flips(rnd: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rnd.randint(1, 8)):
        if out:
            out[rnd.randrange(len(out))] ^= 1 << rnd.randrange(8)
    return bytes(out)


def _truncate(rnd: random.Random, data: bytes) -> bytes:
    return data[: rnd.randrange(len(data) + 1)]


def _random_bytes(rnd: random.Random, data: bytes) -> bytes:
    return rnd.randbytes(rnd.randint(0, 300))


def _huge_varint(rnd: random.Random, data: bytes) -> bytes:
    i = rnd.randrange(len(data) + 1)
    tag = rnd.choice([b"\x0a", b"\x12", b"\x08", b"\x10", b"\x1a", b"\xfa\x01"])
    return data[:i] + tag + b"\xff" * rnd.randint(5, 12) + b"\x01" + data[i:]


def _invalid_utf8(rnd: random.Random, data: bytes) -> bytes:
    target = rnd.choice([b"chat", b"shop", b"hello", b"gen_ai"])
    at = data.find(target)
    if at < 0:
        return data + b"\xff\xfe"
    return data[:at] + b"\xff\xfe\xc3\x28"[: len(target)] + data[at + len(target):]


def _splice(rnd: random.Random, data: bytes) -> bytes:
    i, j = rnd.randrange(len(data) + 1), rnd.randrange(len(data) + 1)
    return data[:i] + data[j:] + data[:j]


PROTOBUF_MUTATIONS: list[Callable[[random.Random, bytes], bytes]] = [
    _bit_flips, _truncate, _random_bytes, _huge_varint, _invalid_utf8, _splice,
]


def _nested_attribute(depth: int) -> bytes:
    """An OTLP/JSON request whose one attribute value nests ``depth`` kvlists deep."""
    head = b'{"kvlistValue": {"values": [{"key": "k", "value": '
    return (
        b'{"resourceSpans": [{"resource": {"attributes": [{"key": "deep", "value": '
        + head * depth + b'{"stringValue": "x"}' + b"}]}}" * depth + b"}]}}]}"
    )


DEEP = [b"[" * d + b"]" * d for d in (50, 990, 100_000)] + [
    _nested_attribute(d) for d in (30, 200, 3000)
]


def _deep_json(rnd: random.Random, data: bytes) -> bytes:
    return rnd.choice(DEEP)


def _wrong_types(rnd: random.Random, data: bytes) -> bytes:
    document = json.loads(data)
    weird = rnd.choice([[], {}, "x", 1e308, -1, True, None, "zz", [1, "a"], {"a": []}, 2**70])

    def visit(node: object) -> None:
        if isinstance(node, dict) and node:
            key = rnd.choice(sorted(node))
            if rnd.random() < 0.4 or not isinstance(node[key], (dict, list)):
                node[key] = weird
            else:
                visit(node[key])
        elif isinstance(node, list) and node:
            visit(rnd.choice(node))

    visit(document)
    return json.dumps(document).encode()


def _bad_json_values(rnd: random.Random, data: bytes) -> bytes:
    text = data.decode()
    swaps = [
        ('"chat gpt-4o 0"', '"\\ud800"'), ('"1700000000000000000"', '"99999999999999999999999"'),
        ('"1700000000000000000"', "NaN"), ('"kind":3', '"kind":"SPAN_KIND_CLIENT"'),
        ('"kind":3', '"kind":99999999999'), ('"traceId":"', '"traceId":"zz'),
        ('"spanId":"', '"spanId":"0'), ('"intValue":"12"', '"intValue":1e400'),
    ]
    old, new = rnd.choice(swaps)
    return text.replace(old, new, 1).encode()


def _json_invalid_utf8(rnd: random.Random, data: bytes) -> bytes:
    i = data.find(b'"', rnd.randrange(len(data))) + 1
    return data[:i] + rnd.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x00"]) + data[i:]


JSON_MUTATIONS: list[Callable[[random.Random, bytes], bytes]] = [
    _bit_flips, _truncate, _random_bytes, _deep_json, _wrong_types, _bad_json_values,
    _json_invalid_utf8, _splice,
]


def hostile_http(rnd: random.Random) -> tuple[str, dict[str, str | bytes], bytes]:
    """A path, headers and body: a mutated valid request, sometimes with a wrong
    Content-Type or a (broken) Content-Encoding."""
    signal = rnd.choice(sorted(SIGNALS))
    as_json = rnd.random() < 0.5
    body = rnd.choice(ENCODED[signal])[as_json]
    mutation = rnd.choice(JSON_MUTATIONS if as_json else PROTOBUF_MUTATIONS)
    if rnd.random() < 0.9:
        body = mutation(rnd, body)
    content_type = JSON if as_json else PROTOBUF
    roll = rnd.random()
    if roll < 0.08:
        content_type = PROTOBUF if as_json else JSON  # the wrong one
    elif roll < 0.11:
        content_type = rnd.choice(["text/plain", "", "application/json; charset=latin-1",
                                   b"application/x-protobuf; x=\xff"])
    headers: dict[str, str | bytes] = {"Content-Type": content_type}
    roll = rnd.random()
    if roll < 0.05:
        headers["Content-Encoding"] = "gzip"
        body = gzip.compress(body)
        if rnd.random() < 0.5:
            body = _bit_flips(rnd, body)
    elif roll < 0.07:
        headers["Content-Encoding"] = rnd.choice(["gzip", "deflate", "br", "zstd"])
    return SIGNALS[signal].path, headers, body


def hostile_grpc(rnd: random.Random) -> tuple[str, bytes]:
    signal = rnd.choice(sorted(SIGNALS))
    body = rnd.choice(ENCODED[signal])[0]
    if rnd.random() < 0.95:
        body = rnd.choice(PROTOBUF_MUTATIONS)(rnd, body)
    return f"/{SIGNALS[signal].grpc_service}/Export", body


# ---------------------------------------------------------------------------- senders


IN_PROCESS_HTTP = 64_000
SOCKET_HTTP = 6_000
SOCKET_GRPC = 30_000
REPLICA_IN_PROCESS_HTTP = 44_000
REPLICA_GRPC = SOCKET_GRPC // 2
"""Of the in-process and gRPC bodies, those that go to a second receiver replica in its own
process (:func:`_replica`), so that the test's Python work runs on two cores."""
RECEIVER_SETTINGS = {"max_body_bytes": 1 << 20, "max_inflight_requests": 256, "ack_timeout_s": 20}


async def _asgi_post(app: ASGIApp, path: str, headers: dict[str, str | bytes], body: bytes) -> int:
    """POST through the ASGI interface as uvicorn calls it: one ``http.request`` message with
    the whole body, then ``http.disconnect``; the answer's status."""
    raw = [(k.lower().encode(), v if isinstance(v, bytes) else v.encode("latin-1"))
           for k, v in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": raw, "client": ("127.0.0.1", 1), "server": ("receiver", 80),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    status: list[int] = []

    async def receive() -> dict[str, object]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            status.append(int(message["status"]))  # type: ignore[call-overload]

    await app(scope, receive, send)
    return status[0]


async def _send_in_process(app: ASGIApp, seed: int, n: int) -> Counter[int]:
    rnd = random.Random(seed)
    statuses: Counter[int] = Counter()
    window = asyncio.Semaphore(48)

    async def one(path: str, headers: dict[str, str | bytes], body: bytes) -> None:
        async with window:
            statuses[await _asgi_post(app, path, headers, body)] += 1

    batch: list[asyncio.Task[None]] = []
    for _ in range(n):
        batch.append(asyncio.create_task(one(*hostile_http(rnd))))
        if len(batch) >= 2000:
            await asyncio.gather(*batch)
            batch = []
    await asyncio.gather(*batch)
    return statuses


def _replica(
    kafka: KafkaConfig, topics: Topics, seed: int, in_process: int, over_grpc: int
) -> tuple[Counter[int], Counter[grpc.StatusCode], int, int]:
    """A second receiver replica (its own intake, same broker and topics), run in a child
    process so that its Python work has a core of its own: ``in_process`` hostile bodies into
    its ASGI app (:func:`_send_in_process`) while ``over_grpc`` go to its gRPC server over a
    real socket (:func:`_send_grpc`); the HTTP statuses, the gRPC codes, then its budget's
    requests and bytes once it closed."""
    with receivers(kafka, topics, **RECEIVER_SETTINGS) as r:
        app = create_app(r.intake.receiver, kafka, topics, intake=r.intake)
        with ThreadPoolExecutor(1) as pool:
            grpc_run = pool.submit(_send_grpc, r.grpc, 100 + seed, over_grpc)
            statuses = asyncio.run(_send_in_process(app, seed, in_process))
            codes = grpc_run.result()
    return statuses, codes, r.intake.budget.requests, r.intake.budget.bytes


def _send_over_socket(url: str, seed: int, n: int) -> Counter[int]:
    rnd = random.Random(seed)
    statuses: Counter[int] = Counter()
    with httpx.Client(base_url=url, timeout=30) as client:  # one kept-alive connection
        for _ in range(n):
            path, headers, body = hostile_http(rnd)
            statuses[client.post(path, content=body, headers=headers).status_code] += 1
    return statuses


def _send_grpc(target: str, seed: int, n: int) -> Counter[grpc.StatusCode]:
    rnd = random.Random(seed)
    codes: Counter[grpc.StatusCode] = Counter()
    with grpc.insecure_channel(target) as channel:
        methods = {
            f"/{s.grpc_service}/Export": channel.unary_unary(f"/{s.grpc_service}/Export")
            for s in SIGNALS.values()
        }
        pending = []
        for _ in range(n):
            method, body = hostile_grpc(rnd)
            pending.append(methods[method].future(body, timeout=60))
            if len(pending) >= 32:
                codes.update(f.code() for f in pending)
                pending = []
        codes.update(f.code() for f in pending)
    return codes


def test_100k_hostile_bodies_never_5xx(kafka_config: KafkaConfig, topics: Topics) -> None:
    """100,000 mutated OTLP bodies (bit flips, truncation, random bytes, huge varints, invalid
    UTF-8, splices; for JSON also deep nesting, wrong field types, out-of-range values; wrong
    Content-Type and broken Content-Encoding now and then) over HTTP protobuf, HTTP JSON and
    gRPC: no HTTP 5xx, no gRPC INTERNAL or UNKNOWN, and valid exports still pass after.

    How they travel, to fit the time budget: 64,000 HTTP bodies go in-process into a
    receiver's own ASGI app (``create_app`` on its intake), called as uvicorn calls it
    (:func:`_asgi_post`: the scope, one ``http.request`` message with the body): routing, body
    reading, budget, decoding and the Kafka write run as on uvicorn, without the socket;
    6,000 HTTP bodies over real sockets to uvicorn on 3 kept-alive connections; 30,000 gRPC
    messages over a real socket, on 2 channels calling the raw ``Export`` methods with bytes
    (32 calls in flight each). So that the test uses both cores, 44,000 of the in-process
    bodies and one of the gRPC channels go to a second replica in a child process
    (:func:`_replica`: the same receivers, its own intake, on the same broker and topics).
    """
    # Spawned, not forked: this process runs Kafka and server threads a fork would copy.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as replica:
        replica_run = replica.submit(
            _replica, kafka_config, topics, 2, REPLICA_IN_PROCESS_HTTP, REPLICA_GRPC
        )
        with receivers(kafka_config, topics, **RECEIVER_SETTINGS) as r:
            app = create_app(r.intake.receiver, kafka_config, topics, intake=r.intake)
            with ThreadPoolExecutor(4) as pool:
                grpc_run = pool.submit(_send_grpc, r.grpc, 100, SOCKET_GRPC - REPLICA_GRPC)
                socket_runs = [
                    pool.submit(_send_over_socket, r.http, 200 + i, SOCKET_HTTP // 3)
                    for i in range(3)
                ]
                statuses = asyncio.run(
                    _send_in_process(app, 1, IN_PROCESS_HTTP - REPLICA_IN_PROCESS_HTTP)
                )
                for run in socket_runs:
                    statuses.update(run.result())
                codes = grpc_run.result()

            # Still serving: a valid export on each transport.
            valid = traces(7).SerializeToString()
            after = httpx.post(
                f"{r.http}/v1/traces", content=valid, headers={"Content-Type": PROTOBUF}
            )
            with grpc.insecure_channel(r.grpc) as channel:
                channel.unary_unary(f"/{SIGNALS['traces'].grpc_service}/Export")(valid, timeout=30)
        replica_statuses, replica_codes, replica_requests, replica_bytes = replica_run.result()

    assert sum(replica_statuses.values()) == REPLICA_IN_PROCESS_HTTP
    assert sum(replica_codes.values()) == REPLICA_GRPC
    statuses.update(replica_statuses)
    codes.update(replica_codes)
    assert sum(statuses.values()) + sum(codes.values()) == 100_000
    assert set(statuses) <= HTTP_OK, statuses
    assert not GRPC_BAD & set(codes), codes
    assert statuses[200] > 1000 and codes[grpc.StatusCode.OK] > 1000  # valid ones got through
    assert after.status_code == 200
    assert r.intake.budget.requests == 0 and r.intake.budget.bytes == 0
    assert replica_requests == 0 and replica_bytes == 0


# ---------------------------------------------------------------------------- overload


def test_overload_accepted_spans_land_exactly_once(kafka_config: KafkaConfig, topics: Topics) -> None:
    """20 senders (10 HTTP, 10 gRPC) push at once against 2 request slots, about 10x what the
    receiver admits, without retrying: some are refused (429 / UNAVAILABLE), and the spans of
    every request answered 200/OK are in ``otlp_spans`` exactly once, none of a refused one."""
    accepted: list[bytes] = []
    refused: list[bytes] = []
    answers: Counter[str] = Counter()
    lock = threading.Lock()

    def outcome(ok: bool, what: str, request: ExportTraceServiceRequest) -> None:
        ids = [s.span_id for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
        with lock:
            (accepted if ok else refused).extend(ids)
            answers[what] += 1

    def http_sender(url: str, seed: int) -> None:
        with httpx.Client(timeout=30) as client:
            for i in range(12):
                request = traces(seed * 1000 + i, spans=20)
                r = client.post(url, content=request.SerializeToString(),
                                headers={"Content-Type": PROTOBUF})
                assert r.status_code in (200, 429), r.text
                outcome(r.status_code == 200, str(r.status_code), request)

    def grpc_sender(target: str, seed: int) -> None:
        with grpc.insecure_channel(target) as channel:
            export = channel.unary_unary(f"/{SIGNALS['traces'].grpc_service}/Export")
            for i in range(12):
                request = traces(seed * 1000 + i, spans=20)
                try:
                    export(request.SerializeToString(), timeout=30)
                    outcome(True, "OK", request)
                except grpc.RpcError as e:
                    assert e.code() is grpc.StatusCode.UNAVAILABLE, e.details()
                    outcome(False, e.code().name, request)

    with receivers(kafka_config, topics, max_inflight_requests=2, retry_after_s=1) as r:
        senders = [
            threading.Thread(target=http_sender, args=(f"{r.http}/v1/traces", i)) for i in range(10)
        ] + [threading.Thread(target=grpc_sender, args=(r.grpc, 100 + i)) for i in range(10)]
        for t in senders:
            t.start()
        for t in senders:
            t.join(120)
    assert sum(answers.values()) == 240, answers
    assert refused and accepted, answers
    found = Counter(
        span.span_id for message in _all_messages(kafka_config, topics.spans, len(accepted))
        for span in spans_of(message)
    )
    assert set(found) == set(accepted)
    assert set(found.values()) == {1}
    assert not set(found) & set(refused)


def _all_messages(kafka: KafkaConfig, topic: str, spans: int) -> Iterator[bytes]:
    """Every message of ``topic``, read to its end: every sender had its answer (each
    accepted request acknowledged by Kafka) before this is called."""
    records = drain_to_end(kafka, topic)
    got = sum(len(spans_of(m.value)) for m in records)
    assert got >= spans, f"{got} spans in Kafka, {spans} accepted"
    return (m.value for m in records)
