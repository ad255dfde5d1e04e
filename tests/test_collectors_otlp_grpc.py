"""OTLP/gRPC, OTLP/HTTP metrics and logs, the in-flight budget and tenancy, on real parts:
the OpenTelemetry SDK's gRPC and HTTP exporters, raw grpcio stubs, the embedded broker."""

from __future__ import annotations

import gzip
import threading

import grpc
import httpx
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.grpc import _log_exporter as grpc_logs
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetricExporter,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http import _log_exporter as http_logs
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import SecretStr

from observer.collectors.normalize.normalizer import Normalizer
from observer.collectors.receiver.otlp_grpc import RETRY_INFO_TRAILER
from observer.collectors.common.tenancy import TENANT_ATTRIBUTE
from observer.core.bus import Message
from observer.core.config import KafkaConfig
from observer.core.records import decode
from observer.core.topics import Topics
from tests.collectors_support import (
    drain,
    drain_spans,
    receivers,
    sample,
    spans_of,
    traces_by_placement,
    wait_for,
)


def sdk_spans(traces: int, service: str = "shop") -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    for _ in range(traces):
        with tracer.start_as_current_span("invoke_agent planner"):
            with tracer.start_as_current_span("chat gpt-4o") as chat:
                chat.set_attribute("gen_ai.operation.name", "chat")
                chat.set_attribute("gen_ai.request.model", "gpt-4o")
                chat.set_attribute("gen_ai.usage.input_tokens", 12)
    provider.shutdown()
    return list(memory.get_finished_spans())


def genai_metrics() -> object:
    reader = InMemoryMetricReader()
    provider = MeterProvider(
        metric_readers=[reader], resource=Resource.create({"service.name": "shop"})
    )
    meter = provider.get_meter("test")
    usage = meter.create_histogram("gen_ai.client.token.usage", unit="{token}")
    duration = meter.create_histogram("gen_ai.client.operation.duration", unit="s")
    attrs = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"}
    usage.record(120, {**attrs, "gen_ai.token.type": "input"})
    usage.record(30, {**attrs, "gen_ai.token.type": "output"})
    duration.record(0.8, attrs)
    data = reader.get_metrics_data()
    provider.shutdown()
    return data


