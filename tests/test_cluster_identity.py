"""A cluster identity on everything: the receivers stamp it (OTLP/HTTP, OTLP/gRPC, the KServe
intake, the REST evaluations), the stages carry it onto every record, it is a segment key and a
capped metric label, and the GPU collector stamps its own (tests/test_fleet_topology.py: several
receivers, one central normaliser, mirrored topics).

Real parts: the OpenTelemetry SDK's exporters and the CloudEvents SDK as clients, the
receivers on real sockets, the shared embedded broker, the stages' own processors.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from observer.collectors.common.cluster import ClusterStamp, cluster_name, resource_cluster
from observer.collectors.common.tenant_seal import TenantSeal
from observer.collectors.gpu.config import GPUConfig
from observer.collectors.gpu.metrics import GPUMetrics
from observer.collectors.gpu.pipeline import ListSink
from observer.collectors.gpu.run import replay
from observer.collectors.kserve.cloud_events import from_kafka
from observer.collectors.kserve.config import KServeConfig
from observer.collectors.kserve.pairing import PredictionPairer
from observer.collectors.metrics.config import MetricsConfig
from observer.collectors.metrics.domain_metrics import DomainMetrics
from observer.collectors.metrics.genai_metrics import GenAIMetricsNormalizer
from observer.collectors.normalize.normalizer import Normalizer
from observer.collectors.paths.trace_grouping import FakeClock
from observer.collectors.receiver.config import ReceiverConfig
from observer.drift.config import DriftConfig
from observer.drift.engine import DriftEngine
from observer.drift.record_types import RECORD_TYPES, check_segment_keys
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import SecretStr, ValidationError

from observer.config import ObserverConfig, load_config
from observer.core.bus import Message, Output
from observer.core.config import KafkaConfig
from observer.core.records import (
    EvalRecord,
    GPUEconomics,
    GPUSample,
    LLMCall,
    PathRecord,
    ToolCall,
    decode,
    encode,
)
from observer.core.topics import Topics
from tests.collectors_support import intake_server, messages_of, receivers, sample
from tests.drift_support import first_window_config
from tests.test_collectors_kserve import as_message, kserve_event, post

UID = "3f2c0a1e-7d1b-4c2e-9a55-0b6c1d2e3f40"
GPU_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "gpu"


def _resource(**attributes: str) -> Resource:
    return Resource.create({"service.name": "shop", **attributes})


def _send(exporter, resource: Resource, spans: int = 1) -> None:
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("cluster-identity")
    for _ in range(spans):
        with tracer.start_as_current_span("chat m1") as span:
            span.set_attribute("gen_ai.operation.name", "chat")
            span.set_attribute("gen_ai.request.model", "m1")
    provider.shutdown()


# -- the rule ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "name"), [
    ("prod-eu-1", "prod-eu-1"), ("Prod-EU-1", "prod-eu-1"), (UID, UID),
    ("eks_cluster.us-east-1", "eks_cluster.us-east-1"), ("a" * 63, "a" * 63),
    ("", None), ("-lead", None), ("trail-", None), ("two words", None), ("a..b", None),
    ("a" * 64, None), ("x." * 127 + "x", None), ("naïve", None), ("nul\x00", None),
    ("\u212a8s", None),  # KELVIN SIGN lowercases to an ASCII "k": still not a name
])
def test_what_a_cluster_name_is(value: str, name: str | None) -> None:
    assert cluster_name(value) == name


def test_a_resource_names_its_cluster_and_the_default_fills_in() -> None:
    def res(**attrs: object) -> object:
        from opentelemetry.proto.resource.v1.resource_pb2 import Resource as Pb

        values = {str: "string_value", int: "int_value"}
        return Pb(attributes=[KeyValue(key=k, value=AnyValue(**{values[type(v)]: v}))
                              for k, v in attrs.items()])

    stamp = ClusterStamp("fallback")
    name_and_uid = res(**{"k8s.cluster.name": "East", "k8s.cluster.uid": UID})
    assert stamp.cluster_of(name_and_uid) == "east"  # the name first
    assert stamp.cluster_of(res(**{"k8s.cluster.uid": UID})) == UID
    assert stamp.cluster_of(res()) == "fallback"
    before = sample("observer_invalid_values_total", stage="receiver", field="cluster")
    for bad in ("bad name!", 42, "x" * 300):
        assert stamp.cluster_of(res(**{"k8s.cluster.name": bad})) == "fallback"
    assert sample("observer_invalid_values_total", stage="receiver",
                  field="cluster") == before + 3
    assert ClusterStamp().cluster_of(res(**{"k8s.cluster.name": "bad name!"})) == ""
    assert ClusterStamp("edge", pinned=True).cluster_of(name_and_uid) == "edge"
    # What a stage reads: the receiver's stamp, else (no receiver between) the same rules.
    stamped = res(**{"observer.cluster": "edge", "k8s.cluster.name": "east"})
    assert resource_cluster(stamped, "doc") == "edge"
    assert resource_cluster(res(**{"observer.cluster": "", "k8s.cluster.name": "east"}),
                            "doc") == ""
    assert resource_cluster(res(**{"k8s.cluster.name": "East"}), "doc") == "east"


def test_the_knobs_load_from_yaml_and_env_and_refuse_bad_names(tmp_path: Path) -> None:
    f = tmp_path / "observer.yaml"
    f.write_text("receiver:\n  cluster: Edge-1\n  cluster_pinned: true\n"
                 "gpu:\n  cluster: gpu-east\n"
                 "drift:\n  segment_keys: [cluster, service, model]\n")
    cfg = load_config(f, env={})
    assert (cfg.receiver.cluster, cfg.receiver.cluster_pinned, cfg.gpu.cluster) == (
        "edge-1", True, "gpu-east")
    assert cfg.drift.segment_keys == ["cluster", "service", "model"]
    env = {"OBSERVER_RECEIVER__CLUSTER": "west", "OBSERVER_RECEIVER__MIRROR_PREFIX": "west.",
           "OBSERVER_METRICS__MAX_CLUSTERS": "300"}
    cfg = load_config(None, env=env)
    assert (cfg.receiver.cluster, cfg.receiver.mirror_prefix, cfg.metrics.max_clusters) == (
        "west", "west.", 300)
    with pytest.raises(ValidationError, match="'bad name' is not a cluster name"):
        ReceiverConfig(cluster="bad name")
    with pytest.raises(ValidationError, match="cluster_pinned needs receiver.cluster"):
        ReceiverConfig(cluster_pinned=True)
    with pytest.raises(ValidationError, match="gpu.cluster"):
        GPUConfig(cluster="-x")


# -- the receivers stamp it, the normaliser carries it -------------------------------------------


def test_http_and_grpc_receivers_stamp_the_cluster(kafka_config: KafkaConfig,
                                                   topics: Topics) -> None:
    with receivers(kafka_config, topics, cluster="edge-1") as r:
        def http() -> HttpSpanExporter:  # an exporter per provider: shutdown closes it
            return HttpSpanExporter(endpoint=f"{r.http}/v1/traces")

        def grpc() -> GrpcSpanExporter:
            return GrpcSpanExporter(endpoint=r.grpc, insecure=True)

        _send(http(), _resource(**{"service.name": "named", "k8s.cluster.name": "East"}))
        _send(grpc(), _resource(**{"service.name": "uid", "k8s.cluster.uid": UID}))
        _send(grpc(), _resource(**{"service.name": "bad", "k8s.cluster.name": "no way!"}))
        # observer.cluster is the receiver's to write: a client's is overwritten.
        _send(http(), _resource(**{"service.name": "none", "observer.cluster": "spoofed"}))
    raw = messages_of(kafka_config, topics.spans, 4)
    outputs = Normalizer(topics, segment_keys=["cluster", "service", "model"]).process(raw)
    calls = [decode(o.value) for o in outputs]
    assert all(isinstance(c, LLMCall) for c in calls)
    by_service = {c.service: c.cluster for c in calls}
    assert by_service == {"named": "east", "uid": UID, "bad": "edge-1", "none": "edge-1"}
    # With cluster a segment key, records are keyed (partitioned) by it.
    assert {o.key for o in outputs} == {"east|named|m1", f"{UID}|uid|m1", "edge-1|bad|m1",
                                        "edge-1|none|m1"}


def test_kserve_events_and_rest_evaluations_carry_the_collectors_cluster(
    kafka_config: KafkaConfig, topics: Topics
) -> None:
    with intake_server(kafka_config, topics, cluster="edge-k") as url:
        spoofed = {"observercluster": "spoofed"}
        assert post(url, kserve_event("request", "r-1", {"instances": [[1.0]]},
                                      **spoofed)).status_code == 200
        assert post(url, kserve_event("response", "r-1", {"predictions": [1]},
                                      **spoofed)).status_code == 200
        base = url.removesuffix("/v1/kserve")
        answer = httpx.post(f"{base}/v1/span_annotations", timeout=10, json={"data": [
            {"span_id": "0123456789abcdef", "name": "helpful", "annotator_kind": "HUMAN",
             "result": {"score": 1.0}}]})
        assert answer.status_code == 200, answer.text
    raw = messages_of(kafka_config, topics.kserve_events, 2)
    assert {from_kafka(m.headers, m.value).attributes["observercluster"] for m in raw} == {
        "edge-k"}
    stage = PredictionPairer(topics, KServeConfig(), clock=FakeClock())
    [prediction] = [decode(o.value) for o in stage.process(raw)]
    assert prediction.paired and prediction.cluster == "edge-k"
    [evaluation] = [decode(m.value) for m in messages_of(kafka_config, topics.evals, 1)]
    assert isinstance(evaluation, EvalRecord) and evaluation.cluster == "edge-k"


def test_an_unsealed_kserve_event_claims_no_cluster() -> None:
    """With a stamp key in use, an event written to Kafka directly (no receiver seal) keeps
    neither its tenant nor its cluster; a sealed one keeps both."""
    key = SecretStr("k" * 32)
    topics = Topics.from_config(KafkaConfig())
    clusters = {}
    for sealed in (False, True):
        event = kserve_event("request", f"r-{sealed}", {"instances": [[1.0]]},
                             observercluster="edge-x", observertenant="acme")
        message = as_message(event)
        if sealed:
            out = TenantSeal(key).sealed(Output(topics.kserve_events, message.key,
                                                message.value, message.headers))
            message = Message(topics.kserve_events, 0, 0, out.key, out.value, 0, out.headers)
        else:
            message = Message(topics.kserve_events, 0, 0, message.key, message.value, 0,
                              message.headers)
        stage = PredictionPairer(topics, KServeConfig(pair_timeout_s=1), clock=FakeClock(),
                                 seal=TenantSeal(key))
        assert stage.process([message]) == []
        stage.clock.now = 1  # type: ignore[attr-defined]
        [alone] = [decode(o.value) for o in stage.tick()]
        clusters[sealed] = (alone.tenant, alone.cluster)
    assert clusters == {False: ("", ""), True: ("acme", "edge-x")}


def test_genai_metrics_and_paths_carry_the_resource_cluster() -> None:
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    rm.resource.attributes.extend([
        KeyValue(key="service.name", value=AnyValue(string_value="shop")),
        KeyValue(key="observer.cluster", value=AnyValue(string_value="edge-m")),
    ])
    metric = rm.scope_metrics.add().metrics.add(name="gen_ai.client.token.usage", unit="{token}")
    point = metric.histogram.data_points.add(count=1, sum=10.0, time_unix_nano=2,
                                             start_time_unix_nano=1)
    point.attributes.add(key="gen_ai.token.type", value=AnyValue(string_value="input"))
    metric.histogram.aggregation_temporality = 1  # delta
    [record] = GenAIMetricsNormalizer(Topics.from_config(KafkaConfig())).normalize(request)
    assert record.cluster == "edge-m"
    # Trace grouping: the trace's root decides (tests/test_fleet_topology.py runs the stage).
    from observer.collectors.paths.trace_grouping import _summarise, build_path
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    step = _summarise(Span(trace_id=b"t" * 16, span_id=b"s" * 8, name="chat",
                           start_time_unix_nano=1, end_time_unix_nano=2), "shop", "", "edge-p")
    path = build_path(b"t" * 16, [step], "root", 10)
    assert isinstance(path, PathRecord) and path.cluster == "edge-p"


# -- a segment key, a capped metric label ---------------------------------------------------------


def test_cluster_is_a_segment_key_of_every_record_type() -> None:
    for record_type in RECORD_TYPES:
        check_segment_keys(record_type, ["cluster"])  # raises for a record without it
    cfg = first_window_config(window_size=10, segment_keys=["cluster", "service", "model"])
    topics = Topics.from_config(KafkaConfig(topic_prefix="cid."))
    engine = DriftEngine(cfg, topics)
    rng = np.random.default_rng(3)
    calls = [LLMCall(cluster=cluster, service="shop", model="m1", trace_id=uuid.uuid4().hex,
                     span_id="s", output_tokens=int(rng.integers(100, 200)))
             for _ in range(20) for cluster in ("east", "west")]
    messages = [Message(topics.llm, 0, i, f"{c.cluster}|shop|m1".encode(), encode(c), 0)
                for i, c in enumerate(calls)]
    results = [decode(o.value) for o in engine.process(messages) if o.topic == topics.drift]
    assert sorted(r.segment_key for r in results) == ["east|shop|m1", "west|shop|m1"]
    assert {r.segment["cluster"] for r in results} == {"east", "west"}
    assert isinstance(DriftConfig(segment_keys=["cluster", "service"]), DriftConfig)


def test_the_cluster_label_is_capped_and_empty_when_unknown() -> None:
    registry = CollectorRegistry()
    stage = DomainMetrics(MetricsConfig(max_clusters=2), Topics.from_config(KafkaConfig()),
                          registry=registry)
    records = [
        *(LLMCall(cluster=c, service="shop", model="m1", trace_id="t", span_id="s",
                  input_tokens=10) for c in ("east", "west", "north", "")),
        ToolCall(cluster="east", service="shop", tool_name="search", trace_id="t", span_id="s"),
    ]
    stage.process([Message("t", 0, i, None, encode(r), 0) for i, r in enumerate(records)])

    def tokens(cluster: str) -> float | None:
        return registry.get_sample_value("observer_llm_tokens_total", {
            "cluster": cluster, "service": "shop", "model": "m1", "type": "input"})

    # Two clusters get series, the third counts as "other"; none is "" (a scrape's target
    # label then applies), never "unknown".
    assert (tokens("east"), tokens("west"), tokens("other"), tokens("")) == (10, 10, 10, 10)
    assert tokens("north") is None and tokens("unknown") is None
    assert registry.get_sample_value("observer_tool_calls_total", {
        "cluster": "east", "service": "shop", "tool": "search", "status": "ok"}) == 1


# -- the GPU collector ------------------------------------------------------------------------


def test_gpu_records_and_series_carry_the_gpu_collectors_cluster() -> None:
    prices = {"H100": {"on-demand": 3.0}}
    sinks = {}
    for cluster in ("gpu-east", "gpu-west"):
        sinks[cluster] = ListSink()
        cfg = ObserverConfig(gpu=GPUConfig(node_name="n1", cluster=cluster, prices=prices))
        replay(cfg, GPU_FIXTURES / "h100_generation_trace.csv", sinks[cluster],
               tokens=GPU_FIXTURES / "h100_generation_phases.json",
               gpu_model="NVIDIA H100 80GB HBM3")
    metrics = GPUMetrics()
    for cluster, sink in sinks.items():
        assert {type(r) for r in sink.records} == {GPUSample, GPUEconomics}
        assert {r.cluster for r in sink.records} == {cluster}
        metrics.observe(sink.records)
    registry = CollectorRegistry()
    registry.register(metrics)
    text = generate_latest(registry).decode()
    # The same node, GPU and phase in two clusters: two series, told apart by cluster alone.
    east = [line for line in text.splitlines()
            if line.startswith("observer_gpu_economics_tokens_per_joule{")
            and 'cluster="gpu-east"' in line]
    west = [line.replace('cluster="gpu-west"', 'cluster="gpu-east"') for line in text.splitlines()
            if line.startswith("observer_gpu_economics_tokens_per_joule{")
            and 'cluster="gpu-west"' in line]
    assert east and sorted(east) == sorted(west)
    assert 'observer_gpu_power_watts{' in text and 'cluster="gpu-west"' in text
