"""`--lab`: the two active proofs, which change the running system for a moment.

Never run without `--lab`: they stop the relay (SIGSTOP, then SIGCONT) and take each
protected link's primary interface down and up again. For a lab or commissioning, with
the operator's agreement, not for a running plant.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

from netconfig.multicast import MulticastConfig

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


def stop_relay(pids: list[int], mc: MulticastConfig | None, seconds: float) -> dict[str, Any]:
    """SIGSTOP the relay for `seconds`; the kernel's trip counters before and after."""
    before = kernel_snapshot(mc) if mc is not None else {}
    started = time.time()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
        after = kernel_snapshot(mc) if mc is not None else {}
        states = {pid: _proc_state(pid) for pid in pids}
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    forwarded = {key: after[key]["packets_forwarded"] - before.get(key, {}).get("packets_forwarded", 0)
                 for key in after}
    return {"pids": pids, "from": started, "to": started + seconds, "relay_states": states,
            "forwarded_while_stopped": forwarded}


def _proc_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def switch_links(network: Any, state_file: str, wait: Callable[[float], None] = time.sleep) -> list[dict[str, Any]]:
    """For each protected link on a healthy primary with a healthy backup: primary down,
    wait for netd's switch, primary up, wait for it to be healthy (and back, with
    automatic fail-back). `seen_after_seconds`, from our `ip link set down` to netd's
    state file showing the switch, bounds the outage from above; netd's own figure is
    kept beside it."""
    results = []
    for link in network.links:
        state = (read_state(state_file) or {}).get("links", {}).get(link.name)
        row: dict[str, Any] = {"link": link.name, "interface": link.primary.interface}
        results.append(row)
        if state is None or state["active"] != "primary" or not state["healthy"].get("backup"):
            row["skipped"] = f"not on a healthy primary with a healthy backup ({state and state['active']})"
            continue
        count = state["switches_total"]
        t0 = time.monotonic()
        _ip("link", "set", link.primary.interface, "down")
        try:
            switch = _wait_switch(state_file, link.name, count, 15.0, wait)
            row["seen_after_seconds"] = time.monotonic() - t0
        finally:
            _ip("link", "set", link.primary.interface, "up")
        if switch is None:
            row["error"] = "netd did not switch within 15 s"
            continue
        # netd's outage counts from the last moment the path was known good to its decision
        # (0 for a carrier event); `seen_after` adds the route change and the state file:
        # the bound the verdict uses.
        row.update(switch=switch, outage_seconds=switch["outage_seconds"])
        hold = getattr(network, "hold_time", 10.0)
        back = _wait_switch(state_file, link.name, count + 1, hold + 15.0, wait,
                            lambda s: s["active"] == "primary")
        row["back_on_primary"] = back is not None
    return results


def _wait_switch(state_file: str, name: str, count: int, timeout: float, wait: Callable[[float], None],
                 extra: Callable[[dict[str, Any]], bool] = lambda s: True) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = (read_state(state_file) or {}).get("links", {}).get(name)
        if st is not None and st["switches_total"] > count and st["recent_switches"] and extra(st):
            last: dict[str, Any] = st["recent_switches"][-1]
            return last
        wait(0.02)
    return None
