"""The ``Action`` protocol: what a fired decision owes (a webhook, an Argo run, a KFP run).

An action is registered by name in :data:`ACTIONS`, the one table of them; the name is the key
a policy uses (``webhooks:`` for ``webhook``, ``actions: [argo, kfp]`` for the others) and the
``action`` column of the ledger's outbox rows. An action

* :meth:`~Action.plan`\\ s the outbox rows a decision owes, with everything a later attempt
  needs fixed in the payload (deterministic ids: the ledger's delivery id is the webhook-id,
  the Argo/KFP run name derives from the episode), written before anything is sent;
* says when a stored row can never be attempted with the current configuration
  (:meth:`~Action.cannot_attempt`: its target left the configuration);
* makes one attempt of a row (:meth:`~Action.attempt`) and classifies what happened as an
  :class:`Outcome` of the small shared vocabulary below;
* names the :class:`~observer.triggers.retry.RetryPolicy` of a row.

The stage owns the loop: due rows from the ledger, one attempt each, the outcome settled by
the shared retry policy (:meth:`~observer.triggers.retry.RetryPolicy.settle`) and recorded.

==============  ===============================================================
outcome kind    meaning
==============  ===============================================================
delivered       the receiver took it / the run was submitted
already_done    done before (Argo's 409, a run with the episode's name exists)
retry           transient: try again later (``retry_after_s``: the server's wish)
wait            not a failure: look again after ``retry_after_s`` (a busy model),
                the attempt does not count
permanent       retrying cannot help (a 400): dead-lettered now
disabled        the target asks to be disabled (a webhook's 410)
==============  ===============================================================

>>> sorted(ACTIONS)
['argo', 'armada', 'kfp', 'webhook']
>>> from observer.triggers.config import PolicyConfig, WebhookConfig
>>> hook = WebhookConfig(url="http://h/x", secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
>>> policy_actions(PolicyConfig(webhooks=[hook], actions=["kfp"]))
['webhook', 'kfp']
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from observer.triggers.redact import public_target

if TYPE_CHECKING:
    from observer.triggers.config import PolicyConfig, TriggerConfig
    from observer.core.records import DriftResult
    from observer.triggers.ledger import Delivery, NewDelivery
    from observer.triggers.policy import Decision
    from observer.triggers.retry import RetryPolicy

OutcomeKind = Literal["delivered", "already_done", "retry", "wait", "permanent", "disabled"]
DELIVERED, ALREADY_DONE, RETRY, WAIT, PERMANENT, DISABLED = (
    "delivered", "already_done", "retry", "wait", "permanent", "disabled"
)

StatusTable = tuple[tuple[int, int, OutcomeKind], ...]
"""(lowest code, highest code, outcome) rows of an HTTP server's answers; first match wins."""


def outcome_of(table: StatusTable, status_code: int) -> OutcomeKind:
    """The outcome ``table`` gives ``status_code``: its first row holding it, else ``retry``.

    >>> outcome_of(((200, 299, "delivered"), (400, 499, "permanent")), 404)
    'permanent'
    >>> outcome_of(((200, 299, "delivered"),), 302)
    'retry'
    """
    for low, high, kind in table:
        if low <= status_code <= high:
            return kind
    return "retry"

Exporter = Callable[[dict[str, Any]], dict[str, int]]
"""Writes an episode's windows as Parquet (an export spec in, record counts out); idempotent."""

# name -> "module:class" of its implementation, imported only when a policy uses it (Argo's
# client, Hera, is not needed by an installation that only sends webhooks).
ACTIONS: dict[str, str] = {
    "webhook": "observer.triggers.webhook:WebhookAction",
    "argo": "observer.triggers.argo:ArgoAction",
    "kfp": "observer.triggers.kfp:KfpAction",
    "armada": "observer.triggers.armada:ArmadaAction",
}


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to, before the retry policy weighs it."""

    kind: OutcomeKind
    message: str
    """One human line: the answer (``HTTP 503``, ``workflow retrain-x submitted``)."""
    status_code: int | None = None
    retry_after_s: float | None = None
    """``retry``: the server's ``Retry-After``; ``wait``: when to look again."""


class Action(Protocol):
    """One kind of action (see the module docstring)."""

    name: str

    def plan(
        self,
        policy: PolicyConfig,
        decision: Decision,
        result: DriftResult,
        export: dict[str, Any] | None,
    ) -> list[NewDelivery]:
        """The outbox rows a fired decision of ``policy`` owes to this action."""
        ...

    def cannot_attempt(self, delivery: Delivery) -> str | None:
        """Why the row can never be attempted any more (dead-lettered unattempted), or None."""
        ...

    def attempt(self, delivery: Delivery) -> Outcome:
        """One attempt; never raises for server, network or export failures."""
        ...

    def retry_policy(self, delivery: Delivery) -> RetryPolicy:
        """How the row's failed attempts are retried."""
        ...

    def close(self) -> None: ...


ActionFactory = Callable[["TriggerConfig", "Exporter | None"], Action]


def factory(name: str) -> ActionFactory:
    """The ``from_config`` of the action registered as ``name``.

    >>> factory("ftp")
    Traceback (most recent call last):
    ...
    ValueError: unknown action 'ftp'; known: argo, armada, kfp, webhook
    """
    if name not in ACTIONS:
        raise ValueError(f"unknown action {name!r}; known: {', '.join(sorted(ACTIONS))}")
    module, _, cls = ACTIONS[name].partition(":")
    return getattr(importlib.import_module(module), cls).from_config  # type: ignore[no-any-return]


def policy_actions(policy: PolicyConfig) -> list[str]:
    """The action names a fired decision of ``policy`` owes, in outbox order."""
    return (["webhook"] if policy.webhooks else []) + list(policy.actions)


def build_actions(cfg: TriggerConfig, exporter: Exporter | None) -> dict[str, Action]:
    """One instance of every action some policy uses, by name."""
    names = dict.fromkeys(n for p in cfg.policies for n in policy_actions(p))
    return {name: factory(name)(cfg, exporter) for name in names}


def unconfigured(action: str, target: str) -> str:
    """The reason a row whose target left the configuration is dead-lettered."""
    return f"no {action} target {public_target(target)} in the configuration any more"


def export_first(exporter: Exporter | None, spec: dict[str, Any] | None) -> Outcome | None:
    """Write the episode's Parquet files before sending; a failure is an outcome to retry.

    >>> def broken(spec): raise OSError("bucket unreachable")
    >>> export_first(broken, {"episode_id": "e"}).message
    'export: OSError: bucket unreachable'
    >>> export_first(None, {"episode_id": "e"}) is None
    True
    """
    if exporter is None or not spec:
        return None
    try:
        exporter(spec)
    # Kafka, storage, credentials: transient as far as we can tell; retried, bounded.
    except Exception as exc:  # noqa: BLE001
        return Outcome(RETRY, f"export: {type(exc).__name__}: {exc}"[:300])
    return None
