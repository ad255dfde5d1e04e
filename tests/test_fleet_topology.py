"""The multi-cluster topology on the embedded broker: per-cluster receivers, central stages.

- One central Kafka: three receivers, each configured as another cluster (one pinned, one
  taking the cluster its clients' resources name, one filling in its default), write to the
  one broker; the central normaliser and trace grouping (run once, by the runtime) give every
  record its right cluster; a client of the pinned collector cannot claim another cluster, and
  a direct write to Kafka (no receiver seal) claims none.
- A Kafka per cluster, mirrored centrally by MirrorMaker 2 with its DefaultReplicationPolicy
  (``<source alias>.<topic>``): a sealed message opens only under the topic it was sealed
  for, so the central stages need ``receiver.mirror_prefix``; with it they read the mirror.
- The GPU economics of several clusters roll up per cluster and for the fleet
  (deploy/prometheus/rules/observer-fleet.rules.yml, promtool unit tests).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

from kafka import KafkaProducer
from observer.collectors.common.tenant_seal import TenantSeal
from observer.collectors.metrics.config import MetricsConfig
from observer.collectors.metrics.domain_metrics import DomainMetrics
from observer.collectors.normalize.normalizer import Normalizer
from observer.collectors.paths.config import PathsConfig
from observer.collectors.receiver.config import ReceiverConfig
from observer.drift.config import DriftConfig
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
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import SecretStr

from observer.config import ObserverConfig
from observer.core.bus import Message, ensure_topics
from observer.core.config import AdminConfig, KafkaConfig
from observer.core.records import LLMCall, PathRecord, decode, encode
from observer.core.topics import Topics
from observer.runtime import Runtime
from tests.collectors_support import drain, messages_of, receivers, sample

STAMP_KEY = "fleet-stamp-key-0123456789abcdef"
"""Every observer process of the fleet shares it (receiver.stamp_key)."""
ROOT = Path(__file__).resolve().parent.parent
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def mirror_maker_name(source_alias: str, topic: str) -> str:
    """MirrorMaker 2's DefaultReplicationPolicy: ``<source alias>.<topic>``
    (tests/test_deploy_overlays.py checks the central configuration reads these names)."""
    return f"{source_alias}.{topic}"


def _send(exporter, service: str, **resource: str) -> None:
    """One agent trace (an LLM call under an agent root) from ``service``."""
    provider = TracerProvider(resource=Resource.create({"service.name": service, **resource}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("fleet")
    with tracer.start_as_current_span("invoke_agent support"), \
            tracer.start_as_current_span("chat m1") as span:
        span.set_attribute("gen_ai.operation.name", "chat")
        span.set_attribute("gen_ai.request.model", "m1")
        span.set_attribute("gen_ai.usage.output_tokens", 7)
    provider.shutdown()


def _forged(service: str, cluster: str) -> bytes:
    """An export request claiming ``cluster``, as anything that can reach Kafka could write."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.extend([
        KeyValue(key="service.name", value=AnyValue(string_value=service)),
        KeyValue(key="observer.cluster", value=AnyValue(string_value=cluster)),
        KeyValue(key="k8s.cluster.name", value=AnyValue(string_value=cluster)),
    ])
    span = rs.scope_spans.add().spans.add(
        trace_id=uuid.uuid4().bytes, span_id=b"\x01" * 8, name="chat m1",
        start_time_unix_nano=1, end_time_unix_nano=2)
    span.attributes.extend([
        KeyValue(key="gen_ai.operation.name", value=AnyValue(string_value="chat")),
        KeyValue(key="gen_ai.request.model", value=AnyValue(string_value="m1")),
    ])
    return request.SerializeToString()


