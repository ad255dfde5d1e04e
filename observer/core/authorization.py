"""One reading of the ``Authorization`` header for every listener: receivers and admin API.

A request carries at most one ``Authorization`` header. With two, HTTP frameworks read the
first, gRPC the last, and a proxy in front may have checked the other one; so a request with
more than one is refused whatever they say, by every listener alike. Only ``Bearer`` tokens
are read, and an empty token is no token: it never matches, whatever is configured.

>>> bearer_token(["Bearer s3cret"]), bearer_token([b"bearer s3cret"])
(b's3cret', b's3cret')
>>> [bearer_token(v) for v in ([], ["Bearer "], ["Bearer   "], ["Basic czNjcmV0"], ["s3cret"])]
[None, None, None, None, None]
>>> bearer_token(["Bearer a", "Bearer a"])
Traceback (most recent call last):
...
observer.core.authorization.DuplicateAuthorization: duplicate Authorization headers: send exactly one
>>> matches(b"s3cret", [b"other", b"s3cret"]), matches(None, [b"s3cret"]), matches(b"", [b""])
(1, None, None)
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence


class DuplicateAuthorization(ValueError):
    """The request carries more than one ``Authorization`` header."""

    def __init__(self) -> None:
        super().__init__("duplicate Authorization headers: send exactly one")


def bearer_token(values: Sequence[str | bytes] | str | bytes | None) -> bytes | None:
    """The token of the request's ``Authorization: Bearer <token>``, given ALL its values.

    None when there is no header, another scheme, or nothing after ``Bearer``;
    :class:`DuplicateAuthorization` when there is more than one header.
    """
    if values is None:
        headers: list[str | bytes] = []
    elif isinstance(values, (str, bytes)):
        headers = [values]  # one value, not a sequence of characters
    else:
        headers = list(values)
    if len(headers) > 1:
        raise DuplicateAuthorization()
    if not headers:
        return None
    header = headers[0]
    raw = header.encode("latin-1", "replace") if isinstance(header, str) else header
    scheme, _, credentials = raw.strip().partition(b" ")
    token = credentials.strip()
    if scheme.lower() != b"bearer" or not token:
        return None
    return token


def matches(offered: bytes | None, tokens: Sequence[bytes]) -> int | None:
    """The index of the token in ``tokens`` equal to ``offered``, or None.

    Every token is compared, in constant time each, so timing tells nothing about which (if
    any) matched. An empty token, offered or configured, never matches.
    """
    if not offered:
        return None
    found: int | None = None
    for index, token in enumerate(tokens):
        if hmac.compare_digest(offered, token) and token and found is None:
            found = index
    return found
