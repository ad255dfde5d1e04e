"""OTLP/JSON: the JSON encoding of OTLP messages, to and from their protobuf classes.

OTLP/JSON is protobuf's canonical JSON mapping with three differences that
``google.protobuf.json_format`` does not know about: trace and span ids are hex strings (not
base64), enums are integers, and receivers ignore unknown fields. Keys are lowerCamelCase and
int64 values decimal strings, though numbers and snake_case keys are accepted.

>>> body = (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{'
...         b'"traceId": "5B8EFFF798038103D269B633813FC60C", "spanId": "eee19b7ec3c1b174",'
...         b' "name": "chat", "kind": 3, "startTimeUnixNano": "1700000000000000000",'
...         b' "futureField": true}]}]}]}')
>>> request = decode_trace_request(body)
>>> span = request.resource_spans[0].scope_spans[0].spans[0]
>>> span.span_id.hex(), span.kind, span.start_time_unix_nano
('eee19b7ec3c1b174', 3, 1700000000000000000)
>>> json.loads(encode(request))["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"]
'5b8efff798038103d269b633813fc60c'
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

M = TypeVar("M", bound=Message)

# Where hex ids live in the export requests of the three signals: a path of levels (each
# named in both spellings the protobuf JSON parser accepts), then the id keys at its end.
_Level = tuple[str, ...]
_SPAN_IDS = ("traceId", "trace_id", "spanId", "span_id", "parentSpanId", "parent_span_id")
_LINK_IDS = ("traceId", "trace_id", "spanId", "span_id")
_RESOURCE_SPANS: _Level = ("resourceSpans", "resource_spans")
_SCOPE_SPANS: _Level = ("scopeSpans", "scope_spans")
_RESOURCE_METRICS: _Level = ("resourceMetrics", "resource_metrics")
_SCOPE_METRICS: _Level = ("scopeMetrics", "scope_metrics")
_METRIC_DATA: tuple[_Level, ...] = (
    ("gauge",),
    ("sum",),
    ("histogram",),
    ("exponentialHistogram", "exponential_histogram"),
    ("summary",),
)
ID_LOCATIONS: list[tuple[tuple[_Level, ...], tuple[str, ...]]] = [
    ((_RESOURCE_SPANS, _SCOPE_SPANS, ("spans",)), _SPAN_IDS),
    ((_RESOURCE_SPANS, _SCOPE_SPANS, ("spans",), ("links",)), _LINK_IDS),
    (
        (("resourceLogs", "resource_logs"), ("scopeLogs", "scope_logs"),
         ("logRecords", "log_records")),
        _LINK_IDS,
    ),
    *(
        (
            (_RESOURCE_METRICS, _SCOPE_METRICS, ("metrics",), data,
             ("dataPoints", "data_points"), ("exemplars",)),
            _LINK_IDS,
        )
        for data in _METRIC_DATA
    ),
]

_HEX = re.compile(r"[0-9a-fA-F]*")


class OtlpJsonError(ValueError):
    """The body is not an OTLP/JSON message of the expected type; the text says why."""


def decode(body: bytes | str, message_type: type[M]) -> M:
    """Parse an OTLP/JSON body into ``message_type``.

    >>> from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ...     ExportTraceServiceResponse)
    >>> decode(b'{"partialSuccess": {"rejectedSpans": 2}}', ExportTraceServiceResponse)
    partial_success {
      rejected_spans: 2
    }
    <BLANKLINE>
    >>> decode(b'{"resourceSpans": [{"scope\\\\ud800": {}}]}',
    ...        ExportTraceServiceRequest)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    observer.collectors.receiver.otlp_json.OtlpJsonError: body has a string that is not valid Unicode: ...
    """
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError
        raise OtlpJsonError(f"body is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise OtlpJsonError(f"body must be a JSON object, not {type(data).__name__}")
    _convert_ids(data, _hex_to_base64)
    message = message_type()
    try:
        json_format.ParseDict(data, message, ignore_unknown_fields=True)
    except (json_format.ParseError, RecursionError, ValueError, TypeError) as e:
        raise OtlpJsonError(f"body is not an OTLP/JSON {message_type.__name__}: {e}") from None
    except SystemError as e:
        # JSON allows lone surrogates ("\ud800") that protobuf strings cannot hold; in a
        # key, upb's field lookup reports the UnicodeEncodeError wrapped in a SystemError.
        if not isinstance(e.__cause__, UnicodeError):
            raise
        raise OtlpJsonError(f"body has a string that is not valid Unicode: {e.__cause__}") from None
    return message


def decode_trace_request(body: bytes | str) -> ExportTraceServiceRequest:
    """Parse an OTLP/JSON ``ExportTraceServiceRequest`` (see the module example)."""
    return decode(body, ExportTraceServiceRequest)


def encode(message: Message) -> bytes:
    """Serialise ``message`` as compact OTLP/JSON: hex ids, integer enums, camelCase keys.

    >>> from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ...     ExportTraceServiceResponse)
    >>> response = ExportTraceServiceResponse()
    >>> encode(response)
    b'{}'
    >>> response.partial_success.rejected_spans = 1
    >>> encode(response)
    b'{"partialSuccess":{"rejectedSpans":"1"}}'
    """
    data = json_format.MessageToDict(message, use_integers_for_enums=True)
    _convert_ids(data, _base64_to_hex)
    return json.dumps(data, separators=(",", ":")).encode()


def _hex_to_base64(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _HEX.fullmatch(value) or len(value) % 2:
        raise OtlpJsonError(f"{where} must be a hex string, got {value!r:.60}")
    return base64.b64encode(bytes.fromhex(value)).decode()


def _base64_to_hex(value: Any, where: str) -> str:
    try:
        return base64.b64decode(value, validate=True).hex()
    except (binascii.Error, TypeError):
        raise ValueError(f"{where} is not base64: {value!r:.60}") from None


def _convert_ids(data: dict[str, Any], convert: Callable[[Any, str], str]) -> None:
    """Rewrite the trace and span ids of an export request in place (see :data:`ID_LOCATIONS`).

    Malformed structure (a list where an object belongs...) is left for the protobuf parser to
    report.
    """
    for levels, keys in ID_LOCATIONS:
        for obj, where in _walk(data, levels, ""):
            _convert_keys(obj, keys, convert, where)


def _walk(obj: Any, levels: tuple[_Level, ...], where: str) -> Iterator[tuple[Any, str]]:
    """The objects at the end of ``levels`` under ``obj``, with their JSON path."""
    if not levels:
        yield obj, where
        return
    if not isinstance(obj, dict):
        return
    for name in levels[0]:
        child = obj.get(name)
        if isinstance(child, list):
            for i, item in enumerate(child):
                yield from _walk(item, levels[1:], f"{where}{'.' if where else ''}{name}[{i}]")
            return
        if isinstance(child, dict):
            yield from _walk(child, levels[1:], f"{where}{'.' if where else ''}{name}")
            return


def _convert_keys(
    obj: Any, keys: tuple[str, ...], convert: Callable[[Any, str], str], where: str
) -> None:
    if not isinstance(obj, dict):
        return
    for key in keys:
        if key in obj:
            obj[key] = convert(obj[key], f"{where}.{key}")
