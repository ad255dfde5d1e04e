"""Webhook delivery: the payload, one signed attempt, and what its answer means.

:class:`WebhookAction` is the ``webhook`` :class:`~observer.triggers.action.Action`: one outbox
row per webhook of a fired policy, one signed POST per attempt (:class:`WebhookSender`); the
stage's loop over the ledger's due rows retries, so retries survive restarts, with the shared
:class:`~observer.triggers.retry.RetryPolicy` of each webhook's ``max_attempts`` and backoff.
The ``webhook-id`` is the ledger's delivery id, the same on every retry: receivers use it as
their idempotency key. The signature timestamp is taken at each attempt (receivers reject
timestamps older than five minutes), while the body, built once when the decision is
recorded, is byte-for-byte the same on every attempt.

How an answer is classified (:data:`STATUS_TABLE`, first matching row wins):

==========================  ===========  ================================================
answer                      outcome      why
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

>>> classify(204), classify(410), classify(503), classify(404)
('delivered', 'disabled', 'retry', 'retry')
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Self

import httpx

from observer.core.records import DriftResult
from observer.triggers.action import (
    RETRY,
    Exporter,
    Outcome,
    OutcomeKind,
    StatusTable,
    export_first,
    outcome_of,
    unconfigured,
)
from observer.triggers.config import PolicyConfig, TriggerConfig, WebhookConfig
from observer.triggers.ledger import Delivery, NewDelivery
from observer.triggers.policy import Decision
from observer.triggers.redact import public_target
from observer.triggers.retry import AttemptResult, RetryPolicy, parse_retry_after
from observer.triggers.signing import check_secret, signed_headers

EVENT_TYPE = "observer.drift.episode"
USER_AGENT = "observer-triggers/0.1"

# (lowest code, highest code, outcome): first matching row wins; see the module docstring.
STATUS_TABLE: StatusTable = (
    (200, 299, "delivered"),
    (410, 410, "disabled"),
    (429, 429, "retry"),
    (500, 599, "retry"),
    (400, 499, "retry"),
    (100, 399, "retry"),
)


def classify(status_code: int) -> OutcomeKind:
    """The outcome of an HTTP status code (see :data:`STATUS_TABLE`)."""
    return outcome_of(STATUS_TABLE, status_code)


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
                    # A drifted embedding feature: the records and clusters behind it.
                    **({"evidence": f.evidence.model_dump(mode="json")}
                       if f.evidence is not None else {}),
                }
                for f in result.features
            ],
        },
        "export": None if export is None else {"format": "parquet", **export},
        # A combined policy's conditions with their figures ([] for a single signal).
        "conditions": [v.as_dict() for v in decision.conditions],
    }
    body = {"type": EVENT_TYPE, "timestamp": iso8601(decision.decided_at), "data": data}
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


class WebhookSender:
    """Signs and POSTs one delivery attempt.

    ``clock`` gives the signature timestamp and reads ``Retry-After`` dates (it must be real
    time: receivers compare it with theirs); ``rng`` draws the retry jitter of
    :meth:`attempt`.
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

    def send(self, webhook: WebhookConfig, delivery_id: str, payload: bytes) -> Outcome:
        """POST ``payload`` once and classify the answer; never raises for network or HTTP
        failures."""
        headers = {
            "content-type": "application/json",
            # The only use of the secret: it is never logged or stored beside the payload.
            **signed_headers(
                webhook.secret.get_secret_value(), delivery_id, int(self.clock()), payload
            ),
        }
        try:
            # Streaming, and never reading the body: a receiver's answer is its status line.
            with self._client.stream(
                "POST",
                webhook.url,
                content=payload,
                headers=headers,
                timeout=httpx.Timeout(webhook.timeout_s),
            ) as response:
                code = response.status_code
                retry_after = parse_retry_after(response.headers.get("retry-after"), self.clock())
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            return Outcome(RETRY, _describe(exc, webhook.url))
        kind = classify(code)
        return Outcome(kind, f"HTTP {code}", code, retry_after if kind == RETRY else None)

    def attempt(
        self,
        webhook: WebhookConfig,
        delivery_id: str,
        payload: bytes,
        attempts_before: int,
        now: float,
    ) -> AttemptResult:
        """:meth:`send`, settled by the webhook's :class:`~observer.triggers.retry.RetryPolicy`
        (``now`` schedules the next try): what the ledger records for the row."""
        outcome = self.send(webhook, delivery_id, payload)
        return RetryPolicy.of(webhook).settle(outcome, attempts_before, now, self.rng)


class WebhookAction:
    """The ``webhook`` action: the policies' Standard Webhooks (see the module docstring)."""

    name = "webhook"

    def __init__(
        self,
        webhooks: dict[tuple[str, str], WebhookConfig],
        *,
        sender: WebhookSender | None = None,
        exporter: Exporter | None = None,
    ) -> None:
        for (policy_name, url), webhook in webhooks.items():
            try:
                # Now rather than at the first delivery, where it would fail on every tick.
                check_secret(webhook.secret.get_secret_value())
            except ValueError as e:
                where = f"policy {policy_name}: webhook {public_target(url)}"
                raise ValueError(f"{where}: {e}") from None
        self.webhooks = webhooks
        self.sender = sender or WebhookSender()
        self.exporter = exporter

    @classmethod
    def from_config(cls, cfg: TriggerConfig, exporter: Exporter | None = None) -> Self:
        """Every webhook of every policy, by ``(policy, url)``: the key of its outbox rows."""
        hooks = {(p.name, w.url): w for p in cfg.policies for w in p.webhooks}
        return cls(hooks, exporter=exporter)

    def close(self) -> None:
        self.sender.close()

    def plan(
        self,
        policy: PolicyConfig,
        decision: Decision,
        result: DriftResult,
        export: dict[str, Any] | None,
    ) -> list[NewDelivery]:
        """One row per webhook of the policy, all with the same body."""
        payload = build_payload(decision, result, export)
        return [NewDelivery(w.url, payload, self.name) for w in policy.webhooks]

    def cannot_attempt(self, delivery: Delivery) -> str | None:
        # Without its configuration (its secret) the delivery can never be signed.
        if (delivery.policy, delivery.target) in self.webhooks:
            return None
        return unconfigured(self.name, delivery.target)

    def retry_policy(self, delivery: Delivery) -> RetryPolicy:
        return RetryPolicy.of(self.webhooks[(delivery.policy, delivery.target)])

    def attempt(self, delivery: Delivery) -> Outcome:
        """Export the windows the payload points at (when it does), then POST it."""
        export = json.loads(delivery.payload)["data"].get("export")
        failed = export_first(self.exporter, export)
        if failed is not None:
            return failed
        webhook = self.webhooks[(delivery.policy, delivery.target)]
        return self.sender.send(webhook, delivery.delivery_id, delivery.payload)


def _describe(exc: BaseException, url: str) -> str:
    """The error without the full URL, whose query string may carry a token."""
    message = str(exc).replace(url, public_target(url)) or "no detail"
    return f"{type(exc).__name__}: {message}"[:300]
