"""Drift and triggers: which features drift in which segment, and what observer did about it.

Threshold lines come from the drift engine's default thresholds (``DriftConfig``), so a changed
default changes the dashboard on the next ``python -m observer.dashboards.build``.
"""

from __future__ import annotations

from observer.dashboards.spec import (
    FILTERS,
    AnnotationSpec,
    DashboardSpec,
    PanelSpec,
    Query,
    RowSpec,
)
from observer.drift.config import DriftConfig
from observer.drift.embedding.methods import DEFAULT_METHOD, EMBEDDING_METHODS

S = FILTERS["segment"]
C = FILTERS["cluster"]
RATE = "[$__rate_interval]"
THRESHOLDS = DriftConfig().thresholds
TITLES = {"psi": "PSI", "wasserstein": "Wasserstein (normalised)", "jensenshannon": "Jensen-Shannon"}


def _statistic_panel(method: str) -> PanelSpec:
    return PanelSpec(
        f"{TITLES.get(method, method)} per feature",
        f"Which features moved away from the reference, and past the {method} threshold "
        f"({THRESHOLDS[method]})?",
        [Query(f'observer_drift_statistic{{{S}, method="{method}"}}',
               "{{segment}} {{record_type}}.{{feature}}")],
        unit="short", width=8, thresholds=[THRESHOLDS[method]], min=0,
    )


# The default features the normaliser's text descriptors feed (llm records with content).
DESCRIPTORS = "|".join(f.name for f in DriftConfig().features["llm"] if f.name.endswith(
    ("_words", "_sentences", "_non_letter_share", "_links")))


def _semantic_row() -> RowSpec:
    """Meaning: the embedding features' statistic per segment, and what feeds them."""
    method = EMBEDDING_METHODS[DEFAULT_METHOD]
    return RowSpec("Meaning (embeddings and text descriptors)", [
        PanelSpec(
            f"Embedding drift ({DEFAULT_METHOD})",
            f"Did what users ask or what the model answers change in meaning (statistic of the "
            f"default method, {DEFAULT_METHOD}, per segment and feature; drift above "
            f"{method.default_threshold})?",
            [Query(f'observer_drift_statistic{{{S}, record_type="embeddings", '
                   f'method="{DEFAULT_METHOD}"}}', "{{segment}} {{feature}}")],
            unit="short", width=8, thresholds=[method.default_threshold], min=0, max=1,
        ),
        PanelSpec(
            "Text descriptors (Wasserstein)",
            "Did the answers' and prompts' words, sentences or non-letter share move?",
            [Query(f'observer_drift_statistic{{{S}, record_type="llm", '
                   f'feature=~"{DESCRIPTORS}", method="wasserstein"}}',
                   "{{segment}} {{feature}}")],
            unit="short", width=8, thresholds=[THRESHOLDS["wasserstein"]], min=0,
        ),
        PanelSpec(
            "Embedded calls per minute",
            "Are calls with content arriving to be embedded (per record type of the engine)?",
            [Query(f'sum by (record_type) (rate(observer_drift_records_total{{{C}, '
                   f'record_type="embeddings"}}{RATE})) * 60', "{{record_type}}")],
            unit="short", width=8,
        ),
    ])


def _new_events(counter: str) -> str:
    """Non-zero in the minute after ``counter`` grew. Not increase(): a labelled counter is
    born at 1 on its first event, and increase() sees no growth from a series' first sample."""
    return f"(sum({counter}) - (sum({counter} offset 1m) or vector(0))) > 0"


DASHBOARD = DashboardSpec(
    uid="observer-drift",
    title="observer / Drift and triggers",
    description="Drift statistics per segment and feature with their thresholds, drift share "
    "and verdicts, trigger decisions and deliveries; drift episodes, retraining runs, "
    "promotions, rollbacks and cleared episodes are annotations.",
    variables=["cluster", "segment"],
    annotations=[
        AnnotationSpec("Drift episodes", _new_events(f'observer_triggers_total{{{C}, kind="fired"}}'), "red"),
        AnnotationSpec("Retraining runs submitted",
                       _new_events(f'observer_run_submissions_total{{{C}, outcome="delivered"}}'), "purple"),
        # The episode's end (observer.triggers.promotion): the pipeline's promotion callback,
        # and the first window against the promoted model's reference that did not drift.
        AnnotationSpec("Models promoted",
                       _new_events(f'observer_episode_steps_total{{{C}, step="promoted"}}'), "green"),
        AnnotationSpec("Models rolled back",
                       _new_events(f'observer_episode_steps_total{{{C}, step="rolled_back"}}'), "orange"),
        AnnotationSpec("Episodes cleared",
                       _new_events(f'observer_episodes_closed_total{{{C}, how="resolved"}}'), "blue"),
    ],
    rows=[
        RowSpec("Verdicts", [
            PanelSpec("Segments in dataset drift", "How many segments drift right now?",
                      [Query(f"sum(observer_drift_dataset_drift{{{S}}})")], kind="stat", width=6,
                      height=4, thresholds=[1]),
            PanelSpec("Drift share", "What share of each segment's features drifted in its last "
                      "window (the policy signal)?",
                      [Query(f"observer_drift_share{{{S}}}", "{{segment}} {{record_type}}")],
                      unit="percentunit", width=18, height=8,
                      thresholds=[DriftConfig().drift_share], min=0, max=1),
        ]),
        RowSpec("Statistics per feature",
                [_statistic_panel(m) for m in ("psi", "wasserstein", "jensenshannon") if m in THRESHOLDS]),
        _semantic_row(),
        RowSpec("Capacity", [
            PanelSpec("Streams held, of drift.max_streams", "How close is the engine to the "
                      "stream cap, past which new segments take idle streams' places or are skipped "
                      "(stream_limit)?",
                      [Query(f"sum(observer_drift_streams{{{C}}}) / "
                             f"sum(observer_drift_streams_limit{{{C}}})")],
                      kind="stat", unit="percentunit", width=6, height=4, thresholds=[0.9],
                      min=0, max=1),
        ]),
        RowSpec("Windows and triggers", [
            PanelSpec("Windows closed", "Is the engine scoring (count windows per minute)?",
                      [Query(f"sum by (record_type) (rate(observer_drift_windows_total{{{C}}}{RATE})) * 60",
                             "{{record_type}}")], unit="short", width=8),
            # Totals since the trigger stage started: these counters are born at their first
            # event, so increase() over a range would miss it.
            PanelSpec("Trigger decisions (since start)", "Did sustained drift fire a policy, or "
                      "was it suppressed?",
                      [Query(f"sum by (policy, kind) (observer_triggers_total{{{C}}})",
                             "{{policy}} {{kind}}")], kind="table", width=8),
            PanelSpec("Webhook deliveries (since start)", "Did the receivers get the signed webhooks?",
                      [Query(f"sum by (outcome) (observer_webhook_deliveries_total{{{C}}})",
                             "{{outcome}}")], kind="table", width=8),
        ]),
    ],
)
