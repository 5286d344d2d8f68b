"""systemd's readiness and watchdog protocol (sd_notify(3)), without libsystemd.

Under a unit with `Type=notify` systemd sets NOTIFY_SOCKET (a datagram socket, a path
or, with a leading '@', an abstract name); `WatchdogSec=` sets WATCHDOG_USEC (and
WATCHDOG_PID, the process it is meant for). A message is one datagram of
"KEY=value" lines: READY=1 once the service works, WATCHDOG=1 at least every
WATCHDOG_USEC, or systemd kills and restarts it. Outside systemd both do nothing.
"""

from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    """Send one message; False when not under systemd or the socket is gone."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:  # systemd gone or restarting: nothing to tell
        return False
    return True


def watchdog_period() -> float | None:
    """How often to send WATCHDOG=1 (half the timeout, as sd_watchdog_enabled(3)
    advises), or None when no watchdog is set for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6
    except ValueError:
        return None
