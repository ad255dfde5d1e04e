"""Embeddings in the normaliser: the Embedder protocol, the hashing default, a local fastembed
model through fastembed's real loader, vectors sent in traces, and the observer.embeddings topic."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from observer.collectors.normalize.config import ContentConfig, EmbeddingsConfig, NormalizerConfig
from observer.collectors.normalize.embedders.fastembed_local import FastembedEmbedder
from observer.collectors.normalize.embedders.hashing import HashingEmbedder
from observer.collectors.normalize.embedders.protocol import Embedder
from observer.collectors.normalize.normalizer import Normalizer
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from observer.core.bus import Message, StageRunner, make_producer
from observer.core.config import KafkaConfig
from observer.core.records import EmbeddingRecord, decode
from observer.core.topics import Topics
from tests.collectors_support import drain

TOPICS = Topics.from_config(KafkaConfig())
ROOT = Path(__file__).resolve().parents[1]

TEXTS = [
    "How do I reset my password on the billing portal?",
    "What is the capital of France, and how many people live there?",
    "Écris-moi un poème sur la mer. Привет, мир! 日本語のテキストも。",
    "",
    "x" * 10_000,
]


# -- the hashing embedder ---------------------------------------------------------------------

def test_rows_are_float32_and_l2_normalised() -> None:
    vectors = HashingEmbedder().embed(TEXTS)
    assert isinstance(HashingEmbedder(), Embedder)
    assert vectors.shape == (5, 256) and vectors.dtype == np.float32
    norms = np.linalg.norm(vectors, axis=1)
    np.testing.assert_allclose(norms[[0, 1, 2, 4]], 1.0, rtol=1e-6)
    assert norms[3] == 0.0, "an empty text is the zero vector"


def test_same_vectors_in_another_process() -> None:
    """Python's hash() is salted per process: the embedder must not depend on it."""
    code = ("import sys, json; from observer.collectors.normalize.embedders.hashing import "
            "HashingEmbedder; print(json.dumps(HashingEmbedder(seed=3).embed("
            "json.loads(sys.stdin.read())).tolist()))")
    env = {"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], input=json.dumps(TEXTS), env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    there = np.array(json.loads(done.stdout), dtype=np.float32)
    assert np.array_equal(there, HashingEmbedder(seed=3).embed(TEXTS))


def test_similar_texts_are_closer_than_unrelated_ones() -> None:
    e = HashingEmbedder()
    a, b, c, d = e.embed([
        "How can I reset my account password?",
        "how do i reset the password of my account",
        "The central bank raised interest rates by half a point.",
        "Interest rates were raised by the central bank.",
    ])
    assert a @ b > 0.4 and c @ d > 0.4
    assert max(abs(a @ c), abs(a @ d), abs(b @ c), abs(b @ d)) < 0.15


def test_a_batch_equals_one_by_one() -> None:
    e = HashingEmbedder(dimension=64)
    assert np.array_equal(e.embed(TEXTS), np.concatenate([e.embed([t]) for t in TEXTS]))
    # Texts never share n-grams across their boundary: order in the batch does not matter.
    assert np.array_equal(e.embed(TEXTS[::-1])[::-1], e.embed(TEXTS))


def test_seed_and_dimension_change_the_vectors_and_the_id() -> None:
    base, seeded, narrow = HashingEmbedder(), HashingEmbedder(seed=1), HashingEmbedder(64)
    assert len({base.id, seeded.id, narrow.id}) == 3
    assert not np.array_equal(base.embed(TEXTS[:1]), seeded.embed(TEXTS[:1]))
    assert narrow.embed(TEXTS[:1]).shape == (1, 64)
    with pytest.raises(ValueError, match="dimension 0"):
        HashingEmbedder(0)


def test_hostile_text_is_bounded_and_harmless() -> None:
    e = HashingEmbedder(max_chars=100)
    weird = ["\ud800 lone surrogate", "\x00nul\x00inside", "a" * 1_000_000, "🙂" * 50]
    vectors = e.embed(weird)
    assert np.isfinite(vectors).all() and vectors.shape == (4, 256)
    # Only the first max_chars characters count.
    assert np.array_equal(e.embed(["a" * 1_000_000]), e.embed(["a" * 100]))


# -- fastembed, a tiny local model ------------------------------------------------------------

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "in", "park", "stock", "market", "fell", "rates", "bank"]


