"""Per-phase summaries and economics of a sample sequence (replayed traces, offline analysis).

>>> from observer.core.records import GPUSample
>>> s = [GPUSample(source="replay", node="n", gpu_uuid="g", time_unix_nano=int(t * 1e9),
...                phase=p, utilization_pct=u, power_w=w)
...      for t, p, u, w in [(0, "a", 0, 100), (1, "a", 0, 100), (2, "b", 90, 300), (3, "b", 90, 300)]]
>>> [(x["phase"], x["utilization_pct_mean"], x["energy_j"]) for x in summarise_phases(s)]
[('a', 0.0, 300.0), ('b', 90.0, 300.0)]
"""

from __future__ import annotations

import bisect
from statistics import fmean
from typing import Any

from observer.collectors.gpu.economics import figures, integrate_power, to_record
from observer.collectors.gpu.replay import TokenWindow
from observer.core.records import GPUEconomics, GPUSample


def _times(samples: list[GPUSample]) -> list[float]:
    t0 = samples[0].time_unix_nano
    return [(s.time_unix_nano - t0) / 1e9 for s in samples]


def energy_between(samples: list[GPUSample], start_s: float, end_s: float) -> float | None:
    """Joules drawn in [start_s, end_s] (seconds from the first sample): the device's energy
    counter interpolated at both edges when every sample has it, else power integrated."""
    times = _times(samples)
    counters = [s.energy_j for s in samples]
    if all(c is not None for c in counters) and len(samples) > 1:

        def at(t: float) -> float:
            i = min(max(bisect.bisect_right(times, t), 1), len(times) - 1)
            t0, t1, c0, c1 = times[i - 1], times[i], counters[i - 1], counters[i]
            return c0 + (c1 - c0) * (t - t0) / (t1 - t0)  # type: ignore[operator]

        return at(end_s) - at(start_s)
    pts = [(t, s.power_w) for t, s in zip(times, samples) if s.power_w is not None]
    if not pts:
        return None
    return integrate_power([p[0] for p in pts], [p[1] for p in pts], start_s, end_s)


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(fmean(vals), 3) if vals else None


def summarise_phases(samples: list[GPUSample]) -> list[dict[str, Any]]:
    """One summary per run of consecutive samples with the same phase label, in order.

    A phase runs from its first sample to the next phase's first sample (the trace's last
    sample for the last phase); its energy covers that span.
    """
    if not samples:
        return []
    times = _times(samples)
    runs: list[tuple[str, int, int]] = []
    start = 0
    for i in range(1, len(samples) + 1):
        if i == len(samples) or samples[i].phase != samples[start].phase:
            runs.append((samples[start].phase, start, i))
            start = i
    out = []
    for phase, a, b in runs:
        part = samples[a:b]
        end_t = times[min(b, len(times) - 1)]
        energy = energy_between(samples, times[a], end_t)
        out.append(
            {
                "phase": phase,
                "samples": len(part),
                "seconds": round(end_t - times[a], 3),
                "utilization_pct_mean": _mean([s.utilization_pct for s in part]),
                "memory_util_pct_mean": _mean([s.memory_util_pct for s in part]),
                "power_w_mean": _mean([s.power_w for s in part]),
                "memory_used_bytes_max": max(
                    (s.memory_used_bytes for s in part if s.memory_used_bytes is not None),
                    default=None,
                ),
                "energy_j": None if energy is None else round(energy, 3),
                "idle_share": round(sum(s.idle for s in part) / len(part), 3),
            }
        )
    return out


def phase_economics(samples: list[GPUSample], windows: list[TokenWindow]) -> list[GPUEconomics]:
    """The economics of each token window, on the GPU the samples describe.

    Cost per second is the priced samples' (see :class:`~observer.collectors.gpu.pipeline.GPUPipeline`);
    energy comes from :func:`energy_between`.
    """
    if not samples:
        return []
    cost_per_s = next((s.cost_per_s for s in samples if s.cost_per_s is not None), None)
    gpus = sorted({s.gpu_uuid for s in samples})
    fraction = samples[0].fraction
    out = []
    for w in windows:
        f = figures(
            tokens=w.tokens,
            window_s=w.end_s - w.start_s,
            cost_per_s=cost_per_s,
            energy_j=energy_between(samples, w.start_s, w.end_s),
        )
        out.append(
            to_record(
                f,
                scope="phase",
                name=w.phase,
                time_unix_nano=samples[0].time_unix_nano + int(w.end_s * 1e9),
                gpus=gpus,
                gpu_fraction=fraction * len(gpus),
            )
        )
    return out
