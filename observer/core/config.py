"""One typed configuration for every stage.

Sources, lowest to highest priority: the defaults below, a YAML file (``--config
observer.yaml`` or ``OBSERVER_CONFIG``), then environment variables with the ``OBSERVER_``
prefix and ``__`` between nesting levels (``OBSERVER_KAFKA__BOOTSTRAP_SERVERS=k1:9092``).
Every default works on one machine with the embedded broker.

>>> cfg = load_config(None, env={})
>>> cfg.kafka.bootstrap_servers  # empty: observer starts its embedded broker
''
>>> cfg.drift.window_size
1000
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class _Section(BaseModel):
    # A misspelt key is an error, not a silently ignored knob.
    model_config = ConfigDict(extra="forbid")


class KafkaConfig(_Section):
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
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "lz4",
        description="Compression of every batch observer writes (receivers and stages). "
        "Span batches shrink several times, and the broker's CPU and disk per span with them; "
        "consumers read every codec whatever this says.",
    )
    session_timeout_ms: int = Field(10_000, ge=1000, description="Consumer group session timeout.")
    heartbeat_interval_ms: int = Field(1_000, ge=100, description="Consumer group heartbeat.")
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


def _usable_token(token: SecretStr | None, field: str) -> SecretStr | None:
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


class TLSConfig(_Section):
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


class ReceiverConfig(_Section):
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

    @field_validator("auth_token")
    @classmethod
    def _receiver_token(cls, token: SecretStr | None) -> SecretStr | None:
        return _usable_token(token, "receiver.auth_token")

    @field_validator("stamp_key")
    @classmethod
    def _strong_stamp_key(cls, key: SecretStr | None) -> SecretStr | None:
        key = _usable_token(key, "receiver.stamp_key")
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
            _usable_token(token, field)
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
        "its size (collectors.decoded_size); 429 above, 413 for one request larger alone.",
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


class ContentConfig(_Section):
    """LLM message content: by default only counts, lengths and hashes are recorded."""

    capture: bool = Field(
        False, description="Store prompts and completions (redacted, capped) on observer.llm."
    )
    max_chars: int = Field(4096, ge=0, description="Characters stored per side (input, output).")
    redact_builtin: bool = Field(
        True, description="Redact e-mail addresses, API keys, bearer tokens, key=value secrets."
    )
    redact_hook: str = Field(
        "", description="'package.module:function' taking and returning a string, run after "
        "the built-in redaction.",
    )


class NormalizerConfig(_Section):
    group_id: str = Field("observer-normalizer", description="Consumer group.")
    content: ContentConfig = Field(default_factory=ContentConfig)
    metrics_group_id: str = Field(
        "observer-genai-metrics", description="Consumer group of the GenAI metrics stage."
    )


class PathsConfig(_Section):
    group_id: str = Field("observer-paths", description="Consumer group of trace grouping.")
    grace_s: float = Field(
        5.0, ge=0, description="A trace closes this long after its root span arrived."
    )
    timeout_s: float = Field(
        300.0, gt=0, description="A trace without a root closes this long after its first span."
    )
    max_loop_iterations: int = Field(
        10, ge=1, description="Traces with more agent loop iterations are flagged."
    )
    max_open_traces: int = Field(
        100_000, ge=1, description="Open traces held; the oldest closes early above this."
    )


DriftMethod = Literal["wasserstein", "psi", "jensenshannon", "ks", "chisquare", "ztest", "auto"]


class FeatureSpec(_Section):
    name: str = Field(
        description="Field of the record, or field.key for a key of a mapping field "
        "(inputs.age: one value per prediction instance)."
    )
    kind: Literal["numeric", "categorical"] = Field(
        description="numeric (distributions of numbers) or categorical (shares of values)."
    )
    method: DriftMethod | None = Field(
        None, description="Method deciding this feature's drift (default: by kind, see drift)."
    )
    threshold: float | None = Field(
        None, description="This feature's threshold (default: drift.thresholds[method])."
    )


def _default_features() -> dict[str, list[FeatureSpec]]:
    return {
        "llm": [
            FeatureSpec(name="input_tokens", kind="numeric"),
            FeatureSpec(name="output_tokens", kind="numeric"),
            FeatureSpec(name="latency_ms", kind="numeric"),
            FeatureSpec(name="finish_reason", kind="categorical"),
        ],
        "tools": [
            FeatureSpec(name="tool_name", kind="categorical"),
            FeatureSpec(name="status", kind="categorical"),
        ],
        # A change in the path mix (which prompts and tools a trace takes) is itself drift.
        "paths": [
            FeatureSpec(name="loop_iterations", kind="numeric"),
            FeatureSpec(name="llm_calls", kind="numeric"),
            FeatureSpec(name="tool_errors", kind="numeric"),
            FeatureSpec(name="duration_ms", kind="numeric"),
            FeatureSpec(name="path_signature", kind="categorical"),
        ],
        # predictions (inputs.<feature>, outputs.<output>) and gpu are model- and
        # fleet-specific: scored once features are configured for them.
    }


class DegradationSpec(_Section):
    """One degradation signal: a change detector fed one record field, per segment."""

    name: str = Field(description="Signal name, unique per record type (results, metrics, policies).")
    field: str = Field(description="Record field fed to the detector, one value per record.")
    equals: str | None = Field(
        None, description="Feed 1 when the field equals this (as text) and 0 otherwise: a rate. "
        "Unset: the field's own value (numbers; booleans as 1/0; missing values skipped).",
    )
    detector: Literal["adwin", "page_hinkley"] = Field("adwin", description="Change detector.")
    direction: Literal["up", "down", "both"] = Field(
        "up", description="Changes that count: up = the rate or value rose (a degradation)."
    )
    delta: float | None = Field(
        None, gt=0, description="adwin: confidence (default 0.002); page_hinkley: tolerated "
        "change per value (default 0.005).",
    )
    threshold: float | None = Field(
        None, gt=0, description="page_hinkley only: lambda, in the field's unit (default 50)."
    )
    min_instances: int | None = Field(
        None, ge=1, description="page_hinkley only: values before any detection (default 30)."
    )
    clock: int | None = Field(
        None, ge=1, description="adwin only: look for a change every this many values (default 32)."
    )

    @model_validator(mode="after")
    def _params_fit_the_detector(self) -> DegradationSpec:
        only = {"threshold": "page_hinkley", "min_instances": "page_hinkley", "clock": "adwin"}
        wrong = [k for k, d in only.items() if getattr(self, k) is not None and d != self.detector]
        if wrong:
            raise ValueError(f"degradation signal {self.name!r}: {', '.join(wrong)} do not apply "
                             f"to detector {self.detector}")
        if self.detector == "adwin" and self.delta is not None and self.delta >= 1:
            raise ValueError(f"degradation signal {self.name!r}: adwin delta must be < 1")
        return self


def _default_degradation() -> dict[str, list[DegradationSpec]]:
    return {
        "llm": [
            DegradationSpec(name="error_rate", field="error"),
            DegradationSpec(name="latency", field="latency_ms"),
        ],
        "tools": [DegradationSpec(name="error_rate", field="status", equals="error")],
    }


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


class DriftReportsConfig(_Section):
    """Evidently HTML reports, one per drift episode, served by the admin API at /reports/{id}."""

    enabled: bool = Field(True, description="Serve /reports/{id} and link them in /api/v1/drift.")
    dir: Path = Field(
        Path(".observer/reports"), description="Where rendered reports are cached (one file each)."
    )
    # A report embeds Evidently's JavaScript bundle (~3.7 MB), so the cache is bounded.
    keep: int = Field(100, ge=1, description="Rendered reports kept on disk; the oldest go first.")
    max_records: int = Field(
        200_000, ge=1, description="Records read back from Kafka per window at most."
    )
    read_timeout_s: float = Field(
        30.0, gt=0, description="How long reading a window back from Kafka may take."
    )


class DriftConfig(_Section):
    group_id: str = Field("observer-drift", description="Consumer group.")
    segment_keys: list[str] = Field(
        default_factory=lambda: ["service", "model"], description="Record fields forming a segment."
    )
    # GPU samples carry no service or model. Per device, as the GPU collector keys them on
    # Kafka: a segment then lives in one partition, which exactly-once restarts and
    # scale-out need (README, "Record types and features").
    segment_keys_by_record_type: dict[str, list[str]] = Field(
        default_factory=lambda: {"gpu": ["node", "gpu_uuid", "mig_instance"]},
        description="Per record type, the record fields forming a segment instead of segment_keys.",
    )
    # 1000 records against a 2000-record reference (first_n below): Evidently's auto choice
    # then picks Wasserstein/Jensen-Shannon, which flagged 0-3.6% of same-distribution windows
    # here; a one-window reference made it pick chi-square and Z-tests: 35.8% (README).
    window_size: int = Field(1000, ge=10, description="Records per count window (per segment).")
    numeric_method: DriftMethod = Field(
        "auto", description="Method that decides drift for numeric features (auto: Evidently's)."
    )
    categorical_method: DriftMethod = Field(
        "auto", description="Method that decides drift for categorical features (auto: Evidently)."
    )
    checkpoints: bool = Field(
        True, description="Checkpoint engine state to the drift-state topic (exactly-once restarts)."
    )
    restore_lookback_s: float = Field(
        60.0,
        ge=0,
        description="On restore, also read back results published this long before the last "
        "committed batch (clock skew between engine hosts), to drop their replayed copies.",
    )
    thresholds: dict[str, float] = Field(
        default_factory=lambda: {"wasserstein": 0.1, "psi": 0.1, "jensenshannon": 0.1},
        description="Drift when statistic >= threshold (Evidently 0.7 defaults).",
    )
    drift_share: float = Field(
        0.5, gt=0, le=1, description="Dataset drift when this share of features drifted."
    )
    features: dict[str, list[FeatureSpec]] = Field(
        default_factory=_default_features, description="Features per record type."
    )
    degradation: dict[str, list[DegradationSpec]] = Field(
        default_factory=_default_degradation,
        description="Change detectors per record type: degradation signals per segment.",
    )
    window_kind: Literal["count", "tumbling", "sliding"] = Field(
        "count",
        description="count: window_size records; tumbling/sliding: by event time (the record's "
        "start time, else its Kafka timestamp).",
    )
    window_duration_s: float = Field(3600.0, gt=0, description="Time windows: length.")
    window_slide_s: float | None = Field(
        None, gt=0, description="Sliding windows: step; must divide window_duration_s."
    )
    allowed_lateness_s: float = Field(
        0.0,
        ge=0,
        description="Time windows close when event time passes their end + this; later "
        "records for them are dropped.",
    )
    mode: Literal["exact", "sketch", "auto"] = Field(
        "exact",
        description="exact: raw values; sketch: bounded sketches; auto: exact while within "
        "exact_budget_mb, sketches for the segments beyond.",
    )
    exact_budget_mb: float = Field(
        256.0, gt=0, description="auto mode: memory for raw values across all segments."
    )
    sketch_relative_accuracy: float = Field(
        0.01, gt=0, lt=0.5, description="Sketch mode: relative width of a numeric bucket."
    )
    sketch_top_k: int = Field(
        64, ge=1, description="Sketch mode: categories counted exactly; the rest are 'other'."
    )
    reference: Literal["first_window", "first_n", "time_range", "parquet"] = Field(
        "first_n",
        description="Reference per segment: its first window, its first reference_records "
        "records, the records in [reference_start, reference_end), or a Parquet dataset.",
    )
    reference_records: int = Field(2000, ge=1, description="first_n: records in the reference.")
    reference_start: str = Field(
        "", description="time_range: start (ISO 8601 or Unix seconds), inclusive."
    )
    reference_end: str = Field("", description="time_range: end (ISO 8601 or Unix seconds).")
    reference_path: str = Field(
        "", description="parquet: a Parquet file or directory (segment columns optional)."
    )

    @model_validator(mode="after")
    def _coherent_drift(self) -> "DriftConfig":
        if self.window_kind == "sliding":
            if self.window_slide_s is None:
                raise ValueError("window_kind sliding needs window_slide_s")
            steps = self.window_duration_s / self.window_slide_s
            if abs(steps - round(steps)) > 1e-9 or round(steps) < 1:
                raise ValueError(
                    f"window_slide_s ({self.window_slide_s}) must divide window_duration_s "
                    f"({self.window_duration_s})"
                )
        if self.reference == "time_range":
            start, end = parse_instant(self.reference_start), parse_instant(self.reference_end)
            if start >= end:
                raise ValueError("reference_start must be before reference_end")
        if self.reference == "parquet" and not self.reference_path:
            raise ValueError("reference parquet needs reference_path")
        return self
    reports: DriftReportsConfig = Field(
        default_factory=DriftReportsConfig, description="HTML reports, one per drift episode."
    )


class WebhookConfig(_Section):
    url: str = Field(description="Endpoint the signed webhook is POSTed to.")
    secret: SecretStr = Field(description="Standard Webhooks secret, whsec_<base64>.")
    timeout_s: float = Field(10.0, gt=0, description="Per delivery attempt.")
    max_attempts: int = Field(
        6, ge=1, description="Attempts before the delivery is dead-lettered in the ledger."
    )
    backoff_initial_s: float = Field(1.0, gt=0, description="First retry delay (with jitter).")
    backoff_max_s: float = Field(300.0, gt=0, description="Longest retry delay.")

    @field_validator("secret")
    @classmethod
    def _whsec(cls, v: SecretStr) -> SecretStr:
        if not v.get_secret_value().startswith("whsec_"):
            raise ValueError("webhook secret must look like whsec_<base64>")
        return v


class PolicyConfig(_Section):
    name: str = Field(
        "default", description="Names the policy in the ledger, metrics and episode ids."
    )
    signal: Literal["drift_share", "dataset_drift", "feature_statistic", "degradation"] = Field(
        "drift_share",
        description="Window value compared with the threshold (feature_statistic: the "
        "statistic of the feature named by `feature`; degradation: 1 when the detector of the "
        "degradation signal named by `degradation` found a change during the window, else 0).",
    )
    feature: str | None = Field(None, description="Feature whose statistic is the signal.")
    degradation: str | None = Field(
        None, description="Degradation signal (a drift.degradation name) whose detections count."
    )
    threshold: float = Field(0.5, description="A window qualifies when signal >= threshold.")
    consecutive_windows: int = Field(
        2, ge=1, description="Qualifying windows (N) among the last `window_of` to fire."
    )
    window_of: int | None = Field(
        None, ge=1, description="M of 'N of the last M windows'; None: M = N (N in a row)."
    )
    clear_windows: int = Field(
        0,
        ge=0,
        description="After a decision, windows in a row below `clear_threshold` that end the "
        "episode and re-arm the policy; 0 re-arms at once.",
    )
    clear_threshold: float | None = Field(
        None, description="Signal below which a window counts towards clearing (None: threshold)."
    )
    min_samples: int = Field(100, ge=0, description="Windows with fewer records never qualify.")
    cooldown_s: float = Field(3600.0, ge=0, description="Quiet time per segment after firing.")
    record_types: list[str] = Field(
        default_factory=lambda: ["llm", "tools"], description="Record types the policy watches."
    )
    segments: dict[str, str] = Field(
        default_factory=dict,
        description="Segment field -> glob pattern; the policy watches matching segments only.",
    )
    actions: list[Literal["argo", "kfp"]] = Field(
        default_factory=list, description="Runs to start when the policy fires (besides webhooks)."
    )
    model_field: str = Field("model", description="Segment field naming the model (concurrency).")
    max_concurrent_runs: int = Field(
        1, ge=1, description="Runs per model in progress at once; more wait for one to finish."
    )
    approval: bool = Field(
        False, description="A fired decision needs approval before its actions (see approval_mode)."
    )
    approval_mode: Literal["ledger", "argo"] = Field(
        "ledger",
        description="ledger: the decision is held in observer's ledger, nothing is sent until "
        "`observer triggers approve` or POST /api/v1/triggers/{episode}/approve; argo: "
        "actions go out at once and the Argo run waits at a suspend step before training.",
    )
    webhooks: list[WebhookConfig] = Field(
        default_factory=list, description="Standard Webhooks to deliver when the policy fires."
    )

    @model_validator(mode="after")
    def _coherent(self) -> "PolicyConfig":
        if self.signal == "feature_statistic" and not self.feature:
            raise ValueError("signal feature_statistic needs `feature` (the feature's name)")
        if self.signal == "degradation" and not self.degradation:
            raise ValueError("signal degradation needs `degradation` (a drift.degradation name)")
        if self.window_of is not None and self.window_of < self.consecutive_windows:
            raise ValueError(
                f"window_of ({self.window_of}) must be >= consecutive_windows "
                f"({self.consecutive_windows})"
            )
        return self


class ArgoConfig(_Section):
    server: str = Field("", description="Argo Server URL (https://argo.example:2746).")
    token: SecretStr | None = Field(None, description="Bearer token of the submitting account.")
    namespace: str = Field("argo", description="Namespace the workflows run in.")
    verify_ssl: bool = Field(True, description="Verify the server's TLS certificate.")
    ca_file: str = Field("", description="CA bundle to verify the server with (PEM path).")
    client_cert: str = Field("", description="Client certificate (PEM path) for mutual TLS.")
    client_key: str = Field("", description="Client key (PEM path) for mutual TLS.")
    mode: Literal["template", "inline"] = Field(
        "template",
        description="template: submit from the WorkflowTemplate; inline: create the Workflow.",
    )
    workflow_template: str = Field("observer-retrain", description="WorkflowTemplate name.")
    name_prefix: str = Field("retrain-", description="Workflow name = prefix + episode id.")
    service_account: str = Field("", description="Service account the workflow runs as.")
    timeout_s: float = Field(30.0, gt=0, description="Per request.")
    max_attempts: int = Field(10, ge=1, description="Attempts before dead-lettering.")
    backoff_initial_s: float = Field(2.0, gt=0, description="First retry delay (full jitter).")
    backoff_max_s: float = Field(600.0, gt=0, description="Longest retry delay.")
    busy_retry_s: float = Field(
        300.0, gt=0, description="Re-check after this when max_concurrent_runs are in progress."
    )


class KfpConfig(_Section):
    host: str = Field("", description="Kubeflow Pipelines API URL (https://kfp.example).")
    token: SecretStr | None = Field(None, description="Bearer token.")
    pipeline_id: str = Field("", description="Pipeline to run.")
    pipeline_version_id: str = Field("", description="Its version.")
    experiment_id: str = Field("", description="Experiment the runs belong to (optional).")
    verify_ssl: bool = Field(True, description="Verify the server's TLS certificate.")
    timeout_s: float = Field(30.0, gt=0, description="Per request.")
    max_attempts: int = Field(10, ge=1, description="Attempts before dead-lettering.")


class ExportConfig(_Section):
    uri: str = Field(
        ".observer/exports",
        description="Where drifted windows go as Parquet: a path or a URI (s3://bucket/prefix).",
    )
    max_records: int = Field(200_000, ge=1, description="Records read back per window at most.")
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options for the URI's filesystem."
    )


class PipelineConfig(_Section):
    """What `observer pipeline render` writes; runs get episode values as parameters."""

    image: str = Field("ghcr.io/observer/observer:0.1.0", description="observer's image.")
    service_account: str = Field("observer-pipeline", description="The workflow's pods' account.")
    spark_image: str = Field("ghcr.io/observer/observer-spark:0.1.0", description="Spark image.")
    spark_version: str = Field("4.0.1", description="Spark version of the image.")
    spark_executors: int = Field(2, ge=1, description="Spark executor instances.")
    spark_memory: str = Field("2g", description="Driver and executor memory.")
    history_uri: str = Field("", description="Earlier training data merged in (Parquet).")
    output_uri: str = Field("s3://observer/runs", description="Base of each run's outputs.")
    trainer: Literal["trainjob", "pytorchjob", "jobset"] = Field(
        "trainjob", description="Training resource kind."
    )
    trainer_runtime: str = Field("torch-distributed", description="TrainJob runtimeRef name.")
    train_image: str = Field("ghcr.io/observer/trainer:0.1.0", description="Training image.")
    train_command: list[str] = Field(
        default_factory=lambda: ["python", "-m", "train"], description="Training command."
    )
    num_nodes: int = Field(1, ge=1, description="Training nodes (gang size).")
    gpus_per_node: int = Field(1, ge=0, description="nvidia.com/gpu per node.")
    scheduler: Literal["none", "kueue", "volcano", "yunikorn"] = Field(
        "none", description="Gang scheduling hook."
    )
    queue: str = Field("default", description="Kueue LocalQueue, Volcano or YuniKorn queue.")
    model_name: str = Field("support-agent", description="InferenceService name.")
    model_format: str = Field("pytorch", description="predictor.model.modelFormat.name.")
    serving_model_uri: str = Field("", description="storageUri of the model now serving.")
    deployment_mode: Literal["Knative", "Standard"] = Field(
        "Standard", description="KServe deployment mode of the canary."
    )
    canary_traffic_percent: int = Field(10, ge=1, le=99, description="Canary's traffic share.")
    canary_soak: str = Field("10m", description="How long the canary serves before promotion.")
    eval_metric: str = Field("accuracy", description="Metric the evaluation gate compares.")
    eval_higher_is_better: bool = Field(True, description="Direction of the metric.")
    eval_min_delta: float = Field(0.0, description="Candidate must beat serving by this much.")


class TriggerConfig(_Section):
    group_id: str = Field("observer-trigger", description="Consumer group.")
    ledger_path: Path = Field(Path(".observer/ledger.sqlite"), description="SQLite ledger file.")
    policies: list[PolicyConfig] = Field(
        default_factory=lambda: [PolicyConfig()],
        description="Policies turning drift results into decisions and actions.",
    )
    argo: ArgoConfig = Field(default_factory=ArgoConfig)
    kfp: KfpConfig = Field(default_factory=KfpConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)


class GPUConfig(_Section):
    """GPU and serving metrics, and GPU economics (``observer collect-gpu``)."""

    source: Literal["nvml", "prometheus"] = Field(
        "nvml",
        description="nvml: this node's GPUs (a DaemonSet); prometheus: DCGM exporter and "
        "vLLM/SGLang series for the whole cluster.",
    )
    node_name: str = Field(
        "", description="Node name on NVML samples; empty: $NODE_NAME, else the host name."
    )
    # Energy took ~3.9 ms per NVML call on an H100 against 3-17 us for the other fields.
    sample_interval_s: float = Field(
        1.0, gt=0, description="NVML: poll utilisation, memory, power, temperature, clock."
    )
    slow_interval_s: float = Field(
        15.0, gt=0, description="NVML: poll the energy counter and the process list (slow calls)."
    )
    prometheus_url: str = Field("http://127.0.0.1:9090", description="Prometheus to query.")
    prometheus_token: SecretStr | None = Field(
        None, description="Bearer token for Prometheus, when it needs one."
    )
    prometheus_interval_s: float = Field(15.0, gt=0, description="Seconds between queries.")
    rate_window: str = Field(
        "1m", pattern=r"^[0-9]+(ms|s|m|h)$", description="PromQL range for rate() (tokens, energy)."
    )
    prices: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Dollars per GPU-hour: {GPU model: {capacity type: price}}; the model "
        "matches the device name case-insensitively, the longest matching key wins.",
    )
    capacity_type: str = Field(
        "on-demand",
        description="Capacity type of this node (karpenter.sh/capacity-type) when no label says.",
    )
    mig_fractions: dict[str, float] = Field(
        default_factory=dict,
        description="Share of a GPU per MIG profile ('1g.10gb': 0.142857); unlisted profiles "
        "use slices/7.",
    )
    time_slice_replicas: int = Field(
        1, ge=1, description="Time-slicing replicas per GPU (device plugin); each share costs 1/n."
    )
    idle_utilization_pct: float = Field(
        1.0, ge=0, description="A GPU under this utilisation with no tokens is idle (waste)."
    )
    token_kinds: list[Literal["prompt", "generation"]] = Field(
        default_factory=lambda: ["prompt", "generation"],
        description="Which tokens count in the economics.",
    )


class MetricsConfig(_Section):
    """The domain-metrics stage (``observer metrics``): LLM, tool and path series on /metrics."""

    group_id: str = Field("observer-metrics", description="Consumer group.")
    # Every distinct label value is a new time series in Prometheus: cap them.
    max_label_values: int = Field(
        20, ge=1, description="Distinct values per label (service, model, tool, agent, "
        "finish reason, error type) given their own series; later values count as 'other'.",
    )
    max_paths: int = Field(
        20, ge=1, description="Prompt-path signatures given their own series; the rest "
        "count as 'other'.",
    )


class KServeConfig(_Section):
    """KServe inference logger intake: the pairing stage (``observer predictions``)."""

    group_id: str = Field("observer-predictions", description="Consumer group of the pairing.")
    pair_timeout_s: float = Field(
        30.0, gt=0, description="A request or response whose partner has not come after this "
        "is written alone (paired: false).",
    )
    max_pending: int = Field(
        100_000, ge=1, description="Unpaired events held; the oldest is written alone above."
    )
    max_features: int = Field(64, ge=1, description="Input (and output) columns kept per record.")
    max_instances: int = Field(1000, ge=1, description="Instances kept per record.")
    max_string_chars: int = Field(
        64, ge=0, description="Longer string values are replaced by sha256:<16 hex>."
    )


class SupervisorConfig(_Section):
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


class AdminConfig(_Section):
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
        return _usable_token(token, "admin.auth_token")

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


class ObserverConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="OBSERVER_", env_nested_delimiter="__", extra="forbid"
    )

    log_level: str = Field("INFO", description="Python logging level.")
    kafka: KafkaConfig = Field(default_factory=KafkaConfig)
    receiver: ReceiverConfig = Field(default_factory=ReceiverConfig)
    normalizer: NormalizerConfig = Field(default_factory=NormalizerConfig)
    paths: PathsConfig = Field(default_factory=PathsConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    trigger: TriggerConfig = Field(default_factory=TriggerConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    gpu: GPUConfig = Field(default_factory=GPUConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    kserve: KServeConfig = Field(default_factory=KServeConfig)
    supervisor: SupervisorConfig = Field(default_factory=SupervisorConfig)

    @model_validator(mode="after")
    def _tenant_segments(self) -> ObserverConfig:
        # With tenants, one tenant's traffic must never move another's drift or fire its
        # retraining: the tenant leads every segment (and so every Kafka key written by
        # segment), whatever drift.segment_keys says.
        if self.receiver.tenants:
            drift = self.drift
            drift.segment_keys = with_tenant(drift.segment_keys)
            drift.segment_keys_by_record_type = {
                record_type: keys if record_type in TENANTLESS_RECORD_TYPES else with_tenant(keys)
                for record_type, keys in drift.segment_keys_by_record_type.items()
            }
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the YAML file, which arrives as init kwargs.
        return (env_settings, init_settings)


class ConfigError(ValueError):
    """The configuration file or environment is invalid; the message names the problem."""


def _problems(error: ValidationError) -> str:
    """Every bad field and why, without the values given: they can be secrets (tokens).

    >>> try:
    ...     ReceiverConfig(auth_token="s3cret ", http_port="x")
    ... except ValidationError as e:
    ...     print(_problems(e))
    <BLANKLINE>
      http_port: Input should be a valid integer, unable to parse string as an integer
      auth_token: receiver.auth_token has leading or trailing whitespace (a newline from a file?)
    """
    return "".join(
        f"\n  {'.'.join(str(part) for part in e['loc']) or '(top level)'}: "
        f"{e['msg'].removeprefix('Value error, ')}"
        for e in error.errors(include_url=False, include_input=False)
    )


def load_config(path: Path | str | None, env: Mapping[str, str] | None = None) -> ObserverConfig:
    """Load the YAML file at ``path`` (if any) and apply ``OBSERVER_*`` overrides.

    ``env`` replaces ``os.environ`` (for tests); ``OBSERVER_CONFIG`` names the file when
    ``path`` is None.
    """
    environ = os.environ if env is None else env
    path = path or environ.get("OBSERVER_CONFIG") or None
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
    saved = None
    if env is not None:
        # pydantic-settings reads os.environ; swap it for the duration when a test passes env.
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)
    try:
        return ObserverConfig(**data)
    except ValidationError as e:
        raise ConfigError(f"invalid configuration: {_problems(e)}") from None
    except Exception as e:  # noqa: BLE001 (a settings source that cannot parse a value)
        raise ConfigError(f"invalid configuration: {e}") from None
    finally:
        if saved is not None:
            os.environ.clear()
            os.environ.update(saved)
