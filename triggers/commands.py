"""The trigger-related subcommands of ``observer``: ``pipeline render`` and ``triggers ...``.

    observer pipeline render --out DIR [--validate SCHEMAS_DIR] [--serving llminferenceservice]
    observer triggers list [--limit N] [--policy P] [--segment S] [--kind fired]
                           [--approval held] [--json]
    observer triggers approve EPISODE_ID [--by NAME] [--note TEXT]
    observer triggers reject EPISODE_ID [--by NAME] [--note TEXT]

``approve``/``reject`` write the verdict to the ledger file (the trigger stage may be running:
SQLite WAL lets both at it); the stage announces it on ``observer.triggers`` and, once
approved, delivers the held actions at its next tick.
"""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the shell composes the configuration; stages only read it
    from observer.config import ObserverConfig
    from observer.triggers.config import TriggerConfig

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
    render.add_argument("--serving", choices=["inferenceservice", "llminferenceservice"],
                        help="how the candidate is served (default: pipeline.serving): a KServe "
                             "InferenceService canary or a multi-node LLMInferenceService")
    triggers = sub.add_parser("triggers", help="the trigger ledger")
    tsub = triggers.add_subparsers(dest="triggers_command", required=True)
    lst = tsub.add_parser("list", help="decisions and their deliveries, newest first")
    lst.add_argument("--limit", type=int, default=20)
    lst.add_argument("--policy")
    lst.add_argument("--segment")
    lst.add_argument("--kind", choices=["fired", "suppressed"])
    lst.add_argument("--approval", choices=["held", "approved", "rejected"],
                     help="only decisions in this approval state")
    lst.add_argument("--json", action="store_true", help="one JSON object per line")
    for verb, what in (("approve", "release the held actions of a decision"),
                       ("reject", "cancel the held actions of a decision")):
        p = tsub.add_parser(verb, help=what)
        p.add_argument("episode_id", help="the decision's episode id (observer triggers list)")
        p.add_argument("--by", default="", help="who decides (default: user@host)")
        p.add_argument("--note", default="", help="why, for the ledger and the event")


def run(cfg: ObserverConfig, args: argparse.Namespace) -> int:
    if args.command == "pipeline":
        trigger = cfg.trigger
        if args.serving:
            pipeline = trigger.pipeline.model_copy(update={"serving": args.serving})
            trigger = trigger.model_copy(update={"pipeline": pipeline})
        return _render(trigger, args.out, args.validate, args.crd)
    if args.triggers_command in VERDICTS:
        return _resolve(cfg, args)
    return _list(cfg, args)


# Subcommand -> the verdict the ledger records.
VERDICTS = {"approve": "approved", "reject": "rejected"}


def _resolve(cfg: ObserverConfig, args: argparse.Namespace) -> int:
    from observer.triggers.ledger import ApprovalError, Ledger

    path = cfg.trigger.ledger_path
    if not path.exists():
        print(f"observer: no ledger at {path} (trigger.ledger_path)", file=sys.stderr)
        return 1
    by = args.by or f"{_user()}@{socket.gethostname()}"
    verdict = VERDICTS[args.triggers_command]
    with Ledger(path) as ledger:
        try:
            stored, changed = ledger.resolve_approval(
                args.episode_id, verdict, by=by, now=time.time(), note=args.note  # type: ignore[arg-type]
            )
        except ApprovalError as e:
            print(f"observer: {e}", file=sys.stderr)
            return 1
    if not changed:
        print(f"episode {args.episode_id} was already {verdict} by {stored['approval_by']}")
        return 0
    n = len(stored["deliveries"])
    done = "released" if verdict == "approved" else "cancelled"
    print(f"episode {args.episode_id} {verdict} by {by}: {n} held action(s) {done}")
    return 0


def _render(trigger: TriggerConfig, out: Path, schemas: Path | None, crds: list[Path]) -> int:
    from observer.triggers.pipeline.render import render, write

    docs = render(trigger)
    if schemas is not None:
        from observer.triggers.pipeline.validate import SchemaError, check_all

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


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # a container user with no passwd entry and no $USER
        return "unknown"


def _when(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def _list(cfg: ObserverConfig, args: argparse.Namespace) -> int:
    from observer.triggers.ledger import Ledger

    path = cfg.trigger.ledger_path
    if not path.exists():
        print(f"observer: no ledger at {path} (trigger.ledger_path)", file=sys.stderr)
        return 1
    with Ledger(path) as ledger:
        decisions = ledger.list_decisions(
            args.limit,
            policy=args.policy,
            segment_key=args.segment,
            kind=args.kind,
            approval=args.approval,
        )
    for d in decisions:
        if args.json:
            print(json.dumps(d, sort_keys=True))
            continue
        print(f"{_when(d['decided_at'])}  {d['kind']:10} {d['policy']} {d['segment_key']} "
              f"({d['record_type']})  episode {d['episode_id']}")
        print(f"    {d['reason']}")
        if d["approval"] is not None:
            who = f" by {d['approval_by']} at {_when(d['approval_at'])}" if d["approval_by"] else ""
            note = f": {d['approval_note']}" if d["approval_note"] else ""
            print(f"    approval: {d['approval']}{who}{note}")
        for x in d["deliveries"]:
            error = f"  {x['last_error']}" if x["last_error"] else ""
            print(f"    {x['action']:8} {x['status']:11} attempts {x['attempts']}  {x['target']}{error}")
    return 0
