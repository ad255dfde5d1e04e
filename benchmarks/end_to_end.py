"""``observer up`` end to end, each stage alone, result latency, memory and a profile, each
against the bare-parse peer measured in the same run (issue 18).

    .venv/bin/python -m benchmarks.end_to_end                 # defaults: a few minutes here
    .venv/bin/python -m benchmarks.end_to_end --quick         # a smoke run (about a minute)
    .venv/bin/python -m benchmarks.end_to_end --duration 600  # the issue's 10-minute memory run

The load is demo-agent spans (:mod:`observer.demo.agent` through the real OpenTelemetry SDK,
with message content), ``--spans-per-request`` (500) spans per OTLP/HTTP request, posted by
``--clients`` (4) processes. The peer is ``ExportTraceServiceRequest.ParseFromString`` of the
same bodies in this process (best of 3); every rate is also printed as a ratio to it.

1. **End to end**: a fresh ``observer up`` (embedded broker, defaults) gets ``--spans``
   (100,000) as fast as it acknowledges them; then /metrics is polled until every consuming
   stage has no lag and has consumed nothing new for 3 s. Spans/s end to end is the spans
   acknowledged over the time from the first request to the last message consumed by any
   stage; the receiver's rate is the spans acknowledged over the time to the last 200.
   py-spy samples the process and its workers meanwhile (non-blocking; the thread holding the
   GIL, or with ``--profile-threads all`` every non-idle thread; ``--no-profile`` for none):
   the raw profile is saved as ``build/e2e_profile_workers_N.txt`` and the top 15 functions
   by own and by cumulative samples are printed.
2. **Each stage alone** (:mod:`benchmarks.e2e_stages`): the normaliser, trace grouping and
   the drift engine, each from Kafka topics the receivers and the stage before filled.
3. **Result latency, webhook delay and memory**: a fresh ``observer up`` under
   ``--load-share`` (0.5) of the end-to-end rate (or ``--sustained-rate``) for ``--duration``
   seconds, demo baseline traffic and, for the second half, the demo's drifted traffic, with
   a policy that fires on two drifted LLM windows and sends a signed webhook to a receiver
   here (:mod:`benchmarks.e2e_webhooks`). Its RSS (the Python processes: with ``--workers``,
   the workers too) every second goes to ``build/e2e_rss.csv`` and ``build/e2e_rss.svg``
   (start, max, end, slope per minute); afterwards, for every drift result published, its
   Kafka timestamp minus that of its window's closing record (the latest ``current_ranges``
   record), p50/p99; and each webhook's arrival minus its decision time (the body's
   ``timestamp``).

``--workers N`` (repeatable) runs the end-to-end part once per value, each against the same
peer; the sustained part uses the last.

Prints one JSON line at the end and writes it to ``build/e2e.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.e2e_load import drive, make_bodies, parse_peer, write_bodies
from benchmarks.e2e_observe import (
    cpu_seconds,
    observer_up,
    py_spy,
    result_latency,
    sample_rss,
    stage_counts,
    top_frames,
    wait_caught_up,
)
from benchmarks.e2e_stages import stages_alone
from benchmarks.e2e_webhooks import WebhookTimer
from benchmarks.rss_plot import plot, read_rss
from observer.demo.agent import DRIFTED


def _ratio(rate: float, peer: float) -> float:
    return round(rate / peer, 4) if peer else float("nan")


def end_to_end(path: Path, args: argparse.Namespace, build: Path,
               workers: int | None) -> dict[str, Any]:
    """Full rate into a fresh ``observer up --workers`` until every stage caught up (profiled)."""
    with observer_up(workers=workers) as obs:
        profile = build / f"e2e_profile_workers_{workers or 'default'}.txt"
        cpu_before = cpu_seconds(obs.proc.pid)
        stages: dict[str, float] = {}
        if args.no_profile:
            sent = drive(obs.traces_url, path, args.clients, args.spans_per_request)
            caught_up = wait_caught_up(obs.metrics_url, per_stage=stages)
        else:
            with py_spy(obs.proc.pid, profile, gil=args.profile_threads == "gil"):
                sent = drive(obs.traces_url, path, args.clients, args.spans_per_request)
                caught_up = wait_caught_up(obs.metrics_url, per_stage=stages)
        cpu = {k: round(v - cpu_before.get(k, 0.0), 2) for k, v in cpu_seconds(obs.proc.pid).items()}
        out = {
            **sent,
            # CPU seconds each process used from the start to the catch-up (the clients'
            # own CPU is not in it): on 2 cores, what the broker takes the stages lack.
            "cpu_s": cpu,
            "cpu_share": {k: round(v / sum(cpu.values()), 3) for k, v in cpu.items()},
            "caught_up_s": round(caught_up - sent["start_at"], 2),
            # Seconds after the first request until each stage's consumer last moved.
            "stage_done_s": {k: round(v - sent["start_at"], 2) for k, v in sorted(stages.items())},
            "e2e_spans_per_s": round(sent["spans_acked"] / (caught_up - sent["start_at"]), 1),
            "counts": stage_counts(obs.metrics_url),
        }
    if not args.no_profile and profile.exists():
        out["profile"] = top_frames(profile.read_text().splitlines(), 15)
        out["profile"]["raw"] = str(profile)
    return out


def sustained(path: Path, drifted: Path, args: argparse.Namespace, spans_per_s: float,
              build: Path) -> dict[str, Any]:
    """``spans_per_s`` for ``--duration`` s into a fresh ``observer up``, baseline traffic
    then, for the last half, drifted traffic that fires a webhook policy: RSS, drift result
    latency, decision-to-webhook delay."""
    import threading

    hooks = WebhookTimer()
    with hooks.serve() as hook_server:
        policy = json.dumps([hooks.policy(hook_server.url)])
        with observer_up({"OBSERVER_TRIGGER__POLICIES": policy},
                         workers=args.workers[-1]) as obs:
            rss: dict[str, Any] = {}
            # Each drive starts its clients 3 s after it is called.
            until = time.time() + 6.0 + args.duration
            sampler = threading.Thread(
                target=lambda: rss.update(sample_rss(obs.proc.pid, until, build / "e2e_rss.csv")))
            sampler.start()
            half = args.duration / 2
            sent = drive(obs.traces_url, path, args.clients, args.spans_per_request,
                         seconds=half, spans_per_s=spans_per_s)
            sent_drifted = drive(obs.traces_url, drifted, args.clients, args.spans_per_request,
                                 seconds=half, spans_per_s=spans_per_s)
            sampler.join()
            wait_caught_up(obs.metrics_url)
            from observer.core.config import KafkaConfig
            from observer.core.topics import Topics

            latency = result_latency(obs.kafka, Topics.from_config(KafkaConfig()).drift)
    return {"target_spans_per_s": round(spans_per_s, 1), "baseline": sent,
            "drifted": sent_drifted, "rss": rss, "latency": latency,
            "decision_to_webhook": hooks.summary()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spans", type=int, default=100_000, help="spans in the end-to-end run")
    parser.add_argument("--spans-per-request", type=int, default=500)
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--duration", type=float, default=60.0,
                        help="seconds of sustained load for latency and memory (600: the issue's)")
    parser.add_argument("--load-share", type=float, default=0.5,
                        help="sustained load as a share of the measured end-to-end rate")
    parser.add_argument("--sustained-rate", type=float,
                        help="sustained load in spans/s (instead of --load-share of end to end)")
    parser.add_argument("--no-profile", action="store_true", help="no py-spy during end to end")
    parser.add_argument("--profile-threads", choices=["gil", "all"], default="gil",
                        help="py-spy: the thread holding the GIL only, or every non-idle thread")
    parser.add_argument("--skip", action="append", default=[],
                        choices=["e2e", "stages", "sustained"], help="leave a part out")
    parser.add_argument("--quick", action="store_true", help="10,000 spans, 20 s sustained")
    parser.add_argument("--build", default="build", help="where CSV, profile and JSON go")
    parser.add_argument("--workers", type=int, action="append",
                        help="observer up --workers N; repeat to run end to end once per value "
                        "(the last also runs the sustained part; default: observer's own)")
    args = parser.parse_args(argv)
    args.workers = args.workers or [None]
    if args.quick:
        args.spans, args.duration = 10_000, 20.0
    build = Path(args.build)
    build.mkdir(parents=True, exist_ok=True)

    bodies = make_bodies(args.spans, args.spans_per_request)
    results: dict[str, Any] = {"cpus": os.cpu_count(), "load_avg_start": os.getloadavg(),
                               "spans": len(bodies) * args.spans_per_request,
                               "request_bytes": sum(map(len, bodies)) // len(bodies)}
    peer = parse_peer(bodies, args.spans_per_request)["spans_per_s"]
    results["parse_peer_spans_per_s"] = peer
    print(f"{results['spans']} spans in {len(bodies)} requests of ~{results['request_bytes']} "
          f"bytes; parse peer {peer} spans/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_bodies(bodies, Path(tmp) / "bodies.bin")
        del bodies
        drifted = write_bodies(make_bodies(min(args.spans, 20_000), args.spans_per_request,
                                           seed=2, behaviour=DRIFTED), Path(tmp) / "drifted.bin")
        e2e_rate = None
        if "e2e" not in args.skip:
            for workers in args.workers:
                e2e = end_to_end(path, args, build, workers)
                results[f"end_to_end_workers_{workers or 'default'}"] = e2e
                e2e_rate = e2e["e2e_spans_per_s"]
                e2e["ratio_e2e"] = _ratio(e2e_rate, peer)
                e2e["ratio_acked"] = _ratio(e2e["acked_spans_per_s"], peer)
                print(f"end to end, --workers {workers or 'default'}: {e2e_rate} spans/s "
                      f"({e2e['ratio_e2e']} of parse), acked {e2e['acked_spans_per_s']} "
                      f"({e2e['ratio_acked']}), caught up after {e2e['caught_up_s']} s",
                      flush=True)
                print(f"CPU seconds until caught up: {e2e['cpu_s']} (shares {e2e['cpu_share']})")
                print(f"each stage's last input, s after the first request: {e2e['stage_done_s']}")
                for kind in ("own", "cumulative"):
                    print(f"profile, top 15 by {kind} samples "
                          f"(% of {e2e.get('profile', {}).get('samples')}):")
                    for frame, share in e2e.get("profile", {}).get(kind, []):
                        print(f"  {share:5.1f}%  {frame}")
        if "stages" not in args.skip:
            alone = results["stages_alone"] = stages_alone(path, args.clients, args.spans_per_request)
            for name in ("normalize", "paths", "drift"):
                alone[name]["ratio"] = _ratio(alone[name]["per_s"], peer)
        if "sustained" not in args.skip:
            rate = args.sustained_rate or args.load_share * (e2e_rate or 3500.0)
            s = results["sustained"] = sustained(path, drifted, args, rate, build)
            svg = build / "e2e_rss.svg"
            svg.write_text(plot(read_rss(build / "e2e_rss.csv"),
                                f"observer up: RSS at {s['target_spans_per_s']:.0f} spans/s"))
            s["rss"]["svg"] = str(svg)
            print(f"sustained {s['target_spans_per_s']} spans/s for {args.duration:g} s: "
                  f"rss {s['rss']}; result latency {s['latency']}; decision to webhook "
                  f"{s['decision_to_webhook']}", flush=True)
    results["load_avg_end"] = os.getloadavg()
    (build / "e2e.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
