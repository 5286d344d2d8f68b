"""Failover lab: network namespaces, veth pairs, link managers, fault injection.

    BMI ns                 concentrator ns                      site i ns
    lo 10.0.1.1/32         lo 10.0.0.1/32 (service address)     lo 10.1.i.1/32
    c0 172.16.0.2 ======== up0 172.16.0.1      s{i}p 172.20.i.1 ======== p0 172.20.i.2
    c1 172.16.1.2 -------- up1 172.16.1.1      s{i}b 172.21.i.1 -------- p1 172.21.i.2
                           (== primary, -- backup)

Every namespace runs its own link manager (`python -m netconfig.netd`): the
concentrator's protects the uplink and every site; the BMI's and each site's stand
for the operator's and the site's own routers, which must also move their return
route (a silent fault drops traffic both ways, so both ends have to notice).
Service addresses live on loopback, on neither path, and are the routes'
prefsrc, so TCP endpoints do not change across a switch.

With `trip_groups`, the concentrator's netd also runs the trip path (the engine the
kernel offers, or `trip_engine`; smcrouted's files in the lab's workdir) to forward
those multicast groups from the BMI's service address to every site; `TripTraffic`
sends trip datagrams with scapy from the BMI namespace and logs what a receiver in
each site namespace gets (docs/trip-path.md).

Faults: carrier loss (`ip link set down` on the concentrator's end), silent loss
(nftables netdev ingress drop on both ends, carrier stays up), flapping, both paths
down, and restore. Namespace names carry a per-run prefix with the owner's pid;
`Lab.close()` (context manager, atexit) kills every process started in them and
deletes them, and `cleanup_stale()` removes leftovers of dead owners.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import IO, Any

import yaml

BASE = "nfo"  # every lab namespace name starts with this
_counter = itertools.count()
_open_labs: list[Lab] = []

CONC_SERVICE = "10.0.0.1"
BMI_SERVICE = "10.0.1.1"
NETD_METRICS = "127.0.0.1:9105"  # inside each namespace: conf/prometheus.yml's target for netd


def site_service(i: int) -> str:
    return f"10.1.{i}.1"


@dataclass(frozen=True)
class Veth:
    """One path: the concentrator's end and the peer's end of a veth pair."""

    conc_if: str
    conc_ip: str
    peer_ns: str  # lab role name: "bmi" or "site<i>"
    peer_if: str
    peer_ip: str


@dataclass(frozen=True)
class LabLink:
    name: str  # "uplink" or "site<i>"
    peer: str  # namespace role of the far end
    peer_service: str
    primary: Veth
    backup: Veth

    def path(self, role: str) -> Veth:
        if role not in ("primary", "backup"):
            raise ValueError(role)
        return self.primary if role == "primary" else self.backup


class CommandError(RuntimeError):
    pass


def run(cmd: list[str], check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, text=True, capture_output=True, input=stdin)
    if check and done.returncode != 0:
        raise CommandError(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


def add_namespace(ns: str) -> None:
    """A network namespace with lo up, set for link switches: ignore_routes_with_linkdown
    (never use a route whose device lost carrier: the kernel would black-hole into it)
    and rp_filter 0 (during a switch the two directions may briefly take different
    paths). Neighbour entries are kept fresh by the probes, so no ARP wait on a switch."""
    run(["ip", "netns", "add", ns])
    settings = []
    for scope in ("all", "default"):
        settings += [f"net.ipv4.conf.{scope}.ignore_routes_with_linkdown=1", f"net.ipv4.conf.{scope}.rp_filter=0"]
    run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", *settings])
    run(["ip", "-n", ns, "link", "set", "lo", "up"])


def add_veth(ns: str, ifname: str, peer_ns: str, peer_ifname: str, index: Iterator[int]) -> None:
    """A veth pair from `ns` to `peer_ns`. Its two ends get distinct ifindexes from
    `index`: the kernel treats a carrier change on a device whose iflink differs from its
    ifindex as urgent and notifies at once; with equal indexes (easy across namespaces,
    both count from 1) the notification is rate-limited to one per second."""
    run(["ip", "-n", ns, "link", "add", ifname, "index", str(next(index)), "type", "veth",
         "peer", "name", peer_ifname, "index", str(next(index)), "netns", peer_ns])  # fmt: skip


def spawn_in(
    ns: str, argv: list[str], log_path: str, *, env: dict[str, str] | None = None, append: bool = False
) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """`argv` in namespace `ns`, in a session of its own, output to `log_path`, running
    our own packages from the source tree whatever the caller's cwd is."""
    log = open(log_path, "ab" if append else "wb")
    full_env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    full_env["PYTHONPATH"] = root + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env.update(env or {})
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, *argv],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=full_env,
        start_new_session=True,
    )
    return proc, log


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_namespaces() -> list[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_ns_processes(ns: str) -> None:
    pids = run(["ip", "netns", "pids", ns], check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def cleanup_stale() -> list[str]:
    """Delete lab namespaces whose owning process is gone (a crashed earlier run)."""
    removed = []
    for ns in list_namespaces():
        if not ns.startswith(BASE):
            continue
        try:
            owner = int(ns[len(BASE) :].split("x", 1)[0])
        except ValueError:
            continue
        if not _pid_alive(owner):
            _kill_ns_processes(ns)
            run(["ip", "netns", "del", ns], check=False)
            removed.append(ns)
    return removed


class Lab:
    """Namespaces + veths + link managers for one test or benchmark run."""

    def __init__(
        self,
        n_sites: int = 1,
        *,
        probe_interval: float = 0.1,
        probe_misses: int = 3,
        hold_time: float = 2.0,
        failback: str = "auto",
        rto_min: float | None = None,
        site_paths: str = "netd",
        workdir: str | None = None,
        start_netd: bool = True,
        trip_groups: list[tuple[str, int]] | None = None,
        trip_lists: str = "both",
        trip_engine: str = "auto",
    ) -> None:
        if not 1 <= n_sites <= 250:
            raise ValueError("n_sites must be 1..250")
        self.n_sites = n_sites
        self.probe_interval = probe_interval
        self.probe_misses = probe_misses
        self.hold_time = hold_time
        self.failback = failback
        self.rto_min = rto_min
        # "netd": each site's two paths are routes moved by the link managers (one
        # service address per site). "endpoints": no link manager on site links;
        # the relay gets the site's two veth addresses as primary and backup endpoints
        # and fails over itself (the alternative the issue asks to measure too).
        if site_paths not in ("netd", "endpoints"):
            raise ValueError(site_paths)
        self.site_paths = site_paths
        self.start_netd = start_netd
        # Multicast trip groups (group, UDP port) the concentrator's netd forwards from
        # the BMI (source: its service address, over either uplink) to every site.
        self.trip_groups = list(trip_groups or [])
        # "both": the multicast lists name both paths of every link; "primary": only the
        # primaries (netd must fill in the backups itself).
        if trip_lists not in ("both", "primary"):
            raise ValueError(trip_lists)
        self.trip_lists = trip_lists
        self.trip_engine = trip_engine  # multicast.engine: auto, smcroute or nftables
        self.prefix = f"{BASE}{os.getpid()}x{next(_counter)}-"
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix=self.prefix)
        os.makedirs(self.workdir, exist_ok=True)
        self.procs: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []
        self.namespaces: list[str] = []
        self.uplink = LabLink(
            "uplink",
            "bmi",
            BMI_SERVICE,
            Veth("up0", "172.16.0.1", "bmi", "c0", "172.16.0.2"),
            Veth("up1", "172.16.1.1", "bmi", "c1", "172.16.1.2"),
        )
        self.sites = [
            LabLink(
                f"site{i}",
                f"site{i}",
                site_service(i),
                Veth(f"s{i}p", f"172.20.{i}.1", f"site{i}", "p0", f"172.20.{i}.2"),
                Veth(f"s{i}b", f"172.21.{i}.1", f"site{i}", "p1", f"172.21.{i}.2"),
            )
            for i in range(1, n_sites + 1)
        ]
        self._nft_tables: set[tuple[str, str]] = set()
        self.closed = False

    # ------------------------------------------------------------------ naming

    def ns(self, role: str) -> str:
        return self.prefix + role

    @property
    def links(self) -> list[LabLink]:
        return [self.uplink, *self.sites]

    def link(self, name: str) -> LabLink:
        for link in self.links:
            if link.name == name:
                return link
        raise KeyError(name)

    # ------------------------------------------------------------------ build

    def __enter__(self) -> Lab:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ip(self, role: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["ip", "-n", self.ns(role), *args], check=check)

    def build(self) -> None:
        _open_labs.append(self)
        roles = ["conc", "bmi", *[s.peer for s in self.sites]]
        for role in roles:
            add_namespace(self.ns(role))
            self.namespaces.append(self.ns(role))
        services = {"conc": CONC_SERVICE, "bmi": BMI_SERVICE}
        services.update({s.peer: s.peer_service for s in self.sites})
        for role, addr in services.items():
            # On loopback: this kernel has no dummy driver, and lo is on neither path.
            self.ip(role, "addr", "add", f"{addr}/32", "dev", "lo")
        index = itertools.count(1000)
        for link in self.links:
            for veth in (link.primary, link.backup):
                add_veth(self.ns("conc"), veth.conc_if, self.ns(veth.peer_ns), veth.peer_if, index)
                self.ip("conc", "addr", "add", f"{veth.conc_ip}/30", "dev", veth.conc_if)
                self.ip(veth.peer_ns, "addr", "add", f"{veth.peer_ip}/30", "dev", veth.peer_if)
                self.ip("conc", "link", "set", veth.conc_if, "up")
                self.ip(veth.peer_ns, "link", "set", veth.peer_if, "up")
        if self.start_netd:
            for role in self.netd_roles:
                self._start_netd(role)
            for role in self.netd_roles:
                self.wait_netd_ready(role)

    @property
    def netd_roles(self) -> list[str]:
        if self.site_paths == "endpoints":
            return ["conc", "bmi"]
        return ["conc", "bmi", *[s.peer for s in self.sites]]

    # ------------------------------------------------------------------ link managers

    def netd_config(self, role: str) -> dict[str, Any]:
        common = {
            "probe": {"interval": self.probe_interval, "misses": self.probe_misses},
            "hold_time": self.hold_time,
            "failback": self.failback,
        }
        if self.rto_min is not None:
            common["rto_min"] = self.rto_min

        def path(v: Veth, far_side: bool) -> dict[str, str]:
            if far_side:  # peer's view: next hop is the concentrator's end
                return {"interface": v.peer_if, "gateway": v.conc_ip}
            return {"interface": v.conc_if, "gateway": v.peer_ip}

        if role == "conc":
            return {
                **self._multicast_config(),
                "network": {
                    "service_address": CONC_SERVICE,
                    **common,
                    "metrics_listen": NETD_METRICS,
                    "uplink": {
                        "destinations": [f"{BMI_SERVICE}/32"],
                        "primary": path(self.uplink.primary, False),
                        "backup": path(self.uplink.backup, False),
                    },
                    "sites": [
                        {
                            "name": s.name,
                            "destinations": [f"{s.peer_service}/32"],
                            "primary": path(s.primary, False),
                            "backup": path(s.backup, False),
                        }
                        for s in self.sites
                        if self.site_paths == "netd"
                    ],
                },
            }
        link = self.uplink if role == "bmi" else self.link(role)
        return {
            "network": {
                "service_address": link.peer_service,
                **common,
                "uplink": {
                    "destinations": [f"{CONC_SERVICE}/32"],
                    "primary": path(link.primary, True),
                    "backup": path(link.backup, True),
                },
            }
        }

    def smcroute_files(self) -> dict[str, str]:
        """The concentrator's smcrouted: its own socket and pid file (one per namespace)."""
        return {
            key: os.path.join(self.workdir, f"smcroute.{ext}")
            for key, ext in (("config_file", "conf"), ("socket", "sock"), ("pid_file", "pid"))
        }

    def _multicast_config(self) -> dict[str, Any]:
        if not self.trip_groups:
            return {}
        paths = ("primary",) if self.trip_lists == "primary" else ("primary", "backup")
        inbound = [self.uplink.path(p).conc_if for p in paths]
        outbound = [s.path(p).conc_if for s in self.sites for p in paths]
        engine = {} if self.trip_engine == "auto" else {"engine": self.trip_engine}  # auto: the default
        return {
            "multicast": {
                **engine,
                "smcroute": self.smcroute_files(),
                "groups": [
                    {"group": group, "port": port, "sources": [BMI_SERVICE], "inbound": inbound, "outbound": outbound}
                    for group, port in self.trip_groups
                ],
            }
        }

    def state_file(self, role: str) -> str:
        return os.path.join(self.workdir, f"netd-{role}.json")

    def _start_netd(
        self, role: str, config: dict[str, Any] | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `role`'s netd with its configuration (`config` in place of the lab's)."""
        conf = os.path.join(self.workdir, f"netd-{role}.yaml")
        with open(conf, "w") as f:
            yaml.safe_dump(config if config is not None else self.netd_config(role), f)
        return self.spawn(
            role,
            f"netd-{role}",
            [sys.executable, "-m", "netconfig.netd", "--config", conf, "--state", self.state_file(role)],
            env=env,
        )

    def kill_netd(self, role: str = "conc") -> None:
        """SIGKILL `role`'s netd (a crash: no cleanup of its own)."""
        for label, proc, _log in self.procs:
            if label == f"netd-{role}" and proc.poll() is None:
                proc._stopped = True  # type: ignore[attr-defined]  # killed on purpose
                proc.kill()
                proc.wait(5.0)

    def netd_state(self, role: str = "conc") -> dict[str, Any]:
        try:
            with open(self.state_file(role)) as f:
                state: dict[str, Any] = json.load(f)
                return state
        except (OSError, ValueError):
            return {}

    def netd_metrics(self, role: str = "conc") -> str:
        """The link manager's Prometheus exposition, fetched inside its namespace."""
        url = f"http://{NETD_METRICS}/metrics"
        fetch = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=5).read().decode())"
        return run(["ip", "netns", "exec", self.ns(role), sys.executable, "-c", fetch]).stdout

    def wait_netd_ready(self, role: str, timeout: float = 15.0) -> None:
        """Until the netd started last in `role` says it is ready (not the state file an
        earlier one left: `ip netns exec` execs, so the pid is the process's)."""
        pid = [proc.pid for label, proc, _log in self.procs if label == f"netd-{role}"][-1]
        wait_for(
            lambda: (
                self.assert_running()
                or (self.netd_state(role).get("ready") is True and self.netd_state(role).get("pid") == pid)
            ),
            timeout,
            f"netd in {role} ready",
            self._log_tail(f"netd-{role}"),
        )

    def active(self, link: str, role: str = "conc") -> str | None:
        st = self.netd_state(role).get("links", {}).get(link)
        return None if st is None else str(st["active"])

    def wait_active(self, link: str, path: str, timeout: float = 20.0, roles: tuple[str, ...] | None = None) -> None:
        """Wait until the link managers at both ends carry `link` on `path`."""
        lab_link = self.link(link)
        for role in roles or ("conc", lab_link.peer):
            name = link if role == "conc" else "uplink"
            wait_for(partial(self._carries, name, role, path), timeout, f"{role}: {link} on {path}")

    def _carries(self, name: str, role: str, path: str) -> bool:
        return self.active(name, role) == path and not self.netd_state(role)["links"][name]["all_down"]

    def wait_healthy(self, link: str, path: str, timeout: float = 20.0) -> None:
        lab_link = self.link(link)
        for role in ("conc", lab_link.peer):
            name = link if role == "conc" else "uplink"
            wait_for(partial(self._healthy, name, role, path), timeout, f"{role}: {link} {path} healthy")

    def _healthy(self, name: str, role: str, path: str) -> bool:
        return self.netd_state(role).get("links", {}).get(name, {}).get("healthy", {}).get(path) is True

    def switch_count(self, link: str, role: str = "conc") -> int:
        """Switches so far (the recent_switches list keeps only the last 100)."""
        name = link if role == "conc" else "uplink"
        st = self.netd_state(role).get("links", {}).get(name)
        return 0 if st is None else int(st["switches_total"])

    def switches(self, link: str, role: str = "conc") -> list[dict[str, Any]]:
        name = link if role == "conc" else "uplink"
        st = self.netd_state(role).get("links", {}).get(name)
        return [] if st is None else list(st["recent_switches"])

    # ------------------------------------------------------------------ processes

    def spawn(
        self, role: str, label: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        proc, log = spawn_in(self.ns(role), argv, os.path.join(self.workdir, f"{label}.log"), env=env)
        self.procs.append((label, proc, log))
        return proc

    def assert_running(self) -> bool:
        """Raise (with its log) if a process we started has exited on its own; else False
        (so that it can lead a wait_for condition: `lab.assert_running() or cond`)."""
        for label, proc, _log in self.procs:
            if proc.poll() is not None and not getattr(proc, "_stopped", False):
                raise RuntimeError(f"{label} exited with {proc.returncode}:\n{self._log_tail(label)()}")
        return False

    def _log_tail(self, label: str) -> Callable[[], str]:
        def tail() -> str:
            try:
                with open(os.path.join(self.workdir, f"{label}.log"), "rb") as f:
                    return f.read()[-3000:].decode(errors="replace")
            except OSError:
                return ""

        return tail

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 5.0) -> int:
        proc._stopped = True  # type: ignore[attr-defined]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    # ------------------------------------------------------------------ faults

    def link_down(self, link: str, path: str) -> None:
        """Carrier loss: our end administratively down, the far end loses carrier."""
        self.ip("conc", "link", "set", self.link(link).path(path).conc_if, "down")

    def link_up(self, link: str, path: str) -> None:
        self.ip("conc", "link", "set", self.link(link).path(path).conc_if, "up")

    def _nft_table(self, veth: Veth) -> str:
        return f"fault_{veth.conc_if}"

    def silent_loss(self, link: str, path: str) -> None:
        """Drop everything arriving on both ends of the path; carrier stays up."""
        veth = self.link(link).path(path)
        table = self._nft_table(veth)
        for role, ifname in (("conc", veth.conc_if), (veth.peer_ns, veth.peer_if)):
            script = (
                f"table netdev {table} {{\n"
                f"  chain ingress {{\n"
                f"    type filter hook ingress device {ifname} priority -500; policy accept;\n"
                f"    counter drop\n"
                f"  }}\n"
                f"}}\n"
            )
            run(["ip", "netns", "exec", self.ns(role), "nft", "-f", "-"], stdin=script)
            self._nft_tables.add((role, table))

    def silent_restore(self, link: str, path: str) -> None:
        veth = self.link(link).path(path)
        table = self._nft_table(veth)
        for role in ("conc", veth.peer_ns):
            run(["ip", "netns", "exec", self.ns(role), "nft", "delete", "table", "netdev", table], check=False)
            self._nft_tables.discard((role, table))

    def restore_all(self) -> None:
        for link in self.links:
            for path in ("primary", "backup"):
                self.silent_restore(link.name, path)
                self.link_up(link.name, path)

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for _label, proc, log in reversed(self.procs):
            try:
                self.stop(proc, timeout=3.0)
            finally:
                log.close()
        for ns in reversed(self.namespaces):
            _kill_ns_processes(ns)  # anything started inside that we did not track
            run(["ip", "netns", "del", ns], check=False)
        self.namespaces.clear()
        if self in _open_labs:
            _open_labs.remove(self)
        if self._own_workdir and not os.environ.get("NETCONFIG_KEEP_LAB"):
            shutil.rmtree(self.workdir, ignore_errors=True)


