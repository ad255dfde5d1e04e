"""The Prometheus-side GPU collector against a real Prometheus scraping DCGM exporter, vLLM,
SGLang and kube-state-metrics exposition fixtures (tests/fixtures/gpu/*.prom).

Counters in the fixtures grow at known rates while Prometheus scrapes them, so every
economics figure has a value we can work out by hand from the fixture and the price table.
"""

from __future__ import annotations

import pytest

from observer.collectors.gpu.config import GPUConfig
from observer.core.records import GPUEconomics, GPUSample, ServingSample, decode, encode
from tests.gpu_support import N1, N2, PRICES

# ``scraped`` (tests/conftest.py, once per session; tests/gpu_support.py): the Prometheus,
# the collector's records of one cycle, its pipeline and the registry Prometheus scrapes.
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"
QWEN = "Qwen/Qwen2.5-7B-Instruct"


def _econ(records, scope: str, name: str) -> GPUEconomics:
    [e] = [
        r for r in records if isinstance(r, GPUEconomics) and r.scope == scope and r.name == name
    ]
    return e


def test_dcgm_samples_carry_identity_pod_and_units(scraped) -> None:
    _, records, _, _ = scraped
    gpus = {(g.node, g.gpu_uuid, g.mig_instance): g for g in records if isinstance(g, GPUSample)}
    assert len(gpus) == 6  # 3 whole H100s + 2 MIG instances on node 1, 1 H100 on node 2
    g0 = gpus[("gpu-node-1", N1 + "0", "")]
    assert (g0.pod, g0.namespace, g0.container, g0.gpu_index) == ("llama-0", "llm", "vllm", 0)
    assert g0.gpu_model == "NVIDIA H100 80GB HBM3" and g0.source == "dcgm"
    assert g0.utilization_pct == 87 and g0.temperature_c == 61 and g0.sm_clock_mhz == 1980
    assert g0.memory_used_bytes == 76512 * 2**20
    assert g0.memory_total_bytes == (76512 + 4213 + 470) * 2**20
    assert g0.power_w == pytest.approx(450, rel=0.02)  # the energy counter's rate
    assert g0.profiling["DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"] == pytest.approx(0.312345)
    assert g0.capacity_type == "on-demand" and g0.cost_per_s == pytest.approx(4.0 / 3600)
    # The newer exporter's lowercase "hostname", and the spot label from kube-state-metrics.
    n2 = gpus[("gpu-node-2", N2, "")]
    assert n2.capacity_type == "spot" and n2.cost_per_s == pytest.approx(1.6 / 3600)
    mig = gpus[("gpu-node-1", N1 + "3", "1")]
    assert (mig.mig_profile, mig.pod) == ("3g.40gb", "qwen-0")
    assert mig.fraction == pytest.approx(3 / 7) and mig.cost_per_s == pytest.approx(
        4.0 * 3 / 7 / 3600
    )
    assert mig.utilization_pct == pytest.approx(64.31)  # from DCGM_FI_PROF_GR_ENGINE_ACTIVE
    assert mig.power_w == pytest.approx(280 * 3 / 7, rel=0.02)
    # Every record survives its own schema.
    for r in records:
        assert decode(encode(r)) == r


def test_serving_samples_from_vllm_and_sglang(scraped) -> None:
    _, records, _, _ = scraped
    serving = {(s.engine, s.pod): s for s in records if isinstance(s, ServingSample)}
    assert set(serving) == {("vllm", "llama-0"), ("vllm", "llama-1"), ("sglang", "qwen-0")}
    l0, l1, q0 = serving["vllm", "llama-0"], serving["vllm", "llama-1"], serving["sglang", "qwen-0"]
    assert l0.model == LLAMA and l0.namespace == "llm" and l0.window_s == 5
    assert l0.prompt_tokens_per_s == pytest.approx(2000, rel=0.03)
    assert l0.generation_tokens_per_s == pytest.approx(1000, rel=0.03)
    assert (l0.requests_running, l0.requests_waiting, l0.kv_cache_usage) == (24, 3, 0.4375)
    assert l0.ttft_mean_s == pytest.approx(0.05, rel=0.03)
    assert l0.itl_mean_s == pytest.approx(0.018, rel=0.03)
    assert l0.e2e_mean_s == pytest.approx(4.0, rel=0.03)
    # The deprecated names fill in where the current ones are absent.
    assert l1.kv_cache_usage == 0.4375 and l1.itl_mean_s == pytest.approx(0.02, rel=0.03)
    assert l1.e2e_mean_s is None  # the counter does not move: no requests, no mean
    assert q0.model == QWEN and q0.requests_running == 9 and q0.kv_cache_usage == 0.21
    assert q0.generation_tokens_per_s == pytest.approx(600, rel=0.03)


