"""observer itself: is every stage receiving, keeping up and healthy?"""

from __future__ import annotations

from observer.dashboards.spec import FILTERS, DashboardSpec, PanelSpec, Query, RowSpec

C = FILTERS["cluster"]
RATE = "[$__rate_interval]"

DASHBOARD = DashboardSpec(
    uid="observer-stages",
    title="observer / Stages",
    description="observer's own health: spans received and rejected, messages per stage, Kafka "
    "lag, batch latency and errors.",
    variables=["cluster"],
    rows=[
        RowSpec("Intake", [
            PanelSpec("Spans received", "Are spans arriving, and are any rejected?",
                      [Query(f"sum by (outcome) (rate(observer_receiver_spans_total{{{C}}}{RATE}))",
                             "{{outcome}}")], unit="short"),
            PanelSpec("OTLP/HTTP answers", "Do exporters get 200s, or 4xx/5xx (429: back-pressure)?",
                      [Query(f"sum by (code) (rate(observer_receiver_requests_total{{{C}}}{RATE}))",
                             "{{code}}")], unit="reqps"),
        ]),
        RowSpec("Stages", [
            PanelSpec("Messages consumed per stage", "Is every stage consuming?",
                      [Query(f"sum by (stage) (rate(observer_stage_messages_total{{{C}}}{RATE}))",
                             "{{stage}}")], unit="short", width=8),
            PanelSpec("Batch latency p95 per stage", "Is a stage slowing down?",
                      [Query("histogram_quantile(0.95, sum by (stage, le) "
                             f"(rate(observer_stage_batch_duration_seconds_bucket{{{C}}}{RATE})))",
                             "{{stage}}")], unit="s", width=8),
            PanelSpec("Stage errors (since start)", "Has a stage failed batches?",
                      [Query(f"sum by (stage) (observer_stage_errors_total{{{C}}})"
                             f" or sum by (stage) (0 * observer_stage_messages_total{{{C}}})",
                             "{{stage}}")], kind="table", width=8),
            PanelSpec("Kafka lag per stage", "Is a stage falling behind its input topics "
                      "(messages waiting)?",
                      [Query(f"sum by (stage, topic) (observer_stage_lag_messages{{{C}}})",
                             "{{stage}} {{topic}}")], unit="short"),
            PanelSpec("Normaliser output by kind", "What kinds of spans does the normaliser see?",
                      [Query(f"sum by (kind) (rate(observer_normalizer_spans_total{{{C}}}{RATE}))",
                             "{{kind}}")], unit="short"),
        ]),
    ],
)
