"""The online embedding detectors (``online_mmd``, ``online_lsdd``): false-alarm calibration and
detection delay, on Gaussian vectors and on real text with a meaning-only shift.

* ``calibration``: no-change Gaussian streams; the mean run time to a false detection should
  be the configured ERT (run times are geometric, so its standard error is about
  ERT / sqrt(streams)).
* ``text``: prompts of :mod:`observer.demo.python_docs` (CPython's help topics) embedded by
  observer's default embedder. No-change streams give the run time on real vectors; then a
  share of the prompts moves to another subject, each length-matched to the prompt it
  replaces, and the delay is the records until the detector fires (capped at the stream).

    .venv/bin/python -m benchmarks.online_drift [--streams 30] [--ert 1000] [--window 50]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterable
from functools import partial

import numpy as np

from observer.drift.embedding.online_window import DETECTORS


def run_length(make: Callable[[], object], rows: Iterable[np.ndarray], cap: int) -> int:
    """Records until the detector fires (``cap`` when it does not)."""
    det = make()
    return next((i for i, x in enumerate(rows, 1) if det.update(x).drift_detected), cap)


def calibration(args: argparse.Namespace) -> None:
    print("| detector | ERT | d | W | reference | streams | mean run time | s |")
    print("|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(args.seed)
    for name, (calibrate, cls) in DETECTORS.items():
        t0 = time.perf_counter()
        cal = calibrate(rng.normal(size=(args.reference, args.dims)), args.ert, args.window,
                        args.bootstraps, args.seed)
        cap = 10 * int(args.ert)
        runs = [run_length(partial(cls, calibration=cal), rng.normal(size=(cap, args.dims)), cap)
                for _ in range(args.streams)]
        print(f"| {name} | {args.ert:g} | {args.dims} | {args.window} | {args.reference} | "
              f"{args.streams} | {np.mean(runs):.0f} | {time.perf_counter() - t0:.0f} |",
              flush=True)


def text(args: argparse.Namespace) -> None:
    from observer.collectors.normalize.embedders.hashing import HashingEmbedder
    from observer.demo import python_docs as corpus

    rng = np.random.default_rng(args.seed)
    control, data = corpus.prose(corpus.CONTROL), corpus.prose(corpus.DATA)
    embed = HashingEmbedder().embed
    ref = embed([p for p, _ in corpus.stream(control, args.reference, rng)])
    shares = (1.0, 0.5, 0.3)
    head = " | ".join(f"{s:.0%} moved: delay median (max)" for s in shares)
    print(f"| detector | no change: mean run time (censored at {3 * int(args.ert)}) | {head} |")
    print("|---|---|" + "---|" * len(shares))
    for name, (calibrate, cls) in DETECTORS.items():
        cal = calibrate(ref, args.ert, args.window, args.bootstraps, args.seed)
        cap = 3 * int(args.ert)
        runs = [run_length(partial(cls, calibration=cal),
                           embed([p for p, _ in corpus.stream(control, cap, rng)]), cap)
                for _ in range(args.streams)]
        censored = sum(r == cap for r in runs)
        cells = []
        for share in shares:
            delays = []
            for _ in range(args.streams // 2):
                base = corpus.stream(control, 600, rng)
                k = int(share * len(base))
                moved = corpus.matched_stream(base[:k], data, rng) + base[k:]
                prompts = [moved[i][0] for i in rng.permutation(len(moved))]
                delays.append(run_length(partial(cls, calibration=cal), embed(prompts), 600))
            cells.append(f"{np.median(delays):.0f} ({max(delays)})")
        print(f"| {name} | {np.mean(runs):.0f} ({censored} of {len(runs)}) | "
              f"{' | '.join(cells)} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("calibration", "text", "both"), default="both")
    p.add_argument("--streams", type=int, default=30)
    p.add_argument("--ert", type=float, default=1000.0)
    p.add_argument("--window", type=int, default=50)
    p.add_argument("--bootstraps", type=int, default=4000)
    p.add_argument("--reference", type=int, default=1000)
    p.add_argument("--dims", type=int, default=8, help="calibration: Gaussian dimensions")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.part in ("calibration", "both"):
        calibration(args)
    if args.part in ("text", "both"):
        text(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