def emit_logs(exporter: object, n: int) -> None:
    provider = LoggerProvider(resource=Resource.create({"service.name": "shop"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))  # type: ignore[arg-type]
    logger = provider.get_logger("test")
    for i in range(n):
        logger.emit(body=f"event {i}", attributes={"gen_ai.operation.name": "chat"})
    provider.shutdown()


def call_grpc(target: str, body: bytes, **kwargs: object) -> grpc.RpcError | bytes:
    """A raw TraceService/Export call with ``body`` as sent (no client-side serialisation)."""
    with grpc.insecure_channel(target) as channel:
        export = channel.unary_unary(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            request_serializer=None,
            response_deserializer=None,
        )
        try:
            return export(body, timeout=10, **kwargs)
        except grpc.RpcError as e:
            return e


def status_details(error: grpc.RpcError) -> status_pb2.Status:
    trailers = dict(error.trailing_metadata())
    return status_pb2.Status.FromString(trailers["grpc-status-details-bin"])


def test_sdk_grpc_exporters_traces_metrics_logs(kafka_config: KafkaConfig, topics: Topics) -> None:
    spans = sdk_spans(traces=3)
    with receivers(kafka_config, topics) as r:
        traces = GrpcSpanExporter(endpoint=r.grpc, insecure=True, compression=grpc.Compression.Gzip)
        assert traces.export(spans) is SpanExportResult.SUCCESS
        traces.shutdown()
        metrics = GrpcMetricExporter(endpoint=r.grpc, insecure=True)
        assert metrics.export(genai_metrics()) is MetricExportResult.SUCCESS
        metrics.shutdown()
        logs = grpc_logs.OTLPLogExporter(endpoint=r.grpc, insecure=True)
        emit_logs(logs, 4)

    span_messages = drain_spans(kafka_config, topics.spans, len(spans))
    traces = traces_by_placement(span_messages, kafka_config.partitions)
    assert sum(len(t) for t in traces.values()) == len(spans) and len(traces) == 3
    (metric_message,) = drain(kafka_config, topics.metrics, 1)
    names = {
        metric.name
        for rm in ExportMetricsServiceRequest.FromString(metric_message.value).resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    }
    assert names == {"gen_ai.client.token.usage", "gen_ai.client.operation.duration"}
    assert len(metric_message.key) == 16  # resource hash
    log_messages = drain(kafka_config, topics.logs, 4)
    bodies = sorted(
        record.body.string_value
        for m in log_messages
        for rl in ExportLogsServiceRequest.FromString(m.value).resource_logs
        for sl in rl.scope_logs
        for record in sl.log_records
    )
    assert bodies == [f"event {i}" for i in range(4)]


def test_sdk_http_exporters_metrics_and_logs(kafka_config: KafkaConfig, topics: Topics) -> None:
    with receivers(kafka_config, topics) as r:
        metrics = HttpMetricExporter(endpoint=f"{r.http}/v1/metrics")
        assert metrics.export(genai_metrics()) is MetricExportResult.SUCCESS
        metrics.shutdown()
        emit_logs(http_logs.OTLPLogExporter(endpoint=f"{r.http}/v1/logs"), 2)
        # OTLP/JSON metrics with a hex exemplar trace id, and a nameless metric: partial success.
        body = {
            "resourceMetrics": [
                {
                    "scopeMetrics": [
                        {
                            "metrics": [
                                {
                                    "name": "gen_ai.server.request.duration",
                                    "histogram": {
                                        "aggregationTemporality": 2,
                                        "dataPoints": [
                                            {
                                                "count": "3",
                                                "sum": 1.5,
                                                "exemplars": [
                                                    {
                                                        "traceId": "5b8efff798038103d269b633813fc60c",
                                                        "spanId": "eee19b7ec3c1b174",
                                                        "asDouble": 0.5,
                                                    }
                                                ],
                                            }
                                        ],
                                    },
                                },
                                {"name": "", "gauge": {"dataPoints": [{"asInt": "1"}]}},
                            ]
                        }
                    ]
                }
            ]
        }
        partial = httpx.post(f"{r.http}/v1/metrics", json=body)
        bad_log = httpx.post(
            f"{r.http}/v1/logs",
            json={"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "zz"}]}]}]},
        )
    assert partial.status_code == 200
    assert partial.json()["partialSuccess"]["rejectedDataPoints"] == "1"
    assert "name" in partial.json()["partialSuccess"]["errorMessage"]
    assert bad_log.status_code == 400 and "traceId" in bad_log.json()["message"]
    messages = drain(kafka_config, topics.metrics, 2)
    assert len(messages) == 2
    exemplar_ids = [
        dp.exemplars[0].trace_id.hex()
        for m in messages
        for rm in ExportMetricsServiceRequest.FromString(m.value).resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == "gen_ai.server.request.duration"
        for dp in metric.histogram.data_points
    ]
    assert exemplar_ids == ["5b8efff798038103d269b633813fc60c"]
    assert len(drain(kafka_config, topics.logs, 2)) >= 1


def test_grpc_refusals(kafka_config: KafkaConfig, topics: Topics) -> None:
    good = ExportTraceServiceRequest()
    good.resource_spans.add().scope_spans.add().spans.add(
        trace_id=bytes([1] * 16), span_id=bytes([1] * 8), name="chat"
    )
    good.resource_spans[0].scope_spans[0].spans.add(
        trace_id=bytes(16), span_id=bytes([2] * 8), name="all-zero trace id"
    )
    with receivers(kafka_config, topics, max_body_bytes=64 * 1024, auth_token="s3cret") as r:
        auth = (("authorization", "Bearer s3cret"),)
        unauthenticated = call_grpc(r.grpc, good.SerializeToString())
        wrong = call_grpc(r.grpc, good.SerializeToString(), metadata=(("authorization", "x"),))
        garbage = call_grpc(r.grpc, b"\xff\xff\xff not protobuf", metadata=auth)
        too_big = call_grpc(r.grpc, b"\x0a" + b"\x00" * 200_000, metadata=auth)
        bomb = call_grpc(
            r.grpc,
            ExportTraceServiceRequest(
                resource_spans=[{"schema_url": "x" * 5_000_000}]
            ).SerializeToString(),
            metadata=auth,
            compression=grpc.Compression.Gzip,
        )
        partial = call_grpc(r.grpc, good.SerializeToString(), metadata=auth)

    assert isinstance(unauthenticated, grpc.RpcError) and isinstance(wrong, grpc.RpcError)
    assert unauthenticated.code() is grpc.StatusCode.UNAUTHENTICATED
    assert wrong.code() is grpc.StatusCode.UNAUTHENTICATED
    assert isinstance(garbage, grpc.RpcError)
    assert garbage.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "ExportTraceServiceRequest" in garbage.details()
    assert status_details(garbage).code == code_pb2.INVALID_ARGUMENT
    for refused in (too_big, bomb):  # the bomb is refused after decompression
        assert isinstance(refused, grpc.RpcError)
        assert refused.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert RETRY_INFO_TRAILER not in dict(refused.trailing_metadata())  # not retryable
    assert isinstance(partial, bytes)
    answer = ExportTraceServiceResponse.FromString(partial)
    assert answer.partial_success.rejected_spans == 1
    assert "trace id" in answer.partial_success.error_message
    (message,) = drain(kafka_config, topics.spans, 1)
    assert [s.name for s in spans_of(message.value)] == ["chat"]


def test_saturated_grpc_answers_unavailable_with_retry_info(
    kafka_config: KafkaConfig, topics: Topics
) -> None:
    """A full budget refuses with RetryInfo; the SDK exporter waits as told and then succeeds."""
    spans = sdk_spans(traces=1)
    with receivers(kafka_config, topics, max_inflight_requests=1, retry_after_s=1) as r:
        held = r.intake.admit()  # another export in flight: the budget is spent
        refused = call_grpc(r.grpc, ExportTraceServiceRequest().SerializeToString())
        assert isinstance(refused, grpc.RpcError)
        assert refused.code() is grpc.StatusCode.UNAVAILABLE
        (detail,) = status_details(refused).details
        retry = error_details_pb2.RetryInfo()
        assert detail.Unpack(retry) and retry.retry_delay.seconds == 1
        trailer = dict(refused.trailing_metadata())[RETRY_INFO_TRAILER]
        assert error_details_pb2.RetryInfo.FromString(trailer).retry_delay.seconds == 1

        unavailable = sample("observer_receiver_grpc_requests_total", code="UNAVAILABLE")
        exporter = GrpcSpanExporter(endpoint=r.grpc, insecure=True, timeout=30)
        result: list[SpanExportResult] = []
        sender = threading.Thread(target=lambda: result.append(exporter.export(spans)))
        sender.start()
        wait_for(
            lambda: sample("observer_receiver_grpc_requests_total", code="UNAVAILABLE")
            > unavailable,
            what="the exporter's first, refused attempt",
        )
        held.release()
        sender.join(30)
        exporter.shutdown()
    assert result == [SpanExportResult.SUCCESS]
    assert len(drain(kafka_config, topics.spans, 1)) == 1


def test_saturated_http_answers_429_with_retry_after(
    kafka_config: KafkaConfig, topics: Topics
) -> None:
    """An upload still arriving holds no request slot, so a whole export passes meanwhile;
    with the only slot held by an export in flight, a further export is refused, not queued."""
    spans_body = ExportTraceServiceRequest()
    spans_body.resource_spans.add().scope_spans.add().spans.add(
        trace_id=bytes([3] * 16), span_id=bytes([3] * 8), name="chat"
    )
    payload = spans_body.SerializeToString()
    proceed = threading.Event()

    def slow_body():  # the first half now, the rest when the test says so
        yield payload[:4]
        proceed.wait(30)
        yield payload[4:]

    headers = {"Content-Type": "application/x-protobuf"}
    with receivers(kafka_config, topics, max_inflight_requests=1, retry_after_s=2) as r:
        first: list[httpx.Response] = []
        url = f"{r.http}/v1/traces"
        sender = threading.Thread(
            target=lambda: first.append(
                httpx.post(url, content=slow_body(), headers=headers, timeout=30)
            )
        )
        sender.start()
        wait_for(lambda: r.intake.budget.bytes > 0, what="the slow upload's first bytes")
        assert r.intake.budget.requests == 0
        meanwhile = httpx.post(url, content=payload, headers=headers)
        held = r.intake.admit()  # another export in flight: the only slot is taken
        second = httpx.post(url, content=payload, headers=headers)
        grpc_too = call_grpc(r.grpc, payload)  # the budget is shared across transports
        held.release()
        proceed.set()
        sender.join(30)
        third = httpx.post(url, content=payload, headers=headers)
    assert meanwhile.status_code == 200
    assert second.status_code == 429 and second.headers["retry-after"] == "2"
    assert "saturated" in status_pb2.Status.FromString(second.content).message
    assert isinstance(grpc_too, grpc.RpcError)
    assert grpc_too.code() is grpc.StatusCode.UNAVAILABLE
    assert first[0].status_code == 200 and third.status_code == 200
    assert r.intake.budget.requests == 0 and r.intake.budget.bytes == 0


def test_request_larger_than_byte_budget_is_413(kafka_config: KafkaConfig, topics: Topics) -> None:
    body = gzip.compress(b'{"resourceSpans": []}' + b" " * 5000)
    with receivers(kafka_config, topics, max_inflight_bytes=2048) as r:
        response = httpx.post(
            f"{r.http}/v1/traces",
            content=body,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
    assert response.status_code == 413 and "in-flight budget" in response.json()["message"]


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_tenants_are_stamped_and_never_mixed(
    kafka_config: KafkaConfig, topics: Topics, transport: str
) -> None:
    tenants = {"acme": SecretStr("t-acme"), "globex": SecretStr("t-globex")}
    acme, globex = sdk_spans(traces=2), sdk_spans(traces=2)
    # A client trying to write under another tenant's name.
    spoofed = Resource.create({"service.name": "shop", TENANT_ATTRIBUTE: "globex"})
    acme = [
        ReadableSpan(
            name=s.name, context=s.context, parent=s.parent, resource=spoofed,
            attributes=s.attributes, start_time=s.start_time, end_time=s.end_time,
        )
        for s in acme
    ]
    with receivers(kafka_config, topics, tenants=tenants) as r:
        for spans, token in ((acme, "t-acme"), (globex, "t-globex")):
            auth = {"authorization": f"Bearer {token}"}
            if transport == "grpc":
                exporter = GrpcSpanExporter(endpoint=r.grpc, insecure=True, headers=auth)
            else:
                exporter = HttpSpanExporter(endpoint=f"{r.http}/v1/traces", headers=auth)
            assert exporter.export(spans) is SpanExportResult.SUCCESS
            exporter.shutdown()
        anonymous = HttpSpanExporter(endpoint=f"{r.http}/v1/traces")
        assert anonymous.export(sdk_spans(1)) is SpanExportResult.FAILURE
        anonymous.shutdown()

    messages = drain_spans(kafka_config, topics.spans, 4)
    assert len(traces_by_placement(messages, kafka_config.partitions)) == 4
    expected = {f"{s.context.trace_id:032x}": "acme" for s in acme}
    expected |= {f"{s.context.trace_id:032x}": "globex" for s in globex}
    records = Normalizer(topics).process(
        [Message(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp) for m in messages]
    )
    for m in messages:
        for rs in ExportTraceServiceRequest.FromString(m.value).resource_spans:
            stamped = [kv.value.string_value for kv in rs.resource.attributes
                       if kv.key == TENANT_ATTRIBUTE]
            owners = {expected[s.trace_id.hex()] for ss in rs.scope_spans for s in ss.spans}
            assert [*owners] == stamped  # exactly one, the authenticated one
    llm = [decode(o.value) for o in records if o.topic == topics.llm]
    assert len(llm) == 4
    assert {(rec.trace_id, rec.tenant) for rec in llm} == set(expected.items())

