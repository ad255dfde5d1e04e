"""Text descriptors at normalisation (issue 15): words, sentences, non-letter share, refusal,
JSON validity, links and script of each side's content, on ``observer.llm`` records, for every
convention the normaliser reads, with or without content capture; hostile content never
fails the stage."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from observer.collectors.normalize import text_descriptors
from observer.collectors.normalize.config import ContentConfig, NormalizerConfig
from observer.collectors.normalize.message_content import texts
from observer.collectors.normalize.normalizer import Normalizer
from observer.collectors.normalize.spec import SPEC
from observer.collectors.normalize.text_descriptors import TextDescriptors, describe
from observer.drift.config import DriftConfig, FeatureSpec
from observer.drift.scoring import drift_share, score_feature
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue, KeyValueList
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from pydantic import ValidationError

from observer.config import ObserverConfig
from observer.core.bus import Message
from observer.core.config import KafkaConfig
from observer.core.records import LLMCall, decode
from observer.core.topics import Topics
from tests.collectors_support import drain_spans, receivers

TOPICS = Topics.from_config(KafkaConfig())
FIELDS = ("words", "sentences", "non_letter_share", "refusal", "json_valid", "links", "script")

# text -> (words, sentences, non-letter share, refusal, JSON valid, links, script)
KNOWN: dict[str, tuple[Any, ...]] = {
    "The order ships today. You will get a link by e-mail!": (11, 2, 3 / 43, False, False, 0, "latin"),
    "Привет, мир! Как дела?": (4, 2, 3 / 19, False, False, 0, "cyrillic"),
    "你好，世界。今天天气很好！": (10, 2, 3 / 13, False, False, 0, "han"),
    # Japanese: kana with Han, one word per character.
    "申し訳ありませんが、その質問にはお答えできません。": (23, 1, 2 / 25, True, False, 0, "kana"),
    "مرحبا بالعالم. كيف حالك؟": (4, 2, 2 / 21, False, False, 0, "arabic"),
    "שלום עולם. מה שלומך?": (4, 2, 2 / 17, False, False, 0, "hebrew"),
    "Γειά σου Κόσμε. Τι κάνεις;": (5, 2, 2 / 22, False, False, 0, "greek"),
    "안녕하세요 세계. 잘 지내요?": (4, 2, 2 / 13, False, False, 0, "hangul"),
    # Devanagari vowel signs are combining marks: letters, not punctuation.
    "नमस्ते दुनिया। आप कैसे हैं?": (5, 2, 2 / 23, False, False, 0, "devanagari"),
    "Hello Привет мир world": (4, 1, 0.0, False, False, 0, "mixed"),
    "12345 + 678 = 13023": (5, 1, 1.0, False, False, 0, "none"),
    "": (0, 0, 0.0, False, False, 0, "none"),
    '{"answer": 42, "see": ["https://a.example/x", "www.b.example"]}':
        (5, 1, 25 / 59, False, True, 2, "latin"),
    "```json\n[1, 2]\n```": (4, 1, 11 / 15, False, True, 0, "latin"),
    "{not json": (2, 1, 1 / 8, False, False, 0, "latin"),
    "See https://example.com/a?b=1 and http://x.org, or www.y.net.":
        (6, 1, 16 / 56, False, False, 3, "latin"),
}

# One refusal and one ordinary answer per language of the built-in table.
REFUSALS: dict[str, tuple[str, str]] = {
    "en": ("I’m sorry, but I can’t help with that.", "Sorry for the delay, here is the answer."),
    "de": ("Es tut mir leid, aber ich kann Ihnen dabei nicht helfen.", "Ich kann Ihnen gern helfen."),
    "fr": ("Je suis désolé, mais je ne peux pas vous aider.", "Je peux vous aider volontiers."),
    "es": ("Lo siento, pero no puedo ayudar con eso.", "Puedo ayudarte con eso."),
    "pt": ("Desculpe, mas não posso ajudar com isso.", "Posso ajudar com isso."),
    "it": ("Mi dispiace, ma non posso aiutarti.", "Posso aiutarti volentieri."),
    "zh": ("抱歉，我无法帮助你。", "我可以帮助你。"),
    "ja": ("申し訳ございませんが、お手伝いできません。", "喜んでお手伝いします。"),
    "ru": ("К сожалению, я не могу помочь с этим.", "Я могу помочь с этим."),
}


@pytest.mark.parametrize("text", KNOWN)
def test_descriptors_of_known_texts(text: str) -> None:
    expected = dict(zip(FIELDS, KNOWN[text]))
    got = describe(text)._asdict()
    assert got.pop("non_letter_share") == pytest.approx(expected.pop("non_letter_share"))
    assert got == expected


def test_ascii_word_count_is_whitespace_split() -> None:
    """The counting shortcut of ASCII text agrees with ``str.split`` (runs of spaces, tabs,
    line breaks, leading and trailing white space)."""
    rng = random.Random(15)
    for _ in range(2000):
        text = "".join(rng.choice("ab.! \t\n\r\x0b\x0c\x1c\x1f") for _ in range(rng.randint(0, 30)))
        assert describe(text).words == len(text.split()), repr(text)


@pytest.mark.parametrize("language", REFUSALS)
def test_refusal_table_covers_each_language(language: str) -> None:
    refusal, ordinary = REFUSALS[language]
    assert describe(refusal).refusal and not describe(ordinary).refusal
    # Only the start of a text is searched: a refusal phrase deep in a long answer is not one.
    assert not describe("Fine. " * 100 + refusal).refusal


def test_refusal_patterns_are_configurable() -> None:
    """A language named in ``normalizer.refusal_patterns`` replaces its built-in list; a new
    one is added; a pattern that does not compile fails the config, naming it."""
    cfg = NormalizerConfig(refusal_patterns={"en": [], "nl": ["het spijt me"]})
    descriptors = TextDescriptors(cfg.refusal_patterns)
    got = descriptors.fields({"input": "I can't help with that.", "output": "Het spijt me, nee."})
    assert got["input_refusal"] is False and got["output_refusal"] is True
    assert descriptors.fields({"output": "Lo siento, pero no puedo."})["output_refusal"] is True
    with pytest.raises(ValidationError, match=r"refusal_patterns\['nl'\].*'\(unclosed'"):
        NormalizerConfig(refusal_patterns={"nl": ["(unclosed"]})


def test_hostile_texts_are_described() -> None:
    """Lone surrogates, NUL bytes, a huge text, deep or huge JSON: numbers, never an error."""
    assert describe("\ud800\udfff lone \udc00 surrogates").script == "latin"
    assert describe("\x00\x01\x02 bin\xff\xfe").words == 2
    huge = describe("word " * 2_000_000)  # 10 MB: the beginning is described
    assert huge.words == text_descriptors.MAX_DESCRIBED_CHARS // 5 and huge.json_valid is None
    assert describe("[" * 100_000 + "]" * 100_000).json_valid is False  # too deep to decode
    big_json = json.dumps({"rows": ["x" * 100] * 9_000})  # ~1 MB, at most MAX_JSON_CHARS
    assert describe(big_json).json_valid is True


def span_request(
    attributes: dict[str, Any], events: list[tuple[str, dict[str, AnyValue]]] | None = None
) -> ExportTraceServiceRequest:
    """One LLM span with ``attributes`` (strings, or AnyValues as they are) and span events."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.add(key="service.name", value=AnyValue(string_value="shop"))
    span = resource_spans.scope_spans.add().spans.add(
        trace_id=bytes([1] * 16), span_id=bytes([2] * 8), name="chat gpt-4o",
        start_time_unix_nano=1, end_time_unix_nano=2,
    )
    for key, value in {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
                       **attributes}.items():
        span.attributes.add(key=key, value=value if isinstance(value, AnyValue)
                            else AnyValue(string_value=value))
    for name, event_attributes in events or []:
        event = span.events.add(name=name, time_unix_nano=1)
        event.attributes.extend(KeyValue(key=k, value=v) for k, v in event_attributes.items())
    return request


