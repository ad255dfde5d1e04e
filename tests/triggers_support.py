"""Helpers shared by the trigger tests: the contract Argo server and a webhook receiver that
verifies signatures with the reference ``standardwebhooks`` package, not observer's signer."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from observer.triggers.config import TriggerConfig
from observer.core.http import ServerThread
from tests.argo_contract import ArgoContract
from observer.triggers.pipeline.render import workflow_template
from observer.triggers.signing import generate_secret

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = Path(os.environ.get("OBSERVER_SCHEMAS", ROOT / "tests" / "schemas"))
ARGO_TOKEN = "argo-t0ken"
SECRET = generate_secret()


class WebhookReceiver:
    """Records ``(webhook-id, payload)`` per delivery; the payload is None when the signature
    does not verify."""

    def __init__(self, secret: str = SECRET) -> None:
        self.verifier = Webhook(secret)
        self.received: list[tuple[str, Any]] = []
        self.app = FastAPI()

        @self.app.post("/hook")
        async def hook(request: Request) -> Response:
            body = await request.body()
            try:
                payload = self.verifier.verify(body, dict(request.headers))
            except WebhookVerificationError:
                payload = None
            self.received.append((request.headers["webhook-id"], payload))
            return Response(status_code=204)

    @property
    def payloads(self) -> list[Any]:
        return [payload for _, payload in self.received]


Servers = tuple[str, ArgoContract, str, WebhookReceiver]
"""Argo URL, the contract server, the webhook URL, the receiver (the ``trigger_servers``
fixture of conftest)."""


@contextmanager
def argo_and_webhooks() -> Iterator[Servers]:
    """The contract Argo server (schemas and token enforced) and a webhook receiver."""
    cfg = TriggerConfig()
    contract = ArgoContract(SCHEMAS, [workflow_template(cfg.pipeline, cfg.argo)], token=ARGO_TOKEN)
    receiver = WebhookReceiver()
    with ServerThread(contract.app()) as argo, ServerThread(receiver.app) as hooks:
        yield argo.url, contract, f"{hooks.url}/hook", receiver


def emptied(servers: Servers) -> Servers:
    """The servers, emptied of what earlier tests left."""
    contract, receiver = servers[1], servers[3]
    contract.workflows.clear()
    contract.created.clear()
    contract.on_create.clear()
    contract.fail_next.clear()
    receiver.received.clear()
    return servers
