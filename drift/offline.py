"""Offline scoring: the engine's statistics over files, ``observer drift score``.

REF and CUR are Parquet (``.parquet``/``.pq``) or CSV files. The current file is cut into
windows per segment: by count (``window_size`` rows, in file order; the last window may be
shorter) or by time (tumbling windows of ``window`` aligned on the Unix epoch, over
``time_column``); without either, the whole current file is one window. Each window is scored
against the segment's reference rows with :func:`observer.drift.scoring.score_columns`, so the numbers
are the streaming engine's. Windows are numbered from 1 per segment (0 is the reference, as in
the engine). The default method is ``auto``: Evidently 0.7's choice, so that scoring two files
reproduces Evidently's ``DataDriftPreset`` column by column.

>>> import pandas as pd
>>> ref = pd.DataFrame({"tokens": range(100), "reason": ["stop"] * 100})
>>> cur = pd.DataFrame({"tokens": [i % 100 for i in range(0, 200, 2)], "reason": ["stop"] * 50 + ["length"] * 50})
>>> [w["drift"] for w in score_frames(ref, cur, ScoreOptions(window_size=50))]
[False, True]
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd

from observer.core.extras import require
from observer.drift.scoring import drift_share, prepare_columns, score_columns
from observer.drift.stats import AUTO, check_method
from observer.drift.config import FeatureSpec


class ScoreError(ValueError):
    """Bad input for offline scoring; the message names the file, column or option."""


@dataclass
class ScoreOptions:
    """What ``observer drift score`` was asked for (see :func:`score_frames`)."""

    window_size: int | None = None
    window: str | None = None
    time_column: str | None = None
    features: list[str] | None = None
    segment_by: list[str] = field(default_factory=list)
    method: str = AUTO
    threshold: float | None = None
    drift_share: float = 0.5
    report_dir: str | None = None
    """Write an Evidently HTML report of every drift episode here (``--report-dir``): the
    reference against the episode's first drifted window; consecutive drifted windows of a
    segment share it."""


_UNITS = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``90s``, ``15m``, ``1h``, ``1d``, ``1h30m``.

    >>> parse_duration("1h30m"), parse_duration("250ms")
    (5400.0, 0.25)
    >>> parse_duration("soon")
    Traceback (most recent call last):
    ...
    observer.drift.offline.ScoreError: bad duration 'soon'; use e.g. 30s, 15m, 1h, 1d or 1h30m
    """
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|min|s|m|h|d|w)", text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise ScoreError(f"bad duration {text!r}; use e.g. 30s, 15m, 1h, 1d or 1h30m")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ScoreError(f"duration {text!r} must be positive")
    return seconds


def read_table(path: Path | str) -> pd.DataFrame:
    """A Parquet or CSV file as a data frame, or a :class:`ScoreError` naming the problem."""
    p = Path(path)
    if not p.exists():
        raise ScoreError(f"{p}: no such file")
    suffix = p.suffix.lower()
    if suffix in (".parquet", ".pq"):  # pandas reads Parquet through pyarrow
        require("pyarrow", extra="parquet", feature="Parquet files in `observer drift score`")
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(p)
        if suffix in (".csv", ".txt"):
            return pd.read_csv(p)
    except Exception as e:  # pyarrow and pandas raise many types for a broken file
        raise ScoreError(f"{p}: cannot read it as {suffix[1:]}: {e}") from None
    raise ScoreError(f"{p}: unknown file type {suffix or '(none)'}; use .parquet or .csv")


