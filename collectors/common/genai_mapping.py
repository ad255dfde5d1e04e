"""Which span attributes carry which record field, across the GenAI conventions in use.

Four conventions describe LLM and tool spans: OpenTelemetry GenAI (current names, and the
names of semantic conventions 1.36 and earlier, which instrumentations still send by default),
OpenInference (Arize Phoenix), OpenLLMetry (Traceloop, and its early ``llm.*`` names) and vLLM's
``llm_request`` server span. Spans from before ``gen_ai.operation.name`` (semantic conventions
1.26 and earlier, early OpenLLMetry) name no kind: :data:`LEGACY_LLM` says which are LLM calls.
Everything the normaliser knows about them is the data below: a field lists its attributes in
priority order, current GenAI names first, and the first one present with a usable value wins.
Supporting another convention means adding names here, not code.

Each field's :class:`Kind` (a column of the tables) is also how its values are checked, since
every client value is hostile (:mod:`observer.core.validate`): ``COUNT`` takes non-negative
integers up to ``MAX_COUNT`` (not booleans, fractions, NaN or 400-digit strings), ``SECONDS``
finite non-negative durations, ``NAME`` strings capped at ``MAX_NAME_CHARS`` without control
characters, ``FINISH_REASON_LIST`` and ``OPERATION`` known values or ``other``. A value that
breaks its kind's rule is treated as absent (the next attribute of the field is tried) and,
when no attribute of the field is usable, counted in ``observer_invalid_values_total``.

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
import re
from itertools import chain
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from observer.core import validate


def as_str(value: Any) -> str | None:
    """A non-empty name (:func:`observer.core.validate.text`: capped, no control characters),
    or None. Integers and finite floats are written out; booleans, lists, maps and bytes are
    not names.

    >>> as_str("gpt-4o"), as_str(""), as_str(7), as_str(["a"]), as_str("x" * 300)[-3:]
    ('gpt-4o', None, '7', None, 'xxx')
    """
    if type(value) is str and len(value) <= validate.MAX_NAME_CHARS and value.isprintable():
        return value or None  # the common case: what validate.text would return as it is
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        value = str(value) if validate.count(abs(value)) is not None else None
    elif isinstance(value, float):
        value = str(value) if validate.finite(value) is not None else None
    return validate.text(value) or None if isinstance(value, str) else None


def as_int(value: Any) -> int | None:
    """A count (:func:`observer.core.validate.count`: non-negative, at most ``MAX_COUNT``)
    from an int, an integral float or a decimal string, or None.

    >>> as_int(12), as_int(12.0), as_int("12"), as_int("twelve"), as_int(True), as_int(-1)
    (12, 12, 12, None, None, None)
    """
    return validate.count(value)


FINISH_REASONS: frozenset[str] = frozenset({
    # OpenTelemetry GenAI and OpenAI
    "stop", "length", "content_filter", "tool_call", "tool_calls", "function_call", "error",
    # Anthropic, Bedrock
    "end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal",
    "guardrail_intervened", "content_filtered",
    # Gemini / Vertex AI (upper case on the wire)
    "finish_reason_unspecified", "safety", "recitation", "language", "other", "blocklist",
    "prohibited_content", "spii", "malformed_function_call",
    # Cohere, vLLM
    "complete", "error_toxic", "error_limit", "user_cancel", "abort",
})
"""Finish reasons the conventions and the major providers report (compared lowercased);
any other value is recorded as ``other``, so a label or a drift category stays bounded."""
MAX_FINISH_REASONS = 16
"""One per choice; more is not a real response."""


def as_str_list(value: Any) -> list[str] | None:
    """Finish reasons from a string array or a single string: each lowercased when known
    (:data:`FINISH_REASONS`), else ``other``; None when there is no string at all.

    >>> as_str_list(["stop", "LENGTH"]), as_str_list("stop"), as_str_list([]), as_str_list(["zz"])
    (['stop', 'length'], ['stop'], None, ['other'])
    """
    items = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    strings = [
        validate.enum(s, FINISH_REASONS)
        for s in items[:MAX_FINISH_REASONS]
        if isinstance(s, str) and s
    ]
    return strings or None


def seconds_as_ms(value: Any) -> float | None:
    """Milliseconds from seconds (the GenAI and vLLM latency attributes are in seconds):
    finite, non-negative, at most ``MAX_DURATION_MS``; else None.

    >>> seconds_as_ms(0.25), seconds_as_ms("1.5"), seconds_as_ms("soon"), seconds_as_ms(-1)
    (250.0, 1500.0, None, None)
    """
    seconds = validate.finite(value, min=0.0, max=validate.MAX_DURATION_MS / 1000.0)
    return None if seconds is None else seconds * 1000.0


def template_id(value: Any) -> str | None:
    """A stable id for a prompt template's text: ``tmpl:`` and 12 hex of its sha256.

    >>> template_id("Answer {question} briefly."), template_id("")
    ('tmpl:e05b51a32b39', None)
    """
    if not isinstance(value, str) or not value:
        return None
    # The whole text is hashed (surrogates escaped): the id must not depend on a cap.
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return "tmpl:" + digest[:12]


OPERATIONS: frozenset[str] = frozenset({
    # OpenTelemetry GenAI gen_ai.operation.name
    "chat", "text_completion", "generate_content", "embeddings", "execute_tool",
    "invoke_agent", "create_agent",
    # OpenLLMetry llm.request.type
    "completion", "embedding", "rerank",
})
"""Operation names the conventions define (compared lowercased); others are ``other``."""


def as_operation(value: Any) -> str | None:
    """A known operation name lowercased, ``other`` for another string, else None.

    >>> as_operation("Chat"), as_operation("dance"), as_operation(3)
    ('chat', 'other', None)
    """
    return validate.enum(value, OPERATIONS) if isinstance(value, str) and value else None


@dataclass(frozen=True)
class Kind:
    """What one column of the tables holds, and how an attribute value is read into it:
    ``read`` returns None for a value that breaks the kind's rule (which is then counted in
    ``observer_invalid_values_total`` and left out)."""

    name: str
    read: Callable[[Any], Any]


NAME = Kind("name", as_str)
"""A short string: capped at ``MAX_NAME_CHARS``, no control characters."""
COUNT = Kind("count", as_int)
"""A non-negative integer up to ``MAX_COUNT``."""
SECONDS = Kind("seconds", seconds_as_ms)
"""A duration in seconds, stored in milliseconds."""
FINISH_REASON_LIST = Kind("finish_reasons", as_str_list)
"""Known finish reasons, others as ``other``."""
TEMPLATE = Kind("template", template_id)
"""A prompt template's text, stored as its hash."""
OPERATION = Kind("operation", as_operation)
"""A known operation name, others as ``other``."""


