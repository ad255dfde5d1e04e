"""The ``drift.peer`` section: peer drift, each cluster's traffic scored against its fleet's.

>>> cfg = PeerDriftConfig(enabled=True)
>>> cfg.key, cfg.window_s, cfg.min_clusters
('cluster', 300.0, 3)
>>> try:
...     PeerDriftConfig(window_s=60, lateness_s=60)
... except ValueError as e:
...     print(e.errors()[0]["msg"])
Value error, drift.peer.lateness_s (60.0) must be shorter than drift.peer.window_s (60.0): at most two peer windows are open per cluster
"""

from __future__ import annotations

from pydantic import Field, model_validator

from observer.core.config import Section


class PeerDriftConfig(Section):
    """Peer drift (:mod:`observer.drift.peer`): per segment without the cluster, each
    cluster's event-time window against the other clusters' pooled records of that window."""

    enabled: bool = Field(
        False, description="Score each cluster's traffic against the same segment's traffic in "
        "the other clusters (results with comparison: fleet).",
    )
    key: str = Field(
        "cluster", min_length=1, description="The record field naming a record's cluster; the "
        "fleet segment is the record type's segment keys without it.",
    )
    window_s: float = Field(
        300.0, gt=0, description="Peer windows: tumbling event-time windows of this length, "
        "aligned on the Unix epoch and shared by every cluster of a segment.",
    )
    lateness_s: float = Field(
        60.0, ge=0, description="A peer window closes when the segment's newest event time "
        "passes its end + this; later records for it are dropped (counted as late).",
    )
    min_clusters: int = Field(
        3, ge=2, description="Clusters with records in a window needed to judge any of them "
        "(with 2, a drifted cluster and its peer look alike: neither can be blamed).",
    )
    min_records: int = Field(
        100, ge=1, description="Records needed on each side: the judged cluster's window and "
        "the pooled peers'.",
    )
    max_clusters: int = Field(
        1000, ge=2, description="Clusters tracked per segment; records of further clusters are "
        "counted (reason too_many_clusters) and left out.",
    )
    max_exact_rows: int = Field(
        5000, ge=1, description="Exact mode: rows a cluster's peer window holds as raw values; "
        "past this the window turns into sketches (drift.sketch_*), so state stays bounded.",
    )
    max_metric_series: int = Field(
        10000, ge=0, description="Cap on (cluster, segment, record type) series of the peer "
        "gauges; results beyond it are still emitted.",
    )

    @model_validator(mode="after")
    def _lateness_below_window(self) -> PeerDriftConfig:
        if self.lateness_s >= self.window_s:
            raise ValueError(
                f"drift.peer.lateness_s ({self.lateness_s}) must be shorter than "
                f"drift.peer.window_s ({self.window_s}): at most two peer windows are open "
                "per cluster"
            )
        return self
