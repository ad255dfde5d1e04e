"""Which span attributes carry which record field, across the GenAI conventions in use.

Four conventions describe LLM and tool spans: OpenTelemetry GenAI (current names, and the
names of semantic conventions 1.36 and earlier, which instrumentations still send by default),
OpenInference (Arize Phoenix), OpenLLMetry (Traceloop) and vLLM's ``llm_request`` server span.
Everything the normaliser knows about them is the data below: a field lists its attributes in
priority order, current GenAI names first, and the first one present with a usable value wins.
Supporting another convention means adding names here, not code.

Message content (``gen_ai.input.messages``, ``llm.input_messages.*``, ``input.value`` ...)
appears nowhere in these tables, so it is never read.

>>> attributes = {"gen_ai.system": "openai", "gen_ai.usage.prompt_tokens": 12,
...               "gen_ai.response.finish_reason": "stop", "gen_ai.operation.name": "chat"}
>>> classify("chat gpt-4o", attributes)
Classification(kind='llm', operation='chat')
>>> lookup(attributes, LLM_FIELDS)
{'provider': 'openai', 'input_tokens': 12, 'finish_reasons': ['stop']}
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal


def as_str(value: Any) -> str | None:
    """A non-empty string, or None.

    >>> as_str("gpt-4o"), as_str(""), as_str(7)
    ('gpt-4o', None, '7')
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return str(value)
    return value if isinstance(value, str) and value else None


