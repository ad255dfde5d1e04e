"""The end-to-end benchmark's load: demo-agent OTLP requests, client processes, the parse peer.

Requests are made once through the real OpenTelemetry SDK (:class:`SupportAgent`, with
message content) and encoded as the OTLP exporter encodes them, ``spans_per_request`` spans
each; they are written to one file that every client process reads its share of.

>>> bodies = make_bodies(8, spans_per_request=4)
>>> len(bodies), ExportTraceServiceRequest.FromString(bodies[0]).resource_spans[0].scope_spans[0].spans[0].name
(2, 'chat gpt-4o-mini')
>>> parse_peer(bodies, 4, rounds=1)["spans"]
8
"""

from __future__ import annotations

import multiprocessing
import struct
import time
from pathlib import Path

import httpx
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from observer.demo.agent import BASELINE, Behaviour, SupportAgent

HEADERS = {"Content-Type": "application/x-protobuf"}


def make_bodies(spans: int, spans_per_request: int = 500, seed: int = 1,
                behaviour: Behaviour = BASELINE) -> list[bytes]:
    """``spans`` demo-agent spans (4 per conversation, unique traces), as OTLP request bodies,
    the agent behaving as ``behaviour``."""
    provider = TracerProvider(resource=Resource.create({"service.name": "support"}))
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    agent = SupportAgent(provider.get_tracer("demo"), seed=seed)
    bodies: list[bytes] = []
    while len(bodies) * spans_per_request < spans:
        while len(memory.get_finished_spans()) < spans_per_request:
            agent.converse(behaviour)
        finished = list(memory.get_finished_spans())
        memory.clear()
        # A conversation's spans may straddle two requests, as with a batching exporter.
        bodies.append(encode_spans(finished[:spans_per_request]).SerializeToString())
        for span in finished[spans_per_request:]:
            memory.export([span])
    return bodies


def write_bodies(bodies: list[bytes], path: Path) -> Path:
    """Length-prefixed bodies in one file (clients are spawned: no large pickles)."""
    with path.open("wb") as f:
        for body in bodies:
            f.write(struct.pack("<I", len(body)))
            f.write(body)
    return path


def read_bodies(path: Path) -> list[bytes]:
    data = path.read_bytes()
    out, at = [], 0
    while at < len(data):
        (n,) = struct.unpack_from("<I", data, at)
        out.append(data[at + 4: at + 4 + n])
        at += 4 + n
    return out


def parse_peer(bodies: list[bytes], spans_per_request: int, rounds: int = 3) -> dict[str, float]:
    """The ceiling: ``ExportTraceServiceRequest.ParseFromString`` of the same bodies, spans/s."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for body in bodies:
            ExportTraceServiceRequest().ParseFromString(body)
        best = min(best, time.perf_counter() - started)
    spans = len(bodies) * spans_per_request
    return {"spans": spans, "spans_per_s": round(spans / best, 1)}


def _renamed(body: bytes, lap: int) -> bytes:
    """The same request with new trace ids (a later lap of a sustained load)."""
    request = ExportTraceServiceRequest.FromString(body)
    prefix = lap.to_bytes(4, "big")
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                span.trace_id = prefix + span.trace_id[4:]
    return request.SerializeToString()


def _client(url: str, path: str, index: int, clients: int, start_at: float, seconds: float | None,
            requests_per_s: float | None, out: multiprocessing.Queue) -> None:
    """Post this client's share once (``seconds`` None), or in laps for ``seconds``, paced."""
    mine = read_bodies(Path(path))[index::clients]
    acked = refused = 0
    sent_at: list[float] = []
    first = None
    with httpx.Client(timeout=120) as client:
        while time.time() < start_at:
            time.sleep(0.005)
        lap, i = 0, 0
        while mine:
            now = time.time()
            if seconds is None and lap > 0:
                break
            if seconds is not None and now >= start_at + seconds:
                break
            if requests_per_s:
                # Clients staggered evenly, so that the requests of all come at an even pace.
                due = start_at + (lap * len(mine) + i + index / clients) / requests_per_s
                if seconds is not None and due >= start_at + seconds:
                    break
                if due > now:
                    time.sleep(due - now)
            body = mine[i] if lap == 0 else _renamed(mine[i], lap * clients + index + 1)
            first = first or time.time()
            r = client.post(url, content=body, headers=HEADERS)
            if r.status_code == 200:
                acked += 1
            else:
                refused += 1
            sent_at.append(time.time())
            i += 1
            if i == len(mine):
                lap, i = lap + 1, 0
    out.put((acked, refused, sent_at[-1] if sent_at else start_at, first or start_at))


def drive(url: str, path: Path, clients: int, spans_per_request: int, seconds: float | None = None,
          spans_per_s: float | None = None) -> dict[str, float]:
    """Run ``clients`` processes against ``url``: every body once as fast as acknowledged, or
    laps for ``seconds`` at ``spans_per_s`` in all. Returns what was acknowledged, and when."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 3.0  # all clients start together, after their imports
    per_client = spans_per_s / spans_per_request / clients if spans_per_s else None
    procs = [ctx.Process(target=_client, args=(url, str(path), i, clients, start_at, seconds,
                                                per_client, out)) for i in range(clients)]
    for p in procs:
        p.start()
    results = [out.get(timeout=(seconds or 0) + 900) for _ in procs]
    for p in procs:
        p.join(30)
    last = max(r[2] for r in results)
    # From the first request posted: a client slow to import must not count as intake time.
    start_at = min(r[3] for r in results)
    acked = sum(r[0] for r in results)
    return {
        "start_at": start_at,
        "acked_at": last,
        "requests_acked": acked,
        "requests_refused": sum(r[1] for r in results),
        "spans_acked": acked * spans_per_request,
        # A paced run: over its whole length (its last request is one interval before the end).
        "acked_spans_per_s": round(acked * spans_per_request
                                   / (seconds if seconds else max(last - start_at, 1e-9)), 1),
    }
