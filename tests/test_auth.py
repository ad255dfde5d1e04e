"""Authentication fails closed: empty tokens are refused at load, an empty offered token
matches nothing, and a request with two ``Authorization`` headers is refused by every
listener (OTLP/HTTP, OTLP/gRPC, the KServe intake), whatever the headers say."""

from __future__ import annotations

import socket
from pathlib import Path

import grpc
import httpx
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SpanExportResult
from pydantic import SecretStr

from observer.collectors.common.tenancy import Authenticator
from observer.config import load_config
from observer.core.config import ConfigError, KafkaConfig
from observer.core.topics import Topics
from tests.collectors_support import drain, intake_server, receivers
from tests.test_collectors_otlp_grpc import sdk_spans

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
EMPTY_TRACES = ExportTraceServiceRequest().SerializeToString()


@pytest.mark.parametrize(
    "yaml_text, env, field",
    [
        ("receiver:\n  auth_token: ''\n", {}, "receiver.auth_token is empty"),
        ("receiver:\n  auth_token: '   '\n", {}, "receiver.auth_token is empty"),
        ("", {"OBSERVER_RECEIVER__AUTH_TOKEN": ""}, "receiver.auth_token is empty"),
        ("", {"OBSERVER_RECEIVER__AUTH_TOKEN": " \t"}, "receiver.auth_token is empty"),
        ("admin:\n  auth_token: ''\n", {}, "admin.auth_token is empty"),
        ("", {"OBSERVER_ADMIN__AUTH_TOKEN": ""}, "admin.auth_token is empty"),
        ("receiver:\n  tenants:\n    acme: ''\n", {}, "receiver.tenants['acme'] is empty"),
        ("", {"OBSERVER_RECEIVER__TENANTS": '{"acme": " "}'}, "receiver.tenants['acme'] is empty"),
        ("receiver:\n  tenants:\n    '': t-x\n", {}, "a tenant name is empty"),
    ],
)
def test_empty_tokens_are_refused_at_load(
    tmp_path: Path, yaml_text: str, env: dict[str, str], field: str
) -> None:
    f = tmp_path / "observer.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError) as raised:
        load_config(f, env=env)
    assert field in str(raised.value)


def test_token_errors_never_show_the_token(tmp_path: Path) -> None:
    f = tmp_path / "observer.yaml"
    f.write_text("receiver:\n  auth_token: \"s3cret-value\\n\"\n")
    with pytest.raises(ConfigError, match="receiver.auth_token has leading or trailing") as raised:
        load_config(f, env={})
    assert "s3cret-value" not in str(raised.value)
    shared = {"OBSERVER_RECEIVER__TENANTS": '{"acme": "t-shared", "globex": "t-shared"}'}
    with pytest.raises(ConfigError, match=r"tenants\['globex'\] has the same token as") as raised:
        load_config(None, env=shared)
    assert "t-shared" not in str(raised.value)


def test_set_tokens_still_load(tmp_path: Path) -> None:
    cfg = load_config(None, env={
        "OBSERVER_RECEIVER__AUTH_TOKEN": "r-token",
        "OBSERVER_RECEIVER__TENANTS": '{"acme": "t-acme"}',
        "OBSERVER_ADMIN__AUTH_TOKEN": "a-token",
    })
    assert cfg.receiver.auth_token is not None and cfg.admin.auth_token is not None
    assert cfg.receiver.tenants["acme"].get_secret_value() == "t-acme"


def test_an_empty_token_never_matches() -> None:
    # Built around the configuration's checks: the authenticator refuses them itself too.
    with pytest.raises(ValueError, match="empty bearer token for acme"):
        Authenticator(None, {"acme": SecretStr("")})
    with pytest.raises(ValueError, match="empty bearer token for auth_token"):
        Authenticator(SecretStr(" "), {})
    auth = Authenticator(SecretStr("s3cret"), {})
    for offered in (["Bearer "], ["Bearer"], ["Bearer  \t"], [""], []):
        assert auth.tenant_of(offered) is None, offered


