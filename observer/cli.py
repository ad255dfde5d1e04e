"""The ``observer`` command.

    observer [--config observer.yaml] up          every stage in one process
    observer [--config observer.yaml] collect     OTLP receiver only (likewise normalize, drift, trigger)
    observer [--config observer.yaml] demo        the whole loop on a synthetic support agent
    observer [--config observer.yaml] config      print the effective configuration (secrets masked)
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
    "collect": "run the OTLP receiver (HTTP :4318)",
    "normalize": "run the normaliser (otlp_spans -> observer.llm, observer.tools)",
    "drift": "run the drift engine (observer.llm, observer.tools -> observer.drift)",
    "trigger": "run the trigger stage (observer.drift -> webhooks, ledger, observer.triggers)",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="observer", description="Drift-to-retraining for AI workloads.")
    p.add_argument("--config", type=Path, help="YAML configuration file (env: OBSERVER_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in STAGE_HELP.items():
        sub.add_parser(name, help=text, description=text)
    demo = sub.add_parser("demo", help="run the loop end to end on a synthetic agent")
    demo.add_argument("--conversations", type=int, default=1500,
                      help="conversations per phase (baseline, then drifted)")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the loop")
    sub.add_parser("config", help="print the effective configuration as JSON (secrets masked)")
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
                print(f"a stage failed: {runtime.errors()}", file=sys.stderr)
                return 1
        return 0
    finally:
        runtime.stop()


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
    from observer.runtime import ALL_STAGES

    if args.command == "config":
        print(json.dumps(cfg.model_dump(mode="json"), indent=2))
        return 0
    if args.command == "demo":
        from observer.demo.run import run_demo

        return run_demo(cfg, conversations=args.conversations, seed=args.seed, timeout_s=args.timeout)
    stages = ALL_STAGES if args.command == "up" else [args.command]
    try:
        return _serve(cfg, stages)
    except Exception as e:  # start-up failures: say what, not a traceback
        print(f"observer: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
