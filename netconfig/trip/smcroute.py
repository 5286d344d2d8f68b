"""The trip path's routing-table engine: smcrouted under supervision, re-pointed on
uplink switches (netd runs it where netconfig.trip.capability chose `smcroute`).

netd runs this (one task group beside the failover controllers); the relay plays no
part, so trip messages keep flowing with the relay stopped, crashed or overloaded.

- smcrouted holds the kernel's multicast-routing socket; when it dies the kernel drops
  every entry it installed. It runs in the foreground as its own session (a netd
  restart leaves it running and the next netd adopts it through its pid file), with
  `-N` (only our interfaces become VIFs) and its own socket and pid file.
- Its configuration file always holds the current routes, so a restarted smcrouted
  puts the path back by itself within milliseconds; netd rewrites it on every change.
- On an uplink switch each (S,G) is re-pointed with `smcroutectl add <new-in> S G
  <outs>`: the kernel keeps one entry per (S,G) with one inbound interface.
- Every change of the kernel's table is reported over netlink (RTNLGRP_IPV4_MROUTE):
  netd then reads /proc/net/ip_mr_cache; the metrics say whether the kernel really
  forwards each group, and a missing or altered entry is set again at once.
- A daemon adopted from an earlier netd is reloaded when its interfaces or routes
  differ from the configuration.
- Nothing here joins a group: static forwarding needs no membership.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from monitoring.linkmanager import TripPathStats

from ..netlink import ChangeMonitor
from .capability import Capability, Choice
from .config import MulticastConfig
from .plan import MRoute, wanted_routes
from .render import smcroute_conf
from .tables import KernelEntry, parse_mr_cache, parse_vifs, proc_address
from .verdict import PathStatus, path_status

log = logging.getLogger("netd.trip")

RECHECK_INTERVAL = 5.0  # seconds between checks of the kernel's table when it reports no change
START_TIMEOUT = 5.0  # smcrouted must answer on its socket within this
CTL_TIMEOUT = 2.0  # one smcroutectl command
RESTART_BACKOFF = 0.5  # after 3 exits within 2 s, wait this long before the next start
RETRY_MAX = 5.0  # seconds: the longest wait between attempts to install a route that did not take
FAILURE_SUMMARY = 60.0  # seconds between ERROR lines about the same failure


def read_vifs(proc: str = "/proc/net") -> dict[int, str]:
    """The kernel's multicast interfaces (VIF number -> name) in this namespace."""
    try:
        with open(f"{proc}/ip_mr_vif") as f:
            return parse_vifs(f.read())
    except FileNotFoundError:
        return {}


def read_kernel(proc: str = "/proc/net") -> list[KernelEntry]:
    """The kernel's multicast forwarding entries in this network namespace."""
    try:
        with open(f"{proc}/ip_mr_vif") as f:
            vifs = parse_vifs(f.read())
        with open(f"{proc}/ip_mr_cache") as f:
            return parse_mr_cache(f.read(), vifs)
    except FileNotFoundError:  # kernel without multicast routing
        return []


def read_igmp_memberships(path: str = "/proc/net/igmp") -> dict[str, list[str]]:
    """Groups joined by any socket in this namespace: group -> interfaces."""
    joined: dict[str, list[str]] = {}
    device = "?"
    try:
        with open(path) as f:
            lines = f.read().splitlines()[1:]
    except FileNotFoundError:
        return {}
    for line in lines:
        if not line.startswith("\t\t"):
            parts = line.split()
            device = parts[1] if len(parts) > 1 else "?"
        else:
            joined.setdefault(str(proc_address(line.split()[0])), []).append(device)
    return joined


