"""Standard Webhooks signatures: sign what we send, verify what a receiver would check.

The signed content is ``{webhook-id}.{webhook-timestamp}.{body}``, HMAC-SHA256 keyed with the
base64-decoded part of a ``whsec_`` secret; the ``webhook-signature`` header carries
``v1,<base64>`` entries separated by spaces, so a sender can sign with an old and a new secret
while receivers rotate.

>>> secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
>>> sig = sign(secret, "msg_1", 1700000000, b'{"a":1}')
>>> sig
'v1,hVsFLpmw4Ib/Xm0eZLt3KqYBZdt0U8gdGeuz0EsGv78='
>>> headers = {"webhook-id": "msg_1", "webhook-timestamp": "1700000000", "webhook-signature": sig}
>>> verify(secret, headers, b'{"a":1}', now=1700000010)
>>> verify(secret, headers, b'{"a":2}', now=1700000010)
Traceback (most recent call last):
...
observer.triggers.signing.SignatureError: no matching signature
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as _secrets
import time
from collections.abc import Mapping, Sequence

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_S = 300  # the spec's +-5 minutes against replayed requests


class SignatureError(ValueError):
    """A webhook request failed verification; the message says which check failed."""


def _key(secret: str) -> bytes:
    """The HMAC key of a secret: the base64 after ``whsec_`` (the prefix is optional)."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        # Some issuers drop the padding; restoring it is harmless when it is already there.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        # Never echo the secret itself in the error.
        raise ValueError("webhook secret is not whsec_<base64>") from None
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def check_secret(secret: str) -> None:
    """Raise ``ValueError`` unless ``secret`` is usable (``whsec_`` and non-empty base64).

    >>> check_secret(generate_secret())
    >>> check_secret("whsec_***")
    Traceback (most recent call last):
    ...
    ValueError: webhook secret is not whsec_<base64>
    """
    _key(secret)


def _digest(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one request: ``v1,<base64 HMAC-SHA256>``.

    >>> sign("whsec_" + "A" * 32, "msg_x", 0, b"").startswith("v1,")
    True
    """
    digest = _digest(_key(secret), msg_id, int(timestamp), body)
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def signed_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers for one request.

    >>> sorted(signed_headers("whsec_" + "A" * 32, "msg_x", 5, b"{}"))
    ['webhook-id', 'webhook-signature', 'webhook-timestamp']
    """
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def verify(
    secrets: str | Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> None:
    """Check a request the way a Standard Webhooks receiver does; raise :class:`SignatureError`.

    ``secrets`` is one secret or several (a receiver rotating its secret accepts both), and
    the header may carry several signatures: any match of any secret passes. Header names are
    case-insensitive.
    """
    candidates = [secrets] if isinstance(secrets, str) else list(secrets)
    if not candidates:
        raise ValueError("verify needs at least one secret")
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id")
    raw_ts = lowered.get("webhook-timestamp")
    raw_sig = lowered.get("webhook-signature")
    for name, value in (
        ("webhook-id", msg_id),
        ("webhook-timestamp", raw_ts),
        ("webhook-signature", raw_sig),
    ):
        if not value:
            raise SignatureError(f"missing {name} header")
    assert msg_id is not None and raw_ts is not None and raw_sig is not None
    ts_text = raw_ts.strip()
    if not ts_text.isdigit():
        raise SignatureError(f"bad webhook-timestamp {raw_ts!r}: not Unix seconds")
    timestamp = int(ts_text)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise SignatureError(
            f"webhook-timestamp {timestamp} is outside the tolerance of {tolerance_s:g}s "
            f"(now {int(current)})"
        )
    offered: list[bytes] = []
    for entry in raw_sig.split():
        version, _, encoded = entry.partition(",")
        if version != SIGNATURE_VERSION:
            continue  # other schemes (v1a: ed25519) are not ours to check
        try:
            offered.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue  # one malformed entry must not hide a valid one beside it
    for secret in candidates:
        expected = _digest(_key(secret), msg_id, timestamp, body)
        # compare_digest keeps each comparison constant-time; stopping at the first match
        # only reveals that one matched, which the receiver's answer reveals anyway.
        if any(hmac.compare_digest(expected, sig) for sig in offered):
            return
    raise SignatureError("no matching signature")


def generate_secret() -> str:
    """A fresh secret: ``whsec_`` and the base64 of 24 random bytes.

    >>> s = generate_secret()
    >>> s.startswith("whsec_") and len(base64.b64decode(s[6:])) == 24
    True
    """
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(24)).decode()
