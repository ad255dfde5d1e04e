"""The ``distance`` and ``cosine`` methods: how far apart the two windows' mean vectors are.

Reference: Evidently 0.7.23, ``DistanceDriftMethod`` in
``legacy/metrics/data_drift/embedding_drift_methods.py`` (``dist="euclidean"``, its default,
and ``dist="cosine"``: SciPy's ``1 - u·v / (|u| |v|)``), drift when the distance exceeds 0.2.
The euclidean distance is in the vectors' unit (for L2-normalised embeddings, between 0 and
2); the cosine distance ignores the mean vectors' lengths and lies between 0 and 2.

>>> import numpy as np
>>> ref = np.array([[1.0, 0.0], [0.0, 1.0]])
>>> round(score_distance(ref, ref + 0.5, None).statistic, 4)
0.7071
>>> score_cosine(ref, 3 * ref, None).statistic
0.0
"""

from __future__ import annotations

import numpy as np

from observer.drift.embedding.inputs import check_pair
from observer.drift.embedding.score import EmbeddingScore

DISTANCE_THRESHOLD = 0.2
"""Evidently's threshold, for both distances."""


def _means(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref, cur = check_pair(reference, current, min_rows=1)
    return ref.mean(axis=0), cur.mean(axis=0)


def _verdict(stat: float, threshold: float | None) -> EmbeddingScore:
    bound = DISTANCE_THRESHOLD if threshold is None else float(threshold)
    return EmbeddingScore(stat, bound, stat > bound)


def score_distance(
    reference: np.ndarray, current: np.ndarray, threshold: float | None
) -> EmbeddingScore:
    """Euclidean distance between the mean vectors."""
    ref_mean, cur_mean = _means(reference, current)
    return _verdict(float(np.linalg.norm(ref_mean - cur_mean)), threshold)


def score_cosine(
    reference: np.ndarray, current: np.ndarray, threshold: float | None
) -> EmbeddingScore:
    """Cosine distance between the mean vectors; a zero mean vector is an error (no direction)."""
    ref_mean, cur_mean = _means(reference, current)
    norms = float(np.linalg.norm(ref_mean)) * float(np.linalg.norm(cur_mean))
    if norms == 0.0:
        raise ValueError("the cosine distance needs mean vectors of non-zero length")
    # clip: rounding can put the cosine of parallel vectors a hair above 1
    stat = float(np.clip(1.0 - float(ref_mean @ cur_mean) / norms, 0.0, 2.0))
    return _verdict(stat, threshold)
