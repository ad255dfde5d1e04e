"""The fleet: which clusters drift from their peers, in which segments, and what each cluster's
GPUs buy per dollar.

Peer drift series (``observer_peer_*``, :mod:`observer.drift.peer`) carry the judged cluster
in their ``cluster`` label, as the GPU economics series of each cluster do: scrape the central
stages with ``honor_labels: true`` so that label is kept (otherwise Prometheus renames it
``exported_cluster``). The drift share threshold line is ``DriftConfig().drift_share``.
"""

from __future__ import annotations

from observer.dashboards.spec import DashboardSpec, PanelSpec, Query, RowSpec
from observer.drift.config import DriftConfig

PEER = 'cluster=~"$cluster", segment=~"$segment"'
C = 'cluster=~"$cluster"'
RATE = "[$__rate_interval]"
SHARE = DriftConfig().drift_share
ECON = "observer_gpu_economics"
STATUS = f"max by (cluster) (observer_peer_dataset_drift{{{PEER}}})"

DASHBOARD = DashboardSpec(
    uid="observer-fleet",
    title="observer / Fleet",
    description="Clusters against their fleet: peer drift per cluster and segment, and tokens "
    "per dollar per second per cluster.",
    variables=["cluster", "segment"],
    rows=[
        RowSpec("Clusters", [
            PanelSpec(
                "Clusters drifting from their fleet",
                "How many clusters' last peer window drifted from the other clusters in some "
                "segment?",
                [Query(f"count({STATUS} == 1) or vector(0)")],
                kind="stat", width=6, height=4, thresholds=[1],
            ),
            PanelSpec(
                "Clusters in step with their fleet",
                "How many clusters' last peer windows all matched the other clusters?",
                [Query(f"count({STATUS} == 0) or vector(0)")],
                kind="stat", width=6, height=4,
            ),
            PanelSpec(
                "Clusters by drift status",
                "Which clusters drift from their fleet right now (1) and which do not (0)?",
                [Query(STATUS, "{{cluster}}")],
                kind="table", width=12, height=8, thresholds=[1],
            ),
        ]),
        RowSpec("Peer drift", [
            PanelSpec(
                "Peer drift heat map (cluster x segment)",
                f"Which cluster moved away from its peers in which segment, and when (share of "
                f"features drifted; dataset drift from {SHARE})?",
                [Query(f"max by (cluster, segment) (observer_peer_drift_share{{{PEER}}})",
                       "{{cluster}} {{segment}}")],
                kind="statushistory", width=24, height=10, thresholds=[SHARE], min=0, max=1,
            ),
            PanelSpec(
                "Peer windows judged per minute",
                "Are the clusters' peer windows being judged, or left out for too few clusters "
                "or records?",
                [Query(f"sum by (outcome) (rate(observer_drift_peer_windows_total{RATE})) * 60",
                       "{{outcome}}")],
                width=8,
            ),
            PanelSpec(
                "Records left out of peer drift per minute",
                "Which records could peer drift not use (no cluster, late, from the future, too "
                "many clusters)?",
                [Query(f"sum by (reason) (rate(observer_drift_peer_skipped_total{RATE})) * 60",
                       "{{reason}}")],
                width=8,
            ),
            PanelSpec(
                "Peer drift state",
                "How much memory do the clusters' open peer windows hold?",
                [Query("sum(observer_drift_peer_state_bytes)")],
                unit="bytes", kind="stat", width=8,
            ),
        ]),
        RowSpec("Economics", [
            PanelSpec(
                "Tokens per dollar per second per cluster",
                "Tokens/s bought by each $/h of GPU, per cluster: which cluster serves "
                "cheapest?",
                [Query(f'sum by (cluster) ({ECON}_tokens_per_second{{{C}, scope="gpu"}}) / '
                       f'(sum by (cluster) ({ECON}_cost_dollars_per_second{{{C}, scope="gpu"}})'
                       f' * 3600)', "{{cluster}}")],
                width=24,
            ),
        ]),
    ],
)
