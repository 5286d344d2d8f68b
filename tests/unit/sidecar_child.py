"""A child for tests/unit/test_sidecar.py, run through `sidecar.command` as the features'
children are. Its configuration says what to do: echo each record to stdout (kind, site,
body, one line each) until the pipe closes, or exit at once with a status."""

from __future__ import annotations

import os

import trio

from concentrator.sidecar import ChildPipe


async def _main() -> int:
    pipe = ChildPipe()
    config = await pipe.config()
    if config is None:
        return 0
    if "exit" in config:
        return int(config["exit"])
    out = trio.lowlevel.FdStream(os.dup(1))
    await out.send_all(f"config {config['name']} nice {os.nice(0)}\n".encode())
    async for record in pipe.records():
        await out.send_all(f"{record.seq} {record.kind} {record.site} {record.body.decode()}\n".encode())
    await out.send_all(b"end of file\n")
    return 0


def main() -> int:
    return trio.run(_main)
