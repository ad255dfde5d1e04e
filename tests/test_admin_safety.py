"""The admin API over real HTTP: without a token a web page cannot make it change anything
(cross-origin, DNS rebinding, cross-site fetches); with one, everything but the probes (and
/metrics unless protected) needs it, API docs included."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from observer.admin import create_admin_app
from observer.drift.admin_routes import drift_router
from observer.triggers.admin_routes import trigger_router
from observer.admin_guard import AdminGuard
from observer.config import load_config
from observer.core.config import AdminConfig, ConfigError, KafkaConfig
from observer.core.http import ServerThread
from observer.views import TopicView

APPROVE = "/api/v1/triggers/ep-1/approve"
TOKEN = {"Authorization": "Bearer adm1n"}


class Ledger:
    """Stands in for the trigger stage's ledger: records every verdict that got through."""

    def __init__(self) -> None:
        self.verdicts: list[tuple[str, str]] = []

    def resolve(
        self, episode: str, verdict: str, by: str, note: str
    ) -> tuple[dict[str, Any], bool]:
        self.verdicts.append((episode, verdict))
        return {"episode_id": episode, "approval": verdict}, True


@contextmanager
def admin(cfg: AdminConfig) -> Iterator[tuple[httpx.Client, Ledger]]:
    view = TopicView(KafkaConfig(), "unused", lambda r: "")  # never started: empty
    ledger = Ledger()
    app = create_admin_app(cfg, kafka_ready=lambda: True, stage_errors=dict,
                           routers=[drift_router(view, None),
                                    trigger_router(view, resolve=ledger.resolve)])
    with ServerThread(app, cfg.host) as server, httpx.Client(base_url=server.url, timeout=10) as c:
        yield c, ledger


def test_without_token_same_machine_post_is_accepted() -> None:
    with admin(AdminConfig()) as (client, ledger):
        plain = client.post(APPROVE)  # curl / `observer` on this machine: no Origin
        own = f"http://127.0.0.1:{client.base_url.port}"
        same_origin = client.post(APPROVE, headers={"Origin": own, "Sec-Fetch-Site": "same-origin"})
        localhost = client.post(APPROVE, headers={"Host": f"localhost:{client.base_url.port}"})
    assert (plain.status_code, same_origin.status_code, localhost.status_code) == (200, 200, 200)
    assert len(ledger.verdicts) == 3


@pytest.mark.parametrize(
    "headers, reason",
    [
        ({"Origin": "https://evil.example"}, "Origin 'https://evil.example' is not this API's"),
        ({"Origin": "null"}, "cross-origin request refused"),  # sandboxed iframe, file://
        ({"Host": "evil.example:8080"}, "not 'evil.example:8080'"),  # DNS rebinding
        ({"Host": "127.0.0.1.evil.example"}, "DNS-rebinding"),
        ({"Sec-Fetch-Site": "cross-site"}, "Sec-Fetch-Site: cross-site"),
        ({"Sec-Fetch-Site": "same-site"}, "Sec-Fetch-Site: same-site"),
    ],
)
def test_without_token_cross_site_writes_are_refused(headers: dict[str, str], reason: str) -> None:
    with admin(AdminConfig()) as (client, ledger):
        answers = [client.request(m, APPROVE, headers=headers)
                   for m in ("POST", "PUT", "PATCH", "DELETE")]
        read = client.get("/api/v1/triggers", headers=headers)
    for answer in answers:
        assert answer.status_code == 403, answer.text
        assert reason in answer.json()["detail"] and "admin.auth_token" in answer.json()["detail"]
    assert ledger.verdicts == []  # nothing was approved
    assert read.status_code == 200  # reading stays open without a token


def _post_scope(host: str) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": APPROVE, "scheme": "http",
            "headers": [(b"host", host.encode())]}


def test_without_token_the_bound_host_is_accepted() -> None:
    bound = AdminGuard(None, AdminConfig(host="10.1.2.3"))
    assert bound.refusal(_post_scope("10.1.2.3:8080")) is None
    assert bound.refusal(_post_scope("[::1]:8080")) is None
    assert bound.refusal(_post_scope("10.1.2.4:8080")) is not None
    # Bound to every address: only loopback names, since any name could point here.
    everywhere = AdminGuard(None, AdminConfig(host="0.0.0.0"))
    assert everywhere.refusal(_post_scope("localhost:8080")) is None
    refused = everywhere.refusal(_post_scope("0.0.0.0:8080"))
    assert refused is not None and refused[0] == 403


def test_with_token_everything_but_probes_needs_it() -> None:
    with admin(AdminConfig(auth_token="adm1n")) as (client, ledger):
        for method, path in (("POST", APPROVE), ("GET", "/api/v1/drift"),
                             ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/nowhere")):
            refused = client.request(method, path)
            assert refused.status_code == 401, path
            assert refused.headers["www-authenticate"] == "Bearer"
            wrong = client.request(method, path, headers={"Authorization": "Bearer guess"})
            assert wrong.status_code == 401, path
        assert ledger.verdicts == []
        # A cross-origin request with the token is the operator's own: the token decides.
        approved = client.post(APPROVE, headers={**TOKEN, "Origin": "https://ops.example"})
        assert approved.status_code == 200 and ledger.verdicts == [("ep-1", "approved")]
        assert client.get("/openapi.json", headers=TOKEN).status_code == 200
        assert client.get("/api/v1/drift", headers=TOKEN).status_code == 200
        for probe in ("/healthz", "/readyz", "/metrics"):
            assert client.get(probe).status_code == 200, probe


def test_two_authorization_headers_are_refused() -> None:
    twice = [("authorization", "Bearer adm1n"), ("authorization", "Bearer adm1n")]
    with admin(AdminConfig(auth_token="adm1n")) as (client, ledger):
        for method, path in (("POST", APPROVE), ("GET", "/api/v1/drift"), ("GET", "/healthz")):
            answer = client.request(method, path, headers=twice)
            assert answer.status_code == 401, path
            assert "duplicate Authorization headers" in answer.json()["detail"]
    assert ledger.verdicts == []


def test_protect_metrics_needs_the_token() -> None:
    with admin(AdminConfig(auth_token="adm1n", protect_metrics=True)) as (client, _):
        assert client.get("/metrics").status_code == 401
        scraped = client.get("/metrics", headers=TOKEN)
        assert client.get("/healthz").status_code == 200
    assert scraped.status_code == 200 and "# HELP" in scraped.text


def test_protect_metrics_without_a_token_refuses_to_start() -> None:
    with pytest.raises(ConfigError, match="admin.protect_metrics needs admin.auth_token"):
        load_config(None, env={"OBSERVER_ADMIN__PROTECT_METRICS": "true"})
