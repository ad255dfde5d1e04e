"""With a stamp key, what the receivers write to Kafka is encrypted (:mod:`observer.collectors.common.tenant_seal`).

Anyone local can reach the embedded broker; with tenants or auth it gets a key per start, and
a plain Kafka client reading ``otlp_spans`` sees ciphertext, while the stages open it. A sealed
message that does not open is dead-lettered; an unsealed one is read as the empty tenant;
without a key the raw topics stay plain OTLP, as an OpenTelemetry Collector writes them.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import pytest
from kafka import KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics.export import MetricExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY
from pydantic import SecretStr

from observer.collectors.metrics.genai_metrics import GenAIMetricsNormalizer
from observer.collectors.kserve.pairing import PredictionPairer
from observer.collectors.normalize.normalizer import Normalizer
from observer.collectors.common import tenant_seal
from observer.collectors.receiver.spool import Entry, Spool
from observer.collectors.common.tenant_seal import HEAD, MAGIC, OVERHEAD, TenantSeal, with_seal_key
from observer.collectors.paths.trace_grouping import FakeClock, TraceGrouper
from observer.core.bus import Message, Output
from observer.config import ObserverConfig
from observer.collectors.kserve.config import KServeConfig
from observer.collectors.normalize.config import ContentConfig
from observer.collectors.paths.config import PathsConfig
from observer.collectors.receiver.config import ReceiverConfig
from observer.core.config import AdminConfig, KafkaConfig
from observer.core.records import GenAIMetric, LLMCall, decode
from observer.core.topics import Topics
from observer.runtime import Runtime
from tests.collectors_support import drain, receivers
from tests.test_broker_lockdown import _forged_spans, _kserve_message
from tests.test_collectors_otlp_grpc import genai_metrics

KEY = SecretStr("raw-topic-encryption-key-0123456789")
TENANTS = {"a": SecretStr("tok-a"), "b": SecretStr("tok-b")}


def _prompt_spans(marker: str, traces: int = 1) -> list[ReadableSpan]:
    """GenAI chat spans whose prompt (an OpenLLMetry attribute) holds ``marker``; one trace
    each, so one export of one trace is one Kafka message."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    for i in range(traces):
        with tracer.start_as_current_span("chat gpt-4o") as chat:
            chat.set_attribute("gen_ai.operation.name", "chat")
            chat.set_attribute("gen_ai.request.model", "gpt-4o")
            chat.set_attribute("gen_ai.prompt.0.role", "user")
            chat.set_attribute("gen_ai.prompt.0.content", f"{marker} question {i}")
    provider.shutdown()
    return list(memory.get_finished_spans())


def _raw(servers: str, topic: str, n: int, timeout_s: float = 15) -> list[ConsumerRecord]:
    """What any local process gets from the broker: a consumer with no group and no options."""
    return drain(KafkaConfig(bootstrap_servers=servers), topic, n, timeout_s)


def _messages(records: list[ConsumerRecord]) -> list[Message]:
    return [Message.of(r) for r in records]


def _sample(name: str, stage: str) -> float:
    return REGISTRY.get_sample_value(name, {"stage": stage}) or 0.0


def _send_prompts(r, marker: str) -> None:  # noqa: ANN001 (tests.collectors_support.Receivers)
    """Tenant b's prompts over OTLP/HTTP, tenant a's over OTLP/gRPC."""
    http = OTLPSpanExporter(endpoint=f"{r.http}/v1/traces",
                            headers={"authorization": "Bearer tok-b"})
    assert http.export(_prompt_spans(marker + "-b")) is SpanExportResult.SUCCESS
    http.shutdown()
    grpc = GrpcSpanExporter(endpoint=r.grpc, insecure=True,
                            headers=(("authorization", "Bearer tok-a"),))
    assert grpc.export(_prompt_spans(marker + "-a")) is SpanExportResult.SUCCESS
    grpc.shutdown()


