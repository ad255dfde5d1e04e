"""References as versioned state (issue 17): versions and provenance, pin, rebaseline
(``--next``, ``--from-window``, ``--parquet``), across restarts; the engine side, with the
in-memory checkpoint store of :mod:`tests.drift_support`."""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from observer.core.bus import Message, Output
from observer.core.records import (
    DriftResult,
    LLMCall,
    OffsetRange,
    ReferenceCommand,
    ReferenceState,
    decode,
    encode,
)
from observer.drift.config import DriftConfig, FeatureSpec
from observer.drift.references import Versions, first_version, rebaseline_refusal
from tests.drift_support import TOPICS, Runner

FEATURES = {"llm": [FeatureSpec(name="output_tokens", kind="numeric")]}
SEGMENT = "shop|m1"


def config(**settings: object) -> DriftConfig:
    return DriftConfig(**{"window_size": 20, "reference": "first_window", "numeric_method": "ks",
                          "features": FEATURES, **settings})  # type: ignore[arg-type]


class Feed:
    """LLM calls of one segment on partition 0, and commands on their own topic."""

    def __init__(self, seed: int = 1) -> None:
        self.rng = np.random.default_rng(seed)
        self.offset = 0
        self.command_offset = 0

    def calls(self, n: int, scale: float) -> list[Message]:
        out = []
        for _ in range(n):
            rec = LLMCall(service="shop", model="m1", trace_id=uuid.uuid4().hex, span_id="s",
                          output_tokens=int(self.rng.lognormal(np.log(200 * scale), 0.3)))
            out.append(Message(TOPICS.llm, 0, self.offset, SEGMENT.encode(), encode(rec),
                               1_700_000_000_000 + self.offset))
            self.offset += 1
        return out

    def command(self, command: str, **fields: object) -> Message:
        cmd = ReferenceCommand(command_id=uuid.uuid4().hex, command=command,  # type: ignore[arg-type]
                               segment_key=SEGMENT, record_type="llm", by="test", **fields)  # type: ignore[arg-type]
        msg = Message(TOPICS.drift_commands, 0, self.command_offset, b"llm/" + SEGMENT.encode(),
                      encode(cmd), 1_700_000_100_000)
        self.command_offset += 1
        return msg


def step(runner: Runner, engine: object, batch: list[Message]) -> list[Output]:
    """One StageRunner iteration: process, acknowledge, commit, tick."""
    outputs = engine.process(batch) + engine.tick()  # type: ignore[attr-defined]
    runner.acknowledge(outputs)
    runner.commit(batch)
    return outputs


def results(outputs: list[Output]) -> list[DriftResult]:
    return [decode(o.value) for o in outputs if o.topic == TOPICS.drift]  # type: ignore[misc]


def state(outputs: list[Output]) -> ReferenceState:
    states = [decode(o.value) for o in outputs if o.topic == TOPICS.references]
    assert states, "no reference state was published"
    return states[-1]  # type: ignore[return-value]


def test_rebaseline_next_scores_later_windows_against_v2_and_keeps_v1() -> None:
    runner, feed = Runner(config()), Feed()
    engine = runner.engine()
    first = step(runner, engine, feed.calls(20, 1.0))  # window 0: the reference
    v1 = state(first)
    assert (v1.current, v1.versions[0].source, v1.versions[0].n) == (1, "first_window", 20)
    assert v1.versions[0].ranges == [OffsetRange(topic=TOPICS.llm, partition=0, first_offset=0,
                                                 last_offset=19)]
    drifted = results(step(runner, engine, feed.calls(40, 3.0)))
    assert [(r.window_index, r.dataset_drift, r.reference_version) for r in drifted] == [
        (1, True, 1), (2, True, 1)]
    # The new model's traffic is the new normal: its next 30 records become v2.
    out = step(runner, engine, [*feed.calls(5, 3.0), feed.command("rebaseline", source="next",
                                                                     records=30)])
    collecting = state(out)
    assert collecting.collecting is not None and collecting.collecting["version"] == 2
    assert collecting.last_command["outcome"] == "applied"  # type: ignore[index]
    out = step(runner, engine, feed.calls(30 + 40, 3.0))
    later = results(out)
    v2 = state(out)
    # The open window (5 records) was abandoned as 3; v2 was collected as 4; 5, 6 are scored.
    assert [(r.window_index, r.reference_version, r.n_reference) for r in later] == [
        (5, 2, 30), (6, 2, 30)]
    assert not any(r.dataset_drift for r in later)
    assert [(v.version, v.source, v.n) for v in v2.versions] == [
        (1, "first_window", 20), (2, "rebaseline:next", 30)]
    assert v2.current == 2 and v2.collecting is None
    assert v2.versions[1].ranges[0].first_offset == 65  # the records after the command
    assert v2.versions[0].ranges == v1.versions[0].ranges  # kept in history
    assert v2.versions[1].detail["by"] == "test"


