"""Start a retraining run on Kubeflow Pipelines (``POST /apis/v2beta1/runs``).

Kubeflow Pipelines does not refuse a repeated run name, so idempotency is checked here: the
run's ``display_name`` is the episode's workflow name, and an attempt first lists runs with
that display name (``GET /apis/v2beta1/runs?filter=...``); one found means "already
submitted". Answers are classified like Argo's (:func:`observer.triggers.argo.argo_verdict`).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from typing import Any

import httpx

from observer.core.config import KfpConfig
from observer.triggers.argo import argo_verdict, run_parameters
from observer.triggers.ledger import DEAD_LETTER, DELIVERED, FAILED
from observer.triggers.webhook import AttemptResult, backoff_delay, parse_retry_after

log = logging.getLogger(__name__)

# Backoff of KFP attempts: the same shape as Argo's defaults.
BACKOFF_INITIAL_S, BACKOFF_MAX_S = 2.0, 600.0


def run_body(cfg: KfpConfig, run: dict[str, Any]) -> dict[str, Any]:
    """The ``v2beta1.Run`` to create for an episode.

    >>> cfg = KfpConfig(pipeline_id="p", pipeline_version_id="v")
    >>> run = {"workflow_name": "retrain-e1", "episode_id": "e1", "policy": "p",
    ...        "segment_key": "shop", "record_type": "llm", "model": "m"}
    >>> body = run_body(cfg, run)
    >>> body["display_name"], body["pipeline_version_reference"]
    ('retrain-e1', {'pipeline_id': 'p', 'pipeline_version_id': 'v'})
    >>> body["runtime_config"]["parameters"]["episode-id"]
    'e1'
    """
    body: dict[str, Any] = {
        "display_name": run["workflow_name"],
        "description": f"observer episode {run['episode_id']}: {run.get('reason', '')}"[:1000],
        "pipeline_version_reference": {
            "pipeline_id": cfg.pipeline_id,
            "pipeline_version_id": cfg.pipeline_version_id,
        },
        "runtime_config": {"parameters": run_parameters(run)},
    }
    if cfg.experiment_id:
        body["experiment_id"] = cfg.experiment_id
    return body


class KfpAction:
    """Creates runs on one Kubeflow Pipelines API server."""

    def __init__(
        self,
        cfg: KfpConfig,
        *,
        exporter: Callable[[dict[str, Any]], dict[str, int]] | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not cfg.host:
            raise ValueError("a policy lists the kfp action but trigger.kfp.host is empty")
        if not (cfg.pipeline_id and cfg.pipeline_version_id):
            raise ValueError("trigger.kfp needs pipeline_id and pipeline_version_id")
        self.cfg = cfg
        self.exporter = exporter
        self.rng = rng
        headers = {"authorization": f"Bearer {cfg.token.get_secret_value()}"} if cfg.token else {}
        self.client = httpx.Client(
            base_url=cfg.host.rstrip("/"),
            headers=headers,
            timeout=cfg.timeout_s,
            verify=cfg.verify_ssl,
            follow_redirects=False,
        )

    @property
    def target(self) -> str:
        return f"{self.cfg.host.rstrip('/')}/apis/v2beta1/runs"

    def close(self) -> None:
        self.client.close()

    def existing(self, display_name: str) -> list[dict[str, Any]]:
        """Runs already named ``display_name``."""
        predicate = {
            "predicates": [
                {"key": "display_name", "operation": "EQUALS", "string_value": display_name}
            ]
        }
        params = {"filter": json.dumps(predicate)}
        if self.cfg.experiment_id:
            params["experiment_id"] = self.cfg.experiment_id
        response = self.client.get("/apis/v2beta1/runs", params=params)
        response.raise_for_status()
        return [r for r in response.json().get("runs") or [] if r.get("display_name") == display_name]

    def attempt(self, run: dict[str, Any], attempts_before: int, now: float) -> AttemptResult:
        attempts = attempts_before + 1
        name = run["workflow_name"]
        step = "export"
        try:
            if self.exporter is not None and run.get("export"):
                self.exporter(run)
            step = "list"
            if self.existing(name):
                return self._done(attempts, None, f"kfp run {name} already exists")
            step = "create"
            response = self.client.post("/apis/v2beta1/runs", json=run_body(self.cfg, run))
        except httpx.HTTPStatusError as exc:
            return self._answer(exc.response, attempts, now, step, name)
        except Exception as exc:  # noqa: BLE001  (network, export: retried, bounded)
            return self._retry(attempts, now, None, f"{step}: {type(exc).__name__}: {exc}"[:300], None)
        return self._answer(response, attempts, now, step, name)

    def _answer(
        self, response: httpx.Response, attempts: int, now: float, step: str, name: str
    ) -> AttemptResult:
        code = response.status_code
        verdict = argo_verdict(code)
        if verdict == "submitted" and step == "create":
            return self._done(attempts, code, f"kfp run {name} created (HTTP {code})")
        if verdict == "rejected":
            error = f"{step}: HTTP {code}: {response.text[:300]}"
            return AttemptResult(DEAD_LETTER, attempts, None, code, error, f"{error}; not retried")
        retry_after = parse_retry_after(response.headers.get("retry-after"), now)
        return self._retry(attempts, now, code, f"{step}: HTTP {code}", retry_after)

    def _done(self, attempts: int, code: int | None, detail: str) -> AttemptResult:
        log.info("kfp: %s", detail)
        return AttemptResult(DELIVERED, attempts, None, code, None, detail)

    def _retry(
        self, attempts: int, now: float, code: int | None, error: str, retry_after: float | None
    ) -> AttemptResult:
        if attempts >= self.cfg.max_attempts:
            return AttemptResult(
                DEAD_LETTER, attempts, None, code, error, f"{error}; gave up after {attempts} attempts"
            )
        delay = backoff_delay(attempts, BACKOFF_INITIAL_S, BACKOFF_MAX_S, self.rng)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return AttemptResult(
            FAILED, attempts, now + delay, code, error, f"{error}; attempt {attempts + 1} in {delay:.3g}s"
        )
