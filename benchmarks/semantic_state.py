"""Drift engine state per segment for the embedding features, exact and sketch mode.

Feeds ``observer.embeddings/v1`` records (prompt and response vectors of the default
embedder's shape, 256 float32 dimensions) for ``--segments`` segments through the engine at
the default reference and window sizes, stopping half-way through the first window, and
reports the memory the engine holds (tracemalloc) per segment, next to the same engine's
state for the default ``llm`` features over the same number of records (the peer).

    .venv/bin/python -m benchmarks.semantic_state [--segments 10]
"""

from __future__ import annotations

import argparse
import tracemalloc

import numpy as np

from observer.core.bus import Message
from observer.core.config import KafkaConfig
from observer.core.records import EmbeddingRecord, LLMCall, encode
from observer.core.topics import Topics
from observer.drift.config import DriftConfig
from observer.drift.engine import DriftEngine

TOPICS = Topics.from_config(KafkaConfig())
DIMENSION = 256


def _embedding(rng: np.random.Generator, segment: int, i: int) -> EmbeddingRecord:
    vectors = rng.normal(size=(2, DIMENSION)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return EmbeddingRecord(service="svc", model=f"m{segment}", trace_id=f"{i:032x}",
                           span_id=f"{i:016x}", embedder=f"hashing-ngram-v1/{DIMENSION}",
                           dimension=DIMENSION, source="content",
                           prompt_embedding=vectors[0].tolist(),
                           response_embedding=vectors[1].tolist())


def _llm(rng: np.random.Generator, segment: int, i: int) -> LLMCall:
    return LLMCall(service="svc", model=f"m{segment}", trace_id=f"{i:032x}", span_id=f"{i:016x}",
                   input_tokens=int(rng.integers(50, 900)), output_tokens=int(rng.integers(5, 500)),
                   latency_ms=float(rng.uniform(100, 4000)), finish_reason="stop",
                   input_words=int(rng.integers(5, 400)), output_words=int(rng.integers(5, 400)),
                   output_non_letter_share=float(rng.uniform(0, 0.3)))


def state_mb(kind: str, segments: int, mode: str) -> float:
    """MB the engine holds after a reference and half a window per segment."""
    cfg = DriftConfig(mode=mode, checkpoints=False, max_streams=max(segments, 1))
    per_segment = cfg.reference_records + cfg.window_size // 2
    make, topic = (_embedding, TOPICS.embeddings) if kind == "embeddings" else (_llm, TOPICS.llm)
    rng = np.random.default_rng(0)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    engine = DriftEngine(cfg, TOPICS)
    offset = 0
    for _ in range(per_segment // 100):
        batch = []
        for segment in range(segments):
            for _ in range(100):
                batch.append(Message(topic, 0, offset, None, encode(make(rng, segment, offset)), 0))
                offset += 1
        engine.process(batch)
        del batch
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert engine.streams == segments, engine.streams
    return grown / 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--segments", type=int, default=10)
    a = p.parse_args(argv)
    cfg = DriftConfig()
    print(f"engine state per segment: reference {cfg.reference_records} + half a window of "
          f"{cfg.window_size} records, {a.segments} segments")
    print(f"{'features':<46} {'exact MB':>9} {'sketch MB':>10}")
    for kind, label in (("embeddings", f"prompt + response embedding ({DIMENSION} dims)"),
                        ("llm", "default llm features (the peer)")):
        exact, sketch = (state_mb(kind, a.segments, m) / a.segments for m in ("exact", "sketch"))
        print(f"{label:<46} {exact:>9.2f} {sketch:>10.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