def build_tiny_model(directory: Path, dimension: int = 16) -> tuple[Path, dict[str, int], Any]:
    """A fastembed model directory: an ONNX graph (token ids -> embedding rows), a WordLevel
    tokenizer and the config files fastembed reads."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    table = np.random.default_rng(0).normal(size=(len(vocab), dimension)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["last_hidden_state"], axis=0)],
        "tiny",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT,
                                       ["batch", "seq", dimension])],
        initializer=[numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(directory / "model.onnx"))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 64, "pad_token": "[PAD]"}))
    (directory / "config.json").write_text(json.dumps({"pad_token_id": 0}))
    return directory, vocab, table


def test_a_local_fastembed_model_loads_through_fastembed(tmp_path: Path) -> None:
    path, vocab, table = build_tiny_model(tmp_path / "tiny-model")
    e = FastembedEmbedder(str(path))
    assert (e.id, e.dimension) == ("fastembed:tiny-model/16", 16)
    texts = ["the cat sat on a mat", "Stock market fell", "the cat sat on a mat"]
    got = e.embed(texts)
    # What the graph and mean pooling give, computed here from the table itself.
    expected = np.stack([table[[vocab[w] for w in t.lower().split()]].mean(axis=0)
                         for t in texts])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.array_equal(got[0], got[2])


def test_a_missing_or_broken_model_fails_at_start_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"'{tmp_path}': no model.onnx"):
        Normalizer(TOPICS, embeddings=EmbeddingsConfig(embedder="fastembed",
                                                       model_path=str(tmp_path)))
    with pytest.raises(ValueError, match="model_path is empty"):
        FastembedEmbedder("")
    path, _, _ = build_tiny_model(tmp_path / "broken")
    (path / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match=f"'{path}': the model does not load"):
        FastembedEmbedder(str(path))


def test_without_the_extra_it_fails_at_start_with_the_pip_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from observer.core.extras import MissingExtra

    monkeypatch.setitem(sys.modules, "fastembed", None)  # as if not installed
    with pytest.raises(MissingExtra, match=r"pip install 'observer\[embeddings\]'"):
        Normalizer(TOPICS, embeddings=EmbeddingsConfig(embedder="fastembed",
                                                       model_path=str(tmp_path)))


def test_the_normaliser_uses_a_configured_fastembed_model(tmp_path: Path) -> None:
    path, _, _ = build_tiny_model(tmp_path / "m")
    cfg = EmbeddingsConfig(embedder="fastembed", model_path=str(path), model_name="tiny")
    (record,) = embeddings(Normalizer(TOPICS, embeddings=cfg), request(chat_span(
        "the dog ran in the park", "the cat sat on a mat")))
    assert (record.embedder, record.dimension, record.source) == ("fastembed:tiny/16", 16,
                                                                   "content")


# -- through the normaliser -------------------------------------------------------------------

def kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, AnyValue):
        return KeyValue(key=key, value=value)
    if isinstance(value, str):
        return KeyValue(key=key, value=AnyValue(string_value=value))
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=array(value))


def array(values: list[Any]) -> AnyValue:
    return AnyValue(array_value=ArrayValue(values=[kv("", v).value for v in values]))


def chat_span(prompt: str, answer: str, span_id: int = 2, model: str = "gpt-4o") -> dict[str, Any]:
    return {"span_id": span_id, "name": f"chat {model}", "attributes": {
        "gen_ai.operation.name": "chat", "gen_ai.request.model": model,
        "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [
            {"type": "text", "content": prompt}]}]),
        "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [
            {"type": "text", "content": answer}]}]),
    }}


def request(*spans: dict[str, Any], service: str = "shop") -> ExportTraceServiceRequest:
    out = ExportTraceServiceRequest()
    resource_spans = out.resource_spans.add()
    resource_spans.resource.attributes.append(kv("service.name", service))
    scope = resource_spans.scope_spans.add()
    for s in spans:
        span = scope.spans.add(trace_id=bytes([1] * 16), span_id=s["span_id"].to_bytes(8, "big"),
                               name=s["name"], start_time_unix_nano=1_700_000_000_000_000_000,
                               end_time_unix_nano=1_700_000_000_250_000_000)
        span.attributes.extend(kv(k, v) for k, v in s.get("attributes", {}).items())
        for name, attributes in s.get("events", []):
            event = span.events.add(name=name)
            event.attributes.extend(kv(k, v) for k, v in attributes.items())
    return out


def message(req: ExportTraceServiceRequest, offset: int = 0) -> Message:
    return Message(TOPICS.spans, 0, offset, None, req.SerializeToString(), 0)


def embeddings(normalizer: Normalizer, *requests: ExportTraceServiceRequest) -> list[EmbeddingRecord]:
    outputs = normalizer.process([message(r, i) for i, r in enumerate(requests)])
    return [decode(o.value) for o in outputs if o.topic == TOPICS.embeddings]  # type: ignore[misc]


def dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("observer_trace_vectors_dropped_total",
                                     {"reason": reason}) or 0.0


def test_one_record_per_call_keyed_like_its_llm_record_no_content_by_default() -> None:
    normalizer = Normalizer(TOPICS, embeddings=EmbeddingsConfig())
    outputs = normalizer.process([message(request(
        chat_span("How do I reset my password?", "Open settings, then security.", 2),
        chat_span("Reset password how?", "Settings, then security.", 3)))])
    llm = [o for o in outputs if o.topic == TOPICS.llm]
    emb = [o for o in outputs if o.topic == TOPICS.embeddings]
    assert len(llm) == len(emb) == 2 and {o.key for o in emb} == {o.key for o in llm}
    records = [decode(o.value) for o in emb]
    expected = HashingEmbedder().embed(["How do I reset my password?",
                                        "Open settings, then security."])
    first = next(r for r in records if r.span_id == "0000000000000002")
    assert isinstance(first, EmbeddingRecord) and first.source == "content"
    assert (first.embedder, first.dimension, first.model) == ("hashing-ngram-v1/256", 256, "gpt-4o")
    # Exact: float32 on the wire (base64), as the embedder made them.
    assert np.array_equal(np.float32(first.prompt_embedding), expected[0])
    assert np.array_equal(np.float32(first.response_embedding), expected[1])
    assert first.prompt_snippet is None and first.response_snippet is None
    assert b"reset" not in b"".join(o.value for o in emb), "no content without capture"


def test_the_fast_json_is_the_models_json() -> None:
    """The emitter writes content records' JSON itself (speed): it must be exactly what the
    record type would write, field by field, non-ASCII snippets included."""
    from observer.core.records import encode

    normalizer = Normalizer(TOPICS, content=ContentConfig(capture=True),
                            embeddings=EmbeddingsConfig())
    outputs = normalizer.process([message(request(chat_span("Привет, naïve “quotes” \\ ok",
                                                            "日本語")))])
    (raw,) = [o.value for o in outputs if o.topic == TOPICS.embeddings]
    record = decode(raw)
    assert isinstance(record, EmbeddingRecord) and record.prompt_snippet.startswith("Привет")
    assert json.loads(raw) == json.loads(encode(record))


def test_snippets_only_under_capture_and_redacted() -> None:
    normalizer = Normalizer(TOPICS, content=ContentConfig(capture=True),
                            embeddings=EmbeddingsConfig(snippet_chars=40))
    prompt = "mail me at ann@example.com " + "about my invoice " * 20
    (record,) = embeddings(normalizer, request(chat_span(prompt, "Sure.")))
    assert record.prompt_snippet == "mail me at [REDACTED:email] about my inv"  # 40 chars
    assert record.response_snippet == "Sure."


def test_spans_without_content_and_a_disabled_embedder_give_no_records() -> None:
    bare = {"span_id": 5, "name": "chat gpt-4o",
            "attributes": {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"}}
    assert embeddings(Normalizer(TOPICS, embeddings=EmbeddingsConfig()), request(bare)) == []
    off = Normalizer(TOPICS, embeddings=EmbeddingsConfig(enabled=False))
    assert embeddings(off, request(chat_span("q", "a"))) == []


def test_one_embedder_call_per_batch() -> None:
    calls: list[int] = []

    class Counting(HashingEmbedder):
        def embed(self, texts: Any) -> np.ndarray:
            calls.append(len(texts))
            return super().embed(texts)

    normalizer = Normalizer(TOPICS, embeddings=EmbeddingsConfig())
    assert normalizer.embeddings is not None
    normalizer.embeddings.embedder = Counting()
    got = embeddings(normalizer, *[request(chat_span(f"question {i}", f"answer {i}", 2 + i))
                                   for i in range(7)])
    assert len(got) == 7 and calls == [14]


def test_a_batch_processed_again_after_a_failure_gives_each_record_once() -> None:
    failures = [RuntimeError("embedder down")]

    class Flaky(HashingEmbedder):
        def embed(self, texts: Any) -> np.ndarray:
            if failures:
                raise failures.pop()
            return super().embed(texts)

    normalizer = Normalizer(TOPICS, embeddings=EmbeddingsConfig())
    assert normalizer.embeddings is not None
    normalizer.embeddings.embedder = Flaky()
    batch = [request(chat_span("q1", "a1", 2)), request(chat_span("q2", "a2", 3))]
    with pytest.raises(RuntimeError):
        embeddings(normalizer, *batch)
    assert sorted(r.span_id[-1] for r in embeddings(normalizer, *batch)) == ["2", "3"]


def sdk_request(build: Any) -> ExportTraceServiceRequest:
    """Spans made by the OpenTelemetry SDK, encoded by its OTLP exporter's encoder."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "rag"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    build(provider.get_tracer("test"))
    provider.shutdown()
    return encode_spans(exporter.get_finished_spans())


