"""Retrieval records (``observer.retrievals/v1``, issue 16): a real LangChain retriever under
OpenInference's LangChain instrumentation, exported by the real OTel SDK to observer's
receiver; each other convention (OpenInference reranker, OTel GenAI retrieval, OpenLLMetry
result events) through the SDK's own OTLP encoder; a RAG app whose retriever's scores fall
gives a retrieval drift result; hostile values never fail the stage."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableLambda
from langchain_core.vectorstores import InMemoryVectorStore
from observer.collectors.normalize.normalizer import Normalizer, normalize_request
from observer.collectors.normalize.retrievals import query_hash
from observer.collectors.paths.config import PathsConfig
from observer.collectors.paths.trace_grouping import FakeClock, TraceGrouper
from observer.drift.engine import DriftEngine
from openinference.instrumentation.langchain import LangChainInstrumentor
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from observer.core.bus import Message
from observer.core.config import KafkaConfig
from observer.core.records import (
    DriftResult,
    RecordError,
    RetrievalRecord,
    decode,
    encode,
)
from observer.core.topics import Topics
from tests.collectors_support import drain_traces, receivers
from tests.drift_support import first_window_config

TOPICS = Topics.from_config(KafkaConfig(topic_prefix="unit."))
KNOWLEDGE = {f"doc-{i}": f"how do I configure feature {i} of the shop" for i in range(12)}
ARCHIVE = {f"old-{i}": f"release notes of version {i}" for i in range(12)}


class ScoredRetriever(BaseRetriever):
    """A vector-store retriever that returns its similarity scores and ids in the documents'
    metadata (as LangChain's docs suggest), so the instrumentation records them."""

    store: InMemoryVectorStore
    k: int = 3

    def _get_ls_params(self, **kwargs: Any) -> Any:
        # As LangChain's VectorStoreRetriever does: the run metadata names the vector store.
        return {**super()._get_ls_params(**kwargs),
                "ls_vector_store_provider": type(self.store).__name__}

    def _get_relevant_documents(self, query: str, *, run_manager: Any) -> list[Document]:
        return [
            Document(page_content=d.page_content, metadata={"id": d.id, "score": score})
            for d, score in self.store.similarity_search_with_score(query, k=self.k)
        ]


class ChatModel(FakeListChatModel):
    """A fake chat model that names its model, as real chat models do."""

    model_name: str = "gpt-4o-mini"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}


def knowledge_base(ids: list[str]) -> InMemoryVectorStore:
    """An in-memory vector store over hash-seeded fake embeddings (no model, no download):
    a query equal to a document's text scores 1.0 with it, unrelated texts near 0."""
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=64))
    store.add_texts([{**KNOWLEDGE, **ARCHIVE}[i] for i in ids], ids=ids)
    return store


def rag_app(store: InMemoryVectorStore) -> Any:
    """Retrieve, then answer with the documents: the chain a RAG app runs per question."""
    retriever = ScoredRetriever(store=store)
    llm = ChatModel(responses=["an answer"])
    return RunnableLambda(lambda q: {"q": q, "docs": retriever.invoke(q)}) | RunnableLambda(
        lambda x: llm.invoke(f"{x['q']}\n" + "\n".join(d.page_content for d in x["docs"]))
    )


