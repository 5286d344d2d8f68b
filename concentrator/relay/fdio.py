"""Writing to a non-blocking socket by its file descriptor, under trio.

The relay and the simulators write with `os.write` first (no task switch when the socket
takes it all); only the rest waits for the socket to drain, here."""

from __future__ import annotations

import os

import trio


async def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to the non-blocking socket `fd`, waiting while it is full.
    An error of the socket (the peer left) is raised to the caller."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            pass
        if view:
            await trio.lowlevel.wait_writable(fd)
