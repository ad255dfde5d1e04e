"""Policies that combine conditions (``all_of`` / ``any_of``).

The tracker is fed drift results as the drift engine writes them; the end-to-end test runs the
real trigger stage against the contract Argo server (which checks the submitted parameters
against the rendered WorkflowTemplate) and a webhook receiver that verifies signatures with
the reference ``standardwebhooks`` package.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from observer.config import load_config
from observer.core.bus import Message
from observer.core.config import ConfigError, KafkaConfig
from observer.core.records import DegradationSignal, DriftResult, FeatureDrift, encode
from observer.core.topics import Topics
from observer.triggers.config import PolicyConfig, TriggerConfig
from observer.triggers.policy import PolicyTracker
from observer.triggers.stage import TriggerStage
from tests.triggers_support import ARGO_TOKEN, SECRET, Servers

SHOP = {"service": "shop", "model": "gpt-4o"}

# The documented default: retrain only when drift and a worsening signal coincide.
DRIFT_AND_ERRORS = [
    {"signal": "drift_share", "op": ">=", "threshold": 0.5, "for_windows": 2},
    {"signal": "degradation:error_rate"},
]


def window(
    i: int,
    share: float,
    errors: bool | None = None,
    *,
    record_type: str = "llm",
    segment: dict[str, str] = SHOP,
    n: int = 500,
    features: list[FeatureDrift] | None = None,
) -> DriftResult:
    """Window ``i``; ``errors`` True/False: the error-rate detector fired / did not."""
    degradation = [] if errors is None else [DegradationSignal(
        name="error_rate", field="status", detector="adwin", n=n, mean=0.2 if errors else 0.01,
        level=0.18 if errors else 0.01, detected=errors, detections=int(errors))]
    return DriftResult(
        segment=segment, segment_key="|".join(segment.values()), record_type=record_type,
        window_index=i, n_reference=500, n_current=n, features=features or [],
        drift_share=share, dataset_drift=share >= 0.5, closed_at_unix_nano=i,
        degradation=degradation,
    )


def feed(tracker: PolicyTracker, results: list[DriftResult]) -> list:
    return [tracker.update(r, now=float(r.window_index)) for r in results]


def policy(**combined: object) -> PolicyConfig:
    return PolicyConfig.model_validate({"name": "p", "cooldown_s": 0, **combined})


def test_drift_alone_does_not_fire_all_of_but_drift_with_errors_does() -> None:
    tracker = PolicyTracker(policy(all_of=DRIFT_AND_ERRORS))
    # Four drifted windows, errors flat: a single-signal drift policy would have fired twice.
    assert feed(tracker, [window(i, 0.8, errors=False) for i in range(1, 5)]) == [None] * 4
    # The error rate rises in window 8, with drift sustained over 7-8.
    *quiet, decision = feed(tracker, [window(5, 0.2, False), window(6, 0.3, False),
                                      window(7, 0.71, False), window(8, 0.9, True)])
    assert quiet == [None, None, None]
    assert decision.kind == "fired"
    assert decision.reason == (
        "all_of: drift_share 0.71 >= 0.5 for 2 windows (7-8); "
        "degradation:error_rate detected in window 8"
    )
    assert (decision.first_window_index, decision.window_index) == (7, 8)
    assert [(v.signal, v.value, v.windows, v.met) for v in decision.conditions] == [
        ("drift_share", 0.71, (7, 8), True), ("degradation:error_rate", 1.0, (8,), True)
    ]


def test_errors_without_sustained_drift_do_not_fire_all_of() -> None:
    tracker = PolicyTracker(policy(all_of=DRIFT_AND_ERRORS))
    # Drift in one window only, then a gap (window 3 never arrived): not 2 consecutive.
    assert feed(tracker, [window(1, 0.1, True), window(2, 0.9, True), window(4, 0.9, True)]) == [
        None, None, None
    ]
    assert feed(tracker, [window(5, 0.9, True)])[0].reason.startswith(
        "all_of: drift_share 0.9 >= 0.5 for 2 windows (4-5)"
    )


def test_any_of_fires_on_either_condition_and_names_both() -> None:
    drift_only = PolicyTracker(policy(any_of=DRIFT_AND_ERRORS))
    assert feed(drift_only, [window(1, 0.8, False)]) == [None]
    (fired,) = feed(drift_only, [window(2, 0.6, False)])
    assert fired.reason == (
        "any_of: drift_share 0.6 >= 0.5 for 2 windows (1-2); "
        "degradation:error_rate 0 in window 2: not >= 1"
    )
    errors_only = PolicyTracker(policy(any_of=DRIFT_AND_ERRORS))
    (fired,) = feed(errors_only, [window(1, 0.1, True)])
    assert fired.reason == (
        "any_of: drift_share 0.1 in window 1: not >= 0.5 for 2 windows; "
        "degradation:error_rate detected in window 1"
    )
    assert [v.met for v in fired.conditions] == [False, True]


def test_after_a_decision_each_condition_counts_afresh() -> None:
    tracker = PolicyTracker(policy(all_of=DRIFT_AND_ERRORS))
    assert feed(tracker, [window(1, 0.9, True), window(2, 0.9, True)])[1].kind == "fired"
    # Window 3 alone is not 2 new windows of drift: no decision; 3-4 are.
    assert feed(tracker, [window(3, 0.9, True)]) == [None]
    assert feed(tracker, [window(4, 0.9, True)])[0].first_window_index == 3


def test_ops_feature_statistics_and_sample_floor() -> None:
    def tokens(i: int, statistic: float, n: int = 500) -> DriftResult:
        f = FeatureDrift(name="output_tokens", kind="numeric", method="psi",
                         statistic=statistic, threshold=0.2, drifted=statistic >= 0.2)
        return window(i, 0.0, n=n, features=[f])

    tracker = PolicyTracker(policy(min_samples=100, all_of=[
        {"signal": "feature:output_tokens", "op": ">", "threshold": 0.2},
        {"signal": "drift_share", "op": "<=", "threshold": 0.1},
    ]))
    assert feed(tracker, [tokens(1, 0.2), tokens(2, 0.5, n=20)]) == [None, None]  # = / few
    assert feed(tracker, [tokens(3, 0.35)])[0].reason == (
        "all_of: feature:output_tokens 0.35 > 0.2 in window 3; drift_share 0 <= 0.1 in window 3"
    )


def test_a_condition_reads_another_record_type_of_the_same_segment() -> None:
    # The quality side arrives as another record type whose segments have other keys: it
    # joins the llm segment on the keys both have (service), never another service's.
    tracker = PolicyTracker(policy(all_of=[
        {"signal": "drift_share", "for_windows": 2},
        {"signal": "degradation:error_rate", "record_type": "tools", "for_windows": 2},
    ]))
    def tools(i: int, errors: bool, service: str) -> DriftResult:
        return window(i, 0.0, errors, record_type="tools",
                      segment={"service": service, "tool": "search"})

    assert feed(tracker, [tools(1, True, "bank"), tools(2, True, "bank")]) == [None, None]
    assert feed(tracker, [window(1, 0.9), window(2, 0.9)]) == [None, None]  # bank is not shop
    # Tools windows are policy-watched too by default: they must not decide on their own.
    assert feed(tracker, [tools(5, True, "shop"), tools(6, True, "shop")]) == [None, None]
    (decision,) = feed(tracker, [window(3, 0.8)])
    assert decision.reason == (
        "all_of: drift_share 0.8 >= 0.5 for 2 windows (2-3); "
        "tools degradation:error_rate detected for 2 windows (5-6)"
    )
    evals = decision.conditions[1]
    assert (evals.record_type, evals.segment_key) == ("tools", "shop|search")


def test_replayed_windows_are_not_counted_twice() -> None:
    tracker = PolicyTracker(policy(all_of=[{"signal": "drift_share", "for_windows": 3}]))
    assert feed(tracker, [window(1, 0.9), window(2, 0.9), window(2, 0.9)]) == [None] * 3
    assert feed(tracker, [window(3, 0.9)])[0].reason == (
        "all_of: drift_share 0.9 >= 0.5 for 3 windows (1-3)"
    )


@pytest.mark.parametrize(
    "combined, message",
    [
        ({"all_of": [{"signal": "latency"}]},
         "unknown signal 'latency'; known: drift_share, dataset_drift, n, feature:<name>"),
        ({"all_of": [{"signal": "degradation"}]}, "unknown signal 'degradation'"),
        ({"all_of": DRIFT_AND_ERRORS, "any_of": DRIFT_AND_ERRORS}, "all_of or any_of, not both"),
        ({"signal": "drift_share", "any_of": DRIFT_AND_ERRORS}, "any_of replaces signal"),
        ({"consecutive_windows": 3, "all_of": DRIFT_AND_ERRORS}, "replaces consecutive_windows"),
        ({"all_of": []}, "all_of needs at least one condition"),
        ({"all_of": [{"signal": "feature:x"}]}, "condition 'feature:x' needs a threshold"),
        ({"all_of": [{"signal": "drift_share", "op": "=="}]}, "op"),
    ],
)
def test_bad_combinations_fail_naming_the_problem(combined: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        PolicyConfig.model_validate({"name": "p", **combined})


def test_yaml_policy_with_conditions_loads_and_a_typo_fails_at_start(tmp_path: Path) -> None:
    f = tmp_path / "observer.yaml"
    f.write_text(
        "trigger:\n  policies:\n    - name: drift-and-errors\n      all_of:\n"
        "        - {signal: drift_share, op: '>=', threshold: 0.5, for_windows: 2}\n"
        "        - {signal: 'degradation:error_rate'}\n"
    )
    (p,) = load_config(f, env={}).trigger.policies
    assert [(c.signal, c.op, c.threshold, c.for_windows) for c in p.conditions] == [
        ("drift_share", ">=", 0.5, 2), ("degradation:error_rate", ">=", 1.0, 1)
    ]
    f.write_text(f.read_text().replace("drift_share,", "drift_shar,"))
    with pytest.raises(ConfigError, match="unknown signal 'drift_shar'"):
        load_config(f, env={})


def test_webhook_argo_run_and_ledger_carry_the_figures(
    tmp_path: Path, trigger_env: Servers
) -> None:
    argo_url, contract, hook_url, receiver = trigger_env
    cfg = TriggerConfig.model_validate({
        "ledger_path": str(tmp_path / "ledger.sqlite"),
        "argo": {"server": argo_url, "token": ARGO_TOKEN},
        "policies": [{
            "name": "retrain", "min_samples": 10, "all_of": DRIFT_AND_ERRORS,
            "actions": ["argo"], "webhooks": [{"url": hook_url, "secret": SECRET}],
        }],
    })
    topics = Topics.from_config(KafkaConfig())
    stage = TriggerStage(cfg, topics)
    results = [window(1, 0.9, False), window(2, 0.9, False), window(3, 0.4, True),
               window(4, 0.8, True), window(5, 0.75, True)]
    stage.process([Message(topics.drift, 0, k, b"k", encode(r), 0) for k, r in enumerate(results)])
    stage.tick()

    (payload,) = receiver.payloads
    data = payload["data"]
    assert data["reason"] == (
        "all_of: drift_share 0.75 >= 0.5 for 2 windows (4-5); "
        "degradation:error_rate detected in window 5"
    )
    figures = [{k: c[k] for k in ("signal", "op", "threshold", "value", "windows", "met")}
               for c in data["conditions"]]
    assert figures == [
        {"signal": "drift_share", "op": ">=", "threshold": 0.5, "value": 0.75,
         "windows": [4, 5], "met": True},
        {"signal": "degradation:error_rate", "op": ">=", "threshold": 1.0, "value": 1.0,
         "windows": [5], "met": True},
    ]
    (workflow,) = contract.workflows.values()
    params = {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}
    assert json.loads(params["conditions"]) == data["conditions"]
    (row,) = stage.ledger.list_decisions()
    assert (row["reason"], row["first_window_index"]) == (data["reason"], 4)
    stage.close()


def test_a_restarted_tracker_ignores_replays_and_decides_as_before() -> None:
    cfg = policy(all_of=DRIFT_AND_ERRORS)
    before = PolicyTracker(cfg)
    assert feed(before, [window(1, 0.9, True), window(2, 0.9, True)])[1].kind == "fired"
    after = PolicyTracker(cfg)
    for saved in before.take_dirty():
        after.restore(saved)
    # The bus redelivers windows 1-2 (counted already): they neither count nor decide again.
    assert feed(after, [window(1, 0.9, True), window(2, 0.9, True), window(3, 0.9, True)]) == [
        None, None, None
    ]
    assert feed(after, [window(4, 0.9, True)])[0].first_window_index == 3


def test_only_a_combined_policys_run_gets_the_conditions_parameter() -> None:
    from observer.triggers.runs import build_run, run_parameters

    def params(cfg: PolicyConfig, results: list[DriftResult]) -> dict[str, str]:
        *_, decision = feed(PolicyTracker(cfg), results)
        run = build_run(decision=decision, result=results[-1], policy=cfg,
                        name_prefix="retrain-", export=None)
        return run_parameters(run)

    single = params(policy(consecutive_windows=1), [window(1, 0.9)])
    assert "conditions" not in single  # pipelines that never declared it keep working
    combined = params(policy(any_of=DRIFT_AND_ERRORS), [window(1, 0.1, True)])
    assert [c["met"] for c in json.loads(combined["conditions"])] == [False, True]
