"""Evaluation and feedback records (``observer.evals/v1``, issue 16): inline OpenInference
results, EVALUATOR carrier spans and ``gen_ai.evaluation.result`` events sent by the real OTel
SDK to observer's receiver and normalised; Phoenix's REST annotation body sent by Phoenix's
own client (``arize-phoenix-client``) to the receiver's port, with tenancy and auth; hostile
values and bodies refused or dropped, never crashing a stage."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from observer.collectors.normalize.config import ContentConfig, NormalizerConfig
from observer.collectors.normalize.message_content import ContentCapture
from observer.collectors.normalize.normalizer import Normalizer, normalize_request
from observer.collectors.receiver.config import ReceiverConfig
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from phoenix.client import Client
from pydantic import SecretStr

from observer.config import ObserverConfig
from observer.core.bus import Message
from observer.core.config import AdminConfig, KafkaConfig
from observer.core.records import EvalRecord, decode
from observer.core.topics import Topics
from observer.runtime import Runtime
from tests.collectors_support import drain, intake_server, receivers, sample

TOPICS = Topics.from_config(KafkaConfig(topic_prefix="unit."))


def _chat(tracer: trace.Tracer, **attributes: Any) -> trace.Span:
    span = tracer.start_span("chat gpt-4o", attributes={
        "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o", **attributes})
    return span


def _judged_app(tracer: trace.Tracer) -> trace.SpanContext:
    """An app's LLM call carrying span, trace and session results and a GenAI event; then a
    post-hoc EVALUATOR span (another trace) linked to it. Returns the judged span's context."""
    span = _chat(tracer, **{
        "session.id": "sess-1",
        "evaluations.0.evaluation.name": "faithfulness",
        "evaluations.0.evaluation.score": 0.25,
        "evaluations.0.evaluation.label": "unfaithful",
        "evaluations.0.evaluation.explanation": "claims a price not in the documents",
        "evaluations.0.evaluation.annotator_kind": "LLM",
        "evaluations.0.evaluation.identifier": "judge-v2",
        "trace.annotations.0.annotation.name": "task_success",
        "trace.annotations.0.annotation.label": "success",
        "trace.annotations.0.annotation.annotator_kind": "CODE",
        "session.annotations.0.annotation.name": "coherence",
        "session.annotations.0.annotation.score": 4,
        "session.annotations.0.annotation.annotator_kind": "HUMAN",
    })
    span.add_event("gen_ai.evaluation.result", {
        "gen_ai.evaluation.name": "relevance", "gen_ai.evaluation.score.value": 0.75,
        "gen_ai.evaluation.score.label": "relevant", "gen_ai.response.id": "chatcmpl-1"})
    span.end()
    judged = span.get_span_context()
    evaluator = tracer.start_span(
        "hallucination evaluation", context=trace.set_span_in_context(trace.INVALID_SPAN),
        links=[trace.Link(judged)], attributes={
            "openinference.span.kind": "EVALUATOR",
            "evaluations.0.evaluation.name": "hallucination",
            "evaluations.0.evaluation.label": "hallucinated",
            "evaluations.0.evaluation.score": 1,
            "evaluations.0.evaluation.annotator_kind": "HUMAN"})
    evaluator.add_event("gen_ai.evaluation.result", {
        "gen_ai.evaluation.name": "toxicity", "gen_ai.evaluation.score.value": 0.0})
    evaluator.end()
    return judged


def _evals(outputs: list[Any], topics: Topics) -> list[tuple[str, EvalRecord]]:
    return [(o.key, decode(o.value)) for o in outputs if o.topic == topics.evals]


