"""The trip path beyond the kernel's 32 multicast interfaces: nftables `dup` (netd).

The multicast routing table has 32 VIFs per table: the uplink's two paths and 15
two-path sites. Past that, netd copies trips with nftables instead, still in the
kernel (no process reads them): a netdev ingress chain on each uplink interface
matches (S,G) and jumps to the (S,G)'s chain, which holds one
`dup to "<site path in use>"` per member site and then drops the original (the
concentrator never takes a trip itself). Unlike the multicast routing table, the
group is taken in on both uplink paths: the BMI's side sends on the path its router
considers active, which is not ours for a while around a switch or a netd restart.
The rule on the path in use is commented "in", the other "standby" (its own counter:
such arrivals stay visible). Rules are in `table netdev concentrator_trip`
(render.nft_ruleset).

- Installed in one transaction (the table is replaced whole) at start and whenever
  the kernel's table is not what we want (deleted, altered).
- A link switch changes only the rules of what moved, by handle, in one transaction:
  a site moved to its backup gets `replace rule ... handle H dup to "<backup>"`; the
  other sites' rules (and counters) are untouched. An uplink switch replaces the
  (S,G)'s two inbound rules ("in" and "standby" change places).
- Every nftables change in the namespace is reported over netlink (NFNLGRP_NFTABLES):
  netd reads the table again at once and repairs it.
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping
from ipaddress import IPv4Address
from typing import Any

import trio

from ..netlink import ChangeMonitor
from .config import MulticastConfig
from .plan import MRoute, wanted_routes
from .render import NFT_TABLE, nft_chain, nft_copy_rule, nft_inbound_rule, nft_ruleset
from .smcroute import FAILURE_SUMMARY, RECHECK_INTERVAL, TripEngine, TripState, record
from .tables import NftRule, nft_entries, nft_error, parse_nft
from .verdict import path_status

log = logging.getLogger("netd.trip")

NFT = shutil.which("nft") or "nft"


async def nft(script: str) -> tuple[int, str, str]:
    """One nft run with a script on stdin (`-f -`): changes go through `nft`."""
    try:
        done = await trio.run_process(
            [NFT, "-f", "-"], stdin=script.encode(), capture_stdout=True, capture_stderr=True, check=False
        )
    except OSError as exc:  # nft missing: report, never take netd down
        return 127, "", f"{NFT}: {exc} (apt-get install nftables)"
    return done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")


class _Libnftables:
    """libnftables (what `nft` is built on) in this process: listing our table costs
    about 0.15 ms of CPU this way against 4 ms for an `nft -j list` process, which
    matters to readers that poll (the shedding monitor, 20 reads a second)."""

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL("libnftables.so.1")
        except OSError as exc:
            raise OSError(f"libnftables.so.1 not loaded: {exc} (apt-get install nftables)") from exc
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        self.lib = lib
        self.ctx = lib.nft_ctx_new(0)  # its netlink socket: in this process's namespace
        lib.nft_ctx_output_set_flags(self.ctx, 1 << 4)  # NFT_CTX_OUTPUT_JSON
        lib.nft_ctx_buffer_output(self.ctx)
        lib.nft_ctx_buffer_error(self.ctx)  # errors kept, not printed

    def list_table(self) -> dict[str, Any] | None:
        """`nft -j list table netdev concentrator_trip` as JSON, or None: no such table."""
        if self.lib.nft_run_cmd_from_buffer(self.ctx, f"list table netdev {NFT_TABLE}".encode()) != 0:
            return None
        doc: dict[str, Any] = json.loads(self.lib.nft_ctx_get_output_buffer(self.ctx) or b"{}")
        return doc


@functools.cache
def _libnftables() -> _Libnftables:
    return _Libnftables()


def read_rules_sync() -> list[NftRule] | None:
    """Our table's rules with their counters, or None when there is no such table."""
    doc = _libnftables().list_table()
    return None if doc is None else parse_nft(doc)


