"""Kafka does not bypass the receivers' authentication.

Tansu 0.6 cannot authenticate clients with its memory engine (SCRAM users are not stored, no
PLAIN), so the embedded broker is kept on loopback, and a tenant written to Kafka is believed
only under the seal of a receiver of this deployment (:mod:`observer.collectors.common.tenant_seal`): a
direct write claiming a tenant is processed as the empty tenant, and a sealed message changed
or forged is dead-lettered. The seal also encrypts: tests/test_raw_topic_encryption.py checks
that a local reader of the broker sees no prompt.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import pytest
from kafka import KafkaProducer
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk.trace.export import SpanExportResult
from prometheus_client import REGISTRY
from pydantic import SecretStr

from observer.collectors.kserve.cloud_events import CloudEvent, to_kafka
from observer.collectors.kserve.intake import REQUEST_TYPE, RESPONSE_TYPE
from observer.collectors.kserve.pairing import PredictionPairer
from observer.collectors.normalize.normalizer import Normalizer
from observer.collectors.common.tenancy import TENANT_ATTRIBUTE
from observer.collectors.common.tenant_seal import HEAD, KEY_FILE, OVERHEAD, TenantSeal, with_seal_key
from observer.collectors.paths.trace_grouping import FakeClock, TraceGrouper
from observer.core.broker import BrokerError, EmbeddedBroker
from observer.core.bus import Message, Output
from observer.config import ObserverConfig, load_config
from observer.collectors.kserve.config import KServeConfig
from observer.collectors.paths.config import PathsConfig
from observer.core.config import ConfigError, KafkaConfig
from observer.core.records import LLMCall, PathRecord, Prediction, decode
from observer.core.topics import Topics
from tests.collectors_support import drain, receivers
from tests.test_collectors_otlp_grpc import sdk_spans

KEY = SecretStr("lockdown-test-stamp-key-0123456789")


# -- the embedded broker stays on loopback -------------------------------------------------------


@pytest.mark.parametrize("listen", ["0.0.0.0:9092", "10.1.2.3:9092", "[::]:9092", "kafka:9092"])
def test_non_loopback_embedded_listen_is_refused_at_load(tmp_path: Path, listen: str) -> None:
    f = tmp_path / "observer.yaml"
    f.write_text(f"kafka:\n  embedded_listen: '{listen}'\n")
    for path, env in ((f, {}), (None, {"OBSERVER_KAFKA__EMBEDDED_LISTEN": listen})):
        with pytest.raises(ConfigError) as raised:
            load_config(path, env=env)
        message = str(raised.value)
        assert "kafka.embedded_listen" in message and "loopback" in message
        assert "kafka.bootstrap_servers" in message  # what to do instead: a real Kafka


@pytest.mark.parametrize("listen", ["127.0.0.1:9092", "127.0.0.2:19092", "[::1]:9092",
                                    "localhost:9092"])
def test_loopback_embedded_listen_is_accepted(listen: str) -> None:
    cfg = load_config(None, env={"OBSERVER_KAFKA__EMBEDDED_LISTEN": listen})
    assert cfg.kafka.embedded_listen == listen


def test_embedded_broker_itself_refuses_a_public_address() -> None:
    with pytest.raises(BrokerError, match="loopback"):
        EmbeddedBroker("0.0.0.0:19092")


def _outward_address() -> str | None:
    """This machine's address on its default route (no packet is sent), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: routing only
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_embedded_broker_is_unreachable_from_other_addresses(broker: EmbeddedBroker) -> None:
    address = _outward_address()
    if address is None:
        pytest.skip("this machine has no non-loopback address to try")
    with socket.socket() as s:
        s.settimeout(2)
        assert s.connect_ex((address, broker.port)) != 0
    with socket.create_connection(("127.0.0.1", broker.port), timeout=2):
        pass


# -- a tenant is believed only under a receiver's seal -------------------------------------------


