"""Detection quality on a meaning-only shift: observer's embedding methods against Evidently's
``EmbeddingsDrift`` default and NannyML's data reconstruction, on the same windows.

The traffic is real text (:mod:`observer.demo.python_docs`: the Python Language Reference's
help topics, shipped with CPython), embedded by observer's default embedder. Before the change
every prompt is about statements and control flow; after it a share of the prompts is about
numbers and data types, each length-matched to a prompt it replaces, so the length features
observer already scores stay level (the table's first row shows it).

Per method, its statistic on ``--null`` same-subject windows sets a threshold at the
``--far`` false-alarm rate (the statistic's upper quantile there), so every method is read
at the same false-alarm rate; then, for each shifted share, the detection rate (power) over
``--shifted`` windows and the expected detection delay in records after the change
(``window / power``: windows are scored one after another). The methods' own default
thresholds are reported too (their false-alarm rate and power as shipped).

    .venv/bin/python -m benchmarks.semantic_detection [--window 200] [--reference 1000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from observer.demo import python_docs as corpus
from observer.drift.embedding.methods import EMBEDDING_METHODS

Statistic = Callable[[np.ndarray, np.ndarray], tuple[float, bool]]


@dataclass
class Row:
    name: str
    default_far: float
    default_power: dict[float, float]
    power: dict[float, float]
    seconds: float


def _embedder():
    from observer.collectors.normalize.embedders.hashing import HashingEmbedder

    return HashingEmbedder()


def _observer(method: str) -> Statistic:
    m = EMBEDDING_METHODS[method]

    def score(ref: np.ndarray, cur: np.ndarray) -> tuple[float, bool]:
        s = m.score(ref, cur, None)
        return s.statistic, s.drifted
    return score


def _evidently_default(ref: np.ndarray, cur: np.ndarray) -> tuple[float, bool]:
    # EmbeddingsDriftMetric's default: model(bootstrap=reference rows < 1000).
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import model

    method = model(bootstrap=ref.shape[0] < 1000)
    stat, drifted, _ = method(pd.DataFrame(cur), pd.DataFrame(ref))
    return float(stat), bool(drifted)


class _NannyML:
    """NannyML's DataReconstructionDriftCalculator, fitted once on the reference."""

    def __init__(self) -> None:
        self._fitted: tuple[int, object] | None = None

    def __call__(self, ref: np.ndarray, cur: np.ndarray) -> tuple[float, bool]:
        os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")  # no analytics calls
        # flaml (imported by NannyML) starts a JVM through pyspark.pandas when it can.
        hidden = "pyspark" not in sys.modules
        if hidden:
            sys.modules["pyspark"] = None  # type: ignore[assignment]
        try:
            import nannyml as nml
        finally:
            if hidden:
                del sys.modules["pyspark"]

        columns = [f"e{i}" for i in range(ref.shape[1])]
        if self._fitted is None or self._fitted[0] != id(ref):
            calc = nml.DataReconstructionDriftCalculator(
                column_names=columns, chunk_size=cur.shape[0])
            calc.fit(pd.DataFrame(ref, columns=columns))
            self._fitted = (id(ref), calc)
        calc = self._fitted[1]
        out = calc.calculate(pd.DataFrame(cur, columns=columns)).filter(period="analysis")
        frame = out.to_df()
        value = float(frame[("reconstruction_error", "value")].iloc[0])
        alert = bool(frame[("reconstruction_error", "alert")].iloc[0])
        return value, alert


def _lengths_ks(ref_texts: list[str], cur_texts: list[str]) -> tuple[float, bool]:
    from scipy.stats import ks_2samp

    p = min(ks_2samp([len(t) for t in ref_texts], [len(t) for t in cur_texts]).pvalue,
            ks_2samp([len(t.split()) for t in ref_texts],
                     [len(t.split()) for t in cur_texts]).pvalue)
    return 1.0 - float(p), p <= 0.05  # larger = more drift, like the others


def run(window: int, reference: int, null: int, shifted: int, shares: list[float],
        far: float, seed: int) -> list[Row]:
    rng = np.random.default_rng(seed)
    control, data = corpus.prose(corpus.CONTROL), corpus.prose(corpus.DATA)
    embed = _embedder()
    ref_pairs = corpus.stream(control, reference, rng)
    ref_texts = [p for p, _ in ref_pairs]
    ref = embed.embed(ref_texts)
    null_windows = [[p for p, _ in corpus.stream(control, window, rng)] for _ in range(null)]
    shifted_windows: dict[float, list[list[str]]] = {}
    for share in shares:
        wins = []
        for _ in range(shifted):
            base = corpus.stream(control, window, rng)
            k = int(round(share * window))
            moved = corpus.matched_stream(base[:k], data, rng)
            wins.append([p for p, _ in moved + base[k:]])
        shifted_windows[share] = wins
    vectors = {id(w): embed.embed(w) for w in null_windows}
    for wins in shifted_windows.values():
        vectors.update({id(w): embed.embed(w) for w in wins})

    candidates: dict[str, Callable] = {
        "length features (KS, today's)": None,
        **{f"observer {m}": _observer(m) for m in EMBEDDING_METHODS},
        "Evidently EmbeddingsDrift default": _evidently_default,
        "NannyML data reconstruction": _NannyML(),
    }
    rows = []
    for name, fn in candidates.items():
        t0 = time.perf_counter()

        def stat(texts: list[str]) -> tuple[float, bool]:
            if fn is None:
                return _lengths_ks(ref_texts, texts)
            return fn(ref, vectors[id(texts)])

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            null_stats = [stat(w) for w in null_windows]
            shifted_stats = {s: [stat(w) for w in wins] for s, wins in shifted_windows.items()}
        threshold = float(np.quantile([v for v, _ in null_stats], 1.0 - far))
        rows.append(Row(
            name=name,
            default_far=float(np.mean([d for _, d in null_stats])),
            default_power={s: float(np.mean([d for _, d in v])) for s, v in shifted_stats.items()},
            power={s: float(np.mean([x > threshold for x, _ in v]))
                   for s, v in shifted_stats.items()},
            seconds=time.perf_counter() - t0,
        ))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--window", type=int, default=200)
    p.add_argument("--reference", type=int, default=1000)
    p.add_argument("--null", type=int, default=40, help="same-subject windows (calibration)")
    p.add_argument("--shifted", type=int, default=20, help="shifted windows per share")
    p.add_argument("--shares", default="0.1,0.2,0.3,0.5")
    p.add_argument("--far", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    shares = [float(x) for x in a.shares.split(",")]
    rows = run(a.window, a.reference, a.null, a.shifted, shares, a.far, a.seed)
    print(f"meaning-only shift, window {a.window}, reference {a.reference}, prompts embedded by "
          f"observer's default embedder; power at a false-alarm rate of {a.far:.0%} "
          f"(calibrated on {a.null} same-subject windows), expected delay = window / power")
    head = " ".join(f"{f'{s:.0%} moved':>10}" for s in shares)
    print(f"{'method':<36} {'FAR as shipped':>14} {head} {'delay @30%':>10} {'s':>6}")
    for r in rows:
        cells = " ".join(f"{r.power[s]:>4.2f} ({r.default_power[s]:.2f})" for s in shares)
        p30 = r.power.get(0.3, 0.0)
        delay = f"{a.window / p30:,.0f}" if p30 else "never"
        print(f"{r.name:<36} {r.default_far:>14.2f} {cells} {delay:>10} {r.seconds:>6.1f}",
              flush=True)
    print("cells: power at the calibrated threshold (power with the method's own default "
          "threshold)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
