"""Evidently HTML drift reports: the reference window against a drifted window.

A drift result says *that* a window drifted and by how much; the report shows *how*: each
feature's distributions side by side, the statistic and its threshold, rendered by Evidently
0.7.23 (``DataDriftPreset``). Each feature is given the method and threshold that decided it
(:data:`EVIDENTLY_METHODS` maps the names), so the report's drift scores are the engine's
(both follow Evidently's rules; :attr:`Rendered.statistics` holds Evidently's numbers).

Two users:

- the admin API (:class:`DriftReports`): ``GET /reports/{id}``, one report per drift
  *episode* (consecutive windows of a stream with dataset drift; the engine sets
  ``episode_start_window``). Every result of an episode carries the same :func:`report_id`;
  the report compares the reference with the episode's first drifted window, which shows how
  the episode began. It is rendered on the first request, from the records that window's
  ``reference_ranges``/``current_ranges`` name (read back from Kafka), then cached as
  ``{dir}/{id}.html``; the newest ``keep`` files are kept. Rendering on request rather than in
  the engine keeps Evidently (about 1-2 s per report) out of the streaming path, and costs
  nothing for windows nobody looks at.
- ``observer drift score --report-dir DIR`` (:func:`write_window_report`): one file per
  drift episode of a segment, named after its first drifted window.

The HTML is one self-contained file: Evidently's JavaScript bundle and icon font are embedded
(``get_html_str(as_iframe=False)``), so it renders with no network access. Evidently's usage
telemetry is switched off (``DO_NOT_TRACK``) before Evidently is imported.

>>> from observer.core.records import DriftResult, OffsetRange
>>> r = DriftResult(segment={"service": "shop"}, segment_key="shop", record_type="llm",
...                 window_index=3, n_reference=10, n_current=10, features=[], drift_share=1.0,
...                 dataset_drift=True, closed_at_unix_nano=0,
...                 current_ranges=[OffsetRange(topic="observer.llm", partition=0,
...                                             first_offset=10, last_offset=19)])
>>> rid = report_id(r)
>>> rid.startswith("llm-w3-"), valid_report_id(rid), valid_report_id("../../etc/passwd")
(True, True, False)
>>> later = r.model_copy(update={"window_index": 4, "episode_start_window": 3})
>>> report_id(later) == report_id(r.model_copy(update={"episode_start_window": 3}))
True
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from observer.drift.record_types import event_time, feature_rows
from observer.drift.reference import ParquetReference
from observer.core.config import KafkaConfig, parse_instant
from observer.drift.config import DriftConfig, DriftReportsConfig, FeatureSpec
from observer.core.extras import require
from observer.core.records import DriftResult, FeatureDrift, OffsetRange, Record
from observer.core.windows import WindowReadError, read_window_timed
from observer.drift.embedding.report import embedding_section, standalone, with_section

log = logging.getLogger(__name__)

EVIDENTLY_METHODS: dict[str, str] = {
    "wasserstein": "wasserstein",
    "psi": "psi",
    "jensenshannon": "jensenshannon",
    "ks": "ks",
    "chisquare": "chisquare",
    "ztest": "z",
}
"""observer's method names (configuration, results) -> Evidently's stattest names."""

_ID = re.compile(r"^[a-z0-9_]{1,40}-w[0-9]{1,12}-[0-9a-f]{16}$")


class ReportError(RuntimeError):
    """A report could not be rendered; the message says why."""


def require_evidently() -> None:
    """Raise :class:`~observer.core.extras.MissingExtra` unless Evidently (``reports``) imports."""
    require("evidently", extra="reports", feature="HTML drift reports (drift.reports.enabled)")


@dataclass(frozen=True)
class ReportColumn:
    """One feature in a report: how Evidently should compare it."""

    name: str
    kind: Literal["numeric", "categorical"]
    method: str
    """observer's method name (a key of :data:`EVIDENTLY_METHODS`)."""
    threshold: float

    @classmethod
    def of(cls, feature: FeatureDrift) -> ReportColumn:
        return cls(feature.name, feature.kind, feature.method, feature.threshold)


@dataclass(frozen=True)
class Rendered:
    """A rendered report and Evidently's numbers in it."""

    html: str
    statistics: dict[str, float]
    """Column -> Evidently's drift score (the statistic of the column's method)."""
    drift_share: float
    """Evidently's share of drifted columns."""


