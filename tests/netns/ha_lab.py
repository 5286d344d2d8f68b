"""HA lab: two real appliances (keepalived + HA supervisor + relay + netd each), a BMI
with its own netd, and twelve UPDCs, in network namespaces joined by three bridged LANs.

    BMI  lo 10.0.1.1 (service)       appliance a / b                   sites
    eth0 192.0.2.1 ── br-up0 ── bmi0 192.0.2.11 / .12
    eth1 192.0.3.1 ── br-up1 ── bmi1 192.0.3.11 / .12
                                lan  198.51.100.11 / .12 ── br-site ── eth0 198.51.100.101..112
                                lo   10.0.0.1 (service, on both)
    virtual addresses (one VRRP instance per side, held by the master):
      uplink: 192.0.2.10 on bmi0 and 192.0.3.10 on bmi1 (the BMI's two gateways to 10.0.0.1)
      sites:  198.51.100.10 on lan (the relay's source toward the UPDCs)

As the standalone appliance (docs/failover.md, tests/lab/harness.py): the relay listens
on the service address 10.0.0.1, on lo and on neither path; each appliance's netd routes
the BMI's service address via 192.0.2.1 (bmi0) or 192.0.3.1 (bmi1) and runs its trip
path, on the engine the kernel offers (the trip group from the active uplink path to
the sites' LAN, always: both appliances forward trips, docs/ha.md); the BMI's netd routes 10.0.0.1 via the uplink's
virtual address on eth0 or, if that path fails, on eth1. Which appliance gets the BMI's
traffic is decided by who holds the virtual addresses; which path it takes, by the netds.

Each appliance runs `concentrator ha` (keepalived, and the relay while active) and
`concentrator netd`, from one configuration file. The BMI is tests.lab.harness_peers'
`master` (logs every ASDU with its arrival), the sites are tests.netns.ha_peers (twelve
QueueingStations in one process, logging their connections).

Namespace names use tests.lab.harness's prefix with the owner's pid, so its
`cleanup_stale()` removes what a crashed run left.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import IO, Any

import yaml

from tests.lab.harness import (
    BASE,
    BMI_SERVICE,
    CONC_SERVICE,
    _kill_ns_processes,
    add_namespace,
    add_veth,
    run,
    spawn_in,
    wait_for,
)
from tests.lab.harness_peers import read_sink

_counter = itertools.count()

UP_VIPS, SITE_VIP = ("192.0.2.10", "192.0.3.10"), "198.51.100.10"
BMI_IPS = ("192.0.2.1", "192.0.3.1")  # the BMI's eth0, eth1
UPLINKS = ("bmi0", "bmi1")  # each appliance's interfaces toward the BMI (primary, backup)
NODE_IP = {
    "a": ("192.0.2.11", "192.0.3.11", "198.51.100.11"),
    "b": ("192.0.2.12", "192.0.3.12", "198.51.100.12"),
}
PRIORITY = {"a": 150, "b": 100}
FIRST_SITE = "198.51.100.101"
PORT = 2404
TRIP_GROUP, TRIP_PORT = "239.192.10.1", 5000
HOLD_TIME = 2.0  # netd's fail-back delay here (the product's default is 10 s)


class HaLab:
    def __init__(
        self, n_sites: int = 12, *, advert_interval: float = 0.1, preempt: str | float = "never", rate: float = 20.0
    ) -> None:
        self.n_sites = n_sites
        self.advert_interval = advert_interval
        self.preempt = preempt
        self.rate = rate
        self.prefix = f"{BASE}{os.getpid()}xha{next(_counter)}-"
        self.workdir = tempfile.mkdtemp(prefix=self.prefix)
        self.namespaces: list[str] = []
        self.procs: dict[str, tuple[subprocess.Popen[bytes], IO[bytes]]] = {}
        self.bmi_out = os.path.join(self.workdir, "bmi.bin")
        self.station_log = os.path.join(self.workdir, "stations.jsonl")

    def ns(self, role: str) -> str:
        return self.prefix + role

    def exec(self, role: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["ip", "netns", "exec", self.ns(role), *argv], check=check)

    # ------------------------------------------------------------------ build

    def __enter__(self) -> HaLab:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build(self) -> None:
        for role in ("sw", "bmi", "a", "b", "sites"):
            add_namespace(self.ns(role))
            self.namespaces.append(self.ns(role))
        for bridge in ("br-up0", "br-up1", "br-site"):
            run(["ip", "-n", self.ns("sw"), "link", "add", bridge, "type", "bridge", "mcast_snooping", "0"])
            run(["ip", "-n", self.ns("sw"), "link", "set", bridge, "up"])
        index = itertools.count(2000)  # distinct ifindexes on the two ends (see tests.lab.harness)
        run(["ip", "-n", self.ns("bmi"), "addr", "add", f"{BMI_SERVICE}/32", "dev", "lo"])
        for path, bmi_ip in enumerate(BMI_IPS):
            self._port(f"br-up{path}", f"bu{path}-bmi", "bmi", f"eth{path}", [f"{bmi_ip}/24"], index)
        self._port(
            "br-site",
            "bs-sites",
            "sites",
            "eth0",
            [f"198.51.100.{100 + i}/24" for i in range(1, self.n_sites + 1)],
            index,
        )
        for node, (up0_ip, up1_ip, site_ip) in NODE_IP.items():
            run(["ip", "-n", self.ns(node), "addr", "add", f"{CONC_SERVICE}/32", "dev", "lo"])
            self._port("br-up0", f"bu0-{node}", node, UPLINKS[0], [f"{up0_ip}/24"], index)
            self._port("br-up1", f"bu1-{node}", node, UPLINKS[1], [f"{up1_ip}/24"], index)
            self._port("br-site", f"bs-{node}", node, "lan", [f"{site_ip}/24"], index)
            self._write_config(node)
        self._write_bmi_netd()

    def _port(self, bridge: str, sw_if: str, role: str, ifname: str, addrs: list[str], index: Iterator[int]) -> None:
        sw = self.ns("sw")
        add_veth(sw, sw_if, self.ns(role), ifname, index)
        run(["ip", "-n", sw, "link", "set", sw_if, "master", bridge, "up"])
        for addr in addrs:
            run(["ip", "-n", self.ns(role), "addr", "add", addr, "dev", ifname])
        run(["ip", "-n", self.ns(role), "link", "set", "dev", ifname, "up"])

    def config_file(self, node: str) -> str:
        return os.path.join(self.workdir, node, "concentrator.yaml")

    def state_file(self, node: str) -> str:
        return os.path.join(self.workdir, node, "ha-state.json")

    def netd_state_file(self, role: str) -> str:
        return os.path.join(self.workdir, role, "netd-state.json")

    def _write_config(self, node: str) -> None:
        """One file per appliance: the relay's sections, netd's (network:, multicast:) and ha:."""
        directory = os.path.join(self.workdir, node)
        os.makedirs(directory, exist_ok=True)
        peer = "b" if node == "a" else "a"
        config = {
            "uplink": {"listen": f"{CONC_SERVICE}:{PORT}", "allowed_peers": [BMI_SERVICE]},
            "sites": [
                {
                    "name": f"site{i:02d}",
                    "common_addresses": [100 + i],
                    "endpoints": [f"198.51.100.{100 + i}:{PORT}"],
                    "interruptibility": "instantaneous",
                }
                for i in range(1, self.n_sites + 1)
            ],
            "metrics": {"listen": "127.0.0.1:9104"},
            "network": {
                "service_address": CONC_SERVICE,
                "hold_time": HOLD_TIME,
                "metrics_listen": "127.0.0.1:9105",
                "uplink": {
                    "destinations": [f"{BMI_SERVICE}/32"],
                    "primary": {"interface": UPLINKS[0], "gateway": BMI_IPS[0]},
                    "backup": {"interface": UPLINKS[1], "gateway": BMI_IPS[1]},
                },
            },
            "multicast": {  # engine auto: what this kernel offers (tests.lab.harness.require_engine)
                "smcroute": {
                    key: os.path.join(directory, f"smcroute.{ext}")
                    for key, ext in (("config_file", "conf"), ("socket", "sock"), ("pid_file", "pid"))
                },
                "groups": [
                    {
                        "group": TRIP_GROUP,
                        "port": TRIP_PORT,
                        "sources": [BMI_SERVICE],
                        "inbound": list(UPLINKS),
                        "outbound": ["lan"],
                    }
                ],
            },
            "ha": {
                "node": f"conc-{node}",
                "priority": PRIORITY[node],
                "virtual_router_id": 51,
                "advert_interval": self.advert_interval,
                "preempt": self.preempt,
                "uplink": {
                    "interface": UPLINKS[0],
                    "virtual_address": f"{UP_VIPS[0]}/24",
                    "peer": NODE_IP[peer][0],
                    "also": [{"interface": UPLINKS[1], "virtual_address": f"{UP_VIPS[1]}/24"}],
                },
                "sites": {"interface": "lan", "virtual_address": f"{SITE_VIP}/24", "peer": NODE_IP[peer][2]},
                "keepalived": {
                    key: os.path.join(directory, name)
                    for key, name in (
                        ("config_file", "keepalived.conf"),
                        ("pid_file", "keepalived.pid"),
                        ("vrrp_pid_file", "keepalived-vrrp.pid"),
                        ("notify_fifo", "keepalived.fifo"),
                    )
                },
            },
        }
        with open(self.config_file(node), "w") as f:
            yaml.safe_dump(config, f)

    def _write_bmi_netd(self) -> None:
        """The BMI's side (the operator's router in the field): the concentrator's service
        address via the uplink's virtual address on each path, probed there, so a path
        whose virtual address nobody holds counts as down."""
        os.makedirs(os.path.join(self.workdir, "bmi"), exist_ok=True)
        config = {
            "network": {
                "service_address": BMI_SERVICE,
                "hold_time": HOLD_TIME,
                "uplink": {
                    "destinations": [f"{CONC_SERVICE}/32"],
                    "primary": {"interface": "eth0", "gateway": UP_VIPS[0]},
                    "backup": {"interface": "eth1", "gateway": UP_VIPS[1]},
                },
            }
        }
        with open(self.config_file("bmi"), "w") as f:
            yaml.safe_dump(config, f)

    # ------------------------------------------------------------------ processes

    def spawn(self, role: str, label: str, argv: list[str]) -> subprocess.Popen[bytes]:
        proc, log = spawn_in(self.ns(role), argv, os.path.join(self.workdir, f"{label}.log"), append=True)
        self.procs[label] = (proc, log)
        return proc

    def log(self, label: str, tail: int | None = 4000) -> str:
        """The end of a process's log (all of it with `tail=None`)."""
        try:
            with open(os.path.join(self.workdir, f"{label}.log"), "rb") as f:
                data = f.read()
                return (data if tail is None else data[-tail:]).decode(errors="replace")
        except OSError:
            return ""

    def start_netd(self, role: str) -> None:
        self.spawn(
            role,
            f"netd-{role}",
            [
                sys.executable,
                "-m",
                "concentrator",
                "netd",
                "--config",
                self.config_file(role),
                "--state",
                self.netd_state_file(role),
            ],
        )

    def netd_state(self, role: str) -> dict[str, Any]:
        try:
            with open(self.netd_state_file(role)) as f:
                state: dict[str, Any] = json.load(f)
                return state
        except (OSError, ValueError):
            return {}

    def uplink(self, role: str) -> dict[str, Any]:
        """netd's counters of the uplink link in `role` (active path, switches, ...)."""
        link: dict[str, Any] = self.netd_state(role).get("links", {}).get("uplink", {})
        return link

    def wait_uplink_path(self, role: str, path: str, timeout: float = 20.0) -> float:
        """Until `role`'s netd carries the uplink on `path` ("primary" or "backup")."""
        return wait_for(
            lambda: self.uplink(role).get("active") == path,
            timeout,
            f"{role}'s uplink on its {path} path",
            lambda: str(self.uplink(role)),
        )

    def wait_netd_ready(self, role: str, timeout: float = 30.0) -> float:
        pid = self.procs[f"netd-{role}"][0].pid
        return wait_for(
            lambda: self.netd_state(role).get("ready") is True and self.netd_state(role).get("pid") == pid,
            timeout,
            f"netd in {role} ready",
            lambda: self.log(f"netd-{role}"),
        )

    def start_node(self, node: str) -> None:
        """The appliance's two services, from its one file: netd (paths and the trip path,
        independent of the role) and the HA supervisor."""
        if os.path.exists(self.state_file(node)):  # left by a killed supervisor
            os.unlink(self.state_file(node))
        self.start_netd(node)
        self.spawn(
            node,
            f"ha-{node}",
            [
                sys.executable,
                "-m",
                "concentrator",
                "ha",
                "--config",
                self.config_file(node),
                "--state",
                self.state_file(node),
            ],
        )
        self.wait_netd_ready(node)

    def state(self, node: str) -> dict[str, Any]:
        try:
            with open(self.state_file(node)) as f:
                state: dict[str, Any] = json.load(f)
                return state
        except (OSError, ValueError):
            return {}

    def role(self, node: str) -> str | None:
        return self.state(node).get("role")

    def wait_ready_backup(self, node: str, timeout: float = 30.0) -> float:
        """Until `node` is standby with its relay loaded: a backup that can take over at once."""
        return wait_for(
            lambda: self.role(node) == "standby" and self.state(node).get("relay_ready") is True,
            timeout,
            f"{node} a ready backup",
            lambda: f"state {self.state(node)}\n{self.log(f'ha-{node}')}",
        )

    def wait_role(self, node: str, role: str, timeout: float = 20.0) -> float:
        return wait_for(
            lambda: self.role(node) == role,
            timeout,
            f"{node} {role}",
            lambda: f"state {self.state(node)}\n{self.log(f'ha-{node}')}",
        )

    def metrics(self, node: str, port: int = 9107) -> str:
        """The HA supervisor's Prometheus exposition (or, with port 9105, netd's), fetched
        inside the appliance."""
        url = f"http://127.0.0.1:{port}/metrics"
        fetch = f"import urllib.request; print(urllib.request.urlopen('{url}', timeout=5).read().decode())"
        return self.exec(node, sys.executable, "-c", fetch).stdout

    def ha_status(self, node: str) -> subprocess.CompletedProcess[str]:
        return self.exec(
            node, sys.executable, "-m", "concentrator", "ha-status", "--config", self.config_file(node), check=False
        )

    def kill_node(self, node: str) -> None:
        """Every process of the appliance, at once, with SIGKILL (its kernel stays: the
        addresses keepalived had added stay too, as after a crash of the software)."""
        _kill_ns_processes(self.ns(node))

    def cut_links(self, node: str) -> None:
        for ifname in (*UPLINKS, "lan"):
            run(["ip", "-n", self.ns(node), "link", "set", "dev", ifname, "down"])

    def restore_links(self, node: str) -> None:
        for ifname in (*UPLINKS, "lan"):
            run(["ip", "-n", self.ns(node), "link", "set", "dev", ifname, "up"])

    def cut_bmi_path(self, path: int, up: bool = False) -> None:
        """The BMI's port on uplink LAN `path` (0 primary, 1 backup) down (or back up) at
        the switch: the BMI loses carrier there; the appliances keep theirs (and VRRP on
        that LAN) but no longer reach the BMI through it."""
        run(["ip", "-n", self.ns("sw"), "link", "set", "dev", f"bu{path}-bmi", "up" if up else "down"])

    def cut_vrrp(self, node: str, interfaces: tuple[str, ...]) -> None:
        """Drop VRRP (IP protocol 112) both ways on `interfaces` of `node`; everything else flows."""
        rules = "".join(f"    iifname {i} ip protocol 112 drop\n" for i in interfaces)
        out = "".join(f"    oifname {i} ip protocol 112 drop\n" for i in interfaces)
        script = (
            f"table inet havrrp {{\n  chain in {{\n    type filter hook input priority -300;\n{rules}  }}\n"
            f"  chain out {{\n    type filter hook output priority -300;\n{out}  }}\n}}\n"
        )
        run(["ip", "netns", "exec", self.ns(node), "nft", "-f", "-"], stdin=script)

    def restore_vrrp(self, node: str) -> None:
        run(["ip", "netns", "exec", self.ns(node), "nft", "delete", "table", "inet", "havrrp"], check=False)

    def vips(self, node: str) -> set[str]:
        out = run(["ip", "-n", self.ns(node), "-4", "-o", "addr", "show"], check=False).stdout
        return {line.split()[3].split("/")[0] for line in out.splitlines()} & {*UP_VIPS, SITE_VIP}

    def commands(self, node: str) -> list[str]:
        """The command lines of the live processes in `node`'s namespace (a killed one
        not yet reaped has none)."""
        found = []
        for pid in run(["ip", "netns", "pids", self.ns(node)], check=False).stdout.split():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            if cmdline:
                found.append(cmdline)
        return found

    # ------------------------------------------------------------------ traffic

    def start_traffic(self, timeout: float = 30.0) -> None:
        """The BMI's netd (its routes to the service address), the UPDCs, then the BMI."""
        self.start_netd("bmi")
        self.wait_netd_ready("bmi")
        self.spawn(
            "sites",
            "stations",
            [
                sys.executable,
                "-m",
                "tests.netns.ha_peers",
                "--first",
                FIRST_SITE,
                "--count",
                str(self.n_sites),
                "--rate",
                str(self.rate),
                "--log",
                self.station_log,
            ],
        )
        wait_for(lambda: "listening" in self.log("stations"), timeout, "stations", lambda: self.log("stations"))
        self.spawn(
            "bmi",
            "bmi",
            [
                sys.executable,
                "-m",
                "tests.lab.harness_peers",
                "master",
                "--target",
                f"{CONC_SERVICE}:{PORT}",
                "--out",
                self.bmi_out,
            ],
        )
        self.wait_all_flowing(time.monotonic(), timeout)

    def rows(self) -> list[tuple[int, int, int, float]]:
        try:
            return read_sink(self.bmi_out)
        except OSError:
            return []

    def wait_all_flowing(self, since: float, timeout: float = 30.0) -> float:
        cas = set(range(101, 101 + self.n_sites))
        return wait_for(
            lambda: cas <= {ca for _c, ca, _s, t in self.rows()[-5000:] if t > since},
            timeout,
            "every site's data at the BMI",
            lambda: self.log("bmi") + self.log("ha-a") + self.log("ha-b"),
            interval=0.05,
        )

    def station_events(self) -> list[dict[str, Any]]:
        try:
            with open(self.station_log) as f:
                return [json.loads(line) for line in f if line.endswith("\n")]
        except OSError:
            return []

    def bmi_connections(self) -> int:
        return sum(
            1
            for line in self.log("bmi").splitlines()
            if line.startswith("master: connection ") and line.rstrip()[-1].isdigit()
        )

    def start_trips(self, count: int, interval: float, lead: int = 25, iface: str = "eth0") -> subprocess.Popen[bytes]:
        """Trip datagrams from the BMI's service address out of `iface`, one every
        `interval` s, in the background; returns once `lead` of them are sent (scapy takes
        seconds to load on a busy machine). Sequence numbers continue from earlier calls."""
        first = len(self.trips()[0])
        proc = self.spawn(
            "bmi",
            "trip-send",
            [
                sys.executable,
                "-m",
                "tests.lab.trip_peers",
                "send",
                "--group",
                TRIP_GROUP,
                "--port",
                str(TRIP_PORT),
                "--src",
                BMI_SERVICE,
                "--iface",
                iface,
                "--count",
                str(count),
                "--interval",
                str(interval),
                "--first",
                str(first),
                "--out",
                os.path.join(self.workdir, "trip-sent.jsonl"),
            ],
        )
        wait_for(lambda: len(self.trips()[0]) >= first + lead, 60, f"{lead} trips sent", lambda: self.log("trip-send"))
        return proc

    def start_trip_receiver(self) -> None:
        self.spawn(
            "sites",
            "trip-recv",
            [
                sys.executable,
                "-m",
                "tests.lab.trip_peers",
                "receive",
                "--group",
                TRIP_GROUP,
                "--port",
                str(TRIP_PORT),
                "--ifaces",
                "eth0",
                "--out",
                os.path.join(self.workdir, "trip-recv.jsonl"),
            ],
        )
        wait_for(lambda: "receiver: ready" in self.log("trip-recv"), 10, "trip receiver")

    def trips(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        def lines(name: str) -> list[dict[str, Any]]:
            try:
                with open(os.path.join(self.workdir, name)) as f:
                    return [json.loads(line) for line in f if line.endswith("\n")]
            except OSError:
                return []

        return lines("trip-sent.jsonl"), lines("trip-recv.jsonl")

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        for proc, log in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()
            log.close()
        for ns in reversed(self.namespaces):
            _kill_ns_processes(ns)
            run(["ip", "netns", "del", ns], check=False)
        self.namespaces.clear()
        if not os.environ.get("NETCONFIG_KEEP_LAB"):
            shutil.rmtree(self.workdir, ignore_errors=True)


# ---------------------------------------------------------------------- analysis


def per_site(rows: list[tuple[int, int, int, float]]) -> dict[int, list[tuple[int, int, float]]]:
    """CA -> [(connection, seq, arrival)] in arrival order."""
    out: dict[int, list[tuple[int, int, float]]] = defaultdict(list)
    for conn, ca, seq, at in rows:
        out[ca].append((conn, seq, at))
    return out


def check_stream(arrivals: list[tuple[int, int, float]]) -> dict[str, int]:
    """Loss, order and duplicates of one site's counters at the BMI, in arrival order:
    `missing` sequence numbers below the highest received; `out_of_order` new numbers
    that are not the next one (order kept means each new number is the next); and
    `duplicates`, numbers received again (sent again by the UPDC after a takeover or a
    reconnection), with the longest run of them."""
    seen: set[int] = set()
    duplicates = out_of_order = longest = run_len = 0
    top = -1
    for _conn, seq, _at in arrivals:
        if seq in seen:
            duplicates += 1
            run_len += 1
            longest = max(longest, run_len)
            continue
        run_len = 0
        if seq != top + 1:
            out_of_order += 1
        seen.add(seq)
        top = max(top, seq)
    return {
        "received": len(seen),
        "missing": top + 1 - len(seen),
        "out_of_order": out_of_order,
        "duplicates": duplicates,
        "longest_duplicate_run": longest,
    }


def outage(rows: list[tuple[int, int, int, float]], fault: float, window: float = 60.0) -> float:
    """The BMI's outage around `fault`: the longest gap between consecutive arrivals
    (any site) from 1 s before the fault to `window` s after it."""
    times = sorted(at for _c, _ca, _s, at in rows if fault - 1.0 <= at <= fault + window)
    if not any(t <= fault for t in times) or not any(t > fault for t in times):
        raise ValueError("no data on one side of the fault")
    return max(b - a for a, b in zip(times, times[1:], strict=False))


def stale_overlaps(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The UPDCs' side of "never two relays connected to one UPDC", from the stations'
    log: connections that brought something after another connection to the same
    station had opened (empty when fine). A connection may stay open after a newer one
    opened only if its relay is gone: a master that dies without sending FIN leaves it
    open until the station sends on it, and it brings nothing more."""
    opened_at: dict[tuple[int, int], float] = {}
    bad = []
    for e in events:
        key = (e["site"], e.get("conn", 0))
        if e["event"] == "open":
            opened_at[key] = e["t"]
        elif e["event"] == "close":
            start = opened_at.pop(key)
            later = [t for (site, _), t in opened_at.items() if site == e["site"] and t > start]
            if later and e["last_rx"] is not None and e["last_rx"] >= min(later):
                bad.append(e)
    return bad
