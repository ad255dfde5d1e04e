"""What an embedding drift method returns for one window (re-exported by :mod:`.methods`).

>>> EmbeddingScore(0.7, 0.55, True, {"auc": 0.7}).drifted
True
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class EmbeddingScore:
    """One method's verdict on one window."""

    statistic: float
    threshold: float
    """The bound the statistic was compared with (resolved: a bootstrap quantile, an upper
    control limit...), not necessarily the configured number."""
    drifted: bool
    statistics: dict[str, float] = field(default_factory=dict)
    """Further figures the method computed (reported in the result's ``statistics``)."""
