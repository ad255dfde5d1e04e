"""Checkpoints and restarts: a killed engine resumes with exactly the uninterrupted results.

These tests drive the engine the way :class:`observer.core.bus.StageRunner` does (process,
produce, commit, tick) against :class:`observer.core.compacted.MemoryCompactedStore`, and kill it
at every kind of point, including mid-produce with only some outputs acknowledged. The same
guarantee on the real broker with SIGKILL is in ``test_drift_restart.py``.
"""

from __future__ import annotations

import json
import random
import uuid

import numpy as np
import pytest

from observer.drift.checkpoint import restore_streams
from observer.core.bus import Message, Output
from observer.drift.config import FeatureSpec
from observer.core.records import LLMCall, encode
from tests.drift_support import (
    T0_MS,
    TOPICS,
    Runner,
    first_window_config,
    keyed,
    messages as stream,
    results_of,
    uninterrupted,
    with_kills,
)

CFG = first_window_config(window_size=25)


@pytest.mark.parametrize("seed", range(12))
def test_kills_anywhere_give_the_uninterrupted_results(seed: int) -> None:
    messages = stream(seed)
    rnd = random.Random(seed)
    batch = rnd.choice([3, 7, 40, 130])
    expected = uninterrupted(CFG, messages, batch)
    assert len(expected) > 15 and any(r.dataset_drift for r in expected.values())

    # Killed every few batches, mid-produce: any subset of the killed batch's outputs
    # acknowledged, nothing committed.
    got, kills = with_kills(CFG, messages, batch, seed)
    assert kills >= 2
    assert got == expected


def test_window_numbering_continues_across_restarts() -> None:
    messages = stream(99, n=400)
    runner = Runner(CFG)
    engine = runner.engine()
    first, rest = messages[:200], messages[200:]
    runner.acknowledge(engine.process(first) + engine.tick())
    runner.commit(first)
    before = results_of(runner.produced)
    engine = runner.engine()  # a restart: nothing in memory
    runner.acknowledge(engine.process(rest) + engine.tick())
    # A result whose batch was never confirmed (no tick after it) is re-emitted, identical.
    after = [r for r in results_of(runner.produced)[len(before):] if r not in before]
    last = {(r.segment_key, r.record_type): r.window_index for r in before}
    for r in after:
        k = (r.segment_key, r.record_type)
        if k in last:
            assert r.window_index == last[k] + 1, "window numbering restarted"
            last[k] = r.window_index
    assert any((r.segment_key, r.record_type) in last for r in after)


def test_a_replayed_batch_is_skipped() -> None:
    messages = stream(5, n=200)
    runner = Runner(CFG)
    engine = runner.engine()
    runner.acknowledge(engine.process(messages) + engine.tick())
    # No commit: a restarted engine gets the same batch again and emits nothing new.
    engine = runner.engine()
    outputs = engine.process(messages)
    assert results_of(outputs) == [] or all(
        r in results_of(runner.produced) for r in results_of(outputs)
    )
    chunks = [o for o in outputs if o.topic == TOPICS.drift_state and o.value is not None]
    assert all(not any(json.loads(o.value)["rows"].values()) for o in chunks if
               json.loads(o.value)["kind"] == "chunk")


def test_partition_moving_between_engines() -> None:
    # Engine A owns everything, then B takes over for a while, then A gets it back: A must
    # notice the jump in offsets and reload what B did instead of using its stale memory.
    messages = stream(21, n=600)
    expected = uninterrupted(CFG, messages, 50)
    runner = Runner(CFG)
    a, b = runner.engine(), runner.engine()
    for i, owner in zip(range(0, 600, 50), "AAABBBBAAAAA"):
        engine = a if owner == "A" else b
        part = messages[i:i + 50]
        runner.acknowledge(engine.process(part) + engine.tick())
        runner.commit(part)
    assert keyed(results_of(runner.produced)) == expected


def test_checkpoint_bytes_grow_with_input_not_with_batches() -> None:
    messages = stream(3, n=600)
    sizes = {}
    for batch in (10, 100):
        runner = Runner(CFG)
        engine = runner.engine()
        total = 0
        for i in range(0, len(messages), batch):
            outs = engine.process(messages[i:i + batch]) + engine.tick()
            total += sum(len(o.value or b"") for o in outs if o.topic == TOPICS.drift_state)
            runner.acknowledge(outs)
        sizes[batch] = total
    # Chunks carry only new values: 10x more batches costs far less than 10x the bytes.
    assert sizes[10] < 3 * sizes[100]


def test_restore_ignores_foreign_and_broken_records() -> None:
    assert restore_streams({"x": b"not json", "y": b'{"schema": "other"}', "z": None}) == {}


