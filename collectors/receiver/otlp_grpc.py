"""The OTLP/gRPC receiver: TraceService, MetricsService and LogsService ``Export`` on :4317.

Every call goes through the same :class:`~observer.collectors.receiver.intake.Intake` as OTLP/HTTP: bearer
token (``authorization`` metadata), in-flight budget, split, Kafka acknowledgement before the
answer. Refusals follow the OTLP specification for gRPC:

- an unparsable message: ``INVALID_ARGUMENT`` (the request is decoded here, not by grpcio, so
  garbage gets INVALID_ARGUMENT rather than grpcio's INTERNAL);
- too large (``max_body_bytes``, checked by grpcio after gzip decompression):
  ``RESOURCE_EXHAUSTED`` without ``RetryInfo``, which clients do not retry;
- budget spent or Kafka not acknowledging: ``UNAVAILABLE`` with a ``google.rpc.RetryInfo``
  detail (``grpc-status-details-bin``) carrying ``retry_after_s``;
- a missing or wrong token, or more than one ``authorization`` entry: ``UNAUTHENTICATED``.

gzip-compressed requests are decompressed by grpcio itself.
The services are named from the opentelemetry-proto descriptors; requests arrive as bytes
because a generated servicer would let grpcio parse them first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import grpc
from google.protobuf.any_pb2 import Any as AnyMessage
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from prometheus_client import Counter

from observer.collectors.receiver import decoded_size
from observer.collectors.receiver.intake import Intake, Refusal, bad_request
from observer.collectors.receiver.signals import SIGNALS, Signal
from observer.core.tls import CertificateFiles, grpc_credentials

log = logging.getLogger(__name__)

RETRY_INFO_TRAILER = "google.rpc.retryinfo-bin"

GRPC_REQUESTS = Counter(
    "observer_receiver_grpc_requests_total",
    "OTLP/gRPC export calls answered, by gRPC status code name.",
    ["code"],
)


def grpc_status(refusal: Refusal) -> grpc.Status:
    """The gRPC status of a refusal, with ``RetryInfo`` when the client should retry.

    >>> from google.rpc import code_pb2
    >>> s = grpc_status(Refusal(429, code_pb2.UNAVAILABLE, "busy", retry_after_s=5))
    >>> s.code, s.details
    (<StatusCode.UNAVAILABLE: (14, 'unavailable')>, 'busy')
    """
    status = status_pb2.Status(code=refusal.grpc_code, message=refusal.message)
    retry: tuple[tuple[str, bytes], ...] = ()
    if refusal.retry_after_s is not None:
        retry_info = error_details_pb2.RetryInfo(
            retry_delay=Duration(seconds=refusal.retry_after_s)
        )
        detail = AnyMessage()
        detail.Pack(retry_info)
        status.details.append(detail)
        # The spec's place is the status details (grpc-status-details-bin, which the Collector's
        # exporters read); the Python SDK's exporter reads this trailer instead: send both.
        retry = ((RETRY_INFO_TRAILER, retry_info.SerializeToString()),)
    elif refusal.bad_request:
        detail = AnyMessage()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field="request", description=refusal.message
                    )
                ]
            )
        )
        status.details.append(detail)
    standard = rpc_status.to_status(status)
    return _Status(standard.code, standard.details, (*standard.trailing_metadata, *retry))


class _Status(NamedTuple):
    """A ``grpc.Status`` (grpcio defines the interface only)."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, bytes], ...]


