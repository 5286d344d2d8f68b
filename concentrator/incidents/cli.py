"""`concentrator incidents list|show|close|report` and `concentrator maintenance plan`.

Reading needs only the register (read-only, beside the running incident process).
Writing (close, plan) goes through the register's one writer: the incident process if
it runs (requests.py), else this command itself, holding the writer lock.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from .config import IncidentsConfig
from .notices import ROME, by_end_of, when
from .registrar import Registrar
from .report import write_report
from .requests import carry_out, submit
from .store import Incident, Register, WriterLock

# The `incidents:` section of a configuration file (None: the file has none), read by
# the wiring layer (concentrator/cli.py): this package reads nothing of the other sections.
Section = Callable[[str], IncidentsConfig | None]


def _config(path: str, section: Section) -> IncidentsConfig:
    config = section(path)
    if config is None:
        raise SystemExit(f"{path} has no incidents: section")
    return config


def parse_time(text: str) -> float:
    """ISO 8601; without an offset, local time in Rome (the holder's and the operator's)."""
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 date and time, got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ROME)
    return moment.timestamp()


def _write(config: IncidentsConfig, request: dict[str, Any]) -> dict[str, Any]:
    """Carry out `request` as the register's writer, or hand it to the one that is."""
    os.makedirs(os.path.dirname(os.path.abspath(config.database)), exist_ok=True)
    lock = WriterLock(config.database)
    try:
        if not lock.acquire(blocking=False):
            return submit(config.spool, request)
        register = Register(config.database)
        try:
            return carry_out(Registrar(config, register), request, time.time())
        finally:
            register.close()
    finally:
        lock.close()


def _line(i: Incident) -> str:
    end = "-" if i.end is None else datetime.datetime.fromtimestamp(i.end, ROME).strftime("%d/%m %H:%M:%S")
    start = datetime.datetime.fromtimestamp(i.start, ROME).strftime("%d/%m/%Y %H:%M:%S")
    return f"{i.id:5d}  {i.state:8}  {i.kind:12}  {i.site:12}  {start} .. {end}"


def _show(register: Register, i: Incident) -> str:
    lines = [
        f"incident {i.id}: {i.kind}, site {i.site}, UPDC {i.updc}, {i.state}",
        f"  start     {when(i.start)}",
        f"  end       {when(i.end)}",
        f"  detected  {when(i.detected)}",
    ]
    if i.deadline is not None:
        lines.append(f"  deadline  {by_end_of(i.deadline)} (3 working days)")
    if i.proposed_en:
        lines.append(f"  proposed  {i.proposed_it} / {i.proposed_en}")
    if i.closed is not None:
        lines.append(f"  cause     {i.cause or '(the proposed one)'}, closed {when(i.closed)}")
    for text in i.evidence:
        lines.append(f"  evidence  {text}")
    for n in register.notices(i.id):
        state = f"sent {when(n.sent)}" if n.sent is not None else f"NOT SENT ({n.attempts} attempts: {n.last_error})"
        lines.append(f"  notice    {n.kind}: {n.name}.eml, {state}")
    return "\n".join(lines)


def incidents_main(argv: list[str], section: Section) -> int:
    parser = argparse.ArgumentParser(prog="concentrator incidents", description=__doc__)
    parser.add_argument("--config", required=True, help="the configuration file (its incidents: section)")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="the incidents, newest last")
    listing.add_argument("--since", type=parse_time, help="those not ended before this ISO 8601 time")
    listing.add_argument("--json", action="store_true")
    show = commands.add_parser("show", help="one incident with its evidence and notices")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")
    close = commands.add_parser("close", help="write the closing notice of a restored incident")
    close.add_argument("id", type=int)
    cause = close.add_mutually_exclusive_group(required=True)
    cause.add_argument("--cause", help="the type and cause of the event for the operator (5.7.1 II)")
    cause.add_argument("--proposed", action="store_true", help="send the type and cause proposed from the evidence")
    close.add_argument("--json", action="store_true")
    report = commands.add_parser("report", help="an HTML page of the incidents")
    report.add_argument("--html", metavar="DIR", required=True)
    args = parser.parse_args(argv)
    config = _config(args.config, section)
    if args.command == "close":
        answer = _write(config, {"op": "close", "id": args.id, "cause": None if args.proposed else args.cause})
        if args.json:
            print(json.dumps(answer))
            return 0 if answer["ok"] else 1
        if not answer["ok"]:
            print(f"refused: {answer['error']}", file=sys.stderr)
            return 1
        print(f"incident {args.id} closed; closing notice in {config.spool}")
        return 0
    if not os.path.exists(config.database):
        print("no incidents registered (no register yet)")
        return 0
    register = Register(config.database, read_only=True)
    try:
        if args.command == "list":
            found = register.incidents(since=args.since)
            if args.json:
                print(json.dumps([i.to_json() for i in found], indent=1))
            else:
                print("\n".join(_line(i) for i in found) if found else "no incidents")
        elif args.command == "show":
            incident = register.get(args.id)
            if incident is None:
                print(f"no incident {args.id}", file=sys.stderr)
                return 1
            if args.json:
                doc = incident.to_json()
                doc["notices"] = [vars(n) for n in register.notices(args.id)]
                print(json.dumps(doc, indent=1))
            else:
                print(_show(register, incident))
        else:
            os.makedirs(args.html, exist_ok=True)
            print(write_report(register, args.html, time.time()))
    finally:
        register.close()
    return 0


def maintenance_main(argv: list[str], section: Section) -> int:
    parser = argparse.ArgumentParser(prog="concentrator maintenance", description=__doc__)
    parser.add_argument("--config", required=True, help="the configuration file (its incidents: section)")
    commands = parser.add_subparsers(dest="command", required=True)
    plan = commands.add_parser("plan", help="announce planned UPDC work (annex A40 5.7.2)")
    plan.add_argument("--site", required=True)
    plan.add_argument("--start", required=True, type=parse_time, help="ISO 8601 (local time in Rome if no offset)")
    plan.add_argument("--end", required=True, type=parse_time)
    plan.add_argument("--cause", required=True, help="the type and cause of the work")
    plan.add_argument("--config-change", metavar="FILE", help="the updated UPDC configuration (attached)")
    plan.add_argument(
        "--requested-by-operator",
        action="store_true",
        help="the operator asked for the work: the 10 days' notice does not apply (footnote 3)",
    )
    args = parser.parse_args(argv)
    config = _config(args.config, section)
    change = None if args.config_change is None else os.path.abspath(args.config_change)
    request = {"op": "plan", "site": args.site, "start": args.start, "end": args.end, "cause": args.cause,
               "requested": args.requested_by_operator, "config_change": change}  # fmt: skip
    answer = _write(config, request)
    if not answer["ok"]:
        print(f"refused: {answer['error']}", file=sys.stderr)
        return 1
    print(f"maintenance {answer['id']} planned for {args.site}: {when(args.start)} .. {when(args.end)}; "
          f"notice in {config.spool}")  # fmt: skip
    return 0
