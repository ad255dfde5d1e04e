"""``observer drift score``: the CLI face of :mod:`observer.drift.offline`.

``observer drift`` alone still runs the drift stage; ``observer drift score`` scores files
offline and needs no Kafka.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, get_args

from observer.drift.config import DriftMethod

if TYPE_CHECKING:  # the shell composes the configuration; stages only read it
    from observer.config import ObserverConfig

# The parser is built for every `observer` command: the statistics (scipy) load only when
# `drift score` runs.
METHOD_NAMES = list(get_args(DriftMethod))


def add_parsers(drift: argparse.ArgumentParser) -> None:
    """Add ``score`` under the ``drift`` stage's parser."""
    sub = drift.add_subparsers(dest="drift_command", metavar="{score}")
    score = sub.add_parser(
        "score",
        help="score a current file against a reference file, offline",
        description="Score CUR against REF (Parquet or CSV) with the engine's statistics: one "
        "result per segment and window. Without --features every column but the time and "
        "segment columns is scored.",
    )
    score.add_argument("--reference", required=True, metavar="REF", help="reference file")
    score.add_argument("--current", required=True, metavar="CUR", help="current file")
    windows = score.add_mutually_exclusive_group()
    windows.add_argument("--window-size", type=int, metavar="N", help="rows per count window")
    windows.add_argument("--window", metavar="DURATION",
                         help="tumbling time windows (30s, 15m, 1h, 1d); needs --time-column")
    score.add_argument("--time-column", metavar="COL", help="timestamps (ISO text or Unix seconds)")
    score.add_argument("--features", metavar="a,b,...", help="columns to score")
    score.add_argument("--segment-by", metavar="COL[,COL]", help="score each segment on its own")
    score.add_argument("--method", default="auto", choices=METHOD_NAMES,
                       help="method for every feature (default: auto, Evidently 0.7's choice)")
    score.add_argument("--threshold", type=float, metavar="X",
                       help="threshold for every feature (default: the method's)")
    score.add_argument("--drift-share", type=float, default=None, metavar="S",
                       help="dataset drift when this share of features drifted "
                       "(default: drift.drift_share)")
    score.add_argument("--report-dir", metavar="DIR",
                       help="write an Evidently HTML report of every drift episode (consecutive "
                       "drifted windows of a segment) into DIR (its path is the result's "
                       "\"report\")")
    score.add_argument("--format", choices=["jsonl", "table"], default="jsonl")


def _list(text: str | None) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()] if text else []


def run_command(cfg: ObserverConfig, args: argparse.Namespace) -> int:
    """Run ``observer drift score``; returns the exit status."""
    from observer.drift.offline import ScoreOptions, run

    options = ScoreOptions(
        window_size=args.window_size,
        window=args.window,
        time_column=args.time_column,
        features=_list(args.features) or None,
        segment_by=_list(args.segment_by),
        method=args.method,
        threshold=args.threshold,
        drift_share=args.drift_share if args.drift_share is not None else cfg.drift.drift_share,
        report_dir=args.report_dir,
    )
    progress = sys.stderr if sys.stderr.isatty() else None
    return run(args.reference, args.current, options, args.format, sys.stdout, progress)