def _episode_stream(pattern: str, window: int) -> list[Message]:
    """One LLM segment, one window per letter of ``pattern``: ``c`` calm (the same values as
    the reference, reordered: no drift whatever the method), ``d`` drifted (three times longer
    answers)."""
    rng = np.random.default_rng(17)
    base = rng.lognormal(np.log(200), 0.3, window)
    out = []
    for kind in pattern:
        for v in rng.permutation(base) * (3.0 if kind == "d" else 1.0):
            rec = LLMCall(service="ep", model="m1", trace_id=uuid.uuid4().hex, span_id="s",
                          output_tokens=int(v))
            out.append(Message(TOPICS.llm, 0, len(out), b"ep|m1", encode(rec), 1 + len(out)))
    return out


def test_a_restart_inside_a_drift_episode_continues_it() -> None:
    window = 40
    cfg = first_window_config(window_size=window,
                              features={"llm": [FeatureSpec(name="output_tokens", kind="numeric")]})
    #                   reference, episode over windows 1-3, calm 4, episode from 5
    stream = _episode_stream("cdddcdd", window)
    expected = uninterrupted(cfg, stream, 10)
    episodes = [(w, r.dataset_drift, r.episode_start_window)
                for (_, _, w), r in sorted(expected.items())]
    assert episodes == [(1, True, 1), (2, True, 1), (3, True, 1), (4, False, None),
                        (5, True, 5), (6, True, 5)]

    # Restart in the middle of window 2 (inside the first episode) with nothing in memory.
    runner = Runner(cfg)
    cut = int(2.5 * window)
    engine = runner.engine()
    runner.acknowledge(engine.process(stream[:cut]) + engine.tick())
    runner.commit(stream[:cut])
    chunks = [json.loads(v) for v in runner.store.load().values() if v is not None]
    assert {c["episode_start"] for c in chunks if c["kind"] == "chunk"} == {1}
    engine = runner.engine()
    runner.acknowledge(engine.process(stream[cut:]) + engine.tick())
    assert keyed(results_of(runner.produced)) == expected


def test_streams_past_max_streams_are_refused_and_counted_across_restarts() -> None:
    """A client inventing segments cannot grow the engine without bound: past
    ``drift.max_streams`` a new segment's records are counted and skipped, the streams
    already held go on, and a restart restores the same streams, not others."""
    from prometheus_client import REGISTRY

    def refused() -> float:
        return sum(REGISTRY.get_sample_value("observer_drift_errors_total",
                                             {"record_type": t, "reason": "stream_limit"}) or 0.0
                   for t in ("llm", "tools"))

    messages = stream(7, n=600)  # 3 segments x (llm, tools): 6 streams
    runner = Runner(first_window_config(window_size=25, max_streams=4))
    engine = runner.engine()
    before = refused()
    first, rest = messages[:300], messages[300:]
    runner.acknowledge(engine.process(first) + engine.tick())
    runner.commit(first)
    held = set(engine._streams)
    assert engine.streams == 4

    def stream_of(m: Message) -> tuple[str, str]:
        value = json.loads(m.value)
        return f"{value['service']}|{value['model']}", "llm" if m.topic == TOPICS.llm else "tools"

    skipped = sum(1 for m in first if stream_of(m) not in held)
    assert skipped > 0 and refused() - before == skipped
    assert REGISTRY.get_sample_value("observer_drift_streams") == 4
    assert REGISTRY.get_sample_value("observer_drift_streams_limit") == 4

    engine = runner.engine()  # a restart: the same four streams, and still no more
    runner.acknowledge(engine.process(rest) + engine.tick())
    assert set(engine._streams) == held
    got = results_of(runner.produced)
    assert {(r.segment_key, r.record_type) for r in got} <= held
    assert len({(r.segment_key, r.record_type) for r in got}) == 4


