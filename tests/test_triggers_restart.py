"""Restarts of the trigger stage: the policy trackers resume exactly where they were.

The stage runs in a child process that SIGKILLs itself (or is killed) after some batches; a
new stage on the same ledger then gets what the consumer group would deliver: either only the
later results (the killed stage had committed) or the uncommitted batch again (replayed).
Either way there is one decision per episode, an open episode stays open past its cooldown
until it clears, an N-of-M run keeps its count, and nothing is counted twice.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from observer.core.bus import (
    Message,
    Output,
    StageRunner,
    make_consumer,
    make_producer,
    produce_all,
)
from observer.core.config import KafkaConfig
from observer.triggers.config import TriggerConfig
from observer.core.records import DriftResult, TriggerEvent, decode, encode
from observer.core.topics import Topics
from observer.triggers.ledger import Ledger
from observer.triggers.policy import episode_id
from observer.triggers.stage import TriggerStage

ROOT = Path(__file__).resolve().parent.parent
TOPICS = Topics.from_config(KafkaConfig())
SEGMENT = "shop|gpt-4o"


def window(i: int, share: float) -> DriftResult:
    return DriftResult(
        segment={"service": "shop", "model": "gpt-4o"}, segment_key=SEGMENT, record_type="llm",
        window_index=i, n_reference=500, n_current=500, features=[], drift_share=share,
        dataset_drift=share >= 0.5, closed_at_unix_nano=i * 10**9,
    )


def windows(first: int, shares: list[float]) -> list[DriftResult]:
    return [window(i, s) for i, s in enumerate(shares, start=first)]


def config(tmp_path: Path, **policy: Any) -> dict[str, Any]:
    return {
        "ledger_path": str(tmp_path / "ledger.sqlite"),
        "policies": [{
            "name": "retrain", "threshold": 0.5, "consecutive_windows": 2, "min_samples": 10,
            "cooldown_s": 0, **policy,
        }],
    }


def messages(results: list[DriftResult]) -> list[Message]:
    return [Message(TOPICS.drift, 0, k, b"k", encode(r), 0) for k, r in enumerate(results)]


def events(outputs: list[Output]) -> list[TriggerEvent]:
    return [decode(o.value) for o in outputs]  # type: ignore[misc]


# The child: process each batch as the runner would (process, tick), then die unannounced.
CHILD = textwrap.dedent("""
    import json, os, signal, sys
    from observer.core.bus import Message
    from observer.core.config import KafkaConfig
    from observer.triggers.config import TriggerConfig
    from observer.core.topics import Topics
    from observer.triggers.stage import TriggerStage

    cfg = TriggerConfig.model_validate(json.loads(sys.argv[1]))
    topics = Topics.from_config(KafkaConfig())
    stage = TriggerStage(cfg, topics)
    for batch in json.loads(sys.argv[2]):
        stage.process([Message(topics.drift, 0, k, b"k", bytes.fromhex(v), 0)
                       for k, v in enumerate(batch)])
        stage.tick()
    print("processed", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def killed_after(cfg: dict[str, Any], *batches: list[DriftResult]) -> None:
    """Run the batches in a child process that is then SIGKILLed."""
    values = json.dumps([[encode(r).hex() for r in batch] for batch in batches])
    child = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(cfg), values],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert "processed" in child.stdout


def restarted(cfg: dict[str, Any]) -> TriggerStage:
    return TriggerStage(TriggerConfig.model_validate(cfg), TOPICS)


def decisions_of(events_: list[TriggerEvent]) -> list[TriggerEvent]:
    return [e for e in events_ if e.event in ("fired", "suppressed", "held")]


def test_n_of_m_run_keeps_its_count_across_a_kill(tmp_path: Path) -> None:
    # Three of the last five; windows 1 and 3 qualified before the kill.
    cfg = config(tmp_path, consecutive_windows=3, window_of=5)
    killed_after(cfg, windows(1, [0.9, 0.1, 0.9]))

    # The killed stage had committed: only the later windows come.
    stage = restarted(cfg)
    assert decisions_of(events(stage.process(messages(windows(4, [0.1]))))) == []
    (fired,) = events(stage.process(messages(windows(5, [0.9]))))
    assert (fired.event, fired.window_index) == ("fired", 5)
    assert fired.episode_id == episode_id("retrain", SEGMENT, "llm", 1)
    assert fired.reason == "drift_share 0.9 >= 0.5 in 3 of the last 5 windows (windows 1-5, n=500)"
    stage.close()


