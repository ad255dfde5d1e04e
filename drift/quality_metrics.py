"""Quality metrics for the dashboards: eval scores per segment and eval name, the thumbs-down
rate, retrieval score distributions, and the top documents falling out of the top-k.

Each stream's :class:`~observer.drift.degradation.DegradationTracker` carries a watcher
(:func:`watcher_for`) that sees every record and every closed window of its stream:

=====================================================  =========================================
metric                                                 what
=====================================================  =========================================
``observer_quality_score_mean{segment,eval}``          mean score of the last closed window
``observer_quality_score_reference{segment,eval}``     the ``score_fell`` test's reference mean
``observer_quality_thumbs_down_rate{segment,eval}``    thumbs-down share of the window's feedback
``observer_retrieval_score{segment,stat}``             histogram of score_max, score_mean and
                                                       score_margin, one observation per record
``observer_retrieval_top_document_share_drop``         per retrieval stream, for the 10 documents
``{segment,document}``                                 most often in the top-k of its first
                                                       window: that share minus the last window's
                                                       (1.0 - 0 = fell out of every top-k)
=====================================================  =========================================

``segment`` is the segment key without the eval name (``shop|gpt-4o``). Eval names and
document ids come from clients, so the series are capped: at most ``drift.quality.max_series``
segment x eval pairs (further ones are counted in ``observer_quality_series_dropped_total``,
still scored) and 10 documents per retrieval stream. Watchers keep no checkpointed state: after
a restart the document shares start again from the next closed window.

>>> from observer.drift.config import DriftConfig
>>> from observer.core.records import RetrievalRecord
>>> w = watcher_for(DriftConfig(), "retrievals", {"service": "rag", "model": "m"})
>>> def hit(docs):
...     return RetrievalRecord(service="rag", trace_id="t", span_id="s", k=len(docs),
...                            topk_document_ids=docs, score_max=0.9)
>>> for _ in range(10):
...     w.update(hit(["a", "b"]))
>>> w.close([])  # the first window: the documents' reference shares
>>> for _ in range(10):
...     w.update(hit(["b", "c"]))
>>> w.close([])
>>> w.drops()
{'a': 1.0, 'b': 0.0}
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Protocol

from observer.drift.config import EVAL_KEY, DriftConfig
from prometheus_client import Counter as CounterMetric
from prometheus_client import Gauge, Histogram

from observer.core.records import DegradationSignal, Record, RetrievalRecord, segment_key

SCORE_MEAN = Gauge(
    "observer_quality_score_mean",
    "Mean evaluation score of the last closed window, per segment and eval name.",
    ["segment", "eval"],
)
SCORE_REFERENCE = Gauge(
    "observer_quality_score_reference",
    "Reference mean of the score_fell test (the stream's first scores), per segment and eval.",
    ["segment", "eval"],
)
THUMBS_DOWN_RATE = Gauge(
    "observer_quality_thumbs_down_rate",
    "Share of thumbs-down among the last closed window's feedback, per segment and eval name.",
    ["segment", "eval"],
)
SERIES_DROPPED = CounterMetric(
    "observer_quality_series_dropped_total",
    "Windows of segment x eval streams beyond drift.quality.max_series, not exported.",
)
RETRIEVAL_SCORE = Histogram(
    "observer_retrieval_score",
    "Retrieval scores per record (stat: max, mean, margin), per segment.",
    ["segment", "stat"],
    buckets=(-1.0, -0.5, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 2.0, 5.0, 10.0,
             20.0, 50.0),
)
TOP_DOCUMENT_DROP = Gauge(
    "observer_retrieval_top_document_share_drop",
    "For the documents most often in the top-k of a retrieval stream's first window: that "
    "share minus the last window's (1 = fell out of the top-k entirely).",
    ["segment", "document"],
)

TOP_DOCUMENTS = 10
"""Documents followed per retrieval stream."""
_STATS = {"max": "score_max", "mean": "score_mean", "margin": "score_margin"}
_admitted: set[tuple[str, str]] = set()  # segment x eval series exported (process-wide cap)


class Watcher(Protocol):
    def update(self, record: Record) -> None: ...

    def close(self, signals: list[DegradationSignal]) -> None: ...


class EvalWatcher:
    """Sets the score and thumbs-down gauges of one ``evals`` stream at each closed window."""

    def __init__(self, segment: dict[str, str], max_series: int) -> None:
        self.labels = (segment_key({k: v for k, v in segment.items() if k != EVAL_KEY}),
                       segment.get(EVAL_KEY, ""))
        self.max_series = max_series

    def update(self, record: Record) -> None:
        pass  # the degradation signals already sum the window

    def close(self, signals: list[DegradationSignal]) -> None:
        if self.labels not in _admitted:
            if len(_admitted) >= self.max_series:
                SERIES_DROPPED.inc()
                return
            _admitted.add(self.labels)
        by_name = {s.name: s for s in signals}
        score, thumbs = by_name.get("score_fell"), by_name.get("thumbs_down_rate")
        if score is not None and score.n:
            SCORE_MEAN.labels(*self.labels).set(_number(score.mean))
            SCORE_REFERENCE.labels(*self.labels).set(_number(score.reference))
        if thumbs is not None and thumbs.n:
            THUMBS_DOWN_RATE.labels(*self.labels).set(_number(thumbs.mean))


class RetrievalWatcher:
    """Observes retrieval scores and follows the stream's most frequent top-k documents."""

    def __init__(self, segment: dict[str, str]) -> None:
        self.segment = segment_key(segment)
        self.counts: Counter[str] = Counter()
        self.n = 0
        self.reference: dict[str, float] | None = None  # document -> share of records
        self.last: dict[str, float] = {}

    def update(self, record: Record) -> None:
        if not isinstance(record, RetrievalRecord):
            return
        for stat, field in _STATS.items():
            value = getattr(record, field)
            if value is not None:
                RETRIEVAL_SCORE.labels(self.segment, stat).observe(value)
        self.n += 1
        self.counts.update(dict.fromkeys(record.topk_document_ids, 1))  # once per record

    def close(self, signals: list[DegradationSignal]) -> None:
        n, counts = self.n, self.counts
        self.n, self.counts = 0, Counter()
        if not n:
            return
        if self.reference is None:
            self.reference = {d: c / n for d, c in counts.most_common(TOP_DOCUMENTS)}
            return
        self.last = {d: share - counts.get(d, 0) / n for d, share in self.reference.items()}
        for document, drop in self.last.items():
            TOP_DOCUMENT_DROP.labels(self.segment, document).set(drop)

    def drops(self) -> dict[str, float]:
        """Reference share minus the last window's, per followed document (sorted by id)."""
        return dict(sorted(self.last.items()))


class _Nothing:
    def update(self, record: Record) -> None:
        pass

    def close(self, signals: list[DegradationSignal]) -> None:
        pass


def watcher_for(cfg: DriftConfig, record_type: str, segment: dict[str, Any]) -> Watcher:
    """The metrics watcher of one stream (one that does nothing for other record types)."""
    if record_type == "evals":
        return EvalWatcher(segment, cfg.quality.max_series)
    if record_type == "retrievals":
        return RetrievalWatcher(segment)
    return _Nothing()


def _number(x: float | None) -> float:
    return math.nan if x is None else x