def _send_metrics(r) -> None:  # noqa: ANN001 (tests.collectors_support.Receivers)
    """GenAI metric points as tenant b, over OTLP/HTTP."""
    metrics = OTLPMetricExporter(endpoint=f"{r.http}/v1/metrics",
                                 headers={"authorization": "Bearer tok-b"})
    assert metrics.export(genai_metrics()) is MetricExportResult.SUCCESS  # type: ignore[arg-type]
    metrics.shutdown()


# -- a local reader sees ciphertext; the stages see the prompts, under the right tenants ---------


def test_a_local_reader_of_the_broker_sees_no_prompt(
    kafka_config: KafkaConfig, topics: Topics
) -> None:
    marker = f"zebra-{uuid.uuid4().hex}"
    with receivers(kafka_config, topics, tenants=TENANTS, stamp_key=KEY) as r:
        _send_prompts(r, marker)
        _send_metrics(r)
    spans = _raw(kafka_config.servers, topics.spans, 2)  # one trace for each tenant
    assert len(spans) == 2
    for m in spans:
        blob = m.value + b"".join(k.encode() + (v or b"") for k, v in m.headers)
        assert m.value.startswith(HEAD)
        for plain in (marker.encode(), b"gen_ai.prompt", b"gpt-4o", b"shop"):
            assert plain not in blob, plain
    [metric_message] = _raw(kafka_config.servers, topics.metrics, 1)
    assert metric_message.value.startswith(HEAD) and b"gen_ai" not in metric_message.value

    # The normaliser opens them: the prompts are back (content capture on), under each tenant.
    out = Normalizer(topics, content=ContentConfig(capture=True), seal=TenantSeal(KEY)).process(
        _messages(spans))
    llm = [decode(o.value) for o in out if o.topic == topics.llm]
    assert all(isinstance(rec, LLMCall) for rec in llm)
    assert sorted((rec.tenant, rec.input_content[0]["content"]) for rec in llm) == [
        ("a", f"{marker}-a question 0"), ("b", f"{marker}-b question 0")]
    # Trace grouping and the metrics stage open them too.
    grouper = TraceGrouper(topics, PathsConfig(grace_s=0), clock=FakeClock(),
                           segment_keys=["tenant"], seal=TenantSeal(KEY))
    assert grouper.process(_messages(spans)) == []
    grouper.clock.now = 1000
    assert sorted(decode(o.value).tenant for o in grouper.tick()) == ["a", "b"]
    points = [decode(o.value) for o in GenAIMetricsNormalizer(topics, seal=TenantSeal(KEY))
              .process(_messages([metric_message]))]
    assert points and all(isinstance(p, GenAIMetric) and p.tenant == "b" for p in points)


def test_observer_up_with_tenants_seals_the_raw_topics(free_port) -> None:  # noqa: ANN001
    """``observer up`` (embedded broker, tenants, no stamp_key configured): the key it makes
    at start encrypts otlp_spans, the normaliser of the same process reads the prompts, and a
    direct write claiming a tenant loses it."""
    cfg = ObserverConfig(
        kafka=KafkaConfig(embedded_listen=f"127.0.0.1:{free_port()}", embedded_durable=False,
                          partitions=1, session_timeout_ms=6000, heartbeat_interval_ms=1000),
        receiver=ReceiverConfig(http_port=free_port(), grpc_port=free_port(), tenants=TENANTS),
        normalizer={"content": {"capture": True}},
        admin=AdminConfig(port=free_port()),
    )
    marker = f"okapi-{uuid.uuid4().hex}"
    runtime = Runtime(cfg, ["collect", "normalize"]).start()
    try:
        assert runtime.wait_assigned(60)
        exporter = OTLPSpanExporter(endpoint=runtime.endpoints()["otlp_http"],
                                    headers={"authorization": "Bearer tok-a"})
        assert exporter.export(_prompt_spans(marker)) is SpanExportResult.SUCCESS
        exporter.shutdown()
        topics = Topics.from_config(runtime.cfg.kafka)
        servers = runtime.cfg.kafka.servers
        [raw] = _raw(servers, topics.spans, 1)
        producer = KafkaProducer(bootstrap_servers=servers)
        producer.send(topics.spans, _forged_spans("a")).get(30)
        producer.close()
        llm = [decode(m.value) for m in _raw(servers, topics.llm, 2, timeout_s=30)]
    finally:
        runtime.stop()
    assert runtime.cfg.receiver.stamp_key is not None and cfg.receiver.stamp_key is None
    assert raw.value.startswith(HEAD) and marker.encode() not in raw.value
    assert sorted((rec.model, rec.tenant) for rec in llm) == [("gpt-4o", "a"), ("m1", "")]
    [genuine] = [rec for rec in llm if rec.tenant == "a"]
    assert genuine.input_content[0]["content"] == f"{marker} question 0"