@pytest.fixture
def langchain_traced() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """OpenInference's LangChain instrumentation on a provider exporting to memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "helpdesk"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = LangChainInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        yield provider, exporter
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


def retrievals_of(request: Any) -> list[RetrievalRecord]:
    return [r for r in normalize_request(request) if isinstance(r, RetrievalRecord)]


def test_langchain_retriever_through_the_receiver(
    kafka_config: KafkaConfig, topics: Topics
) -> None:
    with receivers(kafka_config, topics) as r:
        provider = TracerProvider(resource=Resource.create({"service.name": "helpdesk"}))
        provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=f"{r.http}/v1/traces")))
        instrumentor = LangChainInstrumentor()
        instrumentor.instrument(tracer_provider=provider)
        try:
            app = rag_app(knowledge_base(list(KNOWLEDGE)))
            app.invoke(KNOWLEDGE["doc-3"])
            app.invoke("something the knowledge base does not cover")
            assert provider.force_flush()
        finally:
            instrumentor.uninstrument()
            provider.shutdown()
    messages = [Message.of(m) for m in drain_traces(kafka_config, topics.spans, 2)]
    outputs = Normalizer(topics).process(messages)
    by_topic = [(o.topic, decode(o.value)) for o in outputs]
    found = sorted((rec for t, rec in by_topic if t == topics.retrievals),
                   key=lambda rec: -(rec.score_max or 0))
    assert all(isinstance(rec, RetrievalRecord) for rec in found) and len(found) == 2
    hit, miss = found
    assert (hit.service, hit.model, hit.operation, hit.k) == ("helpdesk", "gpt-4o-mini",
                                                               "retrieve", 3)
    assert hit.data_source == "InMemoryVectorStore"
    assert hit.top1_document_id == "doc-3" and hit.topk_document_ids[0] == "doc-3"
    assert len(hit.topk_document_ids) == 3
    assert hit.score_max == pytest.approx(1.0) and hit.score_margin > 0.5
    assert hit.score_min <= hit.score_mean <= hit.score_max
    assert miss.score_max < 0.9 and miss.top1_document_id != "doc-3"
    assert hit.query_hash == query_hash(KNOWLEDGE["doc-3"]) != miss.query_hash
    # Keyed by segment like observer.llm; neither the query nor the documents' text is kept.
    keys = {o.key for o in outputs if o.topic == topics.retrievals}
    assert keys == {"helpdesk|gpt-4o-mini"}
    raw = b"".join(o.value for o in outputs if o.topic == topics.retrievals)
    assert b"configure feature" not in raw and b"does not cover" not in raw

    clock = FakeClock()
    grouper = TraceGrouper(topics, PathsConfig(grace_s=1), clock=clock)
    grouper.process(messages)
    clock.now = 1
    paths = [decode(o.value) for o in grouper.tick()]
    assert {tuple(p.prompt_path) for p in paths} == {("retrieve:InMemoryVectorStore", "llm")}
    assert all(p.tool_calls == 0 for p in paths)


def test_a_rag_app_whose_retrieval_scores_fall_drifts(langchain_traced: tuple) -> None:
    _, exporter = langchain_traced
    questions = [KNOWLEDGE[f"doc-{i % 12}"] for i in range(60)]
    # Then the index is rebuilt from an archive that no longer answers the questions.
    for store in (knowledge_base(list(KNOWLEDGE)), knowledge_base(list(ARCHIVE))):
        app = rag_app(store)
        for q in questions:
            app.invoke(q)
    records = retrievals_of(encode_spans(exporter.get_finished_spans()))
    assert len(records) == 120
    records.sort(key=lambda rec: rec.start_time_unix_nano)
    messages = [Message(TOPICS.retrievals, 0, i, b"helpdesk|gpt-4o-mini", encode(rec), 0)
                for i, rec in enumerate(records)]
    engine = DriftEngine(first_window_config(window_size=60), TOPICS)
    results = [decode(o.value) for o in engine.process(messages) if o.topic == TOPICS.drift]
    (result,) = [r for r in results if isinstance(r, DriftResult)]
    assert result.record_type == "retrievals" and result.dataset_drift
    features = {f.name: f for f in result.features}
    assert features["score_max"].drifted and features["top1_document_id"].drifted
    assert not features["data_source"].drifted and not features["k"].drifted


def _spans(build: Any) -> Any:
    """Spans made with the real SDK by ``build(tracer)``, as the OTLP request it exports."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "rag"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    build(provider.get_tracer("rag"))
    provider.shutdown()
    return encode_spans(exporter.get_finished_spans())


def test_openinference_reranker_span() -> None:
    def build(tracer: Any) -> None:
        with tracer.start_as_current_span("chat") as chat:
            chat.set_attribute("gen_ai.operation.name", "chat")
            chat.set_attribute("gen_ai.request.model", "claude-sonnet")
            with tracer.start_as_current_span("CohereRerank") as span:
                span.set_attribute("openinference.span.kind", "RERANKER")
                span.set_attribute("reranker.query", "refund policy")
                span.set_attribute("reranker.model_name", "rerank-english-v3.0")
                span.set_attribute("reranker.top_k", 2)
                for i, (doc, score) in enumerate([("x", 0.2), ("y", 0.9)]):
                    span.set_attribute(f"reranker.input_documents.{i}.document.id", doc)
                    span.set_attribute(f"reranker.output_documents.{i}.document.id", doc)
                    span.set_attribute(f"reranker.output_documents.{i}.document.score", score)

    (rec,) = retrievals_of(_spans(build))
    assert (rec.operation, rec.data_source, rec.model, rec.k) == (
        "rerank", "rerank-english-v3.0", "claude-sonnet", 2)
    assert rec.topk_document_ids == ["y", "x"] and rec.top1_document_id == "y"
    assert rec.score_margin == pytest.approx(0.7) and rec.query_hash == query_hash("refund policy")


