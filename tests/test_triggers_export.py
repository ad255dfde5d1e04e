"""The episode export writes any record type's window to Parquet, values as the records hold
them: embedding vectors (base64 on Kafka) come back as lists of numbers."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from observer.core.records import EmbeddingRecord, LLMCall
from observer.triggers.export import write_parquet


def test_embedding_vectors_are_exported_as_lists(tmp_path: Path) -> None:
    records = [EmbeddingRecord(service="s", model="m", trace_id=f"t{i}", span_id="x",
                               embedder="hashing-ngram-v1/256", dimension=2, source="content",
                               prompt_embedding=[0.5, -0.25 * i], response_embedding=None)
               for i in range(3)]
    path = tmp_path / "current.parquet"
    assert write_parquet(records, EmbeddingRecord, str(path)) == 3
    table = pq.read_table(path)
    assert table.column("prompt_embedding").to_pylist() == [[0.5, 0.0], [0.5, -0.25], [0.5, -0.5]]
    assert table.column("response_embedding").to_pylist() == [None, None, None]
    assert table.column("embedder").to_pylist() == ["hashing-ngram-v1/256"] * 3


def test_plain_records_are_unchanged(tmp_path: Path) -> None:
    call = LLMCall(service="s", model="m", trace_id="t", span_id="a", output_tokens=7,
                   finish_reasons=["stop"])
    path = tmp_path / "llm.parquet"
    write_parquet([call], LLMCall, str(path))
    row = pq.read_table(path).to_pylist()[0]
    assert row["output_tokens"] == 7 and row["finish_reasons"] == ["stop"]
