"""The domain-metrics stage: what the agents did, as Prometheus series on ``/metrics``.

Consumes ``observer.llm`` and ``observer.tools`` (and ``observer.paths`` when trace grouping
writes it) in its own consumer group and updates counters and histograms per model, per tool
and per prompt path. It produces nothing to Kafka: its output is the admin API's ``/metrics``.
Replicas each count their own partitions; ``sum`` in PromQL adds them up.

Label cardinality is bounded: every label (service, model, tool, agent, finish reason, error
type) keeps its first ``metrics.max_label_values`` distinct values; later ones are counted as
``other``. Path signatures keep ``metrics.max_paths``. Every family has a ``cluster`` label,
the record's cluster (:mod:`observer.collectors.common.cluster`), capped at
``metrics.max_clusters``; it is "" when the record names none, so that a Prometheus scrape's
target label ``cluster`` applies. With the defaults (20, 20) the largest
family, ``observer_llm_latency_seconds``, has at most 20 services x 20 models x 13 buckets.

Records are checked when they are decoded (:mod:`observer.core.records` bounds counts and
rejects NaN), and again where a value meets a series: a counter is only ever incremented by
a finite amount in ``[0, MAX_COUNT]`` and a histogram only observes finite, non-negative
values (a record without a valid latency is counted, not observed). A message that does not
decode as a record goes to the dead-letter topic with its reason.

>>> from prometheus_client import CollectorRegistry
>>> from observer.core.bus import Message
>>> from observer.core.records import LLMCall, encode
>>> registry = CollectorRegistry()
>>> stage = DomainMetrics(MetricsConfig(), Topics.from_config(KafkaConfig()), registry=registry)
>>> call = LLMCall(service="shop", model="m1", trace_id="t", span_id="s", latency_ms=250.0,
...                input_tokens=600, output_tokens=40, finish_reasons=["stop"])
>>> stage.process([Message("observer.llm", 0, 0, b"shop|m1", encode(call), 0)])
[]
>>> registry.get_sample_value("observer_llm_tokens_total",
...                           {"cluster": "", "service": "shop", "model": "m1", "type": "input"})
600.0
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from observer.core import validate
from observer.core.bus import Message, Output
from observer.collectors.metrics.config import MetricsConfig
from observer.core.config import KafkaConfig  # noqa: F401 (doctest)
from observer.core.dead_letter import dead_letter
from observer.core.records import LLMCall, PathRecord, Record, RecordError, ToolCall, decode
from observer.core.topics import Topics

log = logging.getLogger(__name__)

OTHER = "other"
UNKNOWN = "unknown"

# Seconds. LLM calls run from ~100 ms to minutes; first tokens arrive in tens of ms to seconds.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 2.0, 4.0, 8.0)
TOOL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ITERATION_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30)

# Record field -> value of the `type` label of observer_llm_tokens_total.
TOKEN_FIELDS = {
    "input_tokens": "input",
    "output_tokens": "output",
    "cache_read_tokens": "cache_read",
    "reasoning_tokens": "reasoning",
}


class LabelCap:
    """Admit at most ``limit`` distinct values of one label; map the rest to ``other``.

    First come, first kept: a value once admitted keeps its series for the process's life, so
    counters never jump between label sets.

    Values are label-safe first (:func:`observer.core.validate.text`: capped, no control
    characters), whatever produced the record.

    >>> cap = LabelCap(2)
    >>> [cap("a"), cap("b"), cap("c"), cap("a"), cap(""), len(LabelCap(1)("x" * 9999))]
    ['a', 'b', 'other', 'a', 'unknown', 256]
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a label cap must admit at least one value, got {limit}")
        self.limit = limit
        self._kept: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str | None) -> str:
        if not value:
            # "" would read as "label absent" in PromQL; say so instead.
            return UNKNOWN
        if value in self._kept:
            return value
        value = validate.text(value) or UNKNOWN
        if value in self._kept:
            return value
        with self._lock:
            if len(self._kept) < self.limit:
                self._kept.add(value)
                return value
        return OTHER


class ClusterCap(LabelCap):
    """:class:`LabelCap` for the ``cluster`` label, but a record without a cluster keeps ""
    (not ``unknown``): Prometheus then applies its scrape's own ``cluster`` target label.

    >>> cap = ClusterCap(1)
    >>> [cap(""), cap("east"), cap("west"), cap("east")]
    ['', 'east', 'other', 'east']
    """

    def __call__(self, value: str | None) -> str:
        return super().__call__(value) if value else ""


