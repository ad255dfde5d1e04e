"""Every PromQL query of the committed dashboards, and how to run one as Grafana would (used by
the dashboard tests: prometheus, gpu, quality, fleet)."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = ROOT / "dashboards" / "json"

# Grafana's built-in variables, as Grafana would expand them for a short, recent range.
BUILTINS = {"$__rate_interval": "30s", "$__range": "15m", "$__interval": "5s"}
ALL = ".*"


def dashboard_queries(uid: str = "*") -> list[tuple[str, str, str]]:
    """(dashboard uid, panel or annotation title, PromQL) of the committed dashboards."""
    out = []
    for path in sorted(DASHBOARD_DIR.glob(f"{uid}.json")):
        model = json.loads(path.read_text())
        for panel in model["panels"]:
            for target in panel.get("targets") or []:
                out.append((model["uid"], panel["title"], target["expr"]))
        for annotation in model.get("annotations", {}).get("list", []):
            if annotation.get("expr"):
                out.append((model["uid"], f"annotation: {annotation['name']}", annotation["expr"]))
    return out


def expand(expr: str) -> str:
    """Replace Grafana variables: built-ins by their values, template variables by All."""
    for name, value in BUILTINS.items():
        expr = expr.replace(name, value)
    return re.sub(r"\$\{?([a-z_]+)\}?", ALL, expr)


def has_data(result: list[dict[str, Any]]) -> bool:
    """At least one series with a real number (a quantile of no observations is NaN)."""
    for series in result:
        value = series.get("value")
        if value is not None and not math.isnan(float(value[1])):
            return True
    return False


def queries_without_data(client: Any, queries: Sequence[tuple[str, str, str]],
                         timeout_s: float = 30.0) -> list[tuple[str, str, str]]:
    """Run every query (expanded) until each returned data or ``timeout_s`` passed; those
    still without data. ``client`` is a ``PrometheusConnect``."""
    missing = list(queries)
    deadline = time.monotonic() + timeout_s
    while missing and time.monotonic() < deadline:
        missing = [q for q in missing if not has_data(client.custom_query(expand(q[2])))]
        if missing:
            time.sleep(1)
    return missing


def describe(missing: Sequence[tuple[str, str, str]]) -> str:
    """The assertion message naming each query without data."""
    return "queries without data:\n" + "\n".join(
        f"{title}: {expand(expr)}" for _, title, expr in missing)