def test_versions_and_provenance_survive_a_restart() -> None:
    runner, feed = Runner(config()), Feed(2)
    engine = runner.engine()
    step(runner, engine, feed.calls(25, 1.0))
    step(runner, engine, [feed.command("rebaseline", source="next", records=20),
                          feed.command("pin")])
    step(runner, engine, feed.calls(20, 2.0))  # v2 collected
    step(runner, engine, feed.calls(10, 2.0))
    before = engine._streams[(SEGMENT, "llm")].versions  # type: ignore[attr-defined]
    assert (before.current.version, before.pinned) == (2, True)
    # A new engine on the same checkpoints: the partition's first batch restores the stream.
    restarted = runner.engine()
    out = step(runner, restarted, feed.calls(10, 2.0))
    after = state(out)  # published again with the restore
    assert (after.current, after.pinned) == (2, True)
    assert [(v.version, v.source) for v in after.versions] == [
        (1, "first_window"), (2, "rebaseline:next")]
    # Window 1 was abandoned by the rebaseline, v2 collected as 2: window 3 closes now.
    assert [(r.window_index, r.reference_version) for r in results(out)] == [(3, 2)]
    # Pinned, across the restart too: a rebaseline is refused.
    refused = state(step(runner, restarted, [feed.command("rebaseline", source="next",
                                                           records=20)]))
    assert refused.last_command["outcome"] == "refused"  # type: ignore[index]
    assert "pinned" in refused.last_command["message"]  # type: ignore[index]
    assert refused.current == 2 and refused.collecting is None


def test_a_restart_while_collecting_resumes_the_collection_and_applies_a_command_once() -> None:
    stream = Feed(3)
    batches = [stream.calls(25, 1.0), [stream.command("rebaseline", source="next", records=30)],
               stream.calls(15, 2.0), stream.calls(15, 2.0), stream.calls(40, 2.0)]

    def run(kill_after: int | None, seed: int = 0) -> list[tuple[int, int | None, int]]:
        rnd = random.Random(seed)
        runner = Runner(config())
        engine = runner.engine()
        got = []
        for i, batch in enumerate(batches):
            outputs = engine.process(batch) + engine.tick()
            if i == kill_after:  # killed with any part of its outputs acknowledged
                outputs = [o for o in outputs if rnd.random() < 0.5]
            runner.acknowledge(outputs)
            got += [(r.window_index, r.reference_version, r.n_reference) for r in results(outputs)]
            if i == kill_after:  # nothing committed: a successor replays the batch
                engine = runner.engine()
                outputs = engine.process(batch) + engine.tick()
                runner.acknowledge(outputs)
                got += [(r.window_index, r.reference_version, r.n_reference)
                        for r in results(outputs)]
            runner.commit(batch)
        return got

    expected = run(None)
    assert expected[-2:] == [(3, 2, 30), (4, 2, 30)]
    for kill_after in (1, 2, 3, 4):
        for seed in range(4):
            assert sorted(run(kill_after, seed)) == expected, (kill_after, seed)


def test_pin_refuses_rebaseline_unless_forced_and_always_refuses_automatic_ones() -> None:
    runner, feed = Runner(config()), Feed(4)
    engine = runner.engine()
    step(runner, engine, feed.calls(30, 1.0))
    assert state(step(runner, engine, [feed.command("pin")])).pinned
    refused = state(step(runner, engine, [feed.command("rebaseline", source="next", records=20)]))
    assert refused.last_command["outcome"] == "refused" and refused.collecting is None  # type: ignore[index]
    forced = state(step(runner, engine, [feed.command("rebaseline", source="next", records=20,
                                                      force=True)]))
    assert forced.last_command["outcome"] == "applied" and forced.collecting is not None  # type: ignore[index]
    unpinned = state(step(runner, engine, [feed.command("unpin")]))
    assert not unpinned.pinned
    # What re-baselining on promotion must call: a pin always wins over it.
    versions = Versions(current=first_version("first_n", 10, at=0), pinned=True)
    assert rebaseline_refusal(versions, force=True, automatic=True) is not None
    versions.pinned = False
    assert rebaseline_refusal(versions, force=False, automatic=True) is None


