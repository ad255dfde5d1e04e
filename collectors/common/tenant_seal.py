"""The receivers' seal on what they write to Kafka: encrypted, and the only proof of a tenant.

A receiver authenticates a request and stamps its tenant (:mod:`observer.collectors.common.tenancy`), but the
stages read Kafka, and anything that can reach the broker can write a message claiming
``observer.tenant=b``, or read every tenant's raw spans (prompts). So when
``receiver.stamp_key`` is set (or generated at each start by :func:`with_seal_key`), every
message a receiver writes (``otlp_spans``, ``otlp_metrics``, ``otlp_logs``, the KServe events)
is *sealed*: its value is encrypted with AES-256-GCM, which also authenticates it. Sealed
value, byte for byte::

    b"\\x00obs" | version (1 byte, 2) | epoch (16) | nonce (12) | ciphertext | GCM tag (16)

- key: HKDF-SHA256 of the stamp key, salted with the *epoch* (random; a new one at each start
  and every :data:`EPOCH_MESSAGES` messages, so a long-lived configured key never meets the
  2**32-messages limit of random GCM nonces), info :data:`INFO` (versioned);
- nonce: random per message;
- associated data: the format head, the topic, the Kafka key and every header (name and
  value, in order). A sealed message moved to another topic or given another key or header
  does not open. The partition and offset are not bound: a spooled message replayed after a
  restart (:mod:`observer.collectors.receiver.spool`, same kept key) lands elsewhere and still opens.
  A topic MirrorMaker 2 mirrored with its DefaultReplicationPolicy is named
  ``<source alias>.<topic>``: stages reading it take ``receiver.mirror_prefix`` (the
  ``<source alias>.``) off the name before opening, so they open what the source's receivers
  sealed under ``<topic>``.

The value is prefixed rather than a header so that a dead letter (which keeps the original
value and the key, not the headers) stays sealed on the dead-letter topic and can still be
opened by whoever holds the key. No OTLP protobuf message and no JSON starts with a NUL byte.

A stage opens each raw message before parsing it (:meth:`TenantSeal.open`, through
:func:`observer.collectors.common.otlp_messages.otlp_request`), and gets:

=============================  ==========================================================
message                        outcome
=============================  ==========================================================
no key configured              value as is, tenant trusted (a real Kafka's own ACLs decide);
                               a sealed one: :class:`BrokenSeal` (naming the missing key)
sealed, opens                  plaintext, tenant trusted
not sealed (a direct write)    value as is, tenant NOT trusted: records get tenant ``""``,
                               counted in ``observer_unsealed_messages_total{stage}``
sealed, does not open          :class:`BrokenSeal` (forged, tampered, moved, another key):
                               dead-lettered ``invalid_value``, counted in
                               ``observer_broken_seals_total{stage}``
=============================  ==========================================================

So an OpenTelemetry Collector writing plain OTLP to Kafka still works. Without a key nothing
is encrypted and nothing is added: ``otlp_*`` carry plain OTLP protobuf, as a Collector's kafka
exporter writes it.

Values are not compressed before sealing: one export batch mixes many end users' prompts, and
compressed lengths would tell a reader whether one user's text repeats another's (CRIME). So
the receivers' producer does not compress sealed values either (:class:`observer.collectors.receiver.intake.Intake`):
ciphertext does not shrink. What stays readable: the Kafka key (a trace id), timestamps,
sizes, and a KServe event's ``ce_*`` headers (ids, service, tenant; bound by the seal, not
hidden). A genuine sealed message copied back into its topic opens again (a duplicate, not a
forgery). Not covered: a process running as observer's user can read the kept key file (mode
0600) or observer's memory; root can do anything. The stages' own outputs (``observer.llm``
...) are not sealed; they hold message content only with ``normalizer.content.capture`` on.

>>> from pydantic import SecretStr
>>> seal = TenantSeal(SecretStr("k" * 32))
>>> out = seal.sealed(Output("otlp_spans", b"k", b"prompt"))
>>> out.value.startswith(b"\\x00obs\\x02"), b"prompt" in out.value
(True, False)
>>> def consumed(o, value=None, topic=None):
...     return Message(topic or o.topic, 0, 0, o.key, o.value if value is None else value, 0)
>>> seal.open(consumed(out), "doc"), seal.open(consumed(Output("t", None, b"x")), "doc")
(Opened(value=b'prompt', trusted=True), Opened(value=b'x', trusted=False))
>>> seal.open(consumed(out, topic="elsewhere"), "doc")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
observer.collectors.common.tenant_seal.BrokenSeal: sealed elsewhere message does not open: ...
>>> TenantSeal(None).open(consumed(Output("t", None, b"x")), "doc")  # no key: Kafka is trusted
Opened(value=b'x', trusted=True)
"""

