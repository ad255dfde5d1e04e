"""Prices, the economics formulas, idle waste, and the GPU configuration section."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from observer.collectors.gpu.economics import figures, integrate_power
from observer.collectors.gpu.pipeline import GPUPipeline, ListSink
from observer.collectors.gpu.prices import PriceTable, mig_fraction
from observer.config import load_config
from observer.collectors.gpu.config import GPUConfig
from observer.core.config import ConfigError
from observer.core.records import GPUSample


def test_price_table_matching() -> None:
    t = PriceTable(
        {
            "H100": {"on-demand": 4.0, "spot": 1.5},
            "H100 NVL": {"on-demand": 5.0},
            "a100": {"ON_DEMAND": 2.0},
        }
    )
    assert t.per_hour("NVIDIA H100 NVL", "on-demand") == 5.0  # the longer key wins
    assert t.per_hour("NVIDIA H100 80GB HBM3", "on-demand") == 4.0
    assert t.per_hour("NVIDIA A100-SXM4-80GB", "on-demand") == 2.0  # case and spelling folded
    assert t.per_hour("NVIDIA H100 80GB HBM3", "preemptible") == 1.5
    assert t.per_hour("NVIDIA H100 80GB HBM3", "reserved") is None
    assert t.per_hour("NVIDIA H100 80GB HBM3", "spot", fraction=1 / 7) == pytest.approx(1.5 / 7)
    with pytest.raises(ValueError, match=r"gpu.prices\['H100'\]\['spot'\] is negative"):
        PriceTable({"H100": {"spot": -1}})


def test_mig_fractions() -> None:
    assert mig_fraction("7g.80gb") == 1.0 and mig_fraction("2g.20gb") == pytest.approx(2 / 7)
    assert mig_fraction("1g.10gb", {"1g.10gb": 0.125}) == 0.125


def test_formulas_hold_together() -> None:
    f = figures(tokens=90_000, window_s=60, cost_per_s=2.0 / 3600, energy_j=24_000)
    assert f.tokens_per_s == 1500 and f.power_w == 400
    assert f.cost_dollars == pytest.approx(60 * 2.0 / 3600)
    assert f.tokens_per_dollar == pytest.approx(90_000 / (60 * 2.0 / 3600))
    assert f.tokens_per_dollar_per_second == pytest.approx(1500 / 2.0)  # tokens/s per $/h
    assert f.tokens_per_dollar_per_second == pytest.approx(f.tokens_per_dollar / 3600)
    assert f.tokens_per_joule == pytest.approx(90_000 / 24_000)
    assert f.cost_per_million_tokens == pytest.approx(f.cost_dollars / 90_000 * 1e6)
    assert not f.idle and f.idle_cost_per_s == 0
    # Unknown price: every dollar figure is unknown, the rest stands.
    u = figures(tokens=100, window_s=10, cost_per_s=None, energy_j=None)
    assert (
        u.tokens_per_dollar,
        u.cost_per_million_tokens,
        u.idle_cost_per_s,
        u.tokens_per_joule,
    ) == (None, None, None, None)
    with pytest.raises(ValueError, match="tokens must not be negative"):
        figures(tokens=-1, window_s=1, cost_per_s=None)


def test_power_integration_edges() -> None:
    t, w = [0.0, 1.0, 2.0, 3.0], [100.0, 100.0, 300.0, 300.0]
    assert integrate_power(t, w, 0, 3) == pytest.approx(100 + 200 + 300)
    assert integrate_power(t, w, 1.5, 1.5) == 0
    with pytest.raises(ValueError, match="before it starts"):
        integrate_power(t, w, 2, 1)


def _sample(t_s: float, util: float | None, **kw) -> GPUSample:
    return GPUSample(
        source="nvml",
        node="n1",
        gpu_uuid="GPU-1",
        gpu_model="NVIDIA H100 80GB HBM3",
        time_unix_nano=int(t_s * 1e9),
        utilization_pct=util,
        **kw,
    )


def test_idle_time_is_charged_as_waste() -> None:
    cfg = GPUConfig(prices={"H100": {"on-demand": 3.6, "spot": 1.8}}, idle_utilization_pct=5)
    pipeline = GPUPipeline(cfg, ListSink())
    reg = CollectorRegistry()
    reg.register(pipeline.metrics)
    # 0-10 s idle, 10-20 s busy, 20-30 s idle again: 20 idle seconds at $0.001/s.
    pipeline.process([_sample(0, 0), _sample(10, 3), _sample(20, 80), _sample(30, 0)])
    assert pipeline.metrics.idle_dollars == {"n1/GPU-1": pytest.approx(0.02)}
    assert [s.idle for s in pipeline.sink.records] == [True, True, False, True]
    # A spot node's sample costs the spot price; an unknown reading is not idle.
    spot = pipeline.price(_sample(40, None, capacity_type="spot"))
    assert spot.cost_per_s == pytest.approx(1.8 / 3600) and not spot.idle
    # Tokens make a GPU busy whatever its utilisation says.
    assert not pipeline.price(_sample(50, 0), tokens_seen=True).idle
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(reg).decode())}
    [waste] = families["observer_gpu_idle_dollars"].samples
    assert waste.value == pytest.approx(0.02) and waste.labels["gpu"] == "GPU-1"
    [idle] = families["observer_gpu_idle"].samples
    assert idle.value == 1.0  # the latest sample (30 s) is idle


def test_gpu_configuration_is_validated() -> None:
    cfg = load_config(
        None,
        env={
            "OBSERVER_GPU__SOURCE": "prometheus",
            "OBSERVER_GPU__PRICES": '{"H100": {"spot": 2.1}}',
            "OBSERVER_GPU__TIME_SLICE_REPLICAS": "4",
        },
    )
    assert cfg.gpu.source == "prometheus" and cfg.gpu.prices == {"H100": {"spot": 2.1}}
    assert cfg.gpu.time_slice_replicas == 4
    with pytest.raises(ConfigError, match="rate_window"):
        load_config(None, env={"OBSERVER_GPU__RATE_WINDOW": "five minutes"})
    with pytest.raises(ConfigError, match="source"):
        load_config(None, env={"OBSERVER_GPU__SOURCE": "dcgm"})
