"""Assemble stages from configuration and run them: all in one process, or one each.

``observer up`` runs every stage here; ``observer collect|normalize|drift|trigger`` runs one,
and a deployment scales each out by adding replicas (consumer groups split the partitions).
Each process also serves the admin API (metrics, health) for the stages it runs. With
``workers`` above 1 the consuming stages are shared with worker processes
(:mod:`observer.workers`); this process keeps the broker, receivers, admin API and settling,
and answers for every stage.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from prometheus_client import generate_latest

from observer import stages as registry
from observer.admin import create_admin_app
from observer.collectors.common.tenant_seal import with_seal_key
from observer.collectors.kserve.intake import KSERVE_PATH, kserve_route
from observer.collectors.receiver.annotations import ANNOTATION_ROUTES
from observer.collectors.receiver.intake import Intake
from observer.collectors.receiver.otlp_grpc import GrpcReceiver
from observer.collectors.receiver.otlp_http import create_app as create_otlp_http_app
from observer.config import ObserverConfig
from observer.core.broker import EmbeddedBroker
from observer.core.bus import KafkaProbe, Processor, StageRunner, ensure_topics
from observer.core.http import ServerThread
from observer.core.records import Record
from observer.core.settle import Flow
from observer.core.stage import AdminContext, StageSpec
from observer.core.supervisor import Supervisor
from observer.core.tls import certificate_files
from observer.core.topics import Topics
from observer.durability import Durability
from observer.metrics_merge import merge
from observer.stage_threads import CONSUMING_STAGES, StageThreads
from observer.views import TopicView
from observer.worker_plan import plan
from observer.worker_pool import WorkerPool

log = logging.getLogger(__name__)

# "collect" is the OTLP receiver: an HTTP and a gRPC server, not a consumer.
ALL_STAGES: list[str] = list(registry.RUNTIME_STAGES)


class Runtime:
    """Start the broker (when embedded), topics, admin API and the chosen stages.

    >>> Runtime(ObserverConfig(), ["nonsense"])
    Traceback (most recent call last):
    ...
    ValueError: unknown stage 'nonsense'; choose from collect, normalize, paths, genai-metrics, predictions, eval-join, drift, trigger, metrics
    """

    def __init__(self, cfg: ObserverConfig, stages: list[str], workers: int = 1) -> None:
        for s in stages:
            if s not in ALL_STAGES:
                raise ValueError(f"unknown stage {s!r}; choose from {', '.join(ALL_STAGES)}")
        # The embedded broker lets any local process write: seal what the receivers write.
        self.cfg = cfg = with_seal_key(cfg)
        self.stages = stages
        self.workers = workers
        self.topics = Topics.from_config(cfg.kafka)
        self.broker: EmbeddedBroker | None = None
        self.durability: Durability | None = None
        self.servers: dict[str, ServerThread] = {}
        self.views: dict[str, TopicView] = {}  # by topic: what the stages' admin routes read
        self.intake: Intake | None = None
        self.grpc: GrpcReceiver | None = None
        self.stop_event = threading.Event()
        self.local: StageThreads | None = None
        self.pool = WorkerPool(cfg, [])

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

        # Process 0 (this one) runs its share of the stages; the workers, theirs. Spawned
        # now (after the seeding and replay above): they import while the servers start.
        shares = plan([CONSUMING_STAGES[n] for n in self.stages if n in CONSUMING_STAGES],
                      self.workers)
        self.pool = WorkerPool(self.cfg, shares[1:]).start()
        self._local_share = shares[0]

        probe = KafkaProbe(kafka)
        admin = create_admin_app(
            self.cfg.admin,
            kafka_ready=probe.ready,
            stage_errors=self.errors,
            stage_states=self.stage_states,
            metrics=self.metrics,
            routers=registry.admin_routers(self._admin_context),
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
                extra_routes={KSERVE_PATH: kserve_route, **ANNOTATION_ROUTES},
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

        yield_ms = self.cfg.receiver.stage_yield_ms
        self.local = StageThreads(
            self.cfg, self.topics, self._local_share, stop_event=self.stop_event, yield_ms=yield_ms,
            # Sharing the GIL with the receivers: give way to them while they are busy.
            busy=self.intake.busy if self.intake is not None else None,
        ).start()
        self.pool.started(self.stop_event)

    @property
    def supervisors(self) -> dict[str, Supervisor]:
        """The supervisors of the stages running in this process."""
        return self.local.supervisors if self.local is not None else {}

    @property
    def runners(self) -> dict[str, StageRunner]:
        """The current run of each consuming stage in this process (a restart replaces it)."""
        return {n: s.runner for n, s in self.supervisors.items() if s.runner is not None}

    @property
    def processors(self) -> dict[str, Processor]:
        """The current processor of each consuming stage in this process (a restart rebuilds
        it); a stage in a worker process has none here."""
        return {n: s.processor for n, s in self.supervisors.items() if s.processor is not None}

    def _flows(self) -> dict[str, Flow]:
        """The consuming stages run here, as the settle watermark sees them."""
        return {
            name: Flow(spec.group_id(self.cfg),  # type: ignore[misc]
                       tuple(spec.input_topics(self.cfg, self.topics)),
                       tuple(spec.output_topics(self.topics)), spec.hold_s(self.cfg))
            for name, spec in CONSUMING_STAGES.items() if name in self.stages
        }

    def _admin_context(self, spec: StageSpec) -> AdminContext:
        """What one stage's admin routes get: this process's processor of it, and views."""
        return AdminContext(self.cfg, self.topics,
                            processor=lambda: self.processors.get(spec.name),
                            topic_view=self._view)

    def _view(self, topic: str, slot: Callable[[Record], str]) -> TopicView:
        """One started view per topic, stopped with the runtime."""
        if topic not in self.views:
            self.views[topic] = TopicView(self.cfg.kafka, topic, slot).start()
        return self.views[topic]

    @property
    def drift_view(self) -> TopicView | None:
        """The view of ``observer.drift`` (the drift stage's admin routes read it)."""
        return self.views.get(self.topics.drift)

    @property
    def trigger_view(self) -> TopicView | None:
        """The view of ``observer.triggers`` (the trigger stage's admin routes read it)."""
        return self.views.get(self.topics.triggers)

    def wait_assigned(self, timeout_s: float = 60.0) -> bool:
        """Block until every consuming stage, here and in the workers, has joined its group
        and holds partitions."""
        deadline = time.monotonic() + timeout_s
        if self.local is not None and not self.local.wait_assigned(timeout_s):
            return False
        return self.pool.wait_assigned(deadline)

    def errors(self) -> dict[str, str]:
        """The stages that failed permanently, and why, and workers gone (empty: none)."""
        local = self.local.errors() if self.local is not None else {}
        return {**local, **self.pool.errors()}

    def stage_states(self) -> dict[str, dict[str, Any]]:
        """Each consuming stage's state (``Supervisor.status``) wherever it runs, with the
        process (``worker``: 0 is this one) when there are several."""
        states = dict(self.local.states()) if self.local is not None else {}
        if self.pool.workers:
            states = {n: {**s, "worker": 0} for n, s in states.items()}
        states.update(self.pool.states())
        return {n: states[n] for n in self.stages if n in states}  # in the registry's order

    def metrics(self) -> bytes:
        """This process's Prometheus exposition, merged with every worker's."""
        own = generate_latest()
        others = self.pool.expositions()
        return merge([own.decode(), *others]) if others else own

    def stop(self) -> None:
        self.stop_event.set()
        # The stages first (their last offsets committed), then what settles behind them.
        self.pool.stop()
        if self.local is not None:
            self.local.stop()
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
        for view in self.views.values():
            view.stop()  # kept: what they read stays readable after the stop
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    # -- what to tell the user -------------------------------------------------------------
    def endpoints(self) -> dict[str, str]:
        eps = {"admin": self.servers["admin"].url}
        if "otlp_http" in self.servers:
            eps["otlp_http"] = self.servers["otlp_http"].url + "/v1/traces"
            eps["kserve_logger"] = self.servers["otlp_http"].url + KSERVE_PATH
            eps["span_annotations"] = self.servers["otlp_http"].url + "/v1/span_annotations"
        if self.grpc is not None:
            eps["otlp_grpc"] = self.grpc.url
        state_dir = self.cfg.kafka.durable_state_dir
        eps["kafka"] = self.cfg.kafka.servers + (
            "" if not self.cfg.kafka.embedded
            else " (embedded, memory-only)" if state_dir is None
            else f" (embedded, durable state in {state_dir})"
        )
        return eps
