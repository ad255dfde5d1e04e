"""The trigger stage, as the shell's registry (``observer.stages``) sees it: :data:`SPEC`.

Its code loads only when the stage is built or its routes mounted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from observer.core.stage import AdminContext, StageSpec
from observer.core.topics import Topics

if TYPE_CHECKING:
    from observer.config import ObserverConfig


def _build(cfg: ObserverConfig, topics: Topics) -> Any:
    from observer.triggers.stage import TriggerStage

    return TriggerStage(cfg.trigger, topics, kafka=cfg.kafka)


def _routes(ctx: AdminContext) -> Any:
    from observer.triggers.admin_routes import routes

    return routes(ctx)


SPEC = StageSpec(
    name="trigger",
    cpu_weight=0.5,  # share of `observer up` CPU (docs/benchmarks.md, "Several processes")
    beside_admin=True,  # its routes read its ledger (approvals, promotion callbacks)
    help="run the trigger stage",
    description="Turn sustained drift into recorded decisions (SQLite ledger), signed "
    "webhooks and Argo or Kubeflow Pipelines runs, per trigger.policies; follow each episode "
    "through its run and promotion to a new reference.",
    config_section="trigger",
    # references: the drift engine's answer to a promotion's re-baselining command.
    inputs=("drift", "references"),
    outputs=("triggers", "drift_commands"),
    sinks=("webhooks", "Argo", "KFP"),
    build=_build,
    group_id=lambda cfg: cfg.trigger.group_id,
    admin_routes=_routes,
)
