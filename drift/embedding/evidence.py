"""Why an embedding window drifted: its most unusual records and the clusters the reference lacks.

A pure function over the two windows' vectors; the engine maps the row indices it returns to
trace and span ids (and snippets under content capture) in ``EmbeddingEvidence``
(:mod:`observer.core.records`).

- **Unlike records**: every current row's out-of-fold probability of being "current" from the
  domain classifier (:func:`observer.drift.embedding.classifier.current_likeness`, trained on
  the ``model`` method's split); the ``top`` highest.
- **Novel clusters**: k-means (``clusters`` centres, fixed seed) on the pooled vectors; a
  cluster is novel when its share of the current window is at least twice its share of the
  reference *and* the difference is significant (two-proportion z >= 3, so that chance
  wobbles of a same-distribution window name nothing). The ``max_clusters`` largest excesses
  are kept, members ordered most unlike first.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> ref = rng.normal(size=(400, 16))
>>> cur = np.vstack([rng.normal(size=(160, 16)), rng.normal(6.0, 1.0, size=(40, 16))])
>>> found = explain(ref, cur, top=3)
>>> [bool(i >= 160) for i, _ in found.unlike]
[True, True, True]
>>> [(round(c.share_current, 2), round(c.share_reference, 2)) for c in found.novel_clusters]
[(0.2, 0.0)]
>>> sorted(found.novel_clusters[0].members) == list(range(160, 200))
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from observer.drift.embedding.classifier import current_likeness
from observer.drift.embedding.inputs import check_pair

CLUSTERS = 8
"""k-means centres on the pooled vectors (more than the novel clusters reported, so a new
topic gets a centre of its own rather than joining an old one)."""
CLUSTER_SEED = 0
CLUSTER_FIT_ROWS = 4000
"""k-means is fitted on at most this many pooled rows (a seeded sample), then assigns all."""
MIN_RATIO = 2.0
MIN_Z = 3.0


class UnlikeRow(NamedTuple):
    """A current row (by index) and its probability of being from the current window."""

    index: int
    score: float


@dataclass(frozen=True)
class NovelGroup:
    """A cluster of the current window that the reference lacks."""

    share_current: float
    share_reference: float
    members: tuple[int, ...]
    """Indices of its current rows, most unlike the reference first."""
    member_scores: tuple[float, ...]
    """Their scores (as in :class:`UnlikeRow`), in the same order."""


@dataclass(frozen=True)
class Explanation:
    """What :func:`explain` found; indices are rows of the current window."""

    unlike: tuple[UnlikeRow, ...]
    novel_clusters: tuple[NovelGroup, ...]


def cluster_labels(pooled: np.ndarray, clusters: int = CLUSTERS) -> np.ndarray:
    """k-means labels of the pooled rows (seeded; fitted on a sample of large inputs)."""
    from sklearn.cluster import KMeans  # loads in ~1.5 s: here, not at start
    k = max(1, min(clusters, len(pooled) // 2))
    sample = pooled
    if len(pooled) > CLUSTER_FIT_ROWS:
        rng = np.random.default_rng(CLUSTER_SEED)
        keep = rng.choice(len(pooled), CLUSTER_FIT_ROWS, replace=False)
        sample = pooled[keep]
    model = KMeans(n_clusters=k, random_state=CLUSTER_SEED, n_init=3).fit(sample)
    return model.predict(pooled)


def novel_groups(
    ref_labels: np.ndarray, cur_labels: np.ndarray, scores: np.ndarray, max_clusters: int
) -> tuple[NovelGroup, ...]:
    """The clusters over-represented in the current window (see the module docstring)."""
    m, n = len(ref_labels), len(cur_labels)
    found = []
    for label in np.unique(cur_labels):
        in_ref, in_cur = int(np.sum(ref_labels == label)), int(np.sum(cur_labels == label))
        p_ref, p_cur = in_ref / m, in_cur / n
        pooled = (in_ref + in_cur) / (m + n)
        spread = np.sqrt(pooled * (1 - pooled) * (1 / m + 1 / n))
        z = (p_cur - p_ref) / spread if spread > 0 else 0.0
        if p_cur >= MIN_RATIO * p_ref and z >= MIN_Z:
            members = np.flatnonzero(cur_labels == label)
            members = members[np.argsort(-scores[members], kind="stable")]
            found.append((p_cur - p_ref, NovelGroup(
                p_cur, p_ref, tuple(int(i) for i in members),
                tuple(float(scores[i]) for i in members),
            )))
    found.sort(key=lambda pair: -pair[0])
    return tuple(group for _, group in found[:max_clusters])


def explain(
    reference: np.ndarray,
    current: np.ndarray,
    *,
    top: int = 5,
    max_clusters: int = 3,
    clusters: int = CLUSTERS,
) -> Explanation:
    """The ``top`` current rows most unlike the reference, and up to ``max_clusters`` novel
    clusters (see the module docstring). Raises :class:`ValueError` on unusable input."""
    if top < 0 or max_clusters < 0 or clusters < 1:
        raise ValueError("top and max_clusters must be >= 0 and clusters >= 1")
    ref, cur = check_pair(reference, current, min_rows=4)
    scores = current_likeness(ref, cur)
    order = np.argsort(-scores, kind="stable")[:top]
    unlike = tuple(UnlikeRow(int(i), float(scores[i])) for i in order)
    groups: tuple[NovelGroup, ...] = ()
    if max_clusters > 0:
        labels = cluster_labels(np.vstack([ref, cur]), clusters)
        groups = novel_groups(labels[: len(ref)], labels[len(ref):], scores, max_clusters)
    return Explanation(unlike, groups)
