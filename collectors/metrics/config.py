"""The domain-metrics stage's configuration (the ``metrics`` section).

>>> MetricsConfig().max_paths
20
"""

from __future__ import annotations

from pydantic import Field

from observer.core.config import Section


class MetricsConfig(Section):
    """The domain-metrics stage (``observer metrics``): LLM, tool and path series on /metrics."""

    group_id: str = Field("observer-metrics", description="Consumer group.")
    # Every distinct label value is a new time series in Prometheus: cap them.
    max_label_values: int = Field(
        20, ge=1, description="Distinct values per label (service, model, tool, agent, "
        "finish reason, error type) given their own series; later values count as 'other'.",
    )
    max_clusters: int = Field(
        50, ge=1, description="Distinct clusters given their own series (the cluster label of "
        "every LLM, tool and path series); later clusters count as 'other'. A record without a "
        "cluster has cluster \"\", so a scrape's own cluster target label applies.",
    )
    max_paths: int = Field(
        20, ge=1, description="Prompt-path signatures given their own series; the rest "
        "count as 'other'.",
    )
