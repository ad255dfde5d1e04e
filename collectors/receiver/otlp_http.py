"""The OTLP/HTTP receiver: ``POST /v1/traces``, ``/v1/metrics``, ``/v1/logs`` -> Kafka.

Behaviour follows the OTLP specification (``docs/specification.md``, OTLP/HTTP):

- ``application/x-protobuf`` or ``application/json`` bodies (else 415), answered in the same
  content type; ``Content-Encoding: gzip`` or ``deflate``.
- The body is refused with 413 once it passes ``max_body_bytes``, as sent or inflated; it is
  inflated incrementally, so a gzip bomb costs at most that much memory. A trace too big for
  one Kafka message is refused with 413 too (traces already written stay written).
- 401 when a bearer token (or tenants) is configured and the request does not carry one,
  and whenever it carries more than one ``Authorization`` header.
- 429 with ``Retry-After`` when the in-flight budget (requests and decoded bytes, shared with
  the gRPC receiver) is spent: the receiver refuses instead of queueing. A body is charged
  its bytes as they arrive, then its estimated decoded size once whole
  (:mod:`observer.collectors.receiver.decoded_size`: JSON 16x, protobuf 8x), and only then takes a request
  slot; 408 and the connection closed when headers or body do not arrive in
  ``header_timeout_s`` / ``body_timeout_s`` (:mod:`observer.core.http_deadlines`).
- 400 with a ``google.rpc.Status`` (and ``BadRequest`` details) when the body does not parse.
- Invalid items (spans with a malformed or all-zero id, unnamed metrics, log records with bad
  ids) are dropped and reported through ``partial_success`` in a 200 answer, which clients do
  not retry.
- Spans are regrouped per trace, and the traces bound for one partition packed into one
  ``ExportTraceServiceRequest`` keyed by the lowercase hex id of its first trace
  (:mod:`observer.collectors.receiver.trace_split`); metrics and logs per resource. They are written raw: prompts and
  other content pass untouched. The answer waits for Kafka's acknowledgement, so a 200 means
  the data is durable; when Kafka does not acknowledge in ``ack_timeout_s`` the answer is 503
  with ``Retry-After``, which OTLP clients retry.

Metrics (default Prometheus registry): ``observer_receiver_requests_total{code}`` (the HTTP
status, ``408`` for a request cut off by a read deadline, or ``client_disconnected``),
``observer_receiver_spans_total{outcome="accepted|rejected"}`` and
``observer_receiver_items_total{signal,outcome}``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from prometheus_client import Counter
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from observer.collectors.receiver import decoded_size, otlp_json
from observer.collectors.receiver.budget import Slot
from observer.collectors.receiver.inflate import BadEncoding, BodyTooLarge, BoundedBody
from observer.collectors.receiver.intake import Intake, Prepared, Refusal, bad_request, too_large
from observer.collectors.receiver.signals import SIGNALS, Signal
from observer.collectors.receiver.config import ReceiverConfig
from observer.core.config import KafkaConfig
from observer.core.http_deadlines import timed_out
from observer.core.topics import Topics

log = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
TRACES_PATH = SIGNALS["traces"].path
METRICS_PATH = SIGNALS["metrics"].path
LOGS_PATH = SIGNALS["logs"].path

INLINE_MAX_BYTES = 256 * 1024
"""Protobuf bodies up to this size are parsed and split on the event loop (about 1 ms for
200 KB of spans); bigger ones, and JSON, in a worker thread."""

REQUESTS = Counter(
    "observer_receiver_requests_total",
    "OTLP/HTTP export requests, by HTTP status answered, or client_disconnected (the client "
    "went away before its body arrived).",
    ["code"],
)

# Extra routes served on the same port (the KServe logger intake): path -> handler factory.
# A handler gets the request, its tenant and its in-flight slot: it reads the body with
# read_admitted, which charges the slot and takes the request.
Route = Callable[[Request, str, Slot], Awaitable[Response]]


def create_app(
    receiver: ReceiverConfig,
    kafka: KafkaConfig,
    topics: Topics,
    *,
    intake: Intake | None = None,
    extra_routes: dict[str, Callable[[Intake], Route]] | None = None,
) -> FastAPI:
    """The receiver as an ASGI app.

    With ``intake`` given (the runtime shares one with the gRPC receiver, and so the in-flight
    budget) the caller opens and closes it; otherwise the app's lifespan opens its own. Serve
    it with ``observer.core.http.ServerThread(app, receiver.host, receiver.http_port)`` or any
    ASGI server that runs lifespans. ``extra_routes`` adds POST routes that share the
    receiver's authentication and budget; each factory gets the intake and returns a handler
    taking the request, its tenant and its in-flight slot (``observer.collectors.kserve.intake``).
    """
    owned = intake is None
    shared = intake if intake is not None else Intake(receiver, kafka, topics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owned:
            await run_in_threadpool(shared.open)
        try:
            yield
        finally:
            if owned:
                await run_in_threadpool(shared.close)

    app = FastAPI(
        title="observer OTLP/HTTP receiver",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.intake = shared

    for signal in SIGNALS.values():
        app.add_api_route(signal.path, _export_route(signal, shared), methods=["POST"])
    for path, factory in (extra_routes or {}).items():
        app.add_api_route(path, _extra_route(factory(shared), shared), methods=["POST"])
    return app


def _export_route(signal: Signal, intake: Intake) -> Callable[[Request], Awaitable[Response]]:
    async def export(request: Request) -> Response:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            tenant = intake.authenticate(request.headers.getlist("authorization"))
            if media_type not in (PROTOBUF, JSON):
                raise Refusal(
                    415,
                    code_pb2.INVALID_ARGUMENT,
                    f"unsupported Content-Type {media_type!r}: send {PROTOBUF} or {JSON}",
                )
            with intake.reserve() as slot:
                body = await read_admitted(request, intake, slot, media_type)
                # Parsing and splitting are CPU work: a typical batch costs less on the loop
                # than the hop to a worker thread and back; a big one would stall the loop.
                if media_type == PROTOBUF and len(body) <= INLINE_MAX_BYTES:
                    prepared = _prepare(intake, signal, body, media_type, tenant)
                else:
                    prepared = await run_in_threadpool(
                        _prepare, intake, signal, body, media_type, tenant
                    )
                answer = await intake.deliver(prepared)
            response = Response(_encode(answer, media_type), 200, media_type=media_type)
        except Refusal as refusal:
            # 415 answers cannot use an unknown content type; JSON is readable with curl.
            response = status_response(refusal, media_type if media_type == PROTOBUF else JSON)
        except ClientDisconnect:
            return client_gone(request)
        REQUESTS.labels(str(response.status_code)).inc()
        return response

    export.__name__ = f"export_{signal.name}"
    return export


def _extra_route(handler: Route, intake: Intake) -> Callable[[Request], Awaitable[Response]]:
    async def route(request: Request) -> Response:
        try:
            tenant = intake.authenticate(request.headers.getlist("authorization"))
            # The handler reads the body with read_admitted, which takes the request slot.
            with intake.reserve() as slot:
                response = await handler(request, tenant, slot)
        except Refusal as refusal:
            response = status_response(refusal, JSON)
        except ClientDisconnect:
            return client_gone(request)
        REQUESTS.labels(str(response.status_code)).inc()
        return response

    return route


async def read_admitted(
    request: Request, intake: Intake, slot: Slot, media_type: str = ""
) -> bytes:
    """The request body, then the request admitted: a 429 :class:`Refusal` as soon as the
    budget is spent. The bytes of the body are charged to ``slot`` as they arrive (what it
    holds while arriving), the rest of its decoded size (:mod:`observer.collectors.receiver.decoded_size`) once
    it is whole, at once, so that many bodies arriving together cannot each take a part and
    all be refused. Only a whole body takes one of the request slots, so slow senders (cut off
    by the server's ``body_timeout_s``) hold none."""
    body = await read_body(
        request, intake.receiver.max_body_bytes, charge=lambda n: intake.account(slot, n)
    )
    intake.account(slot, len(body) * (decoded_size.factor(media_type) - 1))
    intake.take_request(slot)
    return body


def client_gone(request: Request) -> Response:
    """Count and log a request whose client went away (or was cut off by a read deadline)
    before its body arrived; the answer is for nobody."""
    deadline = timed_out(request.scope)
    outcome = "408" if deadline else "client_disconnected"
    REQUESTS.labels(outcome).inc()
    client = request.client.host if request.client else "?"
    if deadline:
        log.info("OTLP/HTTP %s from %s: request %s not received in time, connection closed",
                 request.url.path, client, deadline)
    else:
        log.info("OTLP/HTTP %s from %s: client disconnected before its body arrived",
                 request.url.path, client)
    return Response(status_code=408 if deadline else 499)


async def read_body(
    request: Request, limit: int, charge: Callable[[int], None] | None = None
) -> bytes:
    """The request body, inflated, or a 413/415/400 :class:`Refusal`; ``charge`` is called
    with each chunk's inflated size (it may raise a :class:`Refusal`). A client that goes away
    raises starlette's ``ClientDisconnect``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(f"body exceeds {limit} bytes")
    try:
        body = BoundedBody(request.headers.get("content-encoding", ""), limit)
    except BadEncoding as e:
        raise Refusal(415, code_pb2.INVALID_ARGUMENT, str(e)) from None
    try:
        async for chunk in request.stream():
            before = body.size
            body.feed(chunk)
            if charge is not None and body.size > before:
                charge(body.size - before)
        return body.finish()
    except BodyTooLarge as e:
        raise too_large(str(e)) from None
    except BadEncoding as e:
        raise bad_request(str(e)) from None


def _decode(body: bytes, media_type: str, signal: Signal = SIGNALS["traces"]) -> Any:
    try:
        if media_type == JSON:
            return otlp_json.decode(body, signal.request)
        return signal.request.FromString(body)
    except otlp_json.OtlpJsonError as e:
        raise bad_request(str(e)) from None
    except DecodeError as e:
        raise bad_request(
            f"body is not a protobuf {signal.request.__name__}: {e}"
        ) from None


def _prepare(
    intake: Intake, signal: Signal, body: bytes, media_type: str, tenant: str
) -> Prepared:
    """Decode ``body`` and split it for Kafka (CPU work, no waiting)."""
    message = _decode(body, media_type, signal)
    return intake.prepare(signal, message, tenant, body if media_type == PROTOBUF else None)


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
