"""``observer demo``: span in, drift scored, retraining triggered, on real parts.

1. start every stage (embedded broker unless Kafka is configured) and a local webhook
   receiver that verifies signatures;
2. a synthetic support agent sends a baseline phase through the real OpenTelemetry SDK and
   OTLP/HTTP exporter; the demo waits until the drift engine has counted all of it;
3. its users move to a new subject: questions and answers about other things, with the same
   lengths and token counts (only the meaning changes, which the embedding features see);
4. the agent drifts (longer answers, a new finish reason, more tool errors);
5. the demo waits for the signed webhook; each episode's retraining run was submitted to a
   stand-in Argo server (unless ``trigger.argo.server`` names a real one);
6. a simulated promotion (:mod:`observer.demo.promotion`): the stand-in server completes the
   runs, the demo sends the pipeline's signed promotion callbacks, and the promoted model's
   traffic (the drifted behaviour, now the normal) becomes each segment's new reference: the
   next windows are scored against it without drift and the episodes close;
7. it prints a summary and, last, one JSON line.

It exits 0 only when every span sent was ingested, no window before its change drifted, an
embedding feature drifted after the new subject, an llm window after the drift did, a
webhook arrived with a valid signature, and (with the stand-in server) every promoted episode
was resolved.
"""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from prometheus_client import REGISTRY
from pydantic import SecretStr

from observer.config import ObserverConfig
from observer.triggers.config import ExportConfig, PolicyConfig, WebhookConfig
from observer.core.http import ServerThread
from observer.core.records import DriftResult, TriggerEvent
from observer.demo import promotion as promotion_act
from observer.demo.agent import BASELINE, DRIFTED, NEW_SUBJECT, Behaviour, SupportAgent
from observer.demo.argo_stub import ArgoStub
from observer.demo.webhook_receiver import WebhookReceiver
from observer.runtime import ALL_STAGES, Runtime
from observer.triggers.signing import generate_secret

SPANS_PER_CONVERSATION = 4
LLM_CALLS_PER_CONVERSATION = 2
TOOL_CALLS_PER_CONVERSATION = 1
# Records per conversation of each record type the demo watches: the answering chat span
# carries the question and the answer, so it also makes one observer.embeddings record.
RECORDS_PER_CONVERSATION = {"llm": LLM_CALLS_PER_CONVERSATION, "tools": TOOL_CALLS_PER_CONVERSATION,
                            "embeddings": 1}
# The phases after the baseline, and the record types each one is meant to move: a new subject
# moves only the meaning (embeddings; lengths and token counts are matched), the drifted
# behaviour the calls' shape (llm, tools).
PHASES: tuple[tuple[str, Behaviour, tuple[str, ...]], ...] = (
    ("new subject", NEW_SUBJECT, ("embeddings",)),
    ("drifted", DRIFTED, ("llm", "tools")),
)
SEMANTIC_FEATURES = ("prompt_embedding", "response_embedding")


def metric_total(name: str, **labels: str) -> float:
    """Sum of a metric's samples in this process whose labels include ``labels``."""
    total = 0.0
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


