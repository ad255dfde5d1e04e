"""Export a drifted window from the real broker to Parquet, then run the PySpark job on it.

One Spark session (local mode) for the module: it takes about 10 s to start.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from observer.core.bus import make_producer
from observer.core.config import KafkaConfig
from observer.core.records import LLMCall, OffsetRange, ToolCall, encode
from observer.core.topics import Topics
from observer.triggers.export import ExportError, export_episode, export_uris
from observer.triggers.pipeline import evaluate, preprocess


def produce(kafka: KafkaConfig, topic: str, records: list[Any]) -> list[OffsetRange]:
    """Send to partition 0 and return the offset range the records landed in."""
    producer = make_producer(kafka)
    metas = [producer.send(topic, value=encode(r), partition=0).get(10) for r in records]
    producer.close()
    return [OffsetRange(topic=topic, partition=0, first_offset=metas[0].offset,
                        last_offset=metas[-1].offset)]


def call(i: int, service: str, tokens: int) -> LLMCall:
    return LLMCall(service=service, model="gpt-4o", trace_id=f"t{i}", span_id=f"s{i}",
                   input_tokens=tokens, output_tokens=tokens * 2, latency_ms=1.5 * i,
                   finish_reasons=["stop"])


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[1]").appName("observer-test")
               .config("spark.ui.enabled", "false")
               .config("spark.sql.shuffle.partitions", "2").getOrCreate())
    yield session
    session.stop()


@pytest.mark.e2e
def test_export_then_preprocess(
    tmp_path: Path, kafka_config: KafkaConfig, topics: Topics, spark: Any
) -> None:
    # Reference, then the drifted window; another segment's records interleave with both.
    ref = [call(i, "shop", 10) if i % 2 else call(i, "bank", 99) for i in range(40)]
    cur = [call(100 + i, "shop", 50) if i % 3 else call(100 + i, "bank", 99) for i in range(60)]
    cur.append(call(1, "shop", 50))  # span s1 again: in both windows, kept once (newest)
    ref_ranges = produce(kafka_config, topics.llm, ref)
    cur_ranges = produce(kafka_config, topics.llm, cur)
    uris = export_uris(str(tmp_path / "exports"), "retrain", "e1")
    spec = {**uris, "episode_id": "e1", "segment": {"service": "shop", "model": "gpt-4o"},
            "record_type": "llm", "record_schema": "observer.llm/v1",
            "current_ranges": [r.model_dump() for r in cur_ranges],
            "reference_ranges": [r.model_dump() for r in ref_ranges]}
    counts = export_episode(kafka_config, spec)
    shop_cur = [r for r in cur if r.service == "shop"]
    shop_ref = [r for r in ref if r.service == "shop"]
    assert counts == {"current": len(shop_cur), "reference": len(shop_ref)}
    table = pq.read_table(uris["current"])
    assert table.column("span_id").to_pylist() == [r.span_id for r in shop_cur]
    assert set(table.column("service").to_pylist()) == {"shop"}
    assert table.schema.field("input_tokens").nullable
    assert table.column("finish_reasons").to_pylist()[0] == ["stop"]
    meta = json.loads(table.schema.metadata[b"observer.episode"])
    assert meta["episode_id"] == "e1"
    # Exporting again writes the same data (a retried attempt).
    assert export_episode(kafka_config, spec) == counts
    assert pq.read_table(uris["current"]).equals(table)

    # History with an older copy of a span from the drifted window and one of its own.
    history = tmp_path / "history.parquet"
    pq.write_table(pq.read_table(uris["reference"]).slice(0, 2), history)
    out = tmp_path / "dataset"
    summary = preprocess.run(spark, uris["current"], uris["reference"], str(history), str(out), "e1")
    rows = spark.read.parquet(str(out)).collect()
    spans = [r["span_id"] for r in rows]
    assert len(spans) == len(set(spans))  # deduplicated on (trace_id, span_id)
    by_split = {s: sum(1 for r in rows if r["split"] == s) for s in ("drifted", "reference", "history")}
    # s1 is in the drifted window and the reference: kept as drifted. History's two spans are
    # both in the reference: the reference copies win.
    assert by_split == {"drifted": len(shop_cur), "reference": len(shop_ref) - 1, "history": 0}
    assert summary["by_split"] == {k: v for k, v in by_split.items() if v}
    assert summary["rows"] == len(rows)
    s1 = next(r for r in rows if r["span_id"] == "s1")
    assert (s1["split"], s1["input_tokens"]) == ("drifted", 50)
    written = next((tmp_path / "dataset_summary").glob("part-*"))
    assert json.loads(written.read_text())["episode_id"] == "e1"

    # The CLI entry refuses a run without inputs.
    with pytest.raises(ValueError, match="no input"):
        preprocess.build_dataset(spark, "", "", "")


@pytest.mark.e2e
def test_export_refuses_a_window_that_is_gone(kafka_config: KafkaConfig, topics: Topics,
                                              tmp_path: Path) -> None:
    ranges = produce(kafka_config, topics.tools, [ToolCall(service="x", tool_name="t",
                                                           trace_id="a", span_id="b")])
    spec = {**export_uris(str(tmp_path), "p", "e2"), "episode_id": "e2",
            "segment": {"service": "shop", "model": "gpt-4o"}, "record_type": "tools",
            "record_schema": "observer.tools/v1",
            "current_ranges": [r.model_dump() for r in ranges], "reference_ranges": []}
    with pytest.raises(ExportError, match="no records of the drifted window"):
        export_episode(kafka_config, spec)


def test_evaluation_gate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cand, serving, verdict = tmp_path / "c.json", tmp_path / "s.json", tmp_path / "v"
    cand.write_text(json.dumps({"accuracy": 0.80, "loss": 0.4}))
    serving.write_text(json.dumps({"accuracy": 0.85, "loss": 0.5}))
    args = ["--candidate", str(cand), "--serving", str(serving), "--out", str(verdict)]
    assert evaluate.main([*args, "--metric", "accuracy"]) == 1  # worse: the run stops
    assert verdict.read_text() == "reject"
    assert evaluate.main([*args, "--metric", "loss", "--lower-is-better"]) == 0
    assert verdict.read_text() == "promote"
    assert evaluate.main([*args, "--metric", "f1"]) == 2
    assert "candidate metrics have no 'f1'" in capsys.readouterr().err
    # The first model has nothing to beat.
    assert evaluate.main(["--candidate", str(cand), "--metric", "accuracy"]) == 0
