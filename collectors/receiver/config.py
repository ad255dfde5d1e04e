"""The receivers' configuration (the ``receiver`` section): addresses, authentication and
tenants, TLS, the seal of the raw topics, request limits and deadlines, the Kafka writes.

>>> ReceiverConfig().http_port, ReceiverConfig().grpc_port
(4318, 4317)
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from observer.core.config import Section, TLSConfig, usable_token


class ReceiverConfig(Section):
    host: str = Field("127.0.0.1", description="Address the OTLP receivers bind to.")
    http_port: int = Field(4318, description="OTLP/HTTP port.")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="Largest request accepted.")
    auth_token: SecretStr | None = Field(
        None, description="Bearer token required when set (empty is refused at start)."
    )
    tls: TLSConfig = Field(
        default_factory=TLSConfig, description="TLS (and mutual TLS) of OTLP/HTTP and OTLP/gRPC."
    )
    ack_timeout_s: float = Field(30.0, gt=0, description="How long to wait for Kafka's ack.")
    kafka_client: Literal["librdkafka", "kafka-python"] = Field(
        "librdkafka",
        description="Kafka client of the receivers' writes: librdkafka (confluent-kafka, C) or "
        "kafka-python. Both place records with murmur2 and wait for acks=all.",
    )
    linger_ms: float = Field(
        1.0,
        ge=0,
        le=1000,
        description="How long the receivers' Kafka producer waits to batch records of "
        "concurrent requests into one produce request: lower answers sooner, higher costs the "
        "broker less CPU per span.",
    )
    stage_yield_ms: int = Field(
        2000,
        ge=0,
        description="When the receivers and consuming stages share a process (observer up), "
        "a stage waits up to this long before each batch while export requests are in flight "
        "(it goes on at the first idle moment, so only a saturated receiver makes it wait this "
        "long, and then takes one record rather than a full batch): bursts are acknowledged at "
        "receiver speed and analysis catches up after. 0: no wait.",
    )
    max_message_bytes: int = Field(
        1_000_000,
        ge=1024,
        description="Traces of one request that share an otlp_spans partition are packed into "
        "one Kafka message up to this size (below Kafka's default message.max.bytes).",
    )
    grpc_port: int = Field(4317, description="OTLP/gRPC port.")
    tenants: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="Multi-tenancy: tenant name -> bearer token. A request's token picks the "
        "tenant stamped on its records (auth is then required).",
    )
    stamp_key: SecretStr | None = Field(
        None,
        description="Secret (16+ characters) from which the receivers derive an AES-256-GCM "
        "key to encrypt and authenticate every message they write to the raw topics; when set, "
        "stages decrypt them and trust a message's tenant only if it opens, so a direct write "
        "to Kafka cannot claim a tenant and a reader of Kafka sees no content. Give every "
        "observer process the same value. Unset with the embedded broker and receiver.tenants "
        "or auth_token: a random key per start, kept in kafka.embedded_state_dir in durable mode.",
    )

    mirror_prefix: str = Field(
        "",
        max_length=249,
        description="Stages reading raw topics that MirrorMaker 2 mirrored with its "
        "DefaultReplicationPolicy ('<source alias>.<topic>'): the '<source alias>.' it added. "
        "A sealed message opens only under the topic it was sealed for, so the stages take "
        "this prefix off a topic's name before opening. \"\": the raw topics are the "
        "receivers' own (or mirrored under the same names).",
    )
    cluster: str = Field(
        "",
        description="This collector's cluster: stamped on spans whose resource names none "
        "(k8s.cluster.name, else k8s.cluster.uid), on KServe events and on REST evaluations. "
        "A cluster name: letters, digits, '-', '_' and '.', like a DNS name (lowercased). "
        "\"\": none.",
    )
    cluster_pinned: bool = Field(
        False,
        description="Stamp receiver.cluster on every span, whatever cluster its resource "
        "names: clients of this collector cannot claim another cluster. Needs receiver.cluster.",
    )

    @field_validator("cluster")
    @classmethod
    def _cluster_name(cls, value: str) -> str:
        from observer.collectors.common.cluster import cluster_name

        name = cluster_name(value) if value else ""
        if name is None:
            raise ValueError(f"receiver.cluster {value!r} is not a cluster name (letters, "
                             "digits, '-', '_' and '.', like a DNS name)")
        return name

    @model_validator(mode="after")
    def _pinned_cluster(self) -> ReceiverConfig:
        if self.cluster_pinned and not self.cluster:
            raise ValueError("receiver.cluster_pinned needs receiver.cluster (the cluster "
                             "to pin)")
        return self

    @field_validator("auth_token")
    @classmethod
    def _receiver_token(cls, token: SecretStr | None) -> SecretStr | None:
        return usable_token(token, "receiver.auth_token")

    @field_validator("stamp_key")
    @classmethod
    def _strong_stamp_key(cls, key: SecretStr | None) -> SecretStr | None:
        key = usable_token(key, "receiver.stamp_key")
        if key is not None and len(key.get_secret_value()) < 16:
            raise ValueError("receiver.stamp_key is too short: use 16 characters or more "
                             "(openssl rand -hex 32)")
        return key

    @model_validator(mode="after")
    def _tenant_tokens(self) -> ReceiverConfig:
        # Each token must name one tenant: a shared one would write under whichever came first.
        owners: dict[str, str] = {}
        if self.auth_token is not None:
            owners[self.auth_token.get_secret_value()] = "receiver.auth_token"
        for name, token in self.tenants.items():
            if not name.strip():
                raise ValueError("receiver.tenants: a tenant name is empty")
            field = f"receiver.tenants[{name!r}]"
            usable_token(token, field)
            other = owners.setdefault(token.get_secret_value(), field)
            if other != field:
                raise ValueError(f"{field} has the same token as {other}: give each its own")
        return self
    max_inflight_requests: int = Field(
        64, ge=1, description="Export requests in flight (HTTP and gRPC together); 429 above."
    )
    max_inflight_bytes: int = Field(
        256 * 1024 * 1024,
        ge=1024,
        description="Decoded bytes in flight, estimated from the body: JSON 16x, protobuf 8x "
        "its size (collectors.receiver.decoded_size); 429 above, 413 for one request larger alone.",
    )
    retry_after_s: int = Field(
        5, ge=1, description="Retry-After (HTTP) / RetryInfo delay (gRPC) when saturated."
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="OTLP/HTTP: a request's headers must arrive within this many seconds of "
        "the connection opening (or of the request's first byte on a kept-alive connection), "
        "else 408 and the connection is closed. gRPC: the HTTP/2 handshake's deadline.",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="OTLP/HTTP: a request's body must arrive within this many seconds of its "
        "headers, else 408 and the connection is closed. The in-flight request slot is taken "
        "only once the body is read, so slow senders cannot hold it.",
    )