class CountingExporter(SpanExporter):
    """Counts spans the wrapped exporter delivered successfully."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.exported = 0
        self.failed = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.inner.export(spans)
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _wait(what: str, done: Callable[[], bool], timeout_s: float, progress: Callable[[], str]) -> bool:
    deadline = time.monotonic() + timeout_s
    last = 0.0
    while not done():
        if time.monotonic() > deadline:
            _say(f"gave up waiting for {what} after {timeout_s:.0f}s ({progress()})")
            return False
        if time.monotonic() - last > 2:
            _say(f"waiting for {what}: {progress()}")
            last = time.monotonic()
        time.sleep(0.1)
    return True


def _demo_config(cfg: ObserverConfig, hook_url: str, secret: str, ledger_dir: Path,
                 argo_stub_url: str | None = None) -> ObserverConfig:
    if argo_stub_url is not None:
        # Runs go to the stand-in server, followed every second, and promoted by the demo's
        # signed callback; the promoted model's first window of traffic is the new reference.
        cfg = cfg.model_copy(update={"trigger": cfg.trigger.model_copy(update={
            "argo": cfg.trigger.argo.model_copy(update={"server": argo_stub_url}),
            "runs": cfg.trigger.runs.model_copy(update={"poll_interval_s": 1.0}),
            "promotion": cfg.trigger.promotion.model_copy(update={
                "secret": SecretStr(secret), "records": cfg.drift.window_size}),
        })})
    policy = PolicyConfig(
        name="retrain-on-drift",
        signal="drift_share",
        threshold=cfg.drift.drift_share,
        consecutive_windows=2,
        min_samples=100,
        cooldown_s=3600,
        # Meaning too: a window whose prompts or answers moved to another subject counts.
        record_types=["llm", "tools", "embeddings"],
        webhooks=[WebhookConfig(url=hook_url, secret=secret, backoff_initial_s=0.5, backoff_max_s=5)],
        # With an Argo server configured, the episode also submits the retraining workflow.
        actions=["argo"] if cfg.trigger.argo.server else [],
        max_concurrent_runs=10,  # one run per drifted record type of the one demo model
    )
    trigger = cfg.trigger.model_copy(
        update={"policies": [policy], "ledger_path": ledger_dir / "ledger.sqlite"}
    )
    if trigger.export.uri == ExportConfig().uri:
        # The episode's windows are exported for the webhook too: into the run's directory,
        # not the caller's working directory.
        export = trigger.export.model_copy(update={"uri": str(ledger_dir / "exports")})
        trigger = trigger.model_copy(update={"export": export})
    kafka = cfg.kafka
    if kafka.embedded:
        # A demo run starts from nothing, like its ledger: the embedded broker's durable
        # state (reference, windows, spool) goes to the run's directory too.
        kafka = kafka.model_copy(update={"embedded_state_dir": ledger_dir / "state"})
    if not kafka.embedded:
        # On a shared cluster, keep each demo run's topics and groups to itself.
        run = uuid.uuid4().hex[:8]
        kafka = kafka.model_copy(
            update={"topic_prefix": f"observer-demo-{run}.", "otlp_topic_prefix": f"observer-demo-{run}."}
        )
    return cfg.model_copy(update={"trigger": trigger, "kafka": kafka})


# 2000 conversations make 2000 tool calls: a whole default reference (drift.reference_records)
# of baseline tool calls, so the change lands after it on both record types.
DEFAULT_CONVERSATIONS = 2000


def run_demo(
    cfg: ObserverConfig, conversations: int = DEFAULT_CONVERSATIONS, seed: int = 7,
    timeout_s: float = 180.0,
) -> int:
    secret = generate_secret()
    receiver = WebhookReceiver(secret)
    hook_server = ServerThread(receiver.app(), "127.0.0.1", 0, name="demo-webhook").start()
    ledger_dir = Path(tempfile.mkdtemp(prefix="observer-demo-"))
    stub = None if cfg.trigger.argo.server else ArgoStub()
    argo_server = None if stub is None else ServerThread(stub.app(), "127.0.0.1", 0,
                                                         name="demo-argo").start()
    cfg = _demo_config(cfg, f"{hook_server.url}/hooks/retrain", secret, ledger_dir,
                       None if argo_server is None else argo_server.url)
    window = cfg.drift.window_size

    _say("starting observer (broker, receiver, normaliser, drift engine, triggers)")
    runtime = Runtime(cfg, ALL_STAGES)
    try:
        runtime.start()
        for name, url in runtime.endpoints().items():
            _say(f"  {name:10} {url}")
        _say(f"  {'webhook':10} {hook_server.url}/hooks/retrain (verifies Standard Webhooks signatures)")
        if not runtime.wait_assigned(60):
            return _finish({}, False, "stages did not join their consumer groups within 60 s")
        return _run_phases(runtime, receiver, cfg, conversations, seed, window, timeout_s,
                           stub=stub, secret=secret)
    finally:
        runtime.stop()
        hook_server.stop()
        if argo_server is not None:
            argo_server.stop()


def _run_phases(
    runtime: Runtime,
    receiver: WebhookReceiver,
    cfg: ObserverConfig,
    conversations: int,
    seed: int,
    window: int,
    timeout_s: float,
    *,
    stub: ArgoStub | None = None,
    secret: str = "",
) -> int:
    # Counters are process-wide: measure from here.
    base_spans = metric_total("observer_normalizer_spans_total")
    base = {t: metric_total("observer_drift_records_total", record_type=t)
            for t in RECORDS_PER_CONVERSATION}

    otlp_url = runtime.endpoints()["otlp_http"]
    exporter = CountingExporter(OTLPSpanExporter(endpoint=otlp_url))
    provider = TracerProvider(resource=Resource.create({"service.name": "support-agent"}))
    provider.add_span_processor(
        # The agent emits faster than real services: a queue that holds a whole phase, so the
        # SDK never drops a span (the demo checks spans_ingested == spans_sent).
        BatchSpanProcessor(
            exporter,
            max_queue_size=conversations * SPANS_PER_CONVERSATION,
            max_export_batch_size=512,
            schedule_delay_millis=200,
        )
    )
    agent = SupportAgent(provider.get_tracer("observer.demo"), seed=seed)
    spans_sent = 0

    def ingested() -> tuple[int, dict[str, int]]:
        return (int(metric_total("observer_normalizer_spans_total") - base_spans),
                {t: int(metric_total("observer_drift_records_total", record_type=t) - b)
                 for t, b in base.items()})

    def phase(label: str, behaviour: Behaviour, done_before: int) -> bool:
        nonlocal spans_sent
        _say(f"{label}: {conversations} conversations ({behaviour})")
        step = max(conversations // 5, 1)
        for i in range(conversations):
            spans_sent += agent.converse(behaviour)
            if (i + 1) % step == 0:
                _say(f"  {label}: {i + 1}/{conversations} conversations sent")
        provider.force_flush()
        total = done_before + conversations
        expected = {t: total * n for t, n in RECORDS_PER_CONVERSATION.items()}
        return _wait(
            f"{label} to be ingested",
            lambda: ingested() == (spans_sent, expected),
            timeout_s,
            lambda: "spans %d/%d, drift engine %s" % (
                ingested()[0], spans_sent,
                ", ".join(f"{t} {n}" for t, n in ingested()[1].items())),
        )

    ok = phase("baseline", BASELINE, 0)
    # Windows are per segment and count records: a change lands in the window holding the
    # first record after it. A first_n reference holds reference_records records; windows
    # after it count from 1.
    reference = cfg.drift.reference_records if cfg.drift.reference == "first_n" else window
    change_window: dict[str, int] = {}
    for i, (label, behaviour, moves) in enumerate(PHASES, start=1):
        for rtype in moves:
            before = i * conversations * RECORDS_PER_CONVERSATION[rtype]
            change_window[rtype] = (before - reference) // window + 1
            if before < reference:  # a reference with changed records in it hides the change
                _say(f"note: the change lands inside the {reference}-record reference of "
                     f"{rtype}: use more --conversations")
        _say(f"behaviour changes now ({label}): "
             + ", ".join(f"{t} from window {change_window[t]}" for t in moves))
        ok = phase(label, behaviour, i * conversations) and ok
    delivered = _wait(
        "a signed webhook",
        lambda: bool(receiver.valid()) and bool(_deliveries(runtime)),
        timeout_s,
        lambda: f"{len(receiver.deliveries)} webhook requests received",
    )
    episodes: list[str] = []
    stage = runtime.processors.get("trigger")
    if stub is not None and stage is not None:
        _say("")
        _say("the retraining runs succeed (stand-in Argo server) and the pipeline promotes them")
        runs = promotion_act.succeeded_runs(stage, stub, timeout_s)
        episodes = promotion_act.promote(runtime.endpoints()["admin"], secret, runs,
                                         "support-agent-v2", _say)
        _wait("the drift engine to start the new references",
              lambda: promotion_act.rebaselining(runtime.endpoints()["admin"], stage, episodes),
              timeout_s, lambda: f"{len(episodes)} promoted episodes")
        # The promoted model serves the drifted behaviour: its traffic is the new normal.
        # Two phases of it: one window against the new reference can be a false alarm (the
        # tools windows have two features, so one test's 5% flags the window); the episode
        # clears at the first window that does not drift.
        ok = phase("promoted model", DRIFTED, (len(PHASES) + 1) * conversations) and ok
        ok = phase("promoted model, continued", DRIFTED, (len(PHASES) + 2) * conversations) and ok
        _wait("the promoted episodes to clear",
              lambda: promotion_act.resolved(stage, episodes), timeout_s,
              lambda: ", ".join(stage.life.life(e)["status"] for e in episodes))
    provider.shutdown()

    results = [r for r in reversed(runtime.drift_view.history()) if isinstance(r, DriftResult)]
    spans_ingested = ingested()[0]
    first_by_type: dict[str, int | None] = {}
    early: list[str] = []
    for rtype, change in change_window.items():
        drifted = sorted(r.window_index for r in results if r.record_type == rtype and r.dataset_drift)
        first_by_type[rtype] = drifted[0] if drifted else None
        early += [f"{rtype} window {w}" for w in drifted if w < change]
    semantic = _semantic_evidence(results, change_window["embeddings"])

    _say("")
    _say("drift results (window: drift share, drifted features)")
    for r in results:
        names = ", ".join(f"{f.name} {f.method}={f.statistic:.3f}" for f in r.features if f.drifted)
        mark = "DRIFT" if r.dataset_drift else "ok   "
        _say(f"  {r.record_type:10} {r.segment_key:48} window {r.window_index}: {mark} "
             f"share {r.drift_share:.2f} {names}")
    if semantic:
        _say(f"meaning-only shift caught in embeddings window {semantic['window']}: "
             f"{semantic['feature']} {semantic['method']}={semantic['statistic']:.3f}; "
             f"most unlike the reference: traces {', '.join(semantic['unlike_traces'])}")
    fired = {
        e.episode_id: e
        for e in runtime.trigger_view.history()
        if isinstance(e, TriggerEvent) and e.event == "fired"
    }
    verified = {
        (d.payload or {}).get("data", {}).get("episode_id")
        for d in receiver.deliveries
        if d.signature_valid
    }
    triggers = [
        {
            "action": e.action,
            "status": e.status,
            "signature_valid": e.episode_id in verified,
            "policy": e.policy,
            "segment": e.segment_key,
            "record_type": e.record_type,
            "episode_id": e.episode_id,
            "attempts": e.attempts,
            "reason": fired[e.episode_id].reason if e.episode_id in fired else e.reason,
        }
        for e in _deliveries(runtime)
    ]
    for t in triggers:
        _say(f"trigger: {t['policy']} on {t['segment']} ({t['record_type']}): "
             f"{t['action']} {t['status']} after {t['attempts']} attempt(s): {t['reason']}")
    closed = promotion_act.report(stage, episodes, results, _say) if episodes else []

    summary = {
        "spans_sent": spans_sent,
        "spans_ingested": spans_ingested,
        "drift_detected": first_by_type["llm"] is not None,
        "first_drift_window": first_by_type["llm"],
        "change_window": change_window["llm"],
        "first_drift_window_by_type": first_by_type,
        "change_window_by_type": change_window,
        "semantic_drift": semantic,
        "triggers": triggers,
        "pipeline": _show_pipeline(cfg),
        "promotions": closed,
    }
    reasons = []
    if spans_ingested != spans_sent:
        reasons.append(f"{spans_sent - spans_ingested} spans sent were not ingested")
    if not ok:
        reasons.append("the pipeline did not ingest every record in time")
    if early:
        reasons.append(f"drift reported before the change: {', '.join(early)}")
    if first_by_type["llm"] is None:
        reasons.append("no drift detected after the change")
    if not semantic:
        reasons.append("the meaning-only shift (new subject) was not caught by an embedding "
                       "feature")
    if not (delivered and any(t["status"] == "delivered" and t["signature_valid"] for t in triggers)):
        reasons.append("no webhook delivered with a valid signature")
    if any(not d.signature_valid for d in receiver.deliveries):
        reasons.append("a webhook arrived with an invalid signature")
    if stub is not None and not closed:
        reasons.append("no episode was promoted")
    unresolved = [c["episode_id"][:12] for c in closed if c["status"] != "resolved"]
    if unresolved:
        reasons.append(f"promoted episodes did not clear: {', '.join(unresolved)}")
    return _finish(summary, not reasons, "; ".join(reasons))


def _semantic_evidence(results: Sequence[DriftResult], change: int) -> dict[str, Any] | None:
    """The first embedding feature drifted from the new subject's window on, with its evidence."""
    for r in sorted(results, key=lambda r: r.window_index):
        if r.record_type != "embeddings" or r.window_index < change:
            continue
        for f in r.features:
            if f.name in SEMANTIC_FEATURES and f.drifted and f.statistic is not None:
                unlike = f.evidence.unlike if f.evidence else []
                return {"window": r.window_index, "feature": f.name, "method": f.method,
                        "statistic": f.statistic,
                        "unlike_traces": [u.trace_id[:12] for u in unlike[:3]],
                        "novel_clusters": len(f.evidence.novel_clusters) if f.evidence else 0}
    return None


