"""The HA supervisor: `concentrator ha --config FILE`, one per appliance of a pair.

The one process that owns "am I the active appliance" (docs/ha.md):

- it writes keepalived's configuration from the `ha:` section and runs keepalived as
  its child (VRRP only, its own pid files); keepalived writes each state change of the
  sync group to a FIFO that only this process reads;
- on MASTER it asks the peer, on both sides, whether the peer's relay is active (the
  fence check); if not, it starts the relay (`concentrator relay`, same file), which
  listens on the uplink's virtual address (or on the service address that the BMI
  routes via the uplink's virtual addresses) and connects to the sites from the sites'
  virtual address, so a relay on an appliance without them is reached by no BMI and
  reaches no UPDC;
- on BACKUP, FAULT or STOP it stops the relay at once (SIGTERM, SIGKILL after 1 s);
- if the peer answers "active" (VRRP lost on both paths while both are alive), it does
  not start the relay and writes the track file that puts keepalived in FAULT, which
  releases every virtual address (`also` ones included), until the peer is no longer
  active: fencing acts on the addresses, which decide where the BMI's traffic goes;
- it answers a read-only status line on `ha.status_port` (what the peer's fence check
  and `concentrator ha-status` read) and serves its metrics on `ha.metrics_listen`.

Its children get SIGTERM if it dies (PR_SET_PDEATHSIG): keepalived then releases the
addresses and sends a priority-0 advert (the peer takes over at once), and no relay
outlives the process that decided it may run.
"""

from __future__ import annotations

import argparse
import ctypes
import enum
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

import trio

from concentrator.configbase import ConfigError, MissingTool
from concentrator.relay.config import UplinkConfig
from monitoring.ha_metrics import HaCollector
from monitoring.primitives import serve

from .config import HaConfig
from .keepalived import command, render, track_file_path
from .policy import STOP_GRACE, Action, Ask, AskPeer, HaPolicy, LoadRelay, PeerAnswer, SetFence, StartRelay
from .state import DOWN, HaState, PeerStatus, Role, Vrrp
from .tcp import connected_peers, listening, nudge

log = logging.getLogger("ha")


class HaSections(Protocol):
    """What the supervisor reads of the configuration: the file (its relay loads it), the
    relay's uplink and the `ha:` section. The whole file's `Config` is one, loaded by the
    wiring layer (concentrator/cli.py)."""

    @property
    def file(self) -> str: ...

    @property
    def uplink(self) -> UplinkConfig: ...

    @property
    def ha(self) -> HaConfig | None: ...


Load = Callable[[str], HaSections]

FENCE_TIMEOUT = 0.25  # per side; the peer answers in a millisecond when alive
NUDGES = (0.0, 0.5, 1.0, 2.0)  # after a promotion: when to nudge the BMI's stale connections
# (the BMI answers at most one unacceptable segment per 0.5 s, and
# only once its ARP entry points here)


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: SIGTERM when the supervisor dies.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    """A child process started from the trio thread (PDEATHSIG follows the thread that
    forked, and trio's worker threads come and go)."""

    def __init__(self, argv: list[str], label: str, pass_fds: tuple[int, ...] = ()) -> None:
        self.label = label
        self.proc = subprocess.Popen(argv, preexec_fn=_die_with_parent, stdin=subprocess.DEVNULL, pass_fds=pass_fds)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def wait(self) -> int:
        # Polled: several tasks may wait (the runner and a stop), 10 ms is cheap enough.
        while (code := self.proc.poll()) is None:
            await trio.sleep(0.01)
        return code

    async def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(STOP_GRACE):
                await self.wait()
            if self.proc.poll() is None:
                log.warning("%s did not stop in %.1f s: SIGKILL", self.label, STOP_GRACE)
                self.proc.kill()
                await self.wait()


def _stale(pid_file: str) -> bool:
    """A pid file left by a keepalived that was killed: its process is gone, or a zombie
    nobody reaped (keepalived would take a zombie for itself running and refuse to start)."""
    try:
        with open(pid_file) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return os.path.exists(pid_file)
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


class NoStatus(enum.Enum):
    REFUSED = "refused"  # the status port refused: the host is up, its supervisor is not
    SILENT = "silent"  # no answer in time, a peer that left mid-way, or not a status line


async def status_line(address: str, port: int, timeout: float) -> dict[str, Any] | NoStatus:
    """A supervisor's status line, or why there is none."""
    data = b""
    with trio.move_on_after(timeout):
        sock = trio.socket.socket()
        try:
            await sock.connect((address, port))
        except ConnectionRefusedError:
            sock.close()
            return NoStatus.REFUSED
        except OSError:
            sock.close()
            return NoStatus.SILENT
        stream = trio.SocketStream(sock)
        try:
            async with stream:
                while not data.endswith(b"\n") and len(data) < 4096:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        break
                    data += chunk
        except (OSError, trio.BrokenResourceError):
            return NoStatus.SILENT
    if not data.endswith(b"\n"):
        return NoStatus.SILENT
    try:
        status = json.loads(data)
    except ValueError:
        return NoStatus.SILENT
    return status if isinstance(status, dict) else NoStatus.SILENT


