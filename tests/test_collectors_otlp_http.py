"""The OTLP/HTTP receiver against real clients (OTel SDK exporter, httpx) and the real broker."""

from __future__ import annotations

import gzip
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from observer.collectors.receiver import otlp_json
from observer.collectors.receiver.otlp_http import JSON, PROTOBUF, TRACES_PATH, create_app
from observer.core.broker import EmbeddedBroker
from observer.collectors.receiver.config import ReceiverConfig
from observer.core.config import KafkaConfig
from observer.core.http import ServerThread
from observer.core.topics import Topics
from tests.collectors_support import drain, drain_spans, spans_of, traces_by_placement

TRACE = "5b8efff798038103d269b633813fc60c"


@contextmanager
def receiver(kafka: KafkaConfig, topics: Topics, **settings: Any) -> Iterator[str]:
    """Serve the receiver on a free port; yields the /v1/traces URL."""
    app = create_app(ReceiverConfig(http_port=0, **settings), kafka, topics)
    with ServerThread(app) as server:
        yield server.url + TRACES_PATH


def sdk_spans(traces: int) -> list[ReadableSpan]:
    """Finished spans of ``traces`` agent loops (agent -> chat + tool), from the real SDK."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    for _ in range(traces):
        with tracer.start_as_current_span("invoke_agent planner"):
            with tracer.start_as_current_span("chat gpt-4o") as chat:
                chat.set_attribute("gen_ai.operation.name", "chat")
                chat.set_attribute("gen_ai.input.messages", '[{"role":"user","content":"hi"}]')
            with tracer.start_as_current_span("execute_tool search"):
                pass
    provider.shutdown()
    return list(memory.get_finished_spans())


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def json_request(*spans: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {
                        "attributes": [{"key": "service.name", "value": {"stringValue": "shop"}}]
                    },
                    "scopeSpans": [{"scope": {"name": "test"}, "spans": list(spans)}],
                }
            ]
        }
    ).encode()


def json_span(
    trace_id: str = TRACE, span_id: str = "eee19b7ec3c1b174", **extra: Any
) -> dict[str, Any]:
    return {
        "traceId": trace_id,
        "spanId": span_id,
        "name": "chat gpt-4o",
        "kind": 3,
        "startTimeUnixNano": "1700000000000000000",
        "endTimeUnixNano": 1700000000250000000,
        "attributes": [{"key": "gen_ai.usage.input_tokens", "value": {"intValue": "12"}}],
        "status": {"code": 1},
        **extra,
    }


KAFKA_CLIENTS = pytest.mark.parametrize("kafka_client", ["librdkafka", "kafka-python"])


@KAFKA_CLIENTS
def test_sdk_export_is_grouped_by_trace_and_partition(
    kafka_config: KafkaConfig, topics: Topics, kafka_client: str
) -> None:
    spans = sdk_spans(traces=12)
    accepted = sample("observer_receiver_spans_total", outcome="accepted")
    with receiver(kafka_config, topics, kafka_client=kafka_client) as url:
        exporter = OTLPSpanExporter(endpoint=url, timeout=10)
        assert exporter.export(spans) is SpanExportResult.SUCCESS  # one batch, twelve traces
        exporter.shutdown()

    messages = drain_spans(kafka_config, topics.spans, len(spans))
    traces = traces_by_placement(messages, kafka_config.partitions)
    assert len(traces) == 12
    assert len(messages) <= kafka_config.partitions  # packed: one message per partition
    got: dict[int, Span] = {}
    for m in messages:
        contents = spans_of(m.value)
        request = ExportTraceServiceRequest.FromString(m.value)
        for resource_spans in request.resource_spans:  # every trace keeps its wrappers
            resource = resource_spans.resource.attributes
            assert any(a.key == "service.name" and a.value.string_value == "shop" for a in resource)
            assert resource_spans.scope_spans[0].scope.name == "test"
        got |= {int.from_bytes(s.span_id, "big"): s for s in contents}
    assert set(got) == {s.context.span_id for s in spans}
    # Content passes untouched: the receiver forwards raw OTLP.
    chats = [s for s in got.values() if s.name == "chat gpt-4o"]
    assert all(
        a.value.string_value == '[{"role":"user","content":"hi"}]'
        for s in chats
        for a in s.attributes
        if a.key == "gen_ai.input.messages"
    )
    assert sample("observer_receiver_spans_total", outcome="accepted") - accepted == len(spans)


def test_sdk_export_gzip(kafka_config: KafkaConfig, topics: Topics) -> None:
    spans = sdk_spans(traces=1)
    with receiver(kafka_config, topics) as url:
        exporter = OTLPSpanExporter(endpoint=url, compression=Compression.Gzip)
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        exporter.shutdown()
    (message,) = drain(kafka_config, topics.spans, 1)
    assert len(spans_of(message.value)) == 3


def test_json_with_hex_ids(kafka_config: KafkaConfig, topics: Topics) -> None:
    link = {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331"}
    body = json_request(
        json_span(parentSpanId="0102030405060708", links=[link], unknownField={"x": 1}),
    )
    with receiver(kafka_config, topics) as url:
        r = httpx.post(
            url, content=body, headers={"Content-Type": "application/json; charset=utf-8"}
        )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(JSON)
    assert r.json() == {}  # full success: partial_success unset
    (message,) = drain(kafka_config, topics.spans, 1)
    assert message.key.decode() == TRACE
    (span,) = spans_of(message.value)
    assert span.trace_id.hex() == TRACE
    assert span.span_id.hex() == "eee19b7ec3c1b174"
    assert span.parent_span_id.hex() == "0102030405060708"
    assert span.links[0].span_id.hex() == "b7ad6b7169203331"
    assert span.end_time_unix_nano - span.start_time_unix_nano == 250_000_000
    assert span.attributes[0].value.int_value == 12
    assert span.status.code == 1


def test_gzip_json_and_deflate_protobuf(kafka_config: KafkaConfig, topics: Topics) -> None:
    import zlib

    proto = otlp_json.decode_trace_request(json_request(json_span(span_id="00000000000000aa")))
    with receiver(kafka_config, topics) as url:
        r1 = httpx.post(
            url,
            content=gzip.compress(json_request(json_span())),
            headers={"Content-Type": JSON, "Content-Encoding": "gzip"},
        )
        r2 = httpx.post(
            url,
            content=zlib.compress(proto.SerializeToString()),
            headers={"Content-Type": PROTOBUF, "Content-Encoding": "deflate"},
        )
    assert (r1.status_code, r2.status_code) == (200, 200)
    assert r2.headers["content-type"] == PROTOBUF
    assert ExportTraceServiceResponse.FromString(r2.content) == ExportTraceServiceResponse()
    messages = drain(kafka_config, topics.spans, 2)
    assert sorted(spans_of(m.value)[0].span_id.hex() for m in messages) == [
        "00000000000000aa",
        "eee19b7ec3c1b174",
    ]


def test_partial_success_for_invalid_ids(kafka_config: KafkaConfig, topics: Topics) -> None:
    rejected = sample("observer_receiver_spans_total", outcome="rejected")
    body = json_request(
        json_span(),
        json_span(trace_id="0102030405060708"),  # 8 bytes: too short
        json_span(span_id="0000000000000000"),  # all zero
    )
    with receiver(kafka_config, topics) as url:
        r = httpx.post(url, content=body, headers={"Content-Type": JSON})
        proto = otlp_json.decode_trace_request(body).SerializeToString()
        rp = httpx.post(url, content=proto, headers={"Content-Type": PROTOBUF})
    assert r.status_code == 200
    partial = r.json()["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 2
    assert "trace id" in partial["errorMessage"]
    assert ExportTraceServiceResponse.FromString(rp.content).partial_success.rejected_spans == 2
    messages = drain(kafka_config, topics.spans, 2)
    assert [[s.span_id.hex() for s in spans_of(m.value)] for m in messages] == [
        ["eee19b7ec3c1b174"]
    ] * 2
    assert sample("observer_receiver_spans_total", outcome="rejected") - rejected == 4


def test_errors(kafka_config: KafkaConfig, topics: Topics) -> None:
    bad_requests = sample("observer_receiver_requests_total", code="400")
    limit = 64 * 1024
    bomb = gzip.compress(bytes(20 * 1024 * 1024))  # ~20 KB on the wire, 20 MB inflated
    assert len(bomb) < limit
    with receiver(kafka_config, topics, max_body_bytes=limit) as url:
        garbage = httpx.post(
            url, content=b"\xff\xfe not protobuf", headers={"Content-Type": PROTOBUF}
        )
        bad_json = httpx.post(url, content=b'{"resourceSpans": 7}', headers={"Content-Type": JSON})
        bad_hex = httpx.post(
            url, content=json_request(json_span(trace_id="zz")), headers={"Content-Type": JSON}
        )
        text = httpx.post(url, content=b"hello", headers={"Content-Type": "text/plain"})
        brotli = httpx.post(
            url, content=b"x", headers={"Content-Type": JSON, "Content-Encoding": "br"}
        )
        big = httpx.post(url, content=bytes(limit + 1), headers={"Content-Type": PROTOBUF})
        bombed = httpx.post(
            url, content=bomb, headers={"Content-Type": PROTOBUF, "Content-Encoding": "gzip"}
        )
        truncated = httpx.post(
            url,
            content=gzip.compress(json_request(json_span()))[:-10],
            headers={"Content-Type": PROTOBUF, "Content-Encoding": "gzip"},
        )

    assert garbage.status_code == 400
    status = status_pb2.Status.FromString(garbage.content)
    assert "ExportTraceServiceRequest" in status.message
    details = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(details)
    assert details.field_violations[0].description == status.message

    assert bad_json.status_code == 400 and "resourceSpans" in bad_json.json()["message"]
    assert bad_hex.status_code == 400 and "traceId" in bad_hex.json()["message"]
    assert text.status_code == 415 and "text/plain" in text.json()["message"]
    assert brotli.status_code == 415 and "br" in brotli.json()["message"]
    assert big.status_code == 413
    assert bombed.status_code == 413
    assert "after decompression" in status_pb2.Status.FromString(bombed.content).message
    assert truncated.status_code == 400
    assert sample("observer_receiver_requests_total", code="400") - bad_requests == 4


def test_bearer_token(kafka_config: KafkaConfig, topics: Topics) -> None:
    body = json_request(json_span())
    with receiver(kafka_config, topics, auth_token="s3cret") as url:
        missing = httpx.post(url, content=body, headers={"Content-Type": JSON})
        wrong = httpx.post(
            url, content=body, headers={"Content-Type": JSON, "Authorization": "Bearer guess"}
        )
        right = httpx.post(
            url, content=body, headers={"Content-Type": JSON, "Authorization": "Bearer s3cret"}
        )
        exporter = OTLPSpanExporter(endpoint=url, headers={"Authorization": "Bearer s3cret"})
        assert exporter.export(sdk_spans(traces=1)) is SpanExportResult.SUCCESS
        exporter.shutdown()
    assert (missing.status_code, wrong.status_code, right.status_code) == (401, 401, 200)
    assert missing.headers["www-authenticate"] == "Bearer"
    assert len(drain(kafka_config, topics.spans, 2)) == 2


@KAFKA_CLIENTS
@pytest.mark.parametrize("media_type", [PROTOBUF, JSON])  # split on the loop / in a thread
def test_kafka_down_is_503_with_retry_after(kafka_client: str, media_type: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    broker = EmbeddedBroker(f"127.0.0.1:{port}").start()
    kafka = KafkaConfig(bootstrap_servers=broker.bootstrap_servers)
    topics = Topics.from_config(kafka)
    body = json_request(json_span())
    if media_type == PROTOBUF:
        body = otlp_json.decode(body, ExportTraceServiceRequest).SerializeToString()
    headers = {"Content-Type": media_type}
    try:
        with receiver(kafka, topics, ack_timeout_s=1.0, kafka_client=kafka_client) as url:
            assert httpx.post(url, content=body, headers=headers).status_code == 200
            assert broker.process is not None
            broker.process.kill()  # a crash: no goodbye to the producer's connections
            broker.process.wait()
            started = time.monotonic()
            r = httpx.post(url, content=body, headers=headers, timeout=30)
            elapsed = time.monotonic() - started
            # Answered again: the abandoned write wedged neither the loop nor the acks thread.
            again = httpx.post(url, content=body, headers=headers, timeout=30)
    finally:
        broker.stop()
    assert (r.status_code, again.status_code) == (503, 503)
    assert r.headers["retry-after"].isdigit()
    message = (
        status_pb2.Status.FromString(r.content).message if media_type == PROTOBUF
        else r.json()["message"]
    )
    assert "Kafka" in message
    assert elapsed < 5  # bounded by ack_timeout_s, not kafka-python's 60 s max_block_ms


@KAFKA_CLIENTS
def test_trace_over_kafka_message_limit_is_413(
    kafka_config: KafkaConfig, topics: Topics, kafka_client: str
) -> None:
    """A trace bigger than the producer's 16 MiB message limit cannot succeed on retry."""
    huge = json_span(
        attributes=[{"key": "gen_ai.input.messages", "value": {"stringValue": "x" * (17 << 20)}}]
    )
    # The budget charges JSON 16x its size (collectors.receiver.decoded_size): room for this one body.
    with receiver(
        kafka_config, topics, max_body_bytes=32 << 20, max_inflight_bytes=1 << 30,
        kafka_client=kafka_client,
    ) as url:
        r = httpx.post(url, content=json_request(huge), headers={"Content-Type": JSON}, timeout=30)
    assert r.status_code == 413
    assert "message size" in r.json()["message"]
