"""The registry of stages: every stage's :class:`~observer.core.stage.StageSpec`, in the
order ``observer up`` starts them and the documentation lists them.

The shell reads it and nothing else about a stage: the runtime (what to build, which groups,
topics and hold times), the CLI (one subcommand per stage, its help from the spec), the admin
API (each stage's routes) and ``docs/gen_reference.py`` (the stages and topics page and its
topology diagram). A stage is added by writing its spec beside its code and listing it here.

>>> [s.name for s in STAGES if s.in_runtime]  # doctest: +NORMALIZE_WHITESPACE
['collect', 'normalize', 'paths', 'genai-metrics', 'predictions', 'eval-join', 'drift',
 'trigger', 'metrics']
>>> BY_NAME["trigger"].inputs, BY_NAME["trigger"].outputs
(('drift', 'references'), ('triggers', 'drift_commands'))
"""

from __future__ import annotations

from typing import Any

from observer.collectors.eval_join.spec import SPEC as EVAL_JOIN
from observer.collectors.gpu.spec import SPEC as COLLECT_GPU
from observer.collectors.kserve.spec import SPEC as PREDICTIONS
from observer.collectors.metrics.spec import GENAI_METRICS, METRICS
from observer.collectors.normalize.spec import SPEC as NORMALIZE
from observer.collectors.paths.spec import SPEC as PATHS
from observer.collectors.receiver.spec import SPEC as COLLECT
from observer.core.stage import AdminContext, StageSpec
from observer.drift.spec import SPEC as DRIFT
from observer.triggers.spec import SPEC as TRIGGER

STAGES: tuple[StageSpec, ...] = (
    COLLECT, NORMALIZE, PATHS, GENAI_METRICS, PREDICTIONS, EVAL_JOIN, DRIFT, TRIGGER, METRICS,
    COLLECT_GPU,
)
BY_NAME: dict[str, StageSpec] = {s.name: s for s in STAGES}
if len(BY_NAME) != len(STAGES):
    raise RuntimeError("two stages share a name in observer.stages.STAGES")

RUNTIME_STAGES: list[str] = [s.name for s in STAGES if s.in_runtime]
"""What ``observer up`` runs: every stage without a command of its own."""


def consumers() -> dict[str, StageSpec]:
    """The consuming stages, by name (the runtime runs each under a supervisor)."""
    return {s.name: s for s in STAGES if s.kind == "consumer"}


def admin_routers(context: Any) -> list[Any]:
    """Every stage's admin routes; ``context(spec)`` gives the :class:`AdminContext` of one."""
    routers = []
    for spec in STAGES:
        if spec.admin_routes is not None:
            ctx: AdminContext = context(spec)
            routers.append(spec.admin_routes(ctx))
    return routers