def test_three_clusters_write_to_one_kafka_and_the_central_stages_tell_them_apart(
    kafka_config: KafkaConfig, topics: Topics, free_port
) -> None:
    key = {"stamp_key": SecretStr(STAMP_KEY)}
    with receivers(kafka_config, topics, cluster="edge-a", cluster_pinned=True, **key) as a, \
            receivers(kafka_config, topics, cluster="fallback-b", **key) as b, \
            receivers(kafka_config, topics, cluster="edge-c", **key) as c:
        # Cluster a pins its name: its client's claim to be edge-b is overwritten.
        _send(HttpSpanExporter(endpoint=f"{a.http}/v1/traces"), "svc-a",
              **{"k8s.cluster.name": "edge-b"})
        # Cluster b believes what its clients' resources say (the OTel k8s semantic conventions).
        _send(GrpcSpanExporter(endpoint=b.grpc, insecure=True), "svc-b",
              **{"k8s.cluster.name": "Edge-B"})
        # Cluster c's clients name none: its default fills in.
        _send(HttpSpanExporter(endpoint=f"{c.http}/v1/traces"), "svc-c")
    # A direct write claiming edge-a: not sealed, so neither its tenant nor its cluster counts.
    unsealed = sample("observer_unsealed_messages_total", stage="normalizer")
    producer = KafkaProducer(bootstrap_servers=kafka_config.servers)
    producer.send(topics.spans, _forged("svc-forged", "edge-a")).get(30)
    producer.close()

    cfg = ObserverConfig(
        kafka=kafka_config,
        receiver=ReceiverConfig(http_port=free_port(), grpc_port=free_port(), **key),
        admin=AdminConfig(port=free_port()),
        paths=PathsConfig(grace_s=0.5),
        drift=DriftConfig(segment_keys=["cluster", "service", "model"]),
    )
    central = Runtime(cfg, ["normalize", "paths"]).start()  # the stages, once for the fleet
    try:
        assert central.wait_assigned(60)
        llm = drain(kafka_config, topics.llm, 4, timeout_s=60)
        paths = drain(kafka_config, topics.paths, 3, timeout_s=60)
    finally:
        central.stop()

    calls = {r.service: r for r in (decode(m.value) for m in llm) if isinstance(r, LLMCall)}
    assert {s: r.cluster for s, r in calls.items()} == {
        "svc-a": "edge-a", "svc-b": "edge-b", "svc-c": "edge-c", "svc-forged": ""}
    # The cluster leads the segment: each cluster's traffic is its own stream.
    assert {m.key.decode() for m in llm} == {
        "edge-a|svc-a|m1", "edge-b|svc-b|m1", "edge-c|svc-c|m1", "|svc-forged|m1"}
    assert sample("observer_unsealed_messages_total", stage="normalizer") > unsealed
    traces = [decode(m.value) for m in paths]
    assert {(p.service, p.cluster) for p in traces if isinstance(p, PathRecord)} >= {
        ("svc-a", "edge-a"), ("svc-b", "edge-b"), ("svc-c", "edge-c")}


def test_central_stages_read_a_topic_mirror_maker_renamed(
    kafka_config: KafkaConfig, topics: Topics, free_port
) -> None:
    key = SecretStr(STAMP_KEY)
    # Cluster east's own Kafka (here: this test's topics) and its receiver.
    with receivers(kafka_config, topics, cluster="east", stamp_key=key) as east:
        _send(HttpSpanExporter(endpoint=f"{east.http}/v1/traces"), "shop")
    source = messages_of(kafka_config, topics.spans, 1)
    assert source

    # MirrorMaker 2 copies key, value and headers into <alias>.<topic> in the central Kafka.
    central_kafka = kafka_config.model_copy(update={
        "otlp_topic_prefix": mirror_maker_name("east", kafka_config.otlp_topic_prefix),
        "topic_prefix": mirror_maker_name("east", kafka_config.topic_prefix)})
    central_topics = Topics.from_config(central_kafka)
    assert central_topics.spans == mirror_maker_name("east", topics.spans)
    ensure_topics(central_kafka, central_topics)
    producer = KafkaProducer(bootstrap_servers=kafka_config.servers)
    for m in source:
        producer.send(central_topics.spans, key=m.key, value=m.value,
                      headers=list(m.headers)).get(30)
    producer.close()
    mirrored = messages_of(central_kafka, central_topics.spans, len(source))

    # Without the knob the seal does not open (it binds the topic): dead letters that say why.
    dead = Normalizer(central_topics, seal=TenantSeal(key)).process(mirrored)
    assert [json.loads(o.value)["reason"] for o in dead] == ["invalid_value"] * len(mirrored)
    assert "receiver.mirror_prefix" in json.loads(dead[0].value)["detail"]

    cfg = ObserverConfig(
        kafka=central_kafka,
        receiver=ReceiverConfig(http_port=free_port(), grpc_port=free_port(), stamp_key=key,
                                mirror_prefix="east."),
        admin=AdminConfig(port=free_port()),
    )
    central = Runtime(cfg, ["normalize"]).start()
    try:
        assert central.wait_assigned(60)
        llm = drain(central_kafka, central_topics.llm, 1, timeout_s=60)
    finally:
        central.stop()
    [call] = [decode(m.value) for m in llm]
    assert isinstance(call, LLMCall) and (call.service, call.cluster) == ("shop", "east")
    # The stages' own topics carry the alias too (docs/deployment.md, one stage set per source).
    assert central_topics.llm == mirror_maker_name("east", topics.llm)
    # A topic without the prefix still opens as itself (an unmirrored topic beside it).
    seal = TenantSeal(key, mirror_prefix="east.")
    assert seal.open(source[0], "doc").trusted