# -- a sealed message that does not open is dead-lettered; an unsealed one is untrusted ----------


Forgery = tuple[bytes, bytes | None, list[tuple[str, bytes]]]  # value, key, headers


def _forgeries(genuine: Message, other_topic: Message) -> dict[str, Forgery]:
    """(value, key, headers) of messages that look sealed and must not open on ``otlp_spans``."""
    v = genuine.value
    flipped = bytearray(v)
    flipped[OVERHEAD + 3] ^= 1
    other_key = TenantSeal(SecretStr("another-deployment-key-0123456789"))
    return {
        "value changed": (bytes(flipped), genuine.key, []),
        "tag changed": (v[:-1] + bytes([v[-1] ^ 1]), genuine.key, []),
        "key changed": (v, b"0" * 32, []),
        "header added": (v, genuine.key, [("observer.tenant", b"a")]),
        "moved from otlp_metrics": (other_topic.value, other_topic.key, []),
        "sealed with another key": (
            other_key.sealed(Output(genuine.topic, genuine.key, b"\n\x00")).value, genuine.key, []),
        "truncated": (v[:OVERHEAD - 1], genuine.key, []),
        "unknown version": (MAGIC + b"\x03" + v[len(HEAD):], genuine.key, []),
    }


def test_sealed_messages_that_do_not_open_are_dead_lettered(
    kafka_config: KafkaConfig, topics: Topics
) -> None:
    marker = f"yak-{uuid.uuid4().hex}"
    with receivers(kafka_config, topics, tenants=TENANTS, stamp_key=KEY) as r:
        _send_prompts(r, marker)
        _send_metrics(r)
    genuine = _messages(_raw(kafka_config.servers, topics.spans, 2))
    assert len(genuine) == 2
    [metrics_message] = _messages(_raw(kafka_config.servers, topics.metrics, 1))
    forgeries = _forgeries(genuine[0], metrics_message)
    producer = KafkaProducer(bootstrap_servers=kafka_config.servers)
    for value, key, headers in forgeries.values():
        producer.send(topics.spans, value, key=key, headers=headers or None).get(30)
    producer.close()
    everything = _messages(_raw(kafka_config.servers, topics.spans, 2 + len(forgeries)))
    forged = [m for m in everything if (m.value, m.key) not in {(g.value, g.key) for g in genuine}
              or m.headers]
    assert len(forged) == len(forgeries)

    for stage, name in (
        (lambda: Normalizer(topics, seal=TenantSeal(KEY)), "normalizer"),
        (lambda: TraceGrouper(topics, PathsConfig(), clock=FakeClock(), seal=TenantSeal(KEY)),
         "paths"),
    ):
        before = _sample("observer_broken_seals_total", name)
        out = stage().process(forged)
        dead = [json.loads(o.value) for o in out if o.topic == topics.dead_letter]
        assert len(out) == len(dead) == len(forgeries)  # nothing else came out of them
        assert {d["reason"] for d in dead} == {"invalid_value"}
        assert _sample("observer_broken_seals_total", name) - before == len(forgeries)
    # The genuine messages still open in the same batch as the forgeries.
    out = Normalizer(topics, seal=TenantSeal(KEY)).process(everything)
    assert sorted(decode(o.value).tenant for o in out if o.topic == topics.llm) == ["a", "b"]

    # The metrics stage and the KServe pairing dead-letter theirs the same way.
    changed = Message(metrics_message.topic, 0, 9, metrics_message.key,
                      metrics_message.value[:-1] + bytes([metrics_message.value[-1] ^ 1]), 0)
    [dead] = GenAIMetricsNormalizer(topics, seal=TenantSeal(KEY)).process([changed])
    assert json.loads(dead.value)["reason"] == "invalid_value"
    headers, value = _kserve_message("request", "b", {"instances": [[1.0]]})
    sealed = TenantSeal(KEY).sealed(Output(topics.kserve_events, "r-1", value, tuple(headers)))
    retagged = tuple((k, b"a" if k == "ce_observertenant" else v) for k, v in sealed.headers)
    assert retagged != sealed.headers
    stage = PredictionPairer(topics, KServeConfig(), clock=FakeClock(), seal=TenantSeal(KEY))
    [dead] = stage.process([Message(topics.kserve_events, 0, 0, b"r-1", sealed.value, 0, retagged)])
    assert (dead.topic, json.loads(dead.value)["reason"]) == (topics.dead_letter, "invalid_value")


