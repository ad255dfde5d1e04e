"""Promotion closes the episode: the pipeline's signed callback, re-baselining, clearing.

``POST /api/v1/episodes/{episode_id}/promotion``
(:func:`observer.triggers.promotion_callback.accept_callback`) takes the
retraining pipeline's word that the episode's run was promoted or rolled back: a JSON body
``{run, model_version, outcome: promoted | rolled_back, at?}`` signed as observer signs its
webhooks (Standard Webhooks, :mod:`observer.triggers.signing`, with
``trigger.promotion.secret``): 401 for a missing or bad signature or a timestamp outside
``tolerance_s``, 409 for a replayed ``webhook-id`` or an impossible transition (a run not
started yet, a promotion of a failed run, a second outcome for the episode), 404 for an
unknown episode, 422 for a bad body (naming the field). A run still running may report: the
pipeline's promote step (:mod:`observer.triggers.pipeline.notify`) runs inside the run.

The stage then works the promotion through (:class:`PromotionLoop`, on its thread):

* ``promoted``: a :class:`~observer.core.records.ReferenceCommand` (``rebaseline``, source
  ``promotion``, with the run, model version and episode as provenance) goes to
  ``observer.drift-commands`` for the episode's segment and record type; the drift engine
  collects the next ``records`` records (optionally only the promoted model's,
  ``model_field``) as a new reference version, unless the reference is pinned (refused, and
  the refusal is recorded: ``rebaseline_refused``).
* ``rebaselined`` when the engine reports the version (``observer.references``, or the first
  result scored against a later version), ``cleared`` when the first window scored against it
  does not qualify for the policy: the episode is resolved by the run.
* ``rolled_back``: no command (the old reference stays); the policy is re-armed for the key
  (``reopened``), so drift that goes on fires again (cooldown permitting).

Every step is a :class:`~observer.core.records.TriggerEvent` on ``observer.triggers``,
announced at least once (marked in the ledger at the next tick, as approvals are).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from observer.triggers.config import PromotionConfig
from observer.triggers.episode_life import AWAITING, EpisodeLife
from observer.triggers.policy import PolicyTracker, TrackerState
from observer.triggers.signing import check_secret
from prometheus_client import Counter

from observer.core.bus import Message, Output
from observer.core.records import (
    DriftResult,
    RecordError,
    ReferenceCommand,
    ReferenceState,
    TriggerEvent,
    decode,
    encode,
)
from observer.core.topics import Topics

EPISODE_STEPS = Counter(
    "observer_episode_steps_total",
    "Steps of episodes after their run: promoted, rolled_back, rebaselined, "
    "rebaseline_refused, cleared, reopened (dashboard annotations).",
    ["policy", "step"],
)
EPISODES_CLOSED = Counter(
    "observer_episodes_closed_total",
    "Episodes closed after a promotion (how: resolved, the first window against the new "
    "reference did not drift).",
    ["policy", "how"],
)

def close_episode(tracker: PolicyTracker, segment_key: str, record_type: str,
                  episode_id: str) -> TrackerState | None:
    """End the tracker's episode of the key (when it is this one, or none is open): the policy
    re-arms. The new state (to store), or None when another episode is open."""
    state = tracker.state(segment_key, record_type)
    if state is None or (state.episode_open and state.episode_id != episode_id):
        return None
    closed = dataclasses.replace(state, episode_open=False, episode_id=None, episode_start=None,
                                 clear_count=0, recent=())
    tracker.restore(closed)
    return closed


class PromotionLoop:
    """The stage's side of promotions (see the module docstring)."""

    def __init__(self, cfg: PromotionConfig, life: EpisodeLife, topics: Topics,
                 trackers: Sequence[PolicyTracker]) -> None:
        if cfg.secret is not None:
            check_secret(cfg.secret.get_secret_value())  # fail at start, not at the callback
        self.cfg = cfg
        self.life = life
        self.topics = topics
        self.trackers = {t.policy.name: t for t in trackers}
        self._versions: dict[tuple[str, str], int] = {}  # the last reference version scored
        self._announcing: list[int] = []
        # Commands recorded before a restart may not have been produced: sent again once
        # (the engine recognises a command id it applied and ignores it).
        self._resend = True

    # -- inputs ------------------------------------------------------------------------------

    def result(self, result: DriftResult, now: float) -> None:
        """A drift result: the version its key is scored against; re-baselined or cleared."""
        key = (result.segment_key, result.record_type)
        if result.reference_version is not None:
            self._versions[key] = result.reference_version
        for p in self.life.in_state(*AWAITING):
            if (p["segment_key"], p["record_type"]) != key:
                continue
            version = result.reference_version
            if p["state"] == "commanded" and version is not None and (
                    p["old_version"] is not None and version > p["old_version"]):
                self._rebaselined(p, version, now)
                p = {**p, "state": "rebaselined", "new_version": version}
            if p["state"] == "rebaselined" and version != p["new_version"]:
                continue  # scored against the old version still (in flight)
            if p["state"] in ("rebaselined", "refused"):
                self._maybe_cleared(p, result, now)

    def reference_state(self, message: Message, now: float) -> None:
        """A segment's references (``observer.references``): the engine's answer to a
        promotion's command."""
        try:
            state = decode(message.value)
        except RecordError:
            return  # not ours to judge: the drift engine's read model
        if not isinstance(state, ReferenceState):
            return
        for p in self.life.in_state("commanded"):
            if (p["segment_key"], p["record_type"]) != (state.segment_key, state.record_type):
                continue
            current = next((v for v in state.versions if v.version == state.current), None)
            last = state.last_command or {}
            if current is not None and current.detail.get("command_id") == p["command_id"]:
                self._rebaselined(p, current.version, now)
            elif last.get("command_id") == p["command_id"] and last.get("outcome") in (
                    "refused", "failed"):
                reason = f"reference not re-baselined ({last['outcome']}): {last.get('message', '')}"
                self.life.advance(p["episode_id"], "refused", now=now,
                                  steps=[("rebaseline_refused", reason)])
                EPISODE_STEPS.labels(p["policy"], "rebaseline_refused").inc()

    # -- steps -------------------------------------------------------------------------------

    def _rebaselined(self, p: dict[str, Any], version: int, now: float) -> None:
        reason = (f"reference v{version} of {p['record_type']} {p['segment_key']} from model "
                  f"{p['model_version']} (run {p['run']})")
        self.life.advance(p["episode_id"], "rebaselined", now=now, new_version=version,
                          steps=[("rebaselined", reason)])
        EPISODE_STEPS.labels(p["policy"], "rebaselined").inc()

    def _maybe_cleared(self, p: dict[str, Any], result: DriftResult, now: float) -> None:
        tracker = self.trackers.get(p["policy"])
        if tracker is None or tracker.qualifies(result):
            return  # drifts still: the next window may clear it
        against = f"reference v{result.reference_version}" if result.reference_version else "its reference"
        reason = (f"resolved by run {p['run']}: window {result.window_index} scored against "
                  f"{against} did not drift (drift_share {result.drift_share:.4g})")
        self.life.advance(p["episode_id"], "cleared", now=now, steps=[("cleared", reason)])
        EPISODE_STEPS.labels(p["policy"], "cleared").inc()
        EPISODES_CLOSED.labels(p["policy"], "resolved").inc()
        self._close(tracker, p, now)

    def _close(self, tracker: PolicyTracker, p: dict[str, Any], now: float) -> None:
        closed = close_episode(tracker, p["segment_key"], p["record_type"], p["episode_id"])
        if closed is not None:
            self.life.ledger.save_states(p["policy"], [closed], now)

    # -- tick --------------------------------------------------------------------------------

    def tick(self, now: float) -> list[Output]:
        """Commands for new promotions, re-arming after rollbacks, and the steps' events."""
        self.life.mark_announced(self._announcing)  # the last tick's outputs were produced
        self._announcing = []
        outputs = []
        if self._resend:
            self._resend = False
            outputs += [self._command(p, now, again=True) for p in self.life.in_state("commanded")]
        for p in self.life.in_state("promoted"):
            outputs.append(self._command(p, now))
        for p in self.life.in_state("rolled_back"):
            version = self._versions.get((p["segment_key"], p["record_type"]))
            kept = f"reference v{version}" if version else "the reference"
            reason = (f"rolled back: {kept} kept; policy {p['policy']} re-armed for "
                      f"{p['record_type']} {p['segment_key']}")
            tracker = self.trackers.get(p["policy"])
            if tracker is not None:
                self._close(tracker, p, now)
            self.life.advance(p["episode_id"], "reopened", now=now, steps=[("reopened", reason)])
            EPISODE_STEPS.labels(p["policy"], "reopened").inc()
        for step in self.life.unannounced():
            outputs.append(self._event(step))
            self._announcing.append(step["id"])
        return outputs

    def _command(self, p: dict[str, Any], now: float, again: bool = False) -> Output:
        key = (p["segment_key"], p["record_type"])
        command = ReferenceCommand(
            command_id=f"promotion-{p['episode_id']}"[:64], command="rebaseline",
            segment_key=p["segment_key"], record_type=p["record_type"], source="promotion",
            records=self.cfg.records, by=f"promotion of run {p['run']}"[:256],
            episode_id=p["episode_id"], run=p["run"], model_version=p["model_version"],
            model_field=self.cfg.model_field, at_unix_nano=int(now * 1e9),
        )
        if not again:  # recorded before it is produced; a restart sends it again (above)
            self.life.advance(p["episode_id"], "commanded", now=now,
                              command_id=command.command_id, old_version=self._versions.get(key))
        return Output(self.topics.drift_commands, f"{p['record_type']}/{p['segment_key']}",
                      encode(command))

    def _event(self, step: dict[str, Any]) -> Output:
        record = TriggerEvent(
            policy=step["policy"], segment_key=step["segment_key"],
            record_type=step["record_type"], episode_id=step["episode_id"],
            event=step["step"], reason=step["reason"], status=step["step"],
            window_index=step["window_index"], at_unix_nano=int(step["at"] * 1e9),
        )
        return Output(self.topics.triggers, f"{record.policy}/{record.segment_key}", encode(record))
