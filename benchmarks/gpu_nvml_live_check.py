"""Live check of the NVML node collector on a real GPU (never part of CI).

Runs a PyTorch bf16 matmul load on GPU 0 for the middle of a ``--seconds`` window while the
collector samples every GPU through the real ``pynvml`` (cheap fields every second, slow
fields every 15 s, as deployed), then asserts the device reported non-zero utilisation and a
power rise, and prints one JSON line with the evidence.

    python benchmarks/gpu_nvml_live_check.py --seconds 60
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

from observer.collectors.gpu.nvml import NVMLSampler, NVMLUnavailable, Schedule
from observer.collectors.gpu.pipeline import GPUPipeline, ListSink
from observer.collectors.gpu.config import GPUConfig


def matmul_load(stop: threading.Event, start_after_s: float) -> dict:
    import torch

    time.sleep(start_after_s)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    n, t0 = 0, time.monotonic()
    while not stop.is_set():
        for _ in range(20):
            a @ b
        torch.cuda.synchronize()
        n += 20
    return {"matmuls": n, "seconds": time.monotonic() - t0}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=60.0)
    args = p.parse_args()
    cfg = GPUConfig(prices={"H100": {"on-demand": 4.0}, "H200": {"on-demand": 5.0}})
    sink = ListSink()
    pipeline = GPUPipeline(cfg, sink)
    try:
        sampler = NVMLSampler(cfg, "live").open()
    except NVMLUnavailable as e:
        print(json.dumps({"ok": False, "error": str(e)}))
        return 1
    stop, load_result = threading.Event(), {}
    idle_s = min(10.0, args.seconds / 6)
    loader = threading.Thread(
        target=lambda: load_result.update(matmul_load(stop, idle_s)), daemon=True
    )
    loader.start()
    schedule, t0 = Schedule(cfg.slow_interval_s), time.monotonic()
    call_s = []
    while time.monotonic() - t0 < args.seconds:
        now = time.monotonic()
        if now - t0 > args.seconds - idle_s:
            stop.set()  # the last stretch is idle again
        started = time.perf_counter()
        samples = sampler.sample(slow=schedule.slow_due(now))
        call_s.append(time.perf_counter() - started)
        pipeline.process(samples)
        time.sleep(max(cfg.sample_interval_s - (time.monotonic() - now), 0))
    stop.set()
    loader.join(30)
    sampler.close()
    gpu0 = [s for s in sink.records if s.gpu_index == 0 and not s.mig_instance]
    utils = [s.utilization_pct or 0 for s in gpu0]
    powers = [s.power_w or 0 for s in gpu0]
    energies = [s.energy_j for s in gpu0 if s.energy_j is not None]
    evidence = {
        "device": gpu0[0].gpu_model if gpu0 else None,
        "uuid": gpu0[0].gpu_uuid if gpu0 else None,
        "samples": len(gpu0),
        "util_max": max(utils, default=0),
        "util_first": utils[:3],
        "power_w_min": min(powers, default=0),
        "power_w_max": max(powers, default=0),
        "energy_readings": len(energies),
        "energy_j_delta": (energies[-1] - energies[0]) if len(energies) > 1 else None,
        "idle_samples": sum(s.idle for s in gpu0),
        "idle_dollars": pipeline.metrics.idle_dollars,
        "sample_call_ms_median": sorted(call_s)[len(call_s) // 2] * 1000 if call_s else None,
        "load": load_result,
    }
    ok = (
        bool(gpu0)
        and evidence["util_max"] > 0
        and evidence["power_w_max"] > 0
        and evidence["power_w_max"] > evidence["power_w_min"] * 1.5
    )
    print(json.dumps({"ok": ok, **evidence}, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
