"""GenAI metrics normalisation: the real opentelemetry-instrumentation-openai-v2 histograms,
exported by the SDK's gRPC exporter to the receiver and Kafka, become interval records."""

from __future__ import annotations

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from observer.collectors.metrics.genai_metrics import GenAIMetricsNormalizer
from observer.core.bus import Message
from observer.core.config import KafkaConfig
from observer.core.records import GenAIMetric, decode
from observer.core.topics import Topics
from tests.collectors_support import drain
from tests.test_collectors_instrumentation import instrumented, run_agent  # noqa: F401 (fixture)

CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
TOPICS = Topics.from_config(KafkaConfig())


def test_openai_v2_metrics_become_interval_records(
    instrumented: tuple, kafka_config: KafkaConfig, topics: Topics  # noqa: F811
) -> None:
    client, tracer_provider, meter_provider = instrumented
    run_agent(client, tracer_provider, fail_tool=False)
    run_agent(client, tracer_provider, fail_tool=False)
    assert meter_provider.force_flush()
    run_agent(client, tracer_provider, fail_tool=False)
    assert meter_provider.force_flush()

    raw = drain(kafka_config, topics.metrics, 2)
    assert len(raw) == 2  # one message per resource per export
    stage = GenAIMetricsNormalizer(topics)
    outputs = stage.process(
        [Message(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp) for m in raw]
    )
    assert {o.topic for o in outputs} == {topics.genai_metrics}
    assert {o.key for o in outputs} == {"support|gpt-4o"}
    records = [decode(o.value) for o in outputs]
    assert all(isinstance(r, GenAIMetric) for r in records)

    def totals(kind: str, **match: str) -> list[tuple[int | None, float | None]]:
        return [
            (r.count, r.sum)
            for r in records
            if r.kind == kind and all(getattr(r, k) == v for k, v in match.items())
        ]

    # Exports 1 and 2 are cumulative (the SDK default); records hold each interval: two runs
    # of two calls, then one run. The stub answers 10 input tokens per message, 7 output.
    assert totals("token_usage", token_type="input") == [(4, 80.0), (2, 40.0)]
    assert totals("token_usage", token_type="output") == [(4, 28.0), (2, 14.0)]
    assert [c for c, _ in totals("operation_duration")] == [4, 2]
    usage = [r for r in records if r.kind == "token_usage"]
    assert {(r.provider, r.model, r.operation, r.temporality, r.instrument, r.unit) for r in usage} == {
        ("openai", "gpt-4o", "chat", "cumulative", "histogram", "{token}")
    }
    first, second = [r for r in usage if r.token_type == "input"]
    assert second.start_time_unix_nano == first.time_unix_nano  # intervals tile
    assert sum(second.bucket_counts) == second.count and second.min is None


def _request(name: str, *, start: int, now: int, value: float, kind: str = "sum") -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    resource_metrics.resource.attributes.append(
        KeyValue(key="service.name", value=AnyValue(string_value="vllm"))
    )
    metric = resource_metrics.scope_metrics.add().metrics.add(name=name, unit="s")
    attributes = [KeyValue(key="gen_ai.request.model", value=AnyValue(string_value="llama"))]
    if kind == "sum":
        metric.sum.aggregation_temporality = CUMULATIVE
        metric.sum.is_monotonic = True
        metric.sum.data_points.add(start_time_unix_nano=start, time_unix_nano=now, as_double=value,
                                   attributes=attributes)
    else:
        metric.gauge.data_points.add(time_unix_nano=now, as_double=value, attributes=attributes)
    return request


def test_counters_reset_gauges_and_other_metrics() -> None:
    stage = GenAIMetricsNormalizer(TOPICS)
    counter = "gen_ai.client.inference.tokens"
    values = [
        (r.kind, r.value, r.start_time_unix_nano)
        for request in (
            _request(counter, start=1, now=10, value=100),
            _request(counter, start=1, now=20, value=130),
            _request(counter, start=25, now=30, value=5),  # the process restarted
        )
        for r in stage.normalize(request)
    ]
    assert values == [("token_usage", 100, 1), ("token_usage", 30, 10), ("token_usage", 5, 25)]
    [gauge] = stage.normalize(_request("gen_ai.server.queue.size", start=0, now=5, value=3, kind="gauge"))
    # Unlisted gen_ai.* metrics keep their name as kind (successors not in the table yet).
    assert (gauge.kind, gauge.instrument, gauge.value, gauge.model) == ("gen_ai.server.queue.size", "gauge", 3, "llama")
    assert stage.normalize(_request("http.server.duration", start=1, now=2, value=1)) == []
    [dead] = stage.process([Message("otlp_metrics", 0, 0, None, b"\xff junk", 0)])
    assert (dead.topic, dead.key) == ("observer.dead-letter", "genai-metrics")  # not a crash
