"""LLM message content on spans: always measured, stored only when enabled.

These conventions carry prompts and completions (table :data:`CONVENTIONS`, first found
wins per side):

- OpenTelemetry GenAI: ``gen_ai.input.messages`` / ``gen_ai.output.messages`` (JSON arrays of
  ``{role, parts: [{type, content}]}``), ``gen_ai.system_instructions``;
- OpenInference: ``llm.input_messages.<i>.message.role`` / ``.content`` (and
  ``llm.output_messages.<i>...``), else ``input.value`` / ``output.value`` taken as one
  message of that text (JSON under ``application/json`` too, as is);
- OpenLLMetry: ``gen_ai.prompt.<i>.role`` / ``.content`` and ``gen_ai.completion.<i>...``;
- the older OpenTelemetry GenAI span events (table :data:`EVENTS`): ``gen_ai.system.message``,
  ``gen_ai.user.message``, ``gen_ai.assistant.message``, ``gen_ai.tool.message`` (a
  ``content`` attribute, or a JSON ``body``), ``gen_ai.choice`` (``message`` or ``content``),
  and semconv 1.27's ``gen_ai.content.prompt`` / ``gen_ai.content.completion``.

:func:`texts` gives each side's text as one string (for descriptors and embedders).

By default only a :class:`Measure` leaves the normaliser: message counts, character counts
and a 16-hex sha256 of each side. With ``normalizer.content.capture`` on, the text is stored
too, after redaction (built-in patterns for e-mail addresses and keys, then an optional hook
``"package.module:function"`` taking and returning a string) and cut at ``max_chars`` per side.

>>> attributes = {"gen_ai.prompt.0.role": "user",
...               "gen_ai.prompt.0.content": "mail me at ann@example.com",
...               "gen_ai.completion.0.content": "ok"}
>>> measured = measure(attributes)
>>> measured.input_messages, measured.input_chars, measured.output_chars
(1, 26, 2)
>>> capture = ContentCapture(ContentConfig(capture=True))
>>> capture.stored(attributes)["input_content"]
[{'role': 'user', 'content': 'mail me at [REDACTED:email]'}]
>>> ContentCapture(ContentConfig()).stored(attributes)
{}
"""

from __future__ import annotations

import hashlib
import importlib
import json
import json.encoder
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic_core import from_json

from observer.core import validate
from observer.collectors.normalize.config import ContentConfig

Side = str  # "input" or "output"
SIDES: tuple[Side, ...] = ("input", "output")
Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Convention:
    """Where one convention puts a side's messages."""

    json_attribute: str = ""
    """One attribute holding a JSON array of messages."""
    indexed_prefix: str = ""
    """``<prefix>.<i>.<role_key>`` / ``<prefix>.<i>.<content_key>`` attributes."""
    role_key: str = "role"
    content_key: str = "content"
    value_attribute: str = ""
    """One attribute whose whole text is one message (OpenInference ``input.value``)."""


# Side -> conventions, in priority order: the first that yields messages wins.
CONVENTIONS: dict[Side, tuple[Convention, ...]] = {
    "input": (
        Convention(json_attribute="gen_ai.input.messages"),
        Convention(indexed_prefix="llm.input_messages", role_key="message.role",
                   content_key="message.content"),
        Convention(indexed_prefix="gen_ai.prompt"),
        Convention(value_attribute="input.value"),
    ),
    "output": (
        Convention(json_attribute="gen_ai.output.messages"),
        Convention(indexed_prefix="llm.output_messages", role_key="message.role",
                   content_key="message.content"),
        Convention(indexed_prefix="gen_ai.completion"),
        Convention(value_attribute="output.value"),
    ),
}

