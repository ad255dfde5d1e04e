"""The trigger stage: drift results in, recorded decisions and webhook deliveries out.

``process`` feeds every :class:`~observer.core.records.DriftResult` from ``observer.drift`` to
every policy's tracker. A decision is written to the ledger, with the outbox rows its
actions owe when it fired, *before* anything is sent; then a ``fired`` or
``suppressed`` :class:`~observer.core.records.TriggerEvent` goes to ``observer.triggers``,
keyed ``policy/segment_key``.

The rows are planned by the policy's actions (:mod:`observer.triggers.action`: ``webhook``
for its ``webhooks``, then each of its ``actions``, ``argo``: Argo Workflows through Hera,
``kfp``: Kubeflow Pipelines), whose payloads fix the webhook body or the episode-derived run
name and the Parquet export of the drifted window.

``tick`` (after every poll) works through the ledger's due deliveries: one attempt each by the
action the row names, its outcome settled by the shared retry policy
(:class:`~observer.triggers.retry.RetryPolicy`: backoff, ``Retry-After``, the dead letter
after ``max_attempts``) and recorded, a ``delivery`` event emitted. It attempts at most
``max_deliveries_per_tick`` and starts none after ``tick_budget_s``, so a slow receiver delays
consumption by a bounded amount; the rest wait for the next tick. Because the outbox is in
SQLite, a restarted stage resumes undelivered webhooks and unsubmitted runs.

Tracker state (the last windows, open episodes, clear counts, the last window seen) is in the
ledger (:meth:`~observer.triggers.ledger.Ledger.save_states`): written in the decision's transaction,
and at the end of every batch; a restarted stage restores it and continues where it was.
Input offsets are committed only after the batch's outputs are acknowledged, so a restarted
stage is fed results it has counted already: the trackers ignore them (at or below the last
window seen), and when such a result completed a decision, that decision's event is emitted
again as recorded (its first announcement may not have been acknowledged before the crash);
consumers deduplicate on ``episode_id``.

Approval (``approval: true``, ``approval_mode: ledger``): a fired decision is recorded
``held``, its deliveries planned but not due, and announced as a ``held`` event.
``observer triggers approve|reject`` or the admin API record the verdict in the ledger;
``tick`` then announces it (``approved``/``rejected``) and, once approved, delivers. The
announcement is marked done at the next ``tick``: the :class:`~observer.core.bus.StageRunner`
calls ``tick`` again only after the previous outputs were acknowledged (a failed produce ends
the runner), so an approval's event is published at least once.

Runs: an Argo or KFP delivery recorded ``delivered`` starts a row in the ledger's ``runs``
(in the same transaction), and every ``tick`` then polls the runs whose poll is due
(:class:`~observer.triggers.tracking.tracker.RunTracker`, ``trigger.runs``), emitting
``run_started``, ``run_succeeded``, ``run_failed``, ``run_lost`` and ``run_timed_out``
events, and planning the policy's ``run_webhooks`` (action ``run_webhook``) when a run ends.

Promotion (:mod:`observer.triggers.promotion`): the pipeline's signed callback
(``POST /api/v1/episodes/{id}/promotion``) is recorded in the ledger; ``tick`` sends a
promoted episode's re-baselining command to ``observer.drift-commands`` (or re-arms the policy
after a rollback) and announces each step; ``process`` reads the engine's answer on
``observer.references`` and the results scored against the new version, and clears the
episode at the first that does not qualify.

Exports: when a decision has data to export (``kafka`` given, ``trigger.export.uri`` set,
the result names its records), every action's payload carries the Parquet locations
(webhook ``data.export``, Argo/KFP ``current-data``/``reference-data``), and each action
exports (once per episode and process; the files are a pure function of the episode) before
it sends.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any, Literal, get_args

from prometheus_client import Counter

from observer.core import validate
from observer.core.bus import Message, Output
from observer.core.config import KafkaConfig
from observer.triggers.action import Action, build_actions, policy_actions, unconfigured
from observer.triggers.config import PolicyConfig, TriggerConfig
from observer.core.dead_letter import dead_letter
from observer.core.records import DriftResult, RecordError, TriggerEvent, decode, encode
from observer.core.topics import Topics
from observer.triggers.ledger import (
    DEAD_LETTER,
    DELIVERED,
    DISABLED,
    FAILED,
    Delivery,
    Ledger,
    NewDelivery,
    NewRun,
)
from observer.triggers.episode_life import EpisodeLife
from observer.triggers.policy import Decision, DecisionKind, PolicyTracker
from observer.triggers.promotion import PromotionLoop
from observer.triggers.redact import public_target
from observer.triggers.retry import AttemptResult
from observer.triggers.tracking.store import RunEvent
from observer.triggers.tracking.tracker import RUN_WEBHOOK, RunTracker, Trackable

log = logging.getLogger(__name__)

TRIGGERS = Counter(
    "observer_triggers_total", "Trigger decisions recorded, by policy and kind.", ["policy", "kind"]
)
WEBHOOK_DELIVERIES = Counter(
    "observer_webhook_deliveries_total",
    "Webhook delivery outcomes: delivered, failed (retry scheduled), dead_letter, disabled.",
    ["outcome"],
)
RUN_SUBMISSIONS = Counter(
    "observer_run_submissions_total",
    "Run action outcomes (argo, kfp): delivered (submitted), failed (retry), dead_letter.",
    ["action", "outcome"],
)
TRIGGER_ERRORS = Counter(
    "observer_trigger_errors_total",
    "Messages on the drift topic that were not valid drift results (dead-lettered).",
)

WEBHOOK = "webhook"
EventKind = Literal[
    "fired", "suppressed", "held", "approved", "rejected", "delivery",
    "run_started", "run_succeeded", "run_failed", "run_lost", "run_timed_out",
    "promoted", "rolled_back", "rebaselined", "rebaseline_refused", "cleared", "reopened",
]


class TriggerStage:
    """The :class:`~observer.core.bus.Processor` of the trigger stage.

    ``clock`` (Unix seconds) dates decisions and schedules retries; ``rng`` draws the retries'
    jitter. ``kafka`` lets actions read the drifted window back for the Parquet export
    (without it they get no data locations). :attr:`ledger` is open for readers (the admin API
    lists it); :attr:`actions` holds the actions some policy uses, by name.
    """

    name = "trigger"

    def __init__(
        self,
        cfg: TriggerConfig,
        topics: Topics,
        clock: Callable[[], float] = time.time,
        *,
        rng: Callable[[], float] = random.random,
        max_deliveries_per_tick: int = 4,
        tick_budget_s: float = 5.0,
        kafka: KafkaConfig | None = None,
    ) -> None:
        names = [p.name for p in cfg.policies]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            # Episode ids derive from the policy name: two policies with one name would merge.
            raise ValueError(f"policy names must be unique; repeated: {duplicates}")
        self.cfg = cfg
        self.topics = topics
        self.clock = clock
        self.max_deliveries_per_tick = max_deliveries_per_tick
        self.tick_budget_s = tick_budget_s
        self.rng = rng
        self.ledger = Ledger(cfg.ledger_path)
        self.trackers: list[PolicyTracker] = []
        for policy in cfg.policies:
            tracker = PolicyTracker(policy)
            for saved in self.ledger.load_states(policy.name):
                tracker.restore(saved)
            # Decisions recorded by a ledger older than its states still count for cooldowns.
            for (segment_key, record_type), at in self.ledger.last_fired(policy.name).items():
                tracker.restore_fired(segment_key, record_type, at)
            self.trackers.append(tracker)
            # Series exist from the start at 0, so increase() sees the first decision.
            for kind in get_args(DecisionKind):
                TRIGGERS.labels(policy.name, kind)
        for outcome in (DELIVERED, FAILED, DEAD_LETTER, DISABLED):
            WEBHOOK_DELIVERIES.labels(outcome)
        self.kafka = kafka
        exporter = self._export if kafka is not None and cfg.export.uri else None
        if exporter is not None:
            # Now rather than at the first drifted episode: without the `parquet` extra this
            # fails naming it (observer.core.extras).
            import observer.triggers.export  # noqa: F401
        self._exported: dict[str, dict[str, int]] = {}
        # Episode ids of the approval events handed out by the last tick (see the docstring).
        self._announcing: list[str] = []
        try:
            # Now rather than at the first decision: a webhook secret that cannot sign, an
            # argo action without a server or a missing extra fail at start.
            self.actions: dict[str, Action] = build_actions(cfg, exporter)
            hooks = {(p.name, w.url): w for p in cfg.policies for w in p.run_webhooks}
            if hooks:
                from observer.triggers.webhook import WebhookAction

                # Completion webhooks: outbox rows of their own action, signed and retried
                # like every webhook (their secrets are checked now, as the policy's are).
                self.actions[RUN_WEBHOOK] = WebhookAction(hooks)  # type: ignore[assignment]
        except BaseException:
            self.ledger.close()
            raise
        # Submitted runs followed to their end; resumes from the ledger after a restart.
        self.runs = RunTracker(cfg, self.ledger, self.actions, clock)
        # After the run: promotion callbacks, re-baselining, clearing (triggers.promotion).
        self.life = EpisodeLife(self.ledger)
        self.promotions = PromotionLoop(cfg.promotion, self.life, topics, self.trackers)

    def _export(self, spec: dict[str, Any]) -> dict[str, int]:
        """Export the episode's windows (an export spec), once per episode and process."""
        from observer.triggers.export import export_episode

        assert self.kafka is not None
        done = self._exported.get(spec["episode_id"])
        if done is None:
            export = self.cfg.export
            done = self._exported[spec["episode_id"]] = export_episode(
                self.kafka,
                spec,
                max_records=export.max_records,
                storage_options=export.storage_options,
            )
        return done

    def close(self) -> None:
        for action in self.actions.values():
            action.close()
        self.ledger.close()

    # -- decisions ----------------------------------------------------------------------

    def process(self, messages: list[Message]) -> list[Output]:
        outputs: list[Output] = []
        for message in messages:
            if message.topic == self.topics.references:  # the engine's answer to a promotion
                self.promotions.reference_state(message, self.clock())
                continue
            record, problem = self._drift_result(message)
            if record is None:
                # Not a drift result a policy can weigh: quarantined, the batch goes on.
                TRIGGER_ERRORS.inc()
                outputs.append(
                    dead_letter(self.topics.dead_letter, self.name, message, *problem)
                )
                continue
            now = self.clock()
            for tracker in self.trackers:
                if tracker.watches(record) and tracker.is_replay(record):
                    outputs += self._announce_again(tracker.policy, record)
                    continue
                decision = tracker.update(record, now)
                if decision is not None:
                    outputs += self._decide(tracker, decision, record)
            self.promotions.result(record, now)
        # Once per batch, before the runner produces and commits: a crash after this point
        # replays results the stored state has counted already, and they are ignored.
        now = self.clock()
        for tracker in self.trackers:
            self.ledger.save_states(tracker.policy.name, tracker.take_dirty(), now)
        return outputs

    @staticmethod
    def _drift_result(message: Message) -> tuple[DriftResult | None, tuple[str, str]]:
        """The message's drift result, or None and the dead-letter ``(reason, detail)``: not
        a record (``decode_error``), another record type (``schema_error``), a field that
        breaks its type, or a NaN/infinite number (``invalid_value``: a NaN share compares
        false with every threshold, silently)."""
        try:
            record = decode(message.value)
        except RecordError as e:
            return None, (e.reason, str(e))
        if not isinstance(record, DriftResult):
            return None, ("schema_error", f"a {record.schema_id} record, not a drift result")
        where = validate.non_finite(record.model_dump())
        if where is not None:
            return None, ("invalid_value", f"{where} is not a finite number")
        return record, ("", "")

    def _announce_again(self, policy: PolicyConfig, result: DriftResult) -> list[Output]:
        """A replayed result that completed a decision: its event again, as recorded."""
        stored = self.ledger.decision_at(
            policy.name, result.segment_key, result.record_type, result.window_index
        )
        return [self._decision_output(stored)] if stored else []

    def _holds(self, policy: PolicyConfig, decision: Decision) -> bool:
        return decision.kind == "fired" and policy.approval and policy.approval_mode == "ledger"

    def _decide(
        self, tracker: PolicyTracker, decision: Decision, result: DriftResult
    ) -> list[Output]:
        policy = tracker.policy
        deliveries: list[NewDelivery] = []
        if decision.kind == "fired":
            export = self._export_spec(decision, result)
            for name in policy_actions(policy):
                deliveries += self.actions[name].plan(policy, decision, result, export)
        hold = self._holds(policy, decision)
        # The tracker's state goes in the same transaction: after a crash either both the
        # decision and the state that led to it are stored, or neither is.
        recorded = self.ledger.record_decision(
            decision, deliveries, policy_states=tracker.take_dirty(), hold=hold
        )
        if not recorded:
            stored = self.ledger.get_decision(decision.episode_id)
            log.info("episode %s is already in the ledger: not decided again", decision.episode_id)
            return [self._decision_output(stored)] if stored else []
        TRIGGERS.labels(decision.policy, decision.kind).inc()
        log.info(
            "policy %s %s for %s/%s: %s%s",
            decision.policy,
            decision.kind,
            decision.segment_key,
            decision.record_type,
            decision.reason,
            "; held for approval" if hold else "",
        )
        stored = self.ledger.get_decision(decision.episode_id)
        assert stored is not None
        outputs = [self._decision_output(stored)]
        for d in stored["deliveries"]:
            if d["status"] == DISABLED:  # its target answered 410 before: recorded, not sent
                WEBHOOK_DELIVERIES.labels(DISABLED).inc()
                outputs.append(
                    self._event(
                        stored,
                        "delivery",
                        d["last_error"] or "target disabled",
                        action=d["action"],
                        target=d["target"],
                        status=DISABLED,
                        attempts=d["attempts"],
                        at=decision.decided_at,
                    )
                )
        return outputs

    def _export_spec(self, decision: Decision, result: DriftResult) -> dict[str, Any] | None:
        if self.kafka is None or not self.cfg.export.uri:
            return None  # nothing to read the windows back from, or nowhere to put them
        from observer.triggers.export import export_spec

        return export_spec(self.cfg.export.uri, decision.policy, decision.episode_id, result)

    def _decision_output(self, stored: dict[str, Any]) -> Output:
        if stored["approval"] is not None:
            # Announced as it was decided: held (its approval is an event of its own).
            reason = f"{stored['reason']}; held for approval"
            return self._event(stored, "held", reason, status="held", at=stored["decided_at"])
        return self._event(stored, stored["kind"], stored["reason"], at=stored["decided_at"])

    def _approval_output(self, stored: dict[str, Any]) -> Output:
        verdict = stored["approval"]
        reason = f"{verdict} by {stored['approval_by']}"
        if stored["approval_note"]:
            reason += f": {stored['approval_note']}"
        return self._event(stored, verdict, reason, status=verdict, at=stored["approval_at"])

    # -- deliveries ---------------------------------------------------------------------

    def tick(self) -> list[Output]:
        # Being called again means the runner produced the last tick's outputs: the approval
        # events handed out then are published.
        self.ledger.mark_announced(self._announcing)
        self._announcing = []
        outputs: list[Output] = []
        for stored in self.ledger.unannounced_approvals():
            outputs.append(self._approval_output(stored))
            self._announcing.append(stored["episode_id"])
            log.info(
                "episode %s %s by %s", stored["episode_id"], stored["approval"], stored["approval_by"]
            )
        started = time.monotonic()
        due = self.ledger.due_deliveries(self.clock(), limit=self.max_deliveries_per_tick)
        for i, delivery in enumerate(due):
            if i and time.monotonic() - started > self.tick_budget_s:
                break  # the rest are still due next tick; consumption goes on meanwhile
            outputs += self._deliver(delivery)

        def budget_left() -> bool:
            return time.monotonic() - started <= self.tick_budget_s

        # Then the runs in progress: polls share the tick's budget.
        outputs += [self._run_output(event) for event in self.runs.tick(budget_left)]
        return outputs + self.promotions.tick(self.clock())

    def _run_output(self, event: RunEvent) -> Output:
        """A ``run_*`` event: its target is where the run's status is read."""
        run = event.run
        action = self.actions.get(run.action)
        url = action.run_url(run) if isinstance(action, Trackable) else run.target
        decision = {
            "policy": run.policy,
            "segment_key": run.segment_key,
            "record_type": run.record_type,
            "episode_id": run.episode_id,
            "window_index": run.window_index,
        }
        return self._event(
            decision,
            event.event,  # type: ignore[arg-type]  # run_* names, checked by TriggerEvent
            event.reason,
            action=run.action,
            target=public_target(url),
            status=event.phase,
            at=event.at,
        )

    def _deliver(self, delivery: Delivery) -> list[Output]:
        now = self.clock()
        action = self.actions.get(delivery.action)
        why = (
            unconfigured(delivery.action, delivery.target)
            if action is None
            else action.cannot_attempt(delivery)
        )
        if why is not None:
            # Its target left the configuration since the decision: it can never be made.
            result = AttemptResult(DEAD_LETTER, delivery.attempts, None, None, why, why)
        else:
            assert action is not None
            outcome = action.attempt(delivery)
            result = action.retry_policy(delivery).settle(outcome, delivery.attempts, now, self.rng)
        done = self.clock()
        run = None
        if result.status == DELIVERED and isinstance(action, Trackable):
            # Submitted (or found submitted): followed from now on, recorded with the outcome.
            name = json.loads(delivery.payload)["workflow_name"]
            run = NewRun(name, submitted_at=done, next_poll_at=self.runs.next_poll(done))
        self.ledger.record_attempt(
            delivery.delivery_id,
            status=result.status,
            attempts=result.attempts,
            next_attempt_at=result.next_attempt_at,
            now=done,
            error=result.error,
            status_code=result.status_code,
            run=run,
        )
        self._count(delivery.action, result.status)
        # A dead letter stays in the ledger (``observer triggers list``) and is announced below.
        log.log(
            logging.WARNING if result.status == DEAD_LETTER else logging.INFO,
            "%s %s to %s: %s",
            delivery.action,
            delivery.delivery_id,
            public_target(delivery.target),
            result.detail,
        )
        outputs = [
            self._delivery_output(delivery, result.status, result.attempts, result.detail, done)
        ]
        if result.status == DISABLED:
            # Standard Webhooks: 410 disables the endpoint, not only this message.
            reason = f"HTTP 410 to delivery {delivery.delivery_id}"
            for other in self.ledger.disable_target(delivery.target, done, reason):
                WEBHOOK_DELIVERIES.labels(DISABLED).inc()
                outputs.append(
                    self._delivery_output(
                        other, DISABLED, other.attempts, f"target disabled: {reason}", done
                    )
                )
        return outputs

    @staticmethod
    def _count(action: str, outcome: str) -> None:
        if action in (WEBHOOK, RUN_WEBHOOK):
            WEBHOOK_DELIVERIES.labels(outcome).inc()
        else:
            RUN_SUBMISSIONS.labels(action, outcome).inc()

    def _delivery_output(
        self, delivery: Delivery, status: str, attempts: int, detail: str, at: float
    ) -> Output:
        decision = {
            "policy": delivery.policy,
            "segment_key": delivery.segment_key,
            "record_type": delivery.record_type,
            "episode_id": delivery.episode_id,
            "window_index": delivery.window_index,
        }
        return self._event(
            decision,
            "delivery",
            detail,
            action=delivery.action,
            target=public_target(delivery.target),
            status=status,
            attempts=attempts,
            at=at,
        )

    def _event(
        self,
        decision: dict[str, Any],
        event: EventKind,
        reason: str,
        *,
        at: float,
        action: str = "",
        target: str = "",
        status: str = "",
        attempts: int = 0,
    ) -> Output:
        record = TriggerEvent(
            policy=decision["policy"],
            segment_key=decision["segment_key"],
            record_type=decision["record_type"],
            episode_id=decision["episode_id"],
            event=event,
            reason=reason,
            action=action,
            target=target,
            status=status,
            attempts=attempts,
            window_index=decision["window_index"],
            at_unix_nano=int(at * 1e9),
        )
        return Output(self.topics.triggers, f"{record.policy}/{record.segment_key}", encode(record))
