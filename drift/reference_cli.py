"""``observer references``: list, show, pin, unpin and rebaseline segments' references.

    observer references list [--record-type T] [--json]
    observer references show SEGMENT --record-type T [--json]
    observer references pin|unpin SEGMENT --record-type T [--by NAME] [--wait S]
    observer references rebaseline SEGMENT --record-type T (--next N | --from-window N |
                                   --parquet PATH) [--force] [--by NAME] [--wait S]

Reads come from ``observer.references`` (what the drift engine published); writes go to
``observer.drift-commands`` and the command waits up to ``--wait`` seconds for the engine's
outcome (:mod:`observer.drift.reference_client`). Exit status: 0 applied (or sent, with
``--wait 0``), 1 refused, failed or not answered, 2 a bad command.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from observer.config import ObserverConfig

COMMANDS = ("references",)


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    refs = sub.add_parser("references", help="drift references: versions, pins, rebaselines")
    rsub = refs.add_subparsers(dest="references_command", required=True)
    lst = rsub.add_parser("list", help="every segment's current reference version")
    lst.add_argument("--record-type", metavar="T", help="only this record type (llm, tools...)")
    lst.add_argument("--json", action="store_true", help="one JSON object per line")
    show = rsub.add_parser("show", help="one segment's reference versions and their provenance")
    for verb, what in (("pin", "freeze the current reference against re-baselining"),
                       ("unpin", "let the reference be re-baselined again"),
                       ("rebaseline", "make a new reference version")):
        p = rsub.add_parser(verb, help=what)
        _segment_args(p)
        p.add_argument("--by", default="", help="who asks (default: user)")
        p.add_argument("--wait", type=float, default=30.0, metavar="S",
                       help="seconds to wait for the drift engine's outcome (0: do not wait)")
        if verb == "rebaseline":
            source = p.add_mutually_exclusive_group(required=True)
            source.add_argument("--next", type=int, metavar="N",
                                help="the segment's next N records become the reference")
            source.add_argument("--from-window", type=int, metavar="N",
                                help="a scored window's records (read back from Kafka)")
            source.add_argument("--parquet", metavar="PATH",
                                help="a Parquet dataset, read by the drift engine")
            p.add_argument("--force", action="store_true", help="rebaseline a pinned reference")
    _segment_args(show)
    show.add_argument("--json", action="store_true", help="the state as JSON")


def _segment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("segment", metavar="SEGMENT", help="the segment key (observer references list)")
    p.add_argument("--record-type", required=True, metavar="T", help="llm, tools, paths...")


def run(cfg: ObserverConfig, args: argparse.Namespace) -> int:
    from observer.core.topics import Topics
    from observer.drift import reference_client as client
    from observer.drift.references import state_key

    topics = Topics.from_config(cfg.kafka)
    from kafka.errors import KafkaError

    try:
        states = client.read_states(cfg.kafka, topics)
    except (TimeoutError, KafkaError) as e:  # no broker, or the topic was never created
        print(f"observer: {e} (is Kafka at {cfg.kafka.bootstrap_servers} and observer up?)",
              file=sys.stderr)
        return 1
    verb = args.references_command
    if verb == "list":
        return _list(states.values(), args)
    state = states.get(state_key(args.record_type, args.segment))
    if verb == "show":
        if state is None:
            print(f"observer: no reference is known for segment {args.segment!r} of record type "
                  f"{args.record_type}", file=sys.stderr)
            return 1
        _show(state, args.json)
        return 0
    try:
        ranges = []
        if getattr(args, "from_window", None) is not None:
            ranges = client.window_ranges(client.read_results(cfg.kafka, topics, args.segment),
                                          args.segment, args.record_type, args.from_window)
        command = client.check(
            state, args.segment, args.record_type, verb, next=getattr(args, "next", None),
            from_window=getattr(args, "from_window", None), parquet=getattr(args, "parquet", None),
            force=getattr(args, "force", False), by=args.by or _user(), ranges=ranges)
    except client.CommandError as e:
        print(f"observer: {e}", file=sys.stderr)
        return 1 if isinstance(e, client.CommandRefused) else 2
    client.send(cfg.kafka, topics, command)
    if args.wait <= 0:
        print(f"sent {verb} {args.segment} ({args.record_type}): command {command.command_id}")
        return 0
    outcome = client.wait_outcome(cfg.kafka, topics, command, args.wait)
    if outcome is None:
        print(f"observer: command {command.command_id} sent; the drift engine did not answer "
              f"within {args.wait:g}s (is the drift stage running?)", file=sys.stderr)
        return 1
    print(f"{verb} {args.segment} ({args.record_type}): {outcome['outcome']}: {outcome['message']}")
    return 0 if outcome["outcome"] == "applied" else 1


def _list(states: object, args: argparse.Namespace) -> int:
    rows = sorted((s for s in states if args.record_type in (None, s.record_type)),  # type: ignore[attr-defined]
                  key=lambda s: (s.record_type, s.segment_key))
    for s in rows:
        if args.json:
            print(s.model_dump_json(by_alias=True))
            continue
        current = next((v for v in s.versions if v.version == s.current), None)
        what = f"v{s.current} {current.source} n={current.n}" if current else "collecting v1"
        pin = " pinned" if s.pinned else ""
        more = f" (collecting v{s.collecting['version']})" if s.collecting else ""
        print(f"{s.record_type:10} {s.segment_key:30} {what}{pin}{more}")
    return 0


def _show(state: object, as_json: bool) -> None:
    if as_json:
        print(state.model_dump_json(by_alias=True, indent=2))  # type: ignore[attr-defined]
        return
    s = state
    print(f"{s.record_type} {s.segment_key}: current v{s.current}"  # type: ignore[attr-defined]
          + (" (pinned)" if s.pinned else ""))  # type: ignore[attr-defined]
    for v in s.versions:  # type: ignore[attr-defined]
        when = datetime.fromtimestamp(v.created_at_unix_nano / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")
        kept = "" if v.values_kept else " (values dropped)"
        print(f"  v{v.version}  {v.source:24} {when}  n={v.n}{kept}")


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"