def _forged_spans(tenant: str) -> bytes:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.extend([
        KeyValue(key="service.name", value=AnyValue(string_value="shop")),
        KeyValue(key=TENANT_ATTRIBUTE, value=AnyValue(string_value=tenant)),
    ])
    span = rs.scope_spans.add().spans.add(
        trace_id=os.urandom(16), span_id=os.urandom(8), name="chat m1",
        start_time_unix_nano=1, end_time_unix_nano=2,
    )
    span.attributes.extend([
        KeyValue(key="gen_ai.operation.name", value=AnyValue(string_value="chat")),
        KeyValue(key="gen_ai.request.model", value=AnyValue(string_value="m1")),
    ])
    return request.SerializeToString()


def _unsealed(stage: str) -> float:
    return REGISTRY.get_sample_value("observer_unsealed_messages_total", {"stage": stage}) or 0.0


def test_direct_writes_to_kafka_cannot_claim_a_tenant(
    kafka_config: KafkaConfig, topics: Topics
) -> None:
    tenants = {"a": SecretStr("tok-a"), "b": SecretStr("tok-b")}
    with receivers(kafka_config, topics, tenants=tenants, stamp_key=KEY) as r:
        exporter = OTLPSpanExporter(endpoint=f"{r.http}/v1/traces",
                                    headers={"authorization": "Bearer tok-b"})
        assert exporter.export(sdk_spans(traces=1)) is SpanExportResult.SUCCESS
        exporter.shutdown()
    [genuine] = drain(kafka_config, topics.spans, 1)
    assert genuine.value.startswith(HEAD) and not genuine.headers

    producer = KafkaProducer(bootstrap_servers=kafka_config.servers)
    # Claiming b: with no seal, then with b's genuine seal head on another value, and with a
    # made-up seal: the first is untrusted, the other two do not open (dead letters).
    producer.send(topics.spans, _forged_spans("b")).get(30)
    producer.send(topics.spans, genuine.value[:OVERHEAD] + _forged_spans("b"),
                  key=genuine.key).get(30)
    producer.send(topics.spans, HEAD + os.urandom(OVERHEAD) + _forged_spans("b")).get(30)
    producer.close()
    messages = [Message(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp,
                        tuple(m.headers)) for m in drain(kafka_config, topics.spans, 4)]
    assert len(messages) == 4
    opened = TenantSeal(KEY).open(next(m for m in messages if m.value == genuine.value), "t")
    assert opened.trusted
    genuine_trace = {s.trace_id.hex() for rs in ExportTraceServiceRequest.FromString(
        opened.value).resource_spans for ss in rs.scope_spans for s in ss.spans}

    before = _unsealed("normalizer")
    keys = ["tenant", "service", "model"]
    out = Normalizer(topics, segment_keys=keys, seal=TenantSeal(KEY)).process(messages)
    llm = [decode(o.value) for o in out if o.topic == topics.llm]
    assert all(isinstance(rec, LLMCall) for rec in llm)
    tenants_seen = {(rec.trace_id in genuine_trace, rec.tenant) for rec in llm}
    assert tenants_seen == {(True, "b"), (False, "")}
    assert _unsealed("normalizer") - before == 1
    dead = [json.loads(o.value) for o in out if o.topic == topics.dead_letter]
    assert [d["reason"] for d in dead] == ["invalid_value", "invalid_value"]
    # Keyed by tenant too: the forged calls are not written under b's key.
    assert {o.key for o in out if o.topic == topics.llm} == {
        f"{rec.tenant}|{rec.service}|{rec.model}" for rec in llm
    }

    grouper = TraceGrouper(topics, PathsConfig(grace_s=0), clock=FakeClock(),
                           segment_keys=["tenant", "service"], seal=TenantSeal(KEY))
    assert len([o for o in grouper.process(messages) if o.topic == topics.dead_letter]) == 2
    grouper.clock.now = 1000
    paths = [decode(o.value) for o in grouper.tick()]
    assert all(isinstance(p, PathRecord) for p in paths)
    assert {(p.trace_id in genuine_trace, p.tenant) for p in paths} == {(True, "b"), (False, "")}

    # Without a key (a real Kafka, its own ACLs), Kafka writers are trusted as before (and
    # sealed messages are not even protobuf to such a stage: dead letters).
    plain = [m for m in messages if not m.value.startswith(HEAD)]
    assert {rec.tenant for rec in (decode(o.value) for o in Normalizer(topics).process(plain)
                                   if o.topic == topics.llm)} == {"b"}