def report_id(result: DriftResult) -> str:
    """A stable, URL- and file-safe id of the report a drifted window belongs to.

    Inside a drift episode (``episode_start_window`` set) every window gets the episode's id:
    record type, the episode's first window and a digest of the segment, that window index
    and the reference's offsets. Window indices never repeat within a stream, so a replayed
    result gets the same id and another episode never does. A result without an episode
    (written before episodes existed) gets its own window's id, with its offsets digested.
    """
    episode = result.episode_start_window
    if episode is not None:
        identity = json.dumps(
            [result.segment_key, result.record_type, "episode", episode,
             [r.model_dump() for r in result.reference_ranges]],
            sort_keys=True,
        )
        window = episode
    else:
        identity = json.dumps(
            [
                result.segment_key,
                result.record_type,
                result.window_index,
                [r.model_dump() for r in result.reference_ranges],
                [r.model_dump() for r in result.current_ranges],
            ],
            sort_keys=True,
        )
        window = result.window_index
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    kind = re.sub(r"[^a-z0-9_]", "_", result.record_type.lower())[:40] or "x"
    return f"{kind}-w{window}-{digest}"


def starts_episode(result: DriftResult) -> bool:
    """Whether ``result`` is the window its report compares: the first drifted window of its
    episode (or, for a result written before episodes, any drifted window).

    >>> r = DriftResult(segment={}, segment_key="", record_type="llm", window_index=5,
    ...                 n_reference=1, n_current=1, features=[], drift_share=1.0,
    ...                 dataset_drift=True, closed_at_unix_nano=0, episode_start_window=4)
    >>> starts_episode(r), starts_episode(r.model_copy(update={"episode_start_window": 5}))
    (False, True)
    """
    return result.dataset_drift and result.episode_start_window in (None, result.window_index)


@dataclass
class Episode:
    """The drifted windows of one drift episode that a reader holds, under one report id."""

    report_id: str
    first: DriftResult
    """The episode's first drifted window (its report's subject) when held, else the
    earliest held one."""
    windows: list[int]
    """Indices of the episode's drifted windows held, ascending."""
    last_closed_at_unix_nano: int
    """When the latest of those windows closed."""


def episodes(results: Iterable[DriftResult]) -> dict[str, Episode]:
    """Group drifted results by report, one entry per drift episode; windows without
    dataset drift are left out. Duplicates (a result read twice) count once.

    >>> def r(w, start):
    ...     return DriftResult(segment={}, segment_key="s", record_type="llm", window_index=w,
    ...                        n_reference=1, n_current=1, features=[], drift_share=1.0,
    ...                        dataset_drift=start is not None, closed_at_unix_nano=w,
    ...                        episode_start_window=start)
    >>> found = episodes([r(3, 2), r(1, 1), r(2, None), r(4, 4), r(2, 2)])
    >>> [(e.first.window_index, e.windows) for e in found.values()]
    [(1, [1]), (2, [2, 3]), (4, [4])]
    """
    out: dict[str, Episode] = {}
    for r in sorted(results, key=lambda r: (r.segment_key, r.record_type, r.window_index)):
        if not r.dataset_drift:
            continue
        rid = report_id(r)
        known = out.get(rid)
        if known is None:
            out[rid] = Episode(rid, r, [r.window_index], r.closed_at_unix_nano)
        elif r.window_index != known.windows[-1]:
            known.windows.append(r.window_index)
            known.last_closed_at_unix_nano = max(known.last_closed_at_unix_nano,
                                                 r.closed_at_unix_nano)
    return out


def valid_report_id(text: str) -> bool:
    """Whether ``text`` has the shape :func:`report_id` produces (never a path)."""
    return bool(_ID.match(text))


def window_frame(records: Sequence[Record], columns: Sequence[ReportColumn]) -> pd.DataFrame:
    """The feature values of ``records``, one column per feature, as the engine sees them.

    A missing value is NaN (dropped by Evidently as by the engine); for a categorical feature
    the empty string stays a category of its own.

    >>> from observer.core.records import LLMCall
    >>> recs = [LLMCall(service="s", model="m", trace_id="t", span_id="a", output_tokens=n,
    ...                 finish_reason=r) for n, r in ((5, "stop"), (None, ""))]
    >>> frame = window_frame(recs, [ReportColumn("output_tokens", "numeric", "psi", 0.1),
    ...                             ReportColumn("finish_reason", "categorical", "psi", 0.1)])
    >>> frame["output_tokens"].tolist(), frame["finish_reason"].tolist()
    ([5.0, nan], ['stop', ''])
    """
    # The engine's rows: one per record, or per instance of a prediction.
    specs = [FeatureSpec(name=c.name, kind=c.kind) for c in columns]
    rows = [row for r in records for row in feature_rows(r, specs)]
    data: dict[str, Any] = {}
    for c in columns:
        values = [row[c.name] for row in rows]
        if c.kind == "numeric":
            data[c.name] = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        else:
            data[c.name] = pd.Series(values, dtype=object)
    return pd.DataFrame(data)