@pytest.mark.parametrize("structured", [True, False])
def test_otel_genai_retrieval_span(structured: bool) -> None:
    documents = [{"id": "doc_456", "score": 0.87}, {"id": "doc_123", "score": 0.95}]

    def build(tracer: Any) -> None:
        with tracer.start_as_current_span("retrieval") as span:
            span.set_attribute("gen_ai.operation.name", "retrieval")
            span.set_attribute("gen_ai.data_source.id", "H7STPQYOND")
            span.set_attribute("gen_ai.retrieval.query.text", "reset my password")
            if not structured:  # the SDK takes no maps, so JSON text it is
                span.set_attribute("gen_ai.retrieval.documents", json.dumps(documents))

    request = _spans(build)
    if structured:  # structured form, as an OTLP kvlist array (what other SDKs send)
        value = AnyValue()
        for d in documents:
            item = value.array_value.values.add().kvlist_value.values
            item.extend([KeyValue(key="id", value=AnyValue(string_value=d["id"])),
                         KeyValue(key="score", value=AnyValue(double_value=d["score"]))])
        span = request.resource_spans[0].scope_spans[0].spans[0]
        span.attributes.append(KeyValue(key="gen_ai.retrieval.documents", value=value))
    (rec,) = retrievals_of(request)
    assert (rec.operation, rec.data_source, rec.k, rec.model) == ("retrieve", "H7STPQYOND", 2, "")
    assert rec.topk_document_ids == ["doc_123", "doc_456"]
    assert rec.score_max == 0.95 and rec.score_min == 0.87
    assert rec.query_hash == query_hash("reset my password")


def test_openllmetry_result_events_and_distances() -> None:
    def build(tracer: Any) -> None:
        with tracer.start_as_current_span("chroma.query") as span:
            span.set_attribute("db.system", "chroma")
            for doc, distance in [("id3", 0.27), ("id1", 1.04), ("id2", 0.5)]:
                span.add_event("db.query.result", {"db.query.result.id": doc,
                                                   "db.query.result.distance": distance,
                                                   "db.query.result.document": "secret text"})

    (rec,) = retrievals_of(_spans(build))
    # A distance d is the score -d: the nearest document is the best.
    assert (rec.data_source, rec.k, rec.top1_document_id) == ("chroma", 3, "id3")
    assert rec.topk_document_ids == ["id3", "id2", "id1"]
    assert (rec.score_max, rec.score_min) == (-0.27, -1.04)
    assert rec.score_margin == pytest.approx(0.23)
    assert b"secret text" not in encode(rec)


def _invalid(field: str) -> float:
    return REGISTRY.get_sample_value(
        "observer_invalid_values_total", {"stage": "normalizer", "field": field}) or 0.0


def test_hostile_values_are_left_out_and_counted() -> None:
    before = {f: _invalid(f) for f in ("document_score", "document_id", "documents",
                                       "retrieval_documents")}

    def build(tracer: Any) -> None:
        with tracer.start_as_current_span("retriever") as span:
            span.set_attribute("openinference.span.kind", "RETRIEVER")
            span.set_attribute("input.value", "q" * 100_000)
            bad = ["NaN", "inf", "1e400", True, "-1e13", "nope"]
            for i, score in enumerate(bad):
                span.set_attribute(f"retrieval.documents.{i}.document.score", score)
                span.set_attribute(f"retrieval.documents.{i}.document.id", f"d{i}")
            span.set_attribute("retrieval.documents.6.document.score", 0.5)
            span.set_attribute("retrieval.documents.6.document.id", "x" * 10_000)
            span.set_attribute("retrieval.documents.7.document.id", "ok\x00\n")
            span.set_attribute("retrieval.documents.7.document.metadata", "{not json")
            span.set_attribute("retrieval.documents.99999999.document.id", "far")
            span.set_attribute("retrieval.documents.x.document.id", "odd")
        with tracer.start_as_current_span("retrieval") as span:
            span.set_attribute("gen_ai.operation.name", "retrieval")
            span.set_attribute("gen_ai.retrieval.documents", "[" * 100_000)
            span.set_attribute("gen_ai.data_source.id", "\x07" * 1000)

    request = _spans(build)
    message = Message("spans", 0, 0, b"k", request.SerializeToString(), 0)
    outputs = Normalizer(TOPICS).process([message])
    assert {o.topic for o in outputs} == {TOPICS.retrievals}
    first, second = sorted((decode(o.value) for o in outputs), key=lambda rec: -rec.k)
    assert first.k == 8 and first.score_max == first.score_min == 0.5
    assert first.top1_document_id == "x" * 256 and "d0" in first.topk_document_ids
    assert "ok\ufffd\ufffd" in first.topk_document_ids
    assert len(first.query_hash) == 16
    assert second.k == 0 and second.score_max is None and len(second.data_source) == 256
    assert _invalid("document_score") >= before["document_score"] + 1
    assert _invalid("documents") >= before["documents"] + 1
    assert _invalid("retrieval_documents") == before["retrieval_documents"] + 1


@pytest.mark.parametrize("field, value", [
    ("score_max", float("nan")), ("score_mean", 1e13), ("k", -1), ("score_margin", -0.1),
    ("topk_document_ids", ["a"] * 21), ("topk_document_ids", ["a" * 257]),
    ("query_hash", "f" * 17), ("operation", "delete"),
])
def test_records_reject_values_out_of_bounds(field: str, value: Any) -> None:
    good = RetrievalRecord(service="s", trace_id="t", span_id="a").model_dump(by_alias=True)
    with pytest.raises(RecordError):
        decode(json.dumps({**good, field: value}, allow_nan=True))