# Older GenAI span events: event name -> (side, role, attribute holding the content). The
# attribute is a string, a {role, content} map, or JSON of either (a whole array for the
# semconv 1.27 content events); ``body`` is the log-record shape some bridges copy onto spans.
EVENTS: dict[str, tuple[Side, str, tuple[str, ...]]] = {
    "gen_ai.system.message": ("input", "system", ("content", "body")),
    "gen_ai.user.message": ("input", "user", ("content", "body")),
    "gen_ai.assistant.message": ("input", "assistant", ("content", "body")),
    "gen_ai.tool.message": ("input", "tool", ("content", "body")),
    "gen_ai.choice": ("output", "assistant", ("message", "content", "body")),
    "gen_ai.content.prompt": ("input", "", ("gen_ai.prompt",)),
    "gen_ai.content.completion": ("output", "", ("gen_ai.completion",)),
}
Event = tuple[str, Mapping[str, Any]]
"""A span event: its name and its attributes (values as :mod:`otlp_attributes` reads them)."""
SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
# Attribute name prefixes that may hold content: the normaliser reads these, and only when
# measuring or capturing.
CONTENT_PREFIXES: tuple[str, ...] = (
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    SYSTEM_INSTRUCTIONS,
    "llm.input_messages.",
    "llm.output_messages.",
    "gen_ai.prompt.",
    "gen_ai.completion.",
    "input.value",
    "output.value",
)

# Built-in redaction: kind -> pattern. Keys first, so an e-mail inside a token stays one match.
REDACTIONS: dict[str, re.Pattern[str]] = {
    "key": re.compile(
        r"\b(?:sk-[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}"
        r"|xox[abprs]-[A-Za-z0-9-]{10,}|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]+)"
    ),
    "bearer": re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{16,}"),
    "secret": re.compile(
        r"(?i)\b(?:api[_-]?key|secret|password|passwd|token)\b(\s*[:=]\s*)[^\s,;\"']+"
    ),
    "email": re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"),
}


def redact_builtin(text: str) -> str:
    """Replace e-mail addresses, API keys, bearer tokens and ``key=value`` secrets.

    >>> redact_builtin("key sk-abcdefghijklmnopqrstuv, password: hunter2 to bo@x.org")
    'key [REDACTED:key], [REDACTED:secret] to [REDACTED:email]'
    """
    for kind, pattern in REDACTIONS.items():
        text = pattern.sub(f"[REDACTED:{kind}]", text)
    return text


def load_hook(path: str) -> Callable[[str], str]:
    """The callable named ``"package.module:function"``; a clear ``ValueError`` otherwise.

    >>> load_hook("collectors.normalize.message_content:redact_builtin")("a@b.io")
    '[REDACTED:email]'
    >>> load_hook("nope")
    Traceback (most recent call last):
    ...
    ValueError: content redaction hook 'nope' must look like 'package.module:function'
    """
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"content redaction hook {path!r} must look like 'package.module:function'")
    try:
        hook = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"content redaction hook {path!r} cannot be loaded: {e}") from None
    if not callable(hook):
        raise ValueError(f"content redaction hook {path!r} is not callable")  # noqa: TRY004 (a config error)
    return hook  # type: ignore[no-any-return]


MAX_INDEX_DIGITS = 6
"""``gen_ai.prompt.<i>``: a longer index is not a message position (and ``int()`` of a
thousand-digit index is slow)."""


def _text(content: Any) -> str:
    """A message's text: strings as they are, GenAI ``parts`` joined, bytes as UTF-8 (bad
    bytes replaced), anything else as JSON."""
    if isinstance(content, str):
        return content
    if isinstance(content, bytes):
        return content.decode("utf-8", "replace")
    if isinstance(content, list):  # GenAI parts: [{type: text, content: ...}, ...]
        return "\n".join(
            _text(part.get("content", "")) if isinstance(part, dict) else _text(part)
            for part in content
        )
    return json.dumps(content, sort_keys=True, default=str) if content is not None else ""


def _role(message: dict[str, Any]) -> str:
    role = message.get("role", "")
    return validate.text(role if isinstance(role, str) else str(role))


def _from_json(value: Any) -> Messages:
    """Messages from a JSON attribute; text that is not JSON (or nested past what the
    decoder takes) is one message of that text."""
    try:
        items = loads(value) if isinstance(value, str) else value
        if not isinstance(items, list):
            items = [items]
        return [
            {"role": _role(m), "content": _text(m.get("parts", m.get("content")))}
            if isinstance(m, dict)
            else {"role": "", "content": _text(m)}
            for m in items
        ]
    except (ValueError, RecursionError):  # JSONDecodeError; too many digits; too deep
        return [{"role": "", "content": value if isinstance(value, str) else _text(value)}]


