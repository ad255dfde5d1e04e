"""What the raw-topic seal (:mod:`observer.collectors.common.tenant_seal`) costs, against the protobuf parse.

    .venv/bin/python -m benchmarks.seal_cost [--repeat 200]

For an ``otlp_spans`` message of about 10 kB and one of about 1 MB (GenAI spans with message
content, as a receiver writes them), times in this process: the parse every stage does
anyway (``ExportTraceServiceRequest.FromString``), :meth:`TenantSeal.sealed` (the receiver's
side: AES-256-GCM encrypt) and :meth:`TenantSeal.open` (a stage's side: decrypt and check),
and, for scale, the normaliser's whole work on the same (plain) message. Each figure is the
median of ``--repeat`` runs; the ratios divide by the parse of the same message in the same
run. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pydantic import SecretStr

from observer.collectors.normalize.normalizer import Normalizer
from observer.collectors.common.tenant_seal import TenantSeal
from observer.core.bus import Message, Output
from observer.core.config import KafkaConfig
from observer.core.topics import Topics


def request_of(size: int) -> bytes:
    """A serialized export request of about ``size`` bytes: chat spans with prompt content."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "shop"
    spans = rs.scope_spans.add().spans
    while request.ByteSize() < size:
        span = spans.add(trace_id=os.urandom(16), span_id=os.urandom(8), name="chat gpt-4o",
                         start_time_unix_nano=1, end_time_unix_nano=2)
        for key, value in (("gen_ai.operation.name", "chat"), ("gen_ai.request.model", "gpt-4o"),
                           ("gen_ai.prompt.0.role", "user"),
                           ("gen_ai.prompt.0.content", "Summarise this ticket please. " * 12),
                           ("gen_ai.completion.0.content", "The customer wants a refund. " * 6)):
            span.attributes.add(key=key).value.string_value = value
    return request.SerializeToString()


def median_s(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(size: int, repeat: int) -> dict[str, float]:
    value = request_of(size)
    seal = TenantSeal(SecretStr("benchmark-stamp-key-0123456789abcdef"))
    sealed = seal.sealed(Output("otlp_spans", "0" * 32, value))
    message = Message("otlp_spans", 0, 0, b"0" * 32, sealed.value, 0)
    assert seal.open(message, "bench").value == value
    parse = median_s(lambda: ExportTraceServiceRequest.FromString(value), repeat)
    encrypt = median_s(lambda: seal.sealed(Output("otlp_spans", "0" * 32, value)), repeat)
    decrypt = median_s(lambda: seal.open(message, "bench"), repeat)
    plain = Message("otlp_spans", 0, 0, b"0" * 32, value, 0)
    normalizer = Normalizer(Topics.from_config(KafkaConfig()))
    normalize = median_s(lambda: normalizer.process([plain]), max(3, repeat // 20))
    return {
        "bytes": len(value),
        "parse_us": round(parse * 1e6, 1),
        "seal_us": round(encrypt * 1e6, 1),
        "open_us": round(decrypt * 1e6, 1),
        "normalize_us": round(normalize * 1e6, 1),
        "seal_over_parse": round(encrypt / parse, 3),
        "open_over_parse": round(decrypt / parse, 3),
        "seal_plus_open_over_parse": round((encrypt + decrypt) / parse, 3),
        "open_over_normalize": round(decrypt / normalize, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    print(json.dumps({name: measure(size, args.repeat)
                      for name, size in (("10kB", 10_000), ("1MB", 1_000_000))}))


if __name__ == "__main__":
    main()
