"""The KServe inference logger intake: CloudEvents from the CloudEvents SDK (binary and
structured HTTP modes, as KServe's logger sends them) into the receiver on the real broker,
then the pairing stage into ``observer.predictions/v1`` records."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent as SdkEvent
from pydantic import SecretStr

from observer.collectors.kserve.cloud_events import (
    CloudEvent,
    CloudEventError,
    events_from_http,
    from_kafka,
    to_kafka,
)
from observer.collectors.kserve.inference_protocol import Limits, PayloadError, parse
from observer.collectors.kserve.intake import REQUEST_TYPE, RESPONSE_TYPE
from observer.collectors.kserve.pairing import PredictionPairer
from observer.collectors.paths.trace_grouping import FakeClock
from observer.core.bus import Message
from observer.config import ObserverConfig
from observer.collectors.kserve.config import KServeConfig
from observer.collectors.receiver.config import ReceiverConfig
from observer.core.config import AdminConfig, KafkaConfig
from observer.core.records import Prediction, decode
from observer.core.topics import Topics
from observer.runtime import Runtime
from tests.collectors_support import drain, intake_server, messages_of, sample

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def kserve_event(
    kind: str,
    request_id: str,
    data: Any,
    *,
    service: str = "sklearn-iris",
    at: datetime = T0,
    content_type: str = "application/json",
    **extensions: str,
) -> SdkEvent:
    """An event with the attributes KServe's logger (pkg/logger/worker.go) sets."""
    attributes = {
        "type": REQUEST_TYPE if kind == "request" else RESPONSE_TYPE,
        "source": "http://localhost:9081/",
        "id": request_id,
        "time": at,
        "datacontenttype": content_type,
        "inferenceservicename": service,
        "namespace": "default",
        "component": "predictor",
        "endpoint": "default",
        "metadata": json.dumps({"X-Request-Id": ["a b%c"]}),
        **extensions,
    }
    return SdkEvent(attributes=attributes, data=data)


def post(url: str, event: SdkEvent, mode: str = "binary", token: str | None = None) -> httpx.Response:
    message = (ce_http.to_binary_event if mode == "binary" else ce_http.to_structured_event)(event)
    headers = dict(message.headers)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(url, content=message.body, headers=headers, timeout=30)


def pair(messages: list[Message], topics: Topics, **cfg: Any) -> tuple[list[Prediction], PredictionPairer, FakeClock]:
    clock = FakeClock()
    stage = PredictionPairer(topics, KServeConfig(**cfg), clock=clock)
    out = [decode(o.value) for o in stage.process(messages)]
    return out, stage, clock  # type: ignore[return-value]


# -- the endpoint, on the real broker ------------------------------------------------------------


def test_binary_and_structured_events_pair_into_predictions(kafka_config: KafkaConfig, topics: Topics) -> None:
    with intake_server(kafka_config, topics) as url:
        # v1 in binary mode (what KServe sends), response first: the logger's workers race.
        later = T0 + timedelta(milliseconds=42)
        assert post(url, kserve_event("response", "r-1", {"predictions": [1, 2]}, at=later)).status_code == 200
        answer = post(url, kserve_event("request", "r-1", {"instances": [[6.8, 2.8], [6.0, 3.4]]}))
        assert answer.status_code == 200 and answer.json() == {"accepted": 1}
        # v2 in structured mode.
        v2_request = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [0.1, 0.2, 0.3]}]}
        v2_response = {"model_name": "iris-v2", "model_version": "7",
                       "outputs": [{"name": "label", "shape": [1], "datatype": "INT64", "data": [2]}]}
        assert post(url, kserve_event("request", "r-2", v2_request), "structured").status_code == 200
        assert post(url, kserve_event("response", "r-2", v2_response, at=later), "structured").status_code == 200

    raw = messages_of(kafka_config, topics.kserve_events, 4)
    assert len(raw) == 4
    assert {m.key for m in raw} == {b"r-1", b"r-2"}
    # The topic is CloudEvents' Kafka binary mode: the SDK's own Kafka binding reads it back.
    sdk = ce_kafka.from_binary(
        ce_kafka.KafkaMessage(headers=dict(raw[0].headers), key=raw[0].key, value=raw[0].value), JSONFormat()
    )
    assert sdk.get_extension("inferenceservicename") == "sklearn-iris"
    assert json.loads(sdk.get_extension("metadata")) == {"X-Request-Id": ["a b%c"]}  # percent-decoded

    predictions, _, _ = pair(raw, topics)
    by_id = {p.request_id: p for p in predictions}
    assert set(by_id) == {"r-1", "r-2"}
    v1, v2 = by_id["r-1"], by_id["r-2"]
    assert (v1.protocol, v1.service, v1.model, v1.namespace, v1.component, v1.endpoint) == (
        "v1", "sklearn-iris", "sklearn-iris", "default", "predictor", "default")
    assert v1.instances == 2 and v1.paired and v1.latency_ms == pytest.approx(42.0)
    assert v1.inputs == {"input.0": [6.8, 6.0], "input.1": [2.8, 3.4]}
    assert v1.outputs == {"prediction": [1, 2]}
    assert v1.time_unix_nano == int(T0.timestamp()) * 10**9
    assert (v2.protocol, v2.model, v2.model_version, v2.instances) == ("v2", "iris-v2", "7", 1)
    assert v2.inputs == {"x.0": [0.1], "x.1": [0.2], "x.2": [0.3]} and v2.outputs == {"label": [2]}


