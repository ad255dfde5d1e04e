"""The ``observer`` command.

    observer [--config observer.yaml] up [--workers N]   every stage (in N processes: one per core)
    observer [--config observer.yaml] collect     OTLP receiver only (likewise normalize, drift, trigger)
    observer [--config observer.yaml] demo        the whole loop on a synthetic support agent
    observer drift score --reference REF --current CUR [...]   offline drift scoring of files
    observer [--config observer.yaml] config      print the effective configuration (secrets masked)
    observer [--config observer.yaml] pipeline render --out DIR   the retraining WorkflowTemplate
    observer [--config observer.yaml] triggers list               decisions and deliveries
    observer [--config observer.yaml] triggers approve|reject EPISODE   release or cancel held actions
    observer [--config observer.yaml] references list|show|pin|unpin|rebaseline   drift references
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

from observer.config import ObserverConfig, load_config
from observer.core.config import ConfigError
from observer.core.extras import MissingExtra

UP_HELP = ("run every stage, shared between --workers processes (embedded broker unless "
           "Kafka is configured)")


def _parser() -> argparse.ArgumentParser:
    # Each stage's subcommand and help come from its spec (observer.stages), topics included.
    from observer.core.config import KafkaConfig
    from observer.core.topics import Topics
    from observer.stages import STAGES

    topics = Topics.from_config(KafkaConfig())  # the default names (topic_prefix "observer.")
    p = argparse.ArgumentParser(prog="observer", description="Drift-to-retraining for AI workloads.")
    p.add_argument("--config", type=Path, help="YAML configuration file (env: OBSERVER_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help=UP_HELP, description=UP_HELP)
    up.add_argument("--workers", type=int, metavar="N",
                    help="processes to share the stages between (config: workers; default: "
                    "one per core, at most 4; 1: everything in one process)")
    for spec in STAGES:
        text = spec.summary(topics)
        stage = sub.add_parser(spec.name, help=text,
                               description=f"{text}. {spec.description}".rstrip(". ") + ".")
        if spec.add_arguments is not None:
            spec.add_arguments(stage)
    demo = sub.add_parser("demo", help="run the loop end to end on a synthetic agent")
    demo.add_argument("--conversations", type=int, default=2000,
                      help="conversations per phase (baseline, then drifted)")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the loop")
    sub.add_parser("config", help="print the effective configuration as JSON (secrets masked)")
    from observer.triggers.commands import add_parsers as add_trigger_parsers

    add_trigger_parsers(sub)  # pipeline render, triggers list
    from observer.drift.reference_cli import add_parsers as add_reference_parsers

    add_reference_parsers(sub)  # references list|show|pin|unpin|rebaseline
    return p


def _serve(cfg: ObserverConfig, stages: list[str], workers: int = 1) -> int:
    from observer.runtime import ALL_STAGES, Runtime

    runtime = Runtime(cfg, stages, workers)
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
                    what = f"stage {name}" if name in stages else name  # or a worker
                    print(f"observer: {what} failed permanently: {why}", file=sys.stderr)
                return 1
        return 0
    finally:
        runtime.stop()


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except MissingExtra as e:  # a feature asked for without its extra: one line, no traceback
        print(f"observer: {e}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None) -> int:
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

    if args.command == "references":
        from observer.drift.reference_cli import run as run_reference_command

        return run_reference_command(cfg, args)
    if args.command in TRIGGER_COMMANDS:
        from observer.triggers.commands import run as run_trigger_command

        return run_trigger_command(cfg, args)
    from observer.stages import BY_NAME

    spec = BY_NAME.get(args.command)
    if spec is not None and spec.command is not None:  # collect-gpu: runs on its own
        return spec.command(cfg, args)
    if args.command == "drift" and getattr(args, "drift_command", None) == "score":
        from observer.drift.commands import run_command as run_drift_command

        return run_drift_command(cfg, args)
    if args.command == "demo":
        from observer.demo.run import run_demo

        return run_demo(cfg, conversations=args.conversations, seed=args.seed, timeout_s=args.timeout)
    from observer.runtime import ALL_STAGES  # imports every stage: only where they run

    stages = ALL_STAGES if args.command == "up" else [args.command]
    workers = 1
    if args.command == "up":
        from observer.worker_plan import default_workers

        if args.workers is not None and args.workers < 1:
            print(f"observer: --workers must be at least 1, not {args.workers}", file=sys.stderr)
            return 2
        workers = args.workers or cfg.workers or default_workers()
    try:
        return _serve(cfg, stages, workers)
    except MissingExtra:
        raise  # exit 2, as for a configuration error
    except Exception as e:  # start-up failures: say what, not a traceback
        print(f"observer: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