from __future__ import annotations

import os
import secrets
import struct
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from prometheus_client import Counter
from pydantic import SecretStr

from observer.core.bus import Message, Output
from observer.core.durable_files import write_atomically

if TYPE_CHECKING:  # the shell composes the configuration; stages only read it
    from observer.collectors.receiver.config import ReceiverConfig
    from observer.config import ObserverConfig

KEY_FILE = "seal.key"
"""The generated key's file in ``kafka.embedded_state_dir`` (durable mode): spooled messages
replayed after a restart must still open."""
MAGIC = b"\x00obs"
VERSION = 2
"""Version 1 was an HMAC header (never released); a sealed value of another version does not
open, so a future format is never read as this one."""
HEAD = MAGIC + bytes([VERSION])
EPOCH_BYTES, NONCE_BYTES, TAG_BYTES = 16, 12, 16
OVERHEAD = len(HEAD) + EPOCH_BYTES + NONCE_BYTES + TAG_BYTES
"""Bytes a seal adds to a value (49)."""
INFO = b"observer raw-topic seal v2: AES-256-GCM"
EPOCH_MESSAGES = 2**30
"""Messages sealed under one epoch's key before a new epoch: random 96-bit nonces stay far
below the 2**32 per key that AES-GCM allows."""
_KEPT_EPOCHS = 64
"""Epoch keys a reader keeps (one per receiver start or 2**30 messages): only those that
opened a message are kept, so forged epochs cannot push genuine ones out."""

UNSEALED = Counter(
    "observer_unsealed_messages_total",
    "Messages without a receiver seal (a direct write to Kafka): their tenant is not trusted, "
    "their records carry the empty tenant.",
    ["stage"],
)
BROKEN = Counter(
    "observer_broken_seals_total",
    "Sealed messages that did not open (forged, changed, moved to another topic, or sealed "
    "with another key): dead-lettered as invalid_value.",
    ["stage"],
)


class BrokenSeal(ValueError):
    """A sealed message that does not open; dead-lettered as ``invalid_value``."""

    reason = "invalid_value"


class Opened(NamedTuple):
    """A raw message's value as a stage may parse it, and whether its tenant is believed."""

    value: bytes
    trusted: bool


def _field(data: bytes | None) -> bytes:
    # Length-prefixed (None: a length no field has), so no two different inputs encode alike.
    return b"\xff\xff\xff\xff" if data is None else struct.pack(">I", len(data)) + data


def associated_data(
    topic: str, key: str | bytes | None, headers: Sequence[tuple[str, bytes | None]]
) -> bytes:
    """What a seal binds besides the value: format head, topic, Kafka key, every header."""
    if isinstance(key, str):
        key = key.encode()  # as the producers send a str key
    parts = [HEAD, _field(topic.encode()), _field(key), struct.pack(">I", len(headers))]
    for name, data in headers:
        parts += [_field(name.encode()), _field(None if data is None else bytes(data))]
    return b"".join(parts)