def test_refusals_name_the_problem(kafka_config: KafkaConfig, topics: Topics) -> None:
    with intake_server(kafka_config, topics) as url:
        not_ce = httpx.post(url, json={"instances": [[1]]}, timeout=10)
        assert not_ce.status_code == 400 and "not a CloudEvent" in not_ce.json()["message"]
        other = SdkEvent(attributes={"type": "com.example.other", "source": "/x", "id": "1"}, data={})
        wrong = post(url, other)
        assert wrong.status_code == 400 and "com.example.other" in wrong.json()["message"]
        no_id = httpx.post(url, content=b"{}", headers={
            "ce-specversion": "1.0", "ce-type": REQUEST_TYPE, "ce-source": "/x"}, timeout=10)
        assert no_id.status_code == 400 and "id" in no_id.json()["message"]
        broken = httpx.post(url, content=b"{not json", headers={
            "content-type": "application/cloudevents+json"}, timeout=10)
        assert broken.status_code == 400 and "not JSON" in broken.json()["message"]
    assert not drain(kafka_config, topics.kserve_events, 1, timeout_s=2)


def test_auth_and_tenant_stamping(kafka_config: KafkaConfig, topics: Topics) -> None:
    tenants = {"acme": SecretStr("t-acme")}
    with intake_server(kafka_config, topics, tenants=tenants) as url:
        event = kserve_event("request", "r-9", {"instances": [1]}, observertenant="globex")
        assert post(url, event).status_code == 401
        assert post(url, event, token="wrong").status_code == 401
        assert post(url, event, token="t-acme").status_code == 200
    [raw] = messages_of(kafka_config, topics.kserve_events, 1)
    assert from_kafka(raw.headers, raw.value).attributes["observertenant"] == "acme"
    # A lone request is held until its timeout, then written with the tenant it came under.
    predictions, stage, clock = pair([raw], topics, pair_timeout_s=1)
    assert predictions == []
    clock.now = 1
    [alone] = [decode(o.value) for o in stage.tick()]
    assert (alone.tenant, alone.paired, alone.outputs, alone.inputs) == ("acme", False, {}, {"input": [1]})


def test_runtime_runs_intake_and_pairing(kafka_config: KafkaConfig, free_port) -> None:
    cfg = ObserverConfig(
        kafka=kafka_config,
        receiver=ReceiverConfig(http_port=free_port(), grpc_port=free_port()),
        admin=AdminConfig(port=free_port()),
        kserve=KServeConfig(group_id="kserve-test"),
    )
    runtime = Runtime(cfg, ["collect", "predictions"]).start()
    try:
        assert runtime.wait_assigned(60)
        # One process: the consuming stage gives way to the receivers while they are busy.
        assert runtime.intake is not None
        assert runtime.runners["predictions"].yield_to == runtime.intake.busy
        url = runtime.endpoints()["kserve_logger"]
        assert post(url, kserve_event("request", "r-7", {"instances": [{"age": 41, "city": "Oslo"}]})).status_code == 200
        assert post(url, kserve_event("response", "r-7", {"predictions": [0.91]})).status_code == 200
        [record] = drain(kafka_config, Topics.from_config(kafka_config).predictions, 1, timeout_s=30)
    finally:
        runtime.stop()
    prediction = decode(record.value)
    assert isinstance(prediction, Prediction)
    assert record.key == b"sklearn-iris|sklearn-iris"  # segment: service|model
    assert prediction.inputs == {"age": [41], "city": ["Oslo"]} and prediction.outputs == {"prediction": [0.91]}


# -- pairing ------------------------------------------------------------------------------------


def as_message(event: SdkEvent, offset: int = 0) -> Message:
    http_message = ce_http.to_binary_event(event)
    [parsed] = events_from_http(http_message.headers, http_message.body)
    headers, value = to_kafka(parsed)
    return Message("kserve-events", 0, offset, parsed.id.encode(), value, 0, headers)


