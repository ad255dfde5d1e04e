"""Time windows (tumbling, sliding) by event time with allowed lateness, in exact and sketch
mode, in the engine and across kills (checkpoints)."""

from __future__ import annotations

import numpy as np
import pytest

from observer.drift.engine import DriftEngine
from observer.drift.record_types import event_time
from observer.drift.reference import store_factory
from observer.drift.window import CountWindow, TimeWindow
from observer.core.bus import Message
from observer.drift.config import DriftConfig, FeatureSpec
from observer.core.records import LLMCall, decode, encode
from tests.drift_support import TOPICS, first_window_config, messages, uninterrupted, with_kills

S = 1_000_000_000


def test_tumbling_windows_close_when_event_time_passes_end_plus_lateness() -> None:
    w = TimeWindow(10 * S, 10 * S, ["x"], lateness=3 * S)
    assert w.update({"x": 1}, 1 * S) == []
    assert w.update({"x": 2}, 11 * S) == []  # window [0, 10) waits for lateness
    assert w.update({"x": 3}, 9 * S) == []  # late but within lateness: counted
    closed = w.update({"x": 4}, 13 * S)
    assert [(c.index, c.start, c.end, c.columns["x"]) for c in closed] == [(0, 0, 10 * S, [1, 3])]
    assert w.update({"x": 5}, 8 * S) == [] and w.late == 1  # its window has closed: dropped
    closed = w.update({"x": 6}, 40 * S)  # closes [10, 20); [20, 30) is empty and skipped
    assert [(c.index, c.start, c.columns["x"]) for c in closed] == [(1, 10 * S, [2, 4])]