async def peer_status(address: str, port: int) -> PeerStatus | None:
    """The peer's status; DOWN if refused (its relay cannot run without its supervisor:
    PR_SET_PDEATHSIG); None if silent or not a status line."""
    line = await status_line(address, port, FENCE_TIMEOUT)
    if line is NoStatus.REFUSED:
        return DOWN
    return None if line is NoStatus.SILENT else PeerStatus.parse(line)


class Supervisor:
    """The driver around `HaPolicy`: it feeds the policy what keepalived, the peer and the
    relay say, with the time, and carries out the actions it returns."""

    def __init__(self, config: HaSections, state_file: str | None = None) -> None:
        assert config.ha is not None
        self.config = config
        self.ha: HaConfig = config.ha
        self.state = HaState(self.ha.node, self.ha.priority)
        self.policy = HaPolicy(self.state, preempt=self.ha.preempt_delay is not None)
        self.state_file = state_file
        self.relay: Child | None = None  # loaded and waiting while standby, running while active
        self._control: socket.socket | None = None  # our end of the relay's --start-fd
        self._nursery: trio.Nursery  # set by run()
        self._rearm = trio.Event()  # set when an input may have moved the policy's timer
        self._published = b""
        self.failed = False  # keepalived exited by itself: the service manager should restart us

    # ------------------------------------------------------------------ start

    def prepare(self) -> None:
        """Generated keepalived.conf, a cleared fence, the FIFO, and no virtual address
        left behind by a keepalived that was killed (it cannot release them then)."""
        k = self.ha.keepalived
        for path in (k.config_file, k.notify_fifo, k.pid_file):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(k.config_file, "w") as f:
            f.write(render(self.ha))
        self._fence(False)
        if os.path.exists(k.notify_fifo):
            os.unlink(k.notify_fifo)
        os.mkfifo(k.notify_fifo, 0o600)
        for pid_file in (k.pid_file, k.vrrp_pid_file):
            if _stale(pid_file):
                os.unlink(pid_file)
        for side in self.ha.sides:
            for vip in side.addresses:
                subprocess.run(
                    ["ip", "addr", "del", str(vip.address), "dev", vip.interface],
                    capture_output=True,
                    check=False,
                )

    def _fence(self, on: bool) -> None:
        with open(track_file_path(self.ha), "w") as f:
            f.write("1\n" if on else "0\n")

    def publish(self) -> None:
        line = self.state.line()
        if self.state_file is not None and line != self._published:
            tmp = self.state_file + ".tmp"
            with open(tmp, "wb") as f:
                f.write(line)
            os.replace(tmp, self.state_file)
        self._published = line

    async def run(self) -> None:
        self.prepare()
        fifo = os.open(self.ha.keepalived.notify_fifo, os.O_RDWR | os.O_NONBLOCK)  # never EOF
        self.publish()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._serve_status)
            keepalived = Child(command(self.ha), "keepalived")
            self.state.keepalived_up = True
            log.info("keepalived started (pid %d), config %s", keepalived.pid, self.ha.keepalived.config_file)
            nursery.start_soon(self._watch_keepalived, keepalived, nursery.cancel_scope)
            await self._apply(self.policy.start(trio.current_time()))
            nursery.start_soon(self._timers)
            nursery.start_soon(self._keep_relay)
            try:
                await self._follow(trio.lowlevel.FdStream(fifo))
            finally:
                with trio.CancelScope(shield=True):
                    await self._stop_relay()
                    await keepalived.stop()  # SIGTERM: it releases the addresses
                    self.state.keepalived_up = False
                    self.publish()

    async def _watch_keepalived(self, keepalived: Child, scope: trio.CancelScope) -> None:
        code = await keepalived.wait()
        log.error("keepalived exited with %d: stopping (the peer takes over)", code)
        self.state.keepalived_up = False
        self.failed = True
        scope.cancel()

    # ------------------------------------------------------------------ the policy's inputs and actions

    async def _follow(self, fifo: trio.lowlevel.FdStream) -> None:
        buffer = b""
        while True:
            chunk = await fifo.receive_some(4096)
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                words = line.decode(errors="replace").split()
                # 'GROUP "concentrator" MASTER 0'; INSTANCE lines are logged only.
                log.info("keepalived: %s", " ".join(words))
                if len(words) >= 3 and words[0] == "GROUP" and (vrrp := Vrrp.parse(words[2])) is not None:
                    # Awaited: a demotion stops the relay before the next line is read.
                    await self._apply(self.policy.vrrp_changed(vrrp, trio.current_time()))

    async def _timers(self) -> None:
        while True:
            self._rearm = trio.Event()
            with trio.move_on_at(self.policy.get_timer()) as waiting:
                await self._rearm.wait()
            if waiting.cancelled_caught:
                await self._apply(self.policy.handle_timer(trio.current_time()))

    async def _ask(self, ask: Ask) -> None:
        """Both sides at once (docs/ha.md: the hold does not depend on one LAN)."""
        answers: list[PeerStatus | None] = []

        async def one(address: str) -> None:
            answers.append(await peer_status(address, self.ha.status_port))

        async with trio.open_nursery() as nursery:
            for side in self.ha.sides:
                nursery.start_soon(one, str(side.peer))
        await self._apply(self.policy.peer_answered(ask, PeerAnswer.from_sides(answers), trio.current_time()))

    async def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case AskPeer(ask):
                    self._nursery.start_soon(self._ask, ask)
                case SetFence(on):
                    self._fence(on)
                case LoadRelay(start):
                    await self._stop_relay()
                    self._spawn_relay()
                    if start:
                        self._start_relay()
                case StartRelay(promoted_at, stale_bmi):
                    if self._start_relay() and self.relay is not None:
                        self._nursery.start_soon(self._measure_takeover, promoted_at, self.relay)
                        self._nursery.start_soon(self._nudge_bmi, list(stale_bmi))
        self._rearm.set()
        self.publish()

    # ------------------------------------------------------------------ the relay

    def _spawn_relay(self) -> None:
        """A relay loaded and waiting for its start byte: promotion then costs
        milliseconds, not an interpreter start (1-3 s on a loaded small machine). It says
        when it is loaded; until then this appliance is not a ready backup."""
        ours, theirs = socket.socketpair()
        argv = [
            sys.executable,
            "-m",
            "concentrator",
            "relay",
            "--config",
            self.config.file,
            "--start-fd",
            str(theirs.fileno()),
        ]
        self.relay = Child(argv, "relay", pass_fds=(theirs.fileno(),))
        theirs.close()
        self._control = ours
        self.state.relay_pid = self.relay.pid
        self.state.relay_ready = False
        self.publish()
        self._nursery.start_soon(self._await_ready, self.relay, ours)

    async def _await_ready(self, relay: Child, control: socket.socket) -> None:
        try:
            await trio.lowlevel.wait_readable(control)
        except trio.ClosedResourceError:
            return  # stopped before it was loaded
        if self.relay is relay and control.recv(1) == b"r":
            self.state.relay_ready = True
            log.info("relay loaded (pid %d)", relay.pid)
            self.publish()

    def _close_control(self) -> None:
        if self._control is not None:
            trio.lowlevel.notify_closing(self._control)
            self._control.close()
            self._control = None

    def _start_relay(self) -> bool:
        """The start byte to the loaded relay; False if there is none (it exited a moment
        ago: the policy hears of it and starts its replacement, being active)."""
        if self.relay is None or self._control is None:
            return False
        try:
            self._control.send(b"1")
        except OSError:
            return False  # it is exiting: the same
        log.info("relay started (pid %d)%s", self.relay.pid, "" if self.state.relay_ready else ", still loading")
        return True

    async def _keep_relay(self) -> None:
        """Tells the policy when the relay exits by itself (not stopped on purpose)."""
        while True:
            relay = self.relay
            if relay is None:
                await trio.sleep(0.05)
                continue
            code = await relay.wait()
            if self.relay is not relay:
                continue  # stopped on purpose
            self.relay = None
            self._close_control()
            self.state.relay_pid = None
            self.state.relay_ready = False
            log.error("relay (pid %d) exited with %d", relay.pid, code)
            await self._apply(self.policy.relay_exited(trio.current_time()))

    async def _nudge_bmi(self, stale: list[str]) -> None:
        """Make the BMI drop its connections to the old master now rather than at its t2
        or t3 (concentrator/ha/tcp.py). Harmless if they are gone already."""
        listen = self.config.uplink.listen
        if not stale:
            return
        start = trio.current_time()
        for at in NUDGES:
            await trio.sleep_until(start + at)
            if self.state.role is not Role.ACTIVE:
                return
            connected = connected_peers(listen.host, listen.port)
            if len(connected) >= len(stale):
                # Without a nudge when a retransmission of the BMI's met this kernel first
                # (the address is here now, that connection is not: a reset).
                how = "after the nudge" if at else "without a nudge"
                log.info("the BMI is back (%d connection(s)) %s", len(connected), how)
                return
            remaining = [c for c in stale if c not in connected]
            try:
                sent = nudge((listen.host, listen.port), remaining)
            except OSError as exc:
                log.warning("cannot nudge the BMI's stale connections: %s", exc)
                return
            log.info("nudged %d stale BMI connection(s) of the old master: %s", sent, ", ".join(remaining))

    async def _measure_takeover(self, promoted_at: float, relay: Child) -> None:
        listen = self.config.uplink.listen
        while self.relay is relay and not listening(listen.host, listen.port):
            await trio.sleep(0.005)
        if self.relay is relay:
            self.state.last_takeover_seconds = trio.current_time() - promoted_at
            log.warning("relay listening on %s, %.3f s after MASTER", listen, self.state.last_takeover_seconds)
            self.publish()

    async def _stop_relay(self) -> None:
        relay, self.relay = self.relay, None
        if relay is not None:
            self._close_control()
            self.state.relay_ready = False
            await relay.stop()
            log.warning("relay stopped (pid %d)", relay.pid)
            self.state.relay_pid = None

    # ------------------------------------------------------------------ status

    async def _serve_status(self) -> None:
        async def answer(stream: trio.SocketStream) -> None:
            # Read-only: the line is written, nothing read is acted upon.
            if self.state.role is Role.ACTIVE:  # for the peer's nudge after a takeover
                listen = self.config.uplink.listen
                self.state.bmi_connections = connected_peers(listen.host, listen.port)
            with trio.move_on_after(1):
                try:
                    await stream.send_all(self.state.line())
                except trio.BrokenResourceError:
                    pass
            await trio.aclose_forcefully(stream)

        await trio.serve_tcp(answer, self.ha.status_port, host="0.0.0.0")


