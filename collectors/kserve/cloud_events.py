"""CloudEvents 1.0 as they travel over HTTP and Kafka: parse, validate, re-encode.

Only what the KServe logger intake needs, per the CloudEvents HTTP and Kafka protocol bindings:

- HTTP binary content mode: attributes in ``ce-*`` headers (percent-encoded), the data is the
  body and ``Content-Type`` its ``datacontenttype``. KServe's logger sends this mode.
- HTTP structured content mode: ``Content-Type: application/cloudevents+json`` and the whole
  event as a JSON object (``data`` as JSON, or ``data_base64``); batched mode
  (``application/cloudevents-batch+json``) is a JSON array of such objects.
- Kafka binary content mode, which the intake writes: attributes in ``ce_*`` record headers,
  ``content-type`` header, the value is the data unchanged. Kafka structured mode (a
  ``content-type: application/cloudevents+json`` header and the JSON event as value) is read
  too, so a Knative KafkaSink in either mode can write the topic directly.

Attribute values are made safe to store (:func:`observer.core.validate.text`: valid UTF-8, no
control characters, at most :data:`MAX_ATTRIBUTE_CHARS`); a body that is not JSON, or nests
or counts past what the decoder takes, is a :class:`CloudEventError`.

>>> event = from_http({"ce-specversion": "1.0", "ce-id": "r1", "ce-source": "/p",
...     "ce-type": "t", "ce-inferenceservicename": "iris", "content-type": "application/json"},
...     b'{"instances": [[1]]}')
>>> event.id, event.attributes["inferenceservicename"], event.data
('r1', 'iris', b'{"instances": [[1]]}')
>>> headers, value = to_kafka(event)
>>> from_kafka(headers, value) == event
True
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

from observer.core import validate

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
REQUIRED = ("specversion", "id", "source", "type")
SPEC_VERSIONS = frozenset({"1.0", "0.3"})
# Attribute names are lowercase letters and digits (CloudEvents 1.0, "Naming conventions").
_NAME = re.compile(r"^[a-z0-9]{1,64}$")
MAX_ATTRIBUTE_CHARS = 2048
"""Longest attribute value kept (URIs in ``source`` can be long; ids and names are short)."""


class CloudEventError(ValueError):
    """The message is not a valid CloudEvent; the text names what is wrong."""


@dataclass(frozen=True)
class CloudEvent:
    """One event: its context attributes (extensions included, all strings) and its data."""

    attributes: dict[str, str]
    data: bytes = b""
    datacontenttype: str = field(default="")

    @property
    def id(self) -> str:
        return self.attributes["id"]

    @property
    def type(self) -> str:
        return self.attributes["type"]


def _validated(attributes: dict[str, str], data: bytes, content_type: str) -> CloudEvent:
    missing = [a for a in REQUIRED if not attributes.get(a)]
    if missing:
        raise CloudEventError(f"CloudEvent lacks required attribute(s): {', '.join(missing)}")
    if attributes["specversion"] not in SPEC_VERSIONS:
        raise CloudEventError(
            f"unsupported CloudEvents specversion {attributes['specversion']!r} (want 1.0)"
        )
    bad = [name for name in attributes if not _NAME.match(name)]
    if bad:
        raise CloudEventError(f"invalid CloudEvent attribute name(s): {', '.join(bad)}")
    attributes.pop("datacontenttype", None)
    safe = {name: validate.text(value, MAX_ATTRIBUTE_CHARS) for name, value in attributes.items()}
    return CloudEvent(safe, data, validate.text(content_type, MAX_ATTRIBUTE_CHARS))


def _media_type(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()


def from_http(headers: Mapping[str, str], body: bytes) -> CloudEvent:
    """One event from an HTTP request in binary or structured mode (not batched)."""
    events = events_from_http(headers, body)
    if len(events) != 1:
        raise CloudEventError(f"expected one CloudEvent, got {len(events)}")
    return events[0]


def events_from_http(headers: Mapping[str, str], body: bytes) -> list[CloudEvent]:
    """The events of an HTTP request: binary, structured or batched content mode.

    ``headers`` keys may be in any case.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    content_type = lowered.get("content-type", "")
    media = _media_type(content_type)
    if media == STRUCTURED:
        return [_from_json_object(_json(body), "the request body")]
    if media == BATCH:
        batch = _json(body)
        if not isinstance(batch, list):
            raise CloudEventError("a batched CloudEvents body must be a JSON array")
        return [_from_json_object(item, f"batch item {i}") for i, item in enumerate(batch)]
    attributes = {k[3:]: unquote(v) for k, v in lowered.items() if k.startswith("ce-")}
    if not attributes:
        raise CloudEventError(
            "not a CloudEvent: no ce-* headers (binary mode) and Content-Type is not "
            f"{STRUCTURED} or {BATCH} (structured mode)"
        )
    return [_validated(attributes, body, content_type)]


def _json(body: bytes) -> object:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:  # not JSON, bad UTF-8, huge numbers, too deep
        why = validate.describe(e)
        raise CloudEventError(f"structured CloudEvent is not JSON: {why}") from None


def _from_json_object(obj: object, where: str) -> CloudEvent:
    if not isinstance(obj, dict):
        raise CloudEventError(f"{where}: a structured CloudEvent must be a JSON object")
    obj = dict(obj)
    content_type = str(obj.get("datacontenttype") or "application/json")
    if "data_base64" in obj:
        try:
            data = base64.b64decode(str(obj.pop("data_base64")), validate=True)
        except (binascii.Error, ValueError) as e:
            raise CloudEventError(f"{where}: data_base64 is not base64: {e}") from None
    elif "data" in obj:
        value = obj.pop("data")
        # JSON data stays JSON; a string under a non-JSON content type is the text itself.
        if isinstance(value, str) and "json" not in _media_type(content_type):
            data = value.encode("utf-8", "replace")
        else:
            data = json.dumps(value, separators=(",", ":")).encode("utf-8", "replace")
    else:
        data = b""
    attributes = {
        str(k): v if isinstance(v, str) else json.dumps(v)
        for k, v in obj.items()
        if v is not None
    }
    return _validated(attributes, data, content_type)


def to_kafka(event: CloudEvent) -> tuple[tuple[tuple[str, bytes], ...], bytes]:
    """Kafka binary content mode: ``(headers, value)``."""
    # Kafka headers are bytes: values go as UTF-8, unescaped (unlike HTTP's percent-encoding).
    headers = [(f"ce_{name}", value.encode()) for name, value in event.attributes.items()]
    if event.datacontenttype:
        headers.append(("content-type", event.datacontenttype.encode()))
    return tuple(headers), event.data


def from_kafka(headers: Iterable[tuple[str, bytes | None]], value: bytes | None) -> CloudEvent:
    """An event from a Kafka record in binary or structured content mode."""
    by_name = {k.lower(): (v or b"").decode("utf-8", "replace") for k, v in headers}
    content_type = by_name.get("content-type", "")
    if _media_type(content_type) == STRUCTURED:
        return _from_json_object(_json(value or b""), "the record value")
    attributes = {k[3:]: v for k, v in by_name.items() if k.startswith("ce_")}
    if not attributes:
        raise CloudEventError("Kafka record has no ce_* headers and is not structured mode")
    return _validated(attributes, value or b"", content_type)