def test_n_of_m_run_with_the_batch_replayed(tmp_path: Path) -> None:
    cfg = config(tmp_path, consecutive_windows=3, window_of=5)
    killed_after(cfg, windows(1, [0.9, 0.1]), windows(3, [0.9]))
    # The last batch was not committed: it comes again, then the new windows.
    stage = restarted(cfg)
    assert events(stage.process(messages(windows(3, [0.9, 0.1])))) == []
    (fired,) = events(stage.process(messages(windows(5, [0.9]))))
    assert (fired.event, fired.window_index, fired.episode_id) == (
        "fired", 5, episode_id("retrain", SEGMENT, "llm", 1)
    )
    assert len(stage.ledger.list_decisions()) == 1
    stage.close()


def test_replayed_clear_windows_are_not_counted_twice(tmp_path: Path) -> None:
    cfg = config(tmp_path, clear_windows=2, clear_threshold=0.3)
    # Decided at window 2; window 3 is the first of the two clear windows needed.
    killed_after(cfg, windows(1, [0.9, 0.9]), windows(3, [0.1]))
    stage = restarted(cfg)
    # Window 3 again (its batch was not committed), then drift: had 3 counted twice, the
    # episode would have cleared and 4-5 would be a new run.
    assert decisions_of(events(stage.process(messages(windows(3, [0.1]) + windows(4, [0.9, 0.9]))))) == []
    (open_,) = stage.ledger.open_episodes()
    assert open_["episode_id"] == episode_id("retrain", SEGMENT, "llm", 1)
    # Two clear windows in a row end it; the next drift is a new episode.
    assert events(stage.process(messages(windows(6, [0.1, 0.2])))) == []
    assert stage.ledger.open_episodes() == []
    (again,) = events(stage.process(messages(windows(8, [0.9, 0.9]))))
    assert (again.event, again.episode_id) == ("fired", episode_id("retrain", SEGMENT, "llm", 8))
    stage.close()


def test_replayed_decision_is_announced_again_not_decided_again(tmp_path: Path) -> None:
    cfg = config(tmp_path, consecutive_windows=2)
    killed_after(cfg, windows(1, [0.9, 0.9, 0.9]))
    stage = restarted(cfg)
    # The whole batch again: the decision it completed is announced as recorded, once.
    (again,) = events(stage.process(messages(windows(1, [0.9, 0.9, 0.9]))))
    (recorded,) = stage.ledger.list_decisions()
    assert (again.event, again.episode_id, again.window_index) == (
        "fired", recorded["episode_id"], 2
    )
    # Window 3 counted before the kill: with 4 it completes the next run (cooldown 0).
    (next_,) = events(stage.process(messages(windows(4, [0.9]))))
    assert next_.episode_id == episode_id("retrain", SEGMENT, "llm", 3)
    stage.close()


def test_renumbered_windows_start_afresh(tmp_path: Path) -> None:
    """A lower index whose window closed later is the drift engine counting from 1 again
    (its state was lost), not a replay: it counts."""
    cfg = config(tmp_path, consecutive_windows=2)
    killed_after(cfg, windows(10, [0.9]))
    stage = restarted(cfg)
    later = [r.model_copy(update={"closed_at_unix_nano": 10**12 + r.window_index})
             for r in windows(1, [0.9, 0.9])]
    (fired,) = events(stage.process(messages(later)))
    assert (fired.window_index, fired.episode_id) == (
        2, episode_id("retrain", SEGMENT, "llm", 1, generation=1))
    stage.close()


