"""Load generator on our own codec: many simulated UPDCs and a simulated BMI in one process.

c104 drops events beyond about 4,000 ASDU/s, so the benchmarks drive the relay with
this instead. It runs on asyncio protocols around the same sans-I/O `Link` the relay
uses (no trio here: a protocol callback per received chunk is the cheapest I/O Python
offers, and the generator must stay cheaper than what it measures).

Every ASDU that matters carries the time it was sent, so that latency is measured per
ASDU at the receiver, on the same clock (CLOCK_MONOTONIC via `time.perf_counter_ns`):

- up (site to BMI): M_BO_NA_1 (type 7) with SQ=1 and three 32-bit bitstrings: the
  site's sequence number and the time in ns (low, high word) the event arose at the
  site (so time spent waiting for the site's k window counts). Sequence numbers let
  the BMI count loss, duplicates and reordering per site.
- down (BMI to site): single commands C_SC_NA_1 (type 45), select then execute, one
  cycle per site at a time; the site looks up when the BMI sent the command it got
  (same process), and answers as a controlled station does (activation confirmation,
  and for execute the activation termination), which the BMI times as round trips.
- interrogation storm: the BMI sends C_IC_NA_1; each site confirms it, sends N objects
  (one ASDU each, time-stamped as above, cause 20) and terminates it.

The BMI either holds one connection (to the relay) or one connection per site (the
direct and haproxy baselines: port `first_port + i` reaches site i).

    python -m bench.loadgen steady --sites 100 --rate 10 --site-port 30000 \
        --bmi-port 2404 --duration 15 --watch-pid 1234
prints one JSON object with the measurements on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import struct
import sys
import time
import zlib
from array import array
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from bench.common import percentile
from concentrator.iec104.asdu import BROADCAST_CA, Cause
from concentrator.iec104.decode import TypeId
from concentrator.iec104.link import (
    Acknowledged,
    AsduReceived,
    DataTransferStarted,
    Link,
    LinkFailed,
    LinkParams,
    Role,
)

now_ns = time.perf_counter_ns
monotonic = time.monotonic

STAMPED_IOA = 1000
COMMAND_IOA = 5000

# type, VSQ (SQ=1, 3 elements), cause, originator, CA, IOA (low 16, high 8), then three
# (32-bit bitstring, QDS) elements: sequence, send time low word, send time high word.
_STAMPED = struct.Struct("<BBBBHHBIBIBIB")
STAMPED_LENGTH = _STAMPED.size  # 24 octets
_stamped_pack = _STAMPED.pack
_stamped_unpack = _STAMPED.unpack_from


def stamped_asdu(ca: int, cause: int, ioa: int, sequence: int, sent_ns: int) -> bytes:
    return _stamped_pack(
        TypeId.M_BO_NA_1, 0x83, cause, 0, ca, ioa & 0xFFFF, ioa >> 16, sequence & 0xFFFFFFFF, 0,
        sent_ns & 0xFFFFFFFF, 0, sent_ns >> 32, 0,
    )  # fmt: skip


def _stamp_now(ca: int, cause: int, ioa: int, sequence: int) -> bytes:
    """A stamped ASDU made at the moment it is sent."""
    return stamped_asdu(ca, cause, ioa, sequence, now_ns())


def read_stamped(asdu: bytes) -> tuple[int, int, int, int]:
    """(cause, CA, sequence, send time in ns) of an ASDU made by `stamped_asdu`."""
    f = _stamped_unpack(asdu)
    return f[2] & 0x3F, f[4], f[7], f[9] | (f[11] << 32)


def command_asdu(ca: int, cause: int, select: bool) -> bytes:
    """C_SC_NA_1, IOA 5000, ON; S/E bit set for select."""
    return bytes((TypeId.C_SC_NA_1, 1, cause, 0, ca & 0xFF, ca >> 8, COMMAND_IOA & 0xFF, COMMAND_IOA >> 8, 0,
                  0x81 if select else 0x01))  # fmt: skip


def interrogation_asdu(ca: int, cause: int = Cause.ACTIVATION) -> bytes:
    return bytes((TypeId.C_IC_NA_1, 1, cause, 0, ca & 0xFF, ca >> 8, 0, 0, 0, 20))


def _mirror(asdu: bytes, cause: int, ca: int) -> bytes:
    """What a controlled station answers: the same ASDU with another cause, its own CA."""
    return asdu[:2] + bytes((cause, asdu[3], ca & 0xFF, ca >> 8)) + asdu[6:]


# --------------------------------------------------------------------------- statistics


def summarise_us(samples: array) -> dict[str, float | int]:
    """p50/p90/p99/p99.9/max/mean of samples in ns, given in µs."""
    values = sorted(samples)
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": percentile(values, 50) / 1e3,
        "p90": percentile(values, 90) / 1e3,
        "p99": percentile(values, 99) / 1e3,
        "p999": percentile(values, 99.9) / 1e3,
        "max": values[-1] / 1e3,
        "mean": sum(values) / len(values) / 1e3,
    }


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_sample(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) and resident memory of a process, from /proc."""
    cpu = cpu_seconds(pid)
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    return {"cpu_s": cpu, "rss_bytes": rss, "hwm_bytes": hwm}


