"""Trace grouping: the spans of one trace become one ``observer.paths/v1`` record.

The stage consumes ``otlp_spans``, which is keyed (partitioned) by trace id, so one consumer
sees every span of a trace. Spans are summarised as they arrive (only the attributes the
mapping table names are read) and held per trace until it closes:

- its root span (no parent) has arrived and ``grace_s`` has passed since, so children that the
  exporter sent later still join; or
- ``timeout_s`` has passed since its first span (a root that never comes: a remote parent, a
  crashed service); or
- more than ``max_open_traces`` are open: the oldest closes early.

A closed trace yields its agent loop (``loop_iterations``: one per chat/completion call, the
"model decides, tools run" turn), tool sequence with errors, totals, and a prompt path: the
ordered steps ``llm[:<prompt>@<version>]``, ``tool:<name>``, and the retrieval steps
``retrieve:<source>`` and ``rerank:<model>`` (:mod:`observer.collectors.common.retrieval_mapping`:
a retriever that starts reading another index changes the path). Its hash, ``path_signature``,
is a categorical feature whose mix drifts when agents start taking other routes. Traces with
more than ``max_loop_iterations`` turns are flagged ``loop_bound_exceeded``. Spans arriving
for a trace already closed are counted (``observer_paths_late_spans_total``) and dropped.

Client values are checked as spans are summarised (:mod:`observer.core.validate`): a span
whose trace or span id is unusable is left out and its message dead-lettered
(``invalid_value``); times past int64 or ends before starts count as no duration; names are
capped; token sums stop at ``MAX_COUNT``. A message that does not parse is dead-lettered
(``decode_error``).

>>> from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
>>> from observer.core.config import KafkaConfig
>>> clock = FakeClock()
>>> grouper = TraceGrouper(Topics.from_config(KafkaConfig()), PathsConfig(grace_s=2),
...                        clock=clock)
>>> request = ExportTraceServiceRequest()
>>> spans = request.resource_spans.add().scope_spans.add().spans
>>> def attr(k, v): return KeyValue(key=k, value=AnyValue(string_value=v))
>>> _ = spans.add(trace_id=b"t" * 16, span_id=b"r" * 8, name="invoke_agent", end_time_unix_nano=9)
>>> _ = spans.add(trace_id=b"t" * 16, span_id=b"c" * 8, parent_span_id=b"r" * 8, name="chat",
...               attributes=[attr("gen_ai.operation.name", "chat")], start_time_unix_nano=1)
>>> _ = spans.add(trace_id=b"t" * 16, span_id=b"s" * 8, parent_span_id=b"r" * 8, name="search",
...               attributes=[attr("gen_ai.operation.name", "execute_tool"),
...                           attr("gen_ai.tool.name", "search")], start_time_unix_nano=2)
>>> evicted = grouper.add_request(request); grouper.close_due()
[]
>>> clock.now += 2
>>> [(p.loop_iterations, p.prompt_path, p.closed_by) for p in grouper.close_due()]
[(1, ['llm', 'tool:search'], 'root')]
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from prometheus_client import Counter, Gauge

from observer.collectors.common.cluster import resource_cluster
from observer.collectors.common.genai_mapping import ATTRIBUTE_NAMES, LLM_FIELDS, TOOL_FIELDS, classify, lookup
from observer.collectors.common.otlp_attributes import attribute_values, resource_names
from observer.collectors.common.retrieval_mapping import (
    NAMES as RETRIEVAL_NAMES,
    retrieval_operation,
    source_name,
)
from observer.collectors.common.otlp_messages import (
    UndecodableMessage,
    parent_id,
    opened_trace_request,
    quarantine,
    span_identity_problem,
)
from observer.collectors.common import span_attributes
from observer.collectors.common.tenant_seal import TenantSeal
from observer.core import validate
from observer.core.bus import Message, Output
from observer.core.dead_letter import dead_letter
from observer.collectors.paths.config import PathsConfig
from observer.core.records import PathRecord, ToolStep, encode, segment_key
from observer.core.topics import Topics

log = logging.getLogger(__name__)

PATHS = Counter("observer_paths_total", "Traces closed into path records, by cause.", ["closed_by"])
LATE_SPANS = Counter(
    "observer_paths_late_spans_total", "Spans that arrived after their trace had closed."
)
OPEN_TRACES = Gauge("observer_paths_open_traces", "Traces being grouped, waiting to close.")
ERRORS = Counter(
    "observer_paths_errors_total", "Messages trace grouping could not use whole and dead-lettered."
)
STAGE = "paths"

# LLM operations that are a turn of the agent loop (embeddings are not).
LOOP_OPERATIONS = frozenset({"chat", "text_completion", "generate_content"})


class FakeClock:
    """A settable clock for tests and examples (``TraceGrouper(clock=...)``)."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(slots=True)