@dataclass(frozen=True)
class Source:
    """The attributes carrying one field, highest priority first, and their :class:`Kind`."""

    names: tuple[str, ...]
    kind: Kind = NAME


# Keys are LLMCall field names. finish_reason (singular) is derived from finish_reasons.
LLM_FIELDS: dict[str, Source] = {
    "provider": Source(
        (
            "gen_ai.provider.name",
            "gen_ai.system",
            "llm.provider",
            "llm.system",
            "llm.vendor",  # early OpenLLMetry
        )
    ),
    "model": Source(
        (
            "gen_ai.request.model",
            "gen_ai.response.model",
            "llm.model_name",
            "llm.request.model",  # early OpenLLMetry
            "llm.response.model",
        )
    ),
    "input_tokens": Source(
        (
            "gen_ai.usage.input_tokens",
            "gen_ai.usage.prompt_tokens",
            "llm.token_count.prompt",
            "llm.usage.prompt_tokens",  # early OpenLLMetry
        ),
        COUNT,
    ),
    "output_tokens": Source(
        (
            "gen_ai.usage.output_tokens",
            "gen_ai.usage.completion_tokens",
            "llm.token_count.completion",
            "llm.usage.completion_tokens",  # early OpenLLMetry
        ),
        COUNT,
    ),
    "cache_read_tokens": Source(
        (
            "gen_ai.usage.cache_read.input_tokens",
            "gen_ai.usage.cache_read_input_tokens",  # OpenLLMetry
            "llm.token_count.prompt_details.cache_read",
        ),
        COUNT,
    ),
    "reasoning_tokens": Source(
        (
            "gen_ai.usage.reasoning.output_tokens",
            "gen_ai.usage.reasoning_tokens",  # OpenLLMetry
            "llm.token_count.completion_details.reasoning",
        ),
        COUNT,
    ),
    "finish_reasons": Source(
        (
            "gen_ai.response.finish_reasons",
            "gen_ai.response.finish_reason",
            "llm.finish_reason",
            "gen_ai.completion.0.finish_reason",  # OpenLLMetry's indexed completions
            "llm.completions.0.finish_reason",  # early OpenLLMetry's
        ),
        FINISH_REASON_LIST,
    ),
    "time_to_first_token_ms": Source(
        ("gen_ai.response.time_to_first_chunk", "gen_ai.latency.time_to_first_token"),
        SECONDS,
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
        ("llm.prompt_template.template", "traceloop.prompt.template"), TEMPLATE
    ),
}

