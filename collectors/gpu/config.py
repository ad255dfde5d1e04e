"""The GPU collector's configuration (the ``gpu`` section): sources, prices, sharing.

>>> GPUConfig().source
'nvml'
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from observer.core.config import Section


class GPUConfig(Section):
    """GPU and serving metrics, and GPU economics (``observer collect-gpu``)."""

    source: Literal["nvml", "prometheus"] = Field(
        "nvml",
        description="nvml: this node's GPUs (a DaemonSet); prometheus: DCGM exporter and "
        "vLLM/SGLang series for the whole cluster.",
    )
    cluster: str = Field(
        "",
        description="This GPU collector's cluster, stamped on every GPU, serving and economics "
        "record and on its series' cluster label (a cluster name, lowercased, like "
        "receiver.cluster). \"\": none.",
    )
    node_name: str = Field(
        "", description="Node name on NVML samples; empty: $NODE_NAME, else the host name."
    )
    # Energy took ~3.9 ms per NVML call on an H100 against 3-17 us for the other fields.
    sample_interval_s: float = Field(
        1.0, gt=0, description="NVML: poll utilisation, memory, power, temperature, clock."
    )
    slow_interval_s: float = Field(
        15.0, gt=0, description="NVML: poll the energy counter and the process list (slow calls)."
    )
    prometheus_url: str = Field("http://127.0.0.1:9090", description="Prometheus to query.")
    prometheus_token: SecretStr | None = Field(
        None, description="Bearer token for Prometheus, when it needs one."
    )
    prometheus_interval_s: float = Field(15.0, gt=0, description="Seconds between queries.")
    rate_window: str = Field(
        "1m", pattern=r"^[0-9]+(ms|s|m|h)$", description="PromQL range for rate() (tokens, energy)."
    )
    prices: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Dollars per GPU-hour: {GPU model: {capacity type: price}}; the model "
        "matches the device name case-insensitively, the longest matching key wins.",
    )
    capacity_type: str = Field(
        "on-demand",
        description="Capacity type of this node (karpenter.sh/capacity-type) when no label says.",
    )
    mig_fractions: dict[str, float] = Field(
        default_factory=dict,
        description="Share of a GPU per MIG profile ('1g.10gb': 0.142857); unlisted profiles "
        "use slices/7.",
    )
    time_slice_replicas: int = Field(
        1, ge=1, description="Time-slicing replicas per GPU (device plugin); each share costs 1/n."
    )
    idle_utilization_pct: float = Field(
        1.0, ge=0, description="A GPU under this utilisation with no tokens is idle (waste)."
    )
    @field_validator("cluster")
    @classmethod
    def _cluster_name(cls, value: str) -> str:
        from observer.collectors.common.cluster import cluster_name

        name = cluster_name(value) if value else ""
        if name is None:
            raise ValueError(f"gpu.cluster {value!r} is not a cluster name (letters, digits, "
                             "'-', '_' and '.', like a DNS name)")
        return name

    token_kinds: list[Literal["prompt", "generation"]] = Field(
        default_factory=lambda: ["prompt", "generation"],
        description="Which tokens count in the economics.",
    )
