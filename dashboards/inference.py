"""Inference loops: how much the models are asked, how fast and how well they answer."""

from __future__ import annotations

from observer.dashboards.spec import FILTERS, DashboardSpec, PanelSpec, Query, RowSpec

F = FILTERS["llm"]
RATE = "[$__rate_interval]"
# Recorded by deploy/prometheus/rules/observer.rules.yml (5-minute rates).
LATENCY = "cluster_service_model_le:observer_llm_latency_seconds_bucket:rate5m"
TTFT = "cluster_service_model_le:observer_llm_time_to_first_token_seconds_bucket:rate5m"
CALLS = "cluster_service_model:observer_llm_calls:rate5m"


def _quantiles(series: str) -> list[Query]:
    return [
        Query(f"histogram_quantile({q}, sum by (model, le) ({series}{{{F}}}))", f"p{int(q * 100)} {{{{model}}}}")
        for q in (0.5, 0.95, 0.99)
    ]


DASHBOARD = DashboardSpec(
    uid="observer-inference",
    title="observer / Inference loops",
    description="LLM calls per model: throughput, latency, time to first token, finish "
    "reasons, errors and tokens, from the observer.llm records.",
    rows=[
        RowSpec("At a glance", [
            PanelSpec("LLM calls per second", "How much are the models being asked right now?",
                      [Query(f"sum({CALLS}{{{F}}})")], unit="reqps", kind="stat", width=6, height=4),
            PanelSpec("p95 latency", "How long does a typical slow call take?",
                      [Query(f"histogram_quantile(0.95, sum by (le) ({LATENCY}{{{F}}}))")],
                      unit="s", kind="stat", width=6, height=4, thresholds=[10, 30]),
            PanelSpec("p95 time to first token", "How long do users wait before anything streams back?",
                      [Query(f"histogram_quantile(0.95, sum by (le) ({TTFT}{{{F}}}))")],
                      unit="s", kind="stat", width=6, height=4, thresholds=[1, 3]),
            PanelSpec("Error ratio", "What share of calls fail?",
                      [Query(f"(sum(rate(observer_llm_errors_total{{{F}}}{RATE})) or vector(0))"
                             f" / sum(rate(observer_llm_calls_total{{{F}}}{RATE}))")],
                      unit="percentunit", kind="stat", width=6, height=4, thresholds=[0.01, 0.05]),
        ]),
        RowSpec("Throughput and latency", [
            PanelSpec("Throughput by model", "Which models carry the load, and is it changing?",
                      [Query(f"sum by (service, model) ({CALLS}{{{F}}})", "{{service}} / {{model}}")],
                      unit="reqps", stacked=True),
            PanelSpec("Latency quantiles by model", "Is any model getting slower (p50, p95, p99)?",
                      _quantiles(LATENCY), unit="s"),
            PanelSpec("Time to first token by model", "Is prefill or queueing getting slower?",
                      _quantiles(TTFT), unit="s"),
            PanelSpec("Finish reasons", "Do answers stop normally, or hit the length limit, call "
                      "tools or get filtered more often?",
                      [Query(f"sum by (finish_reason) (rate(observer_llm_calls_total{{{F}}}{RATE}))",
                             "{{finish_reason}}")], unit="reqps", stacked=True),
        ]),
        RowSpec("Errors and tokens", [
            PanelSpec("Error ratio by model", "Which model fails, and since when?",
                      [Query(f"(sum by (model) (rate(observer_llm_errors_total{{{F}}}{RATE}))"
                             f" or 0 * sum by (model) (rate(observer_llm_calls_total{{{F}}}{RATE})))"
                             f" / sum by (model) (rate(observer_llm_calls_total{{{F}}}{RATE}))",
                             "{{model}}")], unit="percentunit", thresholds=[0.01, 0.05], min=0),
            PanelSpec("Tokens per second", "How many input and output tokens flow, per model?",
                      [Query(f"sum by (model, type) (rate(observer_llm_tokens_total{{{F}}}{RATE}))",
                             "{{model}} {{type}}")], unit="short"),
            PanelSpec("Output tokens per call", "Are answers getting longer (a drift symptom)?",
                      [Query(f'sum by (model) (rate(observer_llm_tokens_total{{{F}, type="output"}}{RATE}))'
                             f" / sum by (model) (rate(observer_llm_calls_total{{{F}}}{RATE}))",
                             "{{model}}")], unit="short"),
            PanelSpec("Input tokens per call", "Are prompts or contexts growing?",
                      [Query(f'sum by (model) (rate(observer_llm_tokens_total{{{F}, type="input"}}{RATE}))'
                             f" / sum by (model) (rate(observer_llm_calls_total{{{F}}}{RATE}))",
                             "{{model}}")], unit="short"),
        ]),
    ],
)
