"""`--lab`: the two active proofs, which change the running system for a moment.

Never run without `--lab`: they stop the relay (SIGSTOP, then SIGCONT) and take each
protected link's primary interface down and up again. For a lab or commissioning, with
the operator's agreement, not for a running plant.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from netconfig.config import NetworkConfig
from netconfig.probe import echo_request
from netconfig.trip.config import MulticastConfig

from .trips import kernel_snapshot

OPERATOR_TOLERANCE = 20.0  # seconds of outage annex A40 tolerates on a link


@contextlib.contextmanager
def unwind_on_signals() -> Iterator[None]:
    """While a proof has the relay stopped or a link down, SIGTERM, SIGHUP and SIGINT
    unwind (the `finally` blocks send SIGCONT and bring the link up) instead of killing
    this process and leaving the appliance that way."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def read_state(path: str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        with open(path) as f:
            state: dict[str, Any] = json.load(f)
            return state
    except (OSError, ValueError):
        return None


def stop_relay(
    pids: list[int], mc: MulticastConfig | None, network: NetworkConfig | None, seconds: float
) -> dict[str, Any]:
    """SIGSTOP the relay for `seconds`; the kernel's trip counters before and after."""
    before = kernel_snapshot(mc, network) if mc is not None else {}
    started = time.time()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
        after = kernel_snapshot(mc, network) if mc is not None else {}
        states = {pid: _proc_state(pid) for pid in pids}
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    forwarded = {
        key: after[key]["packets_forwarded"] - before.get(key, {}).get("packets_forwarded", 0) for key in after
    }
    return {
        "pids": pids,
        "from": started,
        "to": started + seconds,
        "relay_states": states,
        "forwarded_while_stopped": forwarded,
    }


def _proc_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class EchoTrain:
    """ICMP echo requests every `interval` from `source` to `target` along the routes in
    use (no interface bound), in a thread; the longest silence between two replies is
    the outage the data plane saw."""

    def __init__(self, source: str, target: str, interval: float = 0.01) -> None:
        self.source, self.target, self.interval = source, target, interval
        self.replies: list[float] = []
        self._stop = threading.Event()
        self._ident = os.getpid() & 0xFFFF
        self._thread = threading.Thread(target=self._run, name="evidence-echo", daemon=True)

    def __enter__(self) -> EchoTrain:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
            sock.bind((self.source, 0))
            seq = 0
            while not self._stop.is_set():
                seq = (seq + 1) & 0xFFFF
                try:
                    sock.sendto(echo_request(self._ident, seq, b"concentrator evidence"), (self.target, 0))
                except OSError:
                    pass  # no route for a moment: that is the outage being measured
                deadline = time.monotonic() + self.interval
                while (left := deadline - time.monotonic()) > 0:
                    ready, _, _ = select.select([sock], [], [], left)
                    if ready:
                        data = sock.recv(2048)
                        ihl = (data[0] & 0x0F) * 4
                        if data[ihl] == 0 and int.from_bytes(data[ihl + 4 : ihl + 6], "big") == self._ident:
                            self.replies.append(time.monotonic())

    def longest_gap(self, since: float) -> float | None:
        """The longest time without a reply from `since` on (None: no reply after it)."""
        after = [t for t in self.replies if t >= since]
        before = [t for t in self.replies if t < since]
        if not after:
            return None
        times = ([before[-1]] if before else []) + after
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=0.0)


def switch_links(network: Any, state_file: str, wait: Callable[[float], None] = time.sleep) -> list[dict[str, Any]]:
    """For each protected link on a healthy primary with a healthy backup: primary down,
    wait for netd's switch, primary up, wait for it to be healthy (and back, with
    automatic fail-back). The outage is what the data plane saw: the longest silence
    between replies to ICMP echoes sent every 10 ms to the link's first destination
    (`echo_outage_seconds`); `seen_after_seconds` (from `ip link set down` to netd's
    state file showing the switch) and netd's own figure stand beside it."""
    results = []
    for link in network.links:
        state = (read_state(state_file) or {}).get("links", {}).get(link.name)
        row: dict[str, Any] = {"link": link.name, "interface": link.primary.interface}
        results.append(row)
        if state is None or state["active"] != "primary" or not state["healthy"].get("backup"):
            row["skipped"] = f"not on a healthy primary with a healthy backup ({state and state['active']})"
            continue
        count = state["switches_total"]
        target = str(link.destinations[0].network_address)
        with EchoTrain(str(network.service_address), target) as echo:
            wait(0.3)  # replies flowing before the fault
            t0 = time.monotonic()
            _ip("link", "set", link.primary.interface, "down")
            try:
                switch = _wait_switch(state_file, link.name, count, 15.0, wait)
                row["seen_after_seconds"] = time.monotonic() - t0
                wait(1.0)  # replies flowing again on the backup (or not)
            finally:
                _ip("link", "set", link.primary.interface, "up")
            row["echo_target"] = target
            row["echo_outage_seconds"] = echo.longest_gap(t0 - 0.1)
        if switch is None:
            row["error"] = "netd did not switch within 15 s"
            continue
        # netd's outage counts from the last moment the path was known good to its decision
        # (0 for a carrier event); `seen_after` adds the route change and the state file:
        # the bound the verdict uses.
        row.update(switch=switch, outage_seconds=switch["outage_seconds"])
        hold = getattr(network, "hold_time", 10.0)
        back = _wait_switch(state_file, link.name, count + 1, hold + 15.0, wait, lambda s: s["active"] == "primary")
        row["back_on_primary"] = back is not None
    return results


def _wait_switch(
    state_file: str,
    name: str,
    count: int,
    timeout: float,
    wait: Callable[[float], None],
    extra: Callable[[dict[str, Any]], bool] = lambda s: True,
) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = (read_state(state_file) or {}).get("links", {}).get(name)
        if st is not None and st["switches_total"] > count and st["recent_switches"] and extra(st):
            last: dict[str, Any] = st["recent_switches"][-1]
            return last
        wait(0.02)
    return None
