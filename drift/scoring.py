"""Score one window against a reference, feature by feature: Evidently 0.7's column drift.

- numeric feature: both the normalised Wasserstein distance and PSI are computed and reported;
  the one named by ``numeric_method`` decides;
- categorical feature: the Jensen-Shannon distance decides.

A feature drifted when its statistic >= its threshold. A feature with no usable value on a
side (all ``None``) gets statistic ``None``, is not drifted and does not count as scored.
The window's drift share is drifted / scored features (Evidently's ``share_of_drifted_columns``)
and the dataset drifted when that share >= ``drift_share``.

>>> from observer.core.config import FeatureSpec
>>> ref = {"output_tokens": list(range(100)), "finish_reason": ["stop"] * 100}
>>> cur = {"output_tokens": list(range(50, 150)), "finish_reason": ["stop"] * 100}
>>> features = score_columns(ref, cur, [FeatureSpec(name="output_tokens", kind="numeric"),
...                                     FeatureSpec(name="finish_reason", kind="categorical")])
>>> [(f.name, f.method, round(f.statistic, 3), f.drifted) for f in features]
[('output_tokens', 'wasserstein', 1.732, True), ('finish_reason', 'jensenshannon', 0.0, False)]
>>> sorted(features[0].statistics)
['psi', 'wasserstein']
>>> drift_share(features)
0.5
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from drift.stats import DEFAULT_THRESHOLDS, STATISTICS
from observer.core.config import FeatureSpec
from observer.core.records import FeatureDrift

NUMERIC_STATISTICS = ("wasserstein", "psi")
"""Computed for every numeric feature; ``numeric_method`` picks the one that decides."""
CATEGORICAL_STATISTIC = "jensenshannon"


def score_feature(
    spec: FeatureSpec,
    reference: Sequence[Any],
    current: Sequence[Any],
    *,
    numeric_method: str = "wasserstein",
    thresholds: Mapping[str, float] | None = None,
) -> FeatureDrift:
    """One feature's drift verdict.

    Parameters
    ----------
    spec
        The feature's name and kind.
    reference, current
        Raw values; ``None`` (a missing value) is skipped. For a categorical feature the empty
        string ``""`` is a category of its own, not a missing value.
    numeric_method
        ``"wasserstein"`` or ``"psi"``: the statistic that decides for numeric features.
    thresholds
        Statistic name -> threshold; names not given take Evidently's defaults (0.1).
    """
    limits = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    names = NUMERIC_STATISTICS if spec.kind == "numeric" else (CATEGORICAL_STATISTIC,)
    method = numeric_method if spec.kind == "numeric" else CATEGORICAL_STATISTIC
    if method not in names:
        raise ValueError(
            f"unknown numeric method {numeric_method!r}; choose from {NUMERIC_STATISTICS}"
        )
    computed = {name: STATISTICS[name](reference, current, spec.kind) for name in names}
    statistic = computed[method]
    threshold = limits[method]
    return FeatureDrift(
        name=spec.name,
        kind=spec.kind,
        method=method,
        statistic=statistic,
        threshold=threshold,
        drifted=statistic is not None and statistic >= threshold,
        statistics={k: v for k, v in computed.items() if v is not None},
    )


def score_columns(
    reference: Mapping[str, Sequence[Any]],
    current: Mapping[str, Sequence[Any]],
    features: Sequence[FeatureSpec],
    *,
    numeric_method: str = "wasserstein",
    thresholds: Mapping[str, float] | None = None,
) -> list[FeatureDrift]:
    """Every feature's verdict, in the order of ``features`` (see :func:`score_feature`)."""
    return [
        score_feature(
            spec,
            reference.get(spec.name, []),
            current.get(spec.name, []),
            numeric_method=numeric_method,
            thresholds=thresholds,
        )
        for spec in features
    ]


def drift_share(features: Sequence[FeatureDrift]) -> float:
    """Drifted / scored features; 0.0 when no feature could be scored.

    >>> drift_share([])
    0.0
    """
    scored = [f for f in features if f.statistic is not None]
    return sum(f.drifted for f in scored) / len(scored) if scored else 0.0