def test_openinference_embedding_spans_are_used_as_sent() -> None:
    def build(tracer: Any) -> None:
        with tracer.start_as_current_span("CreateEmbeddingResponse", attributes={
            "openinference.span.kind": "EMBEDDING",
            "embedding.model_name": "text-embedding-3-small",
            "embedding.embeddings.0.embedding.text": "first document",
            "embedding.embeddings.0.embedding.vector": [0.6, 0.8, 0.0],
            "embedding.embeddings.1.embedding.text": "second document",
            "embedding.embeddings.1.embedding.vector": [0.0, 0.0, 1.0],
        }):
            pass

    normalizer = Normalizer(TOPICS, embeddings=EmbeddingsConfig(),
                            content=ContentConfig(capture=True))
    records = embeddings(normalizer, sdk_request(build))
    assert [(r.source, r.embedder, r.service, r.prompt_snippet) for r in records] == [
        ("trace", "trace:text-embedding-3-small/3", "rag", "first document"),
        ("trace", "trace:text-embedding-3-small/3", "rag", "second document"),
    ]
    assert [np.float32(r.prompt_embedding).tolist() for r in records] == [
        np.float32([0.6, 0.8, 0.0]).tolist(), [0.0, 0.0, 1.0]]


def test_openllmetry_query_vectors_are_used_as_sent() -> None:
    def build(tracer: Any) -> None:
        with tracer.start_as_current_span("chroma.query", attributes={
                "db.system": "chroma", "vector_db.vendor": "Chroma"}) as span:
            span.add_event("db.query.embeddings", {"db.query.embeddings.vector": [0.1, 0.2]})
            # OpenLLMetry's JavaScript SDK sends the vector as JSON text.
            span.add_event("db.query.embeddings", {"db.query.embeddings.vector": "[0.3, 0.4]"})

    records = embeddings(Normalizer(TOPICS, embeddings=EmbeddingsConfig()), sdk_request(build))
    assert [(r.embedder, r.service, np.float32(r.prompt_embedding).tolist()) for r in records] == [
        ("trace:unknown/2", "rag", np.float32([0.1, 0.2]).tolist()),
        ("trace:unknown/2", "rag", np.float32([0.3, 0.4]).tolist())]


