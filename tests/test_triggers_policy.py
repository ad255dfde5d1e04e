"""The policy state machine: runs, resets, samples, cooldown, deterministic episode ids."""

from __future__ import annotations

from observer.triggers.config import PolicyConfig
from observer.core.records import DriftResult
from observer.triggers.policy import Decision, PolicyTracker, episode_id


def window(
    i: int,
    share: float,
    *,
    n: int = 500,
    segment: str = "shop|gpt-4o",
    record_type: str = "llm",
) -> DriftResult:
    service, model = segment.split("|")
    return DriftResult(
        segment={"service": service, "model": model},
        segment_key=segment,
        record_type=record_type,
        window_index=i,
        n_reference=500,
        n_current=n,
        features=[],
        drift_share=share,
        dataset_drift=share >= 0.5,
        closed_at_unix_nano=i * 10**9,
    )


def feed(tracker: PolicyTracker, results: list[DriftResult], start: float = 0.0) -> list[Decision]:
    out = []
    for k, r in enumerate(results):
        d = tracker.update(r, now=start + k)
        if d is not None:
            out.append(d)
    return out


def policy(**kw: object) -> PolicyConfig:
    base: dict[str, object] = {
        "name": "p",
        "threshold": 0.5,
        "consecutive_windows": 2,
        "min_samples": 100,
    }
    return PolicyConfig(**{**base, **kw})


def test_fires_after_consecutive_windows() -> None:
    t = PolicyTracker(policy(consecutive_windows=3))
    decisions = feed(t, [window(1, 0.1), window(2, 0.6), window(3, 0.75), window(4, 0.9)])
    assert len(decisions) == 1
    d = decisions[0]
    assert (d.kind, d.policy, d.segment_key, d.record_type) == ("fired", "p", "shop|gpt-4o", "llm")
    assert (d.first_window_index, d.window_index, d.decided_at) == (2, 4, 3.0)
    assert d.reason == "drift_share 0.6 >= 0.5 for 3 consecutive windows (windows 2-4, n=500)"
    assert d.episode_id == episode_id("p", "shop|gpt-4o", "llm", 2)
    assert len(d.episode_id) == 32 and int(d.episode_id, 16) >= 0


def test_single_window_policy_reason() -> None:
    t = PolicyTracker(policy(consecutive_windows=1))
    (d,) = feed(t, [window(7, 0.5, n=120)])
    assert d.reason == "drift_share 0.5 >= 0.5 for 1 window (window 7, n=120)"


def test_non_qualifying_window_resets_the_run() -> None:
    t = PolicyTracker(policy())
    decisions = feed(
        t, [window(1, 0.8), window(2, 0.2), window(3, 0.8), window(4, 0.2), window(5, 0.9)]
    )
    assert decisions == []
    (d,) = feed(t, [window(6, 0.7)], start=10)
    assert d.first_window_index == 5 and d.window_index == 6


def test_min_samples() -> None:
    t = PolicyTracker(policy(min_samples=400))
    assert feed(t, [window(1, 0.9, n=399), window(2, 0.9, n=1000)]) == []
    (d,) = feed(t, [window(3, 0.9, n=400)])
    assert d.reason.endswith("(windows 2-3, n=400)")


def test_record_types_outside_the_policy_are_ignored() -> None:
    t = PolicyTracker(policy(record_types=["llm"]))
    # A tools window between two llm windows neither counts nor breaks the llm run.
    decisions = feed(t, [window(1, 0.9), window(1, 0.9, record_type="tools"), window(2, 0.9)])
    assert [d.record_type for d in decisions] == ["llm"]
    assert ("shop|gpt-4o", "tools") not in t.tracked()


def test_keys_are_independent() -> None:
    t = PolicyTracker(policy())
    a, b = "shop|gpt-4o", "bank|llama"
    decisions = feed(
        t,
        [
            window(1, 0.9, segment=a),
            window(1, 0.9, segment=b),
            window(2, 0.1, segment=b),
            window(2, 0.9, segment=a),
        ],
    )
    assert [d.segment_key for d in decisions] == [a]


def test_gap_and_duplicate_windows() -> None:
    t = PolicyTracker(policy())
    # Window 3 is missing: 2 and 4 are not "in a row".
    assert feed(t, [window(2, 0.9), window(4, 0.9)]) == []
    # The same window twice (an upstream redelivery) counts once.
    t2 = PolicyTracker(policy(consecutive_windows=3))
    assert feed(t2, [window(1, 0.9), window(2, 0.9), window(2, 0.9)]) == []
    (d,) = feed(t2, [window(3, 0.9)])
    assert d.first_window_index == 1