def test_economics_per_model_pod_and_gpu(scraped) -> None:
    _, records, _, _ = scraped
    llama = _econ(records, "model", LLAMA)
    # 3 H100s: two on-demand at $4/h, one spot at $1.6/h; 4500 tokens/s; 450+450+300 W.
    cost_per_s = (4.0 + 4.0 + 1.6) / 3600
    assert llama.tokens_per_s == pytest.approx(4500, rel=0.03)
    assert llama.cost_per_s == pytest.approx(cost_per_s)
    assert llama.gpu_fraction == pytest.approx(3.0) and len(llama.gpus) == 3
    assert llama.tokens_per_dollar == pytest.approx(4500 / cost_per_s, rel=0.03)
    assert llama.tokens_per_dollar_per_second == pytest.approx(4500 / 9.6, rel=0.03)
    assert llama.tokens_per_joule == pytest.approx(4500 / 1200, rel=0.04)
    assert llama.cost_per_million_tokens == pytest.approx(cost_per_s / 4500 * 1e6, rel=0.03)
    assert not llama.idle and llama.idle_cost_per_s == 0

    qwen = _econ(records, "model", QWEN)  # one 3g.40gb slice: 3/7 of an H100's price and power
    assert qwen.tokens_per_s == pytest.approx(1000, rel=0.03)
    assert qwen.cost_per_s == pytest.approx(4.0 * 3 / 7 / 3600)
    assert qwen.tokens_per_joule == pytest.approx(1000 / 120, rel=0.04)

    pod = _econ(records, "pod", "llm/llama-0")  # tensor parallel 2: both GPUs, both costs
    assert pod.tokens_per_s == pytest.approx(3000, rel=0.03) and pod.cost_per_s == pytest.approx(
        8 / 3600
    )
    gpu0 = _econ(records, "gpu", f"gpu-node-1/{N1}0")
    assert gpu0.tokens_per_s == pytest.approx(1500, rel=0.03)  # half the pod's tokens


def test_idle_gpus_are_waste_not_zero(scraped) -> None:
    _, records, _, _ = scraped
    idle = _econ(records, "gpu", f"gpu-node-1/{N1}2")  # allocated to nobody
    assert idle.idle and idle.tokens_per_dollar == 0
    assert (
        idle.idle_cost_per_s == pytest.approx(4.0 / 3600) and idle.cost_per_million_tokens is None
    )
    slice_ = _econ(records, "gpu", f"gpu-node-1/{N1}3/9")  # the unused 1g.10gb MIG instance
    assert slice_.idle and slice_.idle_cost_per_s == pytest.approx(4.0 / 7 / 3600)
    busy = _econ(records, "gpu", f"gpu-node-1/{N1}0")
    assert not busy.idle and busy.idle_cost_per_s == 0


def test_prometheus_scrapes_our_economics_metrics(scraped) -> None:
    prom, records, pipeline, _ = scraped
    prom.wait_for_scrapes(9)  # at least one scrape after the records were observed
    by_name = {
        r["metric"]["name"]: float(r["value"][1])
        for r in prom.query('observer_gpu_economics_tokens_per_joule{scope="model"}')
    }
    expected = _econ(records, "model", LLAMA).tokens_per_joule
    assert by_name[LLAMA] == pytest.approx(expected)
    idle = prom.query('observer_gpu_economics_idle_cost_dollars_per_second{scope="gpu"} > 0')
    assert {r["metric"]["name"] for r in idle} == {f"gpu-node-1/{N1}2", f"gpu-node-1/{N1}3/9"}
    util = prom.query('observer_gpu_utilization_percent{node="gpu-node-2"}')
    assert [float(r["value"][1]) for r in util] == [72.0]


def test_collect_gpu_command_reads_prometheus(scraped) -> None:
    """One cycle of `observer collect-gpu --source prometheus --stdout`, in process."""
    import io

    from observer.collectors.gpu.run import run_collect_gpu
    from observer.config import ObserverConfig
    from observer.core.config import AdminConfig

    prom = scraped[0]
    cfg = ObserverConfig(
        admin=AdminConfig(port=0),
        gpu=GPUConfig(prometheus_url=prom.url, rate_window="5s", prices=PRICES),
    )
    out, err = io.StringIO(), io.StringIO()
    rc = run_collect_gpu(cfg, source="prometheus", stdout=True, duration_s=0, out=out, err=err)
    assert rc == 0, err.getvalue()
    records = [decode(line) for line in out.getvalue().splitlines()]
    schemas = {r.schema_id for r in records}
    assert schemas == {"observer.gpu/v1", "observer.serving/v1", "observer.gpu-economics/v1"}
    assert "metrics on http://127.0.0.1:" in err.getvalue()
