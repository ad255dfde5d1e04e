"""The trigger-related subcommands of ``observer``: ``pipeline render`` and ``triggers list``.

    observer pipeline render --out DIR [--validate SCHEMAS_DIR]
    observer triggers list [--limit N] [--policy P] [--segment S] [--kind fired] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from observer.core.config import ObserverConfig

COMMANDS = ("pipeline", "triggers")


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    pipeline = sub.add_parser("pipeline", help="the retraining pipeline (Argo WorkflowTemplate)")
    psub = pipeline.add_subparsers(dest="pipeline_command", required=True)
    render = psub.add_parser(
        "render", help="write the WorkflowTemplate and its manifests as YAML, one per file"
    )
    render.add_argument("--out", type=Path, required=True, help="directory to write to")
    render.add_argument("--validate", type=Path, metavar="SCHEMAS",
                        help="also check every document against the upstream schemas in SCHEMAS "
                             "(argo/schema.json, crds/*.yaml)")
    render.add_argument("--crd", type=Path, action="append", default=[], metavar="FILE",
                        help="with --validate: another CRD file to validate against (repeatable)")
    triggers = sub.add_parser("triggers", help="the trigger ledger")
    tsub = triggers.add_subparsers(dest="triggers_command", required=True)
    lst = tsub.add_parser("list", help="decisions and their deliveries, newest first")
    lst.add_argument("--limit", type=int, default=20)
    lst.add_argument("--policy")
    lst.add_argument("--segment")
    lst.add_argument("--kind", choices=["fired", "suppressed"])
    lst.add_argument("--json", action="store_true", help="one JSON object per line")


def run(cfg: ObserverConfig, args: argparse.Namespace) -> int:
    if args.command == "pipeline":
        return _render(cfg, args.out, args.validate, args.crd)
    return _list(cfg, args)


def _render(cfg: ObserverConfig, out: Path, schemas: Path | None, crds: list[Path]) -> int:
    from triggers.pipeline.render import render, write

    docs = render(cfg.trigger)
    if schemas is not None:
        from triggers.pipeline.validate import SchemaError, check_all

        try:
            if not (schemas / "argo" / "schema.json").exists():
                raise SchemaError(f"{schemas} has no argo/schema.json")
            skipped = check_all(docs, schemas, crds)
        except SchemaError as e:
            print(f"observer: {e}", file=sys.stderr)
            return 1
        if skipped:
            print(f"not schema-checked (no schema in {schemas}): {', '.join(skipped)}")
    for path in write(out, docs):
        print(path)
    return 0


def _when(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _list(cfg: ObserverConfig, args: argparse.Namespace) -> int:
    from triggers.ledger import Ledger

    path = cfg.trigger.ledger_path
    if not path.exists():
        print(f"observer: no ledger at {path} (trigger.ledger_path)", file=sys.stderr)
        return 1
    with Ledger(path) as ledger:
        decisions = ledger.list_decisions(
            args.limit, policy=args.policy, segment_key=args.segment, kind=args.kind
        )
    for d in decisions:
        if args.json:
            print(json.dumps(d, sort_keys=True))
            continue
        print(f"{_when(d['decided_at'])}  {d['kind']:10} {d['policy']} {d['segment_key']} "
              f"({d['record_type']})  episode {d['episode_id']}")
        print(f"    {d['reason']}")
        for x in d["deliveries"]:
            error = f"  {x['last_error']}" if x["last_error"] else ""
            print(f"    {x['action']:8} {x['status']:11} attempts {x['attempts']}  {x['target']}{error}")
    return 0
