"""The drift methods: one table of statistic, default threshold, drift rule and feature kinds,
and Evidently 0.7's automatic choice between them.

==================  =================  =========  ==================  ======================
name                statistic          threshold  drift when          kinds
==================  =================  =========  ==================  ======================
``wasserstein``     normalised W1      0.1        stat >= threshold   numeric
``psi``             PSI                0.1        stat >= threshold   numeric, categorical
``jensenshannon``   JS distance        0.1        stat >= threshold   numeric, categorical
``ks``              KS p-value         0.05       p <= threshold      numeric
``chisquare``       chi-square p       0.05       p < threshold       numeric, categorical
``ztest``           Z-test p           0.05       p < threshold       numeric, categorical
==================  =================  =========  ==================  ======================

The rules (``>=``, ``<=``, ``<``) are Evidently's, so a value exactly at the threshold gets the
same verdict. ``auto`` is not a statistic: :func:`choose_method` resolves it per window from the
cleaned reference size and the distinct values of both sides, exactly as Evidently 0.7.23's
``_get_default_stattest``:

====================  ======================  ======================
column                reference rows <= 1000  reference rows > 1000
====================  ======================  ======================
numeric, > 5 values   ``ks``                  ``wasserstein``
numeric, 3-5 values   ``chisquare``           ``jensenshannon``
numeric, <= 2 values  ``ztest``               ``jensenshannon``
categorical, > 2      ``chisquare``           ``jensenshannon``
categorical, <= 2     ``ztest``               ``jensenshannon``
====================  ======================  ======================

>>> choose_method(np.arange(500.0), np.arange(500.0), "numeric")
'ks'
>>> choose_method(np.arange(2000.0), np.arange(500.0), "numeric")
'wasserstein'
>>> METHODS["ks"].drifted(0.05, 0.05), METHODS["chisquare"].drifted(0.05, 0.05)
(True, False)
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np  # noqa: F401  (the doctests use it)

from observer.drift.stats.chisquare import chisquare
from observer.drift.stats.columns import Kind
from observer.drift.stats.jensenshannon import jensenshannon
from observer.drift.stats.ks import ks
from observer.drift.stats.prepared import Prepared, n_unique, prepare
from observer.drift.stats.psi import psi
from observer.drift.stats.wasserstein import wasserstein_norm
from observer.drift.stats.ztest import ztest

Rule = Literal[">=", "<=", "<"]
_RULES: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "<": operator.lt,
}

AUTO = "auto"
"""The method name that asks for Evidently's automatic choice."""

AUTO_REFERENCE_ROWS = 1000
"""Above this many (clean) reference rows Evidently switches from tests to distances."""


@dataclass(frozen=True)
class Method:
    """One drift method: how to compute it and how to read it."""

    name: str
    statistic: Callable[..., float | None]
    default_threshold: float
    rule: Rule
    kinds: frozenset[str]
    description: str

    def drifted(self, statistic: float | None, threshold: float) -> bool:
        """The verdict; no statistic (an empty side) is never drift."""
        return statistic is not None and _RULES[self.rule](statistic, threshold)


_BOTH = frozenset({"numeric", "categorical"})
_NUMERIC = frozenset({"numeric"})

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("wasserstein", wasserstein_norm, 0.1, ">=", _NUMERIC,
               "Wasserstein distance / reference std"),
        Method("psi", psi, 0.1, ">=", _BOTH, "population stability index"),
        Method("jensenshannon", jensenshannon, 0.1, ">=", _BOTH, "Jensen-Shannon distance"),
        Method("ks", ks, 0.05, "<=", _NUMERIC, "Kolmogorov-Smirnov p-value"),
        Method("chisquare", chisquare, 0.05, "<", _BOTH, "chi-square p-value"),
        Method("ztest", ztest, 0.05, "<", _BOTH, "Z-test p-value"),
    )
}
"""Every method by the name used in configuration, results and the ``--method`` option."""


def check_method(name: str, kind: Kind) -> None:
    """Raise a clear error when ``name`` is unknown or does not apply to ``kind``.

    >>> check_method("ks", "categorical")
    Traceback (most recent call last):
    ...
    ValueError: method 'ks' does not apply to categorical features (it applies to numeric)
    """
    if name == AUTO:
        return
    method = METHODS.get(name)
    if method is None:
        raise ValueError(f"unknown drift method {name!r}; choose from {', '.join([AUTO, *METHODS])}")
    if kind not in method.kinds:
        raise ValueError(
            f"method {name!r} does not apply to {kind} features "
            f"(it applies to {', '.join(sorted(method.kinds))})"
        )


def choose_method(
    reference: Iterable[Any] | Prepared, current: Iterable[Any] | Prepared, kind: Kind
) -> str:
    """Evidently 0.7.23's default method for two columns (see the module table)."""
    ref, cur = prepare(reference, kind), prepare(current, kind)
    values = n_unique(ref, cur, above=5)
    if ref.n <= AUTO_REFERENCE_ROWS:
        if kind == "numeric" and values > 5:
            return "ks"
        return "chisquare" if values > 2 else "ztest"
    if kind == "numeric" and values > 5:
        return "wasserstein"
    return "jensenshannon"