def test_trace_results_through_the_sdk_and_receiver(kafka_config: KafkaConfig,
                                                    topics: Topics) -> None:
    with receivers(kafka_config, topics) as r:
        provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
        provider.add_span_processor(SimpleSpanProcessor(
            OTLPSpanExporter(endpoint=f"{r.http}/v1/traces")))
        judged = _judged_app(provider.get_tracer("app"))
        provider.shutdown()
    messages = [Message.of(m) for m in drain(kafka_config, topics.spans, 2)]
    found = _evals(Normalizer(topics).process(messages), topics)
    by_name = {rec.name: (key, rec) for key, rec in found}
    assert set(by_name) == {"faithfulness", "task_success", "coherence", "relevance",
                            "hallucination", "toxicity"}
    trace_id, span_id = f"{judged.trace_id:032x}", f"{judged.span_id:016x}"

    key, faith = by_name["faithfulness"]
    assert (faith.target, faith.source, faith.score, faith.label, faith.annotator_kind) == (
        "span", "inline", 0.25, "unfaithful", "llm")
    assert (faith.trace_id, faith.span_id, faith.session_id, key) == (
        trace_id, span_id, "sess-1", trace_id)
    assert (faith.service, faith.model, faith.identifier) == ("shop", "gpt-4o", "judge-v2")
    # Without content capture only the explanation's length is kept.
    assert faith.explanation is None and faith.explanation_chars == 35

    _, success = by_name["task_success"]
    assert (success.target, success.trace_id, success.span_id, success.label,
            success.annotator_kind, success.score) == ("trace", trace_id, "", "success", "code", None)
    _, coherence = by_name["coherence"]
    assert (coherence.target, coherence.session_id, coherence.score,
            coherence.annotator_kind) == ("session", "sess-1", 4.0, "human")
    _, relevance = by_name["relevance"]
    assert (relevance.source, relevance.target, relevance.span_id, relevance.response_id,
            relevance.annotator_kind) == ("genai_event", "span", span_id, "chatcmpl-1", "other")

    # The EVALUATOR carrier's results are about its link's target, not the carrier.
    for name in ("hallucination", "toxicity"):
        key, rec = by_name[name]
        assert (rec.source, rec.target, rec.trace_id, rec.span_id, key) == (
            "evaluator_span", "span", trace_id, span_id, trace_id)
        assert rec.model == ""  # the carrier's trace is the judge's, not the app's
    assert by_name["hallucination"][1].score == 1.0


def _request(*spans_of: Any) -> Any:
    exporter = InMemorySpanExporter()
    # Room for more attributes than the SDK's default 128 (the hostile test sends 200).
    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}),
                              span_limits=SpanLimits(max_span_attributes=1000))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("app")
    for make in spans_of:
        make(tracer)
    return encode_spans(exporter.get_finished_spans())


def test_explanation_text_only_under_content_capture() -> None:
    request = _request(_judged_app)
    captured = [r for r in normalize_request(request, ContentCapture(ContentConfig(capture=True)))
                if isinstance(r, EvalRecord) and r.name == "faithfulness"]
    assert captured[0].explanation == "claims a price not in the documents"
    plain = [r for r in normalize_request(request) if isinstance(r, EvalRecord)]
    assert plain and all(r.explanation is None for r in plain)


def test_hostile_trace_results_are_dropped_and_counted() -> None:
    def hostile(tracer: trace.Tracer) -> None:
        _chat(tracer, **{
            "evaluations.0.evaluation.name": "nan_score",
            "evaluations.0.evaluation.score": float("nan"),      # dropped: no result left
            "evaluations.1.evaluation.score": 0.5,                # no name
            "evaluations.2.evaluation.name": "ok",
            "evaluations.2.evaluation.score": "1e999",            # not finite: left out...
            "evaluations.2.evaluation.label": "x" * 10_000,       # ...label capped
            "evaluations.2.evaluation.annotator_kind": ["LLM"],   # not a string: other
            "evaluations.3.annotation.name": "mixed_form",        # not OpenInference: ignored
            "session.evaluations.0.evaluation.name": "no_session",
            "session.evaluations.0.evaluation.score": 1,           # no session.id: dropped
        }).end()
        many = {f"{form}s.{i}.{form}.{f}": v for form in ("evaluation", "annotation")
                for i in range(50) for f, v in (("name", f"{form[0]}{i}"), ("score", i))}
        many["evaluations.70.evaluation.name"] = "beyond"  # past MAX_INDEX: not read
        many["evaluations.70.evaluation.score"] = 1
        _chat(tracer, **many).end()
        # An EVALUATOR span must link exactly one target.
        tracer.start_span("eval", context=trace.set_span_in_context(trace.INVALID_SPAN),
                          attributes={"openinference.span.kind": "EVALUATOR",
                                      "evaluations.0.evaluation.name": "orphan",
                                      "evaluations.0.evaluation.score": 1}).end()

    fields = ("eval_name", "eval_score", "eval_result", "session_id", "eval_target", "evals")
    before = [sample("observer_invalid_values_total", stage="normalizer", field=f)
              for f in fields]
    records = [r for r in normalize_request(_request(hostile)) if isinstance(r, EvalRecord)]
    names = [r.name for r in records]
    assert "ok" in names and not {"nan_score", "no_session", "orphan", "mixed_form"} & set(names)
    ok = records[names.index("ok")]
    assert ok.score is None and len(ok.label or "") == 128 and ok.annotator_kind == "other"
    # 100 results on one span: MAX_RESULTS_PER_SPAN kept, the rest counted (evals).
    assert len([n for n in names if n[0] in "ea" and n[1:].isdigit()]) == 64
    assert "beyond" not in names
    for field, count in zip(fields, before):
        assert sample("observer_invalid_values_total", stage="normalizer",
                      field=field) > count, field


