"""The metric stages, as the shell's registry sees them: :data:`GENAI_METRICS`
(``observer genai-metrics``) and :data:`METRICS` (``observer metrics``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from observer.core.stage import StageSpec
from observer.core.topics import Topics

if TYPE_CHECKING:
    from observer.config import ObserverConfig


def _build_genai(cfg: ObserverConfig, topics: Topics) -> Any:
    from observer.collectors.common.tenant_seal import TenantSeal
    from observer.collectors.metrics.genai_metrics import GenAIMetricsNormalizer

    return GenAIMetricsNormalizer(topics, segment_keys=cfg.drift.segment_keys,
                                  seal=TenantSeal.for_stages(cfg.receiver))


def _build_domain(cfg: ObserverConfig, topics: Topics) -> Any:
    from observer.collectors.metrics.domain_metrics import DomainMetrics

    return DomainMetrics(cfg.metrics, topics)


GENAI_METRICS = StageSpec(
    name="genai-metrics",
    cpu_weight=0.5,  # share of `observer up` CPU (docs/benchmarks.md, "Several processes")
    help="normalise gen_ai.* metrics",
    description="Read gen_ai.* OTLP metric points and write them as interval deltas.",
    # Its consumer group is normalizer.metrics_group_id (the section YAML files know).
    config_section="normalizer",
    inputs=("metrics",),
    outputs=("genai_metrics",),
    build=_build_genai,
    group_id=lambda cfg: cfg.normalizer.metrics_group_id,
)

METRICS = StageSpec(
    name="metrics",
    cpu_weight=8,  # share of `observer up` CPU (docs/benchmarks.md, "Several processes")
    help="run the domain-metrics stage",
    description="Count LLM calls, tokens, tool calls and agent paths as Prometheus series on "
    "the admin API's /metrics, with capped label values.",
    config_section="metrics",
    inputs=("llm", "tools", "paths"),
    sinks=("/metrics",),
    build=_build_domain,
    group_id=lambda cfg: cfg.metrics.group_id,
)