RULES_TEST = """
rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # Two clusters serve llama; east also serves qwen. Per model: tokens/s and $/s (powers
      # of two, so that the expected figures are exact in floating point).
      - series: 'observer_gpu_economics_tokens_per_second{{cluster="east", scope="model", name="llama", instance="a"}}'
        values: '3600x5'
      - series: 'observer_gpu_economics_cost_dollars_per_second{{cluster="east", scope="model", name="llama", instance="a"}}'
        values: '0.0009765625x5'
      - series: 'observer_gpu_economics_tokens_per_second{{cluster="west", scope="model", name="llama", instance="b"}}'
        values: '1800x5'
      - series: 'observer_gpu_economics_cost_dollars_per_second{{cluster="west", scope="model", name="llama", instance="b"}}'
        values: '0.001953125x5'
      - series: 'observer_gpu_economics_tokens_per_second{{cluster="east", scope="model", name="qwen", instance="a"}}'
        values: '900x5'
      - series: 'observer_gpu_economics_cost_dollars_per_second{{cluster="east", scope="model", name="qwen", instance="a"}}'
        values: '0.00048828125x5'
      - series: 'observer_gpu_economics_idle_cost_dollars_per_second{{cluster="east", scope="gpu", name="n1/g0", instance="a"}}'
        values: '0.0009765625x5'
      - series: 'observer_gpu_economics_idle_cost_dollars_per_second{{cluster="west", scope="gpu", name="n2/g0", instance="b"}}'
        values: '0.0029296875x5'
    promql_expr_test:
      # Per cluster: east's llama buys 3600 / (3600 / 1024) = 1024 tokens/s per $/h.
      - expr: cluster_name:observer_gpu_economics_tokens_per_dollar_per_second:ratio
        eval_time: 2m
        exp_samples:
          - labels: 'cluster_name:observer_gpu_economics_tokens_per_dollar_per_second:ratio{{cluster="east", name="llama"}}'
            value: 1024
          - labels: 'cluster_name:observer_gpu_economics_tokens_per_dollar_per_second:ratio{{cluster="west", name="llama"}}'
            value: 256
          - labels: 'cluster_name:observer_gpu_economics_tokens_per_dollar_per_second:ratio{{cluster="east", name="qwen"}}'
            value: 512
      # The fleet: (3600 + 1800) / (3 / 1024 x 3600) = 512, not the mean of 1024 and 256.
      # (the query the rules file documents: one more sum over the recorded sums)
      - expr: >-
          sum by (name) (cluster_name:observer_gpu_economics_tokens_per_second:sum)
          / (sum by (name) (cluster_name:observer_gpu_economics_cost_dollars_per_second:sum) * 3600)
        eval_time: 2m
        exp_samples:
          - labels: '{{name="llama"}}'
            value: 512
          - labels: '{{name="qwen"}}'
            value: 512
      - expr: sum by (name) (cluster_name:observer_gpu_economics_tokens_per_second:sum{{name="llama"}})
        eval_time: 2m
        exp_samples:
          - labels: '{{name="llama"}}'
            value: 5400
      - expr: cluster:observer_gpu_economics_idle_cost_dollars_per_second:sum
        eval_time: 2m
        exp_samples:
          - labels: 'cluster:observer_gpu_economics_idle_cost_dollars_per_second:sum{{cluster="east"}}'
            value: 0.0009765625
          - labels: 'cluster:observer_gpu_economics_idle_cost_dollars_per_second:sum{{cluster="west"}}'
            value: 0.0029296875
      - expr: sum(cluster:observer_gpu_economics_idle_cost_dollars_per_second:sum)
        eval_time: 2m
        exp_samples:
          - labels: '{{}}'
            value: 0.00390625
"""


