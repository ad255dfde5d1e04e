"""A bounded in-flight budget shared by every receiver: requests and decoded bytes.

A request charges its bytes as its body arrives (:meth:`InflightBudget.reserve`, then
:meth:`Slot.add_bytes`) and takes one of the request slots only once the body is whole
(:meth:`Slot.take_request`): a client that sends slowly holds the bytes it sent, never a slot
that real exports need. Past either bound the receiver refuses at once (HTTP 429 / gRPC
UNAVAILABLE with a retry delay) instead of queueing, so a slow Kafka turns into client-side
backoff rather than unbounded memory here. :meth:`InflightBudget.admit` takes the slot first,
for receivers (gRPC) that get the body whole.

>>> budget = InflightBudget(max_requests=1, max_bytes=100)
>>> first = budget.admit()
>>> first.add_bytes(60)
>>> budget.admit()  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
Saturated: 1 export request(s) already in flight (limit 1)
>>> reading = budget.reserve()  # a body still arriving: bytes only
>>> reading.add_bytes(30)
>>> reading.take_request()  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
Saturated: 1 export request(s) already in flight (limit 1)
>>> first.release(); reading.release()
>>> second = budget.admit()
>>> second.add_bytes(101)  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
Saturated: 101 decoded bytes would be in flight (limit 100)
>>> second.release(); budget.requests, budget.bytes
(0, 0)
"""

from __future__ import annotations

import threading
import time
from types import TracebackType

from prometheus_client import Gauge

INFLIGHT_REQUESTS = Gauge(
    "observer_receiver_inflight_requests", "Export requests being decoded or awaiting Kafka."
)
INFLIGHT_BYTES = Gauge("observer_receiver_inflight_bytes", "Decoded bytes of requests in flight.")


class Saturated(Exception):
    """The budget is spent; the caller answers with a retryable refusal."""


class InflightBudget:
    """Counts requests and bytes in flight; thread-safe (HTTP threads and gRPC workers share it)."""

    def __init__(self, max_requests: int, max_bytes: int) -> None:
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.requests = 0
        self.bytes = 0
        self.last_release = float("-inf")
        """``time.monotonic()`` when a request last left the budget."""
        self._lock = threading.Lock()

    def active(self, quiet_s: float = 0.0) -> bool:
        """Whether requests are in flight, or one left less than ``quiet_s`` seconds ago.

        >>> budget = InflightBudget(max_requests=2, max_bytes=100)
        >>> budget.active(), budget.active(quiet_s=60)
        (False, False)
        >>> budget.admit().release()
        >>> budget.active(), budget.active(quiet_s=60)
        (False, True)
        """
        return self.requests > 0 or time.monotonic() - self.last_release < quiet_s

    def admit(self) -> Slot:
        """Take a request slot, or raise :class:`Saturated`."""
        slot = Slot(self)
        slot.take_request()
        return slot

    def reserve(self) -> Slot:
        """A slot holding nothing yet: charge bytes as a body arrives, then take the request."""
        return Slot(self)


class Slot:
    """One request's share of the budget; release it exactly once (a context manager does)."""

    def __init__(self, budget: InflightBudget) -> None:
        self._budget = budget
        self._bytes = 0
        self._request = False
        self._released = False

    @property
    def bytes(self) -> int:
        """Bytes charged to this request so far."""
        return self._bytes

    def take_request(self) -> None:
        """Count this as one of the requests in flight, or raise :class:`Saturated`."""
        if self._request:
            return
        b = self._budget
        with b._lock:
            if b.requests >= b.max_requests:
                raise Saturated(
                    f"{b.requests} export request(s) already in flight (limit {b.max_requests})"
                )
            b.requests += 1
            self._request = True
        INFLIGHT_REQUESTS.inc()

    def add_bytes(self, n: int) -> None:
        """Account ``n`` more decoded bytes to this request, or raise :class:`Saturated`."""
        b = self._budget
        with b._lock:
            if b.bytes + n > b.max_bytes:
                raise Saturated(
                    f"{b.bytes + n} decoded bytes would be in flight (limit {b.max_bytes})"
                )
            b.bytes += n
            self._bytes += n
        INFLIGHT_BYTES.inc(n)

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        b = self._budget
        with b._lock:
            b.requests -= self._request
            b.bytes -= self._bytes
            b.last_release = time.monotonic()
        if self._request:
            INFLIGHT_REQUESTS.dec()
        INFLIGHT_BYTES.dec(self._bytes)

    def __enter__(self) -> Slot:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