# Keys are ToolCall field names. A tool span rarely names a model; the normaliser then looks
# for one on the span's ancestors (see collectors.normalize.normalizer).
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
# order and the first listed value decides; values not listed (invoke_agent, CHAIN...) are other,
# unless the span qualifies under LEGACY_LLM.
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
    # A rerank is not a generation; "unknown" is left to LEGACY_LLM.
    "llm.request.type": {
        "chat": LLM_CHAT,
        "completion": LLM_COMPLETION,
        "embedding": LLM_EMBEDDINGS,
        "embeddings": LLM_EMBEDDINGS,
        "rerank": OTHER,
    },
    "traceloop.span.kind": {"tool": TOOL},
}

# Spans recognised by name when no attribute above decides. vLLM's server span carries usage
# and latency but no operation attribute; it serves chat and completions alike.
KIND_BY_SPAN_NAME: dict[str, Classification] = {"llm_request": LLM_CHAT}


@dataclass(frozen=True)
class LegacyRule:
    """Which spans of conventions that name no kind are LLM calls, and of which operation.

    Semantic conventions 1.26 and earlier have no ``gen_ai.operation.name``, and early
    OpenLLMetry sets ``llm.request.type`` on some spans only. Such a span is an LLM call when
    it names a provider and carries a usable value of at least one ``evidence`` field (a model
    or token usage): a framework's workflow span that merely carries ``gen_ai.system`` is not.
    A span carrying any ``unless`` attribute names its kind in a newer convention and is taken
    at its word. The operation is that of the first word of the span name found in
    ``operation_by_name_word`` (``openai.embeddings``, ``anthropic.completion``), else chat.
    """

    provider: str
    evidence: tuple[str, ...]
    unless: tuple[str, ...]
    operation_by_name_word: dict[str, Classification]
    default: Classification = LLM_CHAT


LEGACY_LLM = LegacyRule(
    provider="provider",
    evidence=("model", "input_tokens", "output_tokens"),
    unless=("gen_ai.operation.name", "openinference.span.kind", "traceloop.span.kind"),
    operation_by_name_word={
        "chat": LLM_CHAT,
        "completion": LLM_COMPLETION,
        "completions": LLM_COMPLETION,
        "text_completion": LLM_COMPLETION,
        "generate_content": LLM_GENERATE,
        "embedding": LLM_EMBEDDINGS,
        "embeddings": LLM_EMBEDDINGS,
    },
)

# Every attribute the tables read: the normaliser converts only these from protobuf.
ATTRIBUTE_NAMES: frozenset[str] = frozenset(
    [name for table in (LLM_FIELDS, TOOL_FIELDS) for s in table.values() for name in s.names]
    + list(KIND_BY_ATTRIBUTE)
)


def classify(span_name: str, attributes: Mapping[str, Any]) -> Classification:
    """Decide what a span records from :data:`KIND_BY_ATTRIBUTE` and :data:`KIND_BY_SPAN_NAME`,
    else by :data:`LEGACY_LLM`.

    >>> classify("ChatOpenAI", {"openinference.span.kind": "LLM"}).kind
    'llm'
    >>> classify("execute_tool search", {"gen_ai.operation.name": "execute_tool"}).kind
    'tool'
    >>> classify("invoke_agent planner", {"gen_ai.operation.name": "invoke_agent"}).kind
    'other'
    >>> classify("llm_request", {}).kind
    'llm'

    A span of semantic conventions 1.26 or early OpenLLMetry (:data:`LEGACY_LLM`):

    >>> classify("openai.embeddings", {"llm.vendor": "OpenAI", "llm.usage.prompt_tokens": 8})
    Classification(kind='llm', operation='embeddings')
    >>> classify("chat gpt-4", {"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4"})
    Classification(kind='llm', operation='chat')
    >>> classify("agent_run", {"gen_ai.system": "openai"}).kind
    'other'
    """
    for attribute, values in KIND_BY_ATTRIBUTE.items():
        value = attributes.get(attribute)
        if isinstance(value, str) and value.lower() in values:
            return values[value.lower()]
    if span_name in KIND_BY_SPAN_NAME:
        return KIND_BY_SPAN_NAME[span_name]
    return _legacy(span_name, attributes, LEGACY_LLM)


