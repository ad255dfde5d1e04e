"""Fuzzing the decoders and the live receivers with hypothesis: whatever arrives, a decoder
raises only its own documented error, the receivers answer 2xx/4xx (never 5xx, never a
crash), and the consuming stages skip or process what was accepted."""

from __future__ import annotations

import gzip
import json
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from observer.collectors.receiver import otlp_json
from observer.collectors.receiver.inflate import BadEncoding, BodyTooLarge, BoundedBody
from observer.collectors.normalize.normalizer import Normalizer
from observer.collectors.receiver.signals import SIGNALS
from observer.collectors.paths.trace_grouping import FakeClock, TraceGrouper
from observer.core.broker import EmbeddedBroker
from observer.core.bus import Message, ensure_topics
from observer.collectors.paths.config import PathsConfig
from observer.core.config import KafkaConfig
from observer.core.topics import Topics
from tests.collectors_support import Receivers, receivers

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Keys OTLP/JSON uses, so generated documents reach deep into the decoders.
KEYS = st.sampled_from(
    [
        "resourceSpans", "resource_spans", "scopeSpans", "spans", "traceId", "spanId",
        "parentSpanId", "links", "attributes", "key", "value", "stringValue", "intValue",
        "arrayValue", "values", "kind", "status", "code", "startTimeUnixNano", "resource",
        "resourceMetrics", "scopeMetrics", "metrics", "name", "histogram", "dataPoints",
        "exemplars", "resourceLogs", "scopeLogs", "logRecords", "body", "partialSuccess",
    ]
)
LEAVES = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats()
    | st.text(max_size=40) | st.sampled_from(["5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174"])
)
JSONISH = st.recursive(
    LEAVES,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=30,
)
VALID = ExportTraceServiceRequest()
_span = VALID.resource_spans.add().scope_spans.add().spans.add(
    trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)), name="chat gpt-4o",
    start_time_unix_nano=1, end_time_unix_nano=2,
)
_span.attributes.add(key="gen_ai.operation.name").value.string_value = "chat"
_span.attributes.add(key="gen_ai.usage.input_tokens").value.int_value = 3
VALID_BYTES = VALID.SerializeToString()


def mutated(data: bytes) -> st.SearchStrategy[bytes]:
    """``data`` with a few bytes overwritten, inserted or cut."""

    @st.composite
    def build(draw: Any) -> bytes:
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(["set", "insert", "cut"]))
            i = draw(st.integers(0, max(len(out) - 1, 0)))
            if op == "set" and out:
                out[i] = draw(st.integers(0, 255))
            elif op == "insert":
                out[i:i] = draw(st.binary(min_size=1, max_size=4))
            else:
                del out[i : i + draw(st.integers(1, 8))]
        return bytes(out)

    return build()


@given(document=JSONISH, signal=st.sampled_from(sorted(SIGNALS)))
@FUZZ
def test_json_decoder_raises_only_its_error(document: Any, signal: str) -> None:
    body = json.dumps(document, allow_nan=True)
    try:
        otlp_json.decode(body, SIGNALS[signal].request)
    except otlp_json.OtlpJsonError:
        pass


@given(body=st.binary(max_size=300) | mutated(VALID_BYTES))
@FUZZ
def test_protobuf_decoding_raises_only_decode_error(body: bytes) -> None:
    for signal in SIGNALS.values():
        try:
            request = signal.request.FromString(body)
        except DecodeError:
            continue
        # Whatever parsed can be split, and reading the client's bytes through the reduced
        # views finds what the parser found.
        from_bytes = signal.split(request, 3, 1_000_000, body)
        from_message = signal.split(request, 3, 1_000_000, None)
        assert (from_bytes.accepted, from_bytes.rejected) == (
            from_message.accepted, from_message.rejected)
        assert from_bytes.requests.keys() == from_message.requests.keys()


@given(
    encoding=st.sampled_from(["gzip", "deflate", "", "identity", "br", "GZIP "]),
    body=st.binary(max_size=200)
    | mutated(gzip.compress(VALID_BYTES))
    | mutated(zlib.compress(VALID_BYTES)),
)
@FUZZ
def test_inflate_raises_only_its_errors(encoding: str, body: bytes) -> None:
    try:
        bounded = BoundedBody(encoding, limit=4096)
        bounded.feed(body)
        bounded.finish()
    except (BadEncoding, BodyTooLarge):
        pass


@given(body=mutated(VALID_BYTES))
@FUZZ
def test_stages_never_fail_on_what_decodes(body: bytes) -> None:
    message = Message("otlp_spans", 0, 0, None, body, 0)
    topics = Topics.from_config(KafkaConfig())
    Normalizer(topics).process([message])
    clock = FakeClock()
    grouper = TraceGrouper(topics, PathsConfig(grace_s=0, timeout_s=1), clock=clock)
    grouper.process([message])
    clock.now = 2
    grouper.tick()


@pytest.fixture(scope="module")
def live(broker: EmbeddedBroker) -> Iterator[Receivers]:
    """One pair of receivers for every example (starting them per example would dominate)."""
    tag = uuid.uuid4().hex[:8]
    kafka = KafkaConfig(
        bootstrap_servers=broker.bootstrap_servers,
        topic_prefix=f"f{tag}.",
        otlp_topic_prefix=f"f{tag}.",
        partitions=1,
    )
    topics = Topics.from_config(kafka)
    ensure_topics(kafka, topics)
    with receivers(kafka, topics, max_body_bytes=64 * 1024, ack_timeout_s=10) as r:
        yield r


@given(
    path=st.sampled_from([s.path for s in SIGNALS.values()]),
    content_type=st.sampled_from(
        ["application/x-protobuf", "application/json", "application/json; charset=utf-8",
         "text/plain", ""]
    ),
    encoding=st.sampled_from(["", "gzip", "deflate", "br"]),
    body=st.binary(max_size=400)
    | mutated(VALID_BYTES)
    | JSONISH.map(lambda d: json.dumps(d).encode()),
    compress=st.booleans(),
)
@FUZZ
def test_http_receiver_never_answers_5xx(
    live: Receivers, path: str, content_type: str, encoding: str, body: bytes, compress: bool
) -> None:
    if compress and encoding == "gzip":
        body = gzip.compress(body)
    elif compress and encoding == "deflate":
        body = zlib.compress(body)
    headers = {"Content-Type": content_type}
    if encoding:
        headers["Content-Encoding"] = encoding
    response = httpx.post(f"{live.http}{path}", content=body, headers=headers, timeout=30)
    assert response.status_code in (200, 400, 413, 415), response.text


@given(
    service=st.sampled_from(sorted(SIGNALS)),
    body=st.binary(max_size=400) | mutated(VALID_BYTES),
)
@FUZZ
def test_grpc_receiver_never_answers_internal(live: Receivers, service: str, body: bytes) -> None:
    with grpc.insecure_channel(live.grpc) as channel:
        export = channel.unary_unary(f"/{SIGNALS[service].grpc_service}/Export")
        try:
            export(body, timeout=30)
        except grpc.RpcError as e:
            assert e.code() in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            ), e.details()
