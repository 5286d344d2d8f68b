"""Chaos soak (issue 26): the appliance in the namespace lab, 100 two-path sites, faults
from a seeded random schedule, invariants checked all the time (root).

    python -m bench.soak --duration 3600 --seed 26 \
        --json bench/results/2026-12-07-1738-soak-60min.json --svg bench/results/2026-12-07-1738-soak-60min.svg

The lab (tests/lab/harness.py): the concentrator's namespace runs the relay
(`concentrator relay`), netd with the trip path (engine nftables: this kernel has no
multicast routing) and a real Prometheus with the shipped alert rules; the BMI's runs
its netd and the BMI (tests/lab/soak_peers.py); each site's namespace is reached over
two veth paths, and its return route falls back to the backup path when the primary
loses carrier (kernel routes with metrics; 100 more netd processes would cost more CPU
than the relay under test). Every site's UPDC lives in one process (soak_peers
`stations`), each with its listening socket in its own namespace; every site streams
stamped measured values at its own rate (about 1,000 ASDU/s in all); the BMI sends
single commands (some to unknown CAs) and trip datagrams go out every 2 s.

Faults (kinds in KINDS) start at random times with random durations and overlap; the
schedule is made from the seed before the run, written to the log with each fault's
actual start and end, so a failure replays from its seed. Checked while it runs:

- per site, no ASDU lost (a gap in the sequence), none reordered; duplicates only in
  the wake of a fault that ends an uplink connection or the relay, at most the site's
  k window (12) in a row, counted per fault kind;
- every command reaches exactly its site once (and its confirmation comes back) or,
  for an unknown CA, gets the cause-46 answer; one that does not, outside a fault
  that explains it, is a violation;
- every trip datagram reaches every site whose path is up;
- the relay's and netd's RSS, descriptors (and those not explained by a live TCP
  socket), threads and log size every 10 s; slope over the last half;
- the relay's counters against what the BMI logged (forwarded = received, within
  what was in flight), and at the end per site;
- Prometheus's ALERTS: every alert a fault should raise fired, none fired that no
  fault explains, all cleared.

At the end faults are undone, production stops and everything produced must arrive.
Exit status 1 when an invariant broke. `--plant drop:N` (relay drops every N-th site
ASDU while confirming it) and `--plant fd-leak` (one descriptor leaked per site
connection) run the relay through tests/lab/soak_plant.py, to show the checks fail.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import yaml

from bench.common import percentile
from bench.loadgen import descendants
from monitoring.scrape_process import Limits
from tests.lab.harness import (
    BMI_SERVICE,
    CONC_SERVICE,
    Iec104Stream,
    Lab,
    install_signal_cleanup,
    run,
    spawn_in,
    wait_for,
)
from tests.lab.soak_peers import FOREIGN_CA, ROW, in_netns
from tests.lab.trip_peers import trip_payload

GROUP, TRIP_PORT = "239.192.10.1", 30104
PORT = 2404
SITE_K = 12
UPLINK_K = 12
# The exporter answers from a snapshot of the relay at most this old (its Limits.snapshot_interval,
# plus a margin): the relay's counters may trail what the BMI logged meanwhile.
SNAPSHOT_AGE = Limits().snapshot_interval + 0.1
PROM = "127.0.0.1:9090"
RELAY_OTHER_FDS = 16  # descriptors a relay holds besides its live TCP sockets: 9 measured, whatever the sites
RELAY_METRICS = "127.0.0.1:9104"
UNKNOWN_CAS = [900, 901, 902]
CAUSE_ACT_CON = 7
CAUSE_NEGATIVE_46 = 0x40 | 46
TYPE_STAMPED, TYPE_COMMAND = 13, 45
# Faults that end an uplink connection or the relay: the only ones after which the BMI
# may see an ASDU twice (it had it, the confirmation did not reach the site).
DUPLICATE_CAUSES = {"relay_restart", "bmi_restart", "ed2_switch", "uplink_both_down"}
# The same for one site: its connection lost (its UPDC restarted or hostile, both its
# paths down) after the BMI confirmed a frame and before the relay's confirmation of it
# reached the UPDC, which sends it again (IEC 104 cannot tell it is the same frame).
SITE_DUPLICATE_CAUSES = {"updc_restart", "hostile_site", "site_both_down"}
UPLINK_WIDE = {"relay_restart", "bmi_restart", "ed2_switch", "uplink_both_down", "uplink_primary_down",
               "uplink_primary_silent", "netd_restart"}  # fmt: skip


def site_ca(i: int) -> int:
    """The common address of site<i>: its UPDC's, and the one its faults and checks name."""
    return 100 + i


def ca_site(ca: int) -> str:
    return f"site{ca - 100}"


def target_ca(target: str) -> int:
    """The common address a fault's target names; 0 when the target is not a site."""
    return site_ca(int(target[4:])) if target.startswith("site") else 0


# ---------------------------------------------------------------------- schedule


@dataclass
class Fault:
    id: int
    kind: str
    target: str  # "uplink", "site<i>", "relay", "netd", "bmi"
    at: float  # planned start, s after the run began
    duration: float
    params: dict[str, Any] = field(default_factory=dict)
    started: float | None = None  # monotonic
    ended: float | None = None
    started_unix: float | None = None
    ended_unix: float | None = None
    note: str = ""
    # A foreign UPDC's ASDUs left in its queue leave on its next connection, which can
    # come after the fault (the BMI away meanwhile): when the last of them left.
    effects_until: float | None = None

    @property
    def resource(self) -> str:
        if self.kind in ("site_primary_down", "site_both_down") or (
            self.kind == "path_loss" and self.target != "uplink"
        ):
            return f"{self.target}.paths"
        if self.kind in ("updc_restart", "hostile_site"):
            return f"{self.target}.updc"
        if self.kind.startswith("uplink") or self.kind == "path_loss":
            return "uplink.paths"
        if self.kind in ("bmi_restart", "ed2_switch", "hostile_bmi"):
            return "bmi"
        return self.kind  # relay_restart, netd_restart

    def span(self, end_default: float) -> tuple[float, float]:
        start = self.started if self.started is not None else math.inf
        return start, self.ended if self.ended is not None else end_default


def _two_ranges(rng: random.Random, short: tuple[float, float], long: tuple[float, float], p_long: float) -> float:
    lo, hi = long if rng.random() < p_long else short
    return round(rng.uniform(lo, hi), 2)


# kind: (weight, duration maker)
KINDS: dict[str, tuple[float, Callable[[random.Random], float]]] = {
    "site_primary_down": (14, lambda r: round(r.uniform(2, 45), 2)),
    "site_both_down": (8, lambda r: _two_ranges(r, (2, 15), (70, 90), 0.3)),
    "updc_restart": (10, lambda r: _two_ranges(r, (1, 10), (40, 55), 0.3)),
    "uplink_primary_down": (6, lambda r: _two_ranges(r, (2, 10), (30, 45), 0.4)),
    "uplink_primary_silent": (4, lambda r: round(r.uniform(3, 30), 2)),
    "uplink_both_down": (4, lambda r: _two_ranges(r, (1, 8), (22, 35), 0.25)),
    "bmi_restart": (5, lambda r: _two_ranges(r, (0.5, 8), (40, 50), 0.25)),
    "ed2_switch": (8, lambda r: round(r.uniform(2, 20), 2)),
    "netd_restart": (8, lambda r: 0.1),  # conc/systemd: Restart=always, RestartSec=100ms
    "relay_restart": (4, lambda r: round(1.0 + r.uniform(0, 4), 2)),  # RestartSec=1s, plus a slow start
    "hostile_site": (8, lambda r: round(r.uniform(5, 40), 2)),
    "hostile_bmi": (4, lambda r: round(r.uniform(5, 30), 2)),
    "path_loss": (10, lambda r: round(r.uniform(10, 60), 2)),
}
HOSTILE_KINDS = ["garbage", "greedy", "testfr", "foreign"]


def make_schedule(
    seed: int,
    duration: float,
    n_sites: int,
    mean_gap: float,
    max_fault: float,
    without: frozenset[str] = frozenset(),
    relay_kills_until: float | None = None,
) -> list[Fault]:
    """Faults from `seed`: exponential gaps, weighted kinds, random targets; two faults
    never hold the same resource (a site's paths, its UPDC, the uplink's paths, the
    BMI, the relay, netd) at once, planned with a settle time of 3 s between them.
    `relay_kills_until` leaves out the relay kills drawn after that time, and only them
    (the same draws: every other fault as in the full schedule), so that the relay's
    last life is long enough to judge its memory."""
    rng = random.Random(seed)
    kinds = [k for k in KINDS if k not in without]
    weights = [KINDS[k][0] for k in kinds]
    busy: dict[str, float] = {}
    faults: list[Fault] = []
    t = 15.0
    end = duration - 10.0
    while True:
        t += rng.expovariate(1.0 / mean_gap)
        if t >= end:
            return faults
        kind = rng.choices(kinds, weights)[0]
        dur = min(KINDS[kind][1](rng), max_fault, end - t)
        params: dict[str, Any] = {}
        target = {"relay_restart": "relay", "netd_restart": "netd"}.get(kind, "bmi")
        if kind.startswith("site") or kind in ("updc_restart", "hostile_site"):
            target = f"site{rng.randint(1, n_sites)}"
        elif kind.startswith("uplink"):
            target = "uplink"
        elif kind == "path_loss":
            target = "uplink" if rng.random() < 0.25 else f"site{rng.randint(1, n_sites)}"
            params = {"path": "primary", "percent": rng.randint(5, 30)}
        if kind == "hostile_site":
            params = {"hostile": rng.choice(HOSTILE_KINDS)}
        fault = Fault(len(faults), kind, target, round(t, 2), dur, params)
        if kind == "relay_restart" and relay_kills_until is not None and t > relay_kills_until:
            continue
        if busy.get(fault.resource, -1.0) > t:
            continue
        busy[fault.resource] = t + dur + 3.0
        faults.append(fault)


