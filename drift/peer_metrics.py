"""Prometheus metrics of peer drift (:mod:`observer.drift.peer`; default registry).

Label cardinality: the two gauges have one series per (cluster, fleet segment, record type)
judged, capped by ``drift.peer.max_metric_series`` (results beyond the cap are still emitted
to ``observer.drift``); the counters are labelled by record type and a fixed set of reasons.
``cluster`` is the judged cluster: scrape the central stages with ``honor_labels: true`` so
that a ``cluster`` target label does not rename it to ``exported_cluster``.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

PEER_DRIFT_SHARE = Gauge(
    "observer_peer_drift_share",
    "Share of the features that drifted in a cluster's last peer window, against the other "
    "clusters' records of the same time range.",
    ["cluster", "segment", "record_type"],
)
PEER_DATASET_DRIFT = Gauge(
    "observer_peer_dataset_drift",
    "1 when a cluster's last peer window drifted from its fleet (drift share >= "
    "drift.drift_share), else 0.",
    ["cluster", "segment", "record_type"],
)
PEER_WINDOWS = Counter(
    "observer_drift_peer_windows_total",
    "Clusters' peer windows closed: scored, or not judged (too_few_clusters, too_few_records: "
    "the cluster's own window or its pooled peers under drift.peer.min_records).",
    ["record_type", "outcome"],
)
PEER_SKIPPED = Counter(
    "observer_drift_peer_skipped_total",
    "Records peer drift left out: no_cluster (no cluster named), late (their peer window had "
    "closed), future (event time more than a window ahead of their Kafka timestamp), "
    "too_many_clusters (drift.peer.max_clusters reached for the segment), replayed (already "
    "in their cluster's windows before a restart).",
    ["record_type", "reason"],
)
PEER_STATE_BYTES = Gauge(
    "observer_drift_peer_state_bytes",
    "Approximate memory of peer drift's open windows (raw values and sketches), all segments.",
)