def wait_for(
    cond: Callable[[], bool], timeout: float, what: str, detail: Callable[[], str] | None = None, interval: float = 0.01
) -> float:
    """Poll `cond` until true; returns the seconds waited; raises TimeoutError with `what`."""
    start = time.monotonic()
    while True:
        if cond():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            extra = f"\n{detail()}" if detail is not None else ""
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}{extra}")
        time.sleep(interval)


@atexit.register
def _close_all() -> None:
    for lab in list(_open_labs):
        lab.close()


def install_signal_cleanup() -> None:
    """For CLI entry points: SIGTERM/SIGHUP unwind (running every Lab.close()).

    Once: later signals are ignored, because one raised inside Lab.close() would cut
    the unwinding short and leave namespaces and processes behind (`timeout` forwards
    the SIGTERM that `pkill` sends to it as well, so two arrive at once)."""

    def handler(signum: int, _frame: object) -> None:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


# ---------------------------------------------------------------------- traffic


class Traffic:
    """Numbered streams through the lab; the receiver in the BMI namespace logs
    (connection, stream, seq, arrival) to `out`, which the harness reads live."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.out = os.path.join(lab.workdir, f"{type(self).__name__.lower()}.bin")
        self.procs: list[subprocess.Popen[bytes]] = []
        self.streams: list[int] = []

    def _listening(self, role: str, port: int) -> bool:
        out = run(["ip", "netns", "exec", self.lab.ns(role), "ss", "-Hltn", f"sport = :{port}"], check=False).stdout
        self.lab.assert_running()
        return bool(out.strip())

    def rows(self) -> list[tuple[int, int, int, float]]:
        from .harness_peers import read_sink

        try:
            return read_sink(self.out)
        except OSError:
            return []

    def flowing(self, stream: int, since: float) -> bool:
        """A record of `stream` arrived after `since` (raises if a lab process died)."""
        return self.lab.assert_running() or any(st == stream and t > since for _c, st, _s, t in self.rows()[-20000:])

    def wait_flowing(self, stream: int | None = None, timeout: float = 10.0, since: float | None = None) -> float:
        """Wait for a record of `stream` (default: every stream) arriving after `since`."""
        start = time.monotonic() if since is None else since
        waited = 0.0
        for st in [stream] if stream is not None else self.streams:
            waited = wait_for(partial(self.flowing, st, start), timeout, f"stream {st} flowing", interval=0.02)
        return waited

    def start(self, timeout: float = 15.0) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        for proc in self.procs:
            self.lab.stop(proc)


class Iec104Stream(Traffic):
    """The real thing: UPDC stations in the site namespaces, the relay
    (`python -m concentrator relay`) in the concentrator's, a BMI in the BMI's.

    Each station sends counters (M_IT_NA_1, value = sequence number) at `rate` ASDU/s
    with CA 100 + site number; the BMI logs each ASDU received. Sites have one
    endpoint (their service address): both paths are covered by the link manager.
    """

    PORT = 2404

    def __init__(self, lab: Lab, rate: float = 500.0, relay_extra: dict[str, Any] | None = None) -> None:
        super().__init__(lab)
        self.rate = rate
        self.relay_extra = relay_extra or {}
        self.streams = [100 + i for i in range(1, len(lab.sites) + 1)]

    def relay_config(self) -> dict[str, Any]:
        return {
            "uplink": {"listen": f"{CONC_SERVICE}:{self.PORT}", "allowed_peers": [BMI_SERVICE], **self.relay_extra},
            "sites": [
                {
                    "name": s.name,
                    "common_addresses": [100 + i],
                    "endpoints": self.endpoints(s),
                    "interruptibility": "instantaneous",
                }
                for i, s in enumerate(self.lab.sites, start=1)
            ],
            "metrics": {"listen": "127.0.0.1:9104"},
        }

    def endpoints(self, site: LabLink) -> list[str]:
        if self.lab.site_paths == "endpoints":
            return [f"{site.primary.peer_ip}:{self.PORT}", f"{site.backup.peer_ip}:{self.PORT}"]
        return [f"{site.peer_service}:{self.PORT}"]

    def start(self, timeout: float = 15.0) -> None:
        py = [sys.executable, "-m", "tests.lab.harness_peers"]
        for i, site in enumerate(self.lab.sites, start=1):
            listen = "0.0.0.0" if self.lab.site_paths == "endpoints" else site.peer_service
            self.procs.append(
                self.lab.spawn(
                    site.peer,
                    f"station-{site.name}",
                    [
                        *py,
                        "station",
                        "--listen",
                        f"{listen}:{self.PORT}",
                        "--ca",
                        str(100 + i),
                        "--rate",
                        str(self.rate),
                    ],
                )
            )
        for site in self.lab.sites:
            wait_for(partial(self._listening, site.peer, self.PORT), timeout, f"station {site.name}")
        conf = os.path.join(self.lab.workdir, "relay.yaml")
        with open(conf, "w") as f:
            yaml.safe_dump(self.relay_config(), f)
        self.relay = self.lab.spawn("conc", "relay", [sys.executable, "-m", "concentrator", "relay", "--config", conf])
        self.procs.append(self.relay)
        wait_for(lambda: self._listening("conc", self.PORT), timeout, "relay listening", self.lab._log_tail("relay"))
        self._master_label = "master"
        self.procs.append(
            self.lab.spawn(
                "bmi", "master", [*py, "master", "--target", f"{CONC_SERVICE}:{self.PORT}", "--out", self.out]
            )
        )
        self.wait_flowing(timeout=timeout)

    def site_connections(self, site: str) -> int:
        """How many connections the relay opened to `site`'s station so far."""
        text = self.lab._log_tail(f"station-{site}")()
        counts = [int(line.rsplit("=", 1)[1]) for line in text.splitlines() if line.startswith("station: connections=")]
        return max(counts, default=0)

    def bmi_connections(self) -> int:
        """How many IEC 104 connections the BMI opened to the relay so far."""
        text = self.lab._log_tail("master")()
        return sum(
            1 for line in text.splitlines() if line.startswith("master: connection ") and line.rstrip()[-1].isdigit()
        )


