"""The GPU collector (``observer collect-gpu``), as the shell's registry sees it: :data:`SPEC`.

A producer with a command of its own: it runs apart from ``observer up`` (a DaemonSet on GPU
nodes, or one Deployment reading Prometheus) and serves its own /metrics.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from observer.core.stage import StageSpec

if TYPE_CHECKING:
    from observer.config import ObserverConfig


def _add_arguments(gpu: argparse.ArgumentParser) -> None:
    gpu.add_argument("--replay", type=Path, metavar="CSV",
                     help="replay a recorded NVML trace (t_s, phase, gpu_util_pct, power_mw...), then exit")
    gpu.add_argument("--tokens", type=Path, metavar="JSON",
                     help="with --replay: tokens per phase ({phases: [{phase, new_tokens, seconds}]})")
    gpu.add_argument("--gpu-model", default="",
                     help="with --replay: the device name, for the price table (e.g. 'NVIDIA H100 80GB HBM3')")
    gpu.add_argument("--source", choices=["nvml", "prometheus"], help="override gpu.source")
    gpu.add_argument("--stdout", action="store_true",
                     help="write records as JSON lines to stdout instead of Kafka")
    gpu.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")


def _run(cfg: ObserverConfig, args: argparse.Namespace) -> int:
    from observer.collectors.gpu.run import run_collect_gpu

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return run_collect_gpu(
            cfg, replay_path=args.replay, tokens=args.tokens, gpu_model=args.gpu_model,
            source=args.source, stdout=args.stdout, duration_s=args.duration, stop=stop,
        )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


SPEC = StageSpec(
    name="collect-gpu",
    help="GPU and serving metrics and GPU economics",
    description="Sample GPUs through NVML (gpu.source=nvml, a DaemonSet) or read DCGM and "
    "vLLM/SGLang series from Prometheus (gpu.source=prometheus); write GPU samples with "
    "their economics and serve /metrics on the admin address. --replay feeds a recorded NVML "
    "trace instead.",
    config_section="gpu",
    kind="producer",
    sources=("NVML", "Prometheus"),
    outputs=("gpu",),
    add_arguments=_add_arguments,
    command=_run,
)