def load(path: str, load_config: Load) -> HaSections:
    config = load_config(path)
    if config.ha is None:
        raise ConfigError(config.file, "ha", "an ha: section (concentrator ha runs one appliance of a pair)")
    return config


def main(argv: list[str], load_config: Load) -> int:
    ap = argparse.ArgumentParser(prog="concentrator ha", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="the appliance's YAML file (with an ha: section)")
    ap.add_argument("--state", help="also write the status line to this file on every change")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s.%(msecs)03d %(name)s %(levelname)s %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    try:
        config = load(args.config, load_config)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if shutil.which("keepalived") is None:  # one line, exit status 5 (cli.main: configbase.run_main)
        raise MissingTool(f"{args.config}: ha", "keepalived is not on PATH", "apt-get install keepalived")
    supervisor = Supervisor(config, args.state)
    assert config.ha is not None
    try:
        serve([HaCollector(supervisor.state)], config.ha.metrics_listen)
    except OSError as exc:
        log.error("metrics not served on %s: %s", config.ha.metrics_listen, exc)

    async def _main() -> int | None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as stop:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(supervisor.run)
                async for signum in stop:
                    log.info("stopping on signal %d: relay stopped, keepalived releases the addresses", signum)
                    nursery.cancel_scope.cancel()
                    return signum
        return None

    if trio.run(_main) == signal.SIGINT and not supervisor.failed:
        raise KeyboardInterrupt  # stopped cleanly on Ctrl-C: one line, status 130 (cli.main: configbase.run_main)
    return 1 if supervisor.failed else 0


