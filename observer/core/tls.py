"""TLS for observer's listeners, from PEM files that are rotated in place.

cert-manager and the SPIFFE helper replace certificate files on disk while the server runs;
a listener must then serve the new certificate without a restart. :class:`CertificateFiles`
re-reads a listener's files (``TLSConfig``) when their modification time, size or inode
change, checked at most once a second, and hands out the newest good set. A set that does not
load (a half-written file, a key that does not match the certificate yet) is skipped and
logged once: the listener keeps serving the previous one.

Two consumers:

- :func:`server_context`, the ``ssl.SSLContext`` uvicorn serves with: its ``sni_callback``
  (called on every handshake, SNI or not) moves the connection to the newest context;
- :func:`grpc_credentials`, gRPC's dynamic server credentials, whose fetcher gRPC calls before
  every handshake.

With ``client_ca_file`` a client must present a certificate signed by one of those CAs.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from observer.core.config import TLSConfig

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 1.0
"""Files are looked at (one stat each) at most this often, however many handshakes."""


class TLSError(RuntimeError):
    """A listener's certificate files cannot be loaded at start; the message names them."""


@dataclass(frozen=True)
class Certificates:
    """One loaded set of a listener's files, and a server context built from it."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None
    context: ssl.SSLContext


Signature = tuple[tuple[int, int, int, int], ...]


class CertificateFiles:
    """The certificate, key and (optional) client CA files of one listener.

    ``name`` is the configuration section (``receiver.tls``) that errors and logs name.
    Loading fails at construction with :class:`TLSError`; later, failures keep the last good
    set. The key is never logged.

    >>> CertificateFiles(TLSConfig(cert_file="/no/c.pem", key_file="/no/k.pem"), "admin.tls")
    Traceback (most recent call last):
    ...
    observer.core.tls.TLSError: admin.tls: cannot load cert_file=/no/c.pem, key_file=/no/k.pem: [Errno 2] No such file or directory: '/no/c.pem'
    """

    def __init__(
        self,
        tls: TLSConfig,
        name: str,
        check_interval_s: float = CHECK_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if tls.cert_file is None or tls.key_file is None:
            raise TLSError(f"{name}: cert_file and key_file are required to serve TLS")
        self.name = name
        self.paths: dict[str, Path] = {"cert_file": tls.cert_file, "key_file": tls.key_file}
        if tls.client_ca_file is not None:
            self.paths["client_ca_file"] = tls.client_ca_file
        self._interval = check_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._checked = clock()
        signature = self._signature()
        try:
            self._current = self._load()
        except (OSError, ssl.SSLError, ValueError) as e:
            files = ", ".join(f"{k}={p}" for k, p in self.paths.items())
            raise TLSError(f"{self.name}: cannot load {files}: {e}") from None
        self._seen = signature

    @property
    def mutual(self) -> bool:
        """Whether clients must present a certificate (``client_ca_file`` is set)."""
        return "client_ca_file" in self.paths

    def current(self) -> Certificates:
        """The newest set that loaded; re-reads the files when they changed."""
        with self._lock:
            now = self._clock()
            if now - self._checked < self._interval:
                return self._current
            self._checked = now
            signature = self._signature()
            if signature == self._seen:
                return self._current
            try:
                loaded = self._load()
            except (OSError, ssl.SSLError, ValueError) as e:
                self._failed(signature, e)
                return self._current
            if self._signature() != signature:
                return self._current  # still being written: look again next time
            self._current, self._seen = loaded, signature
            log.info("%s: loaded the rotated certificate files", self.name)
            return loaded

    def _failed(self, signature: Signature, error: Exception) -> None:
        # Logged once per change of the files, not once per handshake.
        log.warning("%s: keeping the previous certificates: the new files do not load (%s)",
                    self.name, error)
        self._seen = signature

    def _signature(self) -> Signature:
        """What changes when a file is rewritten or replaced; os.stat follows symlinks, so
        Kubernetes' swap of the ``..data`` link counts too. A missing file (for a moment,
        during rotation) has its own signature."""
        signature = []
        for path in self.paths.values():
            try:
                s = os.stat(path)
            except OSError:
                signature.append((-1, -1, -1, -1))
                continue
            signature.append((s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns))
        return tuple(signature)

    def _load(self) -> Certificates:
        """Read the files and build a context from them; the bytes must not change meanwhile,
        so the context and the bytes (which gRPC serves) are the same certificates."""
        before = {k: p.read_bytes() for k, p in self.paths.items()}
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.paths["cert_file"], self.paths["key_file"])
        if self.mutual:
            context.load_verify_locations(cadata=before["client_ca_file"].decode("ascii"))
            context.verify_mode = ssl.CERT_REQUIRED
        after = {k: p.read_bytes() for k, p in self.paths.items()}
        if after != before:
            raise ValueError("the files changed while being read")
        return Certificates(
            before["cert_file"], before["key_file"], before.get("client_ca_file"), context
        )


def certificate_files(tls: TLSConfig, name: str) -> CertificateFiles | None:
    """The listener's :class:`CertificateFiles`, or None when its TLS is off.

    >>> certificate_files(TLSConfig(), "receiver.tls") is None
    True
    """
    return CertificateFiles(tls, name) if tls.enabled else None


def server_context(files: CertificateFiles) -> ssl.SSLContext:
    """The context a TLS server listens with; every handshake gets the newest certificates.

    The listener keeps this first context; its ``sni_callback`` (which OpenSSL calls on every
    handshake, with or without SNI) moves the connection to the context of the newest files.
    """
    listening = files.current().context

    def newest(connection: Any, _server_name: str | None, _context: ssl.SSLContext) -> None:
        latest = files.current().context
        if latest is not listening:
            connection.context = latest

    listening.sni_callback = newest
    return listening


def grpc_credentials(files: CertificateFiles) -> Any:
    """``grpc.ServerCredentials`` serving the newest certificates of ``files``.

    gRPC calls the fetcher before every handshake; it answers None (no change) unless the
    files changed since the last answer.
    """
    import grpc

    def configuration(c: Certificates) -> Any:
        return grpc.ssl_server_certificate_configuration(
            [(c.private_key, c.cert_chain)], root_certificates=c.client_ca
        )

    first = files.current()
    served = [first]

    def fetch() -> Any:
        try:
            latest = files.current()
        except Exception:  # noqa: BLE001 (an error here would fail the handshake)
            log.exception("%s: certificate check failed", files.name)
            return None
        if latest is served[0]:
            return None
        served[0] = latest
        return configuration(latest)

    return grpc.dynamic_ssl_server_credentials(
        configuration(first), fetch, require_client_authentication=files.mutual
    )
