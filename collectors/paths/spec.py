"""The trace-grouping stage (``observer paths``), as the shell's registry sees it: :data:`SPEC`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from observer.core.stage import StageSpec
from observer.core.topics import Topics

if TYPE_CHECKING:
    from observer.config import ObserverConfig


def _build(cfg: ObserverConfig, topics: Topics) -> Any:
    from observer.collectors.common.tenant_seal import TenantSeal
    from observer.collectors.paths.trace_grouping import TraceGrouper

    return TraceGrouper(topics, cfg.paths, segment_keys=cfg.drift.keys_for("paths"),
                        seal=TenantSeal.for_stages(cfg.receiver))


SPEC = StageSpec(
    name="paths",
    cpu_weight=13,  # share of `observer up` CPU (docs/benchmarks.md, "Several processes")
    help="run trace grouping",
    description="Group the spans of each trace (keyed by trace id) into one agent-path record: "
    "loop iterations, LLM and tool calls, errors, the path signature.",
    config_section="paths",
    inputs=("spans",),
    outputs=("paths",),
    build=_build,
    group_id=lambda cfg: cfg.paths.group_id,
    hold_s=lambda cfg: cfg.paths.timeout_s,  # open traces
)