def test_sliding_windows_share_panes() -> None:
    w = TimeWindow(4 * S, 2 * S, ["x"])
    closed = []
    for v, t in [(1, 0), (2, 1), (3, 2), (4, 3), (5, 4), (6, 5), (7, 9)]:
        closed += w.update({"x": v}, t * S)
    assert [(c.start // S, c.end // S, c.columns["x"]) for c in closed] == [
        (0, 4, [1, 2, 3, 4]), (2, 6, [3, 4, 5, 6]), (4, 8, [5, 6])]
    assert [c.index for c in closed] == [0, 1, 2]


def test_a_long_quiet_gap_skips_empty_windows_at_once() -> None:
    w = TimeWindow(60 * S, 1 * S, ["x"])
    w.update({"x": 1}, 0)
    closed = w.update({"x": 2}, 10**9 * S)  # 30 years later: no billion empty windows visited
    assert [c.columns["x"] for c in closed] == [[1]]


def test_sketch_panes_merge_into_the_window() -> None:
    specs = [FeatureSpec(name="x", kind="numeric"), FeatureSpec(name="c", kind="categorical")]
    cfg = DriftConfig()
    w = TimeWindow(4 * S, 1 * S, ["x", "c"], store=store_factory(cfg, specs, True))
    rng = np.random.default_rng(0)
    values = rng.normal(10, 2, 400)
    for i, v in enumerate(values):
        w.update({"x": float(v), "c": "a" if i % 3 else "b"}, i * S // 100)
    closed = w.update({"x": 0.0, "c": "a"}, 100 * S)
    first = closed[0]
    assert first.sketches is not None and first.n == 400
    assert first.sketches["x"].n == 400 and first.sketches["x"].mean == pytest.approx(values.mean())
    assert first.sketches["c"].counts == {"b": 134, "a": 266}


def test_checkpoint_then_restore_continues_identically() -> None:
    rng = np.random.default_rng(1)
    events = [(int(t), float(v)) for t, v in zip(np.cumsum(rng.integers(0, 3 * S, 300)),
                                                 rng.normal(size=300))]
    whole = TimeWindow(20 * S, 5 * S, ["x"], lateness=2 * S)
    expected = [c for t, v in events for c in whole.update({"x": v}, t)]
    first = TimeWindow(20 * S, 5 * S, ["x"], lateness=2 * S)
    got, rows, state = [], {"x": [], "@t": []}, None
    for t, v in events[:170]:
        got += first.update({"x": v}, t)
        new_rows, new_state = first.checkpoint()
        if new_state is not None:
            rows, state = {"x": [], "@t": []}, new_state
        for k in rows:
            rows[k] += new_rows.get(k, [])
    second = TimeWindow(20 * S, 5 * S, ["x"], lateness=2 * S)
    second.restore(first.index, rows, state)
    got += [c for t, v in events[170:] for c in second.update({"x": v}, t)]
    assert [(c.index, c.start, c.columns) for c in got] == [
        (c.index, c.start, c.columns) for c in expected]


def test_bad_windows_are_refused() -> None:
    with pytest.raises(ValueError, match="divide"):
        TimeWindow(10, 3, ["x"])
    with pytest.raises(ValueError, match="lateness"):
        TimeWindow(10, 5, ["x"], lateness=-1)
    with pytest.raises(ValueError, match="window_slide_s"):
        DriftConfig(window_kind="sliding")
    with pytest.raises(ValueError, match="must divide"):
        DriftConfig(window_kind="sliding", window_duration_s=60, window_slide_s=7)
    with pytest.raises(ValueError, match="window size"):
        CountWindow(0, ["x"])


def test_event_time_is_the_record_start_else_the_kafka_timestamp() -> None:
    rec = LLMCall(service="s", model="m", trace_id="t", span_id="s", start_time_unix_nano=5)
    assert event_time(rec, 1000) == 5
    assert event_time(rec.model_copy(update={"start_time_unix_nano": 0}), 1000) == 1000 * 10**6
    assert event_time(rec.model_copy(update={"start_time_unix_nano": 0}), -1) == 0


def test_engine_scores_hourly_windows_with_their_bounds() -> None:
    features = {"llm": [FeatureSpec(name="output_tokens", kind="numeric")]}
    cfg = first_window_config(window_kind="tumbling", window_duration_s=3600, features=features,
                              numeric_method="wasserstein")
    engine = DriftEngine(cfg, TOPICS)
    rng = np.random.default_rng(4)
    batch = []
    for i in range(4 * 600):  # 4 hours, a call every 6 s; answers double in hour 3
        hour = i // 600
        rec = LLMCall(service="s", model="m", trace_id="t", span_id="s",
                      start_time_unix_nano=(1_767_225_600 + i * 6) * S,
                      output_tokens=int(rng.lognormal(5 + (0.7 if hour >= 2 else 0), 0.3)))
        batch.append(Message(TOPICS.llm, 0, i, None, encode(rec), 0))
    out = [decode(o.value) for o in engine.process(batch) if o.topic == TOPICS.drift]
    # Hour 0 is the reference; hours 1 and 2 closed; hour 3 is still open.
    assert [(r.window_index, r.n_current, r.dataset_drift) for r in out] == [
        (1, 600, False), (2, 600, True)]
    assert out[0].window_start_unix_nano == (1_767_225_600 + 3600) * S
    assert out[0].window_end_unix_nano - out[0].window_start_unix_nano == 3600 * S


@pytest.mark.parametrize("kind,mode", [("tumbling", "exact"), ("tumbling", "sketch"),
                                       ("sliding", "exact"), ("sliding", "sketch")])
def test_time_windows_checkpoint_exactly_once(kind: str, mode: str) -> None:
    cfg = first_window_config(window_kind=kind, window_duration_s=0.06, allowed_lateness_s=0.004,
                              window_slide_s=0.02 if kind == "sliding" else None, mode=mode)
    stream = messages(7, 800, disorder_ms=6)
    expected = uninterrupted(cfg, stream, 37)
    assert len(expected) > 20 and any(r.dataset_drift for r in expected.values())
    got, kills = with_kills(cfg, stream, 37, 8)
    assert kills >= 2 and got == expected
