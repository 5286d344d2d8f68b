"""Requests of the command line to the register's writer (`incidents close`,
`maintenance plan`) while the incident process holds the register: the command writes
`<spool>/requests/<id>.json` (atomically) and waits for `<id>.reply`; the process
carries it out with the same `Registrar` the command would use alone and answers. So the
register keeps one writer whether the relay runs or not."""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

from .registrar import Refused, Registrar

REPLY_TIMEOUT = 15.0  # s the command waits for the process


def _directory(spool: str) -> str:
    return os.path.join(spool, "requests")


def _write(path: str, doc: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


def carry_out(registrar: Registrar, request: dict[str, Any], now: float) -> dict[str, Any]:
    """One request; the answer ({"ok": true, "id": N} or {"ok": false, "error": why})."""
    try:
        if request["op"] == "close":
            registrar.close(int(request["id"]), request.get("cause"), now)
            return {"ok": True, "id": int(request["id"])}
        if request["op"] == "plan":
            incident_id = registrar.plan(request["site"], float(request["start"]), float(request["end"]),
                                         request["cause"], now, requested_by_operator=bool(request["requested"]),
                                         config_change=request.get("config_change"))  # fmt: skip
            return {"ok": True, "id": incident_id}
        return {"ok": False, "error": f"unknown request {request['op']!r}"}
    except Refused as exc:
        return {"ok": False, "error": str(exc)}


def handle_requests(spool: str, registrar: Registrar, now: float) -> bool:
    """Carry out the waiting requests (in the incident process). True if there were any."""
    directory = _directory(spool)
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".json"))
    except FileNotFoundError:
        return False
    for name in names:
        path = os.path.join(directory, name)
        try:
            with open(path) as f:
                request = json.load(f)
            answer = carry_out(registrar, request, now)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            answer = {"ok": False, "error": f"bad request: {exc!r}"}
        _write(path[: -len(".json")] + ".reply", answer)
        os.unlink(path)
    return bool(names)


def submit(spool: str, request: dict[str, Any], timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
    """Hand `request` to the incident process and wait for its answer."""
    directory = _directory(spool)
    os.makedirs(directory, exist_ok=True)
    base = os.path.join(directory, f"{time.time():.6f}-{uuid.uuid4().hex[:8]}")
    _write(base + ".json", request)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(base + ".reply") as f:
                answer: dict[str, Any] = json.load(f)
        except (FileNotFoundError, ValueError):
            time.sleep(0.05)
            continue
        os.unlink(base + ".reply")
        return answer
    try:
        os.unlink(base + ".json")
    except FileNotFoundError:  # taken meanwhile: its answer will be left unread
        pass
    return {"ok": False, "error": f"the incident process did not answer within {timeout:.0f} s"}
