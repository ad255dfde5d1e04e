"""One delivery attempt against a real HTTP receiver that verifies with ``standardwebhooks``."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI, Request, Response
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from observer.triggers.config import WebhookConfig
from observer.core.http import ServerThread
from observer.core.records import DriftResult, FeatureDrift
from observer.triggers.policy import Decision
from observer.triggers.signing import generate_secret
from observer.triggers.retry import backoff_delay
from observer.triggers.webhook import WebhookSender, build_payload, classify

SECRET = generate_secret()


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    payload: Any  # the parsed body when the signature verified, else None


class Receiver:
    """A Standard Webhooks receiver: verifies with the reference package, answers from a script."""

    def __init__(self, secret: str) -> None:
        self.verifier = Webhook(secret)
        self.script: list[tuple[int, dict[str, str]]] = []
        self.received: list[Received] = []
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            body = await request.body()
            headers = dict(request.headers)
            try:
                payload = self.verifier.verify(body, headers)
            except WebhookVerificationError:
                payload = None
            self.received.append(Received(headers, body, payload))
            status, extra = self.script.pop(0) if self.script else (204, {})
            return Response(status_code=status, headers=extra)

        @app.post("/slow")
        async def slow() -> Response:
            await asyncio.sleep(1.0)
            return Response(status_code=204)

        self.app = app


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[ServerThread, Receiver]]:
    receiver = Receiver(SECRET)
    with ServerThread(receiver.app) as srv:
        yield srv, receiver


@pytest.fixture
def receiver(server: tuple[ServerThread, Receiver]) -> Receiver:
    receiver = server[1]
    receiver.script.clear()
    receiver.received.clear()
    return receiver


@pytest.fixture
def base_url(server: tuple[ServerThread, Receiver]) -> str:
    return server[0].url


def hook(url: str, **kw: Any) -> WebhookConfig:
    opts: dict[str, Any] = {
        "url": url,
        "secret": SECRET,
        "timeout_s": 2.0,
        "max_attempts": 3,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
        **kw,
    }
    return WebhookConfig(**opts)


def payload() -> bytes:
    result = DriftResult(
        segment={"service": "shop", "model": "gpt-4o"},
        segment_key="shop|gpt-4o",
        record_type="llm",
        window_index=4,
        n_reference=500,
        n_current=480,
        features=[
            FeatureDrift(
                name="input_tokens",
                kind="numeric",
                method="wasserstein",
                statistic=0.31,
                threshold=0.1,
                drifted=True,
            ),
            FeatureDrift(
                name="finish_reason",
                kind="categorical",
                method="jensenshannon",
                statistic=0.02,
                threshold=0.1,
                drifted=False,
            ),
        ],
        drift_share=0.5,
        dataset_drift=True,
        closed_at_unix_nano=1_700_000_000_000_000_000,
    )
    decision = Decision(
        policy="p",
        segment_key="shop|gpt-4o",
        record_type="llm",
        episode_id="e" * 32,
        kind="fired",
        reason="drift_share 0.5 >= 0.5 for 2 consecutive windows (windows 3-4, n=480)",
        window_index=4,
        first_window_index=3,
        decided_at=1_700_000_001.5,
    )
    return build_payload(decision, result)


def test_delivered_with_a_valid_signature(receiver: Receiver, base_url: str) -> None:
    sender = WebhookSender()
    body = payload()
    result = sender.attempt(hook(f"{base_url}/hook?token=t0ken"), "msg_1", body, 0, now=time.time())
    sender.close()
    assert (result.status, result.attempts, result.status_code, result.error) == (
        "delivered",
        1,
        204,
        None,
    )
    assert result.next_attempt_at is None
    (got,) = receiver.received
    assert got.body == body
    assert got.headers["webhook-id"] == "msg_1"
    assert got.headers["content-type"] == "application/json"
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 5
    assert got.payload is not None, "standardwebhooks rejected our signature"
    assert got.payload["type"] == "observer.drift.episode"
    assert got.payload["timestamp"] == "2023-11-14T22:13:21.500Z"
    data = got.payload["data"]
    assert data["episode_id"] == "e" * 32 and data["kind"] == "fired"
    assert data["segment"] == {"service": "shop", "model": "gpt-4o"}
    assert data["drift"]["drifted_features"] == ["input_tokens"]
    assert data["drift"]["n_current"] == 480 and data["drift"]["dataset_drift"] is True
    assert data["drift"]["features"][0] == {
        "name": "input_tokens",
        "kind": "numeric",
        "method": "wasserstein",
        "statistic": 0.31,
        "threshold": 0.1,
        "drifted": True,
    }


def test_retry_after_500_keeps_the_webhook_id(receiver: Receiver, base_url: str) -> None:
    receiver.script.append((500, {}))
    sender = WebhookSender(rng=lambda: 1.0)
    cfg = hook(f"{base_url}/hook", backoff_initial_s=0.5, backoff_max_s=10)
    first = sender.attempt(cfg, "msg_retry", payload(), 0, now=1000.0)
    assert (first.status, first.attempts, first.status_code, first.error) == (
        "failed",
        1,
        500,
        "HTTP 500",
    )
    assert first.next_attempt_at == 1000.5  # 0.5 * 2**0, full jitter drew its maximum
    second = sender.attempt(cfg, "msg_retry", payload(), first.attempts, now=1000.5)
    assert (second.status, second.attempts) == ("delivered", 2)
    a, b = receiver.received
    assert a.headers["webhook-id"] == b.headers["webhook-id"] == "msg_retry"
    assert a.body == b.body
    assert a.payload is not None and b.payload is not None


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_retry_after_is_honoured(receiver: Receiver, base_url: str, form: str) -> None:
    now = time.time()
    retry_after = (
        "30"
        if form == "seconds"
        else time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 30))
    )
    receiver.script.append((429, {"retry-after": retry_after}))
    sender = WebhookSender(rng=lambda: 1.0)
    result = sender.attempt(hook(f"{base_url}/hook", backoff_max_s=1.0), "m", b"{}", 0, now=now)
    assert result.status == "failed" and result.status_code == 429
    assert result.next_attempt_at is not None
    # Retry-After beats the (much shorter) backoff; an HTTP date has one-second resolution.
    assert 28.5 <= result.next_attempt_at - now <= 30.5


def test_410_disables(receiver: Receiver, base_url: str) -> None:
    receiver.script.append((410, {}))
    result = WebhookSender().attempt(
        hook(f"{base_url}/hook", max_attempts=5), "m", b"{}", 0, now=0.0
    )
    assert (result.status, result.status_code, result.next_attempt_at) == ("disabled", 410, None)


def test_dead_letter_after_max_attempts(receiver: Receiver, base_url: str) -> None:
    receiver.script += [(503, {}), (502, {}), (500, {})]
    sender = WebhookSender()
    cfg = hook(f"{base_url}/hook", max_attempts=3)
    attempts, statuses = 0, []
    for _ in range(3):
        result = sender.attempt(cfg, "m", b"{}", attempts, now=0.0)
        attempts = result.attempts
        statuses.append(result.status)
    assert statuses == ["failed", "failed", "dead_letter"]
    assert result.next_attempt_at is None and result.error == "HTTP 500"
    assert "gave up after 3 attempts" in result.detail
    assert len(receiver.received) == 3


def test_other_4xx_is_retried(receiver: Receiver, base_url: str) -> None:
    receiver.script.append((401, {}))
    result = WebhookSender().attempt(hook(f"{base_url}/hook"), "m", b"{}", 0, now=0.0)
    assert result.status == "failed" and result.status_code == 401
    assert [classify(c) for c in (200, 299, 302, 400, 404, 410, 429, 500, 504)] == [
        "delivered",
        "delivered",
        "retry",
        "retry",
        "retry",
        "disabled",
        "retry",
        "retry",
        "retry",
    ]


def test_timeout_is_retried(receiver: Receiver, base_url: str) -> None:
    started = time.monotonic()
    result = WebhookSender().attempt(
        hook(f"{base_url}/slow", timeout_s=0.2), "m", b"{}", 0, now=0.0
    )
    assert time.monotonic() - started < 0.9
    assert result.status == "failed" and result.status_code is None
    assert result.error is not None and result.error.startswith("ReadTimeout")


def test_connection_refused_is_retried_and_redacted(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    url = f"http://127.0.0.1:{port}/hook?token=s3cret-token"
    with caplog.at_level(logging.DEBUG):
        result = WebhookSender().attempt(hook(url, max_attempts=1), "m", b"{}", 0, now=0.0)
    assert result.status == "dead_letter" and result.error is not None
    assert result.error.startswith("ConnectError")
    assert "s3cret-token" not in result.error + result.detail
    assert "s3cret-token" not in caplog.text and SECRET not in caplog.text
    assert SECRET[6:] not in caplog.text


def test_backoff_is_exponential_capped_with_full_jitter() -> None:
    assert [backoff_delay(n, 1.0, 10.0, rng=lambda: 1.0) for n in range(1, 7)] == [
        1,
        2,
        4,
        8,
        10,
        10,
    ]
    assert backoff_delay(3, 1.0, 10.0, rng=lambda: 0.0) == 0.0
    assert backoff_delay(10_000, 1.0, 10.0, rng=lambda: 1.0) == 10.0  # no overflow
    draws = {backoff_delay(4, 1.0, 100.0) for _ in range(50)}
    assert len(draws) > 1 and all(0 <= d <= 8 for d in draws)


def test_payload_is_compact_and_stable() -> None:
    assert payload() == payload()
    body = json.loads(payload())
    assert set(body) == {"type", "timestamp", "data"}
    assert b" " not in payload().replace(
        b"drift_share 0.5 >= 0.5 for 2 consecutive windows (windows 3-4, n=480)", b""
    )
