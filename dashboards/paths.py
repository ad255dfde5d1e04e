"""Prompt paths: how agents loop, which routes they take through prompts and tools."""

from __future__ import annotations

from observer.dashboards.spec import FILTERS, DashboardSpec, PanelSpec, Query, RowSpec

F = FILTERS["service"]
RATE = "[$__rate_interval]"
TRACES = f"observer_agent_traces_total{{{F}}}"
PATHS = f"observer_agent_path_traces_total{{{F}}}"
ITERATIONS = "cluster_service_agent_le:observer_agent_loop_iterations_bucket:rate5m"

DASHBOARD = DashboardSpec(
    uid="observer-paths",
    title="observer / Prompt paths",
    description="Finished agent traces from observer.paths: loop iterations, runaway loops and "
    "the most frequent prompt paths (ordered LLM and tool steps).",
    variables=["cluster", "service"],
    rows=[
        RowSpec("Agent loops", [
            PanelSpec("Traces per second", "How many agent runs finish, and how many exceed the "
                      "loop bound?",
                      [Query(f"sum by (flagged) (rate({TRACES}{RATE}))", "loop bound exceeded: {{flagged}}")],
                      unit="reqps", stacked=True),
            PanelSpec("Loop iterations (p50, p95)", "How many model turns does an agent need per "
                      "task, and is that growing?",
                      [Query(f"histogram_quantile({q}, sum by (agent, le) ({ITERATIONS}{{{F}}}))",
                             f"p{int(q * 100)} {{{{agent}}}}") for q in (0.5, 0.95)],
                      unit="short"),
            PanelSpec("Mean iterations per trace", "On average, how many turns per run?",
                      [Query(f"sum by (agent) (rate(observer_agent_loop_iterations_sum{{{F}}}{RATE}))"
                             f" / sum by (agent) (rate(observer_agent_loop_iterations_count{{{F}}}{RATE}))",
                             "{{agent}}")], unit="short", kind="stat", width=12, height=6),
            PanelSpec("Runaway-loop ratio", "What share of runs exceeded the loop bound?",
                      [Query(f'(sum(rate(observer_agent_traces_total{{{F}, flagged="true"}}{RATE})) or vector(0))'
                             f" / sum(rate({TRACES}{RATE}))")],
                      unit="percentunit", kind="stat", width=12, height=6, thresholds=[0.01, 0.05]),
        ]),
        RowSpec("Prompt paths", [
            PanelSpec("Top prompt paths", "Which routes through prompts and tools do agents take "
                      "most, and is a new one appearing?",
                      [Query(f"topk(10, sum by (path) (rate({PATHS}{RATE})))", "{{path}}")],
                      unit="reqps", width=24, height=9),
            PanelSpec("Prompt path share", "What share of runs took each path over the range?",
                      [Query(f"topk(20, sum by (path, signature) (increase({PATHS}[$__range]))"
                             f" / scalar(sum(increase({PATHS}[$__range]))))", "{{path}}")],
                      unit="percentunit", kind="table", width=24, height=9),
        ]),
    ],
)
