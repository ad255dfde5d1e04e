"""The end-to-end benchmark's webhook receiver: how long after a decision its webhook arrives.

A policy on LLM drift (:func:`policy`) sends its signed webhook here; each arrival is
verified (Standard Webhooks, the policy's secret) and timed against the decision time the
body carries (``timestamp``, the trigger stage's ``decided_at``), on this machine's clock
like the observer's.

>>> hooks = WebhookTimer()
>>> hooks.summary()
{'webhooks': 0}
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

import numpy as np
import standardwebhooks
from fastapi import FastAPI, Request, Response
from observer.triggers.signing import generate_secret

from observer.core.http import ServerThread


class WebhookTimer:
    """A FastAPI receiver (:meth:`serve`) recording decision-to-arrival delays."""

    def __init__(self) -> None:
        self.secret = generate_secret()
        self.delays_ms: list[float] = []
        self._lock = threading.Lock()

    def app(self) -> FastAPI:
        app = FastAPI()
        verifier = standardwebhooks.Webhook(self.secret)

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            arrived = time.time()
            body = await request.body()
            payload = verifier.verify(body, dict(request.headers))
            decided = datetime.fromisoformat(payload["timestamp"]).timestamp()
            with self._lock:
                self.delays_ms.append((arrived - decided) * 1000)
            return Response(status_code=204)

        return app

    def serve(self) -> ServerThread:
        return ServerThread(self.app())

    def policy(self, url: str) -> dict[str, Any]:
        """Fire on two drifted LLM windows in a row; clear after two quiet ones."""
        return {"name": "bench", "record_types": ["llm"], "consecutive_windows": 2,
                "clear_windows": 2, "min_samples": 10, "cooldown_s": 0,
                "webhooks": [{"url": f"{url}/hook", "secret": self.secret}]}

    def summary(self) -> dict[str, Any]:
        with self._lock:
            delays = np.array(self.delays_ms)
        if not len(delays):
            return {"webhooks": 0}
        return {"webhooks": len(delays), "p50_ms": round(float(np.percentile(delays, 50)), 1),
                "max_ms": round(float(delays.max()), 1)}