def test_dataset_drift_signal() -> None:
    t = PolicyTracker(policy(signal="dataset_drift", threshold=1.0))
    (d,) = feed(t, [window(1, 0.6), window(2, 0.5)])
    assert d.reason.startswith("dataset_drift 1 >= 1 for 2 consecutive windows")
    assert feed(t, [window(3, 0.4), window(4, 0.9)]) == []


def test_cooldown_suppresses_then_fires_again() -> None:
    t = PolicyTracker(policy(cooldown_s=100))
    (first,) = feed(t, [window(1, 0.9), window(2, 0.9)], start=0)
    assert first.kind == "fired"
    (second,) = feed(t, [window(3, 0.9), window(4, 0.9)], start=50)
    assert second.kind == "suppressed"
    assert "suppressed: fired 50s ago, cooldown 100s" in second.reason
    assert second.episode_id != first.episode_id
    # Cooldown counts from the last firing, not from the suppressed run.
    (third,) = feed(t, [window(5, 0.9), window(6, 0.9)], start=100)
    assert third.kind == "fired" and third.decided_at == 101


def test_cooldown_zero_never_suppresses() -> None:
    t = PolicyTracker(policy(cooldown_s=0))
    decisions = feed(t, [window(i, 0.9) for i in range(1, 7)])
    assert [d.kind for d in decisions] == ["fired"] * 3


def test_restore_fired_applies_cooldown() -> None:
    t = PolicyTracker(policy(cooldown_s=3600))
    t.restore_fired("shop|gpt-4o", "llm", at=1000.0)
    (d,) = feed(t, [window(1, 0.9), window(2, 0.9)], start=2000)
    assert d.kind == "suppressed"


def test_episode_ids_are_deterministic() -> None:
    results = [
        window(i, s) for i, s in enumerate([0.1, 0.9, 0.9, 0.2, 0.8, 0.8, 0.8, 0.8], start=1)
    ]
    one = feed(PolicyTracker(policy(cooldown_s=0)), results)
    two = feed(PolicyTracker(policy(cooldown_s=0)), results, start=1e6)  # another clock
    assert [d.episode_id for d in one] == [d.episode_id for d in two]
    assert len({d.episode_id for d in one}) == len(one) == 3
    # The id names the policy, the segment, the record type and the run's first window.
    assert episode_id("p", "s", "llm", 1) != episode_id("q", "s", "llm", 1)
    assert episode_id("p", "s", "llm", 1) != episode_id("p", "s", "tools", 1)
    assert episode_id("p", "s", "llm", 1) != episode_id("p", "s", "llm", 2)


def test_n_of_last_m_windows() -> None:
    t = PolicyTracker(policy(consecutive_windows=3, window_of=5))
    # Qualifying 1, 3, 5: three of the last five, never two in a row.
    decisions = feed(t, [window(1, 0.9), window(2, 0.1), window(3, 0.9), window(4, 0.1)])
    assert decisions == []
    (d,) = feed(t, [window(5, 0.9)])
    assert (d.first_window_index, d.window_index) == (1, 5)
    assert d.reason == "drift_share 0.9 >= 0.5 in 3 of the last 5 windows (windows 1-5, n=500)"
    # A gap counts as windows that did not qualify: 6 and 9 alone are two of the last five.
    t2 = PolicyTracker(policy(consecutive_windows=3, window_of=5))
    assert feed(t2, [window(6, 0.9), window(9, 0.9)]) == []
    (d2,) = feed(t2, [window(10, 0.9)])
    assert d2.first_window_index == 6


def test_episode_stays_open_until_cleared() -> None:
    t = PolicyTracker(policy(clear_windows=2, clear_threshold=0.3, cooldown_s=0))
    (d,) = feed(t, [window(1, 0.9), window(2, 0.9)])
    assert t.is_open("shop|gpt-4o", "llm")
    # Forty more drifted windows, and windows between the thresholds: no new decision.
    assert feed(t, [window(i, 0.9 if i % 3 else 0.4) for i in range(3, 43)]) == []
    # One clear window, then a relapse: the count starts again.
    assert feed(t, [window(43, 0.1), window(44, 0.9), window(45, 0.2), window(46, 0.2)]) == []
    assert not t.is_open("shop|gpt-4o", "llm")
    (again,) = feed(t, [window(47, 0.9), window(48, 0.9)])
    assert again.first_window_index == 47 and again.episode_id != d.episode_id


def test_segment_globs_and_feature_signal() -> None:
    from observer.core.records import FeatureDrift

    t = PolicyTracker(policy(segments={"model": "gpt-*"}, consecutive_windows=1))
    assert feed(t, [window(1, 0.9, segment="bank|llama")]) == []
    assert len(feed(t, [window(1, 0.9)])) == 1

    def with_feature(i: int, stat: float | None) -> DriftResult:
        f = FeatureDrift(name="output_tokens", kind="numeric", method="psi", statistic=stat,
                         threshold=0.1, drifted=bool(stat and stat >= 0.1))
        return window(i, 0.0).model_copy(update={"features": [f]})

    f = PolicyTracker(policy(signal="feature_statistic", feature="output_tokens", threshold=0.2))
    assert feed(f, [with_feature(1, 0.25), with_feature(2, None)]) == []  # no value: no count
    (d,) = feed(f, [with_feature(3, 0.3), with_feature(4, 0.4)])
    assert d.reason.startswith("output_tokens statistic 0.3 >= 0.2 for 2 consecutive windows")