class _Step:
    """What a path needs from one span (times: valid int64 ns, ``end_ns >= start_ns``; a span
    without a valid duration has ``end_ns == start_ns``)."""

    start_ns: int
    end_ns: int
    kind: str
    operation: str
    span_id: bytes
    parent: bytes
    name: str
    service: str
    tenant: str
    error: bool
    model: str = ""
    agent: str = ""
    prompt: str = ""
    tool: str = ""
    error_type: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cluster: str = ""


@dataclass
class _OpenTrace:
    first_seen: float
    root_seen: float | None = None
    steps: list[_Step] = field(default_factory=list)


def _summarise(span: Span, service: str, tenant: str, cluster: str = "",
               attributes: dict[str, Any] | None = None) -> _Step:
    """``attributes``: the span's values of ``ATTRIBUTE_NAMES`` when read already (in C)."""
    if attributes is None:
        attributes = attribute_values(span.attributes, ATTRIBUTE_NAMES)
    kind = classify(span.name, attributes)
    start = validate.count(span.start_time_unix_nano, max=validate.MAX_UNIX_NANO) or 0
    end = validate.count(span.end_time_unix_nano, max=validate.MAX_UNIX_NANO)
    if end is None or end < start or end - start > validate.MAX_DURATION_MS * 1e6:
        end = start  # no meaningful duration: a clock-skewed or unfinished span
    name = validate.text(span.name)
    step = _Step(
        start_ns=start,
        end_ns=end,
        kind=kind.kind,
        operation=kind.operation,
        span_id=span.span_id,
        parent=parent_id(span, STAGE),
        name=name,
        service=service,
        tenant=tenant,
        cluster=cluster,
        error=span.status.code == Status.STATUS_CODE_ERROR,
    )
    operation = retrieval_operation(attributes, (e.name for e in span.events)) \
        if kind.kind == "other" else None
    if kind.kind == "tool":
        fields = lookup(attributes, TOOL_FIELDS, STAGE)
        step.tool = fields.get("tool_name") or name or "unknown"
    elif operation is not None:
        # A retrieval step of the path: retrieve:<source> or rerank:<model>.
        step.kind = operation
        step.tool = source_name(operation, attribute_values(span.attributes, RETRIEVAL_NAMES),
                                span.name) or "unknown"
        fields = {}
    else:
        fields = lookup(attributes, LLM_FIELDS, STAGE)
        if kind.kind == "llm":
            prompt = fields.get("prompt_id") or fields.get("prompt_template") or ""
            version = fields.get("prompt_version", "")
            step.prompt = f"{prompt}@{version}" if version else prompt
            step.input_tokens = fields.get("input_tokens") or 0
            step.output_tokens = fields.get("output_tokens") or 0
    step.model = fields.get("model", "")
    step.agent = fields.get("agent", "")
    step.error_type = fields.get("error_type", "")
    step.error = step.error or bool(step.error_type)
    return step


def path_signature(prompt_path: Sequence[str]) -> str:
    """16 hex characters of the sha256 of the ordered steps.

    >>> path_signature(["llm:support@v2", "tool:search"]) == path_signature(["llm:support@v2"])
    False
    """
    return hashlib.sha256("\n".join(prompt_path).encode()).hexdigest()[:16]


