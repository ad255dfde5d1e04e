"""The ``observer`` command.

    observer [--config observer.yaml] up          every stage in one process
    observer [--config observer.yaml] collect     OTLP receiver only (likewise normalize, drift, trigger)
    observer [--config observer.yaml] demo        the whole loop on a synthetic support agent
    observer drift score --reference REF --current CUR [...]   offline drift scoring of files
    observer [--config observer.yaml] config      print the effective configuration (secrets masked)
    observer [--config observer.yaml] pipeline render --out DIR   the retraining WorkflowTemplate
    observer [--config observer.yaml] triggers list               decisions and deliveries
    observer [--config observer.yaml] triggers approve|reject EPISODE   release or cancel held actions
    observer [--config observer.yaml] collect-gpu GPU metrics and economics (NVML, Prometheus, --replay)
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from observer.core.config import ConfigError, ObserverConfig, load_config

STAGE_HELP = {
    "up": "run every stage in one process (embedded broker unless Kafka is configured)",
    "collect": "run the OTLP receivers (HTTP :4318, gRPC :4317) and the KServe logger intake",
    "normalize": "run the normaliser (otlp_spans -> observer.llm, observer.tools)",
    "paths": "run trace grouping (otlp_spans -> observer.paths)",
    "genai-metrics": "normalise gen_ai.* metrics (otlp_metrics -> observer.genai-metrics)",
    "predictions": "pair KServe logger events (observer.kserve-events -> observer.predictions)",
    "drift": "run the drift engine (observer.llm, observer.tools -> observer.drift)",
    "trigger": "run the trigger stage (observer.drift -> webhooks, ledger, observer.triggers)",
    "metrics": "run the domain-metrics stage (observer.llm, .tools, .paths -> /metrics)",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="observer", description="Drift-to-retraining for AI workloads.")
    p.add_argument("--config", type=Path, help="YAML configuration file (env: OBSERVER_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in STAGE_HELP.items():
        stage = sub.add_parser(name, help=text, description=text)
        if name == "drift":
            from observer.drift.commands import add_parsers as add_drift_parsers

            add_drift_parsers(stage)  # `drift score`; plain `observer drift` runs the stage
    demo = sub.add_parser("demo", help="run the loop end to end on a synthetic agent")
    demo.add_argument("--conversations", type=int, default=2000,
                      help="conversations per phase (baseline, then drifted)")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the loop")
    sub.add_parser("config", help="print the effective configuration as JSON (secrets masked)")
    from observer.triggers.commands import add_parsers as add_trigger_parsers

    add_trigger_parsers(sub)  # pipeline render, triggers list
    gpu = sub.add_parser(
        "collect-gpu",
        help="GPU and serving metrics and GPU economics (NVML on this node, or Prometheus)",
        description="Sample GPUs through NVML (gpu.source=nvml, a DaemonSet) or read DCGM and "
        "vLLM/SGLang series from Prometheus (gpu.source=prometheus); write observer.gpu and "
        "serve /metrics on the admin address. --replay feeds a recorded NVML trace instead.",
    )
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
    return p


def _serve(cfg: ObserverConfig, stages: list[str]) -> int:
    from observer.runtime import ALL_STAGES, Runtime

    runtime = Runtime(cfg, stages)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        logging.getLogger("observer").info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    runtime.start()
    try:
        print(f"observer running: {', '.join(stages) if stages != ALL_STAGES else 'all stages'}")
        for name, url in runtime.endpoints().items():
            print(f"  {name:10} {url}")
        sys.stdout.flush()
        while not stop.wait(0.5):
            if runtime.stop_event.is_set():
                # Only a permanent failure stops the runtime (errors restart the stage).
                for name, why in runtime.errors().items():
                    print(f"observer: stage {name} failed permanently: {why}", file=sys.stderr)
                return 1
        return 0
    finally:
        runtime.stop()


def _collect_gpu(cfg: ObserverConfig, args: argparse.Namespace) -> int:
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"observer: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=cfg.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if logging.getLogger().level > logging.DEBUG:
        # kafka-python and httpx narrate every connection and request at INFO.
        for noisy in ("kafka", "httpx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # kafka-python's I/O thread warns when one of its tasks ran past 100 ms: in `observer
        # up` that is the GIL held by a receiver or a stage, not a stuck client.
        logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
    if args.command == "config":
        print(json.dumps(cfg.model_dump(mode="json"), indent=2))
        return 0
    from observer.triggers.commands import COMMANDS as TRIGGER_COMMANDS

    if args.command in TRIGGER_COMMANDS:
        from observer.triggers.commands import run as run_trigger_command

        return run_trigger_command(cfg, args)
    if args.command == "collect-gpu":
        return _collect_gpu(cfg, args)
    if args.command == "drift" and getattr(args, "drift_command", None) == "score":
        from observer.drift.commands import run_command as run_drift_command

        return run_drift_command(cfg, args)
    if args.command == "demo":
        from observer.demo.run import run_demo

        return run_demo(cfg, conversations=args.conversations, seed=args.seed, timeout_s=args.timeout)
    from observer.runtime import ALL_STAGES  # imports every stage: only where they run

    stages = ALL_STAGES if args.command == "up" else [args.command]
    try:
        return _serve(cfg, stages)
    except Exception as e:  # start-up failures: say what, not a traceback
        print(f"observer: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