def _kind(series: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
        return "categorical"
    return "numeric"


def feature_specs(
    reference: pd.DataFrame, current: pd.DataFrame, options: ScoreOptions
) -> list[FeatureSpec]:
    """The features to score, with their kind from the reference's column type."""
    excluded = {options.time_column, *options.segment_by}
    for name, frame in (("reference", reference), ("current", current)):
        needed = [c for c in (options.time_column, *options.segment_by) if c]
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise ScoreError(f"{name} has no column {missing[0]!r}")
    names = options.features or [c for c in reference.columns if c not in excluded]
    if not names:
        raise ScoreError("no feature columns to score")
    specs = []
    for n in names:
        for side, frame in (("reference", reference), ("current", current)):
            if n not in frame.columns:
                raise ScoreError(f"{side} has no column {n!r}; it has {', '.join(map(str, frame.columns))}")
        kind = _kind(reference[n])
        try:
            check_method(options.method, kind)  # type: ignore[arg-type]
        except ValueError as e:
            raise ScoreError(f"feature {n!r}: {e}") from None
        specs.append(FeatureSpec(name=n, kind=kind, method=options.method,  # type: ignore[arg-type]
                                 threshold=options.threshold))
    return specs


def _segments(frame: pd.DataFrame, keys: Sequence[str]) -> dict[tuple[Any, ...], pd.DataFrame]:
    if not keys:
        return {(): frame}
    return {
        (k if isinstance(k, tuple) else (k,)): g
        for k, g in frame.groupby(list(keys), sort=True, dropna=False)
    }


def _times(frame: pd.DataFrame, column: str) -> pd.Series:
    values = frame[column]
    if pd.api.types.is_numeric_dtype(values):
        return pd.to_datetime(values, unit="s", utc=True)
    try:
        return pd.to_datetime(values, utc=True)
    except (ValueError, TypeError) as e:
        raise ScoreError(f"time column {column!r} does not hold times: {e}") from None


def _windows(cur: pd.DataFrame, options: ScoreOptions) -> Iterator[tuple[dict[str, Any], pd.DataFrame]]:
    if options.window:
        if not options.time_column:
            raise ScoreError("--window needs --time-column")
        seconds = parse_duration(options.window)
        times = _times(cur, options.time_column)
        order = np.argsort(times.to_numpy(), kind="stable")
        cur, times = cur.iloc[order], times.iloc[order]
        epoch_s = times.astype("int64").to_numpy() / 1e9
        bucket = np.floor(epoch_s / seconds).astype(np.int64)
        for b in np.unique(bucket):
            rows = cur[bucket == b]
            start = pd.Timestamp(b * seconds, unit="s", tz="UTC")
            end = pd.Timestamp((b + 1) * seconds, unit="s", tz="UTC")
            yield {"start": start.isoformat(), "end": end.isoformat(), "n": len(rows)}, rows
        return
    size = options.window_size or max(len(cur), 1)
    for first in range(0, len(cur), size):
        rows = cur.iloc[first:first + size]
        if options.time_column:
            times = _times(rows, options.time_column)
            span = {"start": times.min().isoformat(), "end": times.max().isoformat()}
        else:
            span = {"start": first, "end": first + len(rows)}
        yield {**span, "n": len(rows)}, rows


def _column(frame: pd.DataFrame, spec: FeatureSpec) -> np.ndarray:
    values = frame[spec.name].to_numpy()
    if spec.kind == "categorical" and values.dtype != object:
        values = values.astype(object)
    return values


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value


def score_frames(
    reference: pd.DataFrame, current: pd.DataFrame, options: ScoreOptions
) -> Iterator[dict[str, Any]]:
    """One result per (segment, window), segments in sorted order, windows in time order."""
    if options.window_size is not None and options.window_size < 1:
        raise ScoreError("--window-size must be at least 1")
    if options.window and options.window_size:
        raise ScoreError("use either --window-size or --window, not both")
    specs = feature_specs(reference, current, options)
    ref_segments = _segments(reference, options.segment_by)
    for key, cur in _segments(current, options.segment_by).items():
        segment = {k: _plain(v) for k, v in zip(options.segment_by, key)}
        ref = ref_segments.get(key)
        if ref is None:
            print(f"observer drift score: segment {json.dumps(segment)} has no reference rows; "
                  "skipped", file=sys.stderr)
            continue
        # Cleaned and sorted once: every window of the segment is scored against it.
        ref_columns = prepare_columns({s.name: _column(ref, s) for s in specs}, specs)
        episode_report: str | None = None  # the open drift episode's report, as the engine's
        for index, (window, rows) in enumerate(_windows(cur, options), start=1):
            features = score_columns(ref_columns, {s.name: _column(rows, s) for s in specs}, specs)
            share = drift_share(features)
            result = {
                "segment": segment,
                "window": {"index": index, **window},
                "features": {
                    f.name: {"method": f.method, "statistic": f.statistic,
                             "threshold": f.threshold, "drift": f.drifted}
                    for f in features
                },
                "drift_share": share,
                "drift": share >= options.drift_share,
            }
            if not result["drift"]:
                episode_report = None
            elif options.report_dir:
                if episode_report is None:
                    episode_report = _report(options, segment, result["window"], ref, rows,
                                             features)
                result["report"] = episode_report
            yield result


def _report(options: ScoreOptions, segment: dict[str, Any], window: dict[str, Any],
            ref: pd.DataFrame, rows: pd.DataFrame, features: list[Any]) -> str:
    """Write a drifted window's Evidently report; returns its path."""
    from observer.drift.reports import ReportError, write_window_report  # Evidently loads only if asked

    try:
        path = write_window_report(options.report_dir or ".", segment, window, ref, rows,
                                   features, options.drift_share)
    except ReportError as e:
        raise ScoreError(f"report of window {window['index']}: {e}") from None
    return str(path)


def write_table(results: Iterator[dict[str, Any]], out: TextIO) -> None:
    """A readable table: one line per window, then its drifted features."""
    out.write(f"{'segment':24} {'window':>6} {'n':>8} {'share':>6}  verdict  drifted features\n")
    for r in results:
        seg = ",".join(f"{v}" for v in r["segment"].values()) or "-"
        drifted = [f"{n} {f['method']}={_num(f['statistic'])}"
                   for n, f in r["features"].items() if f["drift"]]
        verdict = "DRIFT" if r["drift"] else "ok"
        out.write(f"{seg[:24]:24} {r['window']['index']:>6} {r['window']['n']:>8} "
                  f"{r['drift_share']:6.2f}  {verdict:7}  {', '.join(drifted)}\n")


def _num(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def run(
    reference: str, current: str, options: ScoreOptions, fmt: str = "jsonl",
    out: TextIO = sys.stdout, progress: TextIO | None = None,
) -> int:
    """The command: 0 on success, 2 with one error line on bad input."""
    try:
        ref, cur = read_table(reference), read_table(current)
        results = score_frames(ref, cur, options)
        if progress is not None:
            results = _with_progress(results, progress)
        if fmt == "table":
            write_table(results, out)
        else:
            out.writelines(json.dumps(r, allow_nan=False) + "\n" for r in results)
    except ScoreError as e:
        print(f"observer drift score: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # piped into head: the reader has what it wanted
        return 0
    return 0


def _with_progress(results: Iterator[dict[str, Any]], stream: TextIO) -> Iterator[dict[str, Any]]:
    n = 0
    for r in results:
        n += 1
        if n % 10 == 0:
            stream.write(f"\rscored {n} windows")
            stream.flush()
        yield r
    if n >= 10:
        stream.write(f"\rscored {n} windows\n")