def test_a_new_model_or_dimension_is_a_new_embedder_id() -> None:
    def spans(model: str, dims: int, span_id: int) -> dict[str, Any]:
        return {"span_id": span_id, "name": "embed", "attributes": {
            "openinference.span.kind": "EMBEDDING", "embedding.model_name": model,
            "embedding.embeddings.0.embedding.vector": [0.5] * dims}}

    normalizer = Normalizer(TOPICS, embeddings=EmbeddingsConfig())
    ids = [r.embedder for r in embeddings(normalizer, request(
        spans("m1", 4, 2), spans("m1", 4, 3), spans("m2", 4, 4), spans("m2", 8, 5)))]
    assert ids == ["trace:m1/4", "trace:m1/4", "trace:m2/4", "trace:m2/8"]


def test_hostile_vectors_are_dropped_and_counted_never_fatal() -> None:
    nan, huge = AnyValue(double_value=float("nan")), AnyValue(double_value=1e300)
    cases = {
        "not_finite": [1.0, nan],
        "not_numeric": ["a", "b"],
        "too_long": [0.0] * 5000,
    }
    before = {reason: dropped(reason) for reason in (*cases, "ragged")}
    spans = [{"span_id": 10 + i, "name": "embed", "attributes": {
        "openinference.span.kind": "EMBEDDING",
        "embedding.embeddings.0.embedding.vector": values}}
        for i, values in enumerate(cases.values())]
    spans.append({"span_id": 20, "name": "embed", "attributes": {  # mixed dimensions
        "embedding.embeddings.0.embedding.vector": [0.1, 0.2],
        "embedding.embeddings.1.embedding.vector": [0.1, 0.2, 0.3]}})
    spans.append({"span_id": 21, "name": "chroma.query", "events": [
        ("db.query.embeddings", {"db.query.embeddings.vector": "[" + "0," * 1_000_000 + "0]"}),
        ("db.query.embeddings", {"db.query.embeddings.vector": "[1, [2]]"}),
        ("db.query.embeddings", {"db.query.embeddings.vector": [huge, huge]}),
        ("db.query.embeddings", {"db.query.embeddings.vector": AnyValue(
            array_value=ArrayValue(values=[AnyValue(double_value=0.0)] * 200_000))}),
        ("db.query.embeddings", {"db.query.embeddings.vector": [0.25, 0.5]}),  # the good one
    ]})
    spans.append(chat_span("still embedded", "fine", 30))
    records = embeddings(Normalizer(TOPICS, embeddings=EmbeddingsConfig()), request(*spans))
    assert [(r.span_id[-2:], r.source, r.prompt_embedding is not None) for r in records] == [
        ("15", "trace", True), ("1e", "content", True)]
    assert records[0].prompt_embedding == [0.25, 0.5]
    assert dropped("not_finite") - before["not_finite"] == 2  # NaN; 1e300 past float32
    assert dropped("not_numeric") - before["not_numeric"] == 2  # strings; a nested list
    assert dropped("too_long") - before["too_long"] == 3  # 5000 dims; 1e6 as JSON and as array
    assert dropped("ragged") - before["ragged"] == 2


