"""The kernel's settings: Kafka, TLS, the admin API, stage supervision, and the helpers every
section uses (:class:`Section`, :func:`usable_token`, :func:`parse_instant`, :class:`ConfigError`).

Each stage's own section lives beside its stage (``observer.drift.config``,
``observer.triggers.config``, the collectors' ``config`` modules) and the shell composes them
into :class:`observer.config.ObserverConfig` (sources, priorities and the YAML/env loader are
described there). The kernel imports no stage.

>>> KafkaConfig().servers  # empty bootstrap_servers: the embedded broker's address
'127.0.0.1:9092'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)


class Section(BaseModel):
    """One configuration section: a misspelt key is an error, not a silently ignored knob."""

    model_config = ConfigDict(extra="forbid")


class KafkaConfig(Section):
    bootstrap_servers: str = Field(
        "", description="Comma-separated brokers. Empty: start the embedded broker (Tansu)."
    )
    embedded_listen: str = Field(
        "127.0.0.1:9092", description="host:port the embedded broker listens on when started."
    )
    embedded_durable: bool = Field(
        True,
        description="Embedded broker only (a real Kafka is the durable log itself): keep what "
        "it cannot in embedded_state_dir, so a kill -9 or a restart loses nothing accepted. "
        "The receivers fsync every accepted message to a spool before answering 200, the "
        "drift engine's checkpoints are mirrored to a local SQLite file, and at start "
        "the drift state is seeded back and unsettled spool entries replayed. false: "
        "memory-only (everything is gone when observer stops).",
    )
    embedded_state_dir: Path = Field(
        Path(".observer/state"),
        description="Embedded durable mode: directory of the receiver spool, the drift state "
        "file and the broker incarnation id (relative paths are from the working directory).",
    )
    topic_prefix: str = Field("observer.", description="Prefix of the observer.* topics.")
    otlp_topic_prefix: str = Field(
        "", description="Prefix of the otlp_* topics (empty: the Collector kafka exporter's names)."
    )
    partitions: int = Field(4, ge=1, description="Partitions for topics observer creates.")
    replication_factor: int = Field(1, ge=1, description="Replication for topics observer creates.")
    create_topics: bool = Field(True, description="Create missing topics at start.")
    topic_retention_ms: dict[str, int] = Field(
        default_factory=dict,
        description="retention.ms of topics observer creates, by topic (the topic table's key, "
        "e.g. {embeddings: 86400000}); overrides the table's default (observer.embeddings: 7 "
        "days; the others: the broker's). -1 keeps forever. Applies when a topic is created.",
    )
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "lz4",
        description="Compression of every batch observer writes (receivers and stages). "
        "Span batches shrink several times, and the broker's CPU and disk per span with them; "
        "consumers read every codec whatever this says.",
    )
    session_timeout_ms: int = Field(10_000, ge=1000, description="Consumer group session timeout.")
    heartbeat_interval_ms: int = Field(1_000, ge=100, description="Consumer group heartbeat.")
    stage_client: Literal["kafka-python", "librdkafka"] = Field(
        "librdkafka",
        description="The Kafka client consuming stages read their inputs and write their "
        "outputs with (outputs acknowledged with acks=all before the input offsets are "
        "committed, with either). librdkafka (confluent-kafka) fetches, decodes and builds "
        "records in C, several times less CPU per record than kafka-python; kafka-python "
        "takes every client_options entry (librdkafka only the security ones).",
    )
    client_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra kafka-python options for producers, consumers and admin "
        "(security_protocol, sasl_mechanism, ssl_cafile...).",
    )

    @property
    def embedded(self) -> bool:
        return not self.bootstrap_servers.strip()

    @property
    def servers(self) -> str:
        return self.embedded_listen if self.embedded else self.bootstrap_servers

    @property
    def durable_state_dir(self) -> Path | None:
        """Where the embedded broker's durable state lives; ``None`` unless the broker is
        embedded and ``embedded_durable`` (a real Kafka keeps its own log).

        >>> KafkaConfig(bootstrap_servers="kafka:9092").durable_state_dir is None
        True
        """
        return self.embedded_state_dir if self.embedded and self.embedded_durable else None

    @field_validator("topic_retention_ms")
    @classmethod
    def _known_topics(cls, retention: dict[str, int]) -> dict[str, int]:
        from observer.core.topics import TOPIC_TABLE  # topics imports this module

        unknown = sorted(set(retention) - set(TOPIC_TABLE))
        if unknown:
            raise ValueError(f"unknown topic(s) {', '.join(unknown)}; the topics are "
                             f"{', '.join(TOPIC_TABLE)}")
        bad = sorted(k for k, v in retention.items() if v < -1 or v == 0)
        if bad:
            raise ValueError(f"retention of {', '.join(bad)} must be positive ms, or -1 (forever)")
        return retention

    @field_validator("embedded_listen")
    @classmethod
    def _loopback_only(cls, listen: str) -> str:
        # The embedded broker cannot authenticate clients (observer.core.broker): keep it
        # unreachable from other machines, whatever else the configuration says.
        from observer.core.broker import BrokerError, loopback_listen

        try:
            loopback_listen(listen)
        except BrokerError as e:
            raise ValueError(str(e)) from None
        return listen


def usable_token(token: SecretStr | None, field: str) -> SecretStr | None:
    """``token`` unless it could never be matched: empty, blank, or padded with whitespace
    (offered tokens are compared without it). Unset (None) means no authentication."""
    if token is None:
        return None
    value = token.get_secret_value()
    if not value.strip():
        raise ValueError(f"{field} is empty: unset it to turn authentication off, or give a token")
    if value != value.strip():
        raise ValueError(f"{field} has leading or trailing whitespace (a newline from a file?)")
    return token


class TLSConfig(Section):
    """TLS of one listener, from PEM files that are re-read when they change on disk (rotation
    in place by cert-manager or the SPIFFE helper)."""

    cert_file: Path | None = Field(
        None, description="Certificate chain (PEM) served; with key_file, turns TLS on."
    )
    key_file: Path | None = Field(None, description="Private key of cert_file (PEM, unencrypted).")
    client_ca_file: Path | None = Field(
        None, description="CA certificates (PEM): when set, a client must present a certificate "
        "one of them signed (mutual TLS), else the handshake fails.",
    )

    @field_validator("cert_file", "key_file", "client_ca_file", mode="before")
    @classmethod
    def _not_blank(cls, value: Any, info: Any) -> Any:
        # An empty path from a template would silently turn TLS (or mTLS) off: refuse it.
        if isinstance(value, str) and not value.strip():
            raise ValueError(f"tls.{info.field_name} is empty: unset it or name a PEM file")
        return value

    @model_validator(mode="after")
    def _complete(self) -> TLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls needs both cert_file and key_file (or neither)")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("tls.client_ca_file (mutual TLS) needs cert_file and key_file")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


def parse_instant(text: str) -> int:
    """Unix nanoseconds of an ISO 8601 time (UTC when no zone is given) or Unix seconds.

    >>> parse_instant("2026-01-10T00:00:00Z"), parse_instant("1.5")
    (1768003200000000000, 1500000000)
    """
    from datetime import datetime, timezone

    text = text.strip()
    if not text:
        raise ValueError("a time is required (ISO 8601 or Unix seconds)")
    try:
        return round(float(text) * 1e9)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use ISO 8601 or Unix seconds)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


class SupervisorConfig(Section):
    """How a consuming stage that stopped on an error is restarted (``observer.core.supervisor``)."""

    restart_initial_s: float = Field(
        0.5, gt=0, description="Wait before the first restart of a stage after an error; "
        "doubles with each restart in a row."
    )
    restart_max_s: float = Field(
        30.0, gt=0, description="Longest wait between two restarts of a stage."
    )
    healthy_after_s: float = Field(
        60.0, gt=0, description="A stage that ran this long before its error restarts after "
        "restart_initial_s again."
    )
    max_build_failures: int = Field(
        5, ge=1, description="A stage whose processor cannot be built this many times in a row "
        "(other than for a transient Kafka error) fails for good: observer exits non-zero."
    )


class AdminConfig(Section):
    host: str = Field("127.0.0.1", description="Address the admin API binds to.")
    port: int = Field(8080, description="Admin API port (/metrics, /healthz, /api/v1/...).")
    auth_token: SecretStr | None = Field(
        None, description="Bearer token required for everything but /healthz, /readyz and "
        "/metrics (see protect_metrics) when set. Unset: state-changing requests (POST, PUT, "
        "PATCH, DELETE) are accepted only with a loopback Host and no foreign Origin.",
    )
    protect_metrics: bool = Field(
        False, description="/metrics needs the bearer token too (needs auth_token)."
    )
    tls: TLSConfig = Field(default_factory=TLSConfig, description="TLS of the admin API.")

    @field_validator("auth_token")
    @classmethod
    def _admin_token(cls, token: SecretStr | None) -> SecretStr | None:
        return usable_token(token, "admin.auth_token")

    @model_validator(mode="after")
    def _metrics_token(self) -> AdminConfig:
        if self.protect_metrics and self.auth_token is None:
            raise ValueError("admin.protect_metrics needs admin.auth_token (the token it asks for)")
        return self
    header_timeout_s: float = Field(
        10.0, gt=0, description="A request's headers must arrive within this many seconds, "
        "else 408 and the connection is closed.",
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="A request's body must arrive within this many seconds of its "
        "headers, else 408 and the connection is closed.",
    )


TENANT_KEY = "tenant"
"""The record field naming the tenant (``observer.tenant`` on the wire)."""

TENANTLESS_RECORD_TYPES = frozenset({"gpu"})
"""Record types without a tenant: GPU samples describe a node's devices, shared by tenants."""


def with_tenant(keys: list[str]) -> list[str]:
    """``keys`` with the tenant first (once).

    >>> with_tenant(["service", "model"]), with_tenant(["model", "tenant"])
    (['tenant', 'service', 'model'], ['tenant', 'model'])
    """
    return [TENANT_KEY, *(k for k in keys if k != TENANT_KEY)]


class ConfigError(ValueError):
    """The configuration file or environment is invalid; the message names the problem."""


def problems(error: ValidationError) -> str:
    """Every bad field and why, without the values given: they can be secrets (tokens).

    >>> try:
    ...     AdminConfig(auth_token="s3cret ", port="x")
    ... except ValidationError as e:
    ...     print(problems(e))
    <BLANKLINE>
      port: Input should be a valid integer, unable to parse string as an integer
      auth_token: admin.auth_token has leading or trailing whitespace (a newline from a file?)
    """
    return "".join(
        f"\n  {'.'.join(str(part) for part in e['loc']) or '(top level)'}: "
        f"{e['msg'].removeprefix('Value error, ')}"
        for e in error.errors(include_url=False, include_input=False)
    )

