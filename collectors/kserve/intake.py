"""The KServe inference logger intake: ``POST /v1/kserve`` on the OTLP/HTTP port.

KServe's logger (``spec.predictor.logger: {mode: all, url: http://observer:4318/v1/kserve}``)
sends one CloudEvent per inference request and one per response, in HTTP binary content mode:

- ``ce-type``: ``org.kubeflow.serving.inference.request`` or ``...inference.response``;
- ``ce-id``: the same for a request and its response (the request's ``Ce-Id`` header, else a
  UUID), which is how they are paired later;
- extensions ``ce-inferenceservicename``, ``ce-namespace``, ``ce-component``
  (predictor, transformer, explainer), ``ce-endpoint`` (default or canary), ``ce-metadata``
  (JSON of the logged request headers) and optionally ``ce-annotations``;
- the body: the inference request or response as sent, with its ``Content-Type``.

Structured (``application/cloudevents+json``) and batched
(``application/cloudevents-batch+json``) modes are accepted too. Each event is written to the
``observer.kserve-events`` topic in Kafka binary content mode (``ce_*`` headers, the body
unchanged), keyed by ``ce-id`` so a request and its response share a partition; the tenant
is stamped as the extension ``observertenant`` and the collector's ``receiver.cluster`` as
``observercluster`` (each replacing any the sender set; KServe's logger names no cluster). The answer is
200 once Kafka acknowledged every event (``acks=all``); KServe's logger counts only 200 as
delivered. The route sits behind the receiver's token check and in-flight budget, so the
status codes are the OTLP receivers' (400 not a CloudEvent or another type, 401, 413, 429,
503), with a JSON ``google.rpc.Status`` body.
"""

from __future__ import annotations

import json

from fastapi import Request, Response
from prometheus_client import Counter

from observer.collectors.common.cluster import CLUSTER_EXTENSION
from observer.collectors.receiver.budget import Slot
from observer.collectors.kserve.cloud_events import CloudEvent, CloudEventError, events_from_http, to_kafka
from observer.collectors.receiver.intake import Intake, bad_request
from observer.collectors.receiver.otlp_http import Route, read_admitted
from observer.core.bus import Output

KSERVE_PATH = "/v1/kserve"
REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
EVENT_TYPES = frozenset({REQUEST_TYPE, RESPONSE_TYPE})
TENANT_EXTENSION = "observertenant"

EVENTS = Counter(
    "observer_kserve_events_total",
    "KServe logger CloudEvents written to Kafka, by type (request, response).",
    ["type"],
)


def stamp_tenant(event: CloudEvent, tenant: str) -> CloudEvent:
    """The event with ``observertenant`` set to ``tenant`` (removed when "").

    >>> e = CloudEvent({"id": "1", "observertenant": "spoofed"})
    >>> stamp_tenant(e, "").attributes, stamp_tenant(e, "acme").attributes["observertenant"]
    ({'id': '1'}, 'acme')
    """
    attributes = {k: v for k, v in event.attributes.items() if k != TENANT_EXTENSION}
    if tenant:
        attributes[TENANT_EXTENSION] = tenant
    return CloudEvent(attributes, event.data, event.datacontenttype)


def stamp_cluster(event: CloudEvent, cluster: str) -> CloudEvent:
    """The event with ``observercluster`` set to ``cluster`` (removed when "").

    >>> e = CloudEvent({"id": "1", "observercluster": "spoofed"})
    >>> stamp_cluster(e, "").attributes, stamp_cluster(e, "edge").attributes["observercluster"]
    ({'id': '1'}, 'edge')
    """
    attributes = {k: v for k, v in event.attributes.items() if k != CLUSTER_EXTENSION}
    if cluster:
        attributes[CLUSTER_EXTENSION] = cluster
    return CloudEvent(attributes, event.data, event.datacontenttype)


def kserve_route(intake: Intake) -> Route:
    """The handler for :func:`observer.collectors.receiver.otlp_http.create_app`'s ``extra_routes``."""
    topic = intake.topics.kserve_events

    async def accept(request: Request, tenant: str, slot: Slot) -> Response:
        body = await read_admitted(request, intake, slot)
        try:
            events = events_from_http(request.headers, body)
        except CloudEventError as e:
            raise bad_request(str(e)) from None
        wrong = sorted({e.type for e in events} - EVENT_TYPES)
        if wrong:
            raise bad_request(
                f"CloudEvent type {', '.join(wrong)} is not a KServe inference logger event "
                f"({REQUEST_TYPE} or {RESPONSE_TYPE})"
            )
        outputs = []
        for event in events:
            stamped = stamp_cluster(stamp_tenant(event, tenant), intake.cluster.default)
            headers, value = to_kafka(stamped)
            outputs.append(intake.seal.sealed(Output(topic, event.id, value, headers)))
        await intake.write_async(outputs, "KServe events", "one inference body")
        for event in events:
            EVENTS.labels(event.type.rsplit(".", 1)[-1]).inc()
        return Response(
            json.dumps({"accepted": len(events)}), 200, media_type="application/json"
        )

    return accept