def test_configuration_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from observer.config import ObserverConfig

    monkeypatch.setenv("OBSERVER_NORMALIZER__EMBEDDINGS__DIMENSION", "64")
    monkeypatch.setenv("OBSERVER_NORMALIZER__EMBEDDINGS__SEED", "9")
    monkeypatch.setenv("OBSERVER_KAFKA__TOPIC_RETENTION_MS", '{"embeddings": 3600000}')
    cfg = ObserverConfig()
    assert (cfg.normalizer.embeddings.dimension, cfg.normalizer.embeddings.seed) == (64, 9)
    topics = Topics.from_config(cfg.kafka)
    assert topics.configs(cfg.kafka)[topics.embeddings] == {"retention.ms": "3600000"}
    assert NormalizerConfig().embeddings.enabled, "on by default"
    with pytest.raises(ValueError, match="unknown topic"):
        KafkaConfig(topic_retention_ms={"embedings": 1})


def test_vectors_travel_as_base64_float32_and_lists_are_still_read() -> None:
    from observer.core.records import encode

    record = EmbeddingRecord(service="s", model="m", trace_id="t", span_id="s",
                             embedder="e/2", dimension=2, source="content",
                             prompt_embedding=[0.5, -0.25])
    raw = json.loads(encode(record))
    assert raw["prompt_embedding"] == "AAAAPwAAgL4=" and raw["response_embedding"] is None
    assert decode(encode(record)) == record
    assert decode(json.dumps({**raw, "prompt_embedding": [0.5, -0.25]})) == record
    for bad in ("AAAAPwAA", "not base64!", "AADAfw=="):  # 6 bytes; junk; a NaN
        with pytest.raises(ValueError, match="embedding"):
            decode(json.dumps({**raw, "prompt_embedding": bad}))


# -- on the shared broker ---------------------------------------------------------------------

def test_records_reach_the_embeddings_topic(kafka_config: KafkaConfig, topics: Topics) -> None:
    """Spans on otlp_spans in, observer.embeddings out, through the stage runner; the topic
    was created with its own retention (tests/conftest.py's ensure_topics)."""
    from observer.collectors.normalize.spec import SPEC

    assert "embeddings" in SPEC.outputs
    assert topics.configs(kafka_config)[topics.embeddings] == {"retention.ms": str(7 * 86400000)}
    normalizer = Normalizer(topics, embeddings=EmbeddingsConfig())
    runner = StageRunner(kafka_config, normalizer, "g-embeddings", [topics.spans])
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,))
    thread.start()
    try:
        producer = make_producer(kafka_config)
        for i in range(3):
            producer.send(topics.spans, request(chat_span(f"question {i}", f"answer {i}", 2 + i))
                          .SerializeToString())
        producer.flush()
        producer.close()
        got = drain(kafka_config, topics.embeddings, 3, timeout_s=30)
    finally:
        stop.set()
        thread.join(10)
    assert runner.error is None
    records = [decode(r.value) for r in got]
    assert len(records) == 3 and all(isinstance(r, EmbeddingRecord) for r in records)
    assert {r.key.decode() for r in got} == {"shop|gpt-4o"}
    assert sorted(r.span_id for r in records) == [f"{2 + i:016x}" for i in range(3)]