# ---------------------------------------------------------------------- helpers


def http_get(netns: str, url: str, timeout: float = 5.0) -> str:
    return str(in_netns(netns, lambda: urllib.request.urlopen(url, timeout=timeout).read().decode()))


def metric_values(text: str, name: str) -> dict[str, float]:
    """{labels: value} of one metric family in an exposition."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {"):
            labels, _, value = line[len(name) :].rpartition(" ")
            out[labels.strip()] = float(value)
    return out


def proc_resources(pid: int) -> dict[str, float]:
    """RSS (MB), and of it the anonymous memory (the heap: where a leak shows) and the
    pages of mapped files (code and libraries, touched as paths run for the first
    time: bounded by their size); descriptors, descriptors that are not a live TCP
    socket of the process's namespace (established, connecting or listening), threads."""
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    if "VmRSS" not in status:  # a zombie: nothing left to measure
        raise ProcessLookupError(pid)
    fds = os.listdir(f"/proc/{pid}/fd")
    inodes = []
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.append(target[8:-1])
    live = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[3] in ("01", "02", "0A"):
                        live.add(cols[9])
        except OSError:
            pass
    return {
        "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
        "rss_anon_mb": int(status["RssAnon"].split()[0]) / 1024,
        "rss_file_mb": int(status["RssFile"].split()[0]) / 1024,
        "fds": len(fds),
        "unexplained_fds": len(fds) - sum(1 for i in inodes if i in live),
        "threads": int(status["Threads"]),
    }


def pooled_slope(samples: list[dict[str, Any]], key: str, since: float, warmup: float = 60.0) -> float | None:
    """Least-squares slope (per hour) of `key` against time over samples after `since`,
    within each process incarnation (one intercept per pid), leaving out each
    incarnation's first `warmup` s: growth inside a process's life, which a restart
    would otherwise hide or fake."""
    groups: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for s in samples:
        if s["t"] >= since and s["t"] - s["born"] >= warmup and s.get(key) is not None:
            groups[s["pid"]].append((s["t"], s[key]))
    num = den = 0.0
    for points in groups.values():
        if len(points) < 3:
            continue
        mt = sum(p[0] for p in points) / len(points)
        my = sum(p[1] for p in points) / len(points)
        num += sum((p[0] - mt) * (p[1] - my) for p in points)
        den += sum((p[0] - mt) ** 2 for p in points)
    return num / den * 3600 if den else None


