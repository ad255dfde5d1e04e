"""Message content: measured by default (counts, lengths, hashes), stored only when enabled,
redacted (built-in patterns, then a configurable hook) and capped. Run on the golden payloads
of every convention that carries content."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from observer.collectors.receiver import otlp_json
from observer.collectors.normalize.normalizer import Normalizer
from observer.core.bus import Message
from observer.config import load_config
from observer.collectors.normalize.config import ContentConfig
from observer.core.config import KafkaConfig
from observer.core.records import LLMCall, decode
from observer.core.topics import Topics

GOLDEN = Path(__file__).parent / "golden" / "collectors"
TOPICS = Topics.from_config(KafkaConfig())
# Convention -> (golden case, text in its first input message).
WITH_CONTENT = {
    "OpenTelemetry GenAI": ("genai_current", "Where is my order"),
    "OpenInference": ("openinference", "refund my order"),
    "OpenLLMetry": ("openllmetry", "track order 7"),
}


def hide_orders(text: str) -> str:
    """A redaction hook, loaded by its path like a user's would be."""
    return text.replace("order", "[ORDER]")


HOOK = f"{__name__}:hide_orders"


def llm_records(case: str, content: ContentConfig | None = None) -> tuple[list[LLMCall], list[bytes]]:
    golden = json.loads((GOLDEN / f"{case}.json").read_text())
    request = otlp_json.decode_trace_request(json.dumps(golden["request"]))
    message = Message(TOPICS.spans, 0, 0, None, request.SerializeToString(), 0)
    outputs = Normalizer(TOPICS, content=content).process([message])
    llm = [decode(o.value) for o in outputs if o.topic == TOPICS.llm]
    return llm, [o.value for o in outputs]  # type: ignore[return-value]


@pytest.mark.parametrize("convention", WITH_CONTENT)
def test_default_keeps_measures_only(convention: str) -> None:
    case, text = WITH_CONTENT[convention]
    for content in (None, ContentConfig()):  # absent and explicitly off
        llm, raw = llm_records(case, content)
        call = llm[0]
        assert call.input_messages and call.input_chars and len(call.input_hash) == 16
        assert call.input_content is None and call.output_content is None
        assert not any(text.encode() in value for value in raw)


@pytest.mark.parametrize("convention", WITH_CONTENT)
def test_capture_stores_redacted_capped_content(convention: str) -> None:
    case, text = WITH_CONTENT[convention]
    [plain, *_], _ = llm_records(case, ContentConfig(capture=True, redact_builtin=False))
    assert any(text in m["content"] for m in plain.input_content or [])
    assert plain.input_chars == sum(len(m["content"]) for m in plain.input_content or [])

    [hooked, *_], raw = llm_records(case, ContentConfig(capture=True, redact_hook=HOOK))
    assert any(text.replace("order", "[ORDER]") in m["content"] for m in hooked.input_content or [])
    assert not any(text.encode() in value for value in raw)
    assert hooked.input_hash == plain.input_hash  # hashes are of the content as sent

    [capped, *_], _ = llm_records(case, ContentConfig(capture=True, max_chars=5))
    assert sum(len(m["content"]) for m in capped.input_content or []) <= 5
    assert capped.content_truncated


def test_builtin_redaction_and_openllmetry_roles() -> None:
    from observer.collectors.normalize.message_content import ContentCapture

    attributes = {
        "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "be brief"}]),
        "gen_ai.input.messages": json.dumps([{"role": "user", "parts": [
            {"type": "text", "content": "I am ann@example.com, key sk-proj-ABCDEFGHIJKLMNOPQRSTUV"}]}]),
        "gen_ai.output.messages": json.dumps([{"role": "assistant", "parts": [
            {"type": "text", "content": "Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345"}]}]),
    }
    stored = ContentCapture(ContentConfig(capture=True)).stored(attributes)
    assert stored["input_content"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "I am [REDACTED:email], key [REDACTED:key]"},
    ]
    assert stored["output_content"] == [{"role": "assistant", "content": "Authorization: [REDACTED:bearer]"}]


def test_bad_hook_fails_at_start_naming_it() -> None:
    with pytest.raises(ValueError, match="no_such_module"):
        Normalizer(TOPICS, content=ContentConfig(capture=True, redact_hook="no_such_module:f"))
    cfg = load_config(None, env={"OBSERVER_NORMALIZER__CONTENT__CAPTURE": "true",
                                 "OBSERVER_NORMALIZER__CONTENT__MAX_CHARS": "100"})
    assert cfg.normalizer.content.capture and cfg.normalizer.content.max_chars == 100