class TenantSeal:
    """Seal messages with ``key`` and open them; with no key, seal nothing and trust all.

    ``mirror_prefix``: opening only, the prefix a mirror added to the topic names
    (``receiver.mirror_prefix``): a message of ``east.otlp_spans`` opens as sealed for
    ``otlp_spans`` with ``"east."``.
    """

    def __init__(self, key: SecretStr | None, mirror_prefix: str = "") -> None:
        self._secret = None if key is None else key.get_secret_value().encode()
        self._mirror_prefix = mirror_prefix
        self._lock = threading.Lock()
        self._keys: dict[bytes, AESGCM] = {}  # epoch -> its key, for opening
        self._epoch, self._aead, self._left = b"", None, 0

    @classmethod
    def for_stages(cls, receiver: ReceiverConfig) -> TenantSeal:
        """The seal a consuming stage opens raw messages with: ``receiver.stamp_key`` and
        ``receiver.mirror_prefix``."""
        return cls(receiver.stamp_key, receiver.mirror_prefix)

    @property
    def active(self) -> bool:
        return self._secret is not None

    def _derive(self, epoch: bytes) -> AESGCM:
        assert self._secret is not None
        hkdf = HKDF(algorithm=SHA256(), length=32, salt=epoch, info=INFO)
        return AESGCM(hkdf.derive(self._secret))

    def _sealing_key(self) -> tuple[bytes, AESGCM]:
        with self._lock:  # receivers seal from several threads
            if self._aead is None or self._left <= 0:
                self._epoch = os.urandom(EPOCH_BYTES)
                self._aead, self._left = self._derive(self._epoch), EPOCH_MESSAGES
            self._left -= 1
            return self._epoch, self._aead

    def sealed(self, output: Output) -> Output:
        """``output`` with its value sealed (unchanged when there is no key)."""
        if self._secret is None:
            return output
        epoch, aead = self._sealing_key()
        nonce = os.urandom(NONCE_BYTES)
        aad = associated_data(output.topic, output.key, output.headers)
        value = b"".join((HEAD, epoch, nonce, aead.encrypt(nonce, output.value, aad)))
        return Output(output.topic, output.key, value, output.headers)

    def open(self, message: Message, stage: str) -> Opened:
        """The value ``stage`` may parse, and whether its tenant is trusted (see the table
        above); :class:`BrokenSeal` for a sealed message that does not open."""
        value = message.value
        if self._secret is None:
            if value and value.startswith(MAGIC):  # a receiver has a key, this stage none
                BROKEN.labels(stage).inc()
                raise BrokenSeal(f"sealed {message.topic} message, and this observer process "
                                 "has no receiver.stamp_key: give every process the same key")
            return Opened(value, True)
        if value is None or not value.startswith(MAGIC):
            UNSEALED.labels(stage).inc()
            return Opened(value, False)
        try:
            return Opened(self._plaintext(message), True)
        except BrokenSeal:
            BROKEN.labels(stage).inc()
            raise

    def _plaintext(self, message: Message) -> bytes:
        value, where = message.value, f"sealed {message.topic} message"
        # The topic the source's receiver sealed it for (a mirror renamed it).
        topic = message.topic
        if self._mirror_prefix and topic.startswith(self._mirror_prefix):
            topic = topic[len(self._mirror_prefix):]
        if not value.startswith(HEAD):
            version = value[len(MAGIC):len(MAGIC) + 1].hex() or "none"
            raise BrokenSeal(f"{where} has format version {version}, this observer opens "
                             f"version {VERSION}")
        if len(value) < OVERHEAD:
            raise BrokenSeal(f"{where} is truncated ({len(value)} bytes)")
        start = len(HEAD)
        epoch = value[start:start + EPOCH_BYTES]
        nonce = value[start + EPOCH_BYTES:start + EPOCH_BYTES + NONCE_BYTES]
        known = self._keys.get(epoch)
        aead = known or self._derive(epoch)
        try:
            plain = aead.decrypt(nonce, memoryview(value)[start + EPOCH_BYTES + NONCE_BYTES:],
                                 associated_data(topic, message.key, message.headers))
        except InvalidTag:
            raise BrokenSeal(f"{where} does not open: forged, changed, moved from another "
                             "topic (a mirrored topic needs receiver.mirror_prefix), or sealed "
                             "with another receiver.stamp_key") from None
        if known is None:
            with self._lock:
                self._keys[epoch] = aead
                while len(self._keys) > _KEPT_EPOCHS:
                    del self._keys[next(iter(self._keys))]
        return plain


def with_seal_key(cfg: ObserverConfig) -> ObserverConfig:
    """``cfg`` with a generated ``receiver.stamp_key`` where one is needed and none is set:
    the embedded broker (anyone local can read and write it) with tenants or a receiver token.

    The key is random; in embedded durable mode it is kept (mode 0600) in
    ``kafka.embedded_state_dir`` beside the spool, else it lives only in this process. It is
    never logged.

    >>> from observer.config import ObserverConfig
    >>> plain = ObserverConfig()
    >>> with_seal_key(plain) is plain  # no tenancy: nothing to protect
    True
    >>> cfg = ObserverConfig(receiver={"auth_token": "t0ken"}, kafka={"embedded_durable": False})
    >>> len(with_seal_key(cfg).receiver.stamp_key.get_secret_value()) >= 32
    True
    """
    receiver = cfg.receiver
    needed = cfg.kafka.embedded and (receiver.tenants or receiver.auth_token is not None)
    if receiver.stamp_key is not None or not needed:
        return cfg
    state = cfg.kafka.durable_state_dir
    key = secrets.token_urlsafe(32) if state is None else _kept_key(state)
    return cfg.model_copy(
        update={"receiver": receiver.model_copy(update={"stamp_key": SecretStr(key)})}
    )


def _kept_key(directory: Path) -> str:
    """The key kept in ``directory``, created (owner-only, fsynced) on first use."""
    path = directory / KEY_FILE
    try:
        kept = path.read_text().strip()
        if len(kept) >= 32:
            return kept
    except FileNotFoundError:
        pass
    directory.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    write_atomically(path, key.encode(), mode=0o600)
    return key
