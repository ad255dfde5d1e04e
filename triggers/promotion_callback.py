"""The promotion callback: verify, parse and record what the retraining pipeline reports.

``POST /api/v1/episodes/{episode_id}/promotion`` (mounted by
:mod:`observer.triggers.admin_routes`) calls :func:`accept_callback`; the pipeline's step
(:mod:`observer.triggers.pipeline.notify`) builds its body with :func:`promotion_body`. What
happens next is :class:`observer.triggers.promotion.PromotionLoop`'s.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from observer.triggers.config import PromotionConfig
from observer.triggers.episode_life import EpisodeLife, PromotionConflict
from observer.triggers.promotion import EPISODE_STEPS
from observer.triggers.signing import SignatureError, verify
from pydantic import BaseModel, ConfigDict, Field, ValidationError

_TEXT = r"^[^\x00-\x1f\x7f]+$"  # no control characters: these end up in logs and events


class PromotionRequest(BaseModel):
    """The body of a promotion callback."""

    model_config = ConfigDict(extra="forbid")

    run: str = Field(min_length=1, max_length=253, pattern=_TEXT,
                     description="The run (Argo workflow name) whose model it is.")
    model_version: str = Field(min_length=1, max_length=256, pattern=_TEXT,
                               description="The model version now serving (or rolled back).")
    outcome: Literal["promoted", "rolled_back"]
    at: datetime | None = Field(None, description="When it happened (default: on receipt).")


class CallbackRefused(Exception):
    """A callback answered with ``status`` (the message says why)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _field_errors(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def accept_callback(
    life: EpisodeLife, cfg: PromotionConfig, episode_id: str, headers: Mapping[str, str],
    body: bytes, now: float, policy_of: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Verify, parse and record one callback; the promotion row, or :class:`CallbackRefused`.

    >>> cfg = PromotionConfig()
    >>> try:
    ...     accept_callback(None, cfg, "e1", {}, b"{}", 0.0)  # type: ignore[arg-type]
    ... except CallbackRefused as e:
    ...     print(e.status, e)
    503 trigger.promotion.secret is not set: promotion callbacks are refused
    """
    from observer.triggers.ledger import UnknownEpisode

    if cfg.secret is None:
        raise CallbackRefused(503, "trigger.promotion.secret is not set: promotion callbacks "
                                   "are refused")
    try:  # before the body is even parsed: an unsigned request learns nothing
        verify(cfg.secret.get_secret_value(), headers, body, cfg.tolerance_s, now)
    except SignatureError as e:
        raise CallbackRefused(401, f"promotion callback signature: {e}") from None
    try:
        request = PromotionRequest.model_validate_json(body)
    except ValidationError as e:
        raise CallbackRefused(422, f"bad promotion body: {_field_errors(e)}") from None
    at = request.at.timestamp() if request.at is not None else now
    callback_id = {k.lower(): v for k, v in headers.items()}["webhook-id"]
    try:
        row = life.record_promotion(episode_id, request.run, request.model_version,
                                    request.outcome, at=at, callback_id=callback_id, now=now)
    except UnknownEpisode as e:
        raise CallbackRefused(404, str(e)) from None
    except PromotionConflict as e:
        raise CallbackRefused(409, str(e)) from None
    decision = life.ledger.get_decision(episode_id)
    if decision is not None:
        EPISODE_STEPS.labels(decision["policy"], request.outcome).inc()
    return row


def promotion_body(run: str, model_version: str, outcome: str = "promoted",
                   at: str | None = None) -> bytes:
    """A callback body as the pipeline sends it (compact JSON).

    >>> promotion_body("retrain-e1", "v2")
    b'{"run":"retrain-e1","model_version":"v2","outcome":"promoted"}'
    """
    body: dict[str, Any] = {"run": run, "model_version": model_version, "outcome": outcome}
    if at is not None:
        body["at"] = at
    return json.dumps(body, separators=(",", ":")).encode()