class NftTripPath(TripEngine):
    """The trip path for `engine: nftables`: one `dup` per site copy, no VIFs."""

    def __init__(
        self,
        cfg: MulticastConfig,
        state: TripState,
        active_path: Callable[[], Mapping[str, str | None]],
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(cfg, state, active_path, on_change)
        self._applied: dict[tuple[IPv4Address, IPv4Address], MRoute] = {}
        self._lock = trio.Lock()  # one transaction at a time (switch vs repair)
        self._failed_loads = 0  # consecutive loads of the table that nft refused
        self._last_failure_log = 0.0

    async def run(self) -> None:
        monitor = ChangeMonitor.nftables()  # before the first install: no change unseen
        try:
            await self._install()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._apply_loop)
                nursery.start_soon(self._verify_loop, monitor)
        finally:
            monitor.close()

    async def _read(self) -> list[NftRule] | None:
        return read_rules_sync()  # a fraction of a millisecond, in this thread

    async def _install(self) -> bool:
        """The whole table, one transaction."""
        wanted = wanted_routes(self.cfg, self.active_path())
        t0 = time.perf_counter()
        code, _out, err = await nft(nft_ruleset(self.cfg, wanted))
        if code != 0:
            # Tried again at each check (RECHECK_INTERVAL, or a change in nftables);
            # what does not heal is said once, then once a minute.
            self._failed_loads += 1
            now = time.monotonic()
            if self._failed_loads == 1 or now - self._last_failure_log >= FAILURE_SUMMARY:
                self._last_failure_log = now
                why = nft_error(err)
                log.error("nft table netdev %s not loaded (attempt %d): %s", NFT_TABLE, self._failed_loads, why)
            return False
        if self._failed_loads:
            log.info("nft table netdev %s loaded after %d failed attempts", NFT_TABLE, self._failed_loads)
            self._failed_loads = 0
        self._applied = {(r.source, r.group): r for r in wanted}
        log.info(
            "trip path (nftables) installed: %d (S,G), outbound %s, in %.1f ms",
            len(wanted),
            ",".join(sorted({n for r in wanted for n in r.outbound})),
            (time.perf_counter() - t0) * 1000,
        )
        await self._verify()
        return True

    async def _apply_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty = trio.Event()
            async with self._lock:
                if not await self._repoint():
                    await self._install()

    async def _repoint(self) -> bool:
        """Change only the rules of what moved; False when the table is not as we left it."""
        wanted = wanted_routes(self.cfg, self.active_path())
        rules = await self._read()
        if rules is None:
            return False
        batch: list[str] = []
        moved: list[tuple[MRoute, MRoute]] = []
        for route in wanted:
            before = self._applied.get((route.source, route.group))
            if before is None:
                return False
            if before == route:
                continue
            cmds = _changes(self.cfg, rules, before, route)
            if cmds is None:
                return False
            batch += cmds
            moved.append((before, route))
        if not batch:
            return True
        t0 = time.perf_counter()
        code, _out, err = await nft("\n".join(batch) + "\n")
        took = time.perf_counter() - t0
        if code != 0:
            log.error("nft re-point failed: %s", nft_error(err))
            return False
        for before, route in moved:
            self._applied[(route.source, route.group)] = route
            group = str(route.group)
            if before.inbound != route.inbound:
                self.state.stats.repoints[group] = self.state.stats.repoints.get(group, 0) + 1
                self.state.last_repoint_seconds = took
                self._on_change()  # the state file counts it now, not at the next refresh
            log.warning(
                "trip group %s from %s: re-pointed from %s to %s, outbound %s -> %s, in %.1f ms",
                group,
                route.source,
                before.inbound,
                route.inbound,
                ",".join(before.outbound),
                ",".join(route.outbound),
                took * 1000,
            )
        return await self._verify()

    async def _verify(self) -> bool:
        rules = await self._read()
        status = path_status(self.cfg, nft_entries(self.cfg, rules or []), self.active_path())
        return not record(self.state, status, self._on_change)

    async def _verify_loop(self, monitor: ChangeMonitor) -> None:
        while True:
            with trio.move_on_after(RECHECK_INTERVAL):
                await monitor.changed()
            async with self._lock:
                if not await self._verify():
                    if not self._failed_loads:  # (else: not loaded yet, said by _install)
                        log.error("trip path (nftables) not as wanted (table deleted or changed): loading it again")
                    await self._install()


def _changes(cfg: MulticastConfig, rules: list[NftRule], before: MRoute, route: MRoute) -> list[str] | None:
    """nft commands that turn the (S,G)'s rules from `before` into `route`, by handle;
    None when a rule we put there is missing."""
    table = f"netdev {NFT_TABLE}"
    chain = nft_chain(cfg, route.source, route.group)
    out: list[str] = []
    if before.inbound != route.inbound:
        # The old path in use becomes standby and the other way round; both still jump
        # to the copies, so no trip is lost in between (one transaction anyway).
        ours = {f"{route.source} {route.group} {kind}" for kind in ("in", "standby", "wrong")}
        for r in rules:
            if r.chain.startswith("in_") and r.comment in ours:
                text = nft_inbound_rule(route, r.chain.removeprefix("in_"), chain)
                out.append(f"replace rule {table} {r.chain} handle {r.handle} {text}")
    copies = {r.target: r for r in rules if r.chain == chain and r.comment == "out"}
    end = next((r for r in rules if r.chain == chain and r.comment == "end"), None)
    if end is None or set(copies) != set(before.outbound):
        return None
    gone = [copies[n] for n in before.outbound if n not in route.outbound]
    new = [n for n in route.outbound if n not in before.outbound]
    # A site that moved to its other path: its one rule is replaced in place.
    for rule, name in zip(gone, new, strict=False):
        out.append(f"replace rule {table} {chain} handle {rule.handle} {nft_copy_rule(name)}")
    for rule in gone[len(new) :]:
        out.append(f"delete rule {table} {chain} handle {rule.handle}")
    for name in new[len(gone) :]:
        out.append(f"insert rule {table} {chain} position {end.handle} {nft_copy_rule(name)}")
    return out