# ---------------------------------------------------------------------- the soak


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.n = args.sites
        self.log_file = open(args.log, "a", buffering=1) if args.log else None
        rng = random.Random(args.seed ^ 0x5EED)
        raw = [rng.lognormvariate(0, 0.8) for _ in range(self.n)]
        scale = args.rate / sum(raw)
        self.rates = {site_ca(i): round(max(0.5, raw[i - 1] * scale), 2) for i in range(1, self.n + 1)}
        without = frozenset(k for k in (args.without or "").split(",") if k)
        self.schedule = make_schedule(
            args.seed, args.duration, self.n, args.mean_gap, args.max_fault, without, args.relay_kills_until
        )
        self.violations: list[dict[str, Any]] = []
        self.t0 = 0.0
        self.t0_unix = 0.0
        # per site: next expected sequence, sequences seen above it, largest seen, run of duplicates
        self.contig: dict[int, int] = defaultdict(int)
        self.ahead: dict[int, set[int]] = defaultdict(set)
        self.gaps: dict[int, set[int]] = defaultdict(set)  # missing so far (reordered if they come)
        self.dup_run: dict[int, int] = defaultdict(int)
        self.first_arrivals = 0
        self.rows_read = 0
        self.rows_offset = 0
        self.conn_rows: Counter[int] = Counter()
        self.rows_history: deque[tuple[float, Counter[int]]] = deque(maxlen=32)  # (read at, conn_rows then)
        self.conn_rows_times: dict[int, list[float]] = defaultdict(list)
        self.latency_by_minute: dict[int, list[float]] = defaultdict(list)
        self.duplicates_by_kind: Counter[str] = Counter()
        self.lost_by_kind: Counter[str] = Counter()
        self.reordered_by_kind: Counter[str] = Counter()
        self.other_rows: Counter[str] = Counter()
        self.answers: dict[int, list[tuple[int, int, float]]] = defaultdict(list)  # id -> (cause, ca, t)
        self.commands_sent: dict[int, dict[str, Any]] = {}
        self.command_deliveries: dict[int, list[dict[str, Any]]] = defaultdict(list)
        self.command_outcomes: Counter[str] = Counter()
        self.commands_checked: set[int] = set()
        self.events_offset = 0
        self.station_cmd_offset = 0
        self.bmi_conns: dict[int, float] = {}  # conn -> opened (monotonic)
        self.bmi_closed: set[int] = set()
        self.trips: list[dict[str, Any]] = []
        self.trip_offsets: dict[int, int] = defaultdict(int)
        self.trip_received: dict[int, set[int]] = defaultdict(set)  # site index -> seqs
        self.trip_outcomes: Counter[str] = Counter()
        self.trip_missed_by_kind: Counter[str] = Counter()
        self.trip_checked = 0
        self.samples: list[dict[str, Any]] = []
        self.metric_checks: list[dict[str, Any]] = []
        self.relay_started = 0.0
        self.relay_generation = 0
        self.netd_down: list[tuple[float, float]] = []

    # ------------------------------------------------------------------ logging
    def log(self, message: str) -> None:
        line = f"{time.monotonic() - self.t0:9.2f} s  {message}"
        print(line, flush=True)
        if self.log_file:
            self.log_file.write(line + "\n")

    def violate(self, kind: str, detail: str, **extra: object) -> None:
        t = time.monotonic() - self.t0
        active = sorted({f.kind for f in self.active_at(time.monotonic(), margin=2.0)})
        self.violations.append({"t": round(t, 2), "kind": kind, "detail": detail, "active_faults": active, **extra})
        self.log(f"VIOLATION {kind}: {detail} (faults active: {', '.join(active) or 'none'})")

    def active_at(self, t: float, margin: float = 0.0, after: float = 0.0) -> list[Fault]:
        """Faults started by t + margin and ended no earlier than t - after."""
        now = time.monotonic()
        out = []
        for f in self.schedule:
            start, end = f.span(now)
            if start - margin <= t <= end + after:
                out.append(f)
        return out

    # ------------------------------------------------------------------ set-up
    def build(self, lab: Lab) -> None:
        self.lab = lab
        wd = lab.workdir
        self.files = {
            name: os.path.join(wd, name)
            for name in (
                "rows.bin",
                "bmi-events.jsonl",
                "bmi-control.jsonl",
                "station-control.jsonl",
                "station-status.json",
                "station-commands.jsonl",
                "sites.json",
            )  # fmt: skip
        }
        for name in ("bmi-control.jsonl", "station-control.jsonl"):
            open(self.files[name], "w").close()
        # Prometheus with the shipped rules, in the concentrator's namespace.
        prom_conf = {
            "global": {"scrape_interval": "5s", "scrape_timeout": "4s", "evaluation_interval": "5s"},
            "rule_files": [os.path.abspath("monitoring/alerts.yml")],
            "scrape_configs": [
                {"job_name": "concentrator", "static_configs": [{"targets": [RELAY_METRICS]}]},
                {"job_name": "concentrator-netd", "static_configs": [{"targets": ["127.0.0.1:9105"]}]},
            ],
        }
        with open(os.path.join(wd, "prometheus.yml"), "w") as f:
            yaml.safe_dump(prom_conf, f)
        lab.spawn("conc", "prometheus", ["prometheus", f"--config.file={wd}/prometheus.yml",
                  f"--storage.tsdb.path={wd}/prom", f"--web.listen-address={PROM}", "--log.level=warn"])  # fmt: skip
        # Link managers: the concentrator's (uplink, 100 sites, trip path) and the BMI's.
        self.netd_conf = os.path.join(wd, "netd-conc.yaml")
        with open(self.netd_conf, "w") as f:
            yaml.safe_dump(lab.netd_config("conc"), f)
        self.netd = self.start_netd()
        lab._start_netd("bmi")
        lab.wait_netd_ready("conc", timeout=90.0)
        lab.wait_netd_ready("bmi", timeout=90.0)
        # Each site's return route: primary, else (carrier lost) backup.
        for site in lab.sites:
            for veth, metric in ((site.primary, 100), (site.backup, 200)):
                lab.ip(site.peer, "route", "add", f"{CONC_SERVICE}/32", "via", veth.conc_ip, "dev", veth.peer_if,
                       "src", site.peer_service, "metric", str(metric))  # fmt: skip
        # Stations.
        spec = [
            {
                "netns": lab.ns(s.peer),
                "listen": f"{s.peer_service}:{PORT}",
                "ca": site_ca(i),
                "rate": self.rates[site_ca(i)],
            }
            for i, s in enumerate(lab.sites, start=1)
        ]
        with open(self.files["sites.json"], "w") as f:
            json.dump(spec, f)
        py = [sys.executable, "-m", "tests.lab.soak_peers"]
        lab.spawn("site1", "stations", [*py, "stations", "--spec", self.files["sites.json"],
                  "--control", self.files["station-control.jsonl"], "--status", self.files["station-status.json"],
                  "--commands", self.files["station-commands.jsonl"]])  # fmt: skip
        wait_for(lambda: lab.assert_running() or os.path.exists(self.files["station-status.json"]), 60, "stations")
        # The relay.
        conf = Iec104Stream(lab).relay_config()
        conf["uplink"]["k"] = UPLINK_K
        self.relay_conf = os.path.join(wd, "relay.yaml")
        with open(self.relay_conf, "w") as f:
            yaml.safe_dump(conf, f)
        self.relay = self.start_relay()
        wait_for(self.relay_listening, 60, "relay listening", lab._log_tail("relay"))
        # The BMI and the trip receivers.
        self.bmi = self.start_bmi()
        from tests.lab.harness import TripTraffic

        self.trip_traffic = TripTraffic(lab, GROUP, TRIP_PORT)
        self.trip_traffic.start(timeout=60)
        self.trip_sock = in_netns(lab.ns("bmi"), self._trip_socket)
        self.trip_ifindex = in_netns(lab.ns("bmi"), lambda: {n: socket.if_nametoindex(n) for n in ("c0", "c1")})

    def relay_listening(self) -> bool:
        self.lab.assert_running()
        out = run(["ip", "netns", "exec", self.lab.ns("conc"), "ss", "-Hltn", f"sport = :{PORT}"], check=False)
        return bool(out.stdout.strip())

    def _spawn(self, role: str, label: str, argv: list[str]) -> subprocess.Popen[bytes]:
        """Like Lab.spawn, but the log is appended to: restarts keep one log per process."""
        proc, log = spawn_in(self.lab.ns(role), argv, os.path.join(self.lab.workdir, f"{label}.log"), append=True)
        self.lab.procs.append((label, proc, log))
        return proc

    def start_relay(self) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "concentrator", "relay", "--config", self.relay_conf]
        if self.args.plant:
            argv = [sys.executable, "-m", "tests.lab.soak_plant", self.args.plant, "relay", "--config", self.relay_conf]
        proc = self._spawn("conc", "relay", argv)
        self.relay_started = time.monotonic()
        self.relay_generation += 1
        return proc

    def start_netd(self) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "netconfig.netd", "--config", self.netd_conf, "--state",
                self.lab.state_file("conc")]  # fmt: skip
        return self._spawn("conc", "netd-conc", argv)

    def start_bmi(self) -> subprocess.Popen[bytes]:
        cas = ",".join(str(site_ca(i)) for i in range(1, self.n + 1))
        return self._spawn("bmi", "bmi", [sys.executable, "-m", "tests.lab.soak_peers", "bmi",
                           "--target", f"{CONC_SERVICE}:{PORT}", "--rows", self.files["rows.bin"],
                           "--events", self.files["bmi-events.jsonl"], "--control", self.files["bmi-control.jsonl"],
                           "--cas", cas, "--unknown-cas", ",".join(map(str, UNKNOWN_CAS)),
                           "--command-rate", str(self.args.command_rate)])  # fmt: skip

    def _trip_socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((BMI_SERVICE, 40000))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 16)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        return sock

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc._stopped = True  # type: ignore[attr-defined]  # killed on purpose
        proc.kill()
        proc.wait(5)

    def control(self, name: str, **cmd: object) -> None:
        with open(self.files[name], "a") as f:
            f.write(json.dumps(cmd) + "\n")

    # ------------------------------------------------------------------ faults
    def _nft_loss(self, link: str, path: str, percent: int, on: bool) -> None:
        veth = self.lab.link(link).path(path)
        table = f"loss_{veth.conc_if}"
        for role, ifname in (("conc", veth.conc_if), (veth.peer_ns, veth.peer_if)):
            if on:
                script = (
                    f"table netdev {table} {{\n  chain ingress {{\n"
                    f"    type filter hook ingress device {ifname} priority -400; policy accept;\n"
                    f"    numgen random mod 100 < {percent} counter drop\n  }}\n}}\n"
                )
                run(["ip", "netns", "exec", self.lab.ns(role), "nft", "-f", "-"], stdin=script)
            else:
                run(["ip", "netns", "exec", self.lab.ns(role), "nft", "delete", "table", "netdev", table], check=False)

    def begin(self, f: Fault) -> None:
        lab = self.lab
        ca = target_ca(f.target)
        if f.kind == "site_primary_down":
            lab.link_down(f.target, "primary")
        elif f.kind == "site_both_down":
            lab.link_down(f.target, "primary")
            lab.link_down(f.target, "backup")
        elif f.kind == "uplink_primary_down":
            lab.link_down("uplink", "primary")
        elif f.kind == "uplink_primary_silent":
            lab.silent_loss("uplink", "primary")
        elif f.kind == "uplink_both_down":
            lab.link_down("uplink", "primary")
            lab.link_down("uplink", "backup")
        elif f.kind == "path_loss":
            self._nft_loss(f.target, f.params["path"], f.params["percent"], True)
        elif f.kind == "updc_restart":
            self.control("station-control.jsonl", cmd="kill", ca=ca)
        elif f.kind == "hostile_site":
            self.control("station-control.jsonl", cmd="hostile", ca=ca, kind=f.params["hostile"])
        elif f.kind == "bmi_restart":
            self.kill(self.bmi)
        elif f.kind == "ed2_switch":
            self.control("bmi-control.jsonl", cmd="switch")
        elif f.kind == "hostile_bmi":
            self.control("bmi-control.jsonl", cmd="hostile", on=True)
        elif f.kind == "netd_restart":
            self.kill(self.netd)
        elif f.kind == "relay_restart":
            self.kill(self.relay)

    def end(self, f: Fault) -> None:
        lab = self.lab
        ca = target_ca(f.target)
        if f.kind == "site_primary_down":
            lab.link_up(f.target, "primary")
        elif f.kind == "site_both_down":
            lab.link_up(f.target, "primary")
            lab.link_up(f.target, "backup")
        elif f.kind == "uplink_primary_down":
            lab.link_up("uplink", "primary")
        elif f.kind == "uplink_primary_silent":
            lab.silent_restore("uplink", "primary")
        elif f.kind == "uplink_both_down":
            lab.link_up("uplink", "primary")
            lab.link_up("uplink", "backup")
        elif f.kind == "path_loss":
            self._nft_loss(f.target, f.params["path"], f.params["percent"], False)
        elif f.kind == "updc_restart":
            self.control("station-control.jsonl", cmd="restart", ca=ca)
        elif f.kind == "hostile_site":
            self.control("station-control.jsonl", cmd="calm", ca=ca)
        elif f.kind == "bmi_restart":
            self.bmi = self.start_bmi()
        elif f.kind == "ed2_switch":
            self.control("bmi-control.jsonl", cmd="switch")
        elif f.kind == "hostile_bmi":
            self.control("bmi-control.jsonl", cmd="hostile", on=False)
        elif f.kind == "netd_restart":
            self.netd = self.start_netd()
        elif f.kind == "relay_restart":
            self.relay = self.start_relay()

    # ------------------------------------------------------------------ checks: data
    def read_rows(self) -> None:
        try:
            with open(self.files["rows.bin"], "rb") as f:
                f.seek(self.rows_offset)
                data = f.read()
        except OSError:
            return
        usable = len(data) - len(data) % ROW.size
        self.rows_offset += usable
        site_cas = self.rates
        for off in range(0, usable, ROW.size):
            conn, ca, type_id, cause, seq, arrival, stamp = ROW.unpack_from(data, off)
            self.rows_read += 1
            self.conn_rows[conn] += 1
            if type_id == TYPE_STAMPED and ca in site_cas:
                self._sequence(ca, seq, arrival, stamp)
            elif type_id == TYPE_COMMAND:
                self.answers[seq].append((cause, ca, arrival / 1e9))
            elif ca == FOREIGN_CA or ca not in site_cas:
                self.violate("selectivity", f"the BMI received an ASDU (type {type_id}) with CA {ca}, no site's")
            else:
                self.other_rows[f"type {type_id}"] += 1  # e.g. what a greedy hostile site got forwarded
        self.rows_history.append((time.monotonic(), Counter(self.conn_rows)))

    def _kinds_near(self, t: float, kinds: set[str] | None = None, before: float = 60.0) -> list[Fault]:
        return [f for f in self.active_at(t, margin=0.5, after=before) if kinds is None or f.kind in kinds]

    def _sequence(self, ca: int, seq: int, arrival_ns: int, stamp_ns: int) -> None:
        t = arrival_ns / 1e9
        nxt = self.contig[ca]
        ahead = self.ahead[ca]
        if seq < nxt or seq in ahead:
            run_length = self.dup_run[ca] = self.dup_run[ca] + 1
            causes = self._kinds_near(t, DUPLICATE_CAUSES) + [
                f for f in self._kinds_near(t, SITE_DUPLICATE_CAUSES) if f.target == ca_site(ca)
            ]
            kind = max(causes, key=lambda f: f.started or 0).kind if causes else "none"
            self.duplicates_by_kind[kind] += 1
            if not causes:
                self.violate("duplicate", f"CA {ca} sequence {seq} received again with no fault that allows it")
            elif run_length == SITE_K + 1:
                self.violate("duplicates", f"CA {ca}: more than {SITE_K} duplicates in a row (sequence {seq})")
            return
        self.dup_run[ca] = 0
        self.first_arrivals += 1
        minute = int((t - self.t0) // 60)
        self.latency_by_minute[minute].append((arrival_ns - stamp_ns) / 1e6)
        kinds = sorted({f.kind for f in self._kinds_near(t, before=10.0)}) or ["none"]
        if seq == nxt:
            nxt += 1
            while nxt in ahead:
                ahead.discard(nxt)
                nxt += 1
            self.contig[ca] = nxt
        else:
            ahead.add(seq)
            if seq in self.gaps[ca]:  # it came after a later one: reordered
                self.gaps[ca].discard(seq)
                for k in kinds:
                    self.reordered_by_kind[k] += 1
                self.violate("reordered", f"CA {ca} sequence {seq} arrived after a later one")
                return
            top = max(ahead)
            missing = [s for s in range(nxt, top) if s not in ahead and s not in self.gaps[ca]]
            if missing:
                self.gaps[ca].update(missing)
                for k in kinds:
                    self.lost_by_kind[k] += len(missing)
                self.violate("gap", f"CA {ca}: sequence {seq} arrived while {len(missing)} before it "
                             f"({missing[0]}..{missing[-1]}) never did", ca=ca, first=missing[0])  # fmt: skip

    # ------------------------------------------------------------------ checks: commands
    def read_events(self) -> None:
        for doc, _ in self._jsonl("bmi-events.jsonl", "events_offset"):
            if doc["kind"] == "open":
                self.bmi_conns[doc["conn"]] = doc["t"]
            elif doc["kind"] == "closed":
                self.bmi_closed.add(doc["conn"])
            elif doc["kind"] == "command":
                self.commands_sent[doc["id"]] = doc
        for doc, _ in self._jsonl("station-commands.jsonl", "station_cmd_offset"):
            self.command_deliveries[doc["id"]].append(doc)

    def _jsonl(self, name: str, offset_attr: str) -> list[tuple[dict[str, Any], int]]:
        try:
            with open(self.files[name], "rb") as f:
                f.seek(getattr(self, offset_attr))
                data = f.read()
        except OSError:
            return []
        end = data.rfind(b"\n") + 1
        setattr(self, offset_attr, getattr(self, offset_attr) + end)
        return [(json.loads(line), 0) for line in data[:end].splitlines() if line.strip()]

    def check_commands(self, now: float, final: bool = False) -> None:
        for cid, cmd in self.commands_sent.items():
            if cid in self.commands_checked or (not final and now - cmd["t"] < 12.0):
                continue
            self.commands_checked.add(cid)
            ca, t = cmd["ca"], cmd["t"]
            deliveries = self.command_deliveries.get(cid, [])
            answers = self.answers.get(cid, [])
            wrong = [d for d in deliveries if d["site"] != ca]
            if wrong:
                self.violate("selectivity", f"command {cid} for CA {ca} reached the site of CA {wrong[0]['site']}")
            if len(deliveries) > 1:
                self.violate("command", f"command {cid} for CA {ca} reached its site {len(deliveries)} times")
            near = self.active_at(t, margin=1.0, after=10.0)
            # Loss on an uplink path delays what is on its way for seconds (TCP backs off), long
            # enough for a relay or BMI kill to meet it still in flight.
            excuses = {f.kind for f in near if f.kind in UPLINK_WIDE or f.target in ("uplink", ca_site(ca))}
            if ca in UNKNOWN_CAS:
                if deliveries:
                    self.violate("selectivity", f"command {cid} for unknown CA {ca} reached a site")
                if any(c == CAUSE_NEGATIVE_46 and a == ca for c, a, _ in answers):
                    self.command_outcomes["unknown CA: cause 46 answer"] += 1
                elif excuses:
                    self.command_outcomes["unknown CA: no answer, during " + "+".join(sorted(excuses))] += 1
                else:
                    self.violate("command", f"command {cid} for unknown CA {ca} got no cause-46 answer")
                continue
            if any(c == CAUSE_NEGATIVE_46 for c, _, _ in answers):
                self.violate("command", f"command {cid} for CA {ca}, a site's, was answered with cause 46")
            if deliveries:
                if any(c == CAUSE_ACT_CON and a == ca for c, a, _ in answers):
                    self.command_outcomes["delivered and confirmed"] += 1
                elif final:
                    self.violate("loss", f"command {cid} reached CA {ca} but its confirmation never came back")
                else:
                    self.commands_checked.discard(cid)  # look again later
            elif excuses:
                self.command_outcomes["not delivered, during " + "+".join(sorted(excuses))] += 1
            else:
                self.violate("command", f"command {cid} for CA {ca} never reached its site (no fault explains it)")

    # ------------------------------------------------------------------ checks: trips
    def send_trip(self) -> None:
        seq = len(self.trips)
        path = self.lab.active("uplink", role="bmi") or "primary"
        conc_path = self.lab.active("uplink", role="conc")
        iface = "c0" if path == "primary" else "c1"
        mreqn = struct.pack(
            "=4s4si", socket.inet_aton("0.0.0.0"), socket.inet_aton("0.0.0.0"), self.trip_ifindex[iface]
        )
        self.trip_sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
        try:
            self.trip_sock.sendto(trip_payload(seq), (GROUP, TRIP_PORT))
            self.trips.append({"seq": seq, "t": time.monotonic(), "iface": iface, "ends_apart": conc_path != path})
        except OSError as exc:  # the path's carrier is down
            self.trips.append({"seq": seq, "t": time.monotonic(), "iface": iface, "error": str(exc)})

    def read_trips(self) -> None:
        for i, site in enumerate(self.lab.sites, start=1):
            path = self.trip_traffic.received_file(site)
            try:
                with open(path, "rb") as f:
                    f.seek(self.trip_offsets[i])
                    data = f.read()
            except OSError:
                continue
            end = data.rfind(b"\n") + 1
            self.trip_offsets[i] += end
            for line in data[:end].splitlines():
                doc = json.loads(line)
                if doc.get("kind") == "multicast" and doc.get("seq") is not None:
                    self.trip_received[i].add(doc["seq"])

    def _trip_excuse(self, i: int, t: float) -> list[str]:
        """Why site i may miss a trip sent at t: its path or the uplink's was down or
        lossy, or switching (netd re-points the copies within a probe round or two).
        The uplink's primary fault excuses only its start, while the BMI's side still
        sends on the dead path: the trip path takes trips in on both uplink paths
        (finding 3), so neither the fail-back nor our netd's restart or view of the
        uplink matters. A site's copy leaves on one path, chosen by our netd: its
        switches, both ways, and a netd down meanwhile excuse."""
        reasons = []
        for f in self.active_at(t, margin=1.0, after=4.0):
            if f.target not in ("uplink", f"site{i}"):
                continue  # netd killed alone is no excuse: the kernel keeps copying trips
            if f.kind in ("site_primary_down", "uplink_primary_down", "uplink_primary_silent"):
                start, end = f.span(time.monotonic())
                switching = start - 1 <= t <= start + 4
                if f.target != "uplink":
                    switching = switching or end - 1 <= t <= end + self.args.hold_time + 4
                    switching = switching or any(a - 1 <= t <= b + 4 for a, b in self.netd_down)
                if not switching:
                    continue
            reasons.append(f.kind)
        return reasons

    def check_trips(self, now: float, final: bool = False) -> None:
        while self.trip_checked < len(self.trips):
            trip = self.trips[self.trip_checked]
            if not final and now - trip["t"] < 4.0:
                return
            self.trip_checked += 1
            for i in range(1, self.n + 1):
                if trip["seq"] in self.trip_received[i]:
                    self.trip_outcomes["delivered"] += 1
                    if trip.get("ends_apart"):
                        # Sent while our netd and the BMI's were on different uplink paths:
                        # delivered since the trip path takes both in (finding 3).
                        self.trip_outcomes["of which sent while the uplink's two ends were on different paths"] += 1
                    continue
                excuses = self._trip_excuse(i, trip["t"])
                if excuses:
                    self.trip_outcomes["missed, path down or lossy"] += 1
                    for k in excuses:
                        self.trip_missed_by_kind[k] += 1
                else:
                    self.trip_outcomes["missed"] += 1
                    self.violate("trip", f"trip {trip['seq']} did not reach site{i}, whose path was up")

    # ------------------------------------------------------------------ checks: resources, metrics
    def sample(self) -> None:
        t = time.monotonic() - self.t0
        for name, proc, born, logs in (
            ("relay", self.relay, self.relay_started, ["relay.log"]),
            ("netd", self.netd, getattr(self.netd, "born", 0.0), ["netd-conc.log"]),
        ):
            if proc.poll() is not None:
                continue
            try:
                res = proc_resources(proc.pid)
                tree_rss = res["rss_mb"]
                for child in descendants(proc.pid):
                    try:
                        tree_rss += proc_resources(child)["rss_mb"]
                    except OSError:
                        pass
            except OSError:
                continue
            log_bytes = sum(os.path.getsize(os.path.join(self.lab.workdir, p)) for p in logs)
            self.samples.append({"proc": name, "t": round(t, 1), "pid": proc.pid, "born": born - self.t0,
                                 **res, "tree_rss_mb": tree_rss, "log_bytes": log_bytes})  # fmt: skip

    def check_metrics(self) -> None:
        """The relay's ASDUs up on started connections against the BMI's rows on the
        connections this relay incarnation accepted: never fewer forwarded than the BMI
        had received when the relay's snapshot could have been taken (SNAPSHOT_AGE before
        the scrape); never more than received plus a k window per connection (what was
        in flight on one that ended or was superseded is sent again on the next, and the
        one in flight now)."""
        if self.relay.poll() is not None:
            return
        self.read_rows()
        self.read_events()
        conns = [c for c, t in self.bmi_conns.items() if t >= self.relay_started]
        before = time.monotonic()
        older = [rows for at, rows in self.rows_history if at <= before - SNAPSHOT_AGE]
        received_before = sum(older[-1][c] for c in conns) if older else 0
        try:
            text = http_get(self.lab.ns("conc"), f"http://{RELAY_METRICS}/metrics")
        except OSError:
            return
        self.read_events()
        self.read_rows()
        up = metric_values(text, "concentrator_uplink_asdus_total").get('{direction="up"}', 0)
        conns = [c for c, t in self.bmi_conns.items() if t >= self.relay_started]
        received = sum(self.conn_rows[c] for c in conns)
        ended = sum(1 for c in conns if c in self.bmi_closed)
        # What the BMI had SNAPSHOT_AGE before the scrape was counted before the snapshot
        # was taken; what it has after may include frames sent after it.
        ok = received_before <= up <= received + UPLINK_K * max(1, len(conns))
        self.metric_checks.append({"t": round(before - self.t0, 1), "relay_up": up, "bmi_before": received_before,
                                   "bmi_after": received, "conns": len(conns), "ended": ended, "ok": ok})  # fmt: skip
        if not ok:
            self.violate("metrics", f"relay counted {up:.0f} ASDUs up; the BMI had received {received_before} before"
                         f" the scrape and {received} after, on {len(conns)} connections ({ended} ended)")  # fmt: skip

    def final_metrics(self) -> dict[str, Any]:
        """After the end: production and commands stopped, everything confirmed, no
        fault: exact (the relay also counted, once more, what it had sent on connections
        that ended before the BMI confirmed it: at most k each)."""
        self.read_events()
        self.read_rows()
        before = self.rows_read
        text = http_get(self.lab.ns("conc"), f"http://{RELAY_METRICS}/metrics")
        self.read_events()
        self.read_rows()
        if self.rows_read != before:
            self.violate("metrics", f"{self.rows_read - before} ASDUs reached the BMI after everything had stopped")
        up = metric_values(text, "concentrator_uplink_asdus_total").get('{direction="up"}', 0)
        conns = [c for c, t in self.bmi_conns.items() if t >= self.relay_started]
        received = sum(self.conn_rows[c] for c in conns)
        ended = sum(1 for c in conns if c in self.bmi_closed)
        ok = received <= up <= received + UPLINK_K * ended
        if not ok:
            self.violate("metrics", f"at the end the relay counted {up:.0f} ASDUs up, the BMI received {received}")
        return {"relay_up": up, "bmi_received": received, "bmi_connections": len(conns), "ended": ended, "ok": ok}

    # ------------------------------------------------------------------ alerts
    def alerts(self) -> dict[str, Any]:
        start = self.t0_unix
        end = time.time()
        url = (f"http://{PROM}/api/v1/query_range?query=ALERTS%7Balertstate%3D%22firing%22%7D"
               f"&start={start:.0f}&end={end:.0f}&step=5")  # fmt: skip
        doc = json.loads(http_get(self.lab.ns("conc"), url, timeout=30))
        fired = []
        for series in doc["data"]["result"]:
            labels = series["metric"]
            times = [float(v[0]) for v in series["values"]]
            # split into intervals at gaps over 15 s
            a = b = times[0]
            for t in times[1:] + [math.inf]:
                if t - b > 15:
                    fired.append({"alert": labels["alertname"], "site": labels.get("site"), "job": labels.get("job"),
                                  "link": labels.get("link"), "direction": labels.get("direction"),
                                  "from": a - start, "to": b - start})  # fmt: skip
                    a = t
                b = t
        return evaluate_alerts(fired, self.schedule, self.t0_unix, end - start, self.t0)

    # ------------------------------------------------------------------ main loop
    def run(self) -> dict[str, Any]:
        args = self.args
        self.log(f"seed {args.seed}: {len(self.schedule)} faults planned over {args.duration:.0f} s")
        for f in self.schedule:
            self.log(f"planned fault {f.id} {f.kind} {f.target} at {f.at:.2f} s for {f.duration:.2f} s {f.params}")
        with Lab(self.n, probe_interval=args.probe_interval, hold_time=args.hold_time,
                 trip_groups=[(GROUP, TRIP_PORT)], trip_engine="nftables", start_netd=False) as lab:  # fmt: skip
            setup_start = time.monotonic()
            self.t0 = setup_start
            self.build(lab)
            self.netd.born = time.monotonic()  # type: ignore[attr-defined]
            wait_for(lambda: self.status_started() == self.n, 120, "every site started", self._status_detail)
            self.log(f"lab up in {time.monotonic() - setup_start:.1f} s: {self.n} sites started")
            self.t0 = time.monotonic()
            self.t0_unix = time.time()
            # Nothing before the start counts: what arrived so far is the baseline.
            self.read_rows()
            self.loop()
            result = self.finish()
        return result

    def status_started(self) -> int:
        try:
            with open(self.files["station-status.json"]) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            return 0
        return sum(s["started"] for s in doc.get("sites", {}).values())

    def _status_detail(self) -> str:
        return f"{self.status_started()} started"

    def loop(self) -> None:
        args = self.args
        actions: list[tuple[float, int, str, Fault]] = []
        for f in self.schedule:
            actions.append((f.at, f.id, "begin", f))
            actions.append((f.at + f.duration, f.id, "end", f))
        actions.sort(key=lambda a: (a[0], a[1]))
        times = [a[0] for a in actions]
        done = 0
        next_trip = next_sample = next_metrics = next_read = 0.0
        while True:
            now = time.monotonic()
            t = now - self.t0
            if t >= args.duration and done >= len(actions):
                return
            while done < len(actions) and actions[done][0] <= t:
                _, _, what, f = actions[done]
                done += 1
                try:
                    if what == "begin":
                        f.started, f.started_unix = time.monotonic(), time.time()
                        self.begin(f)
                        if f.kind == "netd_restart":
                            self.netd_down.append((f.started, math.inf))
                    else:
                        self.end(f)
                        f.ended, f.ended_unix = time.monotonic(), time.time()
                        if f.kind == "netd_restart":
                            self.netd.born = f.ended  # type: ignore[attr-defined]
                except Exception as exc:  # noqa: BLE001  # recorded, the run goes on
                    f.note = f"{what} failed: {exc}"
                    self.violate("harness", f"fault {f.id} {f.kind} {what}: {exc}")
                self.log(f"fault {f.id} {f.kind} {f.target} {f.params or ''} {what}")
            if now >= next_read:
                next_read = now + 0.5
                self.guard(self.read_rows)
                self.guard(self.read_events)
                self.guard(self.read_trips)
                self.guard(partial(self.check_commands, now))
                self.guard(partial(self.check_trips, now))
            if now >= next_trip:
                next_trip = now + 2.0
                self.guard(self.send_trip)
            if now >= next_sample:
                next_sample = now + 10.0
                self.guard(self.sample)
            if now >= next_metrics:
                next_metrics = now + 10.0
                self.guard(self.check_metrics)
            self.guard(self.check_processes)
            if self.netd_down and self.netd_down[-1][1] == math.inf and self.netd_ready():
                self.netd_down[-1] = (self.netd_down[-1][0], time.monotonic())
                self.log(f"netd ready again after {self.netd_down[-1][1] - self.netd_down[-1][0]:.2f} s")
            nxt = times[done] + self.t0 if done < len(actions) else now + 0.2
            time.sleep(max(0.0, min(0.2, nxt - time.monotonic())))

    def guard(self, step: Callable[[], object]) -> None:
        """A bug of the soak itself is recorded (and fails the run), and the run goes on."""
        try:
            step()
        except Exception as exc:  # noqa: BLE001
            self.violate("harness", f"{getattr(step, '__name__', 'step')}: {exc!r}")

    def netd_ready(self) -> bool:
        state = self.lab.netd_state("conc")
        return self.netd.poll() is None and state.get("ready") is True and state.get("pid") == self.netd.pid

    def check_processes(self) -> None:
        """A process that died on its own (not killed by a fault) is a finding."""
        for label, proc, _log in self.lab.procs:
            if proc.poll() is not None and not getattr(proc, "_stopped", False):
                proc._stopped = True  # type: ignore[attr-defined]
                self.violate("crash", f"{label} exited with {proc.returncode}: {self.lab._log_tail(label)()[-800:]}")

    def finish(self) -> dict[str, Any]:
        lab = self.lab
        self.log("end of faults: restoring every path, stopping production")
        lab.restore_all()
        for link in lab.links:
            self._nft_loss(link.name, "primary", 0, False)
        self.control("station-control.jsonl", cmd="stop_producing")
        self.control("bmi-control.jsonl", cmd="stop_commands")
        # Everything produced must arrive and be confirmed.
        produced: dict[str, Any] = {}

        def drained() -> bool:
            nonlocal produced
            self.read_rows()
            try:
                with open(self.files["station-status.json"]) as f:
                    doc = json.load(f)
            except (OSError, ValueError):
                return False
            produced = doc["sites"]
            return not doc.get("producing", True) and all(
                s["waiting"] == 0 and s["unconfirmed"] == 0 for s in produced.values()
            )

        try:
            wait_for(drained, 120, "every site's queue confirmed", interval=0.5)
        except TimeoutError as exc:
            self.violate("drain", str(exc))
        foreign_effects(self.schedule, {ca_site(int(ca)): st["foreign_runs"] for ca, st in produced.items()})
        time.sleep(3.0)  # the last commands and their confirmations
        self.read_rows()
        self.read_events()
        self.read_trips()
        self.check_commands(time.monotonic(), final=True)
        self.check_trips(time.monotonic(), final=True)
        lost_total = 0
        for ca_text, st in produced.items():
            ca = int(ca_text)
            missing = st["produced"] - self.contig[ca] - sum(1 for q in self.ahead[ca] if q < st["produced"])
            if missing > 0 or self.ahead[ca]:
                lost_total += max(0, missing)
                self.violate("loss", f"CA {ca}: produced {st['produced']}, all up to {self.contig[ca]} received")
        final_metrics = self.final_metrics()
        self.sample()
        alerts = self.alerts()
        for miss in alerts["missing"]:
            self.violate("alert", f"{miss['alert']} expected for fault {miss['fault']} did not fire")
        for extra in alerts["unexplained"]:
            self.violate("alert", f"{extra['alert']} {extra.get('site') or ''} fired with no fault to explain it")
        netd_final = {link.name: lab.active(link.name) for link in lab.links}
        not_primary = [k for k, v in netd_final.items() if v != "primary"]
        return self.report(produced, lost_total, final_metrics, alerts, not_primary)

    def report(self, produced: dict[str, Any], lost: int, final_metrics: dict[str, Any], alerts: dict[str, Any],
               not_primary: list[str]) -> dict[str, Any]:  # fmt: skip
        faults_by_kind = Counter(f.kind for f in self.schedule if f.started is not None)
        latency = {
            m: {"n": len(v), "p50_ms": percentile(v, 50) if v else None, "p99_ms": percentile(v, 99) if v else None}
            for m, v in sorted(self.latency_by_minute.items())
        }
        half = self.args.duration / 2
        resources: dict[str, Any] = {}
        for proc in ("relay", "netd"):
            samples = [s for s in self.samples if s["proc"] == proc]
            last = [s for s in samples if s["t"] >= half]
            resources[proc] = {
                "rss_slope_mb_per_h_last_half": pooled_slope(samples, "rss_mb", half),
                "tree_rss_slope_mb_per_h_last_half": pooled_slope(samples, "tree_rss_mb", half),
                "rss_anon_slope_mb_per_h_last_half": pooled_slope(samples, "rss_anon_mb", half),
                "rss_file_slope_mb_per_h_last_half": pooled_slope(samples, "rss_file_mb", half),
                "fds_slope_per_h_last_half": pooled_slope(samples, "fds", half),
                "unexplained_fds_range": [
                    min((s["unexplained_fds"] for s in samples), default=None),
                    max((s["unexplained_fds"] for s in samples), default=None),
                ],  # fmt: skip
                "unexplained_fds_range_last_half": [
                    min((s["unexplained_fds"] for s in last), default=None),
                    max((s["unexplained_fds"] for s in last), default=None),
                ],  # fmt: skip
                "threads_range": [
                    min((s["threads"] for s in samples), default=None),
                    max((s["threads"] for s in samples), default=None),
                ],  # fmt: skip
                "rss_mb_range": [
                    min((s["rss_mb"] for s in samples), default=None),
                    max((s["rss_mb"] for s in samples), default=None),
                ],  # fmt: skip
                "incarnations": len({s["pid"] for s in samples}),
                "log_bytes_end": samples[-1]["log_bytes"] if samples else None,
            }
        # Descriptors flat. In each process's life (after its first 30 s): the fewest
        # descriptors over its second half no more than over its first half plus 2 (netd's
        # count moves with the subprocesses and probes in progress, the floor does not);
        # and the relay's descriptors that are not a live TCP socket move by at most 3 and
        # stay within RELAY_OTHER_FDS (stdio, epoll, the exporter's pipes: 9 measured).
        for proc in ("relay", "netd"):
            by_pid: dict[int, list[tuple[float, int, int]]] = defaultdict(list)
            for s in self.samples:
                if s["proc"] == proc and s["t"] - s["born"] >= 30:
                    by_pid[s["pid"]].append((s["t"], s["fds"], s["unexplained_fds"]))
            spread = rise = 0
            for points in by_pid.values():
                unexplained = [p[2] for p in points]
                spread = max(spread, max(unexplained) - min(unexplained))
                if len(points) >= 4:
                    mid = len(points) // 2
                    rise = max(rise, min(p[1] for p in points[mid:]) - min(p[1] for p in points[:mid]))
            resources[proc]["unexplained_fds_max_spread_in_a_process"] = spread
            resources[proc]["fds_floor_rise_in_a_process"] = rise
            top = resources[proc]["unexplained_fds_range"][1] or 0
            if rise > 2 or (proc == "relay" and (spread > 3 or top > RELAY_OTHER_FDS)):
                self.violate("descriptors", f"{proc}: descriptors grew within one process (floor +{rise},"
                             f" not a live connection: spread {spread})")  # fmt: skip
        kinds = sorted(set(faults_by_kind) | {"none"})
        result = {
            "seed": self.args.seed,
            "duration_s": self.args.duration,
            "sites": self.n,
            "rates": self.rates,
            "total_rate": round(sum(self.rates.values()), 1),
            "plant": self.args.plant,
            "faults": sum(faults_by_kind.values()),
            "faults_by_kind": dict(faults_by_kind),
            "per_kind": {
                k: {
                    "faults": faults_by_kind.get(k, 0),
                    "lost": self.lost_by_kind.get(k, 0),
                    "reordered": self.reordered_by_kind.get(k, 0),
                    "duplicated": self.duplicates_by_kind.get(k, 0),
                    "trips_missed_excused": self.trip_missed_by_kind.get(k, 0),
                }
                for k in kinds
            },
            "asdus_first_arrivals": self.first_arrivals,
            "produced": sum(s["produced"] for s in produced.values()),
            "lost_at_end": lost,
            "duplicates": sum(self.duplicates_by_kind.values()),
            "other_rows": dict(self.other_rows),
            "commands_sent": len(self.commands_sent),
            "command_outcomes": dict(self.command_outcomes),
            "trips_sent": len(self.trips),
            "trip_outcomes": dict(self.trip_outcomes),
            "latency_by_minute": latency,
            "resources": resources,
            "metric_checks": {
                "count": len(self.metric_checks),
                "failed": sum(1 for c in self.metric_checks if not c["ok"]),
            },
            "final_metrics": final_metrics,
            "alerts": alerts,
            "links_not_back_on_primary": not_primary,
            "violations": self.violations,
            "violations_by_kind": dict(Counter(v["kind"] for v in self.violations)),
            "ok": not self.violations,
            "schedule": [
                asdict(f)
                | {
                    "started": _rel(f.started, self.t0),
                    "ended": _rel(f.ended, self.t0),
                    "effects_until": _rel(f.effects_until, self.t0),
                }
                for f in self.schedule
            ],  # fmt: skip
            "samples": self.samples,
        }
        return result


def _rel(t: float | None, t0: float) -> float | None:
    return None if t is None else round(t - t0, 2)


# ---------------------------------------------------------------------- alerts


# alert -> fault kinds that may raise it (site-scoped ones only on their site), and how
# long after the fault it may take to clear (the rule's window, its `for`, scrapes).
EXPLAINS: dict[str, tuple[set[str], float]] = {
    "ConcentratorTargetDown": ({"relay_restart", "netd_restart"}, 60),
    "ConcentratorSiteDown": (
        {"site_both_down", "updc_restart", "hostile_site", "site_primary_down", "path_loss", *UPLINK_WIDE},
        60,
    ),  # fmt: skip
    "ConcentratorSiteNoMeasurements": (
        {"site_both_down", "updc_restart", "hostile_site", "site_primary_down", "path_loss", *UPLINK_WIDE},
        60,
    ),  # fmt: skip
    "ConcentratorSiteForeignCommonAddress": ({"hostile_site"}, 330),
    "ConcentratorUplinkDown": (
        {
            "bmi_restart",
            "uplink_both_down",
            "relay_restart",
            "ed2_switch",
            "hostile_bmi",
            "uplink_primary_silent",
            "path_loss",
        },
        60,
    ),  # fmt: skip
    "ConcentratorBmiAcksLate": ({"site_both_down", "updc_restart", "hostile_site", "path_loss", *UPLINK_WIDE}, 400),
    "ConcentratorRelayLatencyHigh": (set(KINDS), 450),
    "ConcentratorUplinkOnBackup": (
        {"uplink_primary_down", "uplink_primary_silent", "uplink_both_down", "path_loss"},
        60,
    ),
    "ConcentratorUplinkAllPathsDown": ({"uplink_both_down"}, 60),
    "ConcentratorSlowSwitch": (
        {
            "uplink_primary_silent",
            "uplink_both_down",
            "site_both_down",
            "path_loss",
            "site_primary_down",
            "uplink_primary_down",
        },
        630,
    ),  # fmt: skip
    "ConcentratorTripPathMissing": ({"netd_restart"}, 60),
}
SITE_SCOPED = {"site_both_down", "updc_restart", "hostile_site", "site_primary_down", "path_loss"}


def expected_alert(f: Fault) -> tuple[str, float, str] | None:
    """The alert a fault must raise if it lasts long enough: (alert, how long, the
    restart fault of the process whose metric it reads, when a restart of it makes the
    rule's `for` begin again; "" when the rule bridges one). Thresholds: the rule's
    `for`, detection, a 5 s scrape and evaluation, with a margin."""
    if f.kind == "uplink_both_down":
        return "ConcentratorUplinkAllPathsDown", 20, "netd_restart"
    # These two read their gauge through last_over_time(...[1m]): a restart of the
    # exporting process (seconds) no longer starts their `for` again (finding 5).
    if f.kind == "uplink_primary_down":
        return "ConcentratorUplinkOnBackup", 30, ""
    if f.kind == "bmi_restart":
        return "ConcentratorUplinkDown", 40, ""
    # SiteDown bridges a relay restart only when the BMI is started again within about
    # 10 s (its uplink hold): not always, so a relay restart still breaks it here.
    if f.kind == "updc_restart":
        return "ConcentratorSiteDown", 40, "relay_restart"
    if f.kind == "site_both_down":
        return "ConcentratorSiteDown", 70, "relay_restart"  # t3 20 s + t1 15 s to notice, then `for` 20 s
    if is_foreign_episode(f):
        return "ConcentratorSiteForeignCommonAddress", 0, ""
    return None


def is_foreign_episode(f: Fault) -> bool:
    """A UPDC sending ASDUs for a common address that is not its own."""
    return f.kind == "hostile_site" and f.params.get("hostile") == "foreign"


def foreign_effects(schedule: list[Fault], runs_by_site: dict[str, list[list[float]]]) -> None:
    """Each run of foreign-CA ASDUs a site sent belongs to the last foreign episode on
    that site that began before it: that fault's effects last until the run's end."""
    for site, runs in runs_by_site.items():
        latest_first = sorted(
            (f for f in schedule if f.target == site and is_foreign_episode(f) and f.started is not None),
            key=lambda f: f.started or 0.0,
            reverse=True,
        )
        for first, last in runs:
            owner = next((f for f in latest_first if (f.started or 0.0) <= first), None)
            if owner is not None:
                owner.effects_until = max(owner.effects_until or last, last)


def fault_scope(f: Fault) -> str | None:
    """The link a fault is about ("uplink", "site<i>"), None for the relay, netd, the BMI."""
    return f.target if f.target == "uplink" or f.target.startswith("site") else None


def explains(fault: str | None, site: str | None, link: str | None) -> bool:
    """Can a fault on `fault` (a link, None: the relay, netd or the BMI) raise an alert
    about a site's data (`site`) or a link's paths (`link`)? Its own site or link, or
    anything for an alert about neither; and a fault on the uplink for any site's data
    alert: the uplink carries every site's data, and until the relay notices a cut (t1)
    the sites stay up and fall silent. (A site link's paths are not the uplink's.)"""
    scope = site or link
    return scope is None or fault in (None, scope) or (fault == "uplink" and site is not None)


def longest_unbroken(a: float, b: float, breaks: list[tuple[float, float]]) -> float:
    """Longest part of [a, b] outside every break: a restarted exporter's series goes
    stale and the rule's `for` starts again."""
    longest, at = 0.0, a
    for x, y in sorted(breaks):
        if y < at or x > b:
            continue
        longest = max(longest, min(x, b) - at)
        at = max(at, y)
    return max(longest, b - at)


def evaluate_alerts(
    fired: list[dict[str, Any]], schedule: list[Fault], t0_unix: float, run_s: float, t0: float
) -> dict[str, Any]:
    def rel(f: Fault) -> tuple[float, float]:
        return (f.started or 0) - t0, (f.ended if f.ended is not None else t0 + run_s) - t0

    missing: list[dict[str, Any]] = []
    matched: list[dict[str, Any]] = []
    unexplained: list[dict[str, Any]] = []
    not_expected: Counter[str] = Counter()
    started = [f for f in schedule if f.started is not None]
    for f in started:
        expectation = expected_alert(f)
        if expectation is None or f.ended is None:
            continue
        name, threshold, exporter = expectation
        a, b = rel(f)
        site = f.target if f.kind in SITE_SCOPED else None
        breaks = [(rel(g)[0], rel(g)[1] + 3) for g in started if g.kind == exporter]
        if longest_unbroken(a, b, breaks) < threshold:
            if b - a >= threshold:
                not_expected[f"{name}: {exporter.split('_')[0]} restarted during the fault"] += 1
            continue
        # A site alert is not expected while the uplink is down (the rule's `unless`).
        if name == "ConcentratorSiteDown" and any(
            g.kind in UPLINK_WIDE and rel(g)[0] < b and rel(g)[1] > a for g in started
        ):
            not_expected[f"{name}: the uplink was down too"] += 1
            continue
        hit = [x for x in fired if x["alert"] == name and (site is None or x["site"] == site)
               and x["from"] <= b + 30 and x["to"] >= a]  # fmt: skip
        (matched if hit else missing).append({"fault": f.id, "kind": f.kind, "alert": name, "site": site})
    for x in fired:
        # Explained when every moment it fired lies within [start - 5 s, end + the
        # rule's clearing time] of faults that can raise it (site alerts: that site's).
        kinds, clear = EXPLAINS.get(x["alert"], (set(), 0))
        windows = sorted(
            (rel(f)[0] - 5, max(rel(f)[1], (f.effects_until or -math.inf) - t0) + clear)
            for f in started
            if f.kind in kinds and explains(fault_scope(f), x.get("site"), x.get("link"))
        )
        covered_to = None
        for lo, hi in windows:
            if hi < x["from"]:
                continue
            if covered_to is None:
                if lo > x["from"]:
                    break
                covered_to = hi
            elif lo <= covered_to:
                covered_to = max(covered_to, hi)
            else:
                break
            if covered_to >= x["to"]:
                break
        if covered_to is None or covered_to < x["to"]:
            unexplained.append(x)
    return {
        "expected": len(matched) + len(missing),
        "fired_as_expected": len(matched),
        "missing": missing,
        "not_expected": dict(not_expected),
        "fired_by_alert": dict(Counter(x["alert"] for x in fired)),
        "unexplained": unexplained,
        "fired": fired,
    }


# ---------------------------------------------------------------------- plot


def svg_plot(samples: list[dict[str, Any]], duration: float, slopes: dict[str, Any]) -> str:
    """RSS and descriptors of the relay and netd over time, one panel each."""
    panels = [("relay", "rss_mb", "relay RSS (MB)"), ("relay", "fds", "relay descriptors"),
              ("relay", "unexplained_fds", "relay descriptors not a live TCP socket"),
              ("netd", "rss_mb", "netd RSS (MB)"), ("netd", "fds", "netd descriptors")]  # fmt: skip
    w, h, pad = 900, 150, 50
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{(h + 30) * len(panels) + 20}" '
           'font-family="sans-serif" font-size="11">']  # fmt: skip
    for n, (proc, key, title) in enumerate(panels):
        top = 20 + n * (h + 30)
        pts = [(s["t"], s[key], s["pid"]) for s in samples if s["proc"] == proc]
        if not pts:
            continue
        lo = min(p[1] for p in pts)
        hi = max(p[1] for p in pts)
        if hi - lo < 1e-9:
            hi = lo + 1
        span = (hi - lo) * 0.1
        lo, hi = lo - span, hi + span

        def x(t: float) -> float:
            return pad + (w - 2 * pad) * t / max(duration, 1)

        def y(v: float, top: float = top, lo: float = lo, hi: float = hi) -> float:
            return top + h - h * (v - lo) / (hi - lo)

        slope = slopes.get(proc, {}).get(
            {"rss_mb": "rss_slope_mb_per_h_last_half", "fds": "fds_slope_per_h_last_half"}.get(key, ""), None
        )
        if slope is not None:
            title += f" (slope over the last half, within each process: {slope:+.2f}/h)"
        label = title
        out.append(f'<text x="{pad}" y="{top - 5}">{label}</text>')
        out.append(f'<rect x="{pad}" y="{top}" width="{w - 2 * pad}" height="{h}" fill="none" stroke="#999"/>')
        out.append(f'<text x="5" y="{top + 10}">{hi:.1f}</text><text x="5" y="{top + h}">{lo:.1f}</text>')
        half_x = x(duration / 2)
        out.append(f'<line x1="{half_x}" y1="{top}" x2="{half_x}" y2="{top + h}" stroke="#ccc" stroke-dasharray="4"/>')
        segments: list[list[tuple[float, float]]] = []
        last_pid = None
        for t, v, pid in pts:
            if pid != last_pid:
                segments.append([])
                last_pid = pid
            segments[-1].append((x(t), y(v)))
        for seg in segments:
            path = " ".join(f"{a:.1f},{b:.1f}" for a, b in seg)
            out.append(f'<polyline points="{path}" fill="none" stroke="#1f77b4" stroke-width="1.2"/>')
    out.append(f'<text x="{pad}" y="{(h + 30) * len(panels) + 15}">time (s), 0 to {duration:.0f}; '
               "a break in a line is a restart (a fault killed the process)</text></svg>")  # fmt: skip
    return "\n".join(out)