# Phoenix's REST intake -------------------------------------------------------------------

def _base(url: str) -> str:
    return url.removesuffix("/v1/kserve")


def test_phoenix_client_annotations_become_records(kafka_config: KafkaConfig,
                                                   topics: Topics) -> None:
    tenants = {"acme": SecretStr("t-acme")}
    with intake_server(kafka_config, topics, tenants=tenants) as url:
        client = Client(base_url=_base(url), api_key="t-acme")
        inserted = client.spans.log_span_annotations(span_annotations=[
            {"span_id": "0123456789ABCDEF", "name": "correctness", "annotator_kind": "LLM",
             "result": {"label": "correct", "score": 0.9, "explanation": "matches the docs"},
             "identifier": "judge-v1", "metadata": {"model": "gpt-4o"}},
        ], sync=True)
        client.spans.add_span_annotation(span_id="fedcba9876543210", annotation_name="user_feedback",
                                         label="thumbs_down")  # a thumb, as a label only
        again = client.spans.log_span_annotations(span_annotations=[
            {"span_id": "0123456789abcdef", "name": "correctness", "annotator_kind": "LLM",
             "result": {"score": 0.8}, "identifier": "judge-v1"}], sync=True)
        trace_id = "ab" * 16
        httpx.post(f"{_base(url)}/v1/trace_annotations", headers={
            "Authorization": "Bearer t-acme"}, json={"data": [
                {"trace_id": trace_id, "name": "rating", "annotator_kind": "HUMAN",
                 "result": {"score": 4}}]}).raise_for_status()
    # Phoenix's answer: one id per item, the same for the same target, name and identifier.
    assert inserted is not None and again is not None and inserted[0]["id"] == again[0]["id"]
    got = {(r.key.decode(), decode(r.value)) for r in drain(kafka_config, topics.evals, 4)}
    records = {rec.name + str(rec.score): (key, rec) for key, rec in got}
    key, rec = records["correctness0.9"]
    assert key == "0123456789abcdef" and rec.span_id == key and rec.target == "span"
    assert (rec.tenant, rec.source, rec.label, rec.annotator_kind, rec.identifier,
            rec.explanation, rec.explanation_chars) == (
        "acme", "rest", "correct", "llm", "judge-v1", None, 16)
    key, thumb = records["user_feedback0.0"]
    assert (key, thumb.label, thumb.annotator_kind) == ("fedcba9876543210", "thumbs_down", "human")
    key, rating = records["rating4.0"]
    assert (key, rating.target, rating.trace_id) == (trace_id, "trace", trace_id)
    assert "correctness0.8" in records


ITEM = b'{"data": [{"span_id": "0123456789abcdef", "name": %s}]}'


@pytest.mark.parametrize("body, status, names", [
    (b"not json", 422, "not a Phoenix annotations body"),
    (b'{"data": {}}', 422, "data"),
    (b'{"data": [{"name": "x", "annotator_kind": "LLM", "result": {"score": 1}}]}', 422,
     "data.0.span_id: required"),
    (b'{"data": [{"span_id": "zz", "name": "x", "annotator_kind": "LLM"}]}', 422,
     "data.0.span_id"),
    (ITEM % b'"x", "annotator_kind": "ROBOT", "result": {"score": 1}', 422,
     "data.0.annotator_kind"),
    (ITEM % b'"x", "annotator_kind": "LLM", "result": {"score": NaN}', 422,
     "not a Phoenix annotations body"),
    (ITEM % b'"x", "annotator_kind": "LLM", "result": {"score": "1"}', 422,
     "data.0.result.score"),
    (ITEM % b'"x", "annotator_kind": "LLM", "result": {}', 422,
     "data.0.result: give a label, a score or an explanation"),
    (ITEM % b'"", "annotator_kind": "LLM", "result": {"score": 1}', 422, "data.0.name"),
    (b'{"data": ' + b"[" * 5000 + b"]" * 5000 + b"}", 422, "not a Phoenix annotations body"),
])
def test_hostile_bodies_are_refused_naming_the_problem(kafka_config: KafkaConfig, topics: Topics,
                                                       body: bytes, status: int,
                                                       names: str) -> None:
    with intake_server(kafka_config, topics) as url:
        answer = httpx.post(f"{_base(url)}/v1/span_annotations", content=body,
                            headers={"Content-Type": "application/json"})
    assert answer.status_code == status, answer.text
    assert names in answer.json()["message"]