class TcpStream(Traffic):
    """Numbered TCP streams site -> concentrator -> BMI through the lab.

    One source per site (stream id = site number) connects to a forwarder on the
    concentrator's service address, which opens one connection per site to the sink
    on the BMI's service address: every record crosses a site link and the uplink.
    The forwarder is a stand-in for the relay (plain bytes, no IEC 104).
    """

    PORT_FWD = 24040
    PORT_SINK = 24041

    def __init__(self, lab: Lab, rate: float = 1000.0) -> None:
        super().__init__(lab)
        self.rate = rate
        self.streams = list(range(1, len(lab.sites) + 1))

    def start(self, timeout: float = 10.0) -> None:
        py = [sys.executable, "-m", "tests.lab.harness_peers"]
        self.procs.append(
            self.lab.spawn(
                "bmi", "sink", [*py, "sink", "--listen", f"{BMI_SERVICE}:{self.PORT_SINK}", "--out", self.out]
            )
        )
        wait_for(lambda: self._listening("bmi", self.PORT_SINK), timeout, "sink listening")
        self.procs.append(
            self.lab.spawn(
                "conc",
                "forward",
                [
                    *py,
                    "forward",
                    "--listen",
                    f"{CONC_SERVICE}:{self.PORT_FWD}",
                    "--target",
                    f"{BMI_SERVICE}:{self.PORT_SINK}",
                ],
            )
        )
        wait_for(lambda: self._listening("conc", self.PORT_FWD), timeout, "forwarder listening")
        for i, site in enumerate(self.lab.sites, start=1):
            self.procs.append(
                self.lab.spawn(
                    site.peer,
                    f"source-{site.name}",
                    [
                        *py,
                        "source",
                        "--target",
                        f"{CONC_SERVICE}:{self.PORT_FWD}",
                        "--stream",
                        str(i),
                        "--rate",
                        str(self.rate),
                    ],
                )
            )
        self.wait_flowing(timeout=timeout)