def _usable(frame: pd.DataFrame, column: ReportColumn) -> bool:
    values = frame[column.name]
    if column.kind == "numeric":
        return bool(np.isfinite(values.to_numpy(dtype=np.float64)).any())
    return bool(values.notna().any())


def render_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: Sequence[ReportColumn],
    *,
    drift_share: float = 0.5,
    title: str = "Drift report",
    details: Mapping[str, Any] | None = None,
) -> Rendered:
    """Render Evidently's data drift report of ``current`` against ``reference``.

    Parameters
    ----------
    reference, current
        One column per feature (:func:`window_frame`, or the offline files' columns).
    columns
        The features, each with the method and threshold Evidently must use. A feature with
        no usable value on a side is left out (the engine gives it no verdict either;
        Evidently would raise).
    drift_share
        Dataset drift when this share of columns drifted.
    title, details
        The page title, and name -> value lines shown above Evidently's widgets (segment,
        window...); both are HTML-escaped.
    """
    os.environ.setdefault("DO_NOT_TRACK", "1")  # before Evidently loads: no usage telemetry
    require_evidently()
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    for c in columns:
        if c.method not in EVIDENTLY_METHODS:
            raise ReportError(
                f"feature {c.name!r}: method {c.method!r} has no Evidently equivalent; "
                f"expected one of {', '.join(EVIDENTLY_METHODS)}"
            )
        for side, frame in (("reference", reference), ("current", current)):
            if c.name not in frame.columns:
                raise ReportError(f"the {side} window has no column {c.name!r}")
    kept = [c for c in columns if _usable(reference, c) and _usable(current, c)]
    if not kept:
        raise ReportError("no feature has values on both sides: nothing to compare")
    names = [c.name for c in kept]
    definition = DataDefinition(
        numerical_columns=[c.name for c in kept if c.kind == "numeric"],
        categorical_columns=[c.name for c in kept if c.kind == "categorical"],
    )
    preset = DataDriftPreset(
        columns=names,
        drift_share=drift_share,
        per_column_method={c.name: EVIDENTLY_METHODS[c.method] for c in kept},
        per_column_threshold={c.name: c.threshold for c in kept},
    )
    try:
        snapshot = Report([preset]).run(
            Dataset.from_pandas(current[names].reset_index(drop=True), data_definition=definition),
            Dataset.from_pandas(reference[names].reset_index(drop=True), data_definition=definition),
        )
        page = snapshot.get_html_str(as_iframe=False)
        summary = snapshot.dict()
    except Exception as e:  # Evidently raises many types on data it cannot compare
        raise ReportError(f"Evidently could not render the report: {e}") from e
    statistics: dict[str, float] = {}
    share = 0.0
    for metric in summary.get("metrics", []):
        config = metric.get("config", {})
        kind = str(config.get("type", ""))
        if kind.endswith(":ValueDrift"):
            statistics[config["column"]] = float(metric["value"])
        elif kind.endswith(":DriftedColumnsCount"):
            share = float(metric["value"]["share"])
    return Rendered(_with_header(page, title, details or {}), statistics, share)


def _with_header(page: str, title: str, details: Mapping[str, Any]) -> str:
    """Evidently's page with a title and a short description of what is compared."""
    rows = "".join(
        f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(str(k))}</th>"
        f"<td>{html.escape(str(v))}</td></tr>"
        for k, v in details.items()
    )
    header = (
        "<header id='observer-report-header' style='font-family:sans-serif;margin:16px'>"
        f"<h1 style='font-size:20px'>{html.escape(title)}</h1><table>{rows}</table></header>"
    )
    page = page.replace("<head>", f"<head>\n<title>{html.escape(title)}</title>", 1)
    return page.replace("<body>", f"<body>\n{header}", 1)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)  # readers see the whole report or none


def _slug(segment: Mapping[str, Any]) -> str:
    """A file-name part naming the segment.

    >>> _slug({}), _slug({"svc": "a", "model": "m1"}), _slug({"svc": "b/c"})
    ('all', 'a_m1', 'b-c-1759b6a0')
    """
    if not segment:
        return "all"
    raw = "_".join(str(v) for v in segment.values())
    slug = re.sub(r"[^A-Za-z0-9._-]", "-", raw)[:80]
    if slug != raw or slug in ("", ".", ".."):  # distinct segments must not share a file
        slug += "-" + hashlib.sha256(json.dumps(dict(segment), sort_keys=True,
                                                default=str).encode()).hexdigest()[:8]
    return slug