def _show_pipeline(cfg: ObserverConfig) -> dict[str, Any]:
    """Render the retraining workflow next to the demo's ledger and say what it runs."""
    from observer.triggers.pipeline.render import render, write

    docs = render(cfg.trigger)
    out = cfg.trigger.ledger_path.parent / "pipeline"
    files = write(out, docs)
    steps = [g[0]["name"] for g in docs["workflowtemplate.yaml"]["spec"]["templates"][0]["steps"]]
    _say("")
    if cfg.trigger.argo.server:
        _say(f"retraining runs are submitted to {cfg.trigger.argo.server} "
             f"(WorkflowTemplate {cfg.trigger.argo.workflow_template})")
    else:
        _say("no Argo server configured (trigger.argo.server): the retraining workflow a fired "
             "episode would submit is rendered instead")
    _say(f"  {len(files)} files in {out} (apply with kubectl apply -R -f {out})")
    _say(f"  steps: {' -> '.join(steps)}")
    return {"dir": str(out), "files": len(files), "steps": steps}


def _deliveries(runtime: Runtime) -> list[TriggerEvent]:
    """The latest delivery event of each episode."""
    latest: dict[str, TriggerEvent] = {}
    for e in reversed(runtime.trigger_view.history()):
        if isinstance(e, TriggerEvent) and e.event == "delivery":
            latest[f"{e.episode_id}/{e.target}"] = e
    return [e for e in latest.values() if e.status == "delivered"] or list(latest.values())


def _finish(summary: dict[str, Any], ok: bool, reason: str) -> int:
    _say("")
    if ok:
        _say("the loop closed: drift detected after the change, none before, webhook delivered and verified")
    else:
        _say(f"FAILED: {reason}")
    summary = {**summary, "ok": ok, **({} if ok else {"reason": reason})}
    print(json.dumps(summary), flush=True)
    return 0 if ok else 1
