"""A real GenAI instrumentation from PyPI (opentelemetry-instrumentation-openai-v2) wrapping
the real openai client, which talks to an OpenAI-compatible stub on loopback. The spans and
metrics it emits travel through the real SDK exporters (HTTP for traces, gRPC for metrics) to
observer's receivers and Kafka, then through the normaliser and trace grouping."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest
from fastapi import FastAPI, Request
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import StatusCode

from observer.collectors.normalize.normalizer import Normalizer
from observer.collectors.paths.trace_grouping import FakeClock, TraceGrouper
from observer.core.bus import Message
from observer.collectors.paths.config import PathsConfig
from observer.core.config import KafkaConfig
from observer.core.http import ServerThread
from observer.core.records import LLMCall, PathRecord, ToolCall, decode
from observer.core.topics import Topics
from tests.collectors_support import drain, drain_traces, receivers

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "parameters": {"type": "object", "properties": {"order": {"type": "integer"}}},
        },
    }
]


def openai_stub() -> FastAPI:
    """Chat completions as OpenAI answers them: a tool call first, then a final answer.

    Usage is derived from the request (10 tokens per message) so the test can check it.
    """
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> dict:
        body = await request.json()
        messages = body["messages"]
        usage = {"prompt_tokens": 10 * len(messages), "completion_tokens": 7}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if body.get("tools") and messages[-1]["role"] != "tool":
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": f"call_{len(messages)}",
                        "type": "function",
                        "function": {"name": "lookup_order", "arguments": '{"order": 7}'},
                    }
                ],
            }
            finish = "tool_calls"
        else:
            message, finish = {"role": "assistant", "content": "It ships today."}, "stop"
        return {
            "id": f"chatcmpl-{len(messages)}",
            "object": "chat.completion",
            "created": 1767225600,
            "model": body["model"] + "-2024-08-06",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage,
        }

    return app


@pytest.fixture
def instrumented(kafka_config: KafkaConfig, topics: Topics) -> Iterator[tuple]:
    with receivers(kafka_config, topics) as r, ServerThread(openai_stub()) as stub:
        resource = Resource.create({"service.name": "support"})
        tracer_provider = TracerProvider(resource=resource)
        # Batched, as services export: a run's spans reach the receiver in one request.
        tracer_provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{r.http}/v1/traces"))
        )
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=r.grpc, insecure=True), export_interval_millis=3_600_000
        )
        meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
        instrumentor = OpenAIInstrumentor()
        instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
        client = openai.OpenAI(base_url=f"{stub.url}/v1", api_key="stub", max_retries=0)
        try:
            yield client, tracer_provider, meter_provider
        finally:
            instrumentor.uninstrument()
            client.close()
            tracer_provider.shutdown()
            meter_provider.shutdown()


def run_agent(client: openai.OpenAI, tracer_provider: TracerProvider, fail_tool: bool) -> None:
    """A minimal agent loop: ask, run the requested tool, ask again until the model stops."""
    tracer = tracer_provider.get_tracer("support-agent")
    messages: list[dict] = [{"role": "user", "content": "Where is order 7?"}]
    with tracer.start_as_current_span("invoke_agent support") as agent:
        agent.set_attribute("gen_ai.operation.name", "invoke_agent")
        agent.set_attribute("gen_ai.agent.name", "support")
        while True:
            reply = client.chat.completions.create(model="gpt-4o", messages=messages, tools=TOOLS)
            choice = reply.choices[0]
            if choice.finish_reason != "tool_calls":
                return
            messages.append(choice.message.model_dump(exclude_none=True))
            for call in choice.message.tool_calls or []:
                with tracer.start_as_current_span(f"execute_tool {call.function.name}") as tool:
                    tool.set_attribute("gen_ai.operation.name", "execute_tool")
                    tool.set_attribute("gen_ai.tool.name", call.function.name)
                    tool.set_attribute("gen_ai.tool.call.id", call.id)
                    if fail_tool:
                        tool.set_status(StatusCode.ERROR)
                        tool.set_attribute("error.type", "TimeoutError")
                messages.append(
                    {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"eta": 0})}
                )


def test_openai_v2_instrumentation_end_to_end(
    instrumented: tuple, kafka_config: KafkaConfig, topics: Topics
) -> None:
    client, tracer_provider, meter_provider = instrumented
    run_agent(client, tracer_provider, fail_tool=False)
    run_agent(client, tracer_provider, fail_tool=True)
    assert tracer_provider.force_flush() and meter_provider.force_flush()

    raw = drain_traces(kafka_config, topics.spans, 2)  # one trace per run
    messages = [Message(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp) for m in raw]
    records = [decode(o.value) for o in Normalizer(topics).process(messages)]
    llm = [r for r in records if isinstance(r, LLMCall)]
    tools = [r for r in records if isinstance(r, ToolCall)]
    assert len(llm) == 4 and len(tools) == 2
    by_tokens = sorted((r.input_tokens, r.finish_reason) for r in llm)
    # 1 message, then user + assistant tool call + tool result = 3 messages.
    assert by_tokens == [(10, "tool_calls"), (10, "tool_calls"), (30, "stop"), (30, "stop")]
    assert {(r.provider, r.model, r.output_tokens, r.service) for r in llm} == {
        ("openai", "gpt-4o", 7, "support")
    }
    assert all(r.agent == "support" and r.operation == "chat" for r in llm)
    assert sorted((t.tool_name, t.status, t.model, t.agent) for t in tools) == [
        ("lookup_order", "error", "gpt-4o", "support"),
        ("lookup_order", "ok", "gpt-4o", "support"),
    ]
    assert {t.tool_call_id for t in tools} == {"call_1"}

    clock = FakeClock()
    grouper = TraceGrouper(topics, PathsConfig(grace_s=1), clock=clock)
    grouper.process(messages)
    clock.now = 1
    paths = [decode(o.value) for o in grouper.tick()]
    assert all(isinstance(p, PathRecord) for p in paths)
    assert sorted((p.loop_iterations, p.tool_errors, p.input_tokens) for p in paths) == [
        (2, 0, 40),
        (2, 1, 40),
    ]
    assert {tuple(p.prompt_path) for p in paths} == {("llm", "tool:lookup_order", "llm")}
    assert len({p.path_signature for p in paths}) == 1

    metric_messages = drain(kafka_config, topics.metrics, 1)
    names = {
        metric.name
        for m in metric_messages
        for rm in ExportMetricsServiceRequest.FromString(m.value).resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    }
    assert {"gen_ai.client.token.usage", "gen_ai.client.operation.duration"} <= names