@dataclass
class TripState:
    """What netd reports of the trip path (state file, metrics)."""

    stats: TripPathStats = field(default_factory=TripPathStats)
    smcrouted_pid: int | None = None
    smcrouted_restarts: int = 0
    inbound: dict[str, str] = field(default_factory=dict)  # group -> inbound interface in use
    last_repoint_seconds: float | None = None  # smcroutectl time of the last re-point
    choice: Choice | None = None  # the engine chosen on this kernel, or the refusal
    kernel: dict[str, Any] = field(default_factory=dict)  # Capability.to_json()

    def choose(self, choice: Choice, cap: Capability, cfg: MulticastConfig) -> None:
        """Record the engine (or refusal): a refused path is reported not installed."""
        self.choice, self.kernel = choice, cap.to_json()
        self.stats.asked, self.stats.engine = choice.asked, choice.engine or "none"
        self.stats.kernel = {
            "multicast_routing": _word(cap.multicast_routing.present),
            "nftables_dup": _word(cap.nftables_dup.present),
        }
        for g in cfg.groups:
            self.stats.installed.setdefault(str(g.group), False)
            self.stats.repoints.setdefault(str(g.group), 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "engine": self.choice.to_json() if self.choice is not None else None,
            "kernel": self.kernel,
            "installed": dict(self.stats.installed),
            "repoints": dict(self.stats.repoints),
            "smcrouted_pid": self.smcrouted_pid,
            "smcrouted_restarts": self.smcrouted_restarts,
            "inbound": dict(self.inbound),
            "last_repoint_seconds": self.last_repoint_seconds,
        }


def _word(present: bool | None) -> str:
    return {True: "yes", False: "no", None: "unknown"}[present]


def record(state: TripState, status: list[PathStatus], on_change: Callable[[], None]) -> list[PathStatus]:
    """Put what the kernel does into the state (installed per group, inbound in use);
    returns the (S,G) that are not as wanted (forwarding exactly over the paths in use)."""
    bad = []
    by_group: dict[str, bool] = {}
    for st in status:
        good = (
            st.installed
            and st.inbound == st.expected_inbound
            and set(st.standby) == set(st.expected_standby)
            and set(st.outbound) == set(st.expected_outbound)
        )
        group = str(st.group)
        by_group[group] = by_group.get(group, True) and good
        if st.installed and st.inbound is not None:
            state.inbound[group] = st.inbound
        if not good:
            bad.append(st)
    changed = by_group != state.stats.installed
    state.stats.installed.update(by_group)
    if changed:
        on_change()
    return bad


def set_rp_filter(interfaces: tuple[str, ...]) -> None:
    """Strict reverse-path filtering (1) would drop trips arriving on the uplink that is
    not the route back to the source (during a switch, or when the far end switched
    first): make it loose (2). The effective value is max(all, interface)."""
    try:
        with open("/proc/sys/net/ipv4/conf/all/rp_filter") as f:
            all_value = int(f.read())
    except (OSError, ValueError):
        all_value = 0
    for name in interfaces:
        path = f"/proc/sys/net/ipv4/conf/{name}/rp_filter"
        try:
            with open(path) as f:
                value = int(f.read())
            if max(all_value, value) == 1:
                with open(path, "w") as f:
                    f.write("2")
                log.warning("sysctl net.ipv4.conf.%s.rp_filter set to 2 (loose) for the trip path", name)
        except (OSError, ValueError) as exc:
            log.error("rp_filter of %s: %s", name, exc)