def build_path(
    trace_id: bytes, steps: list[_Step], closed_by: str, max_loop_iterations: int
) -> PathRecord:
    """The path record of one trace's summarised spans."""
    steps = sorted(steps, key=lambda s: (s.start_ns, s.end_ns))
    roots = [s for s in steps if not s.parent]
    root = roots[0] if roots else steps[0]
    llm = [s for s in steps if s.kind == "llm"]
    tools = [s for s in steps if s.kind == "tool"]
    iterations = sum(1 for s in llm if s.operation in LOOP_OPERATIONS)
    prompt_path = [
        (f"llm:{s.prompt}" if s.prompt else "llm") if s.kind == "llm" else f"{s.kind}:{s.tool}"
        for s in steps
        if s.kind != "other"
    ]
    models = list(dict.fromkeys(s.model for s in llm if s.model))
    start = min(s.start_ns for s in steps)
    duration_ms = (max(s.end_ns for s in steps) - start) / 1e6
    if duration_ms > validate.MAX_DURATION_MS:  # spans of one trace years apart: clock errors
        validate.invalid(STAGE, "duration_ms")
        duration_ms = 0.0
    return PathRecord(
        tenant=root.tenant,
        cluster=root.cluster,
        service=root.service,
        model=models[0] if models else "",
        models=models,
        # Outermost first: steps are sorted by start, and an enclosing agent starts first.
        agent=next((s.agent for s in steps if s.agent), ""),
        trace_id=trace_id.hex(),
        root_span_id=root.span_id.hex(),
        root_name=root.name,
        start_time_unix_nano=start,
        duration_ms=duration_ms,
        span_count=len(steps),
        llm_calls=len(llm),
        tool_calls=len(tools),
        tool_errors=sum(1 for s in tools if s.error),
        loop_iterations=iterations,
        loop_bound_exceeded=iterations > max_loop_iterations,
        input_tokens=min(sum(s.input_tokens for s in llm), validate.MAX_COUNT),
        output_tokens=min(sum(s.output_tokens for s in llm), validate.MAX_COUNT),
        llm_latency_ms=sum(s.end_ns - s.start_ns for s in llm) / 1e6,
        tool_latency_ms=sum(s.end_ns - s.start_ns for s in tools) / 1e6,
        error=any(s.error for s in steps),
        tool_sequence=[
            ToolStep(name=s.tool, status="error" if s.error else "ok", error_type=s.error_type)
            for s in tools
        ],
        prompt_path=prompt_path,
        path_signature=path_signature(prompt_path),
        closed_by=closed_by,  # type: ignore[arg-type]
    )