def test_an_idle_stream_makes_room_for_a_new_segment_and_is_not_restored() -> None:
    """At ``drift.max_streams`` a new segment takes the place of the stream idle longest once
    that one has been quiet for ``drift.stream_idle_s``: its checkpoint records are deleted,
    its series removed, and a restart does not bring it back. A stream quiet for less stays,
    and the new segment is then refused as before."""
    from prometheus_client import REGISTRY

    from observer.drift.engine import DriftEngine

    cfg = first_window_config(window_size=25, max_streams=2, stream_idle_s=3600,
                              features={"llm": [FeatureSpec(name="output_tokens", kind="numeric")]})
    runner = Runner(cfg)
    now = [T0_MS * 1_000_000]
    base = np.random.default_rng(3).lognormal(np.log(200), 0.3, 25)
    sent: list[Message] = []

    def calls(service: str, windows: int) -> list[Message]:
        """Calm windows (the same values reordered: never drift) of one segment."""
        batch = []
        for v in np.concatenate([np.random.default_rng(len(sent)).permutation(base)
                                 for _ in range(windows)]):
            rec = LLMCall(service=service, model="m1", trace_id=uuid.uuid4().hex, span_id="s",
                          output_tokens=int(v))
            batch.append(Message(TOPICS.llm, 0, len(sent) + len(batch), f"{service}|m1".encode(),
                                 encode(rec), now[0] // 1_000_000))
        sent.extend(batch)
        return batch

    def at(seconds: int, engine: DriftEngine, batch: list[Message]) -> list[Output]:
        now[0] = T0_MS * 1_000_000 + seconds * 10**9
        outputs = engine.process(batch) + engine.tick()
        runner.acknowledge(outputs)
        runner.commit(batch)
        return outputs

    def sample(name: str, labels: dict[str, str]) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    def keys_of(service: str) -> list[str]:
        return [k for k, v in runner.store.load().items() if v is not None
                and k.startswith(f"llm/{service}|m1/")]

    engine = DriftEngine(cfg, TOPICS, store=runner.store, results=runner.log, clock=lambda: now[0])
    a = {"segment": "a|m1", "record_type": "llm"}
    retired = sample("observer_drift_streams_retired_total", {"record_type": "llm"}) or 0.0
    refused = sample("observer_drift_errors_total", {"record_type": "llm", "reason": "stream_limit"}) or 0.0
    at(0, engine, calls("a", 2))  # a reference window and a scored one
    assert sample("observer_drift_share", a) == 0.0 and keys_of("a")
    at(1800, engine, calls("b", 1))
    out = at(4000, engine, calls("c", 1))  # a quiet for 4000 s, b for 2200 s: a goes
    # Its state on observer.references goes too (the admin API and the CLI drop it).
    assert Output(TOPICS.references, "llm/a|m1", None) in out
    at(4001, engine, [])  # the next iteration: its deletions are confirmed
    assert set(engine._streams) == {("b|m1", "llm"), ("c|m1", "llm")}
    assert sample("observer_drift_streams_retired_total", {"record_type": "llm"}) == retired + 1
    assert sample("observer_drift_share", a) is None
    assert keys_of("a") == [] and keys_of("b") and keys_of("c")

    at(4100, engine, calls("d", 1))  # b quiet for 2300 s only: d is refused
    assert set(engine._streams) == {("b|m1", "llm"), ("c|m1", "llm")}
    assert sample("observer_drift_errors_total",
                  {"record_type": "llm", "reason": "stream_limit"}) == refused + 25

    engine = DriftEngine(cfg, TOPICS, store=runner.store, results=runner.log, clock=lambda: now[0])
    at(4200, engine, calls("b", 1))  # a restart restores b and c, and a stays gone
    assert set(engine._streams) == {("b|m1", "llm"), ("c|m1", "llm")}
    assert [r.window_index for r in results_of(runner.produced) if r.segment_key == "b|m1"] == [1]


def test_exact_streams_restored_past_a_smaller_budget_keep_it_charged() -> None:
    """``drift.mode: auto``: a restart with a smaller ``drift.exact_budget_mb`` restores the
    exact streams exact, and charges each. So when one of them retires, the budget is still
    full with the other and the new segment is sketched; without the charge it would get an
    exact share the memory bound no longer has."""
    from observer.drift.engine import DriftEngine

    features = {"llm": [FeatureSpec(name="output_tokens", kind="numeric")]}
    one_stream_mb = 1 * 2 * 25 * 40 / 1e6  # 1 feature x 2 windows x 25 records x 40 bytes
    runner = Runner(first_window_config(window_size=25, mode="auto", features=features,
                                        exact_budget_mb=2 * one_stream_mb))
    now = [T0_MS * 1_000_000]
    sent: list[Message] = []

    def calls(service: str) -> list[Message]:
        batch = [Message(TOPICS.llm, 0, len(sent) + i, f"{service}|m1".encode(),
                         encode(LLMCall(service=service, model="m1", trace_id=uuid.uuid4().hex,
                                        span_id="s", output_tokens=100 + i)), now[0] // 1_000_000)
                 for i in range(30)]
        sent.extend(batch)
        return batch

    def at(seconds: int, engine: DriftEngine, batch: list[Message]) -> None:
        now[0] = T0_MS * 1_000_000 + seconds * 10**9
        outputs = engine.process(batch) + engine.tick()
        runner.acknowledge(outputs)
        runner.commit(batch)

    def sketched(engine: DriftEngine) -> dict[str, bool]:
        return {key: stream.sketch for (key, _), stream in engine._streams.items()}

    first = DriftEngine(runner.cfg, TOPICS, store=runner.store, results=runner.log,
                        clock=lambda: now[0])
    at(0, first, calls("a"))
    at(1, first, calls("b"))
    assert sketched(first) == {"a|m1": False, "b|m1": False}

    smaller = first_window_config(window_size=25, mode="auto", features=features,
                                  exact_budget_mb=one_stream_mb, max_streams=2, stream_idle_s=3600)
    engine = DriftEngine(smaller, TOPICS, store=runner.store, results=runner.log,
                         clock=lambda: now[0])
    at(2, engine, calls("b"))  # restores a and b, both exact as checkpointed
    assert sketched(engine) == {"a|m1": False, "b|m1": False}
    at(4000, engine, calls("c"))  # a is idle past the limit and makes room: b still holds it all
    assert sketched(engine) == {"b|m1": False, "c|m1": True}
