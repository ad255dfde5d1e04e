"""What text descriptors and embeddings cost the normaliser: ``python -m benchmarks.normalizer_semantic``.

The normaliser's spans/s on the same content-bearing OpenTelemetry GenAI chat spans (a system
instruction, a user prompt and an answer of about 100-1000 characters each, sentences of the
Python Language Reference's help topics, ``pydoc_data.topics``, which ships with CPython) in
three configurations, measured in this run, interleaved, best of ``--rounds``:

- ``off``: neither text descriptors nor embeddings;
- ``descriptors``: text descriptors only (``normalizer.descriptors``);
- ``embeddings``: the default embedder only (hashing, 256 dimensions);
- ``both``: descriptors and the default embedder (hashing, 256 dimensions), which also writes
  one ``observer.embeddings`` record per call.

The ratios to ``off`` are what the issue bounds: ``both`` must keep at least 0.5.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from collections.abc import Callable
from pydoc_data.topics import topics as PYDOC_TOPICS

from observer.collectors.normalize.config import EmbeddingsConfig
from observer.collectors.normalize.normalizer import Normalizer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from observer.core.bus import Message
from observer.core.config import KafkaConfig
from observer.core.topics import Topics

TOPICS = Topics.from_config(KafkaConfig())


def passages(min_chars: int = 100, max_chars: int = 1000) -> list[str]:
    """Runs of consecutive sentences of the help topics, each 100-1000 characters."""
    sentences = [s.strip() for text in PYDOC_TOPICS.values()
                 for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if s.strip()]
    out: list[str] = []
    current = ""
    for i, sentence in enumerate(sentences):
        current = f"{current} {sentence}".strip()
        # Targets spread over the range, so lengths vary as real traffic does.
        target = min_chars + (i * 379) % (max_chars - min_chars)
        if len(current) >= target:
            out.append(current[:max_chars])
            current = ""
    return out


def _kv(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def messages(spans: int, per_request: int = 10) -> list[Message]:
    """Export requests of ``per_request`` chat spans each, ``spans`` in all, as Kafka messages."""
    texts = passages()
    out: list[Message] = []
    for r in range(spans // per_request):
        request = ExportTraceServiceRequest()
        resource = request.resource_spans.add()
        resource.resource.attributes.append(_kv("service.name", "docs-assistant"))
        scope = resource.scope_spans.add()
        for s in range(per_request):
            n = r * per_request + s
            prompt, answer = texts[(2 * n) % len(texts)], texts[(2 * n + 1) % len(texts)]
            span = scope.spans.add(
                trace_id=(n + 1).to_bytes(16, "big"), span_id=(n + 1).to_bytes(8, "big"),
                name="chat gpt-4o", start_time_unix_nano=1_700_000_000_000_000_000,
                end_time_unix_nano=1_700_000_000_900_000_000)
            span.attributes.extend([
                _kv("gen_ai.operation.name", "chat"), _kv("gen_ai.request.model", "gpt-4o"),
                _kv("gen_ai.usage.input_tokens", len(prompt) // 4),
                _kv("gen_ai.usage.output_tokens", len(answer) // 4),
                _kv("gen_ai.system_instructions", json.dumps(
                    [{"type": "text", "content": "You answer questions about Python."}])),
                _kv("gen_ai.input.messages", json.dumps(
                    [{"role": "user", "parts": [{"type": "text", "content": prompt}]}])),
                _kv("gen_ai.output.messages", json.dumps(
                    [{"role": "assistant", "parts": [{"type": "text", "content": answer}],
                      "finish_reason": "stop"}])),
            ])
        out.append(Message(TOPICS.spans, 0, r, None, request.SerializeToString(), 0))
    return out


def configurations() -> dict[str, Callable[[], Normalizer]]:
    """Name -> a normaliser built that way."""
    return {
        "off": lambda: Normalizer(TOPICS, descriptors=None),
        "descriptors": lambda: Normalizer(TOPICS),
        "embeddings": lambda: Normalizer(TOPICS, descriptors=None, embeddings=EmbeddingsConfig()),
        "both": lambda: Normalizer(TOPICS, embeddings=EmbeddingsConfig()),
    }


def measure(spans: int = 5000, rounds: int = 3, batch: int = 50) -> dict[str, float]:
    """Spans/s of each configuration (best of ``rounds``, interleaved), and ``batch`` messages
    (of 10 spans) per ``process`` call, as the stage runner hands them over."""
    data = messages(spans)
    builders = configurations()
    normalizers = {name: build() for name, build in builders.items()}
    best = dict.fromkeys(builders, 0.0)
    for name, n in normalizers.items():  # warm up: caches, imports, first allocations
        n.process(data[:batch])
    for _ in range(rounds):
        for name, n in normalizers.items():
            started = time.process_time()
            for i in range(0, len(data), batch):
                n.process(data[i:i + batch])
            best[name] = max(best[name], spans / (time.process_time() - started))
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="normaliser cost of descriptors and embeddings")
    p.add_argument("--spans", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    texts = passages()
    print(f"machine: {platform.machine()}, python {platform.python_version()}")
    print(f"\nnormaliser on content-bearing GenAI chat spans ({args.spans} spans, prompts and "
          f"answers of {min(map(len, texts))}-{max(map(len, texts))} characters, "
          f"best of {args.rounds})")
    rates = measure(args.spans, args.rounds)
    print(f"{'configuration':>14} {'spans/s':>10} {'ratio':>7}")
    for name, rate in rates.items():
        print(f"{name:>14} {rate:>10,.0f} {rate / rates['off']:>7.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
