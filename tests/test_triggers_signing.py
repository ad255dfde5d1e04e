"""Standard Webhooks signatures, checked against the reference package ``standardwebhooks``."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from observer.triggers.signing import SignatureError, generate_secret, sign, signed_headers, verify

BODY = b'{"type":"observer.drift.episode","data":{"x":1}}'


def test_ours_verified_by_standardwebhooks() -> None:
    secret = generate_secret()
    now = int(time.time())
    headers = signed_headers(secret, "msg_abc", now, BODY)
    assert Webhook(secret).verify(BODY, headers) == {
        "type": "observer.drift.episode",
        "data": {"x": 1},
    }
    with pytest.raises(WebhookVerificationError):
        Webhook(generate_secret()).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY + b" ", headers)


def test_standardwebhooks_verified_by_ours() -> None:
    secret = generate_secret()
    now = int(time.time())
    signature = Webhook(secret).sign("msg_peer", datetime.fromtimestamp(now, tz=UTC), BODY.decode())
    assert signature == sign(secret, "msg_peer", now, BODY)
    headers = {
        "Webhook-Id": "msg_peer",
        "Webhook-Timestamp": str(now),
        "Webhook-Signature": signature,
    }
    verify(secret, headers, BODY)  # header names are case-insensitive
    with pytest.raises(SignatureError, match="no matching signature"):
        verify(secret, headers, BODY.replace(b"1", b"2"))
    with pytest.raises(SignatureError, match="no matching signature"):
        verify(secret, {**headers, "Webhook-Id": "msg_other"}, BODY)


def test_rotation_several_signatures_and_secrets() -> None:
    old, new = generate_secret(), generate_secret()
    now = int(time.time())
    both = f"{sign(old, 'm', now, BODY)} {sign(new, 'm', now, BODY)}"
    headers = {"webhook-id": "m", "webhook-timestamp": str(now), "webhook-signature": both}
    # A receiver on either secret accepts a request signed with both ...
    verify(old, headers, BODY)
    verify(new, headers, BODY)
    Webhook(old).verify(BODY, headers)
    Webhook(new).verify(BODY, headers)
    # ... and a receiver holding both secrets accepts a request signed with either.
    only_new = {**headers, "webhook-signature": sign(new, "m", now, BODY)}
    verify([old, new], only_new, BODY)
    with pytest.raises(SignatureError):
        verify(old, only_new, BODY)


def test_other_versions_and_malformed_entries_are_skipped() -> None:
    secret = generate_secret()
    now = int(time.time())
    good = sign(secret, "m", now, BODY)
    header = f"v1a,AAAA v1,!!notbase64!! {good}"
    verify(
        secret,
        {"webhook-id": "m", "webhook-timestamp": str(now), "webhook-signature": header},
        BODY,
    )


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header(missing: str) -> None:
    secret = generate_secret()
    headers = signed_headers(secret, "m", int(time.time()), BODY)
    del headers[missing]
    with pytest.raises(SignatureError, match=f"missing {missing}"):
        verify(secret, headers, BODY)


@pytest.mark.parametrize("value", ["abc", "1.5e9", "-5", ""])
def test_bad_timestamp(value: str) -> None:
    secret = generate_secret()
    headers = {"webhook-id": "m", "webhook-timestamp": value, "webhook-signature": "v1,AAAA"}
    with pytest.raises(SignatureError, match="webhook-timestamp"):
        verify(secret, headers, BODY)


def test_tolerance() -> None:
    secret = generate_secret()
    ts = 1_700_000_000
    headers = signed_headers(secret, "m", ts, BODY)
    verify(secret, headers, BODY, now=ts + 300)
    verify(secret, headers, BODY, now=ts - 300)
    with pytest.raises(SignatureError, match="outside the tolerance"):
        verify(secret, headers, BODY, now=ts + 301)
    with pytest.raises(SignatureError, match="outside the tolerance"):
        verify(secret, headers, BODY, now=ts - 301)
    verify(secret, headers, BODY, tolerance_s=3600, now=ts + 3000)
    # The reference package applies the same +-5 minutes.
    old = signed_headers(secret, "m", int(time.time()) - 400, BODY)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(secret).verify(BODY, old)


def test_secret_format() -> None:
    secret = generate_secret()
    assert secret.startswith("whsec_")
    assert generate_secret() != secret
    # The prefix is optional and missing padding is tolerated, as in the reference package.
    unpadded = "whsec_" + secret[6:].rstrip("=")
    assert (
        sign(unpadded, "m", 1, BODY) == sign(secret[6:], "m", 1, BODY) == sign(secret, "m", 1, BODY)
    )
    with pytest.raises(ValueError) as err:
        sign("whsec_not*base64", "m", 1, BODY)
    assert "not*base64" not in str(err.value)  # secrets never end up in messages
    with pytest.raises(ValueError, match="empty"):
        sign("whsec_", "m", 1, BODY)
