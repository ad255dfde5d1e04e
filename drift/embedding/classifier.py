"""The ``model`` method: can a linear classifier tell the current window from the reference?

Reference: Evidently 0.7.23, ``ModelDriftMethod`` in
``src/evidently/legacy/metrics/data_drift/embedding_drift_methods.py``, and the default
``EmbeddingsDriftMetric`` resolves (``embeddings_drift.py``). The pooled rows (reference
labelled 1, current 0, in that order) are split 50/50 (``train_test_split(test_size=0.5,
random_state=42, shuffle=True)``); an ``SGDClassifier(loss="log_loss", random_state=42)``
fits the first half and scores the second; the statistic is the ROC AUC on that half. Same
distribution: about 0.5. Drift when it exceeds 0.55, or, when the reference has fewer than
1000 rows (where 0.55 is within chance), when it exceeds the 95th percentile of the AUCs of
100 random scorings of the same test labels (seeds 0..99: Evidently's bootstrap).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> ref = rng.normal(size=(1200, 8))
>>> s = score_model(ref, rng.normal(size=(600, 8)), None)
>>> round(s.statistic, 2), s.threshold, s.drifted
(0.47, 0.55, False)
>>> s = score_model(ref[:300], rng.normal(0.5, 1.0, size=(300, 8)), None)
>>> s.drifted, s.statistics["bootstrap"], 0.5 < s.threshold < 0.6
(True, 1.0, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.stats import rankdata

if TYPE_CHECKING:
    from sklearn.linear_model import SGDClassifier

from observer.drift.embedding.inputs import check_pair
from observer.drift.embedding.score import EmbeddingScore

AUC_THRESHOLD = 0.55
"""Evidently's fixed threshold on the ROC AUC."""
BOOTSTRAP_BELOW = 1000
"""References with fewer rows use the bootstrap threshold (Evidently's default)."""
BOOTSTRAP_ROUNDS = 100
QUANTILE = 0.95
SEED = 42
MIN_ROWS = 4
"""Fewer rows per side leave a half of the split with one class (no classifier, no AUC)."""


@dataclass(frozen=True)
class DomainSplit:
    """The pooled rows, their labels (1 = reference) and the two halves of Evidently's split."""

    x: np.ndarray
    y: np.ndarray
    train: np.ndarray
    test: np.ndarray


def domain_split(reference: np.ndarray, current: np.ndarray) -> DomainSplit:
    """Pool the rows (reference first) and split them 50/50 as Evidently does."""
    from sklearn.model_selection import train_test_split  # loads in ~1.5 s: here, not at start
    x = np.vstack([reference, current])
    y = np.concatenate([np.ones(len(reference), np.int64), np.zeros(len(current), np.int64)])
    train, test = train_test_split(
        np.arange(len(x)), test_size=0.5, random_state=SEED, shuffle=True
    )
    for half, idx in (("training", train), ("test", test)):
        if len(np.unique(y[idx])) < 2:
            raise ValueError(
                f"the domain classifier's {half} half holds rows of one window only "
                f"({len(reference)} reference and {len(current)} current rows): give more rows"
            )
    return DomainSplit(x, y, train, test)


def fit_classifier(x: np.ndarray, y: np.ndarray) -> SGDClassifier:
    """Evidently's classifier: SGD on the log loss, seeded."""
    from sklearn.linear_model import SGDClassifier
    return SGDClassifier(loss="log_loss", random_state=SEED).fit(x, y)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC of each row of ``scores`` (``(k, n)`` or ``(n,)``) for binary ``labels``.

    The Mann-Whitney form with average ranks for ties: equal to ``sklearn.metrics.
    roc_auc_score`` and vectorised over the bootstrap's 100 scorings.

    >>> float(roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])))
    0.75
    """
    ranks = rankdata(np.atleast_2d(scores), axis=1)
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    auc = (ranks[:, pos].sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return auc if np.ndim(scores) == 2 else auc[0]


def bootstrap_threshold(test_labels: np.ndarray, quantile: float = QUANTILE) -> float:
    """The ``quantile`` of the AUCs of uniform random scores of ``test_labels``.

    Each round seeds NumPy's legacy generator with its index (0..99) as Evidently does with
    ``np.random.seed(i)``, but on a private ``RandomState``: the global one is left alone.
    """
    draws = np.stack(
        [np.random.RandomState(i).rand(len(test_labels)) for i in range(BOOTSTRAP_ROUNDS)]
    )
    return float(np.percentile(roc_auc(test_labels, draws), 100 * quantile))


def score_model(
    reference: np.ndarray, current: np.ndarray, threshold: float | None
) -> EmbeddingScore:
    """ROC AUC of the domain classifier; ``threshold`` None: Evidently's default resolution."""
    ref, cur = check_pair(reference, current, min_rows=MIN_ROWS)
    split = domain_split(ref, cur)
    clf = fit_classifier(split.x[split.train], split.y[split.train])
    y_test = split.y[split.test]
    auc = float(roc_auc(y_test, clf.predict_proba(split.x[split.test])[:, 1]))
    bootstrap = threshold is None and len(ref) < BOOTSTRAP_BELOW
    if bootstrap:
        bound = bootstrap_threshold(y_test)
    else:
        bound = AUC_THRESHOLD if threshold is None else float(threshold)
    return EmbeddingScore(auc, bound, auc > bound, {"auc": auc, "bootstrap": float(bootstrap)})


def current_likeness(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Each current row's out-of-fold probability of being from the current window.

    Two-fold cross-fitting on Evidently's split: a classifier trained on the first half
    scores the second half's rows, and one trained on the second half scores the first's, so
    no row is scored by a model that saw it. The classifier is a logistic regression fitted
    to convergence (L-BFGS, L2), not Evidently's SGD: SGD's few passes over a small window
    are noisy enough to point the wrong way (on the example below, the SGD fitted on one
    half scores all ten planted rows 0), which costs nothing in an AUC near 0.5 but ranks
    the records shown as evidence.

    >>> rng = np.random.default_rng(1)
    >>> ref = rng.normal(size=(300, 4))
    >>> cur = np.vstack([rng.normal(size=(90, 4)), rng.normal(4.0, 1.0, size=(10, 4))])
    >>> p = current_likeness(ref, cur)
    >>> p.shape, bool(p[90:].mean() > p[:90].mean() + 0.3)
    ((100,), True)
    """
    from sklearn.linear_model import LogisticRegression
    ref, cur = check_pair(reference, current, min_rows=MIN_ROWS)
    split = domain_split(ref, cur)
    prob = np.empty(len(split.x))
    for fit_on, score_on in ((split.train, split.test), (split.test, split.train)):
        clf = LogisticRegression(max_iter=1000).fit(split.x[fit_on], split.y[fit_on])
        # column 0 is class 0, the current window
        prob[score_on] = clf.predict_proba(split.x[score_on])[:, 0]
    return prob[len(ref):]