def _kserve_message(kind: str, tenant: str, data: dict) -> tuple[list, bytes]:
    event = CloudEvent({
        "specversion": "1.0", "id": "r-1", "source": "http://localhost:9081/",
        "type": REQUEST_TYPE if kind == "request" else RESPONSE_TYPE,
        "inferenceservicename": "iris", "namespace": "default", "component": "predictor",
        "observertenant": tenant,
    }, json.dumps(data).encode(), "application/json")
    headers, value = to_kafka(event)
    return list(headers), value


def test_direct_kserve_events_cannot_claim_a_tenant(topics: Topics) -> None:
    seal = TenantSeal(KEY)
    forged = [
        Message(topics.kserve_events, 0, i, b"r-1", value, 0, tuple(headers))
        for i, (headers, value) in enumerate((
            _kserve_message("request", "b", {"instances": [[1.0]]}),
            _kserve_message("response", "b", {"predictions": [1]}),
        ))
    ]
    stage = PredictionPairer(topics, KServeConfig(), clock=FakeClock(), seal=seal)
    [prediction] = [decode(o.value) for o in stage.process(forged)]
    assert isinstance(prediction, Prediction) and prediction.tenant == ""
    # Sealed as a receiver seals them, the same events keep their tenant.
    sealed = []
    for m in forged:
        o = seal.sealed(Output(m.topic, m.key, m.value, m.headers))
        sealed.append(Message(o.topic, 0, m.offset, m.key, o.value, 0, o.headers))
    stage = PredictionPairer(topics, KServeConfig(), clock=FakeClock(), seal=seal)
    [prediction] = [decode(o.value) for o in stage.process(sealed)]
    assert prediction.tenant == "b"


# -- the per-start key ---------------------------------------------------------------------------


def test_embedded_tenancy_gets_a_kept_owner_only_key(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = ObserverConfig(receiver={"tenants": {"a": "tok-a"}},
                         kafka={"embedded_state_dir": state})
    first = with_seal_key(cfg).receiver.stamp_key
    assert first is not None and len(first.get_secret_value()) >= 32
    kept = state / KEY_FILE
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    # A restart reads the same key back: spooled messages replayed later still verify.
    assert with_seal_key(cfg).receiver.stamp_key == first
    # Never shown: `observer config` prints the model with secrets masked.
    assert first.get_secret_value() not in json.dumps(with_seal_key(cfg).model_dump(mode="json"))
    # Memory-only: a fresh key each start, nothing written.
    memory = ObserverConfig(receiver={"tenants": {"a": "tok-a"}},
                            kafka={"embedded_durable": False, "embedded_state_dir": tmp_path / "m"})
    assert with_seal_key(memory).receiver.stamp_key != with_seal_key(memory).receiver.stamp_key
    assert not (tmp_path / "m").exists()
    # A configured key wins; a real Kafka without one trusts its own ACLs.
    configured = ObserverConfig(receiver={"tenants": {"a": "tok-a"}, "stamp_key": KEY},
                                kafka={"embedded_state_dir": state})
    assert with_seal_key(configured).receiver.stamp_key == KEY
    real = ObserverConfig(receiver={"tenants": {"a": "tok-a"}},
                          kafka={"bootstrap_servers": "k:9092"})
    assert with_seal_key(real).receiver.stamp_key is None


def test_a_short_stamp_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="receiver.stamp_key is too short"):
        load_config(None, env={"OBSERVER_RECEIVER__STAMP_KEY": "short"})