def _handler(signal: Signal, intake: Intake) -> Callable[[bytes, grpc.ServicerContext], bytes]:
    def export(body: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            # Every value: metadata keys repeat, and two tokens must be refused, not one chosen.
            tenant = intake.authenticate(
                [v for k, v in context.invocation_metadata() if k == "authorization"]
            )
            with intake.admit() as slot:
                # grpcio hands over whole messages: no slot is held while one arrives.
                intake.account(slot, decoded_size.charged(len(body), "application/grpc"))
                try:
                    request = signal.request.FromString(body)
                except DecodeError as e:
                    raise bad_request(
                        f"message is not a protobuf {signal.request.__name__}: {e}"
                    ) from None
                answer = intake.export(signal, request, tenant, body)
        except Refusal as refusal:
            status = grpc_status(refusal)
            GRPC_REQUESTS.labels(status.code.name).inc()
            context.abort_with_status(status)
        GRPC_REQUESTS.labels("OK").inc()
        return answer.SerializeToString()

    return export


def connection_limits(handshake_s: float, grace_s: float) -> list[tuple[str, int]]:
    """grpcio options that keep idle, silent and slow connections from piling up: a
    connection must finish its HTTP/2 handshake (client preface and SETTINGS) within
    ``handshake_s``; one idle for 5 minutes is closed (GOAWAY; clients reconnect); dead peers
    are found by pings; every connection is recycled after 30 minutes, its calls given
    ``grace_s`` to finish, so a call whose message never completes ends then at the latest.
    grpcio reads each message whole before a worker thread runs, so slow senders hold no
    worker and no in-flight slot.

    >>> dict(connection_limits(10, 30))["grpc.server_handshake_timeout_ms"]
    10000
    """
    return [
        ("grpc.server_handshake_timeout_ms", int(handshake_s * 1000)),
        ("grpc.max_connection_idle_ms", 5 * 60_000),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.max_connection_age_ms", 30 * 60_000),
        ("grpc.max_connection_age_grace_ms", int(grace_s * 1000)),
    ]


class GrpcReceiver:
    """The gRPC server; :meth:`start` binds ``host:port`` (0 picks a free port, see ``port``).

    The worker pool is a little larger than the in-flight budget, so a saturated receiver
    always has a thread free to refuse quickly rather than letting calls queue in grpcio.
    With ``tls`` it serves TLS (mutual TLS with a client CA) with the newest of those
    certificate files (:func:`observer.core.tls.grpc_credentials`).
    """

    def __init__(
        self, intake: Intake, host: str, port: int, tls: CertificateFiles | None = None
    ) -> None:
        self.intake = intake
        self.host = host
        self.port = port
        self.tls = tls
        receiver = intake.receiver
        workers = min(receiver.max_inflight_requests + 4, 256)
        self.server = grpc.server(
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="otlp-grpc"),
            options=[
                ("grpc.max_receive_message_length", receiver.max_body_bytes),
                # Without this a second receiver on the same port binds silently (SO_REUSEPORT).
                ("grpc.so_reuseport", 0),
                *connection_limits(receiver.header_timeout_s, receiver.body_timeout_s),
            ],
        )
        handlers = {
            signal.grpc_service: grpc.method_handlers_generic_handler(
                signal.grpc_service,
                {
                    "Export": grpc.unary_unary_rpc_method_handler(
                        _handler(signal, intake),
                        request_deserializer=None,  # bytes: decoded in the handler
                        response_serializer=None,
                    )
                },
            )
            for signal in SIGNALS.values()
        }
        self.server.add_generic_rpc_handlers(tuple(handlers.values()))

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The endpoint as OTLP exporters take it (``https://`` when TLS is on)."""
        return f"{'https' if self.tls is not None else 'http'}://{self.target}"

    def start(self) -> GrpcReceiver:
        address = f"{self.host}:{self.port}"
        if self.tls is not None:
            bound = self.server.add_secure_port(address, grpc_credentials(self.tls))
        else:
            bound = self.server.add_insecure_port(address)
        if bound == 0:
            raise RuntimeError(f"OTLP/gRPC receiver could not bind {self.host}:{self.port}")
        self.port = bound
        self.server.start()
        return self

    def stop(self, grace_s: float = 5.0) -> None:
        self.server.stop(grace_s).wait()

    def __enter__(self) -> GrpcReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
