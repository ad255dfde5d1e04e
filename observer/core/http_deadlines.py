"""Read deadlines for uvicorn's HTTP/1.1 connections: slow clients are cut off, not waited for.

uvicorn bounds only the idle time between requests (``timeout_keep_alive``); a client that
sends its headers or body one byte at a time keeps its connection, and whatever the app holds
for it, forever (slowloris). :func:`deadline_protocol` makes a uvicorn protocol class (the
httptools parser) with two deadlines:

- ``header_timeout_s``: from the connection's opening (or a request's first byte on a
  keep-alive connection) to the end of the request's headers;
- ``body_timeout_s``: from the end of the headers to the end of the body.

When one passes before the request is answered, the server writes ``408 Request Timeout``
with ``Connection: close`` and closes the connection; the app sees the client disconnect
(ASGI ``http.disconnect``) and finds why in its scope: :func:`timed_out` tells the
``"headers"`` or ``"body"`` deadline. Once the body is complete the app's own work (a Kafka
write...) is not limited here.
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

TIMED_OUT = "observer.request_timeout"
"""Key of the ASGI scope's ``extensions`` naming the deadline a request missed."""

_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\n"
    b"content-length: %d\r\n\r\n%s"
)


def timed_out(scope: MutableMapping[str, Any]) -> str | None:
    """Which read deadline (``"headers"`` or ``"body"``) the request of ``scope`` missed.

    >>> timed_out({"type": "http"}), timed_out({"extensions": {TIMED_OUT: "body"}})
    (None, 'body')
    """
    extensions = scope.get("extensions") or {}
    return extensions.get(TIMED_OUT)


class DeadlineProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` with read deadlines; configure through :func:`deadline_protocol`."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0

    _deadline: asyncio.TimerHandle | None = None

    def _arm(self, seconds: float, stage: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired, stage)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout_s, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # A keep-alive connection's next request: its headers are under the deadline from
        # their first byte (before that, uvicorn's keep-alive timeout applies).
        if self._deadline is None:
            self._arm(self.header_timeout_s, "headers")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm(self.body_timeout_s, "body")

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _expired(self, stage: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle if stage == "body" else None
        answered = cycle is not None and cycle.response_started
        if stage == "headers" and self.cycle is not None and not self.cycle.response_complete:
            answered = True  # a pipelined request is still being answered: just close
        if cycle is not None:
            cycle.scope.setdefault("extensions", {})[TIMED_OUT] = stage  # type: ignore[typeddict-unknown-key]
        if not answered:
            text = f"request {stage} not received within {self._limit(stage)} s".encode()
            self.transport.write(_REQUEST_TIMEOUT % (len(text), text))
        self.transport.close()

    def _limit(self, stage: str) -> float:
        return self.header_timeout_s if stage == "headers" else self.body_timeout_s


def deadline_protocol(header_timeout_s: float, body_timeout_s: float) -> type[DeadlineProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with these deadlines.

    >>> cls = deadline_protocol(5, 20)
    >>> cls.header_timeout_s, cls.body_timeout_s, issubclass(cls, HttpToolsProtocol)
    (5, 20, True)
    """
    if header_timeout_s <= 0 or body_timeout_s <= 0:
        raise ValueError("HTTP read deadlines must be positive")
    return type(
        "DeadlineProtocol",
        (DeadlineProtocol,),
        {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s},
    )