def test_a_new_numbering_never_reuses_an_old_episode_id(tmp_path: Path) -> None:
    """The embedded broker keeps the engine's state in memory, the ledger is a file: after a
    restart the same window indices drift again, and that is a new episode, decided anew."""
    cfg = config(tmp_path, consecutive_windows=2)
    killed_after(cfg, windows(1, [0.9, 0.9, 0.1]))
    stage = restarted(cfg)
    again = [r.model_copy(update={"closed_at_unix_nano": 10**12 + r.window_index})
             for r in windows(1, [0.9, 0.9])]
    (fired,) = events(stage.process(messages(again)))
    assert (fired.event, fired.window_index) == ("fired", 2)
    assert fired.episode_id != episode_id("retrain", SEGMENT, "llm", 1)
    assert len(stage.ledger.list_decisions(10)) == 2
    stage.close()


# The child: the real StageRunner on the broker, until it is killed.
RUNNER_CHILD = textwrap.dedent("""
    import json, sys, threading
    from observer.core.bus import StageRunner
    from observer.core.config import KafkaConfig
    from observer.triggers.config import TriggerConfig
    from observer.core.topics import Topics
    from observer.triggers.stage import TriggerStage

    cfg = TriggerConfig.model_validate(json.loads(sys.argv[1]))
    kafka = KafkaConfig.model_validate(json.loads(sys.argv[2]))
    topics = Topics.from_config(kafka)
    StageRunner(kafka, TriggerStage(cfg, topics), cfg.group_id, [topics.drift]).run(threading.Event())
""")


def produce(kafka: KafkaConfig, topics: Topics, results: list[DriftResult]) -> None:
    producer = make_producer(kafka)
    produce_all(producer, [Output(topics.drift, SEGMENT, encode(r)) for r in results], 10)
    producer.close()


def wait_until(check: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def last_window(ledger_path: str) -> int | None:
    with Ledger(ledger_path) as ledger:
        states = ledger.load_states("retrain")
    return states[0].last_window if states else None


def test_open_episode_survives_sigkill_past_its_cooldown(
    tmp_path: Path, kafka_config: KafkaConfig, topics: Topics
) -> None:
    cfg = config(tmp_path, clear_windows=2, cooldown_s=1.0)
    cfg["group_id"] = "g-restart"
    produce(kafka_config, topics, windows(1, [0.9, 0.9, 0.9, 0.9]))
    consumer = make_consumer(kafka_config, None, [topics.triggers])
    seen: list[TriggerEvent] = []

    def poll() -> list[TriggerEvent]:
        for batch in consumer.poll(200).values():
            seen.extend(decode(r.value) for r in batch)  # type: ignore[misc]
        return seen

    child = subprocess.Popen(
        [sys.executable, "-c", RUNNER_CHILD, json.dumps(cfg), kafka_config.model_dump_json()],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        wait_until(lambda: any(e.event == "fired" for e in poll()))
    finally:
        child.kill()  # SIGKILL, wherever it is: before or after its commit
        child.communicate(timeout=30)
    first = episode_id("retrain", SEGMENT, "llm", 1)
    time.sleep(1.2)  # the cooldown is over; the episode is not
    produce(kafka_config, topics, windows(5, [0.9, 0.9, 0.9, 0.9]))

    stage = TriggerStage(TriggerConfig.model_validate(cfg), topics)
    runner = StageRunner(kafka_config, stage, "g-restart", [topics.drift])
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,))
    thread.start()
    try:
        wait_until(lambda: last_window(cfg["ledger_path"]) == 8)
        # Still drifting past the cooldown: still the one episode, no second decision.
        assert [d["episode_id"] for d in stage.ledger.list_decisions()] == [first]
        assert {e.episode_id for e in decisions_of(poll())} == {first}
        # Two clear windows end the episode; the drift after them is a new one.
        produce(kafka_config, topics, windows(9, [0.1, 0.1, 0.9, 0.9]))
        wait_until(lambda: len(stage.ledger.list_decisions()) == 2)
    finally:
        stop.set()
        thread.join(15)
        consumer.close()
    assert runner.error is None
    newest, oldest = stage.ledger.list_decisions()
    assert (oldest["episode_id"], newest["episode_id"]) == (
        first, episode_id("retrain", SEGMENT, "llm", 11)
    )
    assert newest["kind"] == "fired"
    stage.close()
