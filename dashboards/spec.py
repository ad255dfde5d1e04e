"""Dashboards as data: what each panel asks Prometheus, and how it is drawn.

A dashboard is a :class:`DashboardSpec` (rows of :class:`PanelSpec`); :func:`render` turns it
into a Grafana dashboard with ``grafana-foundation-sdk``. Every panel names the question it
answers (its description), so the documentation (docs/dashboards.md) and Grafana say the same thing.

Template variables: ``datasource`` (any Prometheus), then ``cluster``, ``service``, ``model``
and ``segment`` as regex multi-selects whose "All" is ``.*``; :data:`FILTERS` holds the label
matchers panels put in their selectors. ``cluster`` is a target label the Prometheus scrape
configuration adds (deploy/prometheus/prometheus.yml), or, on the series of central stages
scraped with ``honor_labels: true``, the records' own cluster
(:mod:`observer.collectors.common.cluster`); where it is absent, ``.*`` still matches.

>>> spec = DashboardSpec(uid="x", title="X", description="d", rows=[
...     RowSpec("R", [PanelSpec("P", "Which?", [Query('up{cluster=~"$cluster"}', "{{job}}")])])])
>>> out = to_json(render(spec))
>>> out["uid"], [p["title"] for p in out["panels"]], out["panels"][1]["targets"][0]["expr"]
('x', ['R', 'P'], 'up{cluster=~"$cluster"}')
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from grafana_foundation_sdk.builders import common, prometheus, stat, statushistory, table, timeseries
from grafana_foundation_sdk.builders.dashboard import (
    AnnotationQuery,
    Dashboard,
    DatasourceVariable,
    QueryVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import GraphTresholdsStyleMode, StackingMode
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    VariableRefresh,
    VariableSort,
)

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")

# Label matchers shared by the panels: one place, so every panel honours the variables alike.
FILTERS = {
    "cluster": 'cluster=~"$cluster"',
    "llm": 'cluster=~"$cluster", service=~"$service", model=~"$model"',
    "service": 'cluster=~"$cluster", service=~"$service"',
    "segment": 'cluster=~"$cluster", segment=~"$segment"',
}

# name -> (label, PromQL label_values source). Each is a regex multi-select, All = ".*".
VARIABLES: dict[str, tuple[str, str]] = {
    # Any observer series: central stages label theirs with each record's cluster, which `up`
    # (the scrape's target label only) would not list.
    "cluster": ("Cluster", 'label_values({__name__=~"observer_.+"}, cluster)'),
    "service": ("Service", 'label_values(observer_llm_calls_total{cluster=~"$cluster"}, service)'),
    "model": (
        "Model",
        'label_values(observer_llm_calls_total{cluster=~"$cluster", service=~"$service"}, model)',
    ),
    "segment": ("Segment", 'label_values(observer_drift_share{cluster=~"$cluster"}, segment)'),
}
ALL = ".*"

# statushistory: one row per series over time, coloured by thresholds (a heat map).
PanelKind = Literal["timeseries", "stat", "table", "statushistory"]


@dataclass(frozen=True)
class Query:
    """One PromQL query of a panel and its legend (Grafana's ``{{label}}`` templating)."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class PanelSpec:
    """One panel: ``question`` is the question it answers (shown as its description)."""

    title: str
    question: str
    queries: list[Query]
    unit: str = "short"
    kind: PanelKind = "timeseries"
    width: int = 12
    height: int = 8
    thresholds: list[float] = field(default_factory=list)
    stacked: bool = False
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class RowSpec:
    title: str
    panels: list[PanelSpec]


@dataclass(frozen=True)
class AnnotationSpec:
    """Events drawn over every time series: the expression is non-zero when one happened."""

    name: str
    expr: str
    color: str


@dataclass(frozen=True)
class DashboardSpec:
    uid: str
    title: str
    description: str
    rows: list[RowSpec]
    variables: list[str] = field(default_factory=lambda: ["cluster", "service", "model"])
    annotations: list[AnnotationSpec] = field(default_factory=list)
    tags: list[str] = field(default_factory=lambda: ["observer"])

    def panels(self) -> list[PanelSpec]:
        return [p for row in self.rows for p in row.panels]


def _thresholds(values: list[float]) -> ThresholdsConfig:
    steps = [Threshold(value=None, color="green")]
    colors = ["orange", "red"]
    steps += [Threshold(value=v, color=colors[min(i, 1)]) for i, v in enumerate(values)]
    return ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps)


def _panel(spec: PanelSpec, panel_id: int) -> Any:
    builder: Any = {"timeseries": timeseries.Panel, "stat": stat.Panel, "table": table.Panel,
                    "statushistory": statushistory.Panel}[spec.kind]()
    builder = (
        builder.id(panel_id)
        .title(spec.title)
        .description(spec.question)
        .datasource(DATASOURCE)
        .unit(spec.unit)
        .span(spec.width)
        .height(spec.height)
    )
    if spec.thresholds:
        builder = builder.thresholds(_thresholds(spec.thresholds))
        if spec.kind == "timeseries":
            # Drawn as dashed lines: "is the statistic above its threshold?" at a glance.
            builder = builder.thresholds_style(
                common.GraphThresholdsStyleConfig().mode(GraphTresholdsStyleMode.DASHED)
            )
    if spec.stacked and spec.kind == "timeseries":
        builder = builder.stacking(common.StackingConfig().mode(StackingMode.NORMAL))
    if spec.min is not None:
        builder = builder.min(spec.min)
    if spec.max is not None:
        builder = builder.max(spec.max)
    for i, q in enumerate(spec.queries):
        target = prometheus.Dataquery().expr(q.expr).ref_id(chr(ord("A") + i))
        if q.legend:
            target = target.legend_format(q.legend)
        if spec.kind not in ("timeseries", "statushistory"):  # those draw a range
            target = target.instant()
        builder = builder.with_target(target)
    return builder


def _variable(name: str) -> QueryVariable:
    label, query = VARIABLES[name]
    return (
        QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(ALL)
    )


def render(spec: DashboardSpec) -> Dashboard:
    """The Grafana dashboard builder for ``spec``."""
    dash = (
        Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags(spec.tags)
        .editable()
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .with_variable(DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
    )
    for name in spec.variables:
        dash = dash.with_variable(_variable(name))
    for a in spec.annotations:
        dash = dash.annotation(
            AnnotationQuery().name(a.name).datasource(DATASOURCE).expr(a.expr)
            .icon_color(a.color).enable(True)
        )
    panel_id = 1
    for row in spec.rows:
        dash = dash.with_row(Row(row.title).id(panel_id))
        panel_id += 1
        for p in row.panels:
            dash = dash.with_panel(_panel(p, panel_id))
            panel_id += 1
    return dash


def to_json(dashboard: Dashboard) -> dict[str, Any]:
    """The dashboard model as Grafana's JSON (a dict)."""
    return json.loads(json.dumps(dashboard.build(), cls=JSONEncoder))
