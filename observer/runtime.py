"""Assemble stages from configuration and run them: all in one process, or one each.

``observer up`` runs every stage here; ``observer collect|normalize|drift|trigger`` runs one,
and a deployment scales each out by adding replicas (consumer groups split the partitions).
Each process also serves the admin API (metrics, health) for the stages it runs.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from observer.collectors.domain_metrics import DomainMetrics
from observer.collectors.genai_metrics import GenAIMetricsNormalizer
from observer.collectors.normalizer import Normalizer
from observer.collectors.intake import Intake
from observer.collectors.kserve_intake import KSERVE_PATH, kserve_route
from observer.collectors.kserve_pairing import PredictionPairer
from observer.collectors.otlp_grpc import GrpcReceiver
from observer.collectors.otlp_http import create_app as create_otlp_http_app
from observer.collectors.tenant_seal import TenantSeal, with_seal_key
from observer.collectors.trace_grouping import TraceGrouper
from observer.drift.local_state import drift_stage
from observer.drift.record_types import segment_keys, topics_by_type
from observer.drift.reports import DriftReports
from observer.admin import create_admin_app
from observer.core.broker import EmbeddedBroker
from observer.core.bus import KafkaProbe, Processor, StageRunner, ensure_topics
from observer.core.config import ObserverConfig
from observer.core.http import ServerThread
from observer.core.settle import Flow
from observer.durability import Durability
from observer.core.tls import certificate_files
from observer.core.suspects import SuspectRanges
from observer.core.supervisor import RestartPolicy, Supervisor
from observer.core.records import DriftResult, Record, TriggerEvent
from observer.core.topics import Topics
from observer.views import TopicView
from observer.triggers.stage import TriggerStage

log = logging.getLogger(__name__)


def _seal(cfg: ObserverConfig) -> TenantSeal:
    # The collector stages key their records by the drift segment (the tenant first with
    # tenants: observer.core.config) and trust a tenant only under the receivers' seal.
    return TenantSeal(cfg.receiver.stamp_key)


@dataclass(frozen=True)
class ConsumingStage:
    """How to build one consuming stage from the configuration."""

    build: Callable[[ObserverConfig, Topics], Processor]
    group_id: Callable[[ObserverConfig], str]
    inputs: Callable[[ObserverConfig, Topics], list[str]]
    # The topics it writes (dead letters aside) and how long input may stay in its memory
    # after its offset is committed: the settle watermark follows them (observer.core.settle).
    outputs: Callable[[ObserverConfig, Topics], list[str]] = lambda _cfg, _t: []
    hold_s: Callable[[ObserverConfig], float] = lambda _cfg: 0.0


CONSUMING_STAGES: dict[str, ConsumingStage] = {
    "normalize": ConsumingStage(
        build=lambda cfg, t: Normalizer(
            t, content=cfg.normalizer.content, segment_keys=cfg.drift.segment_keys, seal=_seal(cfg)
        ),
        group_id=lambda cfg: cfg.normalizer.group_id,
        inputs=lambda _cfg, t: [t.spans],
        outputs=lambda _cfg, t: [t.llm, t.tools],
    ),
    # Trace grouping: otlp_spans (keyed by trace id) -> observer.paths.
    "paths": ConsumingStage(
        build=lambda cfg, t: TraceGrouper(
            t, cfg.paths, segment_keys=segment_keys(cfg.drift, "paths"), seal=_seal(cfg)
        ),
        group_id=lambda cfg: cfg.paths.group_id,
        inputs=lambda _cfg, t: [t.spans],
        outputs=lambda _cfg, t: [t.paths],
        hold_s=lambda cfg: cfg.paths.timeout_s,  # open traces
    ),
    # gen_ai.* metric points from otlp_metrics -> observer.genai-metrics (as interval deltas).
    "genai-metrics": ConsumingStage(
        build=lambda cfg, t: GenAIMetricsNormalizer(
            t, segment_keys=cfg.drift.segment_keys, seal=_seal(cfg)
        ),
        group_id=lambda cfg: cfg.normalizer.metrics_group_id,
        inputs=lambda _cfg, t: [t.metrics],
        outputs=lambda _cfg, t: [t.genai_metrics],
    ),
    # KServe logger events (keyed by ce-id) -> request/response pairs -> observer.predictions.
    "predictions": ConsumingStage(
        build=lambda cfg, t: PredictionPairer(
            t, cfg.kserve, segment_keys=segment_keys(cfg.drift, "predictions"), seal=_seal(cfg)
        ),
        group_id=lambda cfg: cfg.kserve.group_id,
        inputs=lambda _cfg, t: [t.kserve_events],
        outputs=lambda _cfg, t: [t.predictions],
        hold_s=lambda cfg: cfg.kserve.pair_timeout_s,  # unpaired events
    ),
    "drift": ConsumingStage(
        # Mirrored to a local file in embedded durable mode (drift.local_state).
        build=lambda cfg, t: drift_stage(cfg.drift, cfg.kafka, t),
        group_id=lambda cfg: cfg.drift.group_id,
        # The topics of the record types with drift features (drift.record_types).
        inputs=lambda cfg, t: list(topics_by_type(cfg.drift, t)),
        outputs=lambda _cfg, t: [t.drift, t.drift_state],
    ),
    "trigger": ConsumingStage(
        build=lambda cfg, t: TriggerStage(cfg.trigger, t, kafka=cfg.kafka),
        group_id=lambda cfg: cfg.trigger.group_id,
        inputs=lambda _cfg, t: [t.drift],
        outputs=lambda _cfg, t: [t.triggers],
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
        # The embedded broker lets any local process write: seal what the receivers write.
        self.cfg = cfg = with_seal_key(cfg)
        self.stages = stages
        self.topics = Topics.from_config(cfg.kafka)
        self.broker: EmbeddedBroker | None = None
        self.durability: Durability | None = None
        self.servers: dict[str, ServerThread] = {}
        self.supervisors: dict[str, Supervisor] = {}
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
            self.broker = EmbeddedBroker(
                kafka.embedded_listen, state_dir=kafka.durable_state_dir
            ).start()
        if kafka.create_topics:
            created = ensure_topics(kafka, self.topics)
            if created:
                log.info("created topics: %s", ", ".join(created))
        if self.broker is not None and self.broker.incarnation is not None:
            # Before any stage or receiver: seed the drift state, replay the spool.
            self.durability = Durability(
                kafka, self.topics, self._flows(), kafka.embedded_state_dir,
                self.broker.incarnation,
            ).open()

        self.drift_view = drift_view = TopicView(kafka, self.topics.drift, _drift_slot).start()
        self.trigger_view = trigger_view = TopicView(kafka, self.topics.triggers, _trigger_slot).start()
        probe = KafkaProbe(kafka)
        admin = create_admin_app(
            self.cfg.admin,
            kafka_ready=probe.ready,
            stage_errors=self.errors,
            stage_states=self.stage_states,
            drift_view=drift_view,
            trigger_view=trigger_view,
            decisions=self._ledger_decisions,
            resolve=self._resolve_approval,
            reports=DriftReports.from_config(self.cfg.drift, kafka)
            if self.cfg.drift.reports.enabled else None,
        )
        self.servers["admin"] = ServerThread(
            admin, self.cfg.admin.host, self.cfg.admin.port, name="admin",
            header_timeout_s=self.cfg.admin.header_timeout_s,
            body_timeout_s=self.cfg.admin.body_timeout_s,
            tls=certificate_files(self.cfg.admin.tls, "admin.tls"),
        ).start()

        if "collect" in self.stages:
            # One intake: HTTP and gRPC share the Kafka producer and the in-flight budget.
            self.intake = Intake(
                self.cfg.receiver, kafka, self.topics,
                spool=self.durability.spool if self.durability is not None else None,
            ).open()
            app = create_otlp_http_app(
                self.cfg.receiver,
                kafka,
                self.topics,
                intake=self.intake,
                extra_routes={KSERVE_PATH: kserve_route},
            )
            # One set of certificate files for both receivers, reloaded when they rotate.
            receiver_tls = certificate_files(self.cfg.receiver.tls, "receiver.tls")
            self.servers["otlp_http"] = ServerThread(
                app, self.cfg.receiver.host, self.cfg.receiver.http_port, name="otlp-http",
                header_timeout_s=self.cfg.receiver.header_timeout_s,
                body_timeout_s=self.cfg.receiver.body_timeout_s,
                tls=receiver_tls,
            ).start()
            self.grpc = GrpcReceiver(
                self.intake, self.cfg.receiver.host, self.cfg.receiver.grpc_port, receiver_tls
            ).start()

        for name in self.stages:
            spec = CONSUMING_STAGES.get(name)
            if spec is None:
                continue
            build = functools.partial(spec.build, self.cfg, self.topics)
            # The first processor is built here: a configuration error fails the start.
            supervisor = Supervisor(
                name, build, functools.partial(self._runner, spec),
                RestartPolicy(**self.cfg.supervisor.model_dump()), processor=build(),
            )
            thread = threading.Thread(
                target=self._run_stage, args=(supervisor,), name=name, daemon=True
            )
            self.supervisors[name] = supervisor
            self._threads.append(thread)
            thread.start()

    def _runner(
        self, spec: ConsumingStage, processor: Processor, suspects: SuspectRanges,
        assigned: threading.Event,
    ) -> StageRunner:
        """One run of a stage: new Kafka clients, the supervisor's suspect ranges."""
        # Sharing the GIL with the receivers: give way to them while they are busy.
        yield_ms = self.cfg.receiver.stage_yield_ms
        return StageRunner(
            self.cfg.kafka, processor, spec.group_id(self.cfg), spec.inputs(self.cfg, self.topics),
            yield_to=self.intake.busy if self.intake is not None and yield_ms else None,
            max_yield_s=yield_ms / 1000,
            dead_letter_topic=self.topics.dead_letter,
            suspects=suspects,
            assigned=assigned,
        )

    @property
    def runners(self) -> dict[str, StageRunner]:
        """The current run of each consuming stage (a restart replaces it)."""
        return {n: s.runner for n, s in self.supervisors.items() if s.runner is not None}

    @property
    def processors(self) -> dict[str, Processor]:
        """The current processor of each consuming stage (a restart rebuilds it)."""
        return {n: s.processor for n, s in self.supervisors.items() if s.processor is not None}

    def _flows(self) -> dict[str, Flow]:
        """The consuming stages run here, as the settle watermark sees them."""
        return {
            name: Flow(spec.group_id(self.cfg), tuple(spec.inputs(self.cfg, self.topics)),
                       tuple(spec.outputs(self.cfg, self.topics)), spec.hold_s(self.cfg))
            for name, spec in CONSUMING_STAGES.items() if name in self.stages
        }

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

    def _run_stage(self, supervisor: Supervisor) -> None:
        """Run a stage under its supervisor; only a permanent failure returns before the stop,
        and then it stops the process (``/healthz`` fails, ``observer up`` exits non-zero)."""
        try:
            supervisor.run(self.stop_event)
        finally:
            if supervisor.failure is not None:
                self.stop_event.set()

    def wait_assigned(self, timeout_s: float = 60.0) -> bool:
        """Block until every consuming stage has joined its group and holds partitions."""
        return all(s.assigned.wait(timeout_s) for s in self.supervisors.values())

    def errors(self) -> dict[str, str]:
        """The stages that failed permanently, and why (empty: none did)."""
        return {n: s.failure for n, s in self.supervisors.items() if s.failure is not None}

    def stage_states(self) -> dict[str, dict[str, Any]]:
        """Each consuming stage's state (``Supervisor.status``): running, restarting..."""
        return {n: s.status() for n, s in self.supervisors.items()}

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
        if self.durability is not None:
            self.durability.close()
            self.durability = None
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
            eps["otlp_grpc"] = self.grpc.url
        state_dir = self.cfg.kafka.durable_state_dir
        eps["kafka"] = self.cfg.kafka.servers + (
            "" if not self.cfg.kafka.embedded
            else " (embedded, memory-only)" if state_dir is None
            else f" (embedded, durable state in {state_dir})"
        )
        return eps
