"""The normaliser: spans in each convention -> LLMCall / ToolCall records, and the stage on Kafka."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from prometheus_client import REGISTRY

from observer.collectors.common.genai_mapping import ATTRIBUTE_NAMES
from observer.collectors.normalize.normalizer import Normalizer
from observer.collectors.receiver.otlp_http import TRACES_PATH, create_app
from observer.core.bus import Message, Output, StageRunner, make_consumer
from observer.collectors.receiver.config import ReceiverConfig
from observer.core.config import KafkaConfig
from observer.core.http import ServerThread
from observer.core.records import LLMCall, Record, ToolCall, decode
from observer.core.topics import Topics

TOPICS = Topics.from_config(KafkaConfig())
SECRET = "my card number is 4111 1111 1111 1111"


def value(v: Any) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, list):
        return AnyValue(array_value=ArrayValue(values=[value(x) for x in v]))
    return AnyValue(string_value=v)


def span(
    span_id: int,
    name: str = "span",
    parent: int = 0,
    trace: int = 1,
    error: bool = False,
    **attributes: Any,
) -> Span:
    """A span lasting 250 ms; attribute names are given with ``_`` for ``.``."""
    return Span(
        trace_id=trace.to_bytes(16, "big"),
        span_id=span_id.to_bytes(8, "big"),
        parent_span_id=parent.to_bytes(8, "big") if parent else b"",
        name=name,
        start_time_unix_nano=1_700_000_000_000_000_000,
        end_time_unix_nano=1_700_000_000_250_000_000,
        attributes=[
            KeyValue(key=k.replace("__", "."), value=value(v)) for k, v in attributes.items()
        ],
        status=Status(code=Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_OK),
    )


def message(*spans: Span, service: str | None = "shop") -> Message:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    if service is not None:
        resource_spans.resource.CopyFrom(
            Resource(attributes=[KeyValue(key="service.name", value=value(service))])
        )
    resource_spans.scope_spans.add().spans.extend(spans)
    return Message(TOPICS.spans, 0, 0, None, request.SerializeToString(), 0)


def records(*messages: Message) -> list[tuple[Output, Record]]:
    outputs = Normalizer(TOPICS).process(list(messages))
    return [(o, decode(o.value)) for o in outputs]


def only(*spans: Span, service: str | None = "shop") -> Any:
    ((_, record),) = records(message(*spans, service=service))
    return record


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_current_genai_names() -> None:
    ((output, call),) = records(
        message(
            span(
                7,
                "chat gpt-4o",
                parent=3,
                gen_ai__operation__name="chat",
                gen_ai__provider__name="openai",
                gen_ai__request__model="gpt-4o",
                gen_ai__response__model="gpt-4o-2024-08-06",
                gen_ai__usage__input_tokens=120,
                gen_ai__usage__output_tokens=30,
                gen_ai__usage__cache_read__input_tokens=100,
                gen_ai__usage__reasoning__output_tokens=12,
                gen_ai__response__finish_reasons=["length", "stop"],
                gen_ai__response__time_to_first_chunk=0.2,
                gen_ai__conversation__id="conv-1",
                gen_ai__agent__name="planner",
                gen_ai__input__messages=f'[{{"role": "user", "content": "{SECRET}"}}]',
                gen_ai__usage__prompt_tokens=999,  # a legacy duplicate loses to the current name
            )
        )
    )
    assert output.topic == TOPICS.llm
    assert output.key == "shop|gpt-4o"
    assert SECRET.encode() not in output.value
    assert call == LLMCall(
        service="shop",
        model="gpt-4o",
        provider="openai",
        operation="chat",
        trace_id=(1).to_bytes(16, "big").hex(),
        span_id=(7).to_bytes(8, "big").hex(),
        parent_span_id=(3).to_bytes(8, "big").hex(),
        start_time_unix_nano=1_700_000_000_000_000_000,
        latency_ms=250.0,
        input_tokens=120,
        output_tokens=30,
        cache_read_tokens=100,
        reasoning_tokens=12,
        finish_reason="length",
        finish_reasons=["length", "stop"],
        time_to_first_token_ms=200.0,
        agent="planner",
        conversation_id="conv-1",
        # Content is measured, never stored by default: one message of len(SECRET) characters.
        input_messages=1,
        input_chars=len(SECRET),
        input_hash=hashlib.sha256(json.dumps([["user", SECRET]], separators=(",", ":")).encode())
        .hexdigest()[:16],
        # Its text descriptors (tests/test_text_descriptors.py): 8 words, 16 digits of 30.
        input_words=8, input_sentences=1, input_non_letter_share=16 / 30, input_refusal=False,
        input_json_valid=False, input_links=0, input_script="latin",
    )


def test_legacy_and_openllmetry_names() -> None:
    call = only(
        span(
            1,
            "openai.chat",
            llm__request__type="chat",
            gen_ai__system="openai",
            gen_ai__request__model="gpt-4o-mini",
            gen_ai__usage__prompt_tokens=50,
            gen_ai__usage__completion_tokens=5,
            gen_ai__usage__cache_read_input_tokens=10,
            gen_ai__response__finish_reason="stop",
            traceloop__prompt__version="3",
            error__type="RateLimitError",
            gen_ai__prompt__0__content=SECRET,
        )
    )
    assert isinstance(call, LLMCall)
    assert (call.provider, call.model, call.operation) == ("openai", "gpt-4o-mini", "chat")
    assert (call.input_tokens, call.output_tokens, call.cache_read_tokens) == (50, 5, 10)
    assert (call.finish_reason, call.finish_reasons) == ("stop", ["stop"])
    assert call.prompt_version == "3"
    assert (call.error, call.error_type) == (True, "RateLimitError")
    assert call.reasoning_tokens is None and call.time_to_first_token_ms is None


def test_openinference_names() -> None:
    llm, embedding = (
        r
        for _, r in records(
            message(
                span(
                    1,
                    "ChatOpenAI",
                    openinference__span__kind="LLM",
                    llm__model_name="claude-sonnet",
                    llm__provider="anthropic",
                    llm__token_count__prompt=40,
                    llm__token_count__completion=8,
                    session__id="s-9",
                    agent__name="support",
                    llm__prompt_template__version="v2",
                    llm__input_messages__0__message__content=SECRET,
                    error=True,
                ),
                span(2, "embed", openinference__span__kind="EMBEDDING", llm__model_name="e5"),
                service="helpdesk",
            )
        )
    )
    assert (llm.service, llm.model, llm.provider, llm.operation) == (
        "helpdesk",
        "claude-sonnet",
        "anthropic",
        "chat",
    )
    assert (llm.input_tokens, llm.output_tokens) == (40, 8)
    assert (llm.conversation_id, llm.agent, llm.prompt_version) == ("s-9", "support", "v2")
    assert llm.error and llm.error_type == ""  # span status ERROR alone marks the error
    assert (embedding.operation, embedding.model) == ("embeddings", "e5")


def test_vllm_server_span() -> None:
    call = only(
        span(
            1,
            "llm_request",
            gen_ai__response__model="meta-llama/Llama-3.1-8B-Instruct",
            gen_ai__usage__prompt_tokens=17,
            gen_ai__usage__completion_tokens=64,
            gen_ai__latency__time_to_first_token=0.05,
            gen_ai__request__max_tokens=64,
        ),
        service=None,
    )
    assert (call.service, call.model) == ("unknown", "meta-llama/Llama-3.1-8B-Instruct")
    assert (call.input_tokens, call.output_tokens, call.time_to_first_token_ms) == (17, 64, 50.0)


def test_tool_calls_and_their_model() -> None:
    got = records(
        message(
            # trace 1: agent (model, name) -> step (nothing) -> tool: model walks up two levels
            span(
                1,
                "invoke_agent planner",
                gen_ai__operation__name="invoke_agent",
                gen_ai__agent__name="planner",
                gen_ai__request__model="gpt-4o",
            ),
            span(2, "step", parent=1),
            span(
                3,
                "execute_tool search",
                parent=2,
                gen_ai__operation__name="execute_tool",
                gen_ai__tool__name="search",
                gen_ai__tool__call__id="call_1",
                gen_ai__tool__type="function",
            ),
            # a tool naming its own model keeps it
            span(
                4,
                "execute_tool calc",
                parent=1,
                gen_ai__operation__name="execute_tool",
                gen_ai__tool__name="calc",
                gen_ai__request__model="o3",
                error__type="Timeout",
            ),
            # trace 2: no ancestor has a model; a sibling LLM call of the same trace does
            span(5, "agent", trace=2),
            span(
                6,
                "lookup",
                trace=2,
                parent=5,
                openinference__span__kind="TOOL",
                tool__name="lookup",
                tool__id="t-6",
                error=True,
            ),
            span(
                7,
                "chat",
                trace=2,
                parent=5,
                openinference__span__kind="LLM",
                llm__model_name="claude-haiku",
            ),
            # trace 3: a lone tool span (OpenLLMetry decorator), no model anywhere
            span(
                8,
                "fetch.tool",
                trace=3,
                traceloop__span__kind="tool",
                traceloop__entity__name="fetch",
            ),
        )
    )
    tools = {r.tool_name: (o, r) for o, r in got if isinstance(r, ToolCall)}
    assert set(tools) == {"search", "calc", "lookup", "fetch"}
    assert all(o.topic == TOPICS.tools for o, _ in tools.values())

    output, search = tools["search"]
    assert (search.model, search.agent, output.key) == ("gpt-4o", "planner", "shop|gpt-4o")
    assert (search.tool_call_id, search.tool_type, search.status) == ("call_1", "function", "ok")
    assert search.parent_span_id == (2).to_bytes(8, "big").hex()
    assert search.latency_ms == 250.0

    _, calc = tools["calc"]
    assert (calc.model, calc.status, calc.error_type) == ("o3", "error", "Timeout")

    _, lookup = tools["lookup"]
    assert (lookup.model, lookup.tool_call_id, lookup.status) == ("claude-haiku", "t-6", "error")

    output, fetch = tools["fetch"]
    assert (fetch.model, output.key) == ("", "shop|")


def test_span_kinds_are_counted() -> None:
    before = {
        k: counter("observer_normalizer_spans_total", kind=k) for k in ("llm", "tool", "other")
    }
    got = records(
        message(
            span(1, "invoke_agent", gen_ai__operation__name="invoke_agent"),
            span(2, "chain", openinference__span__kind="CHAIN"),
            span(3, "chat", parent=1, gen_ai__operation__name="chat", gen_ai__request__model="m"),
            span(4, "execute_tool", parent=1, gen_ai__operation__name="execute_tool"),
            span(5, "GET /health"),
        )
    )
    assert [type(r).__name__ for _, r in got] == ["LLMCall", "ToolCall"]
    assert got[1][1].tool_name == "execute_tool"  # no tool name attribute: the span name
    after = {
        k: counter("observer_normalizer_spans_total", kind=k) for k in ("llm", "tool", "other")
    }
    assert {k: after[k] - before[k] for k in after} == {"llm": 1, "tool": 1, "other": 3}


def test_garbage_is_dead_lettered_and_counted() -> None:
    errors = counter("observer_normalizer_errors_total")
    good = message(span(1, "chat", gen_ai__operation__name="chat", gen_ai__request__model="m"))
    garbage = Message(TOPICS.spans, 0, 1, None, b"\xff\xff not a protobuf", 0)
    tombstone = Message(TOPICS.spans, 0, 2, None, None, 0)  # type: ignore[arg-type]
    outputs = Normalizer(TOPICS).process([garbage, good, tombstone])
    dead = [json.loads(o.value) for o in outputs if o.topic == TOPICS.dead_letter]
    assert [(d["reason"], d["source"]["offset"]) for d in dead] == [
        ("decode_error", 1), ("decode_error", 2)
    ]
    got = [decode(o.value) for o in outputs if o.topic != TOPICS.dead_letter]
    assert [r.model for r in got] == ["m"]  # type: ignore[attr-defined]
    assert counter("observer_normalizer_errors_total") - errors == 2
    assert Normalizer(TOPICS).tick() == []


def test_content_attributes_are_never_read() -> None:
    content = {
        "gen_ai.input.messages",
        "gen_ai.output.messages",
        "gen_ai.system_instructions",
        "gen_ai.tool.definitions",
        "input.value",
        "output.value",
    }
    assert not content & ATTRIBUTE_NAMES
    assert not any(n.startswith(("llm.input_messages", "gen_ai.prompt.")) for n in ATTRIBUTE_NAMES)


def test_receiver_to_normalizer_on_kafka(kafka_config: KafkaConfig, topics: Topics) -> None:
    """OTLP/HTTP in, records out: the receiver and the stage meet only at otlp_spans."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource as SdkResource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    runner = StageRunner(kafka_config, Normalizer(topics), "g-normalizer", [topics.spans])
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,))
    thread.start()
    try:
        app = create_app(ReceiverConfig(http_port=0), kafka_config, topics)
        with ServerThread(app) as server:
            provider = TracerProvider(resource=SdkResource.create({"service.name": "shop"}))
            provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=server.url + TRACES_PATH))
            )
            tracer = provider.get_tracer("agent")
            with tracer.start_as_current_span(
                "invoke_agent", attributes={"gen_ai.agent.name": "a"}
            ):
                with tracer.start_as_current_span(
                    "chat gpt-4o",
                    attributes={
                        "gen_ai.operation.name": "chat",
                        "gen_ai.request.model": "gpt-4o",
                        "gen_ai.usage.input_tokens": 9,
                    },
                ):
                    pass
                with tracer.start_as_current_span(
                    "execute_tool search",
                    attributes={
                        "gen_ai.operation.name": "execute_tool",
                        "gen_ai.tool.name": "search",
                    },
                ):
                    pass
            assert provider.force_flush(10_000)
            provider.shutdown()

        consumer = make_consumer(kafka_config, None, [topics.llm, topics.tools])
        got: list[Record] = []
        deadline = time.monotonic() + 20
        while len(got) < 2 and time.monotonic() < deadline:
            for batch in consumer.poll(200).values():
                got += [decode(r.value) for r in batch]
        consumer.close()
    finally:
        stop.set()
        thread.join(10)
    assert runner.error is None
    llm = next(r for r in got if isinstance(r, LLMCall))
    assert (llm.service, llm.model, llm.input_tokens, llm.agent) == ("shop", "gpt-4o", 9, "a")
    # The batch held the whole trace, so the tool found the agent above it and the trace's model.
    tool = next(r for r in got if isinstance(r, ToolCall))
    assert (tool.tool_name, tool.model, tool.agent) == ("search", "gpt-4o", "a")
