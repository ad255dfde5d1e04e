"""Done when (issue 16): an eval score that falls after the change fires an ``all_of`` policy
that drift alone would not fire.

The drift engine runs under the real StageRunner on the shared broker, reading LLM calls from
``observer.llm`` and joined evals from ``observer.evals-joined`` (written here as the join
stage would write them); its results go to the trigger stage in-process, with the contract
Argo server and a signature-verifying webhook receiver. Three services get the same LLM
drift after the change; only their quality differs:

- ``q-fall``: faithfulness scores fall after the change -> the quality policy fires;
- ``q-steady``: faithfulness scores stay where they were -> it does not, though another eval
  of the segment (toxicity, lower is better) got worse;
- ``q-fb``: the thumbs-down rate rises and the relevance label mix drifts -> the feedback
  policy fires.

A drift-only policy fires for all three: the difference is the quality condition.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from observer.drift.config import DriftConfig
from observer.triggers.config import TriggerConfig
from observer.triggers.stage import TriggerStage

from observer.core.bus import Message, Output, make_producer, produce_all
from observer.core.config import KafkaConfig
from observer.core.records import DriftResult, LLMCall, encode
from observer.core.topics import Topics
from tests.drift_support import drain_results, engine_running
from tests.test_quality_signals import evals, feedback
from tests.triggers_support import ARGO_TOKEN, SECRET, Servers

MODEL = "gpt-4o"

# The documented default example: retrain only when drift and falling quality coincide.
QUALITY_POLICY = {
    "name": "drift-and-quality",
    "all_of": [
        "drift_share >= 0.5 for 2 windows",
        {"signal": "degradation:score_fell", "record_type": "evals", "eval": "faithfulness"},
    ],
}
FEEDBACK_POLICY = {
    "name": "drift-and-feedback",
    "all_of": [
        "drift_share >= 0.5 for 2 windows",
        "eval user_feedback degradation_level:thumbs_down_rate >= 0.25",
        {"signal": "feature_drifted:label", "record_type": "evals", "eval": "relevance"},
    ],
}
DRIFT_ONLY = {"name": "drift-only", "all_of": ["drift_share >= 0.5 for 2 windows"]}


def llm_calls(rng: random.Random, n: int, service: str, *, changed: bool) -> list[LLMCall]:
    """Calls whose lengths, latency and finish reasons all change after the change."""
    out = []
    for _ in range(n):
        i = rng.getrandbits(64)
        scale = 3.0 if changed else 1.0
        out.append(LLMCall(
            service=service, model=MODEL, trace_id=f"{i:032x}", span_id=f"{i:016x}",
            input_tokens=int(rng.gauss(400, 40) * scale), output_tokens=int(rng.gauss(150, 20) * scale),
            latency_ms=rng.gauss(800, 80) * scale,
            finish_reason=rng.choices(["stop", "length"], [0.2, 0.8] if changed else [0.95, 0.05])[0],
        ))
    return out


def drift_config() -> DriftConfig:
    """LLM calls and evals; 200-record references and windows of 100, the default methods
    (Evidently's choice: at these sizes, tests whose false alarms are rare)."""
    defaults = DriftConfig().features
    return DriftConfig(features={"llm": defaults["llm"], "evals": defaults["evals"]},
                       reference="first_n", reference_records=200, window_size=100)


def phase(rng: random.Random, topics: Topics, n: int, *, changed: bool) -> list[Output]:
    """``n`` LLM calls per service and the evals of the same period, as Kafka outputs."""
    llm, scores = [], []
    for service in ("q-fall", "q-steady", "q-fb"):
        llm += llm_calls(rng, n, service, changed=changed)
    scores += evals(rng, "faithfulness", n, service="q-fall", mean=0.55 if changed else 0.85)
    scores += evals(rng, "faithfulness", n, service="q-steady", mean=0.85)
    scores += evals(rng, "toxicity", n, service="q-steady", mean=0.4 if changed else 0.1)
    scores += feedback(rng, n, 0.5 if changed else 0.05, "q-fb")
    scores += evals(rng, "relevance", n, service="q-fb", labels={
        "relevant": 0.4, "irrelevant": 0.6} if changed else {"relevant": 0.9, "irrelevant": 0.1})
    return ([Output(topics.llm, f"{c.service}|{MODEL}", encode(c)) for c in llm]
            + [Output(topics.evals_joined, f"{e.service}|{MODEL}|{e.name}", encode(e))
               for e in scores])


def in_time_order(results: list[DriftResult]) -> list[DriftResult]:
    """The windows in the order they describe: window i of every stream covers the same
    period, and a period's quality windows come before the LLM window that decides on it."""
    return sorted(results, key=lambda r: (r.window_index, r.record_type != "evals", r.segment_key))


def test_falling_quality_and_drift_fire_the_all_of_policy_that_drift_alone_would_not(
    kafka_config: KafkaConfig, topics: Topics, trigger_env: Servers, tmp_path: Path
) -> None:
    rng = random.Random(16)
    # Before the change: references (200) and window 1; after: windows 2 and 3.
    outputs = phase(rng, topics, 300, changed=False) + phase(rng, topics, 200, changed=True)
    producer = make_producer(kafka_config)
    produce_all(producer, outputs, 20)
    producer.close()
    streams = 3 + 5  # llm per service; faithfulness x2, toxicity, user_feedback, relevance
    with engine_running(kafka_config, drift_config(), topics):
        results = drain_results(kafka_config, topics.drift, 3 * streams)
    assert len(results) == 3 * streams
    toxicity = [r for r in results if r.segment_key == f"q-steady|{MODEL}|toxicity"]
    fell = {r.window_index: d.detected for r in toxicity for d in r.degradation
            if d.name == "score_fell"}
    assert fell == {1: False, 2: True, 3: True}  # worse, but not the eval the policy names

    argo_url, contract, hook_url, receiver = trigger_env
    actions = {"actions": ["argo"], "webhooks": [{"url": hook_url, "secret": SECRET}]}
    cfg = TriggerConfig.model_validate({
        "ledger_path": str(tmp_path / "ledger.sqlite"),
        "argo": {"server": argo_url, "token": ARGO_TOKEN},
        "policies": [{**QUALITY_POLICY, **actions}, FEEDBACK_POLICY, DRIFT_ONLY],
    })
    stage = TriggerStage(cfg, topics)
    stage.process([Message(topics.drift, 0, k, r.segment_key.encode(), encode(r), 0)
                   for k, r in enumerate(in_time_order(results))])
    stage.tick()
    decisions = {(d["policy"], d["segment_key"]): d for d in stage.ledger.list_decisions()}
    fired = {k for k, d in decisions.items() if d["kind"] == "fired"}
    llm_keys = [f"{s}|{MODEL}" for s in ("q-fall", "q-steady", "q-fb")]
    assert fired == {
        ("drift-only", k) for k in llm_keys
    } | {("drift-and-quality", f"q-fall|{MODEL}"), ("drift-and-feedback", f"q-fb|{MODEL}")}

    # The reason names both conditions with their numbers, the quality figures included.
    reason = decisions[("drift-and-quality", f"q-fall|{MODEL}")]["reason"]
    head, quality = reason.split("; ")
    assert head.startswith("all_of: drift_share ") and head.endswith(" >= 0.5 for 2 windows (2-3)")
    assert quality.startswith("evals faithfulness degradation:score_fell detected in window 3 (mean 0.5")
    assert ", reference 0.8" in quality and ", n=100)" in quality

    # Webhook payload, Argo parameters and ledger carry the same figures.
    (payload,) = receiver.payloads
    data = payload["data"]
    assert data["reason"] == reason and data["segment_key"] == f"q-fall|{MODEL}"
    drift, fell = data["conditions"]
    assert drift["signal"] == "drift_share" and drift["met"] and drift["value"] >= 0.5
    assert (fell["record_type"], fell["eval"], fell["met"]) == ("evals", "faithfulness", True)
    assert fell["segment_key"] == f"q-fall|{MODEL}|faithfulness"
    figures = fell["figures"]
    assert figures["mean"] == pytest.approx(0.55, abs=0.03)
    assert figures["reference"] == pytest.approx(0.85, abs=0.02)
    assert figures["level"] == pytest.approx(figures["mean"])
    (workflow,) = contract.workflows.values()
    params = {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}
    assert json.loads(params["conditions"]) == data["conditions"]

    # The feedback policy: thumbs-down level and the label mix, each with its numbers.
    feedback_reason = decisions[("drift-and-feedback", f"q-fb|{MODEL}")]["reason"]
    _, thumbs, labels = feedback_reason.split("; ")
    assert thumbs.startswith("evals user_feedback degradation_level:thumbs_down_rate 0.")
    assert " >= 0.25 in window 3 (mean 0." in thumbs
    assert labels.startswith("evals relevance feature_drifted:label detected in window 3")
    stage.close()


def test_the_documented_example_loads_from_yaml(tmp_path: Path) -> None:
    from observer.config import load_config

    f = tmp_path / "observer.yaml"
    f.write_text(
        "trigger:\n  policies:\n    - name: drift-and-quality\n      all_of:\n"
        "        - drift_share >= 0.5 for 2 windows\n"
        "        - eval faithfulness fell\n"
    )
    (p,) = load_config(f, env={}).trigger.policies
    assert [(c.signal, c.op, c.threshold, c.for_windows, c.record_type, c.eval)
            for c in p.conditions] == [
        ("drift_share", ">=", 0.5, 2, None, None),
        ("degradation:score_fell", ">=", 1.0, 1, "evals", "faithfulness"),
    ]
    text = f.read_text()
    f.write_text(text.replace("eval faithfulness fell", "eval faithfulness >= 1"))
    with pytest.raises(Exception, match="no signal; write"):
        load_config(f, env={})
    f.write_text(text.replace("eval faithfulness fell",
                              "{signal: 'degradation:score_fell', record_type: tools, eval: f}"))
    with pytest.raises(Exception, match="eval applies to record_type evals, not tools"):
        load_config(f, env={})
