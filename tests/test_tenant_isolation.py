"""Tenants never share drift streams: with ``receiver.tenants`` the tenant leads every segment
key, so one tenant's traffic moves only its own drift and fires only its own retraining.

The end-to-end test runs the real receivers (OpenTelemetry SDK exporters, each tenant with its
own bearer token, one over HTTP and one over gRPC), the normaliser, the drift engine and the
trigger stage on the shared embedded broker, plus a forger writing straight to Kafka under
tenant b's name.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from kafka import KafkaProducer
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from observer.collectors.common.tenancy import TENANT_ATTRIBUTE
from observer.drift.record_types import RECORD_TYPES, segment_keys
from observer.core.broker import EmbeddedBroker
from observer.core.bus import ensure_topics
from observer.config import ObserverConfig, load_config
from observer.collectors.receiver.config import ReceiverConfig
from observer.core.config import TENANTLESS_RECORD_TYPES, AdminConfig, KafkaConfig
from observer.drift.config import DriftConfig, DriftReportsConfig, FeatureSpec
from observer.triggers.config import PolicyConfig, TriggerConfig
from observer.core.records import DriftResult, LLMCall, TriggerEvent, decode
from observer.core.topics import Topics
from observer.runtime import Runtime
from tests.collectors_support import drain, wait_for

WINDOW = 20
TOKENS = {"a": "tok-tenant-a", "b": "tok-tenant-b"}


def test_tenant_leads_every_segment_key(tmp_path: Path) -> None:
    f = tmp_path / "observer.yaml"
    f.write_text(
        "receiver:\n  tenants:\n    a: tok-tenant-a\n"
        "drift:\n  segment_keys: [model, tenant]\n"
        "  segment_keys_by_record_type:\n    paths: [service]\n"
        "    gpu: [node, gpu_uuid, mig_instance]\n"
    )
    drift = load_config(f, env={}).drift
    assert drift.segment_keys == ["tenant", "model"]
    assert segment_keys(drift, "llm") == ["tenant", "model"]
    assert segment_keys(drift, "paths") == ["tenant", "service"]
    # GPU samples are node data, shared by tenants: they keep their own keys.
    assert segment_keys(drift, "gpu") == ["node", "gpu_uuid", "mig_instance"]
    # Environment variables go through the same rule.
    env = {"OBSERVER_RECEIVER__TENANTS": '{"a": "tok-tenant-a"}'}
    assert load_config(None, env=env).drift.segment_keys == ["tenant", "service", "model"]
    # Without tenants nothing changes.
    assert load_config(None, env={}).drift.segment_keys == ["service", "model"]


def test_tenantless_record_types_are_exactly_those_without_a_tenant_field() -> None:
    without = {name for name, rt in RECORD_TYPES.items()
               if "tenant" not in rt.record_class.model_fields}
    assert without == set(TENANTLESS_RECORD_TYPES)


def _span_exporter(runtime: Runtime, tenant: str):
    auth = {"authorization": f"Bearer {TOKENS[tenant]}"}
    if tenant == "a":
        return HttpSpanExporter(endpoint=runtime.endpoints()["otlp_http"], headers=auth)
    target = runtime.endpoints()["otlp_grpc"].removeprefix("http://")
    return GrpcSpanExporter(endpoint=target, insecure=True, headers=tuple(auth.items()))


def _send(runtime: Runtime, tenant: str, tokens: list[int]) -> None:
    """One LLM call span per value of ``tokens`` (its output tokens), for ``tenant``.

    Both tenants use the same service and model names: only the tenant tells them apart.
    """
    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
    provider.add_span_processor(BatchSpanProcessor(_span_exporter(runtime, tenant)))
    tracer = provider.get_tracer("tenant-isolation")
    for n in tokens:
        with tracer.start_as_current_span("chat m1") as span:
            span.set_attribute("gen_ai.operation.name", "chat")
            span.set_attribute("gen_ai.request.model", "m1")
            span.set_attribute("gen_ai.usage.output_tokens", n)
    assert provider.force_flush(30_000)
    provider.shutdown()


def _forged_request(tenant: str, tokens: list[int]) -> bytes:
    """An export request claiming ``tenant``, as anything that can reach Kafka could write."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.extend([
        KeyValue(key="service.name", value=AnyValue(string_value="shop")),
        KeyValue(key=TENANT_ATTRIBUTE, value=AnyValue(string_value=tenant)),
    ])
    spans = rs.scope_spans.add().spans
    for i, n in enumerate(tokens):
        span = spans.add(trace_id=uuid.uuid4().bytes, span_id=(i + 1).to_bytes(8, "big"),
                         name="chat m1", start_time_unix_nano=1, end_time_unix_nano=2)
        span.attributes.extend([
            KeyValue(key="gen_ai.operation.name", value=AnyValue(string_value="chat")),
            KeyValue(key="gen_ai.request.model", value=AnyValue(string_value="m1")),
            KeyValue(key="gen_ai.usage.output_tokens", value=AnyValue(int_value=n)),
        ])
    return request.SerializeToString()



