"""A meaning-only shift in real OpenInference-instrumented traffic drifts the embedding features,
on the defaults, with the evidence in the result; the shape features stay level.

The client is the real openai package wrapped by the real OpenInference instrumentation
(``openinference-instrumentation-openai``, which records prompts and answers as
``llm.input_messages.N.message.content`` / ``llm.output_messages.N...``), exporting through the
real OTLP/HTTP exporter to observer's receiver; an OpenAI-compatible stub on loopback answers.
Users of a documentation assistant ask about statements and control flow (the reference and the
first window), then about numbers and data types, each question and answer length-matched to
one it replaces (:mod:`observer.demo.python_docs`), and the usage the stub reports follows the
word counts: lengths and token counts are the same before and after, only the meaning moves.

The drift configuration is the default one (windows of 1000 records against the first 2000).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
from fastapi import FastAPI, Request
from openinference.instrumentation.openai import OpenAIInstrumentor
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from observer.collectors.receiver.config import ReceiverConfig
from observer.config import ObserverConfig
from observer.core.broker import EmbeddedBroker
from observer.core.bus import ensure_topics
from observer.core.config import AdminConfig, KafkaConfig
from observer.core.http import ServerThread
from observer.core.records import DriftResult
from observer.core.topics import Topics
from observer.demo import python_docs
from observer.drift.config import DriftConfig
from observer.runtime import Runtime
from tests.collectors_support import wait_for

REFERENCE, WINDOW = DriftConfig().reference_records, DriftConfig().window_size
TOKENS_PER_WORD = 4 / 3


def _stub(answers: dict[str, str]) -> FastAPI:
    """Chat completions answering each question with its prepared answer; usage from words."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> dict:
        body = await request.json()
        question = body["messages"][-1]["content"]
        answer = answers[question]
        usage = {"prompt_tokens": round(len(question.split()) * TOKENS_PER_WORD),
                 "completion_tokens": round(len(answer.split()) * TOKENS_PER_WORD)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion",
                "created": 1767225600, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": answer}}],
                "usage": usage}

    return app


@pytest.fixture
def one_partition(broker: EmbeddedBroker) -> KafkaConfig:
    """One partition per topic: the reference is exactly the first 2000 calls sent."""
    tag = uuid.uuid4().hex[:8]
    # Short group timeouts, as tests/conftest.py's kafka_config: a join takes ~3 s, not ~5 s.
    cfg = KafkaConfig(bootstrap_servers=broker.bootstrap_servers, topic_prefix=f"s{tag}.",
                      otlp_topic_prefix=f"s{tag}.", partitions=1,
                      session_timeout_ms=6000, heartbeat_interval_ms=1000)
    ensure_topics(cfg, Topics.from_config(cfg))
    return cfg


@pytest.fixture
def conversations() -> dict[str, list[tuple[str, str]]]:
    rng = np.random.default_rng(15)
    control, data = python_docs.prose(python_docs.CONTROL), python_docs.prose(python_docs.DATA)
    before = python_docs.stream(control, REFERENCE + WINDOW, rng)
    after = python_docs.matched_stream(python_docs.stream(control, WINDOW, rng), data, rng)
    return {"before": before, "after": after}


@pytest.fixture
def runtime(one_partition: KafkaConfig, tmp_path: Path, free_port) -> Iterator[Runtime]:
    cfg = ObserverConfig(
        kafka=one_partition,
        receiver=ReceiverConfig(http_port=free_port(), grpc_port=free_port()),
        admin=AdminConfig(port=free_port()),
    )
    rt = Runtime(cfg, ["collect", "normalize", "drift"]).start()
    try:
        assert rt.wait_assigned(60)
        yield rt
    finally:
        rt.stop()


def test_meaning_only_shift_drifts_embeddings_with_evidence(
    runtime: Runtime, conversations: dict[str, list[tuple[str, str]]]
) -> None:
    pairs = conversations["before"] + conversations["after"]
    answers = dict(pairs)
    provider = TracerProvider(resource=Resource.create({"service.name": "docs-assistant"}))
    provider.add_span_processor(BatchSpanProcessor(
        OTLPSpanExporter(endpoint=runtime.endpoints()["otlp_http"]),
        max_queue_size=len(pairs) + 10, max_export_batch_size=512))
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    shifted_traces: set[str] = set()
    try:
        with ServerThread(_stub(answers)) as stub:
            client = openai.OpenAI(base_url=f"{stub.url}/v1", api_key="stub", max_retries=0)
            tracer = provider.get_tracer("docs-assistant")
            for i, (question, _) in enumerate(pairs):
                with tracer.start_as_current_span("ask") as root:
                    client.chat.completions.create(
                        model="gpt-4o-mini", messages=[{"role": "user", "content": question}])
                    if i >= REFERENCE + WINDOW:
                        shifted_traces.add(format(root.get_span_context().trace_id, "032x"))
            client.close()
        provider.force_flush()
    finally:
        instrumentor.uninstrument()
        provider.shutdown()

    def windows(record_type: str) -> dict[int, DriftResult]:
        return {r.window_index: r for r in runtime.drift_view.history()
                if isinstance(r, DriftResult) and r.record_type == record_type}

    wait_for(lambda: {1, 2} <= set(windows("embeddings")) and {1, 2} <= set(windows("llm")),
             120, "windows 1 and 2 of the embeddings and llm records")
    emb, llm = windows("embeddings"), windows("llm")

    semantic = {"prompt_embedding", "response_embedding"}
    before = {f.name: f for f in emb[1].features}
    after = {f.name: f for f in emb[2].features}
    assert semantic <= set(before) and semantic <= set(after)
    # None before the change: the same subject, new records.
    assert not any(before[n].drifted for n in semantic), [before[n] for n in semantic]
    drifted = [after[n] for n in semantic if after[n].drifted]
    assert drifted, [after[n] for n in semantic]
    # The evidence names records of the new subject.
    for feature in drifted:
        assert feature.kind == "embedding" and feature.evidence is not None
        unlike = feature.evidence.unlike
        assert unlike and all(u.trace_id in shifted_traces for u in unlike)
        assert all(u.snippet is None for u in unlike)  # no content without capture

    # The shape of the calls did not move: lengths and token counts are level.
    shape = {f.name: f for f in llm[2].features}
    for name in ("input_tokens", "output_tokens", "input_words", "output_words"):
        if name in shape:
            assert not shape[name].drifted, shape[name]