def write_window_report(
    report_dir: Path | str,
    segment: Mapping[str, Any],
    window: Mapping[str, Any],
    reference: pd.DataFrame,
    current: pd.DataFrame,
    features: Sequence[FeatureDrift],
    drift_share: float,
) -> Path:
    """Write the report of one offline window; returns its path.

    The file is ``{segment values}-window-{index}.html`` (``all`` without segments; a digest
    is appended when the values are not file-safe).
    """
    directory = Path(report_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"cannot create the report directory {directory}: {e}") from None
    columns = [ReportColumn.of(f) for f in features if f.statistic is not None]
    details = {"segment": json.dumps(dict(segment), default=str) if segment else "(all rows)",
               "window": json.dumps(dict(window), default=str),
               "reference rows": len(reference), "current rows": len(current)}
    rendered = render_report(reference, current, columns, drift_share=drift_share,
                             title=f"Drift: window {window.get('index')}", details=details)
    path = directory / f"{_slug(segment)}-window-{window.get('index')}.html"
    try:
        _write_atomically(path, rendered.html)
    except OSError as e:
        raise ReportError(f"cannot write {path}: {e}") from None
    return path


class ReportNotFound(LookupError):
    """No report with that id: never a drifted window, or no longer known here."""


class DriftReports:
    """Reports of drifted windows, rendered on first request and cached on disk.

    Parameters
    ----------
    cfg
        ``drift.reports``: the directory, how many files to keep, read-back limits.
    kafka
        Where the windows' records are read back from.
    drift_share
        ``drift.drift_share``: the share of drifted features that makes dataset drift.
    drift
        The whole ``drift`` section, when references may come from elsewhere than the
        stream's offsets: ``reference: parquet`` (read from ``reference_path`` as the engine
        does) and ``reference: time_range`` (records outside the range are left out).
    """

    def __init__(
        self,
        cfg: DriftReportsConfig,
        kafka: KafkaConfig | None,
        drift_share: float = 0.5,
        drift: DriftConfig | None = None,
    ) -> None:
        require_evidently()  # reports on without the extra: fail at start, not per request
        self.cfg = cfg
        self.kafka = kafka
        self.drift_share = drift_share
        self.drift = drift
        self.dir = Path(cfg.dir)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._parquet: Any = None

    @classmethod
    def from_config(cls, drift: DriftConfig, kafka: KafkaConfig | None) -> DriftReports:
        """Reports as the ``drift`` section configures them."""
        return cls(drift.reports, kafka, drift.drift_share, drift)

    def path(self, rid: str) -> Path:
        if not valid_report_id(rid):
            raise ReportNotFound(f"not a report id: {rid!r}")
        return self.dir / f"{rid}.html"

    def cached(self, rid: str) -> Path | None:
        """The rendered file of ``rid`` when it is on disk."""
        p = self.path(rid)
        return p if p.is_file() else None

    def get(self, result: DriftResult) -> Path:
        """The report file of ``result``'s episode, rendering it first when it is not cached.

        ``result`` should be the episode's first drifted window (:func:`starts_episode`): the
        report compares it with the reference. A later window of the episode is served only
        when the report is already cached.

        Raises :class:`ReportNotFound` for a window that did not drift, or a later window of
        an episode whose report is not cached; :class:`ReportError` when the records cannot
        be read back or rendered.
        """
        if not result.dataset_drift:
            raise ReportNotFound("reports exist for windows with dataset drift only")
        rid = report_id(result)
        path = self.path(rid)
        with self._guard:
            lock = self._locks.setdefault(rid, threading.Lock())
        with lock:  # two requests for a new report render it once
            if not path.is_file():
                if not starts_episode(result):
                    raise ReportNotFound(
                        f"report {rid} compares the first window of its drift episode "
                        f"(window {result.episode_start_window}), whose result is no longer "
                        "held here"
                    )
                html_text = self.render(result).html
                self.dir.mkdir(parents=True, exist_ok=True)
                _write_atomically(path, html_text)
                self._prune()
        with self._guard:
            self._locks.pop(rid, None)
        return path

    def render(self, result: DriftResult) -> Rendered:
        """Read both windows of ``result`` back (from Kafka; the reference from the Parquet
        dataset when the result names no reference offsets) and render their report."""
        # Embedding features are vectors, which Evidently cannot render: they get a section
        # of their own from the result (drift.embedding.report).
        columns = [ReportColumn.of(f) for f in result.features
                   if f.statistic is not None and f.kind != "embedding"]
        section = embedding_section(result.features)
        if section and not columns:
            return self._embedding_only(result, section)
        current_span = None
        if result.window_start_unix_nano is not None and result.window_end_unix_nano is not None:
            current_span = (result.window_start_unix_nano, result.window_end_unix_nano)
        frames = {"current": self._read("current", result, result.current_ranges, current_span,
                                        columns)}
        if result.reference_ranges:
            frames["reference"] = self._read("reference", result, result.reference_ranges,
                                             self._reference_span(), columns)
        else:
            frames["reference"] = self._parquet_reference(result, columns)
        details = {
            "segment": ", ".join(f"{k}={v}" for k, v in result.segment.items()),
            "record type": result.record_type,
            "window": result.window_index,
            "drift episode": f"began at window {result.episode_start_window}"
            if result.episode_start_window is not None else "(not recorded)",
            "reference records": len(frames["reference"]),
            "current records": len(frames["current"]),
            "observer drift share": f"{result.drift_share:.3f}",
        }
        title = f"Drift: {result.segment_key} {result.record_type} window {result.window_index}"
        rendered = render_report(frames["reference"], frames["current"], columns,
                                 drift_share=self.drift_share, title=title, details=details)
        if not section:
            return rendered
        return Rendered(with_section(rendered.html, section), rendered.statistics,
                        rendered.drift_share)

    def _embedding_only(self, result: DriftResult, section: str) -> Rendered:
        """A window whose features are all embeddings: the section alone, no read-back."""
        details = {
            "segment": ", ".join(f"{k}={v}" for k, v in result.segment.items()),
            "record type": result.record_type,
            "window": result.window_index,
            "drift episode": f"began at window {result.episode_start_window}"
            if result.episode_start_window is not None else "(not recorded)",
            "reference records": result.n_reference,
            "current records": result.n_current,
            "observer drift share": f"{result.drift_share:.3f}",
        }
        title = f"Drift: {result.segment_key} {result.record_type} window {result.window_index}"
        statistics = {f.name: f.statistic for f in result.features if f.statistic is not None}
        return Rendered(standalone(title, details, section), statistics, result.drift_share)

    def _read(self, side: str, result: DriftResult, ranges: Sequence[OffsetRange],
              span: tuple[int, int] | None, columns: Sequence[ReportColumn]) -> pd.DataFrame:
        """One window's records from Kafka; with ``span``, those whose event time is in it
        (a time window's offsets can hold its segment's late or early records too)."""
        if not ranges:
            raise ReportError(f"the result names no offsets of its {side} window")
        try:
            timed = read_window_timed(self.kafka, ranges, result.segment,
                                      max_records=self.cfg.max_records,
                                      timeout_s=self.cfg.read_timeout_s)
        except WindowReadError as e:
            raise ReportError(f"reading the {side} window back: {e}") from None
        if span is not None:
            timed = [(r, ts) for r, ts in timed if span[0] <= event_time(r, ts) < span[1]]
        if not timed:
            raise ReportError(f"the {side} window's records are no longer on Kafka "
                              "(retention removed them?)")
        return window_frame([r for r, _ in timed], columns)

    def _reference_span(self) -> tuple[int, int] | None:
        if self.drift is None or self.drift.reference != "time_range":
            return None
        return parse_instant(self.drift.reference_start), parse_instant(self.drift.reference_end)

    def _parquet_reference(self, result: DriftResult,
                           columns: Sequence[ReportColumn]) -> pd.DataFrame:
        if self.drift is None or self.drift.reference != "parquet":
            raise ReportError("the result names no offsets of its reference window")
        if self._parquet is None:
            try:
                self._parquet = ParquetReference(self.drift, self.drift.features)
            except ValueError as e:
                raise ReportError(str(e)) from None
        window = self._parquet.reference(result.record_type, result.segment, False)
        if window is None:
            raise ReportError(f"the reference dataset {self.drift.reference_path} has no rows "
                              f"for segment {result.segment_key!r} ({result.record_type})")
        return pd.DataFrame({c.name: pd.Series(window.columns.get(c.name, []),
                                               dtype=np.float64 if c.kind == "numeric" else object)
                             for c in columns})

    def _prune(self) -> None:
        """Keep the newest ``keep`` reports (about 4 MB each: Evidently's bundle is inside)."""
        dated = []
        for p in self.dir.glob("*.html"):
            try:
                dated.append((p.stat().st_mtime, p))
            except FileNotFoundError:
                continue  # another process pruned it first
        for _, old in sorted(dated, reverse=True)[self.cfg.keep:]:
            old.unlink(missing_ok=True)
