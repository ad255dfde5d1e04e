"""``/metrics`` for the GPU collector: the latest record of every GPU, serving engine and
economics scope, exposed from one snapshot (no stale label sets left behind by a GPU or pod
that went away), plus the running total of dollars spent on idle GPUs.

>>> from prometheus_client import CollectorRegistry, generate_latest
>>> from observer.core.records import GPUSample
>>> m = GPUMetrics(); reg = CollectorRegistry(); reg.register(m)
>>> m.observe([GPUSample(source="nvml", node="n1", gpu_uuid="GPU-1", time_unix_nano=0, power_w=75.5)])
>>> 'observer_gpu_power_watts{cluster="",gpu="GPU-1"' in generate_latest(reg).decode()
True
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from observer.core.records import GPUEconomics, GPUSample, Record, ServingSample

# `cluster` (gpu.cluster; "" when unset, so a scrape's target label of that name applies):
# a fleet's figure is a sum by() over it (deploy/prometheus/rules/observer.rules.yml).
GPU_LABELS = ("node", "gpu", "gpu_model", "mig_instance", "pod", "namespace", "source", "cluster")
SERVING_LABELS = ("engine", "model", "pod", "namespace", "cluster")
ECONOMICS_LABELS = ("scope", "name", "cluster")

# (metric name, help, record field) per record type: one table, no ladder of ifs.
GPU_GAUGES = [
    (
        "observer_gpu_utilization_percent",
        "GPU utilisation (NVML / DCGM_FI_DEV_GPU_UTIL).",
        "utilization_pct",
    ),
    ("observer_gpu_memory_utilization_percent", "Memory bandwidth utilisation.", "memory_util_pct"),
    ("observer_gpu_memory_used_bytes", "Frame buffer used.", "memory_used_bytes"),
    ("observer_gpu_memory_total_bytes", "Frame buffer total.", "memory_total_bytes"),
    ("observer_gpu_power_watts", "Power draw.", "power_w"),
    ("observer_gpu_temperature_celsius", "GPU temperature.", "temperature_c"),
    ("observer_gpu_sm_clock_mhz", "SM clock.", "sm_clock_mhz"),
    (
        "observer_gpu_fraction",
        "Share of the physical GPU (MIG slice or time-sliced share).",
        "fraction",
    ),
    ("observer_gpu_cost_dollars_per_second", "Price of this GPU share per second.", "cost_per_s"),
    ("observer_gpu_idle", "1 when the GPU is idle (waste), else 0.", "idle"),
]
GPU_COUNTERS = [
    ("observer_gpu_energy_joules", "The device's total-energy counter.", "energy_j"),
]
SERVING_GAUGES = [
    (
        "observer_serving_prompt_tokens_per_second",
        "Prompt tokens per second.",
        "prompt_tokens_per_s",
    ),
    (
        "observer_serving_generation_tokens_per_second",
        "Generated tokens per second.",
        "generation_tokens_per_s",
    ),
    ("observer_serving_requests_running", "Requests running.", "requests_running"),
    ("observer_serving_requests_waiting", "Requests waiting.", "requests_waiting"),
    ("observer_serving_kv_cache_usage_ratio", "KV-cache usage, 0-1.", "kv_cache_usage"),
    (
        "observer_serving_ttft_mean_seconds",
        "Mean time to first token over the window.",
        "ttft_mean_s",
    ),
    (
        "observer_serving_itl_mean_seconds",
        "Mean inter-token latency over the window.",
        "itl_mean_s",
    ),
    ("observer_serving_e2e_mean_seconds", "Mean end-to-end request latency.", "e2e_mean_s"),
]
ECONOMICS_GAUGES = [
    ("observer_gpu_economics_tokens_per_second", "tokens / window_s.", "tokens_per_s"),
    (
        "observer_gpu_economics_cost_dollars_per_second",
        "Sum of price/h x fraction / 3600.",
        "cost_per_s",
    ),
    ("observer_gpu_economics_power_watts", "energy_j / window_s.", "power_w"),
    (
        "observer_gpu_economics_tokens_per_dollar",
        "tokens / (cost_per_s x window_s).",
        "tokens_per_dollar",
    ),
    (
        "observer_gpu_economics_tokens_per_dollar_per_second",
        "tokens_per_s / (cost_per_s x 3600): tokens/s per $/h.",
        "tokens_per_dollar_per_second",
    ),
    ("observer_gpu_economics_tokens_per_joule", "tokens / energy_j.", "tokens_per_joule"),
    (
        "observer_gpu_economics_cost_per_million_tokens_dollars",
        "cost / tokens x 1e6.",
        "cost_per_million_tokens",
    ),
    (
        "observer_gpu_economics_idle_cost_dollars_per_second",
        "cost_per_s when idle, else 0.",
        "idle_cost_per_s",
    ),
    ("observer_gpu_economics_idle", "1 when the scope processed no tokens in the window.", "idle"),
]


def _gpu_labels(s: GPUSample) -> list[str]:
    return [s.node, s.gpu_uuid, s.gpu_model, s.mig_instance, s.pod, s.namespace, s.source,
            s.cluster]


def _serving_labels(s: ServingSample) -> list[str]:
    return [s.engine, s.model, s.pod, s.namespace, s.cluster]


def _economics_labels(e: GPUEconomics) -> list[str]:
    return [e.scope, e.name, e.cluster]


# record type -> (labels, label values, gauges, counters)
FAMILIES = {
    GPUSample: (GPU_LABELS, _gpu_labels, GPU_GAUGES, GPU_COUNTERS),
    ServingSample: (SERVING_LABELS, _serving_labels, SERVING_GAUGES, []),
    GPUEconomics: (ECONOMICS_LABELS, _economics_labels, ECONOMICS_GAUGES, []),
}


class GPUMetrics(Collector):
    """A prometheus_client collector over the latest records."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[type, dict[tuple[str, ...], Record]] = {t: {} for t in FAMILIES}
        self.idle_dollars: dict[str, float] = {}
        self._idle_labels: dict[str, list[str]] = {}

    def observe(self, records: Iterable[Record], replace: bool = False) -> None:
        """Keep each record as the latest of its label set; ``replace`` first forgets every
        label set of the record types given (a full refresh, as the Prometheus side does)."""
        records = list(records)
        with self._lock:
            if replace:
                for t in {type(r) for r in records}:
                    self._latest.get(t, {}).clear()
            for r in records:
                family = FAMILIES.get(type(r))
                if family is not None:
                    self._latest[type(r)][tuple(family[1](r))] = r

    def add_idle_dollars(self, key: str, sample: GPUSample, dollars: float) -> None:
        with self._lock:
            self.idle_dollars[key] = round(self.idle_dollars.get(key, 0.0) + dollars, 12)
            self._idle_labels[key] = _gpu_labels(sample)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            latest = {t: list(v.items()) for t, v in self._latest.items()}
            idle = [(self._idle_labels[k], v) for k, v in self.idle_dollars.items()]
        for rtype, (labels, _, gauges, counters) in FAMILIES.items():
            for kind, table in ((GaugeMetricFamily, gauges), (CounterMetricFamily, counters)):
                for name, help_text, field in table:
                    fam = kind(name, help_text, labels=list(labels))
                    for values, record in latest[rtype]:
                        v = getattr(record, field)
                        if v is not None:
                            fam.add_metric(list(values), float(v))
                    yield fam
        fam = CounterMetricFamily(
            "observer_gpu_idle_dollars",
            "Dollars spent on this GPU while it was idle.",
            labels=list(GPU_LABELS),
        )
        for values, dollars in idle:
            fam.add_metric(values, dollars)
        yield fam
