"""Actions behind one protocol: the registry, the shared retry policy, and a run server that
keeps failing (Kubeflow Pipelines stand-in on a real socket)."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any, get_args

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from observer.core.bus import Message
from observer.core.config import KafkaConfig
from observer.core.http import ServerThread
from observer.core.records import DriftResult, TriggerEvent, decode, encode
from observer.core.topics import Topics
from observer.triggers.action import ACTIONS, Outcome, factory
from observer.triggers.config import KfpConfig, PolicyConfig, TriggerConfig
from observer.triggers.retry import RetryPolicy
from observer.triggers.stage import TriggerStage

ROOT = Path(__file__).resolve().parent.parent
TOPICS = Topics.from_config(KafkaConfig())


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


def messages(*windows: int) -> list[Message]:
    results = [
        DriftResult(
            segment={"service": "shop", "model": "m"}, segment_key="shop|m", record_type="llm",
            window_index=i, n_reference=500, n_current=500, features=[], drift_share=0.9,
            dataset_drift=True, closed_at_unix_nano=i,
        )
        for i in windows
    ]
    return [Message(TOPICS.drift, 0, k, b"k", encode(r), 0) for k, r in enumerate(results)]


def events(outputs: list[Any]) -> list[TriggerEvent]:
    return [decode(o.value) for o in outputs]  # type: ignore[misc]


def test_the_registry_is_the_one_list_of_actions() -> None:
    # What a policy may list under `actions` (webhooks have their own list) is the registry.
    (listed,) = get_args(PolicyConfig.model_fields["actions"].annotation)
    assert set(get_args(listed)) | {"webhook"} == set(ACTIONS)
    for name in ACTIONS:
        assert factory(name).__self__.name == name  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="unknown action 'ftp'; known: argo, armada, kfp, webhook"):
        factory("ftp")


@pytest.mark.parametrize(
    ("outcome", "before", "expected"),
    [
        # (status, attempts, delay until the next attempt or None, error)
        (Outcome("delivered", "HTTP 204", 204), 2, ("delivered", 3, None, None)),
        (Outcome("already_done", "exists (HTTP 409)", 409), 0, ("delivered", 1, None, None)),
        (Outcome("disabled", "HTTP 410", 410), 0, ("disabled", 1, None, "HTTP 410")),
        (Outcome("permanent", "HTTP 400: bad", 400), 0, ("dead_letter", 1, None, "HTTP 400: bad")),
        # Waiting for a free slot does not use up an attempt.
        (Outcome("wait", "busy", None, 60.0), 3, ("failed", 3, 60.0, "busy")),
        # Backoff 1, 2, 4 (jitter drew its maximum), or Retry-After when that is longer.
        (Outcome("retry", "HTTP 503", 503), 0, ("failed", 1, 1.0, "HTTP 503")),
        (Outcome("retry", "HTTP 503", 503), 2, ("failed", 3, 4.0, "HTTP 503")),
        (Outcome("retry", "HTTP 429", 429, 30.0), 0, ("failed", 1, 30.0, "HTTP 429")),
        # The last attempt is final, whatever the server asks.
        (Outcome("retry", "HTTP 429", 429, 30.0), 4, ("dead_letter", 5, None, "HTTP 429")),
    ],
)
def test_the_shared_retry_policy(outcome: Outcome, before: int, expected: tuple[Any, ...]) -> None:
    policy = RetryPolicy(max_attempts=5, backoff_initial_s=1.0, backoff_max_s=10.0)
    result = policy.settle(outcome, before, now=1000.0, rng=lambda: 1.0)
    delay = None if result.next_attempt_at is None else result.next_attempt_at - 1000.0
    assert (result.status, result.attempts, delay, result.error) == expected
    assert result.status_code == outcome.status_code


def test_kfp_honours_retry_after_dead_letters_and_drops_unconfigured_rows(tmp_path: Path) -> None:
    answers: list[tuple[int, dict[str, str]]] = []
    app = FastAPI()

    @app.get("/apis/v2beta1/runs")
    async def listing(request: Request) -> JSONResponse:
        status, headers = answers.pop(0) if answers else (200, {})
        body = {"runs": [], "message": "scripted"}
        return JSONResponse(body, status_code=status, headers=headers)

    @app.post("/apis/v2beta1/runs")
    async def create(request: Request) -> JSONResponse:
        return JSONResponse({"code": 3, "message": "invalid run"}, status_code=400)

    clock = Clock()
    with ServerThread(app) as srv:
        kfp = KfpConfig(host=srv.url, pipeline_id="p", pipeline_version_id="v", max_attempts=2)
        policy = PolicyConfig(name="k", min_samples=10, cooldown_s=0, actions=["kfp"])
        cfg = TriggerConfig(ledger_path=tmp_path / "l.sqlite", policies=[policy], kfp=kfp)
        stage = TriggerStage(cfg, TOPICS, clock=clock)

        # Transient answers: Retry-After beats KFP's 2 s first backoff; the second is the last.
        answers += [(503, {"retry-after": "120"}), (500, {})]
        stage.process(messages(1, 2))
        (first,) = events(stage.tick())
        assert (first.status, first.attempts, first.reason) == (
            "failed", 1, "list: HTTP 503; attempt 2 in 120s"
        )
        assert stage.tick() == []  # not due yet
        clock.t += 120
        (last,) = events(stage.tick())
        assert (last.status, last.attempts) == ("dead_letter", 2)
        assert last.reason == "list: HTTP 500; gave up after 2 attempts"

        # An invalid request is final at once.
        stage.process(messages(3, 4))
        (refused,) = events(stage.tick())
        assert (refused.status, refused.attempts) == ("dead_letter", 1)
        assert refused.reason.startswith("create: HTTP 400: ") and "not retried" in refused.reason
        (newest, *_) = stage.ledger.list_decisions()
        assert newest["deliveries"][0]["last_status_code"] == 400

        stage.process(messages(5, 6))
        stage.close()

    # The kfp action left the configuration: its owed run is dead-lettered, never attempted.
    gone = TriggerStage(TriggerConfig(ledger_path=tmp_path / "l.sqlite", policies=[]), TOPICS,
                        clock=clock)
    (out,) = events(gone.tick())
    assert (out.action, out.status, out.attempts) == ("kfp", "dead_letter", 0)
    assert "in the configuration any more" in out.reason
    gone.close()


def test_nothing_outside_tests_imports_test_code() -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "*.py"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.split(b"\0")
    pattern = re.compile(r"^\s*(from\s+tests[.\s]|import\s+tests\b)", re.MULTILINE)
    offenders = [
        name.decode() for name in listed
        if name and not name.startswith(b"tests/") and (ROOT / name.decode()).is_file()
        and pattern.search((ROOT / name.decode()).read_text(errors="replace"))
    ]
    assert offenders == [], f"code outside tests/ imports test code: {offenders}"
