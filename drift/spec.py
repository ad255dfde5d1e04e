"""The drift stage, as the shell's registry (``observer.stages``) sees it: :data:`SPEC`.

Its code loads only when the stage is built or its routes mounted, so ``observer --help``
stays quick.

>>> from observer.config import ObserverConfig
>>> from observer.core.topics import Topics
>>> cfg = ObserverConfig()
>>> SPEC.input_topics(cfg, Topics.from_config(cfg.kafka))  # the record types with features
['observer.llm', 'observer.tools', 'observer.retrievals', 'observer.paths', 'observer.embeddings', 'observer.evals-joined', 'observer.drift-commands']
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from observer.core.stage import AdminContext, StageSpec
from observer.core.topics import Topics
from observer.drift.record_types import RECORD_TYPES, topics_by_type

if TYPE_CHECKING:
    from observer.config import ObserverConfig


def _build(cfg: ObserverConfig, topics: Topics) -> Any:
    # Mirrored to a local file in embedded durable mode (drift.local_state).
    from observer.drift.local_state import drift_stage

    return drift_stage(cfg.drift, cfg.kafka, topics)


def _routes(ctx: AdminContext) -> Any:
    from observer.drift.admin_routes import routes

    return routes(ctx)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    from observer.drift.commands import add_parsers

    add_parsers(parser)  # `drift score`; plain `observer drift` runs the stage


SPEC = StageSpec(
    name="drift",
    cpu_weight=21,  # share of `observer up` CPU (docs/benchmarks.md, "Several processes")
    help="run the drift engine",
    description="Score windows of each record type that has features (drift.features) against "
    "its reference, per segment; write results and checkpoints.",
    config_section="drift",
    # Every record type's topic; a configuration reads those with features (subscribe).
    # and the reference commands (observer references, the admin API).
    inputs=(*dict.fromkeys(rt.topic for rt in RECORD_TYPES.values()), "drift_commands"),
    outputs=("drift", "drift_state", "references"),
    # On restore: its checkpoints, and its recent results (to drop their replayed copies).
    reads_back=("drift_state", "drift"),
    build=_build,
    group_id=lambda cfg: cfg.drift.group_id,
    subscribe=lambda cfg, topics: [*topics_by_type(cfg.drift, topics),
                                   *([topics.drift_commands] if cfg.drift.checkpoints else [])],
    admin_routes=_routes,
    add_arguments=_add_arguments,
)