def normalised(request: ExportTraceServiceRequest, **settings: Any) -> tuple[LLMCall, bytes]:
    """The LLM record of a one-span request, and its raw value; no dead letters."""
    message = Message(TOPICS.spans, 0, 0, None, request.SerializeToString(), 0)
    outputs = Normalizer(TOPICS, **settings).process([message])
    assert [o.topic for o in outputs] == [TOPICS.llm]
    record = decode(outputs[0].value)
    assert isinstance(record, LLMCall)
    return record, outputs[0].value


def text_value(text: str) -> AnyValue:
    return AnyValue(string_value=text)


QUESTION, ANSWER = "Wo ist meine Bestellung? Sie fehlt.", "I’m sorry, but I can’t help with that."
GENAI_JSON = {
    "gen_ai.input.messages": json.dumps(
        [{"role": "user", "parts": [{"type": "text", "content": QUESTION}]}]),
    "gen_ai.output.messages": json.dumps(
        [{"role": "assistant", "parts": [{"type": "text", "content": ANSWER}]}]),
}
# Convention -> (span attributes, span events), each carrying QUESTION and ANSWER.
CONVENTIONS: dict[str, tuple[dict[str, Any], list[tuple[str, dict[str, AnyValue]]]]] = {
    "OpenTelemetry GenAI JSON": (GENAI_JSON, []),
    "OpenInference messages": ({
        "llm.input_messages.0.message.role": "user",
        "llm.input_messages.0.message.content": QUESTION,
        "llm.output_messages.0.message.role": "assistant",
        "llm.output_messages.0.message.content": ANSWER,
        "input.value": "ignored: the messages come first",
    }, []),
    "OpenInference input.value": ({
        "input.value": QUESTION, "input.mime_type": "text/plain",
        "output.value": ANSWER,
    }, []),
    "OpenLLMetry indexed": ({
        "gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": QUESTION,
        "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.content": ANSWER,
    }, []),
    "older GenAI events": ({}, [
        ("gen_ai.user.message", {"content": text_value(QUESTION)}),
        ("gen_ai.choice", {"message": AnyValue(kvlist_value=KeyValueList(values=[
            KeyValue(key="role", value=text_value("assistant")),
            KeyValue(key="content", value=text_value(ANSWER))]))}),
    ]),
    "older GenAI events, JSON bodies": ({}, [
        ("gen_ai.user.message", {"body": text_value(json.dumps({"content": QUESTION}))}),
        ("gen_ai.choice", {"body": text_value(json.dumps(
            {"index": 0, "message": {"role": "assistant", "content": ANSWER}}))}),
    ]),
    "semconv 1.27 content events": ({}, [
        ("gen_ai.content.prompt", {"gen_ai.prompt": text_value(
            json.dumps([{"role": "user", "content": QUESTION}]))}),
        ("gen_ai.content.completion", {"gen_ai.completion": text_value(
            json.dumps([{"role": "assistant", "content": ANSWER}]))}),
    ]),
}


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_each_convention_yields_descriptors_without_storing_content(convention: str) -> None:
    attributes, events = CONVENTIONS[convention]
    record, raw = normalised(span_request(attributes, events))
    assert (record.input_words, record.input_sentences, record.input_script) == (6, 2, "latin")
    assert (record.output_words, record.output_refusal, record.output_json_valid) == (8, True, False)
    assert record.input_refusal is False and record.output_links == 0
    assert record.input_chars == len(QUESTION) and record.output_chars == len(ANSWER)
    # Descriptors without capture: numbers only, the text is nowhere in the record.
    assert record.input_content is None and record.output_content is None
    assert QUESTION.encode() not in raw and b"Bestellung" not in raw
    captured, _ = normalised(span_request(attributes, events),
                             content=ContentConfig(capture=True))
    assert [m["content"] for m in captured.output_content or []] == [ANSWER]
    assert captured.output_words == record.output_words