def test_rebaseline_from_parquet_and_history_keeps_values_of_the_last_k(tmp_path: Path) -> None:
    path = tmp_path / "ref.parquet"
    pq.write_table(pa.table({"output_tokens": [600 + i % 7 for i in range(50)]}), path)
    runner, feed = Runner(config(reference_history_values=1)), Feed(5)
    engine = runner.engine()
    step(runner, engine, feed.calls(20, 1.0))
    for _ in range(2):
        out = step(runner, engine, [feed.command("rebaseline", source="parquet", path=str(path))])
    bad = state(step(runner, engine, [feed.command("rebaseline", source="parquet",
                                                   path=str(tmp_path / "missing.parquet"))]))
    assert bad.last_command["outcome"] == "failed"  # type: ignore[index]
    assert "does not exist" in bad.last_command["message"]  # type: ignore[index]
    s = state(out)
    assert [(v.version, v.source, v.n, v.values_kept) for v in s.versions] == [
        (1, "first_window", 20, False), (2, "rebaseline:parquet", 50, True),
        (3, "rebaseline:parquet", 50, True)]
    scored = results(step(runner, engine, feed.calls(20, 3.0)))
    assert [(r.reference_version, r.n_reference) for r in scored] == [(3, 50)]


def test_rebaseline_from_window_reads_the_windows_records_back(tmp_path: Path) -> None:
    feed = Feed(6)
    history = feed.calls(20, 1.0) + feed.calls(20, 3.0)
    by_offset = {m.offset: m for m in history}

    def reader(ranges: list[OffsetRange], segment: dict[str, str]) -> list:
        return [(decode(by_offset[o].value), by_offset[o].timestamp_ms)
                for r in ranges for o in range(r.first_offset, r.last_offset + 1)]

    runner = Runner(config())
    from observer.drift.engine import DriftEngine

    engine = DriftEngine(runner.cfg, TOPICS, store=runner.store, results=runner.log,
                         clock=runner.clock, reader=reader)
    window1 = results(step(runner, engine, history))[0]
    assert window1.dataset_drift
    out = step(runner, engine, [feed.command("rebaseline", source="from-window", window=1,
                                             ranges=window1.current_ranges)])
    s = state(out)
    assert (s.current, s.versions[-1].source, s.versions[-1].detail["window"]) == (
        2, "rebaseline:from-window", 1)
    assert s.versions[-1].ranges == window1.current_ranges
    scored = results(step(runner, engine, feed.calls(20, 3.0)))
    assert [(r.reference_version, r.dataset_drift) for r in scored] == [(2, False)]


def test_versions_survive_the_local_mirror_into_a_new_broker(tmp_path: Path) -> None:
    """Embedded durable mode: the SQLite mirror seeds a new (empty) broker incarnation."""
    from observer.core.compacted import MemoryCompactedStore
    from observer.drift.engine import DriftEngine
    from observer.drift.local_state import LocalDriftState

    runner, feed = Runner(config()), Feed(7)
    engine = runner.engine()
    local = LocalDriftState(tmp_path / "drift-state.sqlite", TOPICS, "first")
    for batch in (feed.calls(25, 1.0), [feed.command("rebaseline", source="next", records=20),
                                        feed.command("pin")], feed.calls(30, 2.0)):
        local.apply(step(runner, engine, batch))
    local.close()
    again = LocalDriftState(tmp_path / "drift-state.sqlite", TOPICS, "second")
    store = MemoryCompactedStore(TOPICS.drift_state)
    store.apply(again.seed())
    again.close()
    restarted = DriftEngine(config(), TOPICS, store=store)
    out = restarted.process(Feed(8).calls(5, 2.0))  # the new log numbers from 0 again
    s = state(out)
    assert (s.current, s.pinned) == (2, True)
    assert [(v.version, v.source, v.n) for v in s.versions] == [
        (1, "first_window", 20), (2, "rebaseline:next", 20)]
    # Offsets of the old incarnation are meaningless now: dropped, the values kept.
    assert [v.ranges for v in s.versions] == [[], []]
    assert s.versions[0].values_kept


def test_a_hostile_command_goes_to_the_dead_letter_topic() -> None:
    runner, feed = Runner(config()), Feed(9)
    engine = runner.engine()
    step(runner, engine, feed.calls(20, 1.0))
    bad = [Message(TOPICS.drift_commands, 0, 90, b"x", b"{not json", 0),
           Message(TOPICS.drift_commands, 0, 91, b"x", encode(LLMCall(
               service="s", model="m", trace_id="t", span_id="s")), 0),
           Message(TOPICS.drift_commands, 0, 92, b"x", b'{"schema": "observer.reference-command/v1",'
                   b' "command_id": "c", "command": "rebaseline", "segment_key": "shop|m1",'
                   b' "record_type": "llm", "source": "next", "records": -5}', 0)]
    out = step(runner, engine, bad)
    letters = [json.loads(o.value) for o in out if o.topic == TOPICS.dead_letter]
    assert [d["reason"] for d in letters] == ["decode_error", "schema_error", "invalid_value"]
    assert engine._streams[(SEGMENT, "llm")].versions.current.version == 1  # type: ignore[attr-defined]