# ---------------------------------------------------------------------- report


def alerts_again(r: dict[str, Any]) -> dict[str, Any]:
    """The alert verdict of a recorded result, judged again by this version's rules
    (from the series it recorded: `alerts.fired` and the schedule's actual times)."""
    schedule = []
    for doc in r["schedule"]:
        fields = {k: doc[k] for k in ("id", "kind", "target", "at", "duration", "params", "started", "ended")}
        schedule.append(Fault(**fields, effects_until=doc.get("effects_until")))
    return evaluate_alerts(r["alerts"]["fired"], schedule, 0.0, r["duration_s"] + 60, 0.0)


def markdown(r: dict[str, Any]) -> str:
    """The tables of bench/SOAK.md, from a result."""
    out = [f"Seed {r['seed']}, {r['duration_s']:.0f} s of faults, {r['sites']} sites at {r['total_rate']} ASDU/s in all"
           f" (per site {min(r['rates'].values())} to {max(r['rates'].values())}), planted fault: {r['plant']}.", "",
           f"Faults: {r['faults']}. ASDUs produced {r['produced']}, received first time {r['asdus_first_arrivals']},"
           f" lost at the end {r['lost_at_end']}, duplicates {r['duplicates']}. Violations: "
           f"{r['violations_by_kind'] or 'none'}.", "",
           "| fault kind | faults | lost | reordered | duplicated | trip copies missed (excused) |",
           "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for kind, v in sorted(r["per_kind"].items()):
        out.append(f"| {kind} | {v['faults']} | {v['lost']} | {v['reordered']} | {v['duplicated']} |"
                   f" {v['trips_missed_excused']} |")  # fmt: skip
    out += ["", "Lost, reordered and duplicated ASDUs are counted against every fault kind active (or ended"
            " within 10 s; duplicates: the most recent fault that allows them, within 60 s) when they arrived;"
            " a trip copy missed counts against every fault that excused it.", ""]  # fmt: skip
    out += [f"Commands: {r['commands_sent']} sent; " + "; ".join(f"{k}: {v}" for k, v in
            sorted(r["command_outcomes"].items())) + ".", ""]  # fmt: skip
    out += [f"Trips: {r['trips_sent']} datagrams x {r['sites']} sites; " + "; ".join(
            f"{k}: {v}" for k, v in sorted(r["trip_outcomes"].items())) + ".", ""]  # fmt: skip
    out += ["| minute | ASDUs | p50 ms | p99 ms |", "|---:|---:|---:|---:|"]
    for minute, v in r["latency_by_minute"].items():
        if v["n"]:
            out.append(f"| {minute} | {v['n']} | {v['p50_ms']:.1f} | {v['p99_ms']:.1f} |")
    out += ["", "| process | incarnations | RSS MB min-max | RSS slope, last half, MB/h |"
            " of which anonymous / mapped files, MB/h | descriptors slope /h |"
            " floor rise in a process | not-a-live-socket spread | threads | log bytes at end |",
            "|---|---:|---|---:|---:|---:|---:|---:|---|---:|"]  # fmt: skip

    def signed(v: float | None, digits: int = 2) -> str:
        return "n/a" if v is None else f"{v:+.{digits}f}"

    for proc, v in r["resources"].items():
        rss = v["rss_mb_range"]
        # (anonymous and mapped-file RSS are sampled since 2026-12-07 20:50: n/a before)
        anon, files = v.get("rss_anon_slope_mb_per_h_last_half"), v.get("rss_file_slope_mb_per_h_last_half")
        fds = signed(v["fds_slope_per_h_last_half"], 1)
        out.append(f"| {proc} | {v['incarnations']} | {rss[0]:.1f}-{rss[1]:.1f} | "
                   f"{signed(v['rss_slope_mb_per_h_last_half'])} | {signed(anon)} / {signed(files)} | {fds} | "
                   f"{v['fds_floor_rise_in_a_process']} | {v['unexplained_fds_max_spread_in_a_process']} | "
                   f"{v['threads_range'][0]}-{v['threads_range'][1]} | {v['log_bytes_end']} |")  # fmt: skip
    a = r["alerts"]
    out += ["", f"Alerts, as judged in the run: {a['fired_as_expected']} of {a['expected']} expected fired; "
            f"unexplained: {len(a['unexplained'])}. Fired (intervals) by alert: "
            + ", ".join(f"{k} {v}" for k, v in sorted(a["fired_by_alert"].items())) + ".", ""]  # fmt: skip
    b = alerts_again(r)
    out += [f"Alerts, judged again by this version: {b['fired_as_expected']} of {b['expected']} expected fired"
            f" (missing: {b['missing'] or 'none'}; not expected: {b['not_expected'] or 'none'}); unexplained: "
            + (", ".join(f"{k} {v}" for k, v in sorted(Counter(x["alert"] for x in b["unexplained"]).items()))
               or "none") + ".", ""]  # fmt: skip
    out += [f"Metrics: {r['metric_checks']['count']} checks while running, {r['metric_checks']['failed']} failed; "
            f"at the end the relay counted {r['final_metrics']['relay_up']:.0f} ASDUs up, the BMI received "
            f"{r['final_metrics']['bmi_received']}.", ""]  # fmt: skip
    return "\n".join(out)


# ---------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=180.0, help="seconds of faults (then the drain)")
    ap.add_argument("--seed", type=int, default=26)
    ap.add_argument("--sites", type=int, default=100)
    ap.add_argument("--rate", type=float, default=1000.0, help="ASDU/s in all, shared unevenly among the sites")
    ap.add_argument("--command-rate", type=float, default=2.0, help="BMI single commands per second")
    ap.add_argument("--mean-gap", type=float, default=8.0, help="mean seconds between fault starts")
    ap.add_argument("--max-fault", type=float, default=90.0, help="longest fault, s")
    ap.add_argument("--probe-interval", type=float, default=0.5, help="netd probes (101 links in the concentrator)")
    ap.add_argument("--hold-time", type=float, default=2.0)
    ap.add_argument("--without", help="fault kinds left out, comma-separated (e.g. relay_restart: one relay life)")
    ap.add_argument("--relay-kills-until", type=float, metavar="SECONDS",
                    help="no relay kill after this time (the relay's last life then measures its memory)")  # fmt: skip
    ap.add_argument("--plant", help="test only: drop:N or fd-leak, or the instruments tracemalloc:DIR and "
                    "malloc-trim:DIR (tests/lab/soak_plant.py)")  # fmt: skip
    ap.add_argument("--json", help="write the result here")
    ap.add_argument("--svg", help="write the RSS/descriptor plot here")
    ap.add_argument("--log", help="append the schedule and every fault's start and end here")
    ap.add_argument("--markdown", help="print the tables of a result file (no run)")
    return ap.parse_args(argv)


def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    soak = Soak(args)
    result = soak.run()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.svg:
        with open(args.svg, "w") as f:
            f.write(svg_plot(result["samples"], args.duration, result["resources"]))
    return result


def main(argv: list[str] | None = None) -> int:
    install_signal_cleanup()
    args = parse_args(argv)
    if args.markdown:
        with open(args.markdown) as f:
            print(markdown(json.load(f)))
        return 0
    result = run_soak(args)
    summary = {k: v for k, v in result.items() if k not in ("schedule", "samples", "rates", "latency_by_minute")}
    summary["alerts"] = {k: v for k, v in result["alerts"].items() if k != "fired"}
    print(json.dumps(summary, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
