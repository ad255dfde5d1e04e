"""The cluster-side collector: DCGM exporter and vLLM/SGLang series, read from Prometheus
with ``prometheus-api-client``, joined per pod into GPU, pod and model economics.

Join: a serving series (vLLM ``model_name``) and a DCGM series meet on ``namespace`` and
``pod`` (DCGM exporter's pod attribution, and the usual Kubernetes service-discovery
relabelling on the engine's scrape). A pod's tokens are split evenly over its GPUs.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from observer.collectors.gpu.economics import figures, to_record
from observer.collectors.gpu.prices import mig_fraction, normalise_capacity
from observer.collectors.gpu.config import GPUConfig
from observer.core.extras import require
from observer.core.records import GPUEconomics, GPUSample, Record, ServingSample

if TYPE_CHECKING:
    from prometheus_api_client import PrometheusConnect

PROMETHEUS_FEATURE = "The GPU collector's Prometheus source (collect-gpu, gpu.source: prometheus)"
"""What needs ``prometheus-api-client`` (the ``gpu`` extra)."""

MIB = 1024 * 1024

# DCGM exporter field -> (GPUSample field, scale to our unit).
DCGM_FIELDS: dict[str, tuple[str, float]] = {
    "DCGM_FI_DEV_GPU_UTIL": ("utilization_pct", 1.0),
    "DCGM_FI_DEV_MEM_COPY_UTIL": ("memory_util_pct", 1.0),
    "DCGM_FI_DEV_FB_USED": ("memory_used_bytes", MIB),
    "DCGM_FI_DEV_POWER_USAGE": ("power_w", 1.0),
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": ("energy_j", 1e-3),
    "DCGM_FI_DEV_GPU_TEMP": ("temperature_c", 1.0),
    "DCGM_FI_DEV_SM_CLOCK": ("sm_clock_mhz", 1.0),
}
# Frame buffer total = used + free + reserved (MiB), each a separate DCGM field.
DCGM_FB_PARTS = ("DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_RESERVED")
_DCGM_NAMES = "|".join([*DCGM_FIELDS, "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_RESERVED", "DCGM_FI_PROF_.+"])
DCGM_QUERY = f'{{__name__=~"{_DCGM_NAMES}"}}'
ENERGY_RATE_QUERY = "rate(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION[{window}])"


@dataclass(frozen=True)
class EngineField:
    """One ServingSample field: how to read it, and the metric names, newest first."""

    kind: str  # "rate" (counter), "gauge", or "mean" (histogram sum rate / count rate)
    names: tuple[str, ...]


ENGINES: dict[str, dict[str, EngineField]] = {
    "vllm": {
        "prompt_tokens_per_s": EngineField("rate", ("vllm:prompt_tokens_total",)),
        "generation_tokens_per_s": EngineField("rate", ("vllm:generation_tokens_total",)),
        "requests_running": EngineField("gauge", ("vllm:num_requests_running",)),
        "requests_waiting": EngineField("gauge", ("vllm:num_requests_waiting",)),
        # vllm:gpu_cache_usage_perc is the deprecated name of the same figure.
        "kv_cache_usage": EngineField(
            "gauge", ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
        ),
        "ttft_mean_s": EngineField("mean", ("vllm:time_to_first_token_seconds",)),
        "itl_mean_s": EngineField(
            "mean", ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds")
        ),
        "e2e_mean_s": EngineField("mean", ("vllm:e2e_request_latency_seconds",)),
    },
    "sglang": {
        "prompt_tokens_per_s": EngineField("rate", ("sglang:prompt_tokens_total",)),
        "generation_tokens_per_s": EngineField("rate", ("sglang:generation_tokens_total",)),
        "requests_running": EngineField("gauge", ("sglang:num_running_reqs",)),
        "requests_waiting": EngineField("gauge", ("sglang:num_queue_reqs",)),
        "kv_cache_usage": EngineField("gauge", ("sglang:token_usage",)),
        "ttft_mean_s": EngineField("mean", ("sglang:time_to_first_token_seconds",)),
        "itl_mean_s": EngineField(
            "mean", ("sglang:inter_token_latency_seconds", "sglang:time_per_output_token_seconds")
        ),
        "e2e_mean_s": EngineField("mean", ("sglang:e2e_request_latency_seconds",)),
    },
}
SERVING_BY = ("model_name", "namespace", "pod", "instance")

# kube-state-metrics node label -> value -> capacity type (Karpenter, EKS, GKE, AKS).
CAPACITY_LABELS: dict[str, Callable[[str], str | None]] = {
    "label_karpenter_sh_capacity_type": lambda v: normalise_capacity(v),
    "label_eks_amazonaws_com_capacity_type": lambda v: normalise_capacity(v),
    "label_cloud_google_com_gke_spot": lambda v: "spot" if v == "true" else None,
    "label_kubernetes_azure_com_scalesetpriority": lambda v: "spot" if v == "spot" else None,
}

_DURATION = re.compile(r"^([0-9]+)(ms|s|m|h)$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def window_seconds(window: str) -> float:
    """Seconds in a PromQL duration.

    >>> window_seconds("1m"), window_seconds("30s"), window_seconds("500ms")
    (60.0, 30.0, 0.5)
    """
    m = _DURATION.match(window)
    if m is None:
        raise ValueError(f"not a PromQL duration: {window!r}")
    return int(m.group(1)) * _UNIT_S[m.group(2)]


def _value(result: dict[str, Any]) -> tuple[float, float | None]:
    ts, raw = result["value"]
    v = float(raw)
    return float(ts), (None if math.isnan(v) or math.isinf(v) else v)


def _hostname(labels: dict[str, str]) -> str:
    # DCGM exporter renamed Hostname to hostname in May 2026; accept both.
    return labels.get("Hostname") or labels.get("hostname") or labels.get("node") or ""


class PrometheusCollector:
    """Query Prometheus; return GPU samples, serving samples and economics records.

    ``price`` is the pipeline's pricer (:meth:`observer.collectors.gpu.pipeline.GPUPipeline.price`),
    called with whether the GPU's pod processed tokens.
    """

    def __init__(
        self,
        cfg: GPUConfig,
        price: Callable[[GPUSample, bool], GPUSample],
        client: PrometheusConnect | None = None,
    ) -> None:
        self.cfg = cfg
        self.price = price
        self.window_s = window_seconds(cfg.rate_window)
        headers = (
            {"Authorization": f"Bearer {cfg.prometheus_token.get_secret_value()}"}
            if cfg.prometheus_token
            else None
        )
        if client is None:
            api = require("prometheus_api_client", extra="gpu", feature=PROMETHEUS_FEATURE)
            client = api.PrometheusConnect(url=cfg.prometheus_url, headers=headers)
        self.client = client

    def query(self, promql: str) -> list[dict[str, Any]]:
        return self.client.custom_query(promql)

    # -- serving -------------------------------------------------------------------------
    def _field_promql(self, f: EngineField, name: str) -> str:
        by = ", ".join(SERVING_BY)
        w = self.cfg.rate_window
        if f.kind == "rate":
            return f"sum by ({by}) (rate({name}[{w}]))"
        if f.kind == "gauge":
            return f"sum by ({by}) ({name})"
        return f"sum by ({by}) (rate({name}_sum[{w}])) / sum by ({by}) (rate({name}_count[{w}]))"

    def serving(self) -> list[ServingSample]:
        out = []
        for engine, fields in ENGINES.items():
            rows: dict[tuple[str, ...], dict[str, Any]] = {}
            for field, spec in fields.items():
                for name in spec.names:  # newest name first; older names fill the gaps
                    for r in self.query(self._field_promql(spec, name)):
                        key = tuple(r["metric"].get(k, "") for k in SERVING_BY)
                        ts, v = _value(r)
                        row = rows.setdefault(key, {"_ts": ts})
                        if row.get(field) is None:
                            row[field] = v
            for key, row in rows.items():
                labels = dict(zip(SERVING_BY, key))
                ts = row.pop("_ts")
                out.append(
                    ServingSample(
                        engine=engine,
                        model=labels["model_name"],
                        pod=labels["pod"],
                        namespace=labels["namespace"],
                        instance=labels["instance"],
                        time_unix_nano=int(ts * 1e9),
                        window_s=self.window_s,
                        **row,
                    )
                )
        return out

    # -- GPUs ----------------------------------------------------------------------------
    def capacity_by_node(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for r in self.query("kube_node_labels"):
            labels = r["metric"]
            for label, fold in CAPACITY_LABELS.items():
                value = labels.get(label)
                capacity = fold(value) if value else None
                if capacity and labels.get("node"):
                    out[labels["node"]] = capacity
                    break
        return out

    def gpus(self) -> list[GPUSample]:
        """Unpriced DCGM samples, one per (host, GPU, MIG instance, pod)."""
        ident = ("Hostname", "hostname", "UUID", "GPU_I_ID", "pod", "namespace", "container")
        rows: dict[tuple[str, ...], dict[str, Any]] = {}
        for r in self.query(DCGM_QUERY):
            labels = r["metric"]
            key = tuple(labels.get(k, "") for k in ident)
            row = rows.setdefault(key, {"labels": labels, "values": {}, "prof": {}, "ts": 0.0})
            ts, v = _value(r)
            row["ts"] = max(row["ts"], ts)
            name = labels["__name__"]
            if v is None:
                continue
            if name.startswith("DCGM_FI_PROF_"):
                row["prof"][name] = v
            else:
                row["values"][name] = v
        energy_rate = {
            tuple(r["metric"].get(k, "") for k in ident): _value(r)[1]
            for r in self.query(ENERGY_RATE_QUERY.format(window=self.cfg.rate_window))
        }
        out = []
        for key, row in rows.items():
            labels, values = row["labels"], row["values"]
            fields = {
                DCGM_FIELDS[n][0]: v * DCGM_FIELDS[n][1]
                for n, v in values.items()
                if n in DCGM_FIELDS
            }
            if "memory_used_bytes" in fields:
                fields["memory_used_bytes"] = int(fields["memory_used_bytes"])
            if all(p in values for p in DCGM_FB_PARTS[:2]):
                fields["memory_total_bytes"] = int(
                    sum(values.get(p, 0.0) for p in DCGM_FB_PARTS) * MIB
                )
            # Average power over the rate window, from the energy counter, when it moves.
            rate_mj = energy_rate.get(key)
            if rate_mj is not None and rate_mj > 0:
                fields["power_w"] = rate_mj / 1000.0
            # MIG instances have no DCGM_FI_DEV_GPU_UTIL; the graphics engine's activity is
            # the same idea as a 0-1 ratio.
            if "utilization_pct" not in fields and "DCGM_FI_PROF_GR_ENGINE_ACTIVE" in row["prof"]:
                fields["utilization_pct"] = row["prof"]["DCGM_FI_PROF_GR_ENGINE_ACTIVE"] * 100.0
            profile = labels.get("GPU_I_PROFILE", "")
            if profile:
                fraction = mig_fraction(profile, self.cfg.mig_fractions)
                # Power and energy are the whole device's on every instance: each slice is
                # charged its share, so slices of one GPU add up to the device.
                for f in ("power_w", "energy_j"):
                    if f in fields:
                        fields[f] *= fraction
            elif self.cfg.time_slice_replicas > 1 and labels.get("pod"):
                fraction = 1.0 / self.cfg.time_slice_replicas
            else:
                fraction = 1.0
            gpu = labels.get("gpu", "")
            out.append(
                GPUSample(
                    source="dcgm",
                    node=_hostname(labels),
                    gpu_uuid=labels.get("UUID", ""),
                    gpu_index=int(gpu) if gpu.isdigit() else None,
                    gpu_model=labels.get("modelName", ""),
                    mig_instance=labels.get("GPU_I_ID", ""),
                    mig_profile=profile,
                    fraction=fraction,
                    pod=labels.get("pod", ""),
                    namespace=labels.get("namespace", ""),
                    container=labels.get("container", ""),
                    time_unix_nano=int(row["ts"] * 1e9),
                    profiling=row["prof"],
                    **fields,
                )
            )
        return out

    # -- everything, joined --------------------------------------------------------------
    def collect(self) -> list[Record]:
        serving = self.serving()
        capacity = self.capacity_by_node()
        raw = self.gpus()
        kinds = self.cfg.token_kinds

        def tokens_per_s(s: ServingSample) -> float:
            return sum(getattr(s, f"{k}_tokens_per_s") or 0.0 for k in kinds)

        pod_tokens: dict[tuple[str, str], float] = defaultdict(float)
        pod_model: dict[tuple[str, str], str] = {}
        for s in serving:
            if s.pod:
                pod_tokens[(s.namespace, s.pod)] += tokens_per_s(s)
                pod_model[(s.namespace, s.pod)] = s.model
        pod_gpu_count: dict[tuple[str, str], int] = defaultdict(int)
        for g in raw:
            if g.pod:
                pod_gpu_count[(g.namespace, g.pod)] += 1

        now = max([g.time_unix_nano for g in raw] + [s.time_unix_nano for s in serving] + [0])
        w = self.window_s
        gpus: list[GPUSample] = []
        economics: list[GPUEconomics] = []
        # (scope, name) -> [tokens/s, cost/s or None, watts or None, gpu ids, fraction]
        groups: dict[tuple[str, str], list[Any]] = {}

        def add(
            scope: str,
            name: str,
            tok: float,
            cost: float | None,
            watts: float | None,
            ids: list[str],
            fraction: float,
        ) -> None:
            g = groups.setdefault((scope, name), [0.0, 0.0, 0.0, [], 0.0, True, True])
            g[0] += tok
            g[1] = None if cost is None or g[1] is None else g[1] + cost
            g[2] = None if watts is None or g[2] is None else g[2] + watts
            g[3] += ids
            g[4] += fraction

        for g in raw:
            podkey = (g.namespace, g.pod)
            tok = pod_tokens.get(podkey, 0.0) / pod_gpu_count[podkey] if g.pod else 0.0
            if g.node in capacity:
                g = g.model_copy(update={"capacity_type": capacity[g.node]})
            priced = self.price(g, tok > 0)
            gpus.append(priced)
            gid = "/".join(p for p in (priced.node, priced.gpu_uuid, priced.mig_instance) if p)
            f = figures(
                tokens=tok * w,
                window_s=w,
                cost_per_s=priced.cost_per_s,
                energy_j=None if priced.power_w is None else priced.power_w * w,
                idle=priced.idle,
            )
            economics.append(
                to_record(
                    f,
                    scope="gpu",
                    name=gid,
                    time_unix_nano=now,
                    gpus=[gid],
                    gpu_fraction=priced.fraction,
                )
            )
            if g.pod:
                add(
                    "pod",
                    f"{g.namespace}/{g.pod}",
                    tok,
                    priced.cost_per_s,
                    priced.power_w,
                    [gid],
                    priced.fraction,
                )
                if podkey in pod_model:
                    add(
                        "model",
                        pod_model[podkey],
                        tok,
                        priced.cost_per_s,
                        priced.power_w,
                        [gid],
                        priced.fraction,
                    )
        # Serving pods without a GPU series still have tokens; their cost is unknown.
        for s in serving:
            if not s.pod or (s.namespace, s.pod) not in pod_gpu_count:
                add("model", s.model, tokens_per_s(s), None, None, [], 0.0)
        for (scope, name), (tok, cost, watts, ids, fraction, *_) in sorted(groups.items()):
            f = figures(
                tokens=tok * w,
                window_s=w,
                cost_per_s=cost,
                energy_j=None if watts is None else watts * w,
            )
            economics.append(
                to_record(
                    f,
                    scope=scope,
                    name=name,
                    time_unix_nano=now,  # type: ignore[arg-type]
                    gpus=sorted(ids),
                    gpu_fraction=fraction,
                )
            )
        return [*gpus, *serving, *economics]
