"""Every action of a fired decision points at the exported Parquet of both windows.

On the real broker: records of two segments are produced, a drift result names where its
windows are, and the trigger stage's webhook payload (``data.export``) and Argo run
(``current-data``/``reference-data``) carry the Parquet locations, written before either is
sent.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from observer.core.bus import Message, make_producer
from observer.core.config import KafkaConfig
from observer.triggers.config import TriggerConfig
from observer.core.records import DriftResult, LLMCall, OffsetRange, TriggerEvent, decode, encode
from observer.core.topics import Topics
from tests.triggers_support import ARGO_TOKEN, SECRET, Servers
from observer.triggers.stage import TriggerStage

def call(i: int, service: str, tokens: int) -> LLMCall:
    return LLMCall(service=service, model="gpt-4o", trace_id=f"t{i}", span_id=f"s{i}",
                   input_tokens=tokens, output_tokens=tokens, latency_ms=1.0,
                   finish_reasons=["stop"])


def produce(kafka: KafkaConfig, topic: str, records: list[LLMCall]) -> list[OffsetRange]:
    producer = make_producer(kafka)
    metas = [producer.send(topic, value=encode(r), partition=0).get(10) for r in records]
    producer.close()
    return [OffsetRange(topic=topic, partition=0, first_offset=metas[0].offset,
                        last_offset=metas[-1].offset)]


def drifted(i: int, ranges: dict[str, list[OffsetRange]]) -> DriftResult:
    return DriftResult(
        segment={"service": "shop", "model": "gpt-4o"}, segment_key="shop|gpt-4o",
        record_type="llm", window_index=i, n_reference=20, n_current=30, features=[],
        drift_share=0.9, dataset_drift=True, closed_at_unix_nano=i,
        reference_ranges=ranges["reference"], current_ranges=ranges["current"],
    )


@pytest.mark.e2e
def test_webhook_and_argo_run_carry_the_exported_windows(
    tmp_path: Path, trigger_env: Servers, kafka_config: KafkaConfig, topics: Topics
) -> None:
    argo_url, contract, hook_url, receiver = trigger_env
    reference = [call(i, "shop" if i % 2 else "bank", 10) for i in range(40)]
    current = [call(100 + i, "shop" if i % 3 else "bank", 50) for i in range(45)]
    ranges = {"reference": produce(kafka_config, topics.llm, reference),
              "current": produce(kafka_config, topics.llm, current)}
    cfg = TriggerConfig.model_validate({
        "ledger_path": str(tmp_path / "ledger.sqlite"),
        "export": {"uri": str(tmp_path / "exports")},
        "argo": {"server": argo_url, "token": ARGO_TOKEN},
        "policies": [{
            "name": "retrain", "threshold": 0.5, "consecutive_windows": 2, "min_samples": 10,
            "actions": ["argo"], "webhooks": [{"url": hook_url, "secret": SECRET}],
        }],
    })
    stage = TriggerStage(cfg, topics, kafka=kafka_config)
    results = [drifted(1, ranges), drifted(2, ranges)]
    stage.process([Message(topics.drift, 0, k, b"k", encode(r), 0) for k, r in enumerate(results)])
    outcomes = [decode(o.value) for o in stage.tick()]
    assert sorted((e.action, e.status) for e in outcomes if isinstance(e, TriggerEvent)) == [
        ("argo", "delivered"), ("webhook", "delivered")
    ]

    (payload,) = receiver.payloads
    export = payload["data"]["export"]
    episode = payload["data"]["episode_id"]
    base = tmp_path / "exports" / "retrain" / episode
    assert export["format"] == "parquet"
    assert (export["current"], export["reference"]) == (
        str(base / "current.parquet"), str(base / "reference.parquet")
    )
    # Written before the webhook went out, with the segment's records only.
    current_rows = pq.read_table(export["current"]).column("span_id").to_pylist()
    assert current_rows == [r.span_id for r in current if r.service == "shop"]
    assert pq.read_table(export["reference"]).num_rows == sum(r.service == "shop" for r in reference)

    (workflow,) = contract.workflows.values()
    params = {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}
    assert (params["current-data"], params["reference-data"]) == (
        export["current"], export["reference"]
    )
    stage.close()


def test_no_export_without_kafka_says_so_in_the_payload(tmp_path: Path, trigger_env: Servers) -> None:
    _, _, hook_url, receiver = trigger_env
    cfg = TriggerConfig.model_validate({
        "ledger_path": str(tmp_path / "ledger.sqlite"),
        "policies": [{"name": "p", "consecutive_windows": 1, "min_samples": 1,
                      "webhooks": [{"url": hook_url, "secret": SECRET}]}],
    })
    topics = Topics.from_config(KafkaConfig())
    stage = TriggerStage(cfg, topics)  # no Kafka to read the windows back from
    r = OffsetRange(topic="t", partition=0, first_offset=0, last_offset=1)
    stage.process([Message(topics.drift, 0, 0, b"k", encode(drifted(1, {"reference": [r], "current": [r]})), 0)])
    stage.tick()
    (payload,) = receiver.payloads
    assert payload["data"]["export"] is None
    stage.close()


@pytest.mark.e2e
def test_a_failed_export_holds_the_webhook_back_and_retries(
    tmp_path: Path, trigger_env: Servers, kafka_config: KafkaConfig, topics: Topics
) -> None:
    _, _, hook_url, receiver = trigger_env
    # The window's offsets hold only another segment's records: nothing of it to export.
    ranges = produce(kafka_config, topics.llm, [call(1, "bank", 5)])
    cfg = TriggerConfig.model_validate({
        "ledger_path": str(tmp_path / "ledger.sqlite"),
        "export": {"uri": str(tmp_path / "exports")},
        "policies": [{"name": "p", "consecutive_windows": 1, "min_samples": 1,
                      "webhooks": [{"url": hook_url, "secret": SECRET, "max_attempts": 2}]}],
    })
    stage = TriggerStage(cfg, topics, kafka=kafka_config)
    result = drifted(1, {"reference": ranges, "current": ranges})
    stage.process([Message(topics.drift, 0, 0, b"k", encode(result), 0)])
    (failed,) = [decode(o.value) for o in stage.tick()]
    assert (failed.status, failed.attempts) == ("failed", 1)  # type: ignore[union-attr]
    assert failed.reason.startswith("export: ExportError: ")  # type: ignore[union-attr]
    assert receiver.received == []  # never told where files are that do not exist
    stage.close()
