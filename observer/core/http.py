"""Serve an ASGI app with uvicorn on a background thread (receivers, admin API, tests)."""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

import uvicorn

from observer.core.http_deadlines import deadline_protocol
from observer.core.tls import CertificateFiles, server_context


class ServerThread:
    """Run ``app`` on ``host:port`` until :meth:`stop`; a context manager.

    ``port=0`` picks a free port; :attr:`port` then tells which. A request's headers must
    arrive within ``header_timeout_s`` and its body within ``body_timeout_s`` after them, else
    the server answers 408 and closes the connection (:mod:`observer.core.http_deadlines`).
    With ``tls`` it serves HTTPS with the newest of those certificate files
    (:mod:`observer.core.tls`), and :attr:`url` says https.
    """

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        name: str = "http",
        *,
        header_timeout_s: float = 10.0,
        body_timeout_s: float = 30.0,
        tls: CertificateFiles | None = None,
    ) -> None:
        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", lifespan="on", access_log=False,
            http=deadline_protocol(header_timeout_s, body_timeout_s),
        )
        if tls is not None:
            # uvicorn would build its own context from file names, loaded once; ours follows
            # the files as they rotate. load() is what Server.run would call first anyway.
            config.load()
            config.ssl = server_context(tls)
        self.scheme = "https" if tls is not None else "http"
        self.server = uvicorn.Server(config)
        # Signals belong to the main thread's runtime, not to each server.
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.server.run, name=name, daemon=True)
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(f"HTTP server on {self.host}:{self.port} failed to start")
            if time.monotonic() > deadline:
                raise RuntimeError(f"HTTP server on {self.host}:{self.port} did not start in {timeout_s}s")
            time.sleep(0.02)
        if self.port == 0:
            self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout_s)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
