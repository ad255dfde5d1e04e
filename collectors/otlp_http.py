"""The OTLP/HTTP trace receiver: ``POST /v1/traces`` -> Kafka ``otlp_spans``.

Behaviour follows the OTLP specification (``docs/specification.md``, OTLP/HTTP):

- ``application/x-protobuf`` or ``application/json`` bodies (else 415), answered in the same
  content type; ``Content-Encoding: gzip`` or ``deflate``.
- The body is refused with 413 once it passes ``max_body_bytes``, as sent or inflated; it is
  inflated incrementally, so a gzip bomb costs at most that much memory. A trace too big for
  one Kafka message is refused with 413 too (traces already written stay written).
- 401 when a bearer token is configured and the request does not carry it.
- 400 with a ``google.rpc.Status`` (and ``BadRequest`` details) when the body does not parse.
- Spans with a malformed or all-zero trace or span id are dropped and reported through
  ``partial_success`` in a 200 answer, which clients do not retry.
- The other spans are regrouped per trace, one ``ExportTraceServiceRequest`` per trace keyed by
  the lowercase hex trace id, and written raw: prompts and other content pass untouched. The
  answer waits for Kafka's acknowledgement, so a 200 means the spans are durable; when Kafka
  does not acknowledge in ``ack_timeout_s`` the answer is 503 with ``Retry-After``, which OTLP
  clients retry.

Metrics (default Prometheus registry): ``observer_receiver_requests_total{code}`` and
``observer_receiver_spans_total{outcome="accepted|rejected"}``.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from kafka import KafkaProducer
from kafka.errors import MessageSizeTooLargeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client import Counter
from starlette.concurrency import run_in_threadpool

from collectors import otlp_json
from collectors.inflate import BadEncoding, BodyTooLarge, BoundedBody
from collectors.trace_split import split_by_trace
from observer.core.bus import Output, make_producer, produce_all
from observer.core.config import KafkaConfig, ReceiverConfig
from observer.core.topics import Topics

log = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
TRACES_PATH = "/v1/traces"
RETRY_AFTER_S = 5

REQUESTS = Counter(
    "observer_receiver_requests_total",
    "OTLP/HTTP export requests answered, by HTTP status.",
    ["code"],
)
SPANS = Counter(
    "observer_receiver_spans_total",
    "Spans received: accepted (acknowledged by Kafka) or rejected (invalid ids).",
    ["outcome"],
)


class Refusal(Exception):
    """An export answered with an error status; carries what the answer needs."""

    def __init__(
        self,
        http_status: int,
        grpc_code: int,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        bad_request: bool = False,
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.grpc_code = grpc_code
        self.message = message
        self.headers = headers or {}
        self.bad_request = bad_request


def create_app(receiver: ReceiverConfig, kafka: KafkaConfig, topics: Topics) -> FastAPI:
    """The receiver as an ASGI app; its lifespan opens and closes the Kafka producer.

    Serve it with ``observer.core.http.ServerThread(app, receiver.host, receiver.http_port)``
    or any ASGI server that runs lifespans.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Every Kafka wait is bounded by ack_timeout_s: max_block_ms covers metadata (a lost
        # broker), and records answered with 503 expire soon after instead of being delivered
        # minutes later next to the client's retry (and blocking close meanwhile).
        wait_ms = int(receiver.ack_timeout_s * 1000)
        producer = await run_in_threadpool(
            make_producer,
            kafka,
            max_block_ms=wait_ms,
            request_timeout_ms=wait_ms,
            delivery_timeout_ms=wait_ms + 1000,  # kafka-python wants >= request + linger
        )
        app.state.producer = producer
        try:
            yield
        finally:
            try:
                await run_in_threadpool(producer.close, 5)
            except Exception as e:  # noqa: BLE001 (unacknowledged records: clients got 503)
                log.warning("OTLP receiver: Kafka producer did not close cleanly: %s", e)

    app = FastAPI(
        title="observer OTLP/HTTP receiver",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    token = receiver.auth_token.get_secret_value() if receiver.auth_token else None

    @app.post(TRACES_PATH)
    async def export_traces(request: Request) -> Response:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            if token is not None and not authorized(request.headers.get("authorization"), token):
                raise Refusal(
                    401,
                    code_pb2.UNAUTHENTICATED,
                    "missing or wrong bearer token",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if media_type not in (PROTOBUF, JSON):
                raise Refusal(
                    415,
                    code_pb2.INVALID_ARGUMENT,
                    f"unsupported Content-Type {media_type!r}: send {PROTOBUF} or {JSON}",
                )
            body = await read_body(request, receiver.max_body_bytes)
            answer = await _export(body, media_type, app.state.producer, receiver, topics)
            response = Response(_encode(answer, media_type), 200, media_type=media_type)
        except Refusal as refusal:
            # 415 answers cannot use an unknown content type; JSON is readable with curl.
            response = status_response(refusal, media_type if media_type == PROTOBUF else JSON)
        REQUESTS.labels(str(response.status_code)).inc()
        return response

    return app


def authorized(header: str | None, token: str) -> bool:
    """True when ``header`` is ``Bearer <token>``; compared in constant time.

    >>> authorized("Bearer s3cret", "s3cret"), authorized("bearer s3cret", "s3cret")
    (True, True)
    >>> authorized("Bearer guess", "s3cret"), authorized(None, "s3cret")
    (False, False)
    """
    scheme, _, credentials = (header or "").partition(" ")
    # compare_digest runs even for a wrong scheme, so timing tells nothing either way.
    matches = hmac.compare_digest(credentials.strip().encode(), token.encode())
    return matches and scheme.lower() == "bearer"


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, inflated, or a 413/415/400 :class:`Refusal`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Refusal(413, code_pb2.RESOURCE_EXHAUSTED, f"body exceeds {limit} bytes")
    try:
        body = BoundedBody(request.headers.get("content-encoding", ""), limit)
    except BadEncoding as e:
        raise Refusal(415, code_pb2.INVALID_ARGUMENT, str(e)) from None
    try:
        async for chunk in request.stream():
            body.feed(chunk)
        return body.finish()
    except BodyTooLarge as e:
        raise Refusal(413, code_pb2.RESOURCE_EXHAUSTED, str(e)) from None
    except BadEncoding as e:
        raise Refusal(400, code_pb2.INVALID_ARGUMENT, str(e), bad_request=True) from None


async def _export(
    body: bytes,
    media_type: str,
    producer: KafkaProducer,
    receiver: ReceiverConfig,
    topics: Topics,
) -> ExportTraceServiceResponse:
    # Parsing and splitting are CPU work on up to max_body_bytes: off the event loop.
    request = await run_in_threadpool(_decode, body, media_type)
    split = await run_in_threadpool(split_by_trace, request)
    outputs = [
        Output(topics.spans, trace_id, trace_request.SerializeToString())
        for trace_id, trace_request in split.requests.items()
    ]
    if outputs:
        try:
            await run_in_threadpool(produce_all, producer, outputs, receiver.ack_timeout_s)
        except MessageSizeTooLargeError as e:
            # Retrying cannot help a trace bigger than Kafka accepts: answer non-retryable.
            raise Refusal(
                413,
                code_pb2.RESOURCE_EXHAUSTED,
                f"the spans of one trace exceed Kafka's message size limit: {e}",
            ) from None
        except Exception as e:  # noqa: BLE001 (KafkaError, timeouts, ...: all "not durable")
            log.warning("OTLP receiver: Kafka did not acknowledge %d traces: %s", len(outputs), e)
            raise Refusal(
                503,
                code_pb2.UNAVAILABLE,
                f"Kafka did not acknowledge the spans: {e}",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from None
    SPANS.labels("accepted").inc(split.accepted)
    answer = ExportTraceServiceResponse()
    if split.rejected:
        SPANS.labels("rejected").inc(split.rejected)
        answer.partial_success.rejected_spans = split.rejected
        answer.partial_success.error_message = (
            f"{split.rejected} span(s) rejected: trace id must be 16 bytes and span id 8 bytes, "
            "not all zero"
        )
    return answer


def _decode(body: bytes, media_type: str) -> ExportTraceServiceRequest:
    try:
        if media_type == JSON:
            return otlp_json.decode_trace_request(body)
        return ExportTraceServiceRequest.FromString(body)
    except otlp_json.OtlpJsonError as e:
        raise Refusal(400, code_pb2.INVALID_ARGUMENT, str(e), bad_request=True) from None
    except DecodeError as e:
        raise Refusal(
            400,
            code_pb2.INVALID_ARGUMENT,
            f"body is not a protobuf ExportTraceServiceRequest: {e}",
            bad_request=True,
        ) from None


def _encode(message: Message, media_type: str) -> bytes:
    return otlp_json.encode(message) if media_type == JSON else message.SerializeToString()


def status_response(refusal: Refusal, media_type: str) -> Response:
    """The OTLP error answer: a ``google.rpc.Status`` naming the problem.

    >>> r = status_response(Refusal(400, 3, "bad", bad_request=True), JSON)
    >>> r.status_code, r.body[:30]
    (400, b'{"code":3,"message":"bad","det')
    """
    status = status_pb2.Status(code=refusal.grpc_code, message=refusal.message)
    if refusal.bad_request:
        details = AnyMessage()
        details.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field="body", description=refusal.message
                    )
                ]
            )
        )
        status.details.append(details)
    return Response(
        _encode(status, media_type),
        refusal.http_status,
        headers=refusal.headers,
        media_type=media_type,
    )
