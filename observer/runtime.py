"""Assemble stages from configuration and run them: all in one process, or one each.

``observer up`` runs every stage here; ``observer collect|normalize|drift|trigger`` runs one,
and a deployment scales each out by adding replicas (consumer groups split the partitions).
Each process also serves the admin API (metrics, health) for the stages it runs.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from collectors.domain_metrics import DomainMetrics
from collectors.genai_metrics import GenAIMetricsNormalizer
from collectors.normalizer import Normalizer
from collectors.intake import Intake
from collectors.kserve_intake import KSERVE_PATH, kserve_route
from collectors.kserve_pairing import PredictionPairer
from collectors.otlp_grpc import GrpcReceiver
from collectors.otlp_http import create_app as create_otlp_http_app
from collectors.trace_grouping import TraceGrouper
from drift.engine import DriftEngine
from drift.record_types import topics_by_type
from drift.reports import DriftReports
from observer.admin import create_admin_app
from observer.core.broker import EmbeddedBroker
from observer.core.bus import KafkaProbe, Processor, StageRunner, ensure_topics
from observer.core.config import ObserverConfig
from observer.core.http import ServerThread
from observer.core.records import DriftResult, Record, TriggerEvent
from observer.core.topics import Topics
from observer.views import TopicView
from triggers.stage import TriggerStage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConsumingStage:
    """How to build one consuming stage from the configuration."""

    build: Callable[[ObserverConfig, Topics], Processor]
    group_id: Callable[[ObserverConfig], str]
    inputs: Callable[[ObserverConfig, Topics], list[str]]


CONSUMING_STAGES: dict[str, ConsumingStage] = {
    "normalize": ConsumingStage(
        build=lambda cfg, t: Normalizer(t, content=cfg.normalizer.content),
        group_id=lambda cfg: cfg.normalizer.group_id,
        inputs=lambda _cfg, t: [t.spans],
    ),
    # Trace grouping: otlp_spans (keyed by trace id) -> observer.paths.
    "paths": ConsumingStage(
        build=lambda cfg, t: TraceGrouper(t, cfg.paths),
        group_id=lambda cfg: cfg.paths.group_id,
        inputs=lambda _cfg, t: [t.spans],
    ),
    # gen_ai.* metric points from otlp_metrics -> observer.genai-metrics (as interval deltas).
    "genai-metrics": ConsumingStage(
        build=lambda cfg, t: GenAIMetricsNormalizer(t),
        group_id=lambda cfg: cfg.normalizer.metrics_group_id,
        inputs=lambda _cfg, t: [t.metrics],
    ),
    # KServe logger events (keyed by ce-id) -> request/response pairs -> observer.predictions.
    "predictions": ConsumingStage(
        build=lambda cfg, t: PredictionPairer(t, cfg.kserve),
        group_id=lambda cfg: cfg.kserve.group_id,
        inputs=lambda _cfg, t: [t.kserve_events],
    ),
    "drift": ConsumingStage(
        build=lambda cfg, t: DriftEngine.for_kafka(cfg.drift, cfg.kafka, t),
        group_id=lambda cfg: cfg.drift.group_id,
        # The topics of the record types with drift features (drift.record_types).
        inputs=lambda cfg, t: list(topics_by_type(cfg.drift, t)),
    ),
    "trigger": ConsumingStage(
        build=lambda cfg, t: TriggerStage(cfg.trigger, t, kafka=cfg.kafka),
        group_id=lambda cfg: cfg.trigger.group_id,
        inputs=lambda _cfg, t: [t.drift],
    ),
    "metrics": ConsumingStage(
        build=lambda cfg, t: DomainMetrics(cfg.metrics, t),
        group_id=lambda cfg: cfg.metrics.group_id,
        inputs=lambda _cfg, t: [t.llm, t.tools, t.paths],
    ),
}
# "collect" is the OTLP receiver: an HTTP server, not a consumer.
ALL_STAGES = ["collect", *CONSUMING_STAGES]


def _drift_slot(r: Record) -> str:
    return f"{r.segment_key}/{r.record_type}" if isinstance(r, DriftResult) else ""


def _trigger_slot(r: Record) -> str:
    return r.episode_id if isinstance(r, TriggerEvent) else ""


class Runtime:
    """Start the broker (when embedded), topics, admin API and the chosen stages.

    >>> Runtime(ObserverConfig(), ["nonsense"])
    Traceback (most recent call last):
    ...
    ValueError: unknown stage 'nonsense'; choose from collect, normalize, paths, genai-metrics, predictions, drift, trigger, metrics
    """

    def __init__(self, cfg: ObserverConfig, stages: list[str]) -> None:
        for s in stages:
            if s not in ALL_STAGES:
                raise ValueError(f"unknown stage {s!r}; choose from {', '.join(ALL_STAGES)}")
        self.cfg = cfg
        self.stages = stages
        self.topics = Topics.from_config(cfg.kafka)
        self.broker: EmbeddedBroker | None = None
        self.servers: dict[str, ServerThread] = {}
        self.runners: dict[str, StageRunner] = {}
        self.processors: dict[str, Processor] = {}
        self.drift_view: TopicView | None = None
        self.intake: Intake | None = None
        self.grpc: GrpcReceiver | None = None
        self.trigger_view: TopicView | None = None
        self._threads: list[threading.Thread] = []
        self.stop_event = threading.Event()

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> "Runtime":
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        kafka = self.cfg.kafka
        if kafka.embedded:
            self.broker = EmbeddedBroker(kafka.embedded_listen).start()
        if kafka.create_topics:
            created = ensure_topics(kafka, self.topics)
            if created:
                log.info("created topics: %s", ", ".join(created))

        self.drift_view = drift_view = TopicView(kafka, self.topics.drift, _drift_slot).start()
        self.trigger_view = trigger_view = TopicView(kafka, self.topics.triggers, _trigger_slot).start()
        probe = KafkaProbe(kafka)
        admin = create_admin_app(
            self.cfg.admin,
            kafka_ready=probe.ready,
            stage_errors=self.errors,
            drift_view=drift_view,
            trigger_view=trigger_view,
            decisions=self._ledger_decisions,
            resolve=self._resolve_approval,
            reports=DriftReports.from_config(self.cfg.drift, kafka)
            if self.cfg.drift.reports.enabled else None,
        )
        self.servers["admin"] = ServerThread(
            admin, self.cfg.admin.host, self.cfg.admin.port, name="admin"
        ).start()

        if "collect" in self.stages:
            # One intake: HTTP and gRPC share the Kafka producer and the in-flight budget.
            self.intake = Intake(self.cfg.receiver, kafka, self.topics).open()
            app = create_otlp_http_app(
                self.cfg.receiver,
                kafka,
                self.topics,
                intake=self.intake,
                extra_routes={KSERVE_PATH: kserve_route},
            )
            self.servers["otlp_http"] = ServerThread(
                app, self.cfg.receiver.host, self.cfg.receiver.http_port, name="otlp-http"
            ).start()
            self.grpc = GrpcReceiver(
                self.intake, self.cfg.receiver.host, self.cfg.receiver.grpc_port
            ).start()

        for name in self.stages:
            spec = CONSUMING_STAGES.get(name)
            if spec is None:
                continue
            processor = spec.build(self.cfg, self.topics)
            # Sharing the GIL with the receivers: give way to them while they are busy.
            yield_ms = self.cfg.receiver.stage_yield_ms
            runner = StageRunner(
                kafka, processor, spec.group_id(self.cfg), spec.inputs(self.cfg, self.topics),
                yield_to=self.intake.busy if self.intake is not None and yield_ms else None,
                max_yield_s=yield_ms / 1000,
            )
            thread = threading.Thread(target=self._run_stage, args=(runner,), name=name, daemon=True)
            self.processors[name] = processor
            self.runners[name] = runner
            self._threads.append(thread)
            thread.start()

    def _ledger_decisions(self, limit: int) -> list[dict[str, Any]] | None:
        """The trigger ledger's newest decisions, when the trigger stage runs here."""
        stage = self.processors.get("trigger")
        return stage.ledger.list_decisions(limit) if isinstance(stage, TriggerStage) else None

    def _resolve_approval(
        self, episode_id: str, verdict: str, by: str, note: str
    ) -> tuple[dict[str, Any], bool] | None:
        """Approve or reject a held decision in the ledger, when the trigger stage runs here."""
        stage = self.processors.get("trigger")
        if not isinstance(stage, TriggerStage):
            return None
        return stage.ledger.resolve_approval(
            episode_id, verdict, by=by, now=time.time(), note=note  # type: ignore[arg-type]
        )

    def _run_stage(self, runner: StageRunner) -> None:
        try:
            runner.run(self.stop_event)
        except BaseException:
            # The runner logged it; a dead stage makes /healthz fail and `observer up` exit.
            self.stop_event.set()

    def wait_assigned(self, timeout_s: float = 60.0) -> bool:
        """Block until every consuming stage has joined its group and holds partitions."""
        return all(r.assigned.wait(timeout_s) for r in self.runners.values())

    def errors(self) -> dict[str, str]:
        return {n: repr(r.error) for n, r in self.runners.items() if r.error is not None}

    def stop(self) -> None:
        self.stop_event.set()
        for t in self._threads:
            t.join(15)
        if self.grpc is not None:
            self.grpc.stop()
            self.grpc = None
        for server in self.servers.values():
            server.stop()
        if self.intake is not None:
            self.intake.close()
            self.intake = None
        for view in (self.drift_view, self.trigger_view):
            if view is not None:
                view.stop()
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    # -- what to tell the user -------------------------------------------------------------
    def endpoints(self) -> dict[str, str]:
        eps = {"admin": self.servers["admin"].url}
        if "otlp_http" in self.servers:
            eps["otlp_http"] = self.servers["otlp_http"].url + "/v1/traces"
            eps["kserve_logger"] = self.servers["otlp_http"].url + KSERVE_PATH
        if self.grpc is not None:
            eps["otlp_grpc"] = self.grpc.target
        eps["kafka"] = self.cfg.kafka.servers + (" (embedded, memory-only)" if self.cfg.kafka.embedded else "")
        return eps
