"""What of a webhook URL may leave the process (events, logs, the admin API).

Receivers often put a token in the query string or the userinfo part; those stay in the
configuration and the ledger's outbox, and everything shown elsewhere drops them.

>>> public_target("https://user:pw@hooks.example.com:8443/drift?token=s3cret#x")
'https://hooks.example.com:8443/drift'
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def public_target(url: str) -> str:
    """``url`` without userinfo, query string or fragment.

    >>> public_target("http://127.0.0.1:9000/hook")
    'http://127.0.0.1:9000/hook'
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal: urlsplit strips the brackets
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