def as_int(value: Any) -> int | None:
    """An integer from an int, an integral float or a decimal string, or None.

    >>> as_int(12), as_int(12.0), as_int("12"), as_int("twelve"), as_int(True)
    (12, 12, 12, None, None)
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def as_str_list(value: Any) -> list[str] | None:
    """A list of non-empty strings from a string array or a single string, or None.

    >>> as_str_list(["stop", "length"]), as_str_list("stop"), as_str_list([])
    (['stop', 'length'], ['stop'], None)
    """
    items = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    strings = [s for s in items if isinstance(s, str) and s]
    return strings or None


def seconds_as_ms(value: Any) -> float | None:
    """Milliseconds from seconds (the GenAI and vLLM latency attributes are in seconds).

    >>> seconds_as_ms(0.25), seconds_as_ms("1.5"), seconds_as_ms("soon")
    (250.0, 1500.0, None)
    """
    if isinstance(value, bool):
        return None
    try:
        return float(value) * 1000.0
    except (TypeError, ValueError):
        return None


def template_id(value: Any) -> str | None:
    """A stable id for a prompt template's text: ``tmpl:`` and 12 hex of its sha256.

    >>> template_id("Answer {question} briefly."), template_id("")
    ('tmpl:e05b51a32b39', None)
    """
    text = as_str(value)
    return "tmpl:" + hashlib.sha256(text.encode()).hexdigest()[:12] if text else None


@dataclass(frozen=True)
class Source:
    """The attributes carrying one field, highest priority first, and how to read them."""

    names: tuple[str, ...]
    convert: Callable[[Any], Any] = as_str


# Keys are LLMCall field names. finish_reason (singular) is derived from finish_reasons.
LLM_FIELDS: dict[str, Source] = {
    "provider": Source(("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")),
    "model": Source(("gen_ai.request.model", "gen_ai.response.model", "llm.model_name")),
    "input_tokens": Source(
        ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt"),
        as_int,
    ),
    "output_tokens": Source(
        (
            "gen_ai.usage.output_tokens",
            "gen_ai.usage.completion_tokens",
            "llm.token_count.completion",
        ),
        as_int,
    ),
    "cache_read_tokens": Source(
        (
            "gen_ai.usage.cache_read.input_tokens",
            "gen_ai.usage.cache_read_input_tokens",  # OpenLLMetry
            "llm.token_count.prompt_details.cache_read",
        ),
        as_int,
    ),
    "reasoning_tokens": Source(
        (
            "gen_ai.usage.reasoning.output_tokens",
            "gen_ai.usage.reasoning_tokens",  # OpenLLMetry
            "llm.token_count.completion_details.reasoning",
        ),
        as_int,
    ),
    "finish_reasons": Source(
        (
            "gen_ai.response.finish_reasons",
            "gen_ai.response.finish_reason",
            "llm.finish_reason",
            "gen_ai.completion.0.finish_reason",  # OpenLLMetry's indexed completions
        ),
        as_str_list,
    ),
    "time_to_first_token_ms": Source(
        ("gen_ai.response.time_to_first_chunk", "gen_ai.latency.time_to_first_token"),
        seconds_as_ms,
    ),
    "error_type": Source(("error.type",)),
    "agent": Source(("gen_ai.agent.name", "agent.name")),
    "conversation_id": Source(
        (
            "gen_ai.conversation.id",
            "session.id",
            "traceloop.association.properties.session_id",
        )
    ),
    "prompt_version": Source(("llm.prompt_template.version", "traceloop.prompt.version")),
    "prompt_id": Source(("traceloop.prompt.key",)),
    # No convention names a template id for OpenInference: the template's own text identifies
    # it. Only its hash leaves the normaliser (it becomes prompt_id when no key is set).
    "prompt_template": Source(
        ("llm.prompt_template.template", "traceloop.prompt.template"), template_id
    ),
}

# Keys are ToolCall field names. A tool span rarely names a model; the normaliser then looks
# for one on the span's ancestors (see collectors.normalizer).
TOOL_FIELDS: dict[str, Source] = {
    "tool_name": Source(("gen_ai.tool.name", "tool.name", "traceloop.entity.name")),
    "tool_call_id": Source(("gen_ai.tool.call.id", "tool.id", "tool_call.id")),
    "tool_type": Source(("gen_ai.tool.type",)),
    "agent": LLM_FIELDS["agent"],
    "model": LLM_FIELDS["model"],
    "error_type": LLM_FIELDS["error_type"],
}

CallKind = Literal["llm", "tool", "other"]


@dataclass(frozen=True)
class Classification:
    """What a span records: an LLM call, a tool call, or something else (agent, chain...)."""

    kind: CallKind
    operation: str = ""


LLM_CHAT = Classification("llm", "chat")
LLM_COMPLETION = Classification("llm", "text_completion")
LLM_GENERATE = Classification("llm", "generate_content")
LLM_EMBEDDINGS = Classification("llm", "embeddings")
TOOL = Classification("tool", "execute_tool")
OTHER = Classification("other")

# Attribute -> value (compared lowercased) -> classification. Attributes are tried in this
# order and the first known value decides; values not listed (invoke_agent, CHAIN...) are other.
KIND_BY_ATTRIBUTE: dict[str, dict[str, Classification]] = {
    "gen_ai.operation.name": {
        "chat": LLM_CHAT,
        "text_completion": LLM_COMPLETION,
        "generate_content": LLM_GENERATE,
        "embeddings": LLM_EMBEDDINGS,
        "execute_tool": TOOL,
    },
    "openinference.span.kind": {"llm": LLM_CHAT, "embedding": LLM_EMBEDDINGS, "tool": TOOL},
    # OpenLLMetry marks LLM spans with llm.request.type and decorated tools with span.kind.
    "llm.request.type": {
        "chat": LLM_CHAT,
        "completion": LLM_COMPLETION,
        "embedding": LLM_EMBEDDINGS,
    },
    "traceloop.span.kind": {"tool": TOOL},
}

# Spans recognised by name when no attribute above decides. vLLM's server span carries usage
# and latency but no operation attribute; it serves chat and completions alike.
KIND_BY_SPAN_NAME: dict[str, Classification] = {"llm_request": LLM_CHAT}

# Every attribute the tables read: the normaliser converts only these from protobuf.
ATTRIBUTE_NAMES: frozenset[str] = frozenset(
    [name for table in (LLM_FIELDS, TOOL_FIELDS) for s in table.values() for name in s.names]
    + list(KIND_BY_ATTRIBUTE)
)


def classify(span_name: str, attributes: Mapping[str, Any]) -> Classification:
    """Decide what a span records from :data:`KIND_BY_ATTRIBUTE` and :data:`KIND_BY_SPAN_NAME`.

    >>> classify("ChatOpenAI", {"openinference.span.kind": "LLM"}).kind
    'llm'
    >>> classify("execute_tool search", {"gen_ai.operation.name": "execute_tool"}).kind
    'tool'
    >>> classify("invoke_agent planner", {"gen_ai.operation.name": "invoke_agent"}).kind
    'other'
    >>> classify("llm_request", {}).kind
    'llm'
    """
    for attribute, values in KIND_BY_ATTRIBUTE.items():
        value = attributes.get(attribute)
        if isinstance(value, str) and value.lower() in values:
            return values[value.lower()]
    return KIND_BY_SPAN_NAME.get(span_name, OTHER)


def lookup(attributes: Mapping[str, Any], fields: Mapping[str, Source]) -> dict[str, Any]:
    """Each field's value from the first of its attributes that holds a usable value.

    Fields no attribute carries are left out, so the record's own default applies.

    >>> lookup({"llm.token_count.prompt": "30", "gen_ai.usage.input_tokens": 31}, LLM_FIELDS)
    {'input_tokens': 31}
    """
    found: dict[str, Any] = {}
    for field, source in fields.items():
        for name in source.names:
            if name in attributes:
                value = source.convert(attributes[name])
                if value is not None:
                    found[field] = value
                    break
    return found