TOPICS = Topics.from_config(KafkaConfig())


def test_duplicates_are_dropped_and_components_kept_apart() -> None:
    request = kserve_event("request", "r-1", {"instances": [[1, 2]]})
    response = kserve_event("response", "r-1", {"predictions": [0]})
    transformer = kserve_event("request", "r-1", {"instances": [["raw text"]]}, component="transformer")
    before = sample("observer_predictions_duplicates_total")
    predictions, stage, clock = pair(
        [as_message(request), as_message(request, 1), as_message(transformer, 2), as_message(response, 3),
         as_message(response, 4)],
        TOPICS,
    )
    assert [(p.component, p.paired) for p in predictions] == [("predictor", True)]
    assert sample("observer_predictions_duplicates_total") - before == 2
    clock.now = 60
    [alone] = [decode(o.value) for o in stage.tick()]
    assert (alone.component, alone.paired) == ("transformer", False)


def test_eviction_and_unparsable_bodies() -> None:
    first = kserve_event("request", "a", b"\x89PNG", content_type="image/png")
    second = kserve_event("request", "b", {"instances": [[1]]})
    predictions, _, _ = pair([as_message(first), as_message(second, 1)], TOPICS, max_pending=1)
    [evicted] = predictions
    assert (evicted.request_id, evicted.paired, evicted.protocol) == ("a", False, "unknown")
    assert "not JSON" in evicted.payload_error


def test_undecodable_kafka_records_are_dead_lettered() -> None:
    stage = PredictionPairer(TOPICS, KServeConfig())
    [dead] = stage.process([Message("kserve-events", 0, 0, None, b"junk", 0)])
    assert dead.topic == TOPICS.dead_letter
    assert json.loads(dead.value)["reason"] == "decode_error"


# -- payloads and CloudEvents parsing --------------------------------------------------------------


def test_v1_and_v2_layouts() -> None:
    columnar = parse(b'{"inputs": {"a": [1, 2], "b": ["x", "y"]}}', "request")
    assert (columnar.protocol, columnar.instances, columnar.columns) == ("v1", 2, {"a": [1, 2], "b": ["x", "y"]})
    nested = parse(json.dumps({"inputs": [
        {"name": "img", "shape": [2, 2, 2], "datatype": "FP32", "data": [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]},
        {"name": "id", "shape": [2], "datatype": "BYTES", "data": ["u1", "u2"]},
    ]}).encode(), "request")
    assert nested.protocol == "v2" and nested.instances == 2
    assert nested.columns["img.3"] == [4, 8] and nested.columns["id"] == ["u1", "u2"]
    rows = parse(b'{"predictions": [{"label": "cat", "scores": [0.9, 0.1]}]}', "response")
    assert rows.columns == {"label": ["cat"], "scores.0": [0.9], "scores.1": [0.1]}
    with pytest.raises(PayloadError, match="tensor 'x': shape \\[2, 2\\] holds 4 values, data has 3"):
        parse(b'{"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}]}', "request")
    with pytest.raises(PayloadError, match='"instances"'):
        parse(b'{"prompt": "hi"}', "request")


def test_limits_hash_long_strings_and_truncate() -> None:
    text = "my card number is 4111 1111 1111 1111, call me"
    p = parse(json.dumps({"instances": [[text, "ok"]] * 5}).encode(), "request",
              Limits(max_features=1, max_instances=3, max_string_chars=10))
    assert p.truncated and p.instances == 5 and list(p.columns) == ["input.0"]
    assert len(p.columns["input.0"]) == 3 and p.columns["input.0"][0].startswith("sha256:")
    assert text not in json.dumps(p.columns)


def test_cloudevent_parsing() -> None:
    batch = json.dumps([
        {"specversion": "1.0", "id": "1", "source": "/", "type": REQUEST_TYPE, "data": {"instances": [1]}},
        {"specversion": "1.0", "id": "2", "source": "/", "type": RESPONSE_TYPE, "data_base64": "eyJ9"},
    ]).encode()
    events = events_from_http({"Content-Type": "application/cloudevents-batch+json"}, batch)
    assert [(e.id, e.data) for e in events] == [("1", b'{"instances":[1]}'), ("2", b'{"}')]
    with pytest.raises(CloudEventError, match="specversion"):
        events_from_http({"ce-specversion": "2.0", "ce-id": "1", "ce-source": "/", "ce-type": "t"}, b"")
    with pytest.raises(CloudEventError, match="source"):
        events_from_http({"ce-specversion": "1.0", "ce-id": "1", "ce-type": "t"}, b"")
    event = CloudEvent({"specversion": "1.0", "id": "é", "source": "/", "type": "t"}, b"x", "text/plain")
    assert from_kafka(*to_kafka(event)) == event
