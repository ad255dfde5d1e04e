"""The embedding drift methods: one table of statistic, default threshold and rule.

Every method takes the reference and current vectors of one window (``(n, d)`` float arrays,
one row per record) and returns an :class:`EmbeddingScore`. The engine picks a method by
name from :data:`EMBEDDING_METHODS` (``FeatureSpec.method`` of an ``embedding`` feature).

==============  ===================================  =========  ==================
name            statistic                            threshold  drift when
==============  ===================================  =========  ==================
``distance``    distance between the mean vectors    0.2        stat > threshold
==============  ===================================  =========  ==================

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> ref = rng.normal(size=(200, 8))
>>> score = EMBEDDING_METHODS["distance"].score(ref, ref + 1.0, None)
>>> round(score.statistic, 3), score.drifted
(2.828, True)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class EmbeddingScore:
    """One method's verdict on one window."""

    statistic: float
    threshold: float
    drifted: bool
    statistics: dict[str, float] = field(default_factory=dict)
    """Further figures the method computed (reported in the result's ``statistics``)."""


Scorer = Callable[[np.ndarray, np.ndarray, "float | None"], EmbeddingScore]


@dataclass(frozen=True)
class EmbeddingMethod:
    """One embedding drift method: how to score a window and what its statistic means."""

    name: str
    score: Scorer
    """``score(reference, current, threshold)``; ``threshold`` None: the default."""
    default_threshold: float
    description: str


def _distance(reference: np.ndarray, current: np.ndarray, threshold: float | None) -> EmbeddingScore:
    # Evidently's DistanceDriftMethod default: euclidean distance of the mean vectors.
    t = 0.2 if threshold is None else threshold
    stat = float(np.linalg.norm(reference.mean(axis=0) - current.mean(axis=0)))
    return EmbeddingScore(stat, t, stat > t)


EMBEDDING_METHODS: dict[str, EmbeddingMethod] = {
    "distance": EmbeddingMethod(
        "distance", _distance, 0.2, "Euclidean distance between the mean vectors (Evidently)."
    ),
}
"""Method name -> method."""