def test_a_dead_letter_keeps_the_message_sealed_and_openable(topics: Topics) -> None:
    """A sealed message dead-lettered after it opened (a span without usable ids) is kept as it
    was on Kafka: no prompt on the dead-letter topic, and the key holder can still open it."""
    request = ExportTraceServiceRequest()
    span = request.resource_spans.add().scope_spans.add().spans.add(
        trace_id=bytes(16), span_id=b"s" * 8, name="chat m1")
    span.attributes.add(key="gen_ai.prompt.0.content").value.string_value = "secret prompt"
    seal = TenantSeal(KEY)
    sealed = seal.sealed(Output(topics.spans, "k1", request.SerializeToString()))
    message = Message(topics.spans, 1, 5, b"k1", sealed.value, 0)
    [dead] = Normalizer(topics, seal=seal).process([message])
    letter = json.loads(dead.value)
    assert letter["reason"] == "invalid_value" and b"secret prompt" not in dead.value
    original = base64.b64decode(letter["original"])
    assert b"secret prompt" not in original
    source = letter["source"]
    reopened = TenantSeal(KEY).open(Message(source["topic"], 0, 0, base64.b64decode(source["key"]),
                                            original, 0), "test")
    assert reopened.trusted and b"secret prompt" in reopened.value


def test_spooled_messages_open_after_a_restart(tmp_path: Path, topics: Topics) -> None:
    """Durable mode keeps the key beside the spool: entries sealed before a restart, replayed
    to another partition and offset by a new process, still open with their tenant."""
    state = tmp_path / "state"
    cfg = ObserverConfig(receiver={"tenants": TENANTS}, kafka={"embedded_state_dir": state})
    before = TenantSeal(with_seal_key(cfg).receiver.stamp_key)
    sealed = before.sealed(Output(topics.spans, "trace-1", _tenant_request("b")))
    spool = Spool(state / "spool").open()
    spool.write([Entry(sealed.topic, 1, 41, b"trace-1", sealed.value, sealed.headers)])
    spool.close()

    after = TenantSeal(with_seal_key(cfg).receiver.stamp_key)  # the restarted process
    [entry] = Spool(state / "spool").open().pending()
    replayed = Message(entry.topic, 0, 0, entry.key, entry.value, 0, entry.headers)
    out = Normalizer(topics, seal=after).process([replayed])
    assert [decode(o.value).tenant for o in out if o.topic == topics.llm] == ["b"]
    # A memory-only start makes a new key: what the old one sealed does not open.
    memory = ObserverConfig(receiver={"tenants": TENANTS}, kafka={"embedded_durable": False})
    [dead] = Normalizer(topics, seal=TenantSeal(with_seal_key(memory).receiver.stamp_key)).process(
        [replayed])
    assert json.loads(dead.value)["reason"] == "invalid_value"


