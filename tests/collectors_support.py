"""Helpers shared by the collectors tests: real servers on free ports, Kafka drains, SDK data."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.consumer.fetcher import ConsumerRecord
from kafka.partitioner.default import murmur2 as kafka_python_murmur2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client import REGISTRY

from observer.collectors.kserve.intake import KSERVE_PATH, kserve_route
from observer.collectors.receiver.annotations import ANNOTATION_ROUTES
from observer.collectors.receiver.intake import Intake
from observer.collectors.receiver.otlp_grpc import GrpcReceiver
from observer.collectors.receiver.otlp_http import create_app
from observer.core.bus import Message, make_consumer, read_topic
from observer.collectors.receiver.config import ReceiverConfig
from observer.core.config import KafkaConfig
from observer.core.http import ServerThread
from observer.core.topics import Topics


@dataclass
class Receivers:
    """Both receivers on one shared intake, as ``observer up`` runs them."""

    intake: Intake
    http: str
    """Base URL of the HTTP receiver (no path)."""
    grpc: str
    """host:port of the gRPC receiver."""


@contextmanager
def receivers(kafka: KafkaConfig, topics: Topics, **settings: Any) -> Iterator[Receivers]:
    receiver = ReceiverConfig(http_port=0, grpc_port=0, **settings)
    intake = Intake(receiver, kafka, topics).open()
    try:
        app = create_app(receiver, kafka, topics, intake=intake)
        http_server = ServerThread(
            app,
            header_timeout_s=receiver.header_timeout_s,
            body_timeout_s=receiver.body_timeout_s,
        )
        with http_server as http, GrpcReceiver(intake, "127.0.0.1", 0) as grpc_server:
            yield Receivers(intake, http.url, grpc_server.target)
    finally:
        intake.close()


def drain(kafka: KafkaConfig, topic: str, n: int, timeout_s: float = 15) -> list[ConsumerRecord]:
    """At least ``n`` records of ``topic`` from the start (fewer if they do not come in time)."""
    consumer = make_consumer(kafka, None, [topic])
    got: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        for records in consumer.poll(200).values():
            got += records
    consumer.close()
    return got


def drain_to_end(kafka: KafkaConfig, topic: str, timeout_s: float = 30) -> list[ConsumerRecord]:
    """Every record of ``topic`` from the start to each partition's high watermark, as the
    fetches tell it (:func:`observer.core.bus.read_topic`; the embedded broker's
    ``end_offsets`` can stop inside the last batch). For a topic whose writes were all
    acknowledged before the call: it waits for no quiet period, so a record still on its way
    may be missed."""
    return read_topic(kafka, topic, timeout_s)


def messages_of(kafka: KafkaConfig, topic: str, n: int, timeout_s: float = 15) -> list[Message]:
    """:func:`drain`, as the :class:`Message` values a stage gets."""
    return [Message.of(r) for r in drain(kafka, topic, n, timeout_s)]


def drain_spans(kafka: KafkaConfig, topic: str, spans: int, timeout_s: float = 15) -> list[ConsumerRecord]:
    """Records of ``topic`` from the start until they hold ``spans`` spans (or the timeout)."""
    consumer = make_consumer(kafka, None, [topic])
    got: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout_s
    while sum(len(spans_of(m.value)) for m in got) < spans and time.monotonic() < deadline:
        for records in consumer.poll(200).values():
            got += records
    consumer.close()
    return got


def drain_traces(kafka: KafkaConfig, topic: str, traces: int, timeout_s: float = 15) -> list[ConsumerRecord]:
    """Records of ``topic`` from the start until they hold spans of ``traces`` distinct traces
    (or the timeout). Count traces, not messages, for spans exported in one request: the
    receiver writes the traces that land on one partition in one message, so two traces
    are one message or two."""
    consumer = make_consumer(kafka, None, [topic])
    got: list[ConsumerRecord] = []
    seen: set[bytes] = set()
    deadline = time.monotonic() + timeout_s
    while len(seen) < traces and time.monotonic() < deadline:
        for records in consumer.poll(200).values():
            got += records
            seen.update(s.trace_id for r in records for s in spans_of(r.value))
    consumer.close()
    return got


def traces_by_placement(messages: list[ConsumerRecord], partitions: int) -> dict[str, list[Span]]:
    """Trace id -> its spans, after checking the ``otlp_spans`` contract on ``messages``.

    Each message's key is the hex id of a trace it holds; every trace in a message is one that
    Kafka's default placement (computed with kafka-python's murmur2, not observer's) puts on
    the message's partition; a trace is whole in one message.
    """
    traces: dict[str, list[Span]] = {}
    for m in messages:
        spans = spans_of(m.value)
        ids = {s.trace_id.hex() for s in spans}
        assert m.key.decode() in ids, (m.key, ids)
        for trace in ids:
            assert trace not in traces, f"trace {trace} split over two messages"
            assert (kafka_python_murmur2(trace.encode()) & 0x7FFFFFFF) % partitions == m.partition
            traces[trace] = [s for s in spans if s.trace_id.hex() == trace]
    return traces


def spans_of(raw: bytes) -> list[Span]:
    request = ExportTraceServiceRequest.FromString(raw)
    return [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def wait_for(condition: Any, timeout_s: float = 15, what: str = "", poll_s: float = 0.02) -> Any:
    """Poll ``condition`` until it returns something true, and return that; AssertionError
    naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll_s)
    return result


@contextmanager
def intake_server(kafka: KafkaConfig, topics: Topics, **settings: Any) -> Iterator[str]:
    """The OTLP/HTTP app with the KServe route mounted, as the runtime serves it."""
    receiver = ReceiverConfig(http_port=0, **settings)
    intake = Intake(receiver, kafka, topics).open()
    try:
        app = create_app(receiver, kafka, topics, intake=intake,
                         extra_routes={KSERVE_PATH: kserve_route, **ANNOTATION_ROUTES})
        with ServerThread(app) as server:
            yield server.url + KSERVE_PATH
    finally:
        intake.close()


def new_topic(cfg: KafkaConfig, prefix: str, partitions: int = 4) -> str:
    """A topic of its own (``prefix`` and a random suffix) with ``partitions`` partitions."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=cfg.servers)
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()
    return name


def workers_of(pid: int) -> list[int]:
    """The worker processes of ``observer up --workers`` (``pid``): spawned Python children,
    not the broker or multiprocessing's resource tracker."""
    from benchmarks.e2e_observe import observer_processes  # the benchmark's own reading

    return [p for name, p in observer_processes(pid).items() if name.startswith("worker_")]
