"""The demo's last act: the retraining runs succeed, the pipeline reports the promotion, and the
promoted model's traffic closes the episodes.

The stand-in Argo server (:mod:`observer.demo.argo_stub`) completes every submitted run as
Argo's controller would; once the trigger stage has seen the run succeed, the demo sends the
pipeline's signed promotion callback to the admin API (``POST
/api/v1/episodes/{id}/promotion``, :mod:`observer.triggers.promotion`). The drift engine then
re-baselines each episode's segment from the promoted model's traffic and the episode clears
at the first window scored against the new reference that does not drift.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from observer.demo.argo_stub import ArgoStub
from observer.triggers.promotion_callback import promotion_body
from observer.triggers.signing import signed_headers

Say = Callable[[str], None]


def succeeded_runs(stage: Any, stub: ArgoStub, timeout_s: float) -> list[Any]:
    """Complete every run the fired episodes submitted upstream; the runs once the stage saw
    them succeed."""
    completed: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for name in set(stub.names()) - completed:
            stub.complete(name)
            completed.add(name)
        fired = len(stage.ledger.list_decisions(kind="fired"))
        runs = stage.runs.store.runs()
        if len(runs) >= fired > 0 and all(r.outcome == "succeeded" for r in runs):
            return runs
        time.sleep(0.2)
    return [r for r in stage.runs.store.runs() if r.outcome == "succeeded"]


def promote(admin_url: str, secret: str, runs: list[Any], model_version: str,
            say: Say) -> list[str]:
    """Send the signed promotion callback of each run, as the pipeline's promote step would;
    the episodes whose callback was accepted."""
    accepted = []
    with httpx.Client(base_url=admin_url, timeout=10) as client:
        for run in runs:
            body = promotion_body(run.name, model_version)
            headers = signed_headers(secret, f"msg_{uuid.uuid4().hex}", int(time.time()), body)
            answer = client.post(f"/api/v1/episodes/{run.episode_id}/promotion", content=body,
                                 headers={**headers, "content-type": "application/json"})
            say(f"  promotion callback for {run.name}: HTTP {answer.status_code}")
            if answer.status_code == 200:
                accepted.append(run.episode_id)
    return accepted


def rebaselining(admin_url: str, stage: Any, episodes: list[str]) -> bool:
    """Whether the drift engine has taken every promoted segment's re-baseline (it is
    collecting the new version, or has it). The demo waits for this before the promoted
    model's traffic: a command that arrives after some of that traffic was scored starts the
    new version later, and the last window against it may then never fill."""
    wanted = {(life["record_type"], life["segment_key"])
              for life in (stage.life.life(e) for e in episodes)}
    states = httpx.get(f"{admin_url}/api/v1/references", timeout=10).json()["references"]
    ready = {(s["record_type"], s["segment_key"]) for s in states
             if s.get("collecting") or (s.get("current") or 0) >= 2}
    return wanted <= ready


def resolved(stage: Any, episodes: list[str]) -> bool:
    return all(stage.life.life(e)["status"] == "resolved" for e in episodes)


def report(stage: Any, episodes: list[str], results: list[Any], say: Say) -> list[dict[str, Any]]:
    """Print each episode's life and its windows against the new reference; the summary."""
    out = []
    for episode in episodes:
        life = stage.life.life(episode)
        promotion = life["promotion"] or {}
        version = promotion.get("new_version")
        say(f"episode {episode[:12]} ({life['record_type']} {life['segment_key']}): "
            f"{life['status']}" + (f", {life['resolution']}" if life["resolution"] else ""))
        say("  " + " -> ".join(s["step"] for s in life["steps"]))
        after = [r for r in results if r.segment_key == life["segment_key"]
                 and r.record_type == life["record_type"] and version
                 and r.reference_version == version]
        for r in after:
            say(f"  window {r.window_index} against reference v{version}: "
                f"{'DRIFT' if r.dataset_drift else 'ok'} (share {r.drift_share:.2f})")
        out.append({"episode_id": episode, "status": life["status"],
                    "resolution": life["resolution"], "reference_version": version,
                    "steps": [s["step"] for s in life["steps"]],
                    "windows_after": [(r.window_index, r.dataset_drift) for r in after]})
    return out
