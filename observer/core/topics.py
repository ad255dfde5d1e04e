"""Kafka topic names: the only place stages meet.

The ``otlp_*`` names are the OpenTelemetry Collector kafka exporter's defaults, so a Collector
can write into observer directly; the ``observer.*`` names take the configured prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

from observer.core.config import KafkaConfig


@dataclass(frozen=True)
class TopicSpec:
    suffix: str
    prefixed: bool
    compacted: bool = False


# One row per topic; key and value are documented in the README's topic table.
TOPIC_TABLE: dict[str, TopicSpec] = {
    "spans": TopicSpec("otlp_spans", prefixed=False),
    "metrics": TopicSpec("otlp_metrics", prefixed=False),
    "logs": TopicSpec("otlp_logs", prefixed=False),
    "llm": TopicSpec("llm", prefixed=True),
    "tools": TopicSpec("tools", prefixed=True),
    "paths": TopicSpec("paths", prefixed=True),
    "predictions": TopicSpec("predictions", prefixed=True),
    # KServe inference logger CloudEvents as received (Kafka binary mode), key = ce-id.
    "kserve_events": TopicSpec("kserve-events", prefixed=True),
    "genai_metrics": TopicSpec("genai-metrics", prefixed=True),
    "gpu": TopicSpec("gpu", prefixed=True),
    "drift": TopicSpec("drift", prefixed=True),
    "drift_state": TopicSpec("drift-state", prefixed=True, compacted=True),
    "triggers": TopicSpec("triggers", prefixed=True),
    # Records a stage could not process: the original bytes, stage, reason, source offset.
    "dead_letter": TopicSpec("dead-letter", prefixed=True),
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
    tools: str
    paths: str
    predictions: str
    kserve_events: str
    genai_metrics: str
    gpu: str
    drift: str
    drift_state: str
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