def _from_indexed(attributes: Mapping[str, Any], convention: Convention) -> Messages:
    prefix = convention.indexed_prefix + "."
    by_index: dict[int, dict[str, str]] = {}
    for name, value in attributes.items():
        if not name.startswith(prefix):
            continue
        index, _, key = name[len(prefix):].partition(".")
        if not (index.isascii() and index.isdigit() and len(index) <= MAX_INDEX_DIGITS):
            continue
        if key not in (convention.role_key, convention.content_key):
            continue
        message = by_index.setdefault(int(index), {"role": "", "content": ""})
        if key == convention.role_key:
            message["role"] = validate.text(_text(value))
        else:
            message["content"] = _text(value)
    return [by_index[i] for i in sorted(by_index)]


def _from_event(name: str, attributes: Mapping[str, Any]) -> Messages:
    """The messages of one older GenAI span event (none when it carries no content)."""
    _, role, keys = EVENTS[name]
    for key in keys:
        if key not in attributes:
            continue
        value = attributes[key]
        if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
            try:
                value = loads(value)
            except (ValueError, RecursionError):  # not JSON after all: the text itself
                pass
        if isinstance(value, dict) and isinstance(value.get("message"), dict):
            value = value["message"]  # a gen_ai.choice body: {index, finish_reason, message}
        if isinstance(value, (dict, list)):
            found = _from_json(value if isinstance(value, list) else [value])
        else:
            found = [{"role": "", "content": _text(value)}]
        # A {role, content} map without content (tool calls only) is no text.
        return [{"role": m["role"] or role, "content": m["content"]} for m in found
                if m["content"]]
    return []


def _from_events(events: Sequence[Event], side: Side) -> Messages:
    found: Messages = []
    for name, attributes in events:
        if name in EVENTS and EVENTS[name][0] == side:
            found += _from_event(name, attributes)
    return found


def messages(attributes: Mapping[str, Any], side: Side,
             events: Sequence[Event] | None = None) -> Messages:
    """The ``side`` ("input" or "output") messages of a span, from the first convention found;
    the older span events (:data:`EVENTS`) when no attribute carries any.

    >>> messages({"input.value": "hi"}, "input")
    [{'role': '', 'content': 'hi'}]
    >>> messages({}, "output", [("gen_ai.choice", {"message": '{"role": "assistant", "content": "ok"}'})])
    [{'role': 'assistant', 'content': 'ok'}]
    """
    for convention in CONVENTIONS[side]:
        if convention.json_attribute or convention.value_attribute:
            name = convention.json_attribute or convention.value_attribute
            if name not in attributes:
                continue
            value = attributes[name]
            found = (_from_json(value) if convention.json_attribute
                     else [{"role": "", "content": _text(value)}])
        else:
            found = _from_indexed(attributes, convention)
        if found:
            if side == "input" and SYSTEM_INSTRUCTIONS in attributes:
                system = _from_json(attributes[SYSTEM_INSTRUCTIONS])
                found = [{"role": "system", "content": "\n".join(m["content"] for m in system)},
                         *found]
            return found
    return _from_events(events, side) if events else []


def texts(attributes: Mapping[str, Any], events: Sequence[Event] | None = None) -> dict[Side, str]:
    """Each side's text, its messages' contents joined by newlines; a side without messages
    is absent.

    >>> texts({"gen_ai.prompt.0.content": "hi", "gen_ai.prompt.1.content": "there"})
    {'input': 'hi\\nthere'}
    >>> texts({}, [("gen_ai.user.message", {"content": "q"}), ("gen_ai.choice", {"content": "a"})])
    {'input': 'q', 'output': 'a'}
    """
    return joined(sides(attributes, events))


def sides(attributes: Mapping[str, Any], events: Sequence[Event] | None = None
          ) -> dict[Side, Messages]:
    """Both sides' messages, read once; a side without messages is absent.

    >>> sides({"output.value": "ok"})
    {'output': [{'role': '', 'content': 'ok'}]}
    """
    found = {side: messages(attributes, side, events) for side in SIDES}
    return {side: side_messages for side, side_messages in found.items() if side_messages}


def joined(found: Mapping[Side, Messages]) -> dict[Side, str]:
    """Each side's text from :func:`sides`: its messages' contents joined by newlines."""
    return {side: "\n".join(m["content"] for m in side_messages)
            for side, side_messages in found.items()}


