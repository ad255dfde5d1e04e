"""The eval join's metrics: what it emitted with a segment, without one, and what it holds."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

JOINED = Counter(
    "observer_evals_joined_total",
    "Evaluations written to observer.evals-joined with a segment: carried (it came with its "
    "span's) or joined (from its target's).",
    ["how"],
)
UNJOINED = Counter(
    "observer_evals_unjoined_total",
    "Evaluations written to observer.evals-joined without a segment: expired (no target within "
    "eval_join.pending_ttl_s), evicted (the pending buffer was full), orphan (no target id).",
    ["reason"],
)
TARGETS_DROPPED = Counter(
    "observer_eval_join_targets_dropped_total",
    "Join keys of LLM calls dropped: expired (eval_join.target_ttl_s) or evicted "
    "(eval_join.max_targets).",
    ["reason"],
)
PENDING = Gauge("observer_eval_join_pending", "Evaluations waiting for their target.")
TARGETS = Gauge("observer_eval_join_targets", "Join keys of LLM calls held (span, trace, session).")