class TripEngine:
    """What netd needs of a trip-path engine (smcrouted's routing table here, nftables
    `dup` in nftables.py). `active_path()` maps each interface that is a path of a
    managed link to the link's active interface (see plan.wanted_routes)."""

    def __init__(
        self,
        cfg: MulticastConfig,
        state: TripState,
        active_path: Callable[[], Mapping[str, str | None]],
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.cfg = cfg
        self.state = state
        self.active_path = active_path
        self._on_change = on_change
        self._dirty = trio.Event()

    def changed(self) -> None:
        """A link switched (called from netd's controllers): re-point now."""
        self._dirty.set()


class TripPath(TripEngine):
    """Drives smcrouted for netd."""

    def __init__(
        self,
        cfg: MulticastConfig,
        state: TripState,
        active_path: Callable[[], Mapping[str, str | None]],
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(cfg, state, active_path, on_change)
        self.files = cfg.smcroute
        self._applied: dict[tuple[Any, Any], MRoute] = {}  # smcrouted's rule per (S,G), as we set it
        self._force: set[tuple[Any, Any]] = set()  # (S,G) the kernel does not have as wanted
        self._conf_routes: list[MRoute] = []  # the routes in the file we wrote last
        self._daemon_up = False
        self._failed_attempts = 0  # consecutive rounds in which a route did not take
        self._last_failure_log = 0.0
        self.smcrouted = shutil.which("smcrouted") or "smcrouted"
        self.smcroutectl = shutil.which("smcroutectl") or "smcroutectl"

    async def run(self) -> None:
        for path in (self.files.socket, self.files.pid_file):
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
            except OSError as exc:  # smcrouted will say more when it fails to start
                log.error("directory of %s: %s", path, exc)
        set_rp_filter(tuple(dict.fromkeys(n for g in self.cfg.groups for n in g.inbound)))
        self._write_conf(wanted_routes(self.cfg, self.active_path()))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._supervise)
            nursery.start_soon(self._apply_loop)
            nursery.start_soon(self._verify_loop)

    # ------------------------------------------------------------------ smcrouted

    def _adoptable(self) -> int | None:
        """A smcrouted left by an earlier netd (its pid file, still that program)."""
        try:
            with open(self.files.pid_file) as f:
                pid = int(f.read().strip())
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            # "pid (comm) state ...": a zombie is not a daemon to adopt.
            comm, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :][:1]
            return pid if comm == "smcrouted" and state != "Z" else None
        except (OSError, ValueError):
            return None

    async def _supervise(self) -> None:
        exits: list[float] = []
        while True:
            pid = self._adoptable()
            proc: subprocess.Popen[bytes] | None = None
            if pid is not None:
                log.info("smcrouted (pid %d) already running: adopted", pid)
            else:
                try:
                    proc = await self._start()
                except OSError as exc:
                    # No smcrouted (not installed, bad path): failover must go on; keep trying.
                    log.error("smcrouted cannot start: %s; trying again in %.0f s", exc, START_TIMEOUT)
                    await trio.sleep(START_TIMEOUT)
                    continue
                pid = proc.pid
            self.state.smcrouted_pid = pid
            if await self._wait_ready(proc) and (proc is not None or await self._adopt(pid)):
                self._daemon_up = True
                # A new daemon knows only its file: its rules are the file's routes.
                # What was found missing before it started is not missing from it (the
                # next check finds it if it is): no needless remove + add.
                self._applied = {(r.source, r.group): r for r in self._conf_routes}
                self._force.clear()
                self._dirty.set()
            started = time.monotonic()
            await _wait_exit(pid, proc)
            self._daemon_up = False
            self.state.smcrouted_pid = None
            self.state.smcrouted_restarts += 1
            for group in self.state.stats.installed:
                self.state.stats.installed[group] = False
            self._on_change()
            code = proc.returncode if proc is not None else "?"
            log.error(
                "smcrouted (pid %d) exited (code %s) after %.1f s: the kernel dropped its multicast routes; restarting",
                pid,
                code,
                time.monotonic() - started,
            )
            now = time.monotonic()
            exits = [t for t in exits if now - t < 2.0] + [now]
            if len(exits) >= 3:  # failing at start: do not spin
                await trio.sleep(RESTART_BACKOFF)

    def _kernel_matches_file(self) -> bool:
        """The kernel has exactly our interfaces as VIFs and the file's routes."""
        if set(read_vifs().values()) != set(self.cfg.interfaces):
            return False
        kernel = {(e.source, e.group): e for e in read_kernel()}
        for r in self._conf_routes:
            e = kernel.get((r.source, r.group))
            if e is None or e.inbound != r.inbound or set(e.outbound) != set(r.outbound):
                return False
        return True

    async def _adopt(self, pid: int) -> bool:
        """A daemon left by an earlier netd may run another configuration (a site was
        added, a path changed while no netd ran): make it load ours. `reload` re-reads
        the file (interfaces and routes) without dropping the kernel socket; if that
        does not do it, stop it (the supervisor starts one of ours)."""
        if self._kernel_matches_file():
            return True
        log.warning(
            "smcrouted (pid %d) has other interfaces or routes than the configuration (VIFs %s, wanted %s): "
            "reloading it",
            pid,
            ",".join(sorted(read_vifs().values())),
            ",".join(sorted(self.cfg.interfaces)),
        )
        await self._ctl("reload")
        deadline = trio.current_time() + START_TIMEOUT
        while trio.current_time() < deadline:
            if self._kernel_matches_file():
                log.info("smcrouted (pid %d) reloaded with the configured interfaces and routes", pid)
                return True
            await trio.sleep(0.01)
        log.error("smcrouted (pid %d) did not take the configuration on reload: stopping it", pid)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        return False

    async def _start(self) -> subprocess.Popen[bytes]:
        self._write_conf(wanted_routes(self.cfg, self.active_path()))
        for stale in (self.files.socket, self.files.pid_file):
            try:
                os.unlink(stale)
            except FileNotFoundError:
                pass
        argv = [
            self.smcrouted,
            "-n",
            "-N",
            "-f",
            self.files.config_file,
            "-u",
            self.files.socket,
            "-P",
            self.files.pid_file,
            "-l",
            "notice",
        ]
        # Its own session: a signal to netd's process group (Ctrl-C, a service
        # manager stopping netd) must not take the trip path down with it.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
        log.info("smcrouted started (pid %d): %s", proc.pid, " ".join(argv))
        return proc

    async def _wait_ready(self, proc: subprocess.Popen[bytes] | None) -> bool:
        deadline = trio.current_time() + START_TIMEOUT
        while trio.current_time() < deadline:
            if proc is not None and proc.poll() is not None:
                return False
            if (await self._ctl("show", "interfaces", quiet=True)) is not None:
                return True
            await trio.sleep(0.01)
        log.error("smcrouted did not answer on %s within %.0f s", self.files.socket, START_TIMEOUT)
        return False

    async def _ctl(self, *args: str, quiet: bool = False, stdin: str | None = None) -> str | None:
        """One smcroutectl command on our daemon's socket; its output, or None."""
        done = None
        try:
            # A daemon that does not answer must not hold up the re-points (the
            # caller tries again); the process is killed on the timeout.
            with trio.move_on_after(CTL_TIMEOUT):
                done = await trio.run_process(
                    [self.smcroutectl, "-u", self.files.socket, *args],
                    stdin=stdin.encode() if stdin is not None else b"",
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
        except OSError as exc:  # smcroutectl missing: report, never take netd down
            log.error("smcroutectl: %s", exc)
            return None
        if done is None:
            log.error("smcroutectl %s: no answer within %.0f s", " ".join(args), CTL_TIMEOUT)
            return None
        if done.returncode != 0:
            if not quiet:
                log.error(
                    "smcroutectl %s: exit %d: %s",
                    " ".join(args),
                    done.returncode,
                    done.stderr.decode(errors="replace").strip(),
                )
            return None
        return done.stdout.decode(errors="replace")

    def _write_conf(self, routes: list[MRoute]) -> None:
        try:
            os.makedirs(os.path.dirname(self.files.config_file), exist_ok=True)
            tmp = f"{self.files.config_file}.tmp"
            with open(tmp, "w") as f:
                f.write(smcroute_conf(self.cfg, routes))
            os.replace(tmp, self.files.config_file)
        except OSError as exc:
            # The running daemon is told by smcroutectl anyway; only a restart would
            # start from an old file (and be corrected by the next check).
            log.error("smcroute file %s: %s", self.files.config_file, exc)
            return
        self._conf_routes = list(routes)

    # ------------------------------------------------------------------ routes

    async def _apply_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty = trio.Event()
            if not self._daemon_up:
                continue  # the supervisor sets it again once a daemon answers
            wanted = wanted_routes(self.cfg, self.active_path())
            self._write_conf(wanted)  # first: a daemon restarted now starts from the new state
            failed = False
            for route in wanted:
                if not await self._apply(route):
                    failed = True
            self._verify()
            if failed:
                # What did not take may heal (a daemon restarting) or not (the kernel
                # refuses): try again, ever less often, said once and then summarised.
                self._failed_attempts += 1
                await trio.sleep(min(0.2 * 2 ** (self._failed_attempts - 1), RETRY_MAX))
                self._dirty.set()
            elif self._failed_attempts:
                log.info("trip path installed after %d failed attempts", self._failed_attempts)
                self._failed_attempts = 0

    async def _apply(self, route: MRoute) -> bool:
        """Make smcrouted's entry for (S,G) exactly `route`. True when the kernel has it."""
        key = (route.source, route.group)
        before = self._applied.get(key)
        if before == route and key not in self._force:
            return True
        # smcroute keeps one rule per (inbound, S, G) and merges the outbound interfaces
        # of an `add` into a rule it has: so remove the rule we put there, then add the
        # new one, one batch, one process. The kernel's entry is keyed by (S,G) alone,
        # and a trip arriving in between is queued by the kernel as unresolved and
        # forwarded when the entry is added.
        add = f"add {route.inbound} {route.source} {route.group} {' '.join(route.outbound)}"
        batch = add + "\n"
        if before is not None:
            batch = f"remove {before.inbound} {route.source} {route.group}\n" + batch
        t0 = time.perf_counter()
        await self._ctl("-b", stdin=batch, quiet=True)  # a failed remove (rule gone) is fine
        took = time.perf_counter() - t0
        entry = {(e.source, e.group): e for e in read_kernel()}.get(key)
        if entry is None or entry.inbound != route.inbound or set(entry.outbound) != set(route.outbound):
            now = time.monotonic()
            if self._failed_attempts == 0 or now - self._last_failure_log >= FAILURE_SUMMARY:
                self._last_failure_log = now
                log.error(
                    "trip group %s from %s: not installed as asked (%s, attempt %d); kernel has %s",
                    route.group,
                    route.source,
                    add,
                    self._failed_attempts + 1,
                    entry,
                )
            return False
        self._force.discard(key)
        self._applied[key] = route
        group = str(route.group)
        if before is not None and before.inbound != route.inbound:
            self.state.stats.repoints[group] = self.state.stats.repoints.get(group, 0) + 1
            self.state.last_repoint_seconds = took
            self._on_change()  # the state file counts it now, not at the next refresh
            log.warning(
                "trip group %s from %s: re-pointed from %s to %s, outbound %s, in %.1f ms",
                group,
                route.source,
                before.inbound,
                route.inbound,
                ",".join(route.outbound),
                took * 1000,
            )
        else:
            log.info(
                "trip group %s from %s: inbound %s, outbound %s, set in %.1f ms",
                group,
                route.source,
                route.inbound,
                ",".join(route.outbound),
                took * 1000,
            )
        return True

    def _verify(self) -> list[PathStatus]:
        """Compare the kernel with what we want; metrics follow the kernel."""
        status = path_status(self.cfg, read_kernel(), self.active_path())
        for st in record(self.state, status, self._on_change):
            if self._daemon_up:
                # Not what we asked for (entry lost, or changed behind our back): ask again.
                self._force.add((st.source, st.group))
        return status

    async def _verify_loop(self) -> None:
        # The kernel tells us of every change of its table (an entry deleted by
        # anyone, smcrouted's restart, an interface gone): check at once. The
        # periodic check is only a safety net.
        monitor = ChangeMonitor.mroute()
        try:
            while True:
                with trio.move_on_after(RECHECK_INTERVAL):
                    await monitor.changed()
                self._verify()
                if self._force:
                    self._dirty.set()
        finally:
            monitor.close()


async def _wait_exit(pid: int, proc: subprocess.Popen[bytes] | None) -> None:
    """Until `pid` exits: a pidfd becomes readable then (our child or an adopted one)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        if proc is not None:
            proc.wait()
        return
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)
    if proc is not None:
        proc.wait()  # reap it (readable pidfd: it has exited)
