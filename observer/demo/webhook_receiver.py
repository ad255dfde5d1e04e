"""The demo's webhook endpoint: what a user's retraining service would run.

It verifies every delivery's Standard Webhooks signature and keeps what arrived.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, Response

from observer.triggers.signing import SignatureError, verify


@dataclass
class Delivery:
    webhook_id: str
    signature_valid: bool
    error: str
    payload: dict[str, Any] | None


@dataclass
class WebhookReceiver:
    secret: str
    deliveries: list[Delivery] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def valid(self) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.signature_valid]

    def app(self) -> FastAPI:
        app = FastAPI(docs_url=None, redoc_url=None)

        @app.post("/hooks/retrain")
        async def hook(request: Request) -> Response:
            body = await request.body()
            try:
                verify(self.secret, request.headers, body)
                ok, error = True, ""
            except SignatureError as e:
                ok, error = False, str(e)
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None
            with self._lock:
                self.deliveries.append(
                    Delivery(request.headers.get("webhook-id", ""), ok, error, payload)
                )
            return Response(status_code=204 if ok else 401)

        return app
