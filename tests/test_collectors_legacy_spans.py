"""Spans of conventions that name no kind (semantic conventions 1.26 and earlier, early
OpenLLMetry): which are LLM calls, of which operation, and which are left alone.
Whole payloads of both are golden cases (tests/golden/collectors/genai_1_26.json,
openllmetry_early.json); these are the edges of the rule."""

from __future__ import annotations

from typing import Any

import pytest

from observer.collectors.common.genai_mapping import LEGACY_LLM, classify

OPENAI = {"gen_ai.system": "openai"}


@pytest.mark.parametrize(
    ("name", "attributes", "expected"),
    [
        # An LLM call: a provider and a model or usage; chat unless the name says otherwise.
        ("gpt-4", {**OPENAI, "gen_ai.request.model": "gpt-4"}, ("llm", "chat")),
        ("openai.chat", {**OPENAI, "gen_ai.usage.completion_tokens": 3}, ("llm", "chat")),
        ("openai.completion", {"llm.vendor": "OpenAI", "llm.request.model": "davinci-002"},
         ("llm", "text_completion")),
        ("openai.embeddings", {"llm.vendor": "OpenAI", "llm.usage.prompt_tokens": 8},
         ("llm", "embeddings")),
        ("embeddings text-embedding-3-small",
         {**OPENAI, "gen_ai.request.model": "text-embedding-3-small"}, ("llm", "embeddings")),
        # Early OpenLLMetry's "unknown" request type leaves the decision to the rule.
        ("bedrock.completion", {"llm.request.type": "unknown", "llm.vendor": "AWS",
                                "llm.request.model": "titan"}, ("llm", "text_completion")),
        # Not LLM calls: a provider alone (a framework's span), evidence without a provider,
        # evidence that breaks its kind's rule, and spans naming their kind in a newer convention.
        ("agent_run", OPENAI, ("other", "")),
        ("openai.files.list", {**OPENAI, "server.address": "api.openai.com"}, ("other", "")),
        ("chat", {"gen_ai.request.model": "gpt-4"}, ("other", "")),
        ("chat", {**OPENAI, "gen_ai.usage.prompt_tokens": -1, "gen_ai.request.model": ["x"]},
         ("other", "")),
        ("chat", {"gen_ai.system": "", "gen_ai.request.model": "gpt-4"}, ("other", "")),
        ("invoke_agent planner", {**OPENAI, "gen_ai.operation.name": "invoke_agent",
                                  "gen_ai.request.model": "gpt-4"}, ("other", "")),
        ("triage.task", {**OPENAI, "traceloop.span.kind": "task", "gen_ai.request.model": "gpt-4"},
         ("other", "")),
        ("RetrievalQA", {**OPENAI, "openinference.span.kind": "CHAIN",
                         "gen_ai.request.model": "gpt-4"}, ("other", "")),
        ("cohere.rerank", {"llm.request.type": "rerank", "llm.vendor": "Cohere",
                           "llm.request.model": "rerank-english-v2.0"}, ("other", "")),
    ],
)
def test_legacy_span_classification(
    name: str, attributes: dict[str, Any], expected: tuple[str, str]
) -> None:
    found = classify(name, attributes)
    assert (found.kind, found.operation) == expected


def test_a_hostile_span_name_is_read_only_in_part() -> None:
    # The operation word sits past the part of the name that is read: the default applies.
    name = "x" * 10_000 + ".embeddings"
    found = classify(name, {**OPENAI, "gen_ai.request.model": "m"})
    assert (found.kind, found.operation) == ("llm", LEGACY_LLM.default.operation)
