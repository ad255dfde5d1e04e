"""Cost of each embedding drift method (and of the evidence) on one window.

The engine scores every window of every segment, so each method's time on one
reference/current pair is what a segment pays per window. Vectors are L2-normalised
256-dimensional rows (the default embedder's shape) around a few topic centres; the current
window has a novel topic, so ``explain`` has something to find. Median of ``--repeat`` runs.

    .venv/bin/python -m benchmarks.embedding_methods_cost [--reference 2000] [--current 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from observer.drift.embedding.evidence import explain
from observer.drift.embedding.methods import EMBEDDING_METHODS


def vectors(
    reference: int, current: int, dims: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, dims))
    ref = centres[rng.integers(0, 5, reference)] + 1.5 * rng.normal(size=(reference, dims))
    k = current // 5
    cur = np.vstack([centres[rng.integers(0, 5, current - k)], np.repeat(centres[5:], k, 0)])
    cur = cur + 1.5 * rng.normal(size=(current, dims))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    return unit(ref), unit(cur)


def timed(run, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=int, default=2000)
    parser.add_argument("--current", type=int, default=1000)
    parser.add_argument("--dims", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    ref, cur = vectors(args.reference, args.current, args.dims)
    print(f"reference {ref.shape[0]} x {ref.shape[1]}, current {cur.shape[0]} x {cur.shape[1]}, "
          f"median of {args.repeat}\n")
    print("| method | seconds per window | statistic | threshold | drifted |")
    print("|---|---|---|---|---|")
    for name, method in EMBEDDING_METHODS.items():
        try:
            score = method.score(ref, cur, None)
        except (ValueError, TypeError) as exc:  # e.g. a streaming method with another API
            print(f"| {name} | - | {exc} | | |")
            continue
        seconds = timed(lambda m=method: m.score(ref, cur, None), args.repeat)
        print(f"| {name} | {seconds:.3f} | {score.statistic:.4f} | {score.threshold:.4f} | "
              f"{score.drifted} |")
    seconds = timed(lambda: explain(ref, cur), args.repeat)
    print(f"| evidence (explain, top 5, 3 clusters) | {seconds:.3f} | | | |")


if __name__ == "__main__":
    main()
