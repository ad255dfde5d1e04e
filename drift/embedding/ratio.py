"""The ``ratio`` method: the share of vector components whose distribution moved.

Reference: Evidently 0.7.23, ``RatioDriftMethod`` in
``legacy/metrics/data_drift/embedding_drift_methods.py``: every component (column) is tested
on its own with the normalised Wasserstein distance (:mod:`observer.drift.stats.wasserstein`,
Evidently's ``wasserstein`` stattest: drifted when ``W1 / std(reference) >= 0.1``), and the
window drifts when more than 20 % of the components drifted.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> ref = rng.normal(size=(1500, 10))
>>> cur = rng.normal(size=(1500, 10))
>>> cur[:, :3] += 0.5
>>> s = score_ratio(ref, cur, None)
>>> s.statistic, s.drifted
(0.3, True)
"""

from __future__ import annotations

import numpy as np

from observer.drift.embedding.inputs import check_pair
from observer.drift.embedding.score import EmbeddingScore
from observer.drift.stats.wasserstein import (  # noqa: F401  (the doctest compares with it)
    MIN_NORM,
    wasserstein_of_sorted,
)

COMPONENT_THRESHOLD = 0.1
"""A component drifts when its normalised Wasserstein distance reaches this (Evidently)."""
RATIO_THRESHOLD = 0.2
"""The window drifts when the share of drifted components exceeds this (Evidently)."""


def component_distances(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Normalised Wasserstein distance of each column (population std of the reference).

    :func:`~observer.drift.stats.wasserstein.wasserstein_of_sorted`'s quantile-step form,
    applied to all columns at once: the steps depend only on the two row counts.

    >>> rng = np.random.default_rng(3)
    >>> ref, cur = rng.normal(size=(50, 3)), rng.normal(size=(30, 3))
    >>> one = wasserstein_of_sorted(np.sort(ref[:, 1]), np.sort(cur[:, 1])) / ref[:, 1].std()
    >>> bool(np.isclose(component_distances(ref, cur)[1], one, rtol=1e-12))
    True
    """
    ref, cur = np.sort(reference, axis=0), np.sort(current, axis=0)
    norms = np.maximum(reference.std(axis=0), MIN_NORM)
    n, m = len(ref), len(cur)
    if n == m:  # equal sizes: W1 is the mean gap of the sorted values
        return np.abs(ref - cur).mean(axis=0) / norms
    steps = np.union1d(np.arange(n, dtype=np.int64) * m, np.arange(m, dtype=np.int64) * n)
    widths = np.diff(np.append(steps, n * m)) / (n * m)
    gaps = np.abs(ref[steps // m] - cur[steps // n])
    return (widths @ gaps) / norms


def score_ratio(
    reference: np.ndarray, current: np.ndarray, threshold: float | None
) -> EmbeddingScore:
    """Share of components with distance >= 0.1; drift when above ``threshold`` (0.2)."""
    ref, cur = check_pair(reference, current, min_rows=1)
    distances = component_distances(ref, cur)
    share = float(np.mean(distances >= COMPONENT_THRESHOLD))
    bound = RATIO_THRESHOLD if threshold is None else float(threshold)
    return EmbeddingScore(
        share, bound, share > bound, {"max_component_distance": float(distances.max())}
    )
