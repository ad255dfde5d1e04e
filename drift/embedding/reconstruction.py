"""The ``reconstruction`` method: how badly a PCA of the reference reconstructs the current rows.

Reference: NannyML 0.13.1, ``DataReconstructionDriftCalculator``
(``nannyml/drift/multivariate/data_reconstruction/calculator.py``; docs: "Data Reconstruction
with PCA", https://nannyml.readthedocs.io/en/stable/how_it_works/multivariate_drift.html).
Fitted on the reference: missing values imputed with the column means, columns standardised,
a PCA (``random_state=16``) keeping the fewest components that explain 65 % of the variance.
A row's error is the euclidean distance between its standardised values and their
reconstruction from those components; a chunk's statistic is its rows' mean error.

The reference is cut, in order, into chunks of the current window's size (NannyML's
``SizeBasedChunker``: the incomplete last chunk is kept), each chunk scored, and the window
drifts when its mean error is outside ``mean ± 3 σ`` of the reference chunks' (population σ;
a lower bound at or below 0 is dropped, as NannyML drops it). At least two complete reference
chunks are needed; about ten give a stable σ.

Works on any numeric matrix: embedding vectors, or the numeric features of tabular
``predictions`` records. Columns with no value in the reference are dropped (nothing to impute).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> mix = rng.normal(size=(6, 6))
>>> ref = rng.normal(size=(2000, 6)) @ mix
>>> s = score_reconstruction(ref, rng.normal(size=(200, 6)) @ mix, None)
>>> s.drifted, s.statistics["reference_chunks"]
(False, 10.0)
>>> score_reconstruction(ref, rng.normal(size=(200, 6)) @ mix.T, None).drifted
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sklearn.decomposition import PCA

from observer.drift.embedding.inputs import as_matrix
from observer.drift.embedding.score import EmbeddingScore

VARIANCE_KEPT = 0.65
SIGMAS = 3.0
PCA_SEED = 16
MIN_CHUNKS = 2


@dataclass(frozen=True)
class Reconstructor:
    """The reference's imputation, standardisation and PCA (fitted once, applied to chunks)."""

    columns: np.ndarray
    means: np.ndarray
    scales: np.ndarray
    pca: PCA | None
    """None when every reference column is constant: nothing to project, all is error."""

    def errors(self, rows: np.ndarray) -> np.ndarray:
        """Each row's reconstruction error."""
        data = rows[:, self.columns]
        data = np.where(np.isnan(data), self.means, data)
        data = (data - self.means) / self.scales
        if self.pca is None:
            return np.linalg.norm(data, axis=1)
        rebuilt = self.pca.inverse_transform(self.pca.transform(data))
        return np.linalg.norm(data - rebuilt, axis=1)


def fit_reconstructor(reference: np.ndarray, variance: float = VARIANCE_KEPT) -> Reconstructor:
    """Fit :class:`Reconstructor` on the reference rows (NaN allowed, imputed).

    Imputed values equal the column mean, so the standardisation's mean is the imputer's mean
    and one mean serves both (as scikit-learn's ``SimpleImputer`` + ``StandardScaler``).
    """
    from sklearn.decomposition import PCA  # loads in ~1.5 s: here, not at start
    columns = np.flatnonzero(~np.isnan(reference).all(axis=0))
    if len(columns) == 0:
        raise ValueError("reference has no column with a value")
    data = reference[:, columns]
    means = np.nanmean(data, axis=0)
    data = np.where(np.isnan(data), means, data)
    var = data.var(axis=0)
    # StandardScaler's rule: a column constant up to rounding is centred but left unscaled
    n, eps = len(data), np.finfo(np.float64).eps
    constant = var <= n * eps * var + (n * means * eps) ** 2
    scales = np.where(constant, 1.0, np.sqrt(var))
    standardised = (data - means) / scales
    if not standardised.any():
        return Reconstructor(columns, means, scales, None)
    pca = PCA(n_components=variance, random_state=PCA_SEED).fit(standardised)
    return Reconstructor(columns, means, scales, pca)


