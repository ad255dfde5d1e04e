"""The KServe pairing stage (``observer predictions``), as the shell's registry sees it:
:data:`SPEC`. (The logger intake itself is a route of the receiver stage.)"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from observer.core.stage import StageSpec
from observer.core.topics import Topics

if TYPE_CHECKING:
    from observer.config import ObserverConfig


def _build(cfg: ObserverConfig, topics: Topics) -> Any:
    from observer.collectors.common.tenant_seal import TenantSeal
    from observer.collectors.kserve.pairing import PredictionPairer

    return PredictionPairer(topics, cfg.kserve, segment_keys=cfg.drift.keys_for("predictions"),
                            seal=TenantSeal.for_stages(cfg.receiver))


SPEC = StageSpec(
    name="predictions",
    cpu_weight=0.5,  # share of `observer up` CPU (docs/benchmarks.md, "Several processes")
    help="pair KServe logger events",
    description="Join each KServe inference request to its response (keyed by ce-id) into one "
    "prediction record; an event whose partner does not come is written alone.",
    config_section="kserve",
    inputs=("kserve_events",),
    outputs=("predictions",),
    build=_build,
    group_id=lambda cfg: cfg.kserve.group_id,
    hold_s=lambda cfg: cfg.kserve.pair_timeout_s,  # unpaired events
)
