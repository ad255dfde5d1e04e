"""Webhook delivery: the payload, one signed attempt, and what its outcome means.

:class:`WebhookSender` makes exactly one attempt per call and says what the ledger should
record next; retries are the caller's loop over the ledger's due rows, so they survive
restarts. The ``webhook-id`` is the ledger's delivery id, the same on every retry: receivers
use it as their idempotency key. The signature timestamp is taken at each attempt (receivers
reject timestamps older than five minutes), while the body, built once when the decision
is recorded, is byte-for-byte the same on every attempt.

How an answer is classified (:data:`STATUS_TABLE`, first matching row wins):

==========================  ===========  ================================================
answer                      verdict      why
==========================  ===========  ================================================
2xx                         delivered    the receiver took the event
410 Gone                    disabled     Standard Webhooks: the endpoint asks to be disabled
429 Too Many Requests       retry        slow down; ``Retry-After`` is honoured
5xx                         retry        a server error is presumed transient
other 4xx                   retry        like Standard Webhooks senders (Svix) do: a 401,
                                         403 or 404 is often a receiver mid-deploy or a
                                         secret being rotated, and ``max_attempts`` bounds
                                         the cost when it is not
1xx, 3xx                    retry        not a success; redirects are not followed, since
                                         the event was signed for this target
timeout, connection error   retry        the receiver may be restarting
==========================  ===========  ================================================

A retry waits an exponential backoff with full jitter (a uniform draw in
``[0, min(backoff_max_s, backoff_initial_s * 2**(attempts-1))]``), or longer when the answer
carried ``Retry-After``; a retry verdict on attempt ``max_attempts`` is final:
``dead_letter``.

>>> classify(204), classify(410), classify(503), classify(404)
('delivered', 'disabled', 'retry', 'retry')
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import httpx

from observer.core.config import WebhookConfig
from observer.core.records import DriftResult
from observer.triggers.ledger import DEAD_LETTER, DELIVERED, DISABLED, FAILED
from observer.triggers.policy import Decision
from observer.triggers.redact import public_target
from observer.triggers.signing import signed_headers

log = logging.getLogger(__name__)

EVENT_TYPE = "observer.drift.episode"
USER_AGENT = "observer-triggers/0.1"
# A Retry-After beyond this is treated as this: a receiver's typo must not park an event
# for months.
RETRY_AFTER_CAP_S = 24 * 3600.0

Verdict = Literal["delivered", "disabled", "retry"]

# (lowest code, highest code, verdict): first matching row wins; see the module docstring.
STATUS_TABLE: tuple[tuple[int, int, Verdict], ...] = (
    (200, 299, "delivered"),
    (410, 410, "disabled"),
    (429, 429, "retry"),
    (500, 599, "retry"),
    (400, 499, "retry"),
    (100, 399, "retry"),
)


def classify(status_code: int) -> Verdict:
    """The verdict for an HTTP status code (see :data:`STATUS_TABLE`)."""
    for low, high, verdict in STATUS_TABLE:
        if low <= status_code <= high:
            return verdict
    return "retry"


def backoff_delay(
    attempts: int, initial_s: float, max_s: float, rng: Callable[[], float] = random.random
) -> float:
    """Seconds before the next try after ``attempts`` failed ones: exponential, full jitter.

    >>> backoff_delay(1, 1.0, 300.0, rng=lambda: 1.0), backoff_delay(4, 1.0, 300.0, rng=lambda: 1.0)
    (1.0, 8.0)
    >>> backoff_delay(30, 1.0, 300.0, rng=lambda: 0.5)
    150.0
    """
    exponent = min(max(attempts - 1, 0), 62)  # beyond this the cap has long won
    return rng() * min(max_s, initial_s * (2.0**exponent))


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta seconds or an HTTP date).

    >>> parse_retry_after("7", now=0.0)
    7.0
    >>> parse_retry_after("Thu, 01 Jan 1970 00:01:00 GMT", now=30.0)
    30.0
    >>> parse_retry_after("soon", now=0.0) is None
    True
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        seconds = float(text)
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_S)


def iso8601(unix_s: float) -> str:
    """UTC ISO 8601 with milliseconds and a ``Z``.

    >>> iso8601(0)
    '1970-01-01T00:00:00.000Z'
    """
    stamp = datetime.fromtimestamp(unix_s, tz=UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def build_payload(
    decision: Decision, result: DriftResult, export: dict[str, Any] | None = None
) -> bytes:
    """The Standard Webhooks body for a decision: ``{type, timestamp, data}``, compact JSON.

    ``result`` is the window that completed the run. ``export`` (see
    :func:`observer.triggers.export.export_spec`) says where the drifted window and its reference are
    written as Parquet before the webhook is sent: ``data.export.current`` and
    ``data.export.reference``; ``data.export`` is null when nothing is exported.

    >>> from observer.core.records import DriftResult
    >>> from observer.triggers.policy import Decision
    >>> r = DriftResult(segment={"service": "shop"}, segment_key="shop", record_type="llm",
    ...     window_index=2, n_reference=500, n_current=400, features=[], drift_share=0.75,
    ...     dataset_drift=True, closed_at_unix_nano=0)
    >>> d = Decision(policy="p", segment_key="shop", record_type="llm", episode_id="e1",
    ...     kind="fired", reason="r", window_index=2, first_window_index=1, decided_at=0.0)
    >>> body = json.loads(build_payload(d, r))
    >>> body["type"], body["data"]["episode_id"], body["data"]["drift"]["drift_share"]
    ('observer.drift.episode', 'e1', 0.75)
    """
    data: dict[str, Any] = {
        "episode_id": decision.episode_id,
        "policy": decision.policy,
        "kind": decision.kind,
        "reason": decision.reason,
        "segment_key": decision.segment_key,
        "segment": dict(result.segment),
        "record_type": decision.record_type,
        "window_index": decision.window_index,
        "first_window_index": decision.first_window_index,
        "decided_at": iso8601(decision.decided_at),
        "drift": {
            "window_index": result.window_index,
            "n_reference": result.n_reference,
            "n_current": result.n_current,
            "drift_share": result.drift_share,
            "dataset_drift": result.dataset_drift,
            "closed_at": iso8601(result.closed_at_unix_nano / 1e9),
            "drifted_features": [f.name for f in result.features if f.drifted],
            "features": [
                {
                    "name": f.name,
                    "kind": f.kind,
                    "method": f.method,
                    "statistic": f.statistic,
                    "threshold": f.threshold,
                    "drifted": f.drifted,
                }
                for f in result.features
            ],
        },
        "export": None if export is None else {"format": "parquet", **export},
    }
    body = {"type": EVENT_TYPE, "timestamp": iso8601(decision.decided_at), "data": data}
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


@dataclass(frozen=True)
class AttemptResult:
    """What one attempt means for the ledger row."""

    status: str
    """Ledger status after it: delivered, failed (retry scheduled), dead_letter, disabled."""
    attempts: int
    next_attempt_at: float | None
    status_code: int | None
    error: str | None
    detail: str
    """One human line: the answer and what happens next (for events and logs)."""


class WebhookSender:
    """Signs and POSTs one delivery attempt.

    ``clock`` gives the signature timestamp (it must be real time: receivers compare it with
    theirs); the ``now`` passed to :meth:`attempt` schedules the next try. ``rng`` draws the
    jitter.
    """

    def __init__(
        self,
        *,
        client: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        # Redirects are not followed: the signature and the ledger name this target.
        self._client = client or httpx.Client(
            follow_redirects=False, headers={"user-agent": USER_AGENT}
        )
        self._owns_client = client is None
        self.clock = clock
        self.rng = rng

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def attempt(
        self,
        webhook: WebhookConfig,
        delivery_id: str,
        payload: bytes,
        attempts_before: int,
        now: float,
    ) -> AttemptResult:
        """POST ``payload`` once; never raises for network or HTTP failures."""
        attempts = attempts_before + 1
        target = public_target(webhook.url)
        headers = {
            "content-type": "application/json",
            # The only use of the secret: it is never logged or stored beside the payload.
            **signed_headers(
                webhook.secret.get_secret_value(), delivery_id, int(self.clock()), payload
            ),
        }
        status_code: int | None = None
        retry_after: float | None = None
        error: str | None
        try:
            # Streaming, and never reading the body: a receiver's answer is its status line.
            with self._client.stream(
                "POST",
                webhook.url,
                content=payload,
                headers=headers,
                timeout=httpx.Timeout(webhook.timeout_s),
            ) as response:
                status_code = response.status_code
                # An HTTP date is absolute: compare it with real time, not the scheduling clock.
                retry_after = parse_retry_after(response.headers.get("retry-after"), self.clock())
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            error = _describe(exc, webhook.url)
            verdict: Verdict = "retry"
        else:
            verdict = classify(status_code)
            error = None if verdict == "delivered" else f"HTTP {status_code}"

        if verdict == "delivered":
            result = AttemptResult(
                DELIVERED, attempts, None, status_code, None, f"HTTP {status_code}"
            )
        elif verdict == "disabled":
            result = AttemptResult(
                DISABLED, attempts, None, status_code, error, f"HTTP {status_code}: target disabled"
            )
        else:
            result = self.failure(
                webhook, attempts_before, now, error or "", status_code, retry_after
            )
        log.info("webhook %s to %s: %s", delivery_id, target, result.detail)
        return result

    def failure(
        self,
        webhook: WebhookConfig,
        attempts_before: int,
        now: float,
        error: str,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> AttemptResult:
        """A failed attempt: retried with backoff, or dead-lettered after ``max_attempts``.

        The stage uses it too when an attempt fails before the POST (the export).
        """
        attempts = attempts_before + 1
        if attempts >= webhook.max_attempts:
            return AttemptResult(
                DEAD_LETTER,
                attempts,
                None,
                status_code,
                error,
                f"{error}; gave up after {attempts} attempts",
            )
        delay = backoff_delay(attempts, webhook.backoff_initial_s, webhook.backoff_max_s, self.rng)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return AttemptResult(
            FAILED,
            attempts,
            now + delay,
            status_code,
            error,
            f"{error}; attempt {attempts + 1} in {delay:.3g}s",
        )


def _describe(exc: BaseException, url: str) -> str:
    """The error without the full URL, whose query string may carry a token."""
    message = str(exc).replace(url, public_target(url)) or "no detail"
    return f"{type(exc).__name__}: {message}"[:300]
