"""Scoring the embedding features of a window: one :class:`FeatureDrift` of kind
``embedding`` per feature, with the evidence behind a drifted verdict.

The engine (:mod:`observer.drift.engine`) hands each embedding feature's reference and current
columns (rows of :class:`~observer.drift.embedding.columns.VectorRow`, exact or sampled by a
:class:`~observer.drift.embedding.columns.Reservoir` in sketch mode) to
:func:`score_embedding`. The method is the feature's ``method``, else
``drift.embedding_method`` (default ``model``, Evidently's domain classifier), a name of
:data:`~observer.drift.embedding.methods.EMBEDDING_METHODS`; its threshold the feature's
``threshold``, else ``drift.thresholds[method]``, else the method's own default.

A side with fewer usable rows than the method needs (or vectors of two dimensions, such as a
Parquet reference of another embedder) gets statistic ``None``: not drifted and not counted
in the drift share, like a numeric feature without values. When the feature drifted, its
``evidence`` names the current records most unlike the reference, by trace and span id, with
their snippets only when the records carried them (content capture), and the clusters of the
window the reference lacks, with their shares (:mod:`observer.drift.embedding.evidence`).

>>> import numpy as np
>>> from observer.drift.config import FeatureSpec, OnlineDriftConfig
>>> from observer.drift.embedding.columns import VectorRow
>>> rng = np.random.default_rng(0)
>>> ref = [VectorRow(v, f"r{i}", "s") for i, v in enumerate(rng.normal(size=(200, 8)))]
>>> cur = [VectorRow(v + 2.0, f"c{i}", "s") for i, v in enumerate(rng.normal(size=(100, 8)))]
>>> f = score_embedding(FeatureSpec(name="prompt_embedding", kind="embedding"), ref, cur,
...                     method="distance")
>>> f.kind, f.method, f.drifted, f.evidence.unlike[0].trace_id.startswith("c")
('embedding', 'distance', True, True)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from observer.core.records import EmbeddingEvidence, FeatureDrift, NovelCluster, UnlikeRecord
from observer.drift.config import FeatureSpec, OnlineDriftConfig
from observer.drift.embedding.columns import VectorRow, stack
from observer.drift.embedding.evidence import explain
from observer.drift.embedding.methods import EMBEDDING_METHODS
from observer.drift.embedding.online_window import ONLINE_METHODS, scorer_for

log = logging.getLogger(__name__)

EVIDENCE_TOP = 10
"""Unlike records named in a drifted feature's evidence."""

EVIDENCE_REFERENCE_ROWS = 1000
"""Reference rows (a seeded sample) the evidence is computed against."""

CLUSTER_EXAMPLES = 3
"""Records named per novel cluster (its most unlike members)."""

SNIPPET_CHARS = 200
"""Longest snippet carried into evidence (results travel on Kafka and in webhooks)."""


def check_method(spec: FeatureSpec, default: str) -> str:
    """The embedding method of ``spec``, checked against the table.

    >>> check_method(FeatureSpec(name="prompt_embedding", kind="embedding"), "distance")
    'distance'
    >>> check_method(FeatureSpec(name="prompt_embedding", kind="embedding", method="psi"),
    ...              "model")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: feature 'prompt_embedding': 'psi' is not an embedding drift method; choose from ...
    """
    name = spec.method or default
    if name not in EMBEDDING_METHODS:
        choices = ", ".join(sorted(EMBEDDING_METHODS))
        raise ValueError(f"feature {spec.name!r}: {name!r} is not an embedding drift method; "
                         f"choose from {choices}")
    return name


def score_embedding(
    spec: FeatureSpec,
    reference: Sequence[Any],
    current: Sequence[Any],
    *,
    method: str = "model",
    thresholds: Mapping[str, float] | None = None,
    online: OnlineDriftConfig | None = None,
) -> FeatureDrift:
    """One embedding feature's verdict (see the module doc); ``method``: the default when the
    feature names none; ``online``: the ``drift.online`` settings of the online detectors."""
    name = check_method(spec, method)
    chosen = EMBEDDING_METHODS[name]
    scorer = chosen.score
    if name in ONLINE_METHODS and online is not None:
        scorer = scorer_for(name, online)  # one calibration cache per configuration
    threshold = spec.threshold if spec.threshold is not None else (thresholds or {}).get(name)
    ref, _ = stack(reference)
    cur, rows = stack(current)
    score = None
    if len(ref) and len(cur) and ref.shape[1] == cur.shape[1]:
        try:
            # One BLAS thread: the engine shares its cores with the other stages, and
            # oversubscribed BLAS threads made scoring 5-20x slower on a busy 2-core host.
            with threadpool_limits(limits=1):
                score = scorer(ref, cur, threshold)
        except ValueError as e:  # too few rows for the method, or a degenerate window
            log.debug("embedding feature %s not scored: %s", spec.name, e)
    elif len(ref) and len(cur):
        log.warning("embedding feature %s: reference has %d dimensions, current %d; not scored",
                    spec.name, ref.shape[1], cur.shape[1])
    if score is None:
        return FeatureDrift(
            name=spec.name, kind="embedding", method=name, statistic=None,
            threshold=chosen.default_threshold if threshold is None else threshold, drifted=False,
        )
    return FeatureDrift(
        name=spec.name,
        kind="embedding",
        method=name,
        statistic=float(score.statistic),
        threshold=float(score.threshold),
        drifted=bool(score.drifted),
        statistics={name: float(score.statistic),
                    **{k: float(v) for k, v in score.statistics.items() if np.isfinite(v)}},
        evidence=evidence(ref, cur, rows) if score.drifted else None,
    )


def _record(row: VectorRow, score: float) -> UnlikeRecord:
    snippet = row.snippet[:SNIPPET_CHARS] if row.snippet is not None else None
    return UnlikeRecord(trace_id=row.trace_id, span_id=row.span_id, score=float(score),
                        snippet=snippet)


def evidence(reference: np.ndarray, current: np.ndarray, rows: Sequence[VectorRow],
             top: int = EVIDENCE_TOP) -> EmbeddingEvidence:
    """The records behind a drifted verdict (:func:`observer.drift.embedding.evidence.explain`:
    the current rows the domain classifier finds most unlike the reference, and the clusters
    the reference lacks), as ids; empty when the window is too small to explain."""
    if len(reference) > EVIDENCE_REFERENCE_ROWS:
        # The evidence fits classifiers and k-means: a seeded sample of the reference keeps
        # that to about a second however large the reference (the verdict used all rows).
        keep = np.random.default_rng(0).choice(len(reference), EVIDENCE_REFERENCE_ROWS,
                                               replace=False)
        reference = reference[np.sort(keep)]
    try:
        with threadpool_limits(limits=1):
            found = explain(reference, current, top=top)
    except ValueError as e:  # fewer rows than a classifier needs
        log.debug("no evidence for a drifted window: %s", e)
        return EmbeddingEvidence()
    clusters = [
        NovelCluster(
            share_current=c.share_current, share_reference=c.share_reference,
            size=len(c.members),
            examples=[_record(rows[i], s) for i, s in
                      zip(c.members[:CLUSTER_EXAMPLES], c.member_scores[:CLUSTER_EXAMPLES])],
        )
        for c in found.novel_clusters
    ]
    return EmbeddingEvidence(unlike=[_record(rows[u.index], u.score) for u in found.unlike],
                             novel_clusters=clusters)