def chunk_means(errors: np.ndarray, size: int) -> np.ndarray:
    """Mean error of consecutive chunks of ``size`` rows (the incomplete last one kept)."""
    return np.array([errors[i : i + size].mean() for i in range(0, len(errors), size)])


def cross_fitted_means(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, float]:
    """Mean error of each reference chunk (of ``len(current)`` rows) under a PCA fitted on
    the *other* reference rows, and the current window's mean error averaged over those
    same PCAs, so both sides are scored out of sample by models fitted on as many rows.

    >>> rng = np.random.default_rng(0)
    >>> chunks, value = cross_fitted_means(rng.normal(size=(90, 3)), rng.normal(size=(30, 3)))
    >>> chunks.shape, bool(value > 0)
    ((3,), True)
    """
    size = len(current)
    chunks, current_means = [], []
    for start in range(0, len(reference), size):
        held_out = np.zeros(len(reference), dtype=bool)
        held_out[start : start + size] = True
        model = fit_reconstructor(reference[~held_out])
        chunks.append(model.errors(reference[held_out]).mean())
        current_means.append(model.errors(current).mean())
    return np.array(chunks), float(np.mean(current_means))


def score_reconstruction(
    reference: np.ndarray, current: np.ndarray, threshold: float | None
) -> EmbeddingScore:
    """Mean reconstruction error of ``current``; ``threshold``: the σ multiplier (default 3).

    The reported ``threshold`` is the upper bound; ``lower_threshold`` (absent: none) and the
    reference chunks' mean and σ are in ``statistics``.
    """
    return _score(reference, current, threshold, cross_fitted=False)


def score_reconstruction_cv(
    reference: np.ndarray, current: np.ndarray, threshold: float | None
) -> EmbeddingScore:
    """:func:`score_reconstruction` with the reference chunks' errors cross-fitted.

    NannyML scores the reference chunks with the PCA fitted on them, so their errors are
    in-sample, while the current window's are not. With few rows per dimension the gap is
    large: on 256-dimensional embeddings, 2000 reference rows and 200-row windows of the
    *same* distribution, the current error sat 27 to 68 reference σ above the reference
    chunks' mean (5 of 5 windows alarmed; ``tests/test_embedding_methods.py`` checks the
    effect). Here each reference chunk is scored by a PCA fitted on the other reference rows
    (one fit per chunk), and the current window's error is its mean over those same fits:
    both sides out of sample, from models fitted on equally many rows.
    """
    return _score(reference, current, threshold, cross_fitted=True)


def _score(
    reference: np.ndarray, current: np.ndarray, threshold: float | None, *, cross_fitted: bool
) -> EmbeddingScore:
    cur = as_matrix("current", current, min_rows=1, allow_nan=True)
    size = len(cur)
    ref = as_matrix("reference", reference, min_rows=MIN_CHUNKS * size, allow_nan=True)
    if ref.shape[1] != cur.shape[1]:
        raise ValueError(f"reference has {ref.shape[1]} dimensions but current has {cur.shape[1]}")
    sigmas = SIGMAS if threshold is None else float(threshold)
    if not sigmas > 0:
        raise ValueError(
            f"reconstruction's threshold is a number of standard deviations > 0, got {sigmas}"
        )
    figures: dict[str, float] = {}
    if cross_fitted:
        reference_chunks, value = cross_fitted_means(ref, cur)
    else:
        model = fit_reconstructor(ref)
        reference_chunks = chunk_means(model.errors(ref), size)
        value = float(model.errors(cur).mean())
        figures["components"] = float(model.pca.n_components_ if model.pca else 0)
    centre, spread = float(reference_chunks.mean()), float(reference_chunks.std())
    upper, lower = centre + sigmas * spread, centre - sigmas * spread
    # NannyML alerts unless lower < value < upper; with identical reference chunks (σ = 0)
    # that would flag a window equal to them too, so the centre itself never alarms
    drifted = (value >= upper or (lower > 0 and value <= lower)) and value != centre
    figures.update(
        reference_mean=centre, reference_std=spread, reference_chunks=float(len(reference_chunks))
    )
    if lower > 0:
        figures["lower_threshold"] = lower
    return EmbeddingScore(value, upper, drifted, figures)