def test_gpu_economics_roll_up_per_cluster_and_for_the_fleet(tmp_path: Path) -> None:
    rules = ROOT / "deploy" / "prometheus" / "rules" / "observer-fleet.rules.yml"
    test_file = tmp_path / "fleet_rules_test.yml"
    test_file.write_text(RULES_TEST.format(rules=rules))
    result = subprocess.run([PROMTOOL, "test", "rules", str(test_file)],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_fleet_rule_test_can_fail(tmp_path: Path) -> None:
    """The promtool test above is not vacuous: another west price gives other figures."""
    rules = ROOT / "deploy" / "prometheus" / "rules" / "observer-fleet.rules.yml"
    west_cost = "name=\"llama\", instance=\"b\"}}'\n        values: '0.001953125x5'"
    assert west_cost in RULES_TEST
    test_file = tmp_path / "fleet_rules_test.yml"
    dearer = west_cost.replace("0.001953125", "0.00390625")
    test_file.write_text(RULES_TEST.replace(west_cost, dearer).format(rules=rules))
    result = subprocess.run([PROMTOOL, "test", "rules", str(test_file)],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


def test_prometheus_keeps_a_records_cluster_or_the_scrapes_own(
    start_prometheus, exposition_server
) -> None:
    """What docs/deployment.md says of the scrape jobs, against a real Prometheus: a series
    whose record named no cluster (cluster="") takes the scrape's ``cluster`` target label
    (and a record's own cluster is kept as ``exported_cluster``); a central stage's series keep
    their records' clusters under ``honor_labels: true``."""
    registry = CollectorRegistry()
    stage = DomainMetrics(MetricsConfig(), Topics.from_config(KafkaConfig()), registry=registry)
    stage.process([Message("t", 0, i, None, encode(LLMCall(
        cluster=cluster, service="shop", model="m1", trace_id="t", span_id="s")), 0)
        for i, cluster in enumerate(("east", "west", ""))])
    server = exposition_server(lambda: generate_latest(registry).decode())

    def job(name: str, cluster: str, honor: bool) -> dict:
        return {"job_name": name, "honor_labels": honor,
                "static_configs": [{"targets": [server.address],
                                    "labels": {"cluster": cluster}}]}

    prom = start_prometheus(jobs=[job("per-cluster", "local", False),
                                  job("central", "central", True)])
    prom.wait_for_scrapes(2)

    def clusters(job_name: str) -> set[tuple[str, str]]:
        return {(s["metric"].get("cluster", ""), s["metric"].get("exported_cluster", ""))
                for s in prom.query(f'observer_llm_calls_total{{job="{job_name}"}}')}

    # honor_labels: true (a central stage for the fleet): each record's cluster; a record
    # that named none has no cluster label (its "" wins over the job's).
    assert clusters("central") == {("east", ""), ("west", ""), ("", "")}
    # The default (a per-cluster observer): the job's cluster; a record's own is kept aside.
    assert clusters("per-cluster") == {("local", "east"), ("local", "west"), ("local", "")}
