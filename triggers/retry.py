"""The one retry policy of every action: backoff, ``Retry-After``, a bound, then the dead letter.

:meth:`RetryPolicy.settle` turns the :class:`~observer.triggers.action.Outcome` of one attempt
into what the ledger records for the row (:class:`AttemptResult`):

=============  ============  ========  ===================================================
outcome        row status    counted   next attempt
=============  ============  ========  ===================================================
delivered      delivered     yes       none
already_done   delivered     yes       none
disabled       disabled      yes       none (the stage disables the target)
permanent      dead_letter   yes       none: retrying cannot help
wait           failed        no        after ``retry_after_s`` (waiting is not failing)
retry          failed        yes       after the backoff, or ``Retry-After`` when longer;
                                       on attempt ``max_attempts``: ``dead_letter``
=============  ============  ========  ===================================================

The backoff is exponential with full jitter: a uniform draw in
``[0, min(backoff_max_s, backoff_initial_s * 2**(attempts-1))]``. A dead-lettered row stays in
the ledger with its last error (``observer triggers list``) and is announced as a ``delivery``
event with status ``dead_letter`` on ``observer.triggers``.

>>> from observer.triggers.action import Outcome
>>> policy = RetryPolicy(max_attempts=3, backoff_initial_s=1.0, backoff_max_s=60.0)
>>> first = policy.settle(Outcome("retry", "HTTP 503", 503), 0, now=100.0, rng=lambda: 1.0)
>>> first.status, first.attempts, first.next_attempt_at, first.detail
('failed', 1, 101.0, 'HTTP 503; attempt 2 in 1s')
>>> last = policy.settle(Outcome("retry", "HTTP 503", 503), 2, now=200.0)
>>> last.status, last.next_attempt_at, last.detail
('dead_letter', None, 'HTTP 503; gave up after 3 attempts')
>>> policy.settle(Outcome("already_done", "exists (HTTP 409)", 409), 0, now=0.0).status
'delivered'
"""

from __future__ import annotations

import email.utils
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from typing import TYPE_CHECKING, Any

from observer.triggers.ledger import DEAD_LETTER, DELIVERED, DISABLED, FAILED

if TYPE_CHECKING:
    from observer.triggers.action import Outcome

# A Retry-After beyond this is treated as this: a receiver's typo must not park an event
# for months.
RETRY_AFTER_CAP_S = 24 * 3600.0

# Outcomes that end the row at once: kind -> (row status, what the detail adds).
_FINAL: dict[str, tuple[str, str]] = {
    "delivered": (DELIVERED, ""),
    "already_done": (DELIVERED, ""),
    "disabled": (DISABLED, ": target disabled"),
    "permanent": (DEAD_LETTER, "; not retried"),
}


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

    ``now`` must be real time: an HTTP date is absolute.

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


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how soon a row is tried again (see the module docstring)."""

    max_attempts: int
    backoff_initial_s: float
    backoff_max_s: float

    @classmethod
    def of(cls, cfg: Any) -> RetryPolicy:
        """The policy of a configuration section with the three knobs (webhook, argo, kfp)."""
        return cls(cfg.max_attempts, cfg.backoff_initial_s, cfg.backoff_max_s)

    def settle(
        self,
        outcome: Outcome,
        attempts_before: int,
        now: float,
        rng: Callable[[], float] = random.random,
    ) -> AttemptResult:
        """The row's next state after an attempt with ``outcome``; ``now`` schedules retries."""
        code, message = outcome.status_code, outcome.message
        attempts = attempts_before + 1
        if outcome.kind in _FINAL:
            status, suffix = _FINAL[outcome.kind]
            error = None if status == DELIVERED else message
            return AttemptResult(status, attempts, None, code, error, message + suffix)
        if outcome.kind == "wait":
            delay = outcome.retry_after_s or self.backoff_max_s
            detail = f"{message}; checking again in {delay:g}s"
            return AttemptResult(FAILED, attempts_before, now + delay, code, message, detail)
        if attempts >= self.max_attempts:
            detail = f"{message}; gave up after {attempts} attempts"
            return AttemptResult(DEAD_LETTER, attempts, None, code, message, detail)
        delay = backoff_delay(attempts, self.backoff_initial_s, self.backoff_max_s, rng)
        if outcome.retry_after_s is not None:
            delay = max(delay, outcome.retry_after_s)
        detail = f"{message}; attempt {attempts + 1} in {delay:.3g}s"
        return AttemptResult(FAILED, attempts, now + delay, code, message, detail)