def status_main(argv: list[str], load_config: Load) -> int:
    """`concentrator ha-status --config FILE [--json]`: this appliance's role, from its supervisor."""
    ap = argparse.ArgumentParser(prog="concentrator ha-status", description=status_main.__doc__)
    ap.add_argument("--config", required=True)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        config = load(args.config, load_config)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    assert config.ha is not None
    status = trio.run(status_line, "127.0.0.1", config.ha.status_port, 2.0)
    if isinstance(status, NoStatus):
        print(
            f"no HA supervisor answers on port {config.ha.status_port} (is `concentrator ha` running?)", file=sys.stderr
        )
        return 1
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    takeover = status.get("last_takeover_seconds")
    print(
        f"node {status['node']}: {status['role']} (vrrp {status['vrrp']}) since "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(status['since']))}"
    )
    print(
        f"  transitions {status['transitions']}, fenced {status['fenced']}, "
        f"last takeover {'-' if takeover is None else f'{takeover:.3f} s'}"
    )
    print(
        f"  relay pid {status['relay_pid'] or '-'} ({'loaded' if status['relay_ready'] else 'NOT loaded'}), "
        f"starts {status['relay_starts']}, "
        f"crashes {status['relay_exits']}; keepalived {'up' if status['keepalived_up'] else 'DOWN'}"
    )
    return 0 if status["role"] in ("active", "standby") else 1
