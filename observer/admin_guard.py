"""Who may use the admin API: the bearer token, or, without one, same-machine requests only.

One ASGI middleware in front of every admin route, so a route added later is guarded too:

- more than one ``Authorization`` header: 401, on every path;
- ``admin.auth_token`` set: every path but ``/healthz``, ``/readyz`` and ``/metrics`` (unless
  ``admin.protect_metrics``) needs it, ``/openapi.json`` and ``/docs`` included; 401 without;
- no token set: reading is open, but a state-changing request (POST, PUT, PATCH, DELETE, such
  as approving a held retraining run) is refused with 403 when a browser could have been made
  to send it: its ``Host`` is not this API's bound address or a loopback name (DNS
  rebinding), its ``Origin`` is present and not this API's own, or ``Sec-Fetch-Site`` says
  another site sent it. Episode ids are predictable, so without this any web page open on the
  operator's machine could approve a run.

>>> hostname("127.0.0.1:8080"), hostname("[::1]:8080"), hostname("LocalHost."), hostname("")
('127.0.0.1', '::1', 'localhost', '')
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from observer.core.authorization import DuplicateAuthorization, bearer_token, matches
from observer.core.config import AdminConfig

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
"""Probes read these without credentials, token or not."""

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::"})
SAME_SITE_FETCHES = frozenset({"same-origin", "none"})  # "none": typed by the user

Refusal = tuple[int, str]


def hostname(host_header: str) -> str:
    """The name in a ``Host`` header, without port, brackets or trailing dot, lowercase."""
    host = host_header.strip().lower()
    if host.startswith("["):
        name = host[1 : host.find("]")] if "]" in host else ""
    else:
        name = host.split(":", 1)[0]
    return name.rstrip(".")


class AdminGuard:
    """ASGI middleware applying the rules above; refusals are JSON ``{"detail": ...}``."""

    def __init__(self, app: Any, cfg: AdminConfig) -> None:
        self.app = app
        self.token = cfg.auth_token.get_secret_value().encode() if cfg.auth_token else None
        self.open_paths = OPEN_PATHS if cfg.protect_metrics else OPEN_PATHS | {"/metrics"}
        bound = cfg.host.strip().lower().strip("[]")
        self.hosts = LOOPBACK_NAMES | ({bound} if bound not in WILDCARD_ADDRESSES else set())

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        refusal = self.refusal(scope) if scope["type"] == "http" else None
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, detail = refusal
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        await JSONResponse({"detail": detail}, status, headers)(scope, receive, send)

    def refusal(self, scope: Any) -> Refusal | None:
        """Why this request is refused (status, reason), or None to let it through."""
        headers = Headers(scope=scope)
        try:
            offered = bearer_token(headers.getlist("authorization"))
        except DuplicateAuthorization as e:
            return 401, str(e)
        if scope["path"] in self.open_paths:
            return None
        if self.token is not None:
            if matches(offered, [self.token]) is None:
                return 401, "missing or wrong bearer token"
            return None
        if scope["method"] in STATE_CHANGING:
            return self._cross_site(headers, scope)
        return None

    def _cross_site(self, headers: Headers, scope: Any) -> Refusal | None:
        host = headers.get("host", "")
        why = "; set admin.auth_token to accept requests from elsewhere"
        if hostname(host) not in self.hosts:
            return 403, (
                f"no admin.auth_token is set, so {scope['method']} requests are accepted only "
                f"with Host {' or '.join(sorted(self.hosts))}, not {host[:100]!r} "
                f"(a DNS-rebinding page would send its own name){why}"
            )
        origin = headers.get("origin")
        own = f"{scope.get('scheme', 'http')}://{host}"
        if origin is not None and origin.strip().lower() != own.lower():
            return 403, (
                f"cross-origin request refused: Origin {origin[:100]!r} is not this API's "
                f"({own}), and without admin.auth_token another site's page could send it{why}"
            )
        fetch_site = headers.get("sec-fetch-site")
        if fetch_site is not None and fetch_site.lower() not in SAME_SITE_FETCHES:
            return 403, (
                f"cross-site request refused (Sec-Fetch-Site: {fetch_site[:30]}): without "
                f"admin.auth_token another site's page could send it{why}"
            )
        return None