def test_openinference_json_value_is_taken_as_is() -> None:
    value = json.dumps({"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4o"})
    record, _ = normalised(span_request({"input.value": value,
                                         "input.mime_type": "application/json"}))
    assert record.input_chars == len(value) and record.input_json_valid is True
    assert record.output_words is None  # no output side: its descriptors are all None


def test_spans_without_content_and_the_off_knob_have_no_descriptors() -> None:
    plain, _ = normalised(span_request({}))
    off, _ = normalised(span_request(GENAI_JSON), descriptors=None)
    for record in (plain, off):
        assert all(getattr(record, f"{side}_{name}") is None
                   for side in ("input", "output") for name in FIELDS)
    assert off.output_chars == len(ANSWER)  # measuring goes on


def test_descriptors_knob_and_patterns_reach_the_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBSERVER_NORMALIZER__REFUSAL_PATTERNS", '{"de": ["sie fehlt"]}')
    stage = SPEC.build(ObserverConfig(), TOPICS)
    assert stage.descriptors.fields({"output": QUESTION})["output_refusal"] is True
    monkeypatch.setenv("OBSERVER_NORMALIZER__DESCRIPTORS", "false")
    assert SPEC.build(ObserverConfig(), TOPICS).descriptors is None


HUGE = "ab " * 3_500_000  # 10.5 MB
HOSTILE: dict[str, dict[str, Any]] = {
    "huge text": {"gen_ai.prompt.0.content": HUGE},
    "invalid UTF-8 bytes": {"gen_ai.prompt.0.content": AnyValue(bytes_value=b"\xff\xfe\xed\xa0\x80 x")},
    "binary": {"input.value": AnyValue(bytes_value=bytes(range(256)) * 64)},
    "10 MB JSON": {"gen_ai.input.messages": json.dumps(
        [{"role": "user", "parts": [{"type": "text", "content": "x" * 10_000_000}]}])},
    "deep JSON": {"gen_ai.output.messages": "[" * 200_000 + "]" * 200_000},
    "JSON of numbers": {"gen_ai.output.messages": "[" + ",".join(["1e999"] * 1000) + "]"},
    "array and map values": {"gen_ai.prompt.0.content": AnyValue(kvlist_value=KeyValueList(values=[
        KeyValue(key="k", value=AnyValue(double_value=float("nan")))]))},
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_content_never_fails_the_stage(case: str) -> None:
    record, _ = normalised(span_request(HOSTILE[case]))
    side = "output" if "gen_ai.output.messages" in HOSTILE[case] else "input"
    assert getattr(record, f"{side}_words") is not None
    share = getattr(record, f"{side}_non_letter_share")
    assert 0.0 <= share <= 1.0


def test_real_sdk_exporter_through_the_receiver(kafka_config: KafkaConfig, topics: Topics) -> None:
    """Spans built by the OpenTelemetry SDK (attributes and span events), exported over OTLP
    HTTP to observer's receiver and Kafka, then normalised."""
    with receivers(kafka_config, topics) as r:
        provider = TracerProvider(resource=Resource.create({"service.name": "support"}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{r.http}/v1/traces")))
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("chat gpt-4o") as span:
            span.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
                                 **GENAI_JSON})
        with tracer.start_as_current_span("chat gpt-4o") as span:
            span.set_attributes({"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"})
            span.add_event("gen_ai.user.message", {"content": "Где мой заказ?"})
            span.add_event("gen_ai.choice", {"message": json.dumps(
                {"role": "assistant", "content": '{"status": "shipped"}'})})
        assert provider.force_flush()
        provider.shutdown()
        raw = drain_spans(kafka_config, topics.spans, 2)  # the receiver may put both in one
    messages = [Message(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp) for m in raw]
    records = [decode(o.value) for o in Normalizer(topics).process(messages)]
    by_script = {r.input_script: r for r in records if isinstance(r, LLMCall)}
    assert set(by_script) == {"latin", "cyrillic"}
    assert by_script["latin"].output_refusal is True
    assert by_script["cyrillic"].output_json_valid is True and by_script["cyrillic"].input_words == 3


def test_texts_reads_every_convention() -> None:
    """The embedder's entry point: each side's text, whatever the convention."""
    for attributes, events in CONVENTIONS.values():
        flat = {k: v.string_value if isinstance(v, AnyValue) else v for k, v in attributes.items()}
        got = texts(flat, [(name, {k: v.kvlist_value and {kv.key: kv.value.string_value
                                                           for kv in v.kvlist_value.values}
                                    or v.string_value for k, v in attrs.items()})
                           for name, attrs in events])
        assert got == {"input": QUESTION, "output": ANSWER}


def test_descriptor_features_are_default_and_skipped_without_content() -> None:
    names = {f.name for f in DriftConfig().features["llm"]}
    assert {"output_words", "output_non_letter_share", "input_words"} <= names
    unscored = score_feature(FeatureSpec(name="output_words", kind="numeric"), [None] * 50,
                             [None] * 50)
    scored = score_feature(FeatureSpec(name="input_tokens", kind="numeric"), list(range(50)),
                           list(range(50, 100)))
    assert unscored.statistic is None and not unscored.drifted
    # The feature without values does not dilute the share: 1 drifted of 1 scored.
    assert scored.drifted and drift_share([unscored, scored]) == 1.0
