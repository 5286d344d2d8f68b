"""The local, append-only history of accepted configurations (annex A40 5.7: changes
are local and dated).

`check-config` and `relay` append one JSON line when they accept a file whose SHA-256
differs from the last line's: the hash, when (UTC), the local user (and the user who ran
sudo), the command and the file's mtime. The history lives beside the configuration as
`.<name>.history.jsonl`; lines are only ever appended (O_APPEND, fsync), never rewritten.
A history that cannot be written is logged and never stops the relay.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import pwd
from typing import Any

from .appliance import Accepted

log = logging.getLogger(__name__)


def history_path(config_file: str) -> str:
    head, name = os.path.split(os.path.abspath(config_file))
    return os.path.join(head, f".{name}.history.jsonl")


def read_history(config_file: str) -> list[dict[str, Any]]:
    try:
        with open(history_path(config_file)) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"unreadable": line})
    return out


def _user() -> str:
    try:
        name = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        name = str(os.getuid())
    sudo = os.environ.get("SUDO_USER")
    return f"{name} (sudo by {sudo})" if sudo and sudo != name else name


def record_accepted(config: Accepted, command: str) -> None:
    """Append `config` to its history if it differs from the last accepted one."""
    path = history_path(config.file)
    last = read_history(config.file)
    if last and last[-1].get("sha256") == config.sha256:
        return
    entry = {
        "sha256": config.sha256,
        "accepted_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "user": _user(),
        "command": command,
        "file": os.path.abspath(config.file),
        "mtime": datetime.datetime.fromtimestamp(config.mtime, datetime.UTC).isoformat(timespec="seconds"),
    }
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(entry) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        log.warning("configuration history %s not written: %s", path, exc.strerror or exc)
