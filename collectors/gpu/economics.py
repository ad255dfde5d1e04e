"""GPU economics: tokens, dollars and joules over a window, at any scope.

Definitions (docs/stages/collect-gpu.md, "Formulas"), for a window of ``window_s`` seconds in which
``tokens`` tokens were processed on GPU shares costing ``cost_per_s`` dollars per second in
total and drawing ``energy_j`` joules:

- tokens per second            = tokens / window_s
- cost per second ($/s)        = sum over the shares of price per GPU-hour x fraction / 3600
- tokens per dollar            = tokens / (cost_per_s x window_s)
- tokens per dollar per second = tokens per second / (cost_per_s x 3600), i.e. the throughput
  each dollar of hourly GPU spend buys (tokens/s per $/h); it equals tokens per dollar / 3600
- tokens per joule             = tokens / energy_j
- cost per million tokens ($)  = cost_per_s x window_s / tokens x 1e6
- idle cost per second         = cost_per_s when the window is idle, else 0

An idle window (no tokens, utilisation under the threshold) has tokens per dollar 0 and its
whole cost as idle cost: waste is shown, not hidden as a missing series. Cost per million
tokens has no finite value without tokens and is then None.

>>> f = figures(tokens=12_958.4 * 3600, window_s=3600, cost_per_s=4.0 / 3600, energy_j=180.4 * 3600)
>>> round(f.tokens_per_s, 1), round(f.tokens_per_dollar), round(f.tokens_per_dollar_per_second, 1)
(12958.4, 11662560, 3239.6)
>>> round(f.tokens_per_joule, 2), round(f.cost_per_million_tokens, 4)
(71.83, 0.0857)
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

from observer.core.records import GPUEconomics


@dataclass(frozen=True)
class Figures:
    """The economics of one window; None where an input (price, energy, tokens) is unknown."""

    window_s: float
    tokens: float
    tokens_per_s: float
    cost_per_s: float | None
    cost_dollars: float | None
    energy_j: float | None
    power_w: float | None
    tokens_per_dollar: float | None
    tokens_per_dollar_per_second: float | None
    tokens_per_joule: float | None
    cost_per_million_tokens: float | None
    idle: bool
    idle_cost_per_s: float | None


def figures(
    *,
    tokens: float,
    window_s: float,
    cost_per_s: float | None,
    energy_j: float | None = None,
    idle: bool | None = None,
) -> Figures:
    """Compute every figure of one window. ``idle`` defaults to "no tokens".

    >>> f = figures(tokens=0, window_s=60, cost_per_s=0.001)
    >>> f.idle, f.tokens_per_dollar, f.idle_cost_per_s, f.cost_per_million_tokens
    (True, 0.0, 0.001, None)
    >>> figures(tokens=1, window_s=0, cost_per_s=None)
    Traceback (most recent call last):
    ...
    ValueError: window_s must be positive, got 0
    """
    if window_s <= 0:
        raise ValueError(f"window_s must be positive, got {window_s}")
    if tokens < 0:
        raise ValueError(f"tokens must not be negative, got {tokens}")
    idle = tokens == 0 if idle is None else idle
    tokens_per_s = tokens / window_s
    cost = None if cost_per_s is None else cost_per_s * window_s
    per_dollar = per_dollar_s = None
    if cost_per_s is not None and cost_per_s > 0:
        per_dollar = tokens / cost
        per_dollar_s = tokens_per_s / (cost_per_s * 3600.0)
    per_joule = tokens / energy_j if energy_j and energy_j > 0 else None
    per_million = cost / tokens * 1e6 if cost is not None and tokens > 0 else None
    return Figures(
        window_s=window_s,
        tokens=tokens,
        tokens_per_s=tokens_per_s,
        cost_per_s=cost_per_s,
        cost_dollars=cost,
        energy_j=energy_j,
        power_w=None if energy_j is None else energy_j / window_s,
        tokens_per_dollar=per_dollar,
        tokens_per_dollar_per_second=per_dollar_s,
        tokens_per_joule=per_joule,
        cost_per_million_tokens=per_million,
        idle=idle,
        idle_cost_per_s=(cost_per_s if idle else 0.0) if cost_per_s is not None else None,
    )


def integrate_power(
    times_s: Sequence[float], watts: Sequence[float], start_s: float, end_s: float
) -> float:
    """Joules drawn between ``start_s`` and ``end_s``: power linear between samples, held flat
    beyond the first and last sample (trapezoids, cut exactly at the window's edges).

    >>> integrate_power([0, 1, 2], [100, 200, 100], 0, 2)
    300.0
    >>> integrate_power([0, 1, 2], [100, 200, 100], 0.5, 1.5)
    175.0
    >>> integrate_power([0, 10], [50, 50], -5, 15)
    1000.0
    """
    if len(times_s) != len(watts) or not times_s:
        raise ValueError("integrate_power needs as many power readings as times, and at least one")
    if end_s < start_s:
        raise ValueError(f"window ends ({end_s}) before it starts ({start_s})")

    def at(t: float) -> float:
        i = bisect.bisect_right(times_s, t)
        if i == 0:
            return watts[0]
        if i == len(times_s):
            return watts[-1]
        t0, t1 = times_s[i - 1], times_s[i]
        return watts[i - 1] + (watts[i] - watts[i - 1]) * (t - t0) / (t1 - t0)

    # Breakpoints: the window's edges and every sample inside it.
    lo = bisect.bisect_right(times_s, start_s)
    hi = bisect.bisect_left(times_s, end_s)
    points = [start_s, *times_s[lo:hi], end_s]
    return sum((b - a) * (at(a) + at(b)) / 2.0 for a, b in zip(points, points[1:]))


def to_record(
    f: Figures,
    *,
    scope: Literal["gpu", "pod", "model", "phase"],
    name: str,
    time_unix_nano: int,
    gpus: list[str],
    gpu_fraction: float,
) -> GPUEconomics:
    """The ``observer.gpu-economics/v1`` record of one scope's figures.

    >>> r = to_record(figures(tokens=600, window_s=60, cost_per_s=None), scope="model",
    ...               name="llama", time_unix_nano=0, gpus=[], gpu_fraction=0)
    >>> r.tokens_per_s, r.tokens_per_dollar
    (10.0, None)
    """
    return GPUEconomics(
        scope=scope,
        name=name,
        time_unix_nano=time_unix_nano,
        gpus=gpus,
        gpu_fraction=gpu_fraction,
        **asdict(f),
    )
