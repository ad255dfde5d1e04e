"""The normaliser stage (``observer normalize``), as the shell's registry sees it: :data:`SPEC`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from observer.core.stage import StageSpec
from observer.core.topics import Topics

if TYPE_CHECKING:
    from observer.config import ObserverConfig


def _build(cfg: ObserverConfig, topics: Topics) -> Any:
    from observer.collectors.common.tenant_seal import TenantSeal
    from observer.collectors.normalize.normalizer import Normalizer
    from observer.collectors.normalize.text_descriptors import TextDescriptors

    # Records are keyed by the drift segment (the tenant first with tenants), and a tenant
    # is trusted only under the receivers' seal.
    return Normalizer(topics, content=cfg.normalizer.content,
                      segment_keys=cfg.drift.segment_keys, seal=TenantSeal.for_stages(cfg.receiver),
                      embeddings=cfg.normalizer.embeddings,
                      descriptors=TextDescriptors(cfg.normalizer.refusal_patterns)
                      if cfg.normalizer.descriptors else None)


SPEC = StageSpec(
    name="normalize",
    cpu_weight=26,  # share of `observer up` CPU (docs/benchmarks.md, "Several processes")
    help="run the normaliser",
    description="Turn GenAI spans (OpenTelemetry GenAI, OpenInference, OpenLLMetry) into "
    "LLM-call, tool-call, retrieval and evaluation records, and prompt and response "
    "embeddings.",
    config_section="normalizer",
    inputs=("spans",),
    outputs=("llm", "tools", "retrievals", "embeddings", "evals"),
    build=_build,
    group_id=lambda cfg: cfg.normalizer.group_id,
)
