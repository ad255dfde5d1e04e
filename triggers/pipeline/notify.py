"""The pipeline's promotion callback: ``python -m observer.triggers.pipeline.notify``.

The rendered workflow's ``notify-promotion`` step (after ``promote``) and ``notify-rollback``
(in the exit handler, after ``rollback``) run it when ``trigger.pipeline.promotion_callback_url``
is set. It POSTs ``{run, model_version, outcome}`` to observer's
``/api/v1/episodes/{episode}/promotion``, signed with the Standard Webhooks secret in
``$OBSERVER_PROMOTION_SECRET`` (the admin token, when observer has one, in
``$OBSERVER_ADMIN_TOKEN``). One ``webhook-id`` for every attempt: a retry of a request that
did arrive is refused as a replay (409), which means it was recorded. Connection errors and
5xx answers are retried with backoff; any other answer ends the step (non-zero unless 2xx).

>>> request("http://observer:8080/", "e1", b"{}", "whsec_" + "A" * 32, "msg_1", 5)[0]
'http://observer:8080/api/v1/episodes/e1/promotion'
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid

import httpx
from observer.triggers.promotion_callback import promotion_body
from observer.triggers.signing import signed_headers

SECRET_ENV = "OBSERVER_PROMOTION_SECRET"
TOKEN_ENV = "OBSERVER_ADMIN_TOKEN"


def request(base_url: str, episode: str, body: bytes, secret: str, msg_id: str,
            timestamp: int, token: str = "") -> tuple[str, dict[str, str]]:
    """The URL and headers of one callback attempt."""
    headers = {**signed_headers(secret, msg_id, timestamp, body),
               "content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    return f"{base_url.rstrip('/')}/api/v1/episodes/{episode}/promotion", headers


def send(base_url: str, episode: str, run: str, model_version: str, outcome: str, secret: str,
         *, token: str = "", attempts: int = 8, backoff_s: float = 2.0,
         client: httpx.Client | None = None) -> int:
    """Send the callback, retrying transient failures; the last HTTP status (0: none)."""
    body = promotion_body(run, model_version, outcome)
    msg_id = f"msg_{uuid.uuid4().hex}"
    http = client or httpx.Client(timeout=30)
    status = 0
    try:
        for attempt in range(attempts):
            url, headers = request(base_url, episode, body, secret, msg_id, int(time.time()), token)
            try:
                answer = http.post(url, content=body, headers=headers)
            except httpx.HTTPError as e:
                print(f"promotion callback attempt {attempt + 1}: {e}", file=sys.stderr)
            else:
                status = answer.status_code
                print(f"promotion callback: HTTP {status} {answer.text[:500]}", file=sys.stderr)
                if status == 409 and attempt and "replay" in answer.text:
                    return 200  # an earlier attempt arrived and was recorded
                if status < 500:
                    return status
            time.sleep(min(backoff_s * 2**attempt, 60.0))
    finally:
        if client is None:
            http.close()
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True, help="observer's admin API base URL")
    parser.add_argument("--episode", required=True)
    parser.add_argument("--run", required=True, help="the workflow's name")
    parser.add_argument("--model-version", required=True)
    parser.add_argument("--outcome", choices=["promoted", "rolled_back"], default="promoted")
    args = parser.parse_args(argv)
    secret = os.environ.get(SECRET_ENV, "")
    if not secret:
        print(f"{SECRET_ENV} is not set: cannot sign the promotion callback", file=sys.stderr)
        return 2
    status = send(args.url, args.episode, args.run, args.model_version, args.outcome, secret,
                  token=os.environ.get(TOKEN_ENV, ""))
    return 0 if 200 <= status < 300 else 1


if __name__ == "__main__":
    sys.exit(main())
