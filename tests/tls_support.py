"""Test certificates made on the spot with ``cryptography``: a CA, server and client certificates.

EC P-256 keys: generating one takes well under a millisecond, so every test can have its own.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Authority:
    """A certificate authority that issues certificates."""

    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str = "observer test CA") -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            _builder(subject, subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(name, key, cert)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, common_name: str, *, client: bool = False) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) for a server on 127.0.0.1/localhost, or a client."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = _builder(subject, self.cert.subject, key.public_key()).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False
        )
        if not client:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _builder(subject: x509.Name, issuer: x509.Name, public_key: object) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


@dataclass(frozen=True)
class Pki:
    """Files of one test PKI: the CA, a server certificate and a client certificate."""

    ca: Authority
    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def rotate_server(self, common_name: str) -> None:
        """Replace the server certificate and key in place, as cert-manager does."""
        cert, key = self.ca.issue(common_name)
        self.server_key.write_bytes(key)
        self.server_cert.write_bytes(cert)


def make_pki(directory: Path, server_name: str = "observer test server") -> Pki:
    """A CA and its server and client certificates, written as PEM files under ``directory``."""
    ca = Authority.create()
    directory.mkdir(parents=True, exist_ok=True)
    names = ("ca", "server", "server-key", "client", "client-key")
    paths = {n: directory / f"{n}.pem" for n in names}
    paths["ca"].write_bytes(ca.pem)
    server_cert, server_key = ca.issue(server_name)
    paths["server"].write_bytes(server_cert)
    paths["server-key"].write_bytes(server_key)
    client_cert, client_key = ca.issue("observer test client", client=True)
    paths["client"].write_bytes(client_cert)
    paths["client-key"].write_bytes(client_key)
    return Pki(
        ca, paths["ca"], paths["server"], paths["server-key"], paths["client"], paths["client-key"]
    )


def common_name(pem: bytes) -> str:
    """The subject common name of a PEM or DER certificate."""
    cert = x509.load_pem_x509_certificate(pem) if pem.startswith(b"-----") else (
        x509.load_der_x509_certificate(pem)
    )
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


class TlsTerminator:
    """A TLS front for a plain TCP server (a TLS Kafka listener in front of Tansu, which does
    not serve TLS itself): accepts TLS on a free loopback port, forwards bytes to ``upstream``.

    With ``client_ca`` the handshake requires a client certificate signed by it. ``handshakes``
    lists the subject common name each accepted client presented ("" when none).
    """

    def __init__(self, upstream: tuple[str, int], cert: Path, key: Path,
                 client_ca: Path | None = None) -> None:
        import socket
        import ssl
        import threading

        self.upstream = upstream
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        if client_ca is not None:
            self.context.load_verify_locations(client_ca)
            self.context.verify_mode = ssl.CERT_REQUIRED
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.handshakes: list[str] = []
        self.refused = 0
        self._thread = threading.Thread(target=self._accept, name="tls-terminator", daemon=True)

    def start(self) -> TlsTerminator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: object) -> None:
        import socket
        import ssl
        import threading

        try:
            tls = self.context.wrap_socket(raw, server_side=True)  # type: ignore[arg-type]
        except (ssl.SSLError, OSError):
            self.refused += 1
            raw.close()  # type: ignore[attr-defined]
            return
        peer = tls.getpeercert(binary_form=True)
        self.handshakes.append(common_name(peer) if peer else "")
        plain = socket.create_connection(self.upstream)

        def pump(source: object, sink: object) -> None:
            try:
                while data := source.recv(65536):  # type: ignore[attr-defined]
                    sink.sendall(data)  # type: ignore[attr-defined]
            except OSError:
                pass
            finally:
                for s in (source, sink):
                    try:
                        s.close()  # type: ignore[attr-defined]
                    except OSError:
                        pass

        threading.Thread(target=pump, args=(plain, tls), daemon=True).start()
        pump(tls, plain)