def engine_unavailable(engine: str, cap: Any) -> str | None:
    """Why the trip path engine `engine` cannot run on a kernel with `cap`
    (netconfig.trip.capability.Capability), from its probe alone; None when it can. The one
    reason a trip test may skip, even in CI: a tool missing is never one."""
    from netconfig.trip.config import SMCROUTE

    if engine == SMCROUTE and cap.multicast_routing.present is False:
        return f"engine smcroute needs the kernel's IPv4 multicast routing: {cap.multicast_routing.how}"
    return None


def require_engine(engine: str) -> str:
    """Skip where this kernel cannot run `engine` (auto: the one it would choose);
    otherwise require what the engine needs (CI fails when a tool is missing). Returns
    the engine the test runs on."""
    import pytest

    from netconfig.trip.capability import choose, probe
    from netconfig.trip.config import AUTO, SMCROUTE
    from tests.conftest import require_tool

    cap = probe()
    if engine == AUTO:
        chosen = choose(AUTO, cap, 2).engine
        assert chosen is not None, cap.describe()
        engine = chosen
    why = engine_unavailable(engine, cap)
    if why is not None:
        pytest.skip(why)
    if engine == SMCROUTE:
        require_tool("smcrouted", "smcroute")
    return engine


class TripTraffic:
    """Multicast trip datagrams from the BMI namespace to a receiver in every site
    namespace (tests.lab.trip_peers): what was sent and what each site got, by hash."""

    def __init__(self, lab: Lab, group: str, port: int) -> None:
        self.lab, self.group, self.port = lab, group, port
        self.sent_file = os.path.join(lab.workdir, f"trip-sent-{group}.jsonl")
        self.next_seq = 0

    def received_file(self, site: LabLink) -> str:
        return os.path.join(self.lab.workdir, f"trip-recv-{site.name}-{self.group}.jsonl")

    def start(self, timeout: float = 30.0, unicast_port: int | None = None) -> None:
        """One receiver process for every site (its sockets in the sites' namespaces);
        with `unicast_port` it also logs unicast datagrams to each site's service address."""
        spec = [
            {
                "netns": self.lab.ns(site.peer),
                "ifaces": f"{site.primary.peer_if},{site.backup.peer_if}",
                "out": self.received_file(site),
                **({"unicast": f"{site.peer_service}:{unicast_port}"} if unicast_port else {}),
            }
            for site in self.lab.sites
        ]
        spec_file = os.path.join(self.lab.workdir, f"trip-recv-{self.group}.json")
        with open(spec_file, "w") as f:
            json.dump(spec, f)
        label = f"trip-recv-{self.group}"
        self.lab.spawn(
            self.lab.sites[0].peer,
            label,
            [
                sys.executable,
                "-m",
                "tests.lab.trip_peers",
                "receive",
                "--group",
                self.group,
                "--port",
                str(self.port),
                "--spec",
                spec_file,
            ],
        )
        wait_for(
            lambda: "receiver: ready" in self.lab._log_tail(label)() or bool(self.lab.assert_running()),
            timeout,
            "trip receiver",
        )

    def send(self, count: int, path: str = "primary", timeout: float = 30.0) -> list[dict[str, Any]]:
        """Send `count` datagrams out of the BMI's end of the uplink's `path`; returns them."""
        first = self.next_seq
        self.next_seq += count
        iface = self.lab.uplink.path(path).peer_if
        run(
            [
                "ip",
                "netns",
                "exec",
                self.lab.ns("bmi"),
                sys.executable,
                "-m",
                "tests.lab.trip_peers",
                "send",
                "--group",
                self.group,
                "--port",
                str(self.port),
                "--src",
                BMI_SERVICE,
                "--iface",
                iface,
                "--count",
                str(count),
                "--first",
                str(first),
                "--out",
                self.sent_file,
            ]
        )
        return [s for s in _jsonl(self.sent_file) if first <= s["seq"] < first + count]

    def received(self, site: LabLink) -> list[dict[str, Any]]:
        return _jsonl(self.received_file(site))

    def wait_delivered(self, sent: list[dict[str, Any]], timeout: float = 5.0) -> None:
        """Until every site has received every datagram of `sent` (matched by hash)."""
        want = {s["sha256"] for s in sent}
        for site in self.lab.sites:
            wait_for(
                partial(self._delivered, site, want),
                timeout,
                f"{len(want)} trip datagrams at {site.name}",
                partial(self._delivered_count, site, want),
            )

    def _delivered(self, site: LabLink, want: set[str]) -> bool:
        return want <= {r["sha256"] for r in self.received(site)}

    def _delivered_count(self, site: LabLink, want: set[str]) -> str:
        return f"got {len(want & {r['sha256'] for r in self.received(site)})}"