def raw_post(base_url: str, path: str, headers: list[bytes], body: bytes) -> bytes:
    """The status line of a POST sent byte for byte (httpx refuses to send ``Bearer ``)."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode()
                  + b"\r\nContent-Type: application/x-protobuf\r\nConnection: close\r\n"
                  + b"".join(h + b"\r\n" for h in headers)
                  + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        return s.makefile("rb").readline()


def test_http_refuses_an_empty_bearer(kafka_config: KafkaConfig, topics: Topics) -> None:
    with receivers(kafka_config, topics, auth_token="s3cret") as r:
        for header in (b"Bearer ", b"Bearer", b"bearer \t ", b"Bearer \t"):
            status = raw_post(r.http, "/v1/traces", [b"Authorization: " + header], EMPTY_TRACES)
            assert status.startswith(b"HTTP/1.1 401"), header
        ok = raw_post(r.http, "/v1/traces", [b"Authorization: Bearer s3cret"], EMPTY_TRACES)
        assert ok.startswith(b"HTTP/1.1 200")


def _two_headers(first: str, second: str) -> list[tuple[str, str]]:
    return [("content-type", "application/x-protobuf"),
            ("authorization", first), ("authorization", second)]


@pytest.mark.parametrize("settings", [{"auth_token": "s3cret"}, {}], ids=["token", "no-auth"])
def test_http_refuses_two_authorization_headers(
    kafka_config: KafkaConfig, topics: Topics, settings: dict[str, str]
) -> None:
    with receivers(kafka_config, topics, **settings) as r:
        url = f"{r.http}/v1/traces"
        # HTTP used to read the first header: a right one first got through.
        for first, second in (("Bearer s3cret", "Bearer guess"), ("Bearer s3cret",) * 2):
            answer = httpx.post(url, content=EMPTY_TRACES, headers=_two_headers(first, second))
            assert answer.status_code == 401
            assert "duplicate Authorization headers" in answer.text
        one = httpx.post(url, content=EMPTY_TRACES, headers=[
            ("content-type", "application/x-protobuf"), ("authorization", "Bearer s3cret")])
        assert one.status_code == 200


@pytest.mark.parametrize("settings", [{"auth_token": "s3cret"}, {}], ids=["token", "no-auth"])
def test_grpc_refuses_two_authorization_entries(
    kafka_config: KafkaConfig, topics: Topics, settings: dict[str, str]
) -> None:
    with receivers(kafka_config, topics, **settings) as r, grpc.insecure_channel(r.grpc) as ch:
        export = ch.unary_unary(TRACE_EXPORT)
        # gRPC used to read the last entry: a right one last got through.
        for first, second in (("Bearer guess", "Bearer s3cret"), ("Bearer s3cret",) * 2):
            with pytest.raises(grpc.RpcError) as refused:
                export(EMPTY_TRACES, timeout=10,
                       metadata=[("authorization", first), ("authorization", second)])
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
            assert "duplicate Authorization headers" in refused.value.details()
        export(EMPTY_TRACES, timeout=10, metadata=[("authorization", "Bearer s3cret")])


def test_real_exporters_with_one_token_still_work(
    kafka_config: KafkaConfig, topics: Topics
) -> None:
    auth = {"authorization": "Bearer s3cret"}
    with receivers(kafka_config, topics, auth_token="s3cret") as r:
        for exporter in (GrpcSpanExporter(endpoint=r.grpc, insecure=True, headers=auth),
                         HttpSpanExporter(endpoint=f"{r.http}/v1/traces", headers=auth)):
            assert exporter.export(sdk_spans(traces=1)) is SpanExportResult.SUCCESS
            exporter.shutdown()
    assert len(drain(kafka_config, topics.spans, 2)) == 2


def test_kserve_intake_refuses_two_authorization_headers(
    kafka_config: KafkaConfig, topics: Topics
) -> None:
    with intake_server(kafka_config, topics, tenants={"acme": SecretStr("t-acme")}) as url:
        answer = httpx.post(url, content=b"{}", headers=[
            ("authorization", "Bearer t-acme"), ("authorization", "Bearer t-acme")])
    assert answer.status_code == 401 and "duplicate Authorization headers" in answer.text