def descendants(pid: int) -> list[int]:
    """The children of a process, their children, and so on (from /proc)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children = [int(c) for c in f.read().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def tree_sample(pid: int) -> dict[str, float]:
    """`proc_sample` of a process, plus `tree_` sums over it and its descendants (the
    relay's metrics exporter runs as a child process)."""
    own = proc_sample(pid)
    total = dict(own)
    for child in descendants(pid):
        try:
            sample = proc_sample(child)
        except OSError:
            continue
        for key in total:
            total[key] += sample[key]
    return {**own, **{f"tree_{key}": value for key, value in total.items()}}


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (everything but idle and iowait)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


# --------------------------------------------------------------------------- endpoints


class Endpoint(asyncio.Protocol):
    """One IEC 104 connection: a Link over an asyncio transport, with a send queue that
    waits for the k window. Subclasses handle received ASDUs."""

    role: Role

    def __init__(self, gen: LoadGen, params: LinkParams) -> None:
        self.gen = gen
        self.link = Link(self.role, params, now=monotonic())
        self.transport: asyncio.Transport | None = None
        # Waiting ASDUs: bytes, or a callable building the ASDU at send time (time stamps).
        self.waiting: deque[bytes | Callable[[], bytes]] = deque()
        self.started = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.gen.links.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.started = False
        if not self.gen.stopping:
            self.gen.errors.append(f"{type(self).__name__} connection lost: {exc!r} {self.link.failure or ''}")

    def data_received(self, data: bytes) -> None:
        link = self.link
        link.receive_data(data, monotonic())
        self._events(now_ns())

    def _events(self, received_ns: int) -> None:
        link = self.link
        on_asdu = self.on_asdu
        pump = False
        while (event := link.next_event()) is not None:
            if type(event) is AsduReceived:
                on_asdu(event.asdu, received_ns)
            elif type(event) is Acknowledged:
                pump = True
            elif type(event) is DataTransferStarted:
                self.started = True
                self.on_started()
                pump = True
            elif type(event) is LinkFailed:
                self.gen.errors.append(f"{type(self).__name__}: {event.reason}")
                if self.transport is not None:
                    self.transport.close()
                return
        if pump and self.waiting:
            self._pump()
        self.flush()

    def send(self, asdu: bytes | Callable[[], bytes]) -> None:
        self.waiting.append(asdu)
        if self.link.can_send:
            self._pump()
            self.flush()

    def _pump(self) -> None:
        link = self.link
        waiting = self.waiting
        now = monotonic()
        while waiting and link.can_send:
            item = waiting.popleft()
            link.send_asdu(item if type(item) is bytes else item(), now)  # type: ignore[operator]

    def flush(self) -> None:
        data = self.link.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def tick(self, now: float) -> None:
        deadline = self.link.get_timer()
        if deadline is not None and now >= deadline:
            self.link.handle_timer(now)
            self._events(now_ns())

    def on_asdu(self, asdu: bytes, received_ns: int) -> None:
        raise NotImplementedError

    def on_started(self) -> None:
        pass


class SiteEndpoint(Endpoint):
    """A UPDC (controlled station): sends time-stamped spontaneous data at its rate,
    answers interrogations and commands."""

    role = Role.CONTROLLED

    def __init__(self, gen: LoadGen, site: SimSite) -> None:
        super().__init__(gen, gen.site_params)
        self.site = site
        site.endpoint = self

    def on_asdu(self, asdu: bytes, received_ns: int) -> None:
        gen = self.gen
        site = self.site
        type_id = asdu[0]
        if type_id == TypeId.C_SC_NA_1:
            sent = gen.down_sent.pop(site.ca, None)
            if sent is not None and gen.measuring:
                gen.down_latency.append(received_ns - sent)
            if gen.pingpong_until:  # the ball comes back: the next ASDU up after the gap
                asyncio.get_running_loop().call_later(gen.pingpong_gap, gen.ping, site)
                return
            self.send(_mirror(asdu, Cause.ACTIVATION_CON, site.ca))
            if not asdu[9] & 0x80:  # execute: the command ran
                self.send(_mirror(asdu, Cause.ACTIVATION_TERMINATION, site.ca))
        elif type_id == TypeId.C_IC_NA_1:
            self.send(_mirror(asdu, Cause.ACTIVATION_CON, site.ca))
            ca = site.ca
            for n in range(gen.storm_objects):
                ioa = STAMPED_IOA + 1 + n
                self.waiting.append(partial(site.storm_asdu, ioa))
            self.send(_mirror(asdu, Cause.ACTIVATION_TERMINATION, ca))
        else:
            gen.other_down += 1

    def on_started(self) -> None:
        self.gen.sites_started += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self.started:
            self.gen.sites_started -= 1
        super().connection_lost(exc)


class BmiEndpoint(Endpoint):
    """The BMI (controlling station) side of one connection: starts data transfer,
    measures what arrives."""

    role = Role.CONTROLLING

    def __init__(self, gen: LoadGen) -> None:
        super().__init__(gen, gen.bmi_params)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.link.start(monotonic())
        self.flush()

    def on_started(self) -> None:
        self.gen.bmi_started += 1

    def on_asdu(self, asdu: bytes, received_ns: int) -> None:
        gen = self.gen
        type_id = asdu[0]
        if type_id == TypeId.M_BO_NA_1 and len(asdu) == STAMPED_LENGTH:
            cause, ca, sequence, sent = read_stamped(asdu)
            if cause == Cause.SPONTANEOUS:
                site = gen.site_by_ca[ca]
                if sequence != site.next_expected:
                    if sequence < site.next_expected:
                        gen.duplicates += 1
                    else:
                        gen.gaps += sequence - site.next_expected
                site.next_expected = sequence + 1
                gen.up_received += 1
                if gen.measuring:
                    gen.up_latency.append(received_ns - sent)
                if gen.pingpong_until:
                    gen.pong(ca)
            else:
                site = gen.site_by_ca[ca]
                site.storm_received_crc = zlib.crc32(asdu, site.storm_received_crc)
                gen.storm_received += 1
                gen.storm_latency.append(received_ns - sent)
                gen.storm_last_ns = received_ns
        elif type_id == TypeId.C_SC_NA_1:
            gen.command_answer(asdu, received_ns)
        elif type_id == TypeId.C_IC_NA_1:
            cause = asdu[2] & 0x3F
            if cause == Cause.ACTIVATION_CON:
                gen.storm_confirmations += 1
            elif cause == Cause.ACTIVATION_TERMINATION:
                gen.storm_terminations += 1
                gen.storm_last_ns = received_ns
        else:
            gen.other_up += 1


@dataclass
class SimSite:
    ca: int
    port: int
    endpoint: SiteEndpoint | None = None
    sequence: int = 0
    next_expected: int = 0  # at the BMI
    command_busy: bool = False
    # Interrogation storm: CRC-32 of the answers' bytes in the order the site sent them,
    # and of those the BMI received (equal: byte identity, none lost, order kept).
    storm_sent_crc: int = 0
    storm_received_crc: int = 0

    def storm_asdu(self, ioa: int) -> bytes:
        """An interrogated object, stamped now, counted in the storm's CRC."""
        asdu = _stamp_now(self.ca, Cause.INTERROGATED_BY_STATION, ioa, 0)
        self.storm_sent_crc = zlib.crc32(asdu, self.storm_sent_crc)
        return asdu


@dataclass
class LoadGen:
    sites_count: int
    site_port: int  # site i listens on site_port + i
    bmi_port: int  # the relay's uplink, or the first of one port per site
    per_site_bmi: bool  # direct / haproxy: one BMI connection per site
    host: str = "127.0.0.1"
    first_ca: int = 101
    site_params: LinkParams = field(default_factory=LinkParams)
    bmi_params: LinkParams = field(default_factory=LinkParams)
    storm_objects: int = 100

    def __post_init__(self) -> None:
        self.sites = [SimSite(self.first_ca + i, self.site_port + i) for i in range(self.sites_count)]
        self.site_by_ca = {s.ca: s for s in self.sites}
        self.links: list[Endpoint] = []
        self.bmis: list[BmiEndpoint] = []
        self.bmi_by_ca: dict[int, BmiEndpoint] = {}
        self.errors: list[str] = []
        self.stopping = False
        self.measuring = False
        self.sites_started = 0
        self.bmi_started = 0
        self.up_received = 0
        self.gaps = 0
        self.duplicates = 0
        self.other_up = 0
        self.other_down = 0
        self.up_latency = array("q")
        self.down_latency = array("q")
        self.down_sent: dict[int, int] = {}
        # command cycles: ca -> (phase, sent_ns); phases: select, execute
        self.command_state: dict[int, list[int]] = {}
        self.select_rtt = array("q")
        self.execute_con_rtt = array("q")
        self.execute_term_rtt = array("q")
        self.commands_done = 0
        self.storm_received = 0
        self.storm_confirmations = 0
        self.storm_terminations = 0
        self.storm_latency = array("q")
        self.storm_last_ns = 0
        self.pingpong_until = 0.0  # set while the ping-pong scenario runs
        self.pingpong_gap = 0.0
        self._servers: list[asyncio.base_events.Server] = []

    # ---------------------------------------------------------------- set-up
    async def listen(self) -> None:
        loop = asyncio.get_running_loop()
        for site in self.sites:
            server = await loop.create_server(
                partial(SiteEndpoint, self, site), self.host, site.port, backlog=64, reuse_address=True
            )
            self._servers.append(server)

    async def connect_bmi(self, timeout: float = 20.0) -> None:
        loop = asyncio.get_running_loop()
        ports = [self.bmi_port + i for i in range(self.sites_count)] if self.per_site_bmi else [self.bmi_port]
        deadline = monotonic() + timeout
        for i, port in enumerate(ports):
            while True:
                try:
                    _, bmi = await loop.create_connection(lambda: BmiEndpoint(self), self.host, port)
                    break
                except OSError:
                    if monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
            assert isinstance(bmi, BmiEndpoint)
            self.bmis.append(bmi)
            if self.per_site_bmi:
                self.bmi_by_ca[self.sites[i].ca] = bmi

    def bmi_for(self, ca: int) -> BmiEndpoint:
        return self.bmi_by_ca[ca] if self.per_site_bmi else self.bmis[0]

    async def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> float:
        start = monotonic()
        while not condition():
            if self.errors:
                raise RuntimeError(f"while waiting for {what}: {self.errors[:3]}")
            if monotonic() - start > timeout:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            await asyncio.sleep(0.005)
        return monotonic() - start

    async def ready(self, timeout: float = 60.0) -> float:
        """Until the BMI's connections and every site are started; returns how long."""
        start = monotonic()
        await self.connect_bmi(timeout)
        await self.wait(lambda: self.bmi_started == len(self.bmis), timeout, "BMI data transfer started")
        await self.wait(lambda: self.sites_started == self.sites_count, timeout, "every site started")
        return monotonic() - start

    async def ticker(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            now = monotonic()
            for link in self.links:
                if not link.lost:
                    link.tick(now)

    # ---------------------------------------------------------------- steady load
    def _schedule_site(self, loop: asyncio.AbstractEventLoop, site: SimSite, period: float, until: float) -> None:
        endpoint = site.endpoint
        assert endpoint is not None

        def fire(when: float) -> None:
            if when > until or self.stopping:
                return
            sequence = site.sequence
            site.sequence += 1
            ca = site.ca
            # Stamped when the event arises, not when the window lets it leave: a UPDC
            # waiting for confirmations (end to end through the relay) is part of the delay.
            endpoint.send(stamped_asdu(ca, Cause.SPONTANEOUS, STAMPED_IOA, sequence, now_ns()))
            loop.call_at(when + period, fire, when + period)

        first = loop.time() + random.random() * period
        loop.call_at(first, fire, first)

    def _start_command(self, ca: int) -> None:
        site = self.site_by_ca[ca]
        site.command_busy = True
        sent = now_ns()
        self.command_state[ca] = [0, sent]
        self.down_sent[ca] = sent
        self.bmi_for(ca).send(command_asdu(ca, Cause.ACTIVATION, select=True))

    def command_answer(self, asdu: bytes, received_ns: int) -> None:
        ca = asdu[4] | asdu[5] << 8
        cause = asdu[2] & 0x3F
        state = self.command_state.get(ca)
        if state is None:
            self.other_up += 1
            return
        phase, sent = state
        if phase == 0 and cause == Cause.ACTIVATION_CON:
            if self.measuring:
                self.select_rtt.append(received_ns - sent)
            sent = now_ns()
            state[0], state[1] = 1, sent
            self.down_sent[ca] = sent
            self.bmi_for(ca).send(command_asdu(ca, Cause.ACTIVATION, select=False))
        elif phase == 1 and cause == Cause.ACTIVATION_CON:
            if self.measuring:
                self.execute_con_rtt.append(received_ns - sent)
            state[0] = 2
        elif phase == 2 and cause == Cause.ACTIVATION_TERMINATION:
            if self.measuring:
                self.execute_term_rtt.append(received_ns - sent)
            del self.command_state[ca]
            self.site_by_ca[ca].command_busy = False
            self.commands_done += 1
        else:
            self.errors.append(f"unexpected command answer cause {cause} in phase {phase} for CA {ca}")

    async def commands(self, cycles_per_second: float, until: float) -> None:
        if cycles_per_second <= 0:
            return
        period = 1.0 / cycles_per_second
        loop = asyncio.get_running_loop()
        order = list(self.site_by_ca)
        random.shuffle(order)
        n = 0
        next_at = loop.time()
        while loop.time() < until and not self.stopping:
            next_at += period
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            for _ in range(len(order)):
                ca = order[n % len(order)]
                n += 1
                if not self.site_by_ca[ca].command_busy:
                    self._start_command(ca)
                    break

    async def steady(
        self, rate: float, duration: float, warmup: float, command_rate: float, idle: int = 0
    ) -> dict[str, object]:
        """Every site but the first `idle` sends `rate` stamped ASDUs per second; the BMI
        runs `command_rate` select/execute cycles per second; measure after `warmup` for
        `duration` s."""
        loop = asyncio.get_running_loop()
        until = loop.time() + warmup + duration
        if rate > 0:
            for site in self.sites[idle:]:
                self._schedule_site(loop, site, 1.0 / rate, until)
        commands = asyncio.ensure_future(self.commands(command_rate, until))
        result = await self._measure(warmup, until)
        await commands
        await self._all_arrived()
        try:
            await self.wait(lambda: not self.command_state, 10, "command cycles to finish")
        except TimeoutError as exc:
            self.errors.append(str(exc))
        return {
            **result,
            "select_rtt": summarise_us(self.select_rtt),
            "execute_con_rtt": summarise_us(self.execute_con_rtt),
            "execute_term_rtt": summarise_us(self.execute_term_rtt),
            "commands_done": self.commands_done,
            **self._losses(),
        }

    def ping(self, site: SimSite) -> None:
        """Ping-pong: the site sends its next stamped ASDU (until the scenario ends)."""
        if monotonic() >= self.pingpong_until or self.stopping:
            return
        endpoint = site.endpoint
        assert endpoint is not None
        sequence = site.sequence
        site.sequence += 1
        endpoint.send(stamped_asdu(site.ca, Cause.SPONTANEOUS, STAMPED_IOA, sequence, now_ns()))

    def pong(self, ca: int) -> None:
        """Ping-pong: the BMI answers a site's ASDU with a command to that site."""
        self.down_sent[ca] = now_ns()
        self.bmi_for(ca).send(command_asdu(ca, Cause.ACTIVATION, select=False))

    async def pingpong(self, duration: float, warmup: float, gap: float) -> dict[str, object]:
        """Every site has one ASDU in flight at a time: up to the BMI, whose command
        back down to the site makes it send the next, `gap` s later (0: at once, as many
        exchanges as the path allows). One-way latency each way."""
        self.pingpong_until = monotonic() + warmup + duration
        self.pingpong_gap = gap
        for site in self.sites:
            self.ping(site)
        result = await self._measure(warmup, self.pingpong_until)
        await self._all_arrived()
        return {**result, **self._losses()}

    async def _measure(self, warmup: float, until: float) -> dict[str, object]:
        """After `warmup` s and until `until` (monotonic): ASDUs up per second, latency
        each way, CPU of the watched processes, of the generator, of the machine."""
        await asyncio.sleep(warmup)
        self.measuring = True
        received_before = self.up_received
        start_proc = {pid: tree_sample(pid) for pid in self.watch_pids}
        start_self = self_cpu()
        start_machine = machine_busy_s()
        start = monotonic()
        await asyncio.sleep(max(0.0, until - monotonic()))
        elapsed = monotonic() - start
        self.measuring = False
        end_proc = {pid: tree_sample(pid) for pid in self.watch_pids}
        received = self.up_received - received_before
        return {
            "elapsed_s": elapsed,
            "up_asdus_per_s": received / elapsed,
            "up": summarise_us(self.up_latency),
            "down": summarise_us(self.down_latency),
            "watched": self._watched(start_proc, end_proc, elapsed, received),
            "loadgen_cpu_s_per_s": (self_cpu() - start_self) / elapsed,
            "machine_busy_cores": (machine_busy_s() - start_machine) / elapsed,
        }

    async def _all_arrived(self) -> None:
        """Let what is in flight arrive (then `_losses` says what never did)."""
        expected = sum(site.sequence for site in self.sites)
        try:
            await self.wait(lambda: self.up_received + self.gaps >= expected, 30, "in-flight data")
        except TimeoutError as exc:
            self.errors.append(str(exc))

    def _losses(self) -> dict[str, object]:
        return {
            "sent": sum(site.sequence for site in self.sites),
            "received": self.up_received,
            "gaps": self.gaps,
            "duplicates": self.duplicates,
        }

    def _watched(
        self, start: dict[int, dict[str, float]], end: dict[int, dict[str, float]], elapsed: float, asdus: int
    ) -> dict[str, dict[str, float]]:
        out = {}
        for pid in start:
            cpu = end[pid]["cpu_s"] - start[pid]["cpu_s"]
            tree_cpu = end[pid]["tree_cpu_s"] - start[pid]["tree_cpu_s"]
            out[str(pid)] = {
                "cpu_s_per_s": cpu / elapsed,
                "cpu_s_per_1000_asdu": cpu / asdus * 1000 if asdus else float("nan"),
                "rss_mb": end[pid]["rss_bytes"] / 2**20,
                "hwm_mb": end[pid]["hwm_bytes"] / 2**20,
                "tree_cpu_s_per_s": tree_cpu / elapsed,
                "tree_rss_mb": end[pid]["tree_rss_bytes"] / 2**20,
            }
        return out

    # ---------------------------------------------------------------- interrogation storm
    async def storm(self, repeats: int, timeout: float = 120.0) -> dict[str, object]:
        """The BMI interrogates every site at once (broadcast CA); each answers with
        `storm_objects` ASDUs; time until the BMI has all of them, `repeats` times."""
        runs = []
        per_storm = self.sites_count * self.storm_objects
        for _ in range(repeats):
            await asyncio.sleep(0.5)
            self.storm_received = self.storm_confirmations = self.storm_terminations = 0
            for site in self.sites:
                site.storm_sent_crc = site.storm_received_crc = 0
            self.storm_latency = array("q")
            start_proc = {pid: tree_sample(pid) for pid in self.watch_pids}
            start_self = self_cpu()
            start_machine = machine_busy_s()
            marks: dict[float, int] = {}
            start = now_ns()
            for bmi in self.bmis:
                bmi.send(interrogation_asdu(BROADCAST_CA))

            def done(marks: dict[float, int] = marks) -> bool:
                for fraction in (0.1, 0.9):
                    if fraction not in marks and self.storm_received >= fraction * per_storm:
                        marks[fraction] = now_ns()
                return self.storm_received >= per_storm and self.storm_terminations >= self.sites_count

            await self.wait(done, timeout, "the interrogation storm")
            total_s = (self.storm_last_ns - start) / 1e9
            differing = [site.ca for site in self.sites if site.storm_sent_crc != site.storm_received_crc]
            if differing:
                self.errors.append(
                    f"storm: {len(differing)} sites' answers reached the BMI altered, incomplete or out of"
                    f" order (CRC-32 of the bytes sent and received differ), CAs {differing[:10]}"
                )
            end_proc = {pid: tree_sample(pid) for pid in self.watch_pids}
            elapsed = (now_ns() - start) / 1e9
            middle_s = (marks[0.9] - marks[0.1]) / 1e9
            asdus = per_storm + 2 * self.sites_count
            runs.append(
                {
                    "asdus": asdus,
                    "sites_differing": len(differing),  # byte identity, no loss, per-site order
                    "total_s": total_s,
                    "asdus_per_s": asdus / total_s,
                    "sustained_asdus_per_s": 0.8 * per_storm / middle_s if middle_s > 0 else float("nan"),
                    "latency": summarise_us(self.storm_latency),
                    "watched": self._watched(start_proc, end_proc, elapsed, asdus),
                    "loadgen_cpu_s_per_s": (self_cpu() - start_self) / elapsed,
                    "machine_busy_cores": (machine_busy_s() - start_machine) / elapsed,
                }
            )
        return {"runs": runs}

    watch_pids: tuple[int, ...] = ()

    async def close(self) -> None:
        self.stopping = True
        for link in self.links:
            if link.transport is not None:
                link.transport.close()
        for server in self._servers:
            server.close()
        await asyncio.sleep(0.05)


async def _main(args: argparse.Namespace) -> dict[str, object]:
    gen = LoadGen(
        sites_count=args.sites,
        site_port=args.site_port,
        bmi_port=args.bmi_port,
        per_site_bmi=args.per_site_bmi,
        site_params=LinkParams(k=args.site_k, w=args.site_w),
        bmi_params=LinkParams(k=args.bmi_k, w=args.bmi_w),
        storm_objects=args.objects,
    )
    gen.watch_pids = tuple(args.watch_pid)
    ticker = asyncio.ensure_future(gen.ticker())
    try:
        await gen.listen()
        print("listening", file=sys.stderr, flush=True)
        setup_s = await gen.ready(args.ready_timeout)
        if args.watch_pid_file:
            # The process under test starts after the sites listen, so its pid comes late.
            await gen.wait(lambda: os.path.exists(args.watch_pid_file), 10, "the pid file")
            with open(args.watch_pid_file) as f:
                gen.watch_pids += (int(f.read()),)
        await asyncio.sleep(0.5)
        result: dict[str, object] = {
            "setup_s": setup_s,
            "ready_watched": {str(pid): tree_sample(pid) for pid in gen.watch_pids},
        }
        if args.scenario == "steady":
            result.update(await gen.steady(args.rate, args.duration, args.warmup, args.commands, args.idle_sites))
        elif args.scenario == "pingpong":
            result.update(await gen.pingpong(args.duration, args.warmup, args.gap))
        else:
            result.update(await gen.storm(args.repeats))
        result["idle_watched"] = {str(pid): tree_sample(pid) for pid in gen.watch_pids}
        result["errors"] = gen.errors[:10]
        result["loadgen_rss_mb"] = proc_sample(os.getpid())["rss_bytes"] / 2**20
        return result
    finally:
        ticker.cancel()
        await gen.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=["steady", "pingpong", "storm"])
    parser.add_argument("--sites", type=int, required=True)
    parser.add_argument("--site-port", type=int, required=True, help="site i listens on this port + i")
    parser.add_argument("--bmi-port", type=int, required=True, help="relay uplink port, or first per-site port")
    parser.add_argument("--per-site-bmi", action="store_true", help="one BMI connection per site (baselines)")
    parser.add_argument("--rate", type=float, default=10.0, help="ASDU/s per site (steady)")
    parser.add_argument("--idle-sites", type=int, default=0, help="sites that send nothing (steady)")
    parser.add_argument("--commands", type=float, default=0.0, help="select/execute cycles per second (steady)")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--gap", type=float, default=0.01, help="s between a site's exchanges (pingpong)")
    parser.add_argument("--objects", type=int, default=100, help="objects per site in a storm")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--site-k", type=int, default=12)
    parser.add_argument("--site-w", type=int, default=8)
    parser.add_argument("--bmi-k", type=int, default=12)
    parser.add_argument("--bmi-w", type=int, default=8)
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    parser.add_argument("--watch-pid", type=int, action="append", default=[], help="report CPU/RSS of this process")
    parser.add_argument("--watch-pid-file", help="file holding the pid of a process to watch, read once ready")
    args = parser.parse_args(argv)
    result = asyncio.run(_main(args))
    json.dump(result, sys.stdout)
    print()
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