def _jsonl(path: str) -> list[dict[str, Any]]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.endswith("\n")]
    except OSError:
        return []


# ---------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """`python -m tests.lab.harness up|cleanup`: a lab to look at by hand, or tidy up.

    Measurements: bench/failover.py (same harness, repeated faults, statistics).
    """
    import argparse

    ap = argparse.ArgumentParser(prog="python -m tests.lab.harness", description=main.__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build a lab (and traffic) and keep it until Ctrl-C")
    up.add_argument("--sites", type=int, default=2)
    up.add_argument("--probe-interval", type=float, default=0.1)
    up.add_argument("--misses", type=int, default=3)
    up.add_argument("--hold-time", type=float, default=2.0)
    up.add_argument("--traffic", choices=["none", "iec104", "tcp"], default="iec104")
    up.add_argument("--rate", type=float, default=500.0)
    sub.add_parser("cleanup", help="delete namespaces left by labs whose owner died")
    args = ap.parse_args(argv)
    if args.cmd == "cleanup":
        for ns in cleanup_stale():
            print(f"deleted {ns}")
        return 0
    install_signal_cleanup()
    with Lab(args.sites, probe_interval=args.probe_interval, probe_misses=args.misses, hold_time=args.hold_time) as lab:
        traffic: Traffic | None = None
        if args.traffic == "iec104":
            traffic = Iec104Stream(lab, rate=args.rate)
        elif args.traffic == "tcp":
            traffic = TcpStream(lab, rate=args.rate)
        if traffic is not None:
            traffic.start()
        print(f"lab up in {lab.workdir}; namespaces:")
        for ns in lab.namespaces:
            print(f"  {ns}")
        print("faults by hand, e.g.: ip -n " + lab.ns("conc") + " link set up0 down")
        print("Ctrl-C to tear down", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
