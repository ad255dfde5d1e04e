"""The eval join stage (``observer eval-join``), as the shell's registry sees it: :data:`SPEC`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from observer.core.stage import StageSpec
from observer.core.topics import Topics

if TYPE_CHECKING:
    from observer.config import ObserverConfig


def _build(cfg: ObserverConfig, topics: Topics) -> Any:
    from observer.collectors.eval_join.join import EvalJoiner
    from observer.collectors.eval_join.local_state import (
        STATE_FILE,
        LocalStateStore,
        MirroredJoiner,
    )

    from observer.core.broker import read_incarnation
    from observer.core.compacted import KafkaCompactedStore

    # Keyed like the drift engine's evals streams (stages never import each other: the
    # drift section is shared configuration).
    keys = cfg.drift.keys_for("evals")
    state_dir = cfg.kafka.durable_state_dir
    if state_dir is None:
        store = KafkaCompactedStore(cfg.kafka, topics.eval_join_state,
                                    cfg.eval_join.restore_timeout_s, "the eval join's checkpoint")
        return EvalJoiner(topics, cfg.eval_join, keys, store=store)
    # The embedded broker keeps nothing across a restart: the checkpoint lives on disk.
    incarnation = read_incarnation(state_dir)
    if incarnation is None:
        raise RuntimeError(f"no broker incarnation recorded in {state_dir}: the embedded "
                           "broker must be started with this state directory first")
    local = LocalStateStore(state_dir / STATE_FILE, topics.eval_join_state, incarnation)
    return MirroredJoiner(EvalJoiner(topics, cfg.eval_join, keys, store=local), local)


SPEC = StageSpec(
    name="eval-join",
    cpu_weight=6,  # share of `observer up` CPU (docs/benchmarks.md, "Several processes")
    help="run the eval join",
    description="Join each evaluation score or feedback to its target LLM call's segment "
    "(tenant, service, model, cluster) by span, trace or session id; a score that comes "
    "before its target waits (bounded, checkpointed), one never joined is emitted unjoined.",
    config_section="eval_join",
    inputs=("llm", "evals"),
    outputs=("evals_joined", "eval_join_state"),
    reads_back=("eval_join_state",),  # its checkpoint, at a start
    build=_build,
    group_id=lambda cfg: cfg.eval_join.group_id,
)