def _tenant_request(tenant: str) -> bytes:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="observer.tenant").value.string_value = tenant
    span = rs.scope_spans.add().spans.add(trace_id=b"t" * 16, span_id=b"s" * 8, name="chat m1",
                                          start_time_unix_nano=1, end_time_unix_nano=2)
    span.attributes.add(key="gen_ai.operation.name").value.string_value = "chat"
    span.attributes.add(key="gen_ai.request.model").value.string_value = "m1"
    return request.SerializeToString()


# -- no key: plain OTLP, as a Collector's kafka exporter writes it --------------------------------


def test_without_a_key_otlp_spans_carry_plain_export_requests(
    kafka_config: KafkaConfig, topics: Topics
) -> None:
    marker = f"ibis-{uuid.uuid4().hex}"
    with receivers(kafka_config, topics, tenants=TENANTS) as r:
        _send_prompts(r, marker)
    raw = _raw(kafka_config.servers, topics.spans, 2)
    assert len(raw) == 2
    for m in raw:
        assert not m.headers and not m.value.startswith(MAGIC)
        assert ExportTraceServiceRequest.FromString(m.value).resource_spans
        assert marker.encode() in m.value
    out = Normalizer(topics).process(_messages(raw))
    assert sorted(decode(o.value).tenant for o in out if o.topic == topics.llm) == ["a", "b"]


@pytest.mark.parametrize("size", [0, 1, 10_000])
def test_each_seal_is_fresh_and_opens(size: int) -> None:
    """Two seals of the same message differ (a fresh nonce each), both open to the original."""
    seal, value = TenantSeal(KEY), bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    first, second = (seal.sealed(Output("otlp_spans", "k", value)) for _ in range(2))
    assert first.value != second.value and len(first.value) == len(value) + OVERHEAD
    for out in (first, second):
        opened = TenantSeal(KEY).open(Message("otlp_spans", 3, 7, b"k", out.value, 0), "test")
        assert opened == (value, True)


def test_a_new_epoch_key_every_epoch_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sealing key changes every EPOCH_MESSAGES messages; a reader opens every epoch's."""
    monkeypatch.setattr(tenant_seal, "EPOCH_MESSAGES", 2)
    seal = TenantSeal(KEY)
    values = [seal.sealed(Output("otlp_spans", None, b"m%d" % i)).value for i in range(5)]
    epochs = [v[len(HEAD):len(HEAD) + tenant_seal.EPOCH_BYTES] for v in values]
    assert epochs[0] == epochs[1] != epochs[2] == epochs[3] != epochs[4]
    reader = TenantSeal(KEY)
    assert [reader.open(Message("otlp_spans", 0, i, None, v, 0), "test") for i, v in
            enumerate(values)] == [(b"m%d" % i, True) for i in range(5)]


def test_a_stage_without_the_key_names_it(topics: Topics) -> None:
    """Receivers with a key, a stage without: dead letters that say which setting is missing."""
    sealed = TenantSeal(KEY).sealed(Output(topics.spans, "k", _tenant_request("b")))
    before = _sample("observer_broken_seals_total", "normalizer")
    [dead] = Normalizer(topics).process([Message(topics.spans, 0, 0, b"k", sealed.value, 0)])
    letter = json.loads(dead.value)
    assert letter["reason"] == "invalid_value" and "receiver.stamp_key" in letter["detail"]
    assert _sample("observer_broken_seals_total", "normalizer") - before == 1