def _digest(found: Messages) -> str:
    canonical = _compact_json([[m["role"], m["content"]] for m in found])
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _c_list_encoder() -> Callable[[Any, int], list[str]] | None:
    """The C encoder ``json.dumps(..., separators=(",", ":"))`` builds on every call (ASCII
    escapes, no sorting), built once; no circular check: the values are lists of strings."""
    try:
        return json.encoder.c_make_encoder(  # type: ignore[no-any-return]
            None, None, json.encoder.encode_basestring_ascii, None, ":", ",",
            False, False, True)
    except TypeError:  # None: CPython without _json
        return None


_C_LIST_ENCODER = _c_list_encoder()


def _compact_json(value: list[list[str]]) -> str:
    """``json.dumps(value, separators=(",", ":"))``, without building an encoder per call.

    >>> _compact_json([["user", "é\\n"]]) == json.dumps([["user", "é\\n"]], separators=(",", ":"))
    True
    """
    if _C_LIST_ENCODER is None:
        return json.dumps(value, separators=(",", ":"))
    return "".join(_C_LIST_ENCODER(value, 0))


def loads(text: str) -> Any:
    """``json.loads(text)``, through pydantic-core's parser (several times faster) when it
    takes the text.

    Where it refuses a text (lone surrogate escapes, anything not JSON), ``json`` decides, so
    values and errors are ``json``'s (NaN, infinities and big integers read the same in both;
    tests/test_collectors_content.py compares them on hostile texts).

    >>> loads('[{"role": "user", "content": "hi"}]'), loads("[NaN]"), loads(str(2**70))
    ([{'role': 'user', 'content': 'hi'}], [nan], 1180591620717411303424)
    """
    try:
        return from_json(text)
    except ValueError:  # not JSON to pydantic-core: json decides (and raises its own error)
        return json.loads(text)


@dataclass(frozen=True)
class Measure:
    """What is kept of the content by default: counts, lengths, hashes."""

    input_messages: int | None = None
    input_chars: int | None = None
    input_hash: str = ""
    output_messages: int | None = None
    output_chars: int | None = None
    output_hash: str = ""

    def fields(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, "")}


def measure(attributes: Mapping[str, Any], events: Sequence[Event] | None = None) -> Measure:
    """Counts, character lengths and hashes of both sides (None when a side is absent)."""
    return measured(sides(attributes, events))


def measured(found: Mapping[Side, Messages]) -> Measure:
    """The :class:`Measure` of the sides' messages from :func:`sides`."""
    values: dict[str, Any] = {}
    for side, side_messages in found.items():
        values[f"{side}_messages"] = len(side_messages)
        values[f"{side}_chars"] = sum(len(m["content"]) for m in side_messages)
        values[f"{side}_hash"] = _digest(side_messages)
    return Measure(**values)


class ContentCapture:
    """The content fields of a record under one :class:`ContentConfig` (empty when off)."""

    def __init__(self, cfg: ContentConfig) -> None:
        self.cfg = cfg
        self.hook = load_hook(cfg.redact_hook) if cfg.redact_hook else None

    def redact(self, text: str) -> str:
        if self.cfg.redact_builtin:
            text = redact_builtin(text)
        if self.hook is not None:
            text = str(self.hook(text))
        return text

    def stored(self, attributes: Mapping[str, Any],
               events: Sequence[Event] | None = None) -> dict[str, Any]:
        """``input_content`` / ``output_content`` (and ``content_truncated``), or nothing."""
        return self.stored_sides(sides(attributes, events)) if self.cfg.capture else {}

    def stored_sides(self, sides_found: Mapping[Side, Messages]) -> dict[str, Any]:
        """:meth:`stored` of the sides' messages from :func:`sides`."""
        if not self.cfg.capture:
            return {}
        out: dict[str, Any] = {}
        for side, found in sides_found.items():
            budget = self.cfg.max_chars
            kept: Messages = []
            for message in found:
                text = self.redact(message["content"])
                if len(text) > budget:
                    out["content_truncated"] = True
                # Valid UTF-8 with no control characters but line breaks, at most the budget.
                text = validate.text(text, max_chars=budget, newlines=True)
                kept.append({"role": message["role"], "content": text})
                budget -= len(text)
                if budget <= 0 and message is not found[-1]:
                    out["content_truncated"] = True
                    break
            out[f"{side}_content"] = kept
        return out
