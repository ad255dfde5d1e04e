"""Every PromQL query of the committed dashboards, and how to run one as Grafana would (used by
tests/test_dashboards_prometheus.py and tests/test_dashboards_gpu.py)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
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
