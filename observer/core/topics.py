"""Kafka topic names: the only place stages meet.

The ``otlp_*`` names are the OpenTelemetry Collector kafka exporter's defaults, so a Collector
can write into observer directly; the ``observer.*`` names take the configured prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

from observer.core.config import KafkaConfig


@dataclass(frozen=True)
class TopicSpec:
    """One topic's facts, declared once: the documentation's topic table is generated from
    these (docs/gen_reference.py), and which stage writes or reads each topic comes from the
    stage specs (observer/stages.py)."""

    suffix: str
    prefixed: bool
    key: str
    value: str
    compacted: bool = False
    retention_ms: int | None = None
    """``retention.ms`` given to the topic when observer creates it (None: the broker's
    default); ``kafka.topic_retention_ms`` overrides it per topic."""


TOPIC_TABLE: dict[str, TopicSpec] = {
    "spans": TopicSpec(
        "otlp_spans", False, "trace id (hex)",
        "OTLP `ExportTraceServiceRequest` protobuf (the Collector kafka exporter's `otlp_proto`): "
        "whole traces; every trace in a message hashes to the key's partition; sealed "
        "(AES-256-GCM) when a stamp key is in use",
    ),
    "metrics": TopicSpec(
        "otlp_metrics", False, "resource hash",
        "OTLP `ExportMetricsServiceRequest`, one per resource (read by the GenAI metrics stage)",
    ),
    "logs": TopicSpec(
        "otlp_logs", False, "resource hash", "OTLP `ExportLogsServiceRequest`, one per resource"
    ),
    "llm": TopicSpec(
        "llm", True,
        "segment: its values (service, model; tenant first with tenancy) joined by a pipe",
        "`observer.llm/v1`, one per LLM call",
    ),
    "embeddings": TopicSpec(
        "embeddings", True, "segment",
        "`observer.embeddings/v1`, the prompt and response vectors of one LLM call (no content); "
        "kept 7 days unless `kafka.topic_retention_ms` says otherwise",
        retention_ms=7 * 24 * 3600 * 1000,
    ),
    "tools": TopicSpec("tools", True, "segment", "`observer.tools/v1`, one per tool call"),
    "retrievals": TopicSpec(
        "retrievals", True, "segment",
        "`observer.retrievals/v1`, one per retrieval or rerank step (scores, document ids; no "
        "text)",
    ),
    "evals": TopicSpec(
        "evals", True, "the target's trace id (hex), else its span id, else its session id",
        "`observer.evals/v1`, one per evaluation score or feedback (inline, EVALUATOR spans, "
        "`gen_ai.evaluation.result` events, `POST /v1/span_annotations`)",
    ),
    "evals_joined": TopicSpec(
        "evals-joined", True, "segment",
        "`observer.evals/v1` with `tenant`, `service`, `model` filled from the target's segment "
        "and `join` (carried, joined, unjoined): the drift engine's `evals` record type",
    ),
    "eval_join_state": TopicSpec(
        "eval-join-state", True, "`t:[kind, tenant, id]` (a join key), `p:{partition}/{offset}` "
        "(a waiting evaluation)",
        "`observer.eval-join-state/v1` checkpoints of the eval join (the targets seen, the "
        "evaluations waiting for theirs), read back at its restart",
        compacted=True,
    ),
    "paths": TopicSpec(
        "paths", True, "segment", "`observer.paths/v1`, one per finished trace (trace grouping)"
    ),
    "predictions": TopicSpec(
        "predictions", True, "segment",
        "`observer.predictions/v1`, one per inference request (KServe pairing)",
    ),
    "kserve_events": TopicSpec(
        "kserve-events", True, "`ce-id`",
        "KServe inference logger CloudEvents as received, in CloudEvents' Kafka binary mode "
        "(`ce_*` headers, the body unchanged)",
    ),
    "genai_metrics": TopicSpec(
        "genai-metrics", True, "segment",
        "`observer.genai-metrics/v1`, one per `gen_ai.*` metric data point and interval",
    ),
    "gpu": TopicSpec(
        "gpu", True, "`node/gpu[/mig]`; model; `scope/name`",
        "`observer.gpu/v1` samples, `observer.serving/v1` engine figures, "
        "`observer.gpu-economics/v1`",
    ),
    "drift": TopicSpec("drift", True, "segment", "`observer.drift/v1`, one per scored window"),
    "drift_state": TopicSpec(
        "drift-state", True, "`{record_type}/{segment}/ref` or `.../{window}/{seq}`",
        "`observer.drift-state/v1` engine checkpoints (references, open-window chunks), written "
        "by the drift engine and read back at its restart",
        compacted=True,
    ),
    "drift_commands": TopicSpec(
        "drift-commands", True, "`{record_type}/{segment}`",
        "`observer.reference-command/v1`: pin, unpin, rebaseline a segment's reference "
        "(`observer references`, the admin API; the trigger stage's re-baselining when a "
        "retrained model is promoted), applied by the drift engine in order",
    ),
    "references": TopicSpec(
        "references", True, "`{record_type}/{segment}`",
        "`observer.references/v1`: each segment's reference versions, pin and last command, "
        "published by the drift engine (the read model of `observer references`)",
        compacted=True,
    ),
    "triggers": TopicSpec(
        "triggers", True, "`policy/segment`",
        "`observer.triggers/v1` decisions, delivery outcomes, approvals",
    ),
    "dead_letter": TopicSpec(
        "dead-letter", True, "stage",
        "`observer.dead-letter/v1`: a record a stage could not process (original bytes, stage, "
        "reason, source topic/partition/offset)",
    ),
}


@dataclass(frozen=True)
class Topics:
    """Resolved topic names for one configuration.

    >>> Topics.from_config(KafkaConfig(topic_prefix="acme.")).llm
    'acme.llm'
    """

    spans: str
    metrics: str
    logs: str
    llm: str
    embeddings: str
    tools: str
    retrievals: str
    evals: str
    evals_joined: str
    eval_join_state: str
    paths: str
    predictions: str
    kserve_events: str
    genai_metrics: str
    gpu: str
    drift: str
    drift_state: str
    drift_commands: str
    references: str
    triggers: str
    dead_letter: str

    @classmethod
    def from_config(cls, cfg: KafkaConfig) -> "Topics":
        return cls(
            **{
                field: (cfg.topic_prefix if spec.prefixed else cfg.otlp_topic_prefix) + spec.suffix
                for field, spec in TOPIC_TABLE.items()
            }
        )

    def all(self) -> dict[str, TopicSpec]:
        """Resolved name -> spec, for topic creation."""
        return {getattr(self, field): spec for field, spec in TOPIC_TABLE.items()}

    def configs(self, cfg: KafkaConfig) -> dict[str, dict[str, str]]:
        """Resolved name -> the topic configs observer creates it with: compaction, and the
        retention of the topic table or ``cfg.topic_retention_ms`` (keyed by table key).

        >>> cfg = KafkaConfig(topic_retention_ms={"embeddings": 3600000})
        >>> topics = Topics.from_config(cfg)
        >>> topics.configs(cfg)["observer.embeddings"], topics.configs(cfg)["observer.llm"]
        ({'retention.ms': '3600000'}, {})
        """
        out: dict[str, dict[str, str]] = {}
        for field, spec in TOPIC_TABLE.items():
            configs = {"cleanup.policy": "compact"} if spec.compacted else {}
            retention = cfg.topic_retention_ms.get(field, spec.retention_ms)
            if retention is not None:
                configs["retention.ms"] = str(retention)
            out[getattr(self, field)] = configs
        return out
