"""GPU economics: how busy the GPUs are, what they cost, and what that buys in tokens.

Series come from ``observer collect-gpu`` (NVML on each node, or DCGM exporter and vLLM/SGLang
series read back from Prometheus); the formulas are in docs/stages/collect-gpu.md, "Formulas".
"""

from __future__ import annotations

from observer.dashboards.spec import FILTERS, DashboardSpec, PanelSpec, Query, RowSpec

C = FILTERS["cluster"]
MODEL = f'{C}, scope="model", name=~"$model"'
ECON = "observer_gpu_economics"

DASHBOARD = DashboardSpec(
    uid="observer-gpu",
    title="observer / GPU economics",
    description="GPU utilisation and power, tokens per dollar and per joule, cost per million "
    "tokens and the money idle GPUs burn.",
    variables=["cluster", "model"],
    rows=[
        RowSpec("Fleet", [
            PanelSpec("GPU utilisation", "Are the GPUs busy?",
                      [Query(f"observer_gpu_utilization_percent{{{C}}}", "{{node}} {{gpu}} {{mig_instance}}")],
                      unit="percent", min=0, max=100),
            PanelSpec("Power draw", "How much power do they draw?",
                      [Query(f"observer_gpu_power_watts{{{C}}}", "{{node}} {{gpu}}")], unit="watt"),
            PanelSpec("Idle GPUs", "How many GPUs (or shares) sit idle right now?",
                      [Query(f"sum(observer_gpu_idle{{{C}}})")], kind="stat", width=8, height=4,
                      thresholds=[1, 4]),
            PanelSpec("Idle spend per hour", "How much money do idle GPUs burn per hour?",
                      [Query(f'sum({ECON}_idle_cost_dollars_per_second{{{C}, scope="gpu"}}) * 3600')],
                      unit="currencyUSD", kind="stat", width=8, height=4),
            PanelSpec("Idle spend over the range", "How much was wasted on idle GPUs in the range?",
                      [Query(f"sum(increase(observer_gpu_idle_dollars_total{{{C}}}[$__range]))")],
                      unit="currencyUSD", kind="stat", width=8, height=4),
        ]),
        RowSpec("Per model", [
            PanelSpec("Tokens per second", "How many tokens does each model's GPU share produce?",
                      [Query(f"{ECON}_tokens_per_second{{{MODEL}}}", "{{name}}")], unit="short"),
            PanelSpec("Tokens per dollar per second", "Tokens/s bought by each $/h: which model "
                      "serves cheapest?",
                      [Query(f"{ECON}_tokens_per_dollar_per_second{{{MODEL}}}", "{{name}}")], unit="short"),
            PanelSpec("Tokens per joule", "How energy-efficient is each model's serving?",
                      [Query(f"{ECON}_tokens_per_joule{{{MODEL}}}", "{{name}}")], unit="short"),
            PanelSpec("Cost per million tokens", "What does a million tokens cost on each model?",
                      [Query(f"{ECON}_cost_per_million_tokens_dollars{{{MODEL}}}", "{{name}}")],
                      unit="currencyUSD"),
        ]),
    ],
)
