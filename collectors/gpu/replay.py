"""Replay a recorded NVML trace as :class:`~observer.core.records.GPUSample` records.

The trace is a CSV with a ``t_s`` column (seconds since the recording started) and any of the
columns in :data:`COLUMNS`; a ``phase`` column labels the recording's phases (the format of
``h100_nvml_trace.csv``). Token counts per phase come from a JSON file ``{"phases": [{"phase",
"new_tokens" or "tokens", "seconds"}]}`` (the format of ``h100_generation_phases.json``).

>>> import io
>>> text = "t_s,phase,gpu_util_pct,power_mw\\n0.0,idle,0,75000\\n0.5,busy,100,700000\\n"
>>> [(s.phase, s.utilization_pct, s.power_w) for s in read_trace(io.StringIO(text), node="n1")]
[('idle', 0.0, 75.0), ('busy', 100.0, 700.0)]
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from observer.core.records import GPUSample

# CSV column -> (GPUSample field, conversion). Units follow NVML's: mW, mJ, bytes, %.
COLUMNS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "gpu_util_pct": ("utilization_pct", float),
    "mem_util_pct": ("memory_util_pct", float),
    "fb_used_bytes": ("memory_used_bytes", int),
    "fb_total_bytes": ("memory_total_bytes", int),
    "power_mw": ("power_w", lambda v: float(v) / 1000.0),
    "energy_mj": ("energy_j", lambda v: float(v) / 1000.0),
    "temp_c": ("temperature_c", float),
    "sm_clock_mhz": ("sm_clock_mhz", float),
    "gpu_uuid": ("gpu_uuid", str),
    "gpu_model": ("gpu_model", str),
}


class TraceError(ValueError):
    """The trace or token file is malformed; the message names the file, line and column."""


def read_trace(
    stream: TextIO,
    *,
    node: str,
    gpu_uuid: str = "replay-0",
    gpu_model: str = "",
    base_unix_nano: int = 0,
    name: str = "<trace>",
) -> Iterator[GPUSample]:
    """Yield one sample per CSV row, in order; ``base_unix_nano`` + ``t_s`` is each time."""
    reader = csv.DictReader(stream)
    fields = reader.fieldnames or []
    if "t_s" not in fields:
        raise TraceError(f"{name}: no 't_s' column (columns: {', '.join(fields) or 'none'})")
    known = [c for c in fields if c in COLUMNS]
    if not known:
        raise TraceError(f"{name}: none of the columns {', '.join(COLUMNS)} is present")
    last_t = float("-inf")
    for row in reader:
        line = reader.line_num
        try:
            t = float(row["t_s"])
            values = {
                COLUMNS[c][0]: COLUMNS[c][1](row[c]) for c in known if row[c] not in ("", None)
            }
        except (TypeError, ValueError) as e:
            raise TraceError(f"{name} line {line}: {e}") from None
        if t < last_t:
            raise TraceError(f"{name} line {line}: t_s {t} goes back in time (after {last_t})")
        last_t = t
        values.setdefault("gpu_uuid", gpu_uuid)
        values.setdefault("gpu_model", gpu_model)
        yield GPUSample(
            source="replay",
            node=node,
            time_unix_nano=base_unix_nano + int(round(t * 1e9)),
            phase=row.get("phase") or "",
            **values,
        )


@dataclass(frozen=True)
class TokenWindow:
    """Tokens processed between two instants of the trace's clock (seconds)."""

    phase: str
    tokens: float
    start_s: float
    end_s: float


def read_token_phases(path: Path) -> dict[str, tuple[float, float | None]]:
    """phase -> (tokens, seconds of work or None), from a phases JSON file."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise TraceError(f"token file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise TraceError(f"{path}: not JSON: {e}") from None
    phases = data.get("phases") if isinstance(data, dict) else None
    if not isinstance(phases, list):
        raise TraceError(f"{path}: expected an object with a 'phases' list")
    out: dict[str, tuple[float, float | None]] = {}
    for i, p in enumerate(phases):
        tokens = p.get("new_tokens", p.get("tokens")) if isinstance(p, dict) else None
        if not isinstance(p, dict) or "phase" not in p or not isinstance(tokens, (int, float)):
            raise TraceError(f"{path}: phases[{i}] needs 'phase' and 'new_tokens' (or 'tokens')")
        seconds = p.get("seconds")
        out[str(p["phase"])] = (float(tokens), float(seconds) if seconds is not None else None)
    return out


def token_windows(
    samples: list[GPUSample], phases: dict[str, tuple[float, float | None]]
) -> list[TokenWindow]:
    """Place each phase's tokens on the trace's clock.

    The recorder relabels its samples only once a phase is over, so a phase ends at the first
    sample of the next phase (or the trace's last sample); with ``seconds`` of measured work
    it starts that long before its end, else at its first sample (warm-up before the timed
    work is then included).
    """
    if not samples:
        return []
    t0 = samples[0].time_unix_nano
    times = [(s.time_unix_nano - t0) / 1e9 for s in samples]
    windows = []
    for phase, (tokens, seconds) in phases.items():
        idx = [i for i, s in enumerate(samples) if s.phase == phase]
        if not idx:
            raise TraceError(f"phase {phase!r} of the token file is not in the trace")
        end = times[min(idx[-1] + 1, len(times) - 1)]
        start = end - seconds if seconds is not None else times[idx[0]]
        windows.append(TokenWindow(phase, tokens, start, end))
    return windows