@dataclass(frozen=True)
class DomainSeries:
    """The metric families, registered once per registry."""

    llm_calls: Counter
    llm_errors: Counter
    llm_tokens: Counter
    llm_latency: Histogram
    llm_ttft: Histogram
    tool_calls: Counter
    tool_errors: Counter
    tool_latency: Histogram
    traces: Counter
    loop_iterations: Histogram
    paths: Counter
    errors: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> DomainSeries:
        def counter(name: str, doc: str, labels: list[str]) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        def histogram(name: str, doc: str, labels: list[str], buckets: tuple) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=registry)

        llm = ["cluster", "service", "model"]
        return cls(
            llm_calls=counter(
                "observer_llm_calls_total",
                "LLM calls, by finish reason (the first one reported).",
                [*llm, "finish_reason"],
            ),
            llm_errors=counter(
                "observer_llm_errors_total", "LLM calls that failed, by error type.",
                [*llm, "error_type"],
            ),
            llm_tokens=counter(
                "observer_llm_tokens_total",
                "Tokens reported by LLM calls: input, output, cache_read, reasoning.",
                [*llm, "type"],
            ),
            llm_latency=histogram(
                "observer_llm_latency_seconds", "Duration of LLM calls.", llm, LATENCY_BUCKETS
            ),
            llm_ttft=histogram(
                "observer_llm_time_to_first_token_seconds",
                "Time to the first token (or chunk) of LLM calls that reported it.",
                llm, TTFT_BUCKETS,
            ),
            tool_calls=counter(
                "observer_tool_calls_total", "Tool executions, by status (ok, error).",
                ["cluster", "service", "tool", "status"],
            ),
            tool_errors=counter(
                "observer_tool_errors_total", "Tool executions that failed, by error type.",
                ["cluster", "service", "tool", "error_type"],
            ),
            tool_latency=histogram(
                "observer_tool_latency_seconds", "Duration of tool executions.",
                ["cluster", "service", "tool"], TOOL_BUCKETS,
            ),
            traces=counter(
                "observer_agent_traces_total",
                "Finished agent traces (observer.paths), by whether they exceeded the loop bound.",
                ["cluster", "service", "agent", "flagged"],
            ),
            loop_iterations=histogram(
                "observer_agent_loop_iterations",
                "Agent loop iterations (LLM turns) per finished trace.",
                ["cluster", "service", "agent"], ITERATION_BUCKETS,
            ),
            paths=counter(
                "observer_agent_path_traces_total",
                "Finished traces per prompt path (capped; the rest are 'other'). `path` is the "
                "readable step list, `signature` its hash.",
                ["cluster", "service", "path", "signature"],
            ),
            errors=counter(
                "observer_domain_metrics_errors_total",
                "Messages the domain-metrics stage skipped, by reason.",
                ["reason"],
            ),
        )


_DEFAULT_SERIES: DomainSeries | None = None
_DEFAULT_LOCK = threading.Lock()


def _series_for(registry: CollectorRegistry | None) -> DomainSeries:
    """The default registry's families are created once per process (several runtimes in one
    test process share them, as they share every other stage's metrics)."""
    global _DEFAULT_SERIES
    if registry is not None and registry is not REGISTRY:
        return DomainSeries.create(registry)
    with _DEFAULT_LOCK:
        if _DEFAULT_SERIES is None:
            _DEFAULT_SERIES = DomainSeries.create(REGISTRY)
        return _DEFAULT_SERIES


PATH_LABEL_MAX_CHARS = 200


def path_label(steps: list[str]) -> str:
    """A prompt path as a legend can show it, cut to :data:`PATH_LABEL_MAX_CHARS`.

    >>> path_label(["llm", "tool:search", "llm"])
    'llm > tool:search > llm'
    """
    text = " > ".join(steps) or UNKNOWN
    return text if len(text) <= PATH_LABEL_MAX_CHARS else text[: PATH_LABEL_MAX_CHARS - 3] + "..."


def _seconds(ms: float | None) -> float | None:
    """Seconds from milliseconds; None unless finite and non-negative."""
    checked = validate.finite(ms, min=0.0)
    return None if checked is None else checked / 1000.0


