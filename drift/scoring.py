"""Score one window against a reference, feature by feature: Evidently 0.7's column drift.

Which method decides a feature's verdict, first match wins:

1. the feature's own ``method`` (``FeatureSpec.method``), when set;
2. ``numeric_method`` or ``categorical_method`` by the feature's kind;
3. ``auto`` in either place resolves per window with Evidently's rule
   (:func:`observer.drift.stats.choose_method`: KS, chi-square or Z-test for references of up to 1000
   rows, Wasserstein or Jensen-Shannon above).

Its threshold: the feature's ``threshold``, else ``thresholds[method]``, else Evidently's
default for that method. Besides the deciding statistic, numeric features always report
``wasserstein`` and ``psi`` and categorical ones ``jensenshannon`` in ``statistics``, so
dashboards keep the same series whichever method decides.

A feature with no usable value on a side (all ``None``) gets statistic ``None``, is not
drifted and does not count as scored. The window's drift share is drifted / scored features
(Evidently's ``share_of_drifted_columns``) and the dataset drifted when that share >=
``drift_share``.

>>> from observer.drift.config import FeatureSpec
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
>>> [f.method for f in score_columns(ref, cur, [FeatureSpec(name="output_tokens",
...                                                         kind="numeric", method="auto")])]
['ks']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from observer.drift.stats import AUTO, METHODS, check_method, choose_method
from observer.drift.stats.prepared import Prepared, prepare
from observer.drift.config import FeatureSpec
from observer.drift.embedding.features import check_method as check_embedding_method
from observer.core.records import FeatureDrift

NUMERIC_STATISTICS = ("wasserstein", "psi")
"""Always computed and reported for numeric features, whichever method decides."""
CATEGORICAL_STATISTIC = "jensenshannon"
"""Always computed and reported for categorical features."""
REPORTED: dict[str, tuple[str, ...]] = {
    "numeric": NUMERIC_STATISTICS,
    "categorical": (CATEGORICAL_STATISTIC,),
    "embedding": (),  # the deciding method's statistic only (drift.embedding.features)
}


def resolve_method(
    spec: FeatureSpec, numeric_method: str = "wasserstein", categorical_method: str = "jensenshannon",
    embedding_method: str = "model",
) -> str:
    """The configured method of a feature (possibly ``auto``), checked against its kind.
    Embedding features take a name of :data:`observer.drift.embedding.methods.EMBEDDING_METHODS`
    (scored by :mod:`observer.drift.embedding.features`).

    >>> resolve_method(FeatureSpec(name="x", kind="categorical"), "psi", "chisquare")
    'chisquare'
    >>> resolve_method(FeatureSpec(name="x", kind="numeric", method="ks"))
    'ks'
    >>> resolve_method(FeatureSpec(name="prompt_embedding", kind="embedding"), embedding_method="distance")
    'distance'
    """
    if spec.kind == "embedding":
        return check_embedding_method(spec, embedding_method)
    name = spec.method or (numeric_method if spec.kind == "numeric" else categorical_method)
    try:
        check_method(name, spec.kind)
    except ValueError as e:
        raise ValueError(f"feature {spec.name!r}: {e}") from None
    return name


def score_feature(
    spec: FeatureSpec,
    reference: Sequence[Any] | Prepared,
    current: Sequence[Any] | Prepared,
    *,
    numeric_method: str = "wasserstein",
    categorical_method: str = "jensenshannon",
    thresholds: Mapping[str, float] | None = None,
) -> FeatureDrift:
    """One feature's drift verdict.

    Parameters
    ----------
    spec
        The feature's name, kind and optional ``method``/``threshold`` overrides.
    reference, current
        Raw values; ``None`` (a missing value) is skipped. For a categorical feature the empty
        string ``""`` is a category of its own, not a missing value. Either side may also be
        a :class:`~observer.drift.stats.prepared.Prepared` column (see :func:`prepare_columns`).
    numeric_method, categorical_method
        The method deciding for each kind when the feature names none (``auto`` allowed).
    thresholds
        Method name -> threshold; names not given take Evidently's defaults.
    """
    method = resolve_method(spec, numeric_method, categorical_method)
    # Cleaned and sorted or counted once here, every statistic below reuses it; a reference
    # prepared earlier (prepare_columns) passes through as it is.
    ref = prepare(reference, spec.kind)
    cur = prepare(current, spec.kind)
    if method == AUTO:
        # With a side empty there is no verdict; name the kind's distance so results stay
        # readable (Evidently raises instead).
        method = (
            choose_method(ref, cur, spec.kind)
            if ref.n and cur.n
            else REPORTED[spec.kind][0]
        )
    names = dict.fromkeys([*REPORTED[spec.kind], method])
    computed = {name: METHODS[name].statistic(ref, cur, spec.kind) for name in names}
    statistic = computed[method]
    if spec.threshold is not None:
        threshold = spec.threshold
    else:
        threshold = (thresholds or {}).get(method, METHODS[method].default_threshold)
    return FeatureDrift(
        name=spec.name,
        kind=spec.kind,
        method=method,
        statistic=statistic,
        threshold=threshold,
        drifted=METHODS[method].drifted(statistic, threshold),
        statistics={k: v for k, v in computed.items() if v is not None},
    )


def prepare_columns(
    columns: Mapping[str, Sequence[Any]], features: Sequence[FeatureSpec]
) -> dict[str, Prepared]:
    """Each feature's column cleaned and sorted or counted, ready to score many windows.

    A reference scored against window after window is prepared once: each window then only
    prepares its own values (:mod:`observer.drift.stats.prepared`).

    >>> ref = prepare_columns({"output_tokens": [3, 1, None, 2]},
    ...                       [FeatureSpec(name="output_tokens", kind="numeric")])
    >>> ref["output_tokens"].values.tolist()
    [1.0, 2.0, 3.0]
    """
    return {spec.name: prepare(columns.get(spec.name, []), spec.kind) for spec in features}


def score_columns(
    reference: Mapping[str, Sequence[Any] | Prepared],
    current: Mapping[str, Sequence[Any] | Prepared],
    features: Sequence[FeatureSpec],
    *,
    numeric_method: str = "wasserstein",
    categorical_method: str = "jensenshannon",
    thresholds: Mapping[str, float] | None = None,
) -> list[FeatureDrift]:
    """Every feature's verdict, in the order of ``features`` (see :func:`score_feature`)."""
    return [
        score_feature(
            spec,
            reference.get(spec.name, []),
            current.get(spec.name, []),
            numeric_method=numeric_method,
            categorical_method=categorical_method,
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