@pytest.fixture
def one_partition(broker: EmbeddedBroker) -> KafkaConfig:
    """Topics with one partition each: records reach the drift engine in the order sent, so
    the reference is exactly the first window of each tenant."""
    tag = uuid.uuid4().hex[:8]
    cfg = KafkaConfig(bootstrap_servers=broker.bootstrap_servers, topic_prefix=f"t{tag}.",
                      otlp_topic_prefix=f"t{tag}.", partitions=1, session_timeout_ms=6000,
                      heartbeat_interval_ms=1000)
    ensure_topics(cfg, Topics.from_config(cfg))
    return cfg


def test_one_tenants_shift_drifts_and_fires_only_its_own_segment(
    one_partition: KafkaConfig, tmp_path: Path, free_port
) -> None:
    kafka, topics = one_partition, Topics.from_config(one_partition)
    cfg = ObserverConfig(
        kafka=kafka,
        receiver=ReceiverConfig(
            http_port=free_port(), grpc_port=free_port(), tenants=TOKENS,
            stamp_key="0123456789abcdef-isolation",
        ),
        admin=AdminConfig(port=free_port()),
        drift=DriftConfig(
            window_size=WINDOW, reference_records=WINDOW, numeric_method="wasserstein",
            features={"llm": [FeatureSpec(name="output_tokens", kind="numeric")]},
            degradation={}, checkpoints=False, reports=DriftReportsConfig(enabled=False),
        ),
        trigger=TriggerConfig(
            ledger_path=tmp_path / "ledger.sqlite",
            policies=[PolicyConfig(name="retrain", consecutive_windows=1, min_samples=WINDOW,
                                   record_types=["llm"])],
        ),
    )
    baseline = [100 + i % 10 for i in range(WINDOW)]
    shifted = [5000 + i % 10 for i in range(WINDOW)]
    runtime = Runtime(cfg, ["collect", "normalize", "drift", "trigger"]).start()
    try:
        assert runtime.wait_assigned(60)
        for tenant in ("a", "b"):  # each tenant's reference: the same baseline
            _send(runtime, tenant, baseline)
        # A forger writes shifted calls under tenant b's name straight to Kafka, between
        # b's reference and its first window: trusted, they would move b's drift.
        producer = KafkaProducer(bootstrap_servers=kafka.servers)
        producer.send(topics.spans, _forged_request("b", shifted)).get(30)
        producer.close()
        _send(runtime, "a", shifted)
        _send(runtime, "b", baseline)

        def results() -> dict[str, DriftResult]:
            return {r.segment["tenant"]: r for r in runtime.drift_view.history()
                    if isinstance(r, DriftResult) and r.window_index == 1}

        wait_for(lambda: {"a", "b"} <= set(results()), 60, "window 1 of both tenants")
        wait_for(lambda: runtime.trigger_view.history(), 60, "tenant a's trigger")
        triggers = [t for t in runtime.trigger_view.history() if isinstance(t, TriggerEvent)]
    finally:
        runtime.stop()

    by_tenant = results()
    assert by_tenant["a"].segment == {"tenant": "a", "service": "shop", "model": "m1"}
    assert by_tenant["a"].dataset_drift and by_tenant["a"].features[0].drifted
    assert not by_tenant["b"].dataset_drift and not by_tenant["b"].features[0].drifted
    assert by_tenant["b"].n_current == WINDOW  # b's own calls only: nothing forged
    assert triggers and {t.segment_key for t in triggers} == {"a|shop|m1"}
    assert "fired" in {t.event for t in triggers}

    # Every record and key written along the way carries its tenant.
    llm = drain(kafka, topics.llm, 5 * WINDOW)
    assert len(llm) == 5 * WINDOW
    keys = {}
    for m in llm:
        record = decode(m.value)
        assert isinstance(record, LLMCall)
        keys.setdefault(m.key.decode(), set()).add(record.tenant)
    # The forged calls are normalised as the empty tenant, not b.
    assert keys == {"a|shop|m1": {"a"}, "b|shop|m1": {"b"}, "|shop|m1": {""}}
    drift_keys = {m.key.decode() for m in drain(kafka, topics.drift, 2)}
    assert {"a|shop|m1", "b|shop|m1"} <= drift_keys