_RULE_TABLES: dict[int, tuple[LegacyRule, dict[str, Source], dict[str, Source]]] = {}


def _rule_tables(rule: LegacyRule) -> tuple[dict[str, Source], dict[str, Source]]:
    """The rule's provider and evidence fields as tables, made once per rule (lookup
    compiles a table once by identity)."""
    entry = _RULE_TABLES.get(id(rule))
    if entry is None or entry[0] is not rule:
        entry = _RULE_TABLES[id(rule)] = (
            rule, {rule.provider: LLM_FIELDS[rule.provider]},
            {field: LLM_FIELDS[field] for field in rule.evidence})
    return entry[1], entry[2]


def _legacy(span_name: str, attributes: Mapping[str, Any], rule: LegacyRule) -> Classification:
    """The span's classification under ``rule``, or ``OTHER`` when it does not qualify."""
    if any(name in attributes for name in rule.unless):
        return OTHER
    provider, evidence = _rule_tables(rule)
    if not lookup(attributes, provider):
        return OTHER
    if not lookup(attributes, evidence):
        return OTHER
    # Only a name's first characters are read: a hostile span name must stay cheap.
    for word in re.split(r"[^a-z0-9_]+", span_name[: validate.MAX_NAME_CHARS].lower()):
        if word in rule.operation_by_name_word:
            return rule.operation_by_name_word[word]
    return rule.default


def lookup(
    attributes: Mapping[str, Any], fields: Mapping[str, Source], stage: str | None = None
) -> dict[str, Any]:
    """Each field's value from the first of its attributes that holds a usable value.

    Fields no attribute carries are left out, so the record's own default applies. A field
    whose attributes are present but all unusable (a negative count, a list where a name
    belongs...) is left out too, and counted for ``stage`` in
    ``observer_invalid_values_total{stage,field}``.

    >>> lookup({"llm.token_count.prompt": "30", "gen_ai.usage.input_tokens": 31}, LLM_FIELDS)
    {'input_tokens': 31}
    >>> lookup({"gen_ai.usage.input_tokens": -1, "gen_ai.request.model": ["m"]}, LLM_FIELDS)
    {}
    """
    table = _compiled(fields)
    # Only the table's attributes the span carries (a few), in field and priority order: a
    # span is not asked for each of the table's forty-odd names.
    present = sorted(chain.from_iterable(
        map(table.index.__getitem__, table.names.intersection(attributes))))
    found: dict[str, Any] = {}
    for _, _, field, name, read in present:
        if field in found:
            continue  # a higher-priority attribute gave the value
        value = read(attributes[name])
        if value is not None:
            found[field] = value
        elif stage is not None and name == table.last_present(present, field):
            validate.invalid(stage, field)
    return found


_Entry = tuple[int, int, str, str, Callable[[Any], Any]]


class _Compiled:
    """A table of :class:`Source` by attribute name: ``index[name]`` lists ``(field position,
    priority, field, name, read)`` for each field the name feeds, so sorting a span's entries
    gives the lookup order."""

    def __init__(self, fields: Mapping[str, Source]) -> None:
        index: dict[str, list[_Entry]] = {}
        for position, (field, source) in enumerate(fields.items()):
            for priority, name in enumerate(source.names):
                index.setdefault(name, []).append(
                    (position, priority, field, name, source.kind.read))
        self.index = {name: tuple(entries) for name, entries in index.items()}
        self.names = frozenset(self.index)

    @staticmethod
    def last_present(present: list[_Entry], field: str) -> str:
        """The lowest-priority attribute of ``field`` present: when it is unusable too, the
        field had none (counted once)."""
        return next(entry[3] for entry in reversed(present) if entry[2] == field)


# Tables compiled once, by identity; kept alive here, so an id is never reused. A caller's
# dict made per call (a rare path) is compiled each time rather than filling this.
_TABLES: dict[int, tuple[Mapping[str, Source], _Compiled]] = {}
_MAX_TABLES = 64


def _compiled(fields: Mapping[str, Source]) -> _Compiled:
    entry = _TABLES.get(id(fields))
    if entry is not None and entry[0] is fields:
        return entry[1]
    table = _Compiled(fields)
    if len(_TABLES) < _MAX_TABLES:
        _TABLES[id(fields)] = (fields, table)
    return table