def _inc(counter: Counter, amount: object) -> None:
    """Increment by ``amount`` only when it is a count (finite, ``0..MAX_COUNT``)."""
    checked = validate.finite(amount, min=0.0, max=validate.MAX_COUNT)
    if checked:
        counter.inc(checked)


def _observe(histogram: Histogram, value: float | None) -> None:
    """Observe ``value`` only when it is finite and non-negative."""
    checked = validate.finite(value, min=0.0)
    if checked is not None:
        histogram.observe(checked)


class DomainMetrics:
    """Processor of the ``metrics`` stage (see the module docstring).

    Parameters: ``cfg`` the caps, ``topics`` the resolved topic names, ``registry`` where the
    series live (default: prometheus_client's, which the admin API serves).
    """

    name = "metrics"

    def __init__(
        self, cfg: MetricsConfig, topics: Topics, registry: CollectorRegistry | None = None
    ) -> None:
        self.cfg = cfg
        self.topics = topics
        self.series = _series_for(registry)
        cap = cfg.max_label_values
        self.services, self.models, self.tools = LabelCap(cap), LabelCap(cap), LabelCap(cap)
        self.agents, self.finish, self.error_types = LabelCap(cap), LabelCap(cap), LabelCap(cap)
        self.path_cap = LabelCap(cfg.max_paths)
        self.clusters = ClusterCap(cfg.max_clusters)
        # Record type -> handler: one table, no ladder of isinstance checks.
        self.handlers: dict[type, Callable[[Record], None]] = {
            LLMCall: self._llm,
            ToolCall: self._tool,
            PathRecord: self._path,
        }

    def process(self, messages: list[Message]) -> list[Output]:
        dead: list[Output] = []
        for m in messages:
            try:
                record = decode(m.value)
            except RecordError as e:
                self.series.errors.labels("undecodable").inc()
                dead.append(dead_letter(self.topics.dead_letter, self.name, m,
                                        validate.reason(e), validate.describe(e)))
                continue
            handler = self.handlers.get(type(record))
            if handler is None:
                self.series.errors.labels("unexpected_record").inc()
                continue
            try:
                handler(record)
            except validate.REJECTED as e:  # a value no check above caught: quarantine it
                self.series.errors.labels("invalid").inc()
                dead.append(dead_letter(self.topics.dead_letter, self.name, m,
                                        validate.reason(e), validate.describe(e)))
        return dead

    def tick(self) -> list[Output]:
        return []

    # -- one handler per record type ----------------------------------------------------
    def _llm(self, r: Record) -> None:
        assert isinstance(r, LLMCall)
        s = self.series
        labels = (self.clusters(r.cluster), self.services(r.service), self.models(r.model))
        first = r.finish_reason or (r.finish_reasons[0] if r.finish_reasons else "")
        s.llm_calls.labels(*labels, self.finish(first)).inc()
        if r.error:
            s.llm_errors.labels(*labels, self.error_types(r.error_type or "error")).inc()
        for field, kind in TOKEN_FIELDS.items():
            n = getattr(r, field)
            if n:
                _inc(s.llm_tokens.labels(*labels, kind), n)
        _observe(s.llm_latency.labels(*labels), _seconds(r.latency_ms))
        _observe(s.llm_ttft.labels(*labels), _seconds(r.time_to_first_token_ms))

    def _tool(self, r: Record) -> None:
        assert isinstance(r, ToolCall)
        s = self.series
        cluster, service, tool = (self.clusters(r.cluster), self.services(r.service),
                                  self.tools(r.tool_name))
        s.tool_calls.labels(cluster, service, tool, r.status).inc()
        if r.status == "error":
            s.tool_errors.labels(cluster, service, tool,
                                 self.error_types(r.error_type or "error")).inc()
        _observe(s.tool_latency.labels(cluster, service, tool), _seconds(r.latency_ms))

    def _path(self, r: Record) -> None:
        assert isinstance(r, PathRecord)
        s = self.series
        cluster, service, agent = (self.clusters(r.cluster), self.services(r.service),
                                   self.agents(r.agent))
        s.traces.labels(cluster, service, agent,
                        "true" if r.loop_bound_exceeded else "false").inc()
        _observe(s.loop_iterations.labels(cluster, service, agent), r.loop_iterations)
        signature = self.path_cap(r.path_signature)
        readable = path_label(r.prompt_path) if signature == r.path_signature else signature
        s.paths.labels(cluster, service, readable, signature).inc()
