"""Tools: which tools the agents call, how often they fail and how long they take."""

from __future__ import annotations

from observer.dashboards.spec import FILTERS, DashboardSpec, PanelSpec, Query, RowSpec

F = FILTERS["service"]
RATE = "[$__rate_interval]"
CALLS = f"observer_tool_calls_total{{{F}}}"
LATENCY = "cluster_service_tool_le:observer_tool_latency_seconds_bucket:rate5m"

DASHBOARD = DashboardSpec(
    uid="observer-tools",
    title="observer / Tools",
    description="Tool executions per tool: calls, errors by type and latency, from the "
    "observer.tools records.",
    variables=["cluster", "service"],
    rows=[
        RowSpec("At a glance", [
            PanelSpec("Tool calls per second", "How busy are the tools?",
                      [Query(f"sum(rate({CALLS}{RATE}))")], unit="reqps", kind="stat", width=8, height=4),
            PanelSpec("Tool error ratio", "What share of tool calls fail?",
                      [Query(f'(sum(rate(observer_tool_calls_total{{{F}, status="error"}}{RATE})) or vector(0))'
                             f" / sum(rate({CALLS}{RATE}))")],
                      unit="percentunit", kind="stat", width=8, height=4, thresholds=[0.05, 0.2]),
            PanelSpec("Tools in use", "How many distinct tools were called in the range?",
                      [Query(f"count(count by (tool) (increase({CALLS}[$__range]) > 0))")],
                      kind="stat", width=8, height=4),
        ]),
        RowSpec("Per tool", [
            PanelSpec("Calls by tool", "Which tools do the agents reach for, and is the mix shifting?",
                      [Query(f"sum by (tool) (rate({CALLS}{RATE}))", "{{tool}}")], unit="reqps", stacked=True),
            PanelSpec("Error ratio by tool", "Which tool is failing?",
                      [Query(f'(sum by (tool) (rate(observer_tool_calls_total{{{F}, status="error"}}{RATE}))'
                             f" or 0 * sum by (tool) (rate({CALLS}{RATE})))"
                             f" / sum by (tool) (rate({CALLS}{RATE}))", "{{tool}}")],
                      unit="percentunit", thresholds=[0.05, 0.2], min=0),
            PanelSpec("Errors by type", "Why do tools fail (timeouts, bad arguments, ...)?",
                      [Query(f"sum by (tool, error_type) (rate(observer_tool_errors_total{{{F}}}{RATE}))",
                             "{{tool}}: {{error_type}}")], unit="reqps", stacked=True),
            PanelSpec("p95 latency by tool", "Which tool slows the agent loop down?",
                      [Query(f"histogram_quantile(0.95, sum by (tool, le) ({LATENCY}{{{F}}}))", "{{tool}}")],
                      unit="s"),
            PanelSpec("Tool mix", "What share of all tool calls goes to each tool (last range)?",
                      [Query(f"sum by (tool) (increase({CALLS}[$__range]))"
                             f" / scalar(sum(increase({CALLS}[$__range])))", "{{tool}}")],
                      unit="percentunit", kind="table", width=24, height=8),
        ]),
    ],
)
