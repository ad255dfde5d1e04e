"""All benchmarks in one run: ``.venv/bin/python -m benchmarks.run`` (or ``make bench``).

Prints, for each size, the time to score one window of 20 numeric + 5 categorical columns with
Evidently 0.7.23's ``DataDriftPreset`` and with observer's engine statistics on the same data
(Evidently's automatic method choice for both; ours per window against a reference prepared
once, and cold with the reference's preparation included), their ratios, and the largest relative
difference between the two sets of statistics; then records/s through the streaming engine on
the embedded broker and the engine's memory for many segments x 20 features. Ratios compare
numbers measured in this run on this machine, never figures from elsewhere.

    --rows 10000,100000        sizes for the scoring comparison (add 1000000 for the 1M row;
                               Evidently needs about 3 minutes there)
    --stream-records 50000     records for the Kafka throughput measurement
    --segments 1000 --window 100   the state measurement (exact and sketch mode)

Last, peer drift's memory and judging time at 300 clusters x 100 segments
(:mod:`benchmarks.fleet_state`).
"""

from __future__ import annotations

import argparse
import platform

from benchmarks import fleet_state, scoring, streaming


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="observer drift benchmarks")
    p.add_argument("--rows", default="10000,100000")
    p.add_argument("--stream-records", type=int, default=50_000)
    p.add_argument("--segments", type=int, default=1000)
    p.add_argument("--window", type=int, default=100)
    args = p.parse_args(argv)
    print(f"machine: {platform.machine()}, python {platform.python_version()}")
    print("\nwindow scoring, 20 numeric + 5 categorical columns, reference and current of N rows")
    print("(per window: the reference prepared once, as the engine does; cold: reference "
          "included)")
    print(f"{'rows':>9} {'window s':>9} {'cold s':>8} {'evidently s':>12} {'ratio':>7} "
          f"{'cold ratio':>10} {'max rel diff':>13}")
    for rows in (int(x) for x in args.rows.split(",")):
        r = scoring.measure(rows)
        print(f"{r.rows:>9} {r.observer_s:>9.4f} {r.cold_s:>8.4f} {r.evidently_s:>12.2f} "
              f"{r.ratio:>6.0f}x {r.cold_ratio:>9.0f}x {r.max_rel_diff:>13.1e}", flush=True)
    rate = streaming.throughput(args.stream_records)
    print(f"\nstreaming: {rate:,.0f} records/s through the engine from Kafka "
          f"(embedded Tansu, 100 segments, window 500, checkpoints on)")
    print(f"\nstate for {args.segments} segments x 20 features, window {args.window} "
          f"(reference + half a window each, {args.segments * (args.window * 3 // 2)} records)")
    for mode in ("exact", "sketch"):
        mb, detectors_mb, _ = streaming.state_mb(args.segments, args.window, mode)
        print(f"  {mode:>6} mode: {mb:6.1f} MB engine state ({mb * 1e3 / args.segments:.0f} kB "
              f"per segment), of which {detectors_mb:.1f} MB change detectors", flush=True)
    print()
    fleet_state.main([])  # peer drift's state at 300 clusters x 100 segments (drift.peer)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
