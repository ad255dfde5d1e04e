"""The evaluation gate: the run goes on only when the candidate is at least as good.

Reads two metrics JSON objects (local paths or URIs: the candidate's, written by training,
and the serving model's), compares one metric and writes the verdict as JSON. Exit status 0
means promote; 1 means the candidate is worse and the Argo step fails, which stops the run
before anything is deployed; 2 means the input is unusable. Without serving metrics (the
first model) the candidate passes.

    python -m observer.triggers.pipeline.evaluate --candidate s3://runs/r1/model/metrics.json \\
        --serving s3://models/current/metrics.json --metric accuracy --out /tmp/verdict.json

>>> compare({"accuracy": 0.91}, {"accuracy": 0.90}, "accuracy")["verdict"]
'promote'
>>> compare({"loss": 0.3}, {"loss": 0.2}, "loss", higher_is_better=False)["verdict"]
'reject'
>>> compare({"accuracy": 0.91}, {"accuracy": 0.90}, "accuracy", min_delta=0.02)["reason"]
'accuracy 0.91 vs serving 0.9: needs +0.02, has +0.01'
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any


class GateError(ValueError):
    """The metrics cannot be compared; the message says which input and why."""


def _metric(metrics: dict[str, Any], name: str, which: str) -> float:
    if name not in metrics:
        raise GateError(f"{which} metrics have no {name!r} (have: {sorted(metrics)})")
    try:
        value = float(metrics[name])
    except (TypeError, ValueError):
        raise GateError(f"{which} metric {name!r} is not a number: {metrics[name]!r}") from None
    if math.isnan(value):
        raise GateError(f"{which} metric {name!r} is NaN")
    return value


def compare(
    candidate: dict[str, Any],
    serving: dict[str, Any] | None,
    metric: str,
    *,
    higher_is_better: bool = True,
    min_delta: float = 0.0,
) -> dict[str, Any]:
    """The verdict (``promote`` or ``reject``) with the numbers behind it."""
    cand = _metric(candidate, metric, "candidate")
    if serving is None:
        return {"verdict": "promote", "metric": metric, "candidate": cand, "serving": None,
                "reason": f"{metric} {cand:g}; no serving model to compare with"}
    serv = _metric(serving, metric, "serving")
    gain = cand - serv if higher_is_better else serv - cand
    verdict = "promote" if gain >= min_delta else "reject"
    reason = f"{metric} {cand:g} vs serving {serv:g}: needs {min_delta:+g}, has {gain:+.4g}"
    return {"verdict": verdict, "metric": metric, "candidate": cand, "serving": serv,
            "gain": gain, "reason": reason}


def read_json(uri: str) -> dict[str, Any]:
    """A JSON object from a path or any fsspec URI."""
    from observer.core.extras import require

    fsspec = require("fsspec", extra="parquet",
                     feature="The pipeline's evaluate step (metrics URIs)")

    with fsspec.open(uri, "rt") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise GateError(f"{uri} does not hold a JSON object")
    return data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="observer.triggers.pipeline.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--candidate", required=True, help="candidate metrics JSON (path or URI)")
    p.add_argument("--serving", default="", help="serving model's metrics JSON; empty: none")
    p.add_argument("--metric", required=True)
    p.add_argument("--lower-is-better", action="store_true")
    p.add_argument("--min-delta", type=float, default=0.0)
    p.add_argument("--out", default="", help="write the verdict JSON here too")
    args = p.parse_args(argv)
    try:
        candidate = read_json(args.candidate)
        serving = read_json(args.serving) if args.serving else None
        result = compare(candidate, serving, args.metric,
                         higher_is_better=not args.lower_is_better, min_delta=args.min_delta)
    except (GateError, OSError, json.JSONDecodeError) as e:
        print(f"evaluation gate: {e}", file=sys.stderr)
        return 2
    text = json.dumps(result, sort_keys=True)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(result["verdict"])
    return 0 if result["verdict"] == "promote" else 1


if __name__ == "__main__":
    sys.exit(main())
