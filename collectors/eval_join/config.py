"""The eval join's configuration (the ``eval_join`` section).

Times are record time: the newest Kafka timestamp the stage has read on its inputs
(:mod:`observer.collectors.eval_join.join`), so a replay or a backlog ages nothing early.

>>> cfg = EvalJoinConfig()
>>> cfg.pending_ttl_s, cfg.max_pending
(3600.0, 100000)
"""

from __future__ import annotations

from pydantic import Field

from observer.core.config import Section


class EvalJoinConfig(Section):
    group_id: str = Field("observer-eval-join", description="Consumer group of the eval join. "
                          "Its state is global (observer.llm and observer.evals are keyed "
                          "differently): run one replica.")
    pending_ttl_s: float = Field(
        3600.0, gt=0, description="An evaluation whose target has not been seen waits this "
        "long (record time) before it is emitted as unjoined (reason expired).")
    max_pending: int = Field(
        100_000, ge=1, description="Evaluations waiting for their target; above this the "
        "oldest is emitted as unjoined (reason evicted).")
    target_ttl_s: float = Field(
        86_400.0, gt=0, description="How long (record time) a seen LLM call stays a join "
        "target after it was first seen; give it at least the longest delay of a late score.")
    max_targets: int = Field(
        200_000, ge=1, description="Join keys held (one per LLM call's span, one per trace "
        "and session first seen); above this the oldest is dropped, counted.")
    restore_timeout_s: float = Field(
        60.0, gt=0, description="Longest time reading the checkpoint topic back at a start "
        "may take before the stage fails (and its supervisor retries).")