def test_auth_type_and_size_refusals(kafka_config: KafkaConfig, topics: Topics) -> None:
    good = {"data": [{"span_id": "0123456789abcdef", "name": "x", "annotator_kind": "HUMAN",
                      "result": {"score": 1}}]}
    with intake_server(kafka_config, topics, tenants={"acme": SecretStr("t-acme")},
                       max_body_bytes=4096) as url:
        base = _base(url)
        with pytest.raises(httpx.HTTPStatusError) as refused:
            Client(base_url=base, api_key="wrong").spans.log_span_annotations(
                span_annotations=good["data"])
        assert refused.value.response.status_code == 401
        assert httpx.post(f"{base}/v1/span_annotations", json=good).status_code == 401
        two = httpx.post(f"{base}/v1/span_annotations", json=good, headers=[
            ("Authorization", "Bearer t-acme"), ("Authorization", "Bearer t-acme")])
        assert two.status_code == 401 and "duplicate" in two.json()["message"]
        auth = {"Authorization": "Bearer t-acme"}
        form = httpx.post(f"{base}/v1/span_annotations", content=json.dumps(good),
                          headers={**auth, "Content-Type": "text/plain"})
        assert form.status_code == 415 and "application/json" in form.json()["message"]
        big = {"data": [{**good["data"][0], "result": {"explanation": "x" * 10_000}}]}
        assert httpx.post(f"{base}/v1/span_annotations", json=big, headers=auth).status_code == 413
        note = {**good["data"][0], "name": "note", "result": {"explanation": "see ticket"}}
        assert httpx.post(f"{base}/v1/span_annotations", json={"data": [note, *good["data"]]},
                          headers=auth).json() == {"data": []}  # Phoenix ignores notes
    # Only the last request wrote: one record (the note shares its key and partition, and
    # would have come first).
    got = [decode(r.value) for r in drain(kafka_config, topics.evals, 1)]
    assert [(r.tenant, r.name) for r in got] == [("acme", "x")]


def test_runtime_serves_annotations_and_normalises_trace_results(kafka_config: KafkaConfig,
                                                                  free_port: Any) -> None:
    """As ``observer up`` runs them: the collect stage's HTTP port takes Phoenix's body and
    the normaliser turns a trace's inline results into records on the same topic."""
    cfg = ObserverConfig(
        kafka=kafka_config,
        receiver=ReceiverConfig(http_port=free_port(), grpc_port=free_port()),
        admin=AdminConfig(port=free_port()),
        normalizer=NormalizerConfig(group_id="evals-test"),
    )
    topics = Topics.from_config(kafka_config)
    runtime = Runtime(cfg, ["collect", "normalize"]).start()
    try:
        assert runtime.wait_assigned(60)
        endpoints = runtime.endpoints()
        provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
        provider.add_span_processor(SimpleSpanProcessor(
            OTLPSpanExporter(endpoint=endpoints["otlp_http"])))
        judged = _judged_app(provider.get_tracer("app"))
        provider.shutdown()
        Client(base_url=endpoints["span_annotations"].removesuffix("/v1/span_annotations")
               ).spans.add_span_annotation(span_id=f"{judged.span_id:016x}",
                                           annotation_name="user_feedback", label="thumbs_up")
        got = [decode(r.value) for r in drain(kafka_config, topics.evals, 7, timeout_s=60)]
    finally:
        runtime.stop()
    assert sorted((r.source, r.name) for r in got) == [
        ("evaluator_span", "hallucination"), ("evaluator_span", "toxicity"),
        ("genai_event", "relevance"), ("inline", "coherence"), ("inline", "faithfulness"),
        ("inline", "task_success"), ("rest", "user_feedback")]
    feedback = next(r for r in got if r.source == "rest")
    assert (feedback.score, feedback.span_id) == (1.0, f"{judged.span_id:016x}")
