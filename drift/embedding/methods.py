"""The embedding drift methods: one table of statistic, default threshold and rule.

Every method takes the reference and current vectors of one window (``(n, d)`` float arrays,
one row per record) and returns an :class:`EmbeddingScore`. The engine picks a method by
name from :data:`EMBEDDING_METHODS` (``FeatureSpec.method`` of an ``embedding`` feature);
``model`` is the default. ``threshold`` None means the default below; the score's
``threshold`` is the bound actually compared with (for some methods computed from the data).

=====================  =================================  =========  ===============================
name                   statistic                          threshold  drift when
=====================  =================================  =========  ===============================
``model``              ROC AUC of a linear classifier     0.55       AUC > 0.55 (reference < 1000
                       telling current from reference                rows, no threshold set: AUC >
                       rows (:mod:`.classifier`)                     95th pct. of random AUCs)
``mmd``                MMD²u, RBF kernel, median          0.015      MMD²u > threshold
                       bandwidth (:mod:`.mmd`)
``mmd_permutation``    the same MMD²u                     0.95       MMD²u > that quantile of 200
                                                                     relabellings (a 5 % test)
``ratio``              share of components whose normed   0.2        share > threshold
                       Wasserstein is >= 0.1
                       (:mod:`.ratio`)
``distance``           euclidean distance of the mean     0.2        distance > threshold
                       vectors (:mod:`.distance`)
``cosine``             cosine distance of the mean        0.2        distance > threshold
                       vectors
``reconstruction``     mean PCA reconstruction error      3 (σ)      outside mean ± 3σ of reference
                       (:mod:`.reconstruction`)                      chunks of the current's size
``reconstruction_cv``  the same, reference chunks scored  3 (σ)      as ``reconstruction``
                       out of sample (cross-fitted)
=====================  =================================  =========  ===============================

``model``, ``mmd``, ``ratio``, ``distance`` and ``cosine`` compute Evidently 0.7.23's
``EmbeddingsDrift`` statistics (``ModelDriftMethod``, ``MMDDriftMethod``, ``RatioDriftMethod``,
``DistanceDriftMethod``); ``reconstruction`` NannyML 0.13.1's data reconstruction drift, and
``reconstruction_cv`` its cross-fitted variant for high-dimensional vectors, where NannyML's
in-sample reference errors make every window alarm (see
:func:`.reconstruction.score_reconstruction_cv`).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> ref = rng.normal(size=(200, 8))
>>> score = EMBEDDING_METHODS["distance"].score(ref, ref + 1.0, None)
>>> round(score.statistic, 3), score.drifted
(2.828, True)
>>> sorted(EMBEDDING_METHODS) == sorted(m.name for m in EMBEDDING_METHODS.values())
True
"""

from __future__ import annotations

# score first: a module registered below may import EmbeddingScore from here while this
# module is still loading.
from observer.drift.embedding.score import EmbeddingScore

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from observer.drift.embedding.classifier import AUC_THRESHOLD, score_model
from observer.drift.embedding.distance import (
    DISTANCE_THRESHOLD,
    score_cosine,
    score_distance,
)
from observer.drift.embedding.mmd import (
    MMD_THRESHOLD,
    PERMUTATION_QUANTILE,
    score_mmd,
    score_mmd_permutation,
)
from observer.drift.embedding.online_window import DEFAULT_LSDD_SCORER as score_online_lsdd
from observer.drift.embedding.online_window import DEFAULT_SCORER as score_online_mmd
from observer.drift.embedding.ratio import RATIO_THRESHOLD, score_ratio
from observer.drift.embedding.reconstruction import (
    SIGMAS,
    score_reconstruction,
    score_reconstruction_cv,
)

__all__ = ["EMBEDDING_METHODS", "DEFAULT_METHOD", "EmbeddingMethod", "EmbeddingScore", "Scorer"]

Scorer = Callable[[np.ndarray, np.ndarray, "float | None"], EmbeddingScore]


@dataclass(frozen=True)
class EmbeddingMethod:
    """One embedding drift method: how to score a window and what its statistic means."""

    name: str
    score: Scorer
    """``score(reference, current, threshold)``; ``threshold`` None: the default."""
    default_threshold: float
    description: str
    rule: str = "statistic > threshold"
    """When the window drifts, in words."""


DEFAULT_METHOD = "model"
"""The method of an embedding feature that names none (Evidently's default)."""

EMBEDDING_METHODS: dict[str, EmbeddingMethod] = {
    "model": EmbeddingMethod(
        "model", score_model, AUC_THRESHOLD,
        "ROC AUC of a linear domain classifier telling current from reference rows (Evidently).",
        "AUC > 0.55; with no threshold set and a reference under 1000 rows, AUC > the 95th "
        "percentile of 100 random scorings' AUCs",
    ),
    "mmd": EmbeddingMethod(
        "mmd", score_mmd, MMD_THRESHOLD,
        "Unbiased MMD² with an RBF kernel, median-heuristic bandwidth (Evidently, Gretton 2012).",
    ),
    "mmd_permutation": EmbeddingMethod(
        "mmd_permutation", score_mmd_permutation, PERMUTATION_QUANTILE,
        "Unbiased MMD² tested against 200 seeded relabellings of the pooled rows.",
        "MMD²u > the threshold-quantile of the permutation null (threshold 0.95: a 5 % test)",
    ),
    "ratio": EmbeddingMethod(
        "ratio", score_ratio, RATIO_THRESHOLD,
        "Share of vector components whose normed Wasserstein distance is >= 0.1 (Evidently).",
    ),
    "distance": EmbeddingMethod(
        "distance", score_distance, DISTANCE_THRESHOLD,
        "Euclidean distance between the mean vectors (Evidently).",
    ),
    "cosine": EmbeddingMethod(
        "cosine", score_cosine, DISTANCE_THRESHOLD,
        "Cosine distance between the mean vectors (Evidently's distance, dist='cosine').",
    ),
    "reconstruction": EmbeddingMethod(
        "reconstruction", score_reconstruction, SIGMAS,
        "Mean PCA (65 % variance) reconstruction error of the current rows (NannyML).",
        "outside mean ± threshold σ of the reference's chunks of the current window's size",
    ),
    "reconstruction_cv": EmbeddingMethod(
        "reconstruction_cv", score_reconstruction_cv, SIGMAS,
        "PCA reconstruction error with the reference chunks scored by PCAs fitted without them.",
        "outside mean ± threshold σ of the reference's chunks of the current window's size",
    ),
    "online_mmd": EmbeddingMethod(
        "online_mmd", score_online_mmd, 1.0,
        "Online MMD² detector (Cobb et al. 2022) run over the window's rows; statistic: the "
        "largest MMD²/threshold ratio, thresholds calibrated to drift.online.ert.",
        "the detector fired within the window (ratio > threshold, 1.0: the calibrated one)",
    ),
    "online_lsdd": EmbeddingMethod(
        "online_lsdd", score_online_lsdd, 1.0,
        "Online LSDD detector (Cobb et al. 2022) run over the window's rows; statistic: the "
        "largest LSDD/threshold ratio, thresholds calibrated to drift.online.ert.",
        "the detector fired within the window (ratio > threshold, 1.0: the calibrated one)",
    ),
}
"""Method name -> method."""
