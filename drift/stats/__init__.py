"""Drift statistics with Evidently 0.7.23's exact rules.

Every statistic takes two raw columns (reference, current) and a feature kind, cleans them
(:mod:`observer.drift.stats.columns`), and returns a float, or ``None`` when a side has no usable value.
Larger means more different; drift is ``statistic >= threshold``.

==================  ===========================  =======================================
name                function                     applies to
==================  ===========================  =======================================
``wasserstein``     :func:`wasserstein_norm`     numeric
``psi``             :func:`psi`                  numeric (binned) and categorical
``jensenshannon``   :func:`jensenshannon`        numeric (binned) and categorical
``ks``              :func:`ks`                   numeric (a p-value)
``chisquare``       :func:`chisquare`            categorical and few-valued numeric (p)
``ztest``           :func:`ztest`                binary features (a p-value)
==================  ===========================  =======================================

Distances drift when ``statistic >= threshold``; p-values when they are small (the rule of
each is in :data:`observer.drift.stats.methods.METHODS`, with :func:`choose_method`, Evidently's
automatic choice).

>>> STATISTICS["psi"](["a", "a", "b"], ["a", "b", "b"], "categorical") > 0
True
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from observer.drift.stats.binning import MAX_CATEGORY_VALUES, binned_shares, fill_zero_shares
from observer.drift.stats.chisquare import chisquare
from observer.drift.stats.columns import Kind, clean
from observer.drift.stats.jensenshannon import jensenshannon, jensenshannon_of_shares
from observer.drift.stats.ks import ks
from observer.drift.stats.methods import AUTO, METHODS, Method, check_method, choose_method
from observer.drift.stats.prepared import Prepared, prepare, sturges_edges
from observer.drift.stats.psi import psi, psi_of_shares
from observer.drift.stats.wasserstein import wasserstein_norm
from observer.drift.stats.ztest import ztest


class Statistic(Protocol):
    """A two-sample drift statistic: larger means more different; ``None`` means no data."""

    def __call__(
        self, reference: Iterable[Any], current: Iterable[Any], kind: Kind
    ) -> float | None: ...


STATISTICS: dict[str, Statistic] = {name: m.statistic for name, m in METHODS.items()}
"""Statistics by the names used in configuration (``DriftConfig.thresholds``) and in results."""

DEFAULT_THRESHOLDS: dict[str, float] = {name: m.default_threshold for name, m in METHODS.items()}
"""Evidently 0.7's default thresholds (``default_threshold`` of each stattest)."""

__all__ = [
    "AUTO",
    "DEFAULT_THRESHOLDS",
    "MAX_CATEGORY_VALUES",
    "METHODS",
    "STATISTICS",
    "Kind",
    "Method",
    "Prepared",
    "Statistic",
    "binned_shares",
    "check_method",
    "chisquare",
    "choose_method",
    "clean",
    "fill_zero_shares",
    "jensenshannon",
    "jensenshannon_of_shares",
    "ks",
    "prepare",
    "psi",
    "psi_of_shares",
    "sturges_edges",
    "wasserstein_norm",
    "ztest",
]
