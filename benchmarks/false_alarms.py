"""How often same-distribution data is flagged as drift, per method configuration.

Baseline data only (no change), so every dataset-drift window is a false alarm, and two in a
row would fire the default trigger policy. Two sources:

- ``agent``: the demo's support agent (real OpenTelemetry SDK spans, through the real
  normaliser), i.e. exactly what ``observer demo`` feeds the engine before its change;
- ``synthetic``: log-normal token counts with latency following output length (the engine
  tests' generator), a harder case because two numeric features move together.

    .venv/bin/python -m benchmarks.false_alarms [--windows 40] [--seeds 5]
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Iterator

import numpy as np

from observer.drift.engine import DriftEngine
from observer.core.bus import Message
from observer.core.config import KafkaConfig
from observer.drift.config import DriftConfig
from observer.core.records import DriftResult, LLMCall, decode, encode
from observer.core.topics import Topics

TOPICS = Topics.from_config(KafkaConfig())

# The first three use the first window (1000 records) as the reference.
CONFIGS: dict[str, dict[str, str]] = {
    "psi + jensenshannon": {"numeric_method": "psi", "categorical_method": "jensenshannon",
                            "reference": "first_window"},
    "wasserstein + jensenshannon": {"numeric_method": "wasserstein",
                                    "categorical_method": "jensenshannon",
                                    "reference": "first_window"},
    "auto (Evidently's choice)": {"numeric_method": "auto", "categorical_method": "auto",
                                  "reference": "first_window"},
    # A reference of more than 1000 rows makes Evidently's choice the distances
    # (Wasserstein, Jensen-Shannon) instead of the p-value tests: the default.
    "auto, first 2000 (default)": {"numeric_method": "auto", "categorical_method": "auto",
                                   "reference": "first_n", "reference_records": "2000"},
    "auto, first 3000 as reference": {"numeric_method": "auto", "categorical_method": "auto",
                                      "reference": "first_n", "reference_records": "3000"},
}


def agent_messages(seed: int, conversations: int) -> list[Message]:
    """Baseline conversations of the demo agent, normalised into llm/tools messages."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from observer.collectors.normalize.normalizer import Normalizer
    from observer.demo.agent import BASELINE, SupportAgent

    provider, exporter = TracerProvider(), InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    agent = SupportAgent(provider.get_tracer("fa"), seed=seed)
    normalizer = Normalizer(TOPICS)
    out: list[Message] = []
    for _ in range(conversations):
        exporter.clear()
        agent.converse(BASELINE)
        raw = encode_spans(exporter.get_finished_spans()).SerializeToString()
        for o in normalizer.process([Message(TOPICS.spans, 0, 0, None, raw, 0)]):
            out.append(Message(o.topic, 0, len(out), None, o.value, 0))
    return out


def synthetic_messages(seed: int, n: int) -> list[Message]:
    rng = np.random.default_rng(seed)
    out_tokens = rng.lognormal(np.log(200), 0.6, n).astype(int)
    in_tokens = rng.lognormal(np.log(800), 0.5, n).astype(int)
    latency = 300 + out_tokens * 20 + rng.normal(0, 50, n)
    reasons = rng.choice(["stop", "length", "tool_calls"], n, p=[0.8, 0.1, 0.1])
    return [
        Message(TOPICS.llm, 0, i, None, encode(LLMCall(
            service="s", model="m", trace_id=uuid.uuid4().hex, span_id="x",
            input_tokens=int(in_tokens[i]), output_tokens=int(out_tokens[i]),
            latency_ms=float(latency[i]), finish_reason=str(reasons[i]))), 0)
        for i in range(n)
    ]


def scored(messages: list[Message], window: int, methods: dict[str, str]) -> Iterator[DriftResult]:
    engine = DriftEngine(DriftConfig(window_size=window, **methods), TOPICS)  # type: ignore[arg-type]
    for o in engine.process(messages):
        yield decode(o.value)  # type: ignore[misc]


def measure(windows: int, seeds: int, window: int = 1000) -> list[tuple[str, str, str, float, float]]:
    """Rows (source, record type, config, false-alarm share of windows, share of 2-in-a-row)."""
    rows = []
    sources = {
        # Each conversation makes 2 LLM calls and 1 tool call.
        "agent": lambda s: agent_messages(s, (windows + 1) * window // 2 + 1),
        "synthetic": lambda s: synthetic_messages(s, (windows + 1) * window),
    }
    for source, make in sources.items():
        data = [make(seed) for seed in range(seeds)]
        for name, methods in CONFIGS.items():
            by_type: dict[str, list[list[bool]]] = {}
            for messages in data:
                runs: dict[str, list[bool]] = {}
                for r in scored(messages, window, methods):
                    runs.setdefault(r.record_type, []).append(r.dataset_drift)
                for t, flags in runs.items():
                    by_type.setdefault(t, []).append(flags)
            for t, runs_ in sorted(by_type.items()):
                flags = [f for run in runs_ for f in run]
                pairs = [a and b for run in runs_ for a, b in zip(run, run[1:])]
                rows.append((source, t, name, float(np.mean(flags)),
                             float(np.mean(pairs)) if pairs else 0.0))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--windows", type=int, default=40, help="scored windows per seed")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--window-size", type=int, default=1000)
    args = p.parse_args(argv)
    print(f"false alarms on same-distribution data: window {args.window_size}, "
          f"{args.windows} windows x {args.seeds} seeds per source")
    print(f"{'source':10} {'type':6} {'methods':32} {'dataset drift':>14} {'2 in a row':>11}")
    for source, t, name, rate, pairs in measure(args.windows, args.seeds, args.window_size):
        print(f"{source:10} {t:6} {name:32} {rate:14.1%} {pairs:11.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