def test_incoherent_policies_are_refused() -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="needs `feature`"):
        policy(signal="feature_statistic")
    with pytest.raises(ValidationError, match="window_of"):
        policy(consecutive_windows=3, window_of=2)


# --- the degradation signal: a change detector of the segment ---------------------------------


def degraded(i: int, detected: bool | None, *, level: float = 0.3, n: int = 500) -> DriftResult:
    """A window whose ``error_rate`` detector did (or did not) find a change; None: no signal."""
    from observer.core.records import DegradationSignal

    signals = [] if detected is None else [DegradationSignal(
        name="error_rate", field="status", detector="adwin", n=n, mean=level, level=level,
        detected=detected, detections=int(detected), total_detections=int(detected),
    )]
    return window(i, 0.0, n=n, record_type="tools").model_copy(update={"degradation": signals})


def test_degradation_signal_fires_on_a_detection() -> None:
    t = PolicyTracker(policy(signal="degradation", degradation="error_rate",
                             consecutive_windows=1, record_types=["tools"]))
    assert feed(t, [degraded(1, False), degraded(2, None), degraded(3, False)]) == []
    (d,) = feed(t, [degraded(4, True, level=0.31)], start=10)
    assert d.kind == "fired" and (d.first_window_index, d.window_index) == (4, 4)
    assert d.reason == "degradation error_rate detected for 1 window (window 4, n=500); level now 0.31"
    assert d.episode_id == episode_id("p", "shop|gpt-4o", "tools", 4)
    # A drift share far above the threshold is not this policy's signal.
    assert feed(t, [window(5, 0.9, record_type="tools")], start=4000) == []


def test_degradation_signal_hysteresis_and_min_samples() -> None:
    t = PolicyTracker(policy(signal="degradation", degradation="error_rate", consecutive_windows=2,
                             window_of=3, clear_windows=2, cooldown_s=0, record_types=["tools"]))
    assert feed(t, [degraded(1, True, n=50), degraded(2, True, n=50)]) == []  # too few samples
    (d,) = feed(t, [degraded(3, True), degraded(4, False), degraded(5, True)])
    assert d.reason.startswith("degradation error_rate detected in 2 of the last 3 windows")
    # The episode stays open through further detections until 2 windows in a row are clean.
    assert feed(t, [degraded(6, True), degraded(7, False), degraded(8, True)]) == []
    assert t.is_open("shop|gpt-4o", "tools")
    assert feed(t, [degraded(9, False), degraded(10, False)]) == []
    assert not t.is_open("shop|gpt-4o", "tools")
    (again,) = feed(t, [degraded(11, True), degraded(12, True)])
    assert again.first_window_index == 11


def test_degradation_policy_needs_a_signal_name() -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="needs `degradation`"):
        policy(signal="degradation")


def test_engine_detections_become_one_decision() -> None:
    """The drift engine's own results: a tool error rate that jumps starts one episode."""
    import numpy as np

    from observer.drift.engine import DriftEngine
    from observer.core.bus import Message
    from observer.core.config import KafkaConfig
    from observer.drift.config import DriftConfig
    from observer.core.records import ToolCall, decode, encode
    from observer.core.topics import Topics

    topics = Topics.from_config(KafkaConfig(topic_prefix="policy."))
    engine = DriftEngine(DriftConfig(window_size=200, reference="first_window"), topics)
    rng = np.random.default_rng(5)
    rates = [0.05] * 1000 + [0.35] * 1000
    msgs = [
        Message(topics.tools, 0, i, b"shop|m1", encode(ToolCall(
            service="shop", model="m1", tool_name="search", trace_id=str(i), span_id="s",
            status="error" if rng.random() < p else "ok")), 1_700_000_000_000 + i)
        for i, p in enumerate(rates)
    ]
    results = [decode(o.value) for o in engine.process(msgs) if o.topic == topics.drift]
    assert len(results) == 9
    t = PolicyTracker(policy(signal="degradation", degradation="error_rate",
                             consecutive_windows=1, clear_windows=3, record_types=["tools"]))
    decisions = feed(t, results)  # type: ignore[arg-type]
    assert len(decisions) == 1 and decisions[0].kind == "fired"
    assert decisions[0].first_window_index >= 5  # windows 1-4 are all before the jump
    assert "degradation error_rate detected" in decisions[0].reason