class TraceGrouper:
    """Trace grouping as a :class:`observer.core.bus.Processor` (run it with ``StageRunner``).

    ``clock`` (seconds, monotonic) decides when traces close; tests pass a :class:`FakeClock`.
    Open traces live in memory: a restart of the stage loses the ones not yet closed (their
    offsets were committed) with a real Kafka; docs/guarantees.md lists it under "Not yet".
    """

    name = "paths"

    def __init__(
        self,
        topics: Topics,
        cfg: PathsConfig,
        *,
        segment_keys: Sequence[str] = ("service", "model"),
        clock: Callable[[], float] = time.monotonic,
        seal: TenantSeal | None = None,
    ) -> None:
        self.topics = topics
        self.cfg = cfg
        self.segment_keys = list(segment_keys)
        # A message's tenant counts only under a receiver's seal (collectors.common.tenant_seal).
        self.seal = seal or TenantSeal(None)
        self.clock = clock
        self.open: OrderedDict[bytes, _OpenTrace] = OrderedDict()
        # Recently closed trace ids, to drop (and count) late spans instead of emitting a
        # second, partial path for the same trace.
        self._closed: OrderedDict[bytes, None] = OrderedDict()

    def add_request(self, request: ExportTraceServiceRequest) -> list[PathRecord]:
        """Summarise a request's spans into their traces; returns paths evicted for room.
        Spans with unusable ids are left out (:meth:`process` dead-letters their message)."""
        return self._add(request)[0]

    def _add(self, request: ExportTraceServiceRequest, raw: bytes | None = None
             ) -> tuple[list[PathRecord], str | None]:
        """:meth:`add_request`, and why the first span left out was (None: none was).
        ``raw``: the bytes ``request`` was parsed from, for reading attributes in C."""
        now = self.clock()
        first_problem: str | None = None
        scanned = iter(span_attributes.scan(raw, request, ATTRIBUTE_NAMES) or ()) \
            if raw else iter(())
        # Every span is summarised before any trace changes: a value that raises leaves the
        # open traces as they were, and the message goes to the dead-letter topic whole.
        summaries: list[tuple[bytes, _Step]] = []
        for resource_spans in request.resource_spans:
            service, tenant = resource_names(resource_spans.resource, STAGE)
            cluster = resource_cluster(resource_spans.resource, STAGE)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    read = next(scanned, None)
                    problem = span_identity_problem(span)
                    if problem is None:
                        summaries.append((span.trace_id, _summarise(
                            span, service, tenant, cluster, read[0] if read else None)))
                    elif first_problem is None:
                        first_problem = problem
        for trace_id, step in summaries:
            if trace_id in self._closed:
                LATE_SPANS.inc()
                continue
            trace = self.open.get(trace_id)
            if trace is None:
                trace = self.open[trace_id] = _OpenTrace(first_seen=now)
            trace.steps.append(step)
            if not step.parent and trace.root_seen is None:
                trace.root_seen = now
        evicted = []
        while len(self.open) > self.cfg.max_open_traces:
            path = self._close(next(iter(self.open)), "evicted")
            if path is not None:
                evicted.append(path)
        OPEN_TRACES.set(len(self.open))
        return evicted, first_problem

    def close_due(self) -> list[PathRecord]:
        """Close every trace whose grace period or timeout has passed."""
        now = self.clock()
        due = [
            (trace_id, "root" if t.root_seen is not None else "timeout")
            for trace_id, t in self.open.items()
            if (t.root_seen is not None and now - t.root_seen >= self.cfg.grace_s)
            or now - t.first_seen >= self.cfg.timeout_s
        ]
        paths = [self._close(trace_id, why) for trace_id, why in due]
        OPEN_TRACES.set(len(self.open))
        return [p for p in paths if p is not None]

    def _close(self, trace_id: bytes, closed_by: str) -> PathRecord | None:
        trace = self.open.pop(trace_id)
        self._closed[trace_id] = None
        while len(self._closed) > self.cfg.max_open_traces:
            self._closed.popitem(last=False)
        PATHS.labels(closed_by).inc()
        try:
            return build_path(trace_id, trace.steps, closed_by, self.cfg.max_loop_iterations)
        except validate.REJECTED as e:
            # Steps are checked as they arrive, so this is a gap in those checks; the spans'
            # messages were committed long ago, so there is nothing to dead-letter: count it.
            validate.invalid(STAGE, "path")
            log.error("paths: trace %s dropped, its path record is invalid: %s",
                      trace_id.hex(), validate.describe(e))
            return None

    # -- Processor -----------------------------------------------------------------------
    def process(self, messages: list[Message]) -> list[Output]:
        outputs: list[Output] = []
        for message in messages:
            try:
                # Opened (decrypted) here; an untrusted message's tenant is dropped.
                request, raw = opened_trace_request(message, self.seal, self.name)
                evicted, problem = self._add(request, raw)
                outputs += [self._output(p) for p in evicted]
            except (UndecodableMessage, *validate.REJECTED) as e:
                outputs.append(quarantine(self.topics.dead_letter, self.name, message, e, ERRORS))
                continue
            if problem:
                validate.invalid(self.name, problem.split(" ", 1)[0])
                ERRORS.inc()
                outputs.append(dead_letter(self.topics.dead_letter, self.name, message,
                                           "invalid_value", f"spans left out: {problem}"))
        return outputs

    def tick(self) -> list[Output]:
        return [self._output(p) for p in self.close_due()]

    def _output(self, path: PathRecord) -> Output:
        key = segment_key(path.segment_of(self.segment_keys))
        return Output(self.topics.paths, key, encode(path))

