"""What this kernel offers the trip path, and which engine to use: asked once, here.

Kernel builds differ: some have IPv4 multicast routing (`CONFIG_IP_MROUTE`), some do
not (`setsockopt(MRT_INIT)` fails with ENOPROTOOPT, errno 92, and smcrouted starts
anyway but forwards nothing); nftables `dup` in the netdev family (nf_dup_netdev) is
the other way to copy a trip in the kernel. `probe()` asks the kernel, in the network
namespace of the calling process, for both; `choose()` is pure: capability, the
engine the configuration asks for and the number of interfaces in, an engine or a
refusal with its reason and remedy out (docs/trip-path.md says why nftables is the
default where both work).
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass

from .config import MAXVIFS, NFTABLES, SMCROUTE, MulticastConfig
from .tables import nft_error

MRT_INIT, MRT_DONE = 200, 201  # <linux/mroute.h>
_PROBE_TABLE = "concentrator_probe"


@dataclass(frozen=True, slots=True)
class Feature:
    """One kernel feature: present (True), absent (False) or not known (None: the
    probe itself could not run, e.g. without root); `how` says what was tried and seen."""

    present: bool | None
    how: str

    def to_json(self) -> dict[str, object]:
        return {"present": self.present, "how": self.how}


@dataclass(frozen=True, slots=True)
class Capability:
    multicast_routing: Feature
    nftables_dup: Feature

    def to_json(self) -> dict[str, object]:
        return {"multicast_routing": self.multicast_routing.to_json(), "nftables_dup": self.nftables_dup.to_json()}

    def describe(self) -> str:
        def word(f: Feature) -> str:
            return {True: "yes", False: "NO", None: "unknown"}[f.present]

        return (
            f"kernel: multicast routing {word(self.multicast_routing)} ({self.multicast_routing.how}); "
            f"nftables dup {word(self.nftables_dup)} ({self.nftables_dup.how})"
        )


def probe_multicast_routing() -> Feature:
    """MRT_INIT on a raw IGMP socket (then MRT_DONE): what smcrouted does first."""
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_IGMP)
    except OSError as exc:
        return Feature(None, f"raw IGMP socket not opened: {exc} (needs root)")
    with sock:
        try:
            sock.setsockopt(socket.IPPROTO_IP, MRT_INIT, 1)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:  # a daemon (smcrouted) holds this namespace's table
                return Feature(True, "MRT_INIT: table already held by a multicast routing daemon")
            if exc.errno in (errno.EPERM, errno.EACCES):
                return Feature(None, f"MRT_INIT refused: {exc} (needs root)")
            return Feature(False, f"MRT_INIT failed with errno {exc.errno} ({os.strerror(exc.errno or 0)})")
        sock.setsockopt(socket.IPPROTO_IP, MRT_DONE, 1)
    return Feature(True, "MRT_INIT on a raw IGMP socket succeeded")


def probe_nftables_dup() -> Feature:
    """Load a netdev table with a `dup` rule (what the nftables engine loads), then
    delete it, in one nft run each."""
    nft = shutil.which("nft")
    if nft is None:
        return Feature(None, "nft not found (apt-get install nftables)")
    table = f"{_PROBE_TABLE}_{os.getpid()}"
    script = f'table netdev {table} {{\n chain probe {{\n  dup to "lo"\n }}\n}}\ndelete table netdev {table}\n'
    try:
        done = subprocess.run([nft, "-f", "-"], input=script, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Feature(None, f"nft did not run: {exc}")
    if done.returncode == 0:
        return Feature(True, "a netdev table with a dup rule loaded and deleted")
    err = nft_error(done.stderr) if done.stderr.strip() else f"exit {done.returncode}"
    if "Operation not permitted" in err:
        return Feature(None, f"nft refused: {err} (needs root)")
    return Feature(False, f"nft refused a dup rule: {err}")


@functools.cache
def probe() -> Capability:
    """Both features, asked once per process (a kernel does not change under us)."""
    return Capability(probe_multicast_routing(), probe_nftables_dup())


@dataclass(frozen=True, slots=True)
class Choice:
    """The engine to run (None: refused) and why, in one sentence an operator can act on."""

    asked: str
    engine: str | None
    reason: str

    def to_json(self) -> dict[str, object]:
        return {"asked": self.asked, "engine": self.engine, "reason": self.reason}


_NO_ROUTING = (
    "engine smcroute needs the kernel's IPv4 multicast routing and this kernel has none ({how}): "
    "use a kernel built with CONFIG_IP_MROUTE, or set multicast.engine to nftables or auto"
)


def choose(asked: str, cap: Capability, interfaces: int) -> Choice:
    """The engine for `asked` (auto, smcroute or nftables) on a kernel with `cap`, for a
    configuration with `interfaces` trip interfaces. nftables `dup` is preferred where it
    works: faster at every size measured, no daemon to supervise, no VIF limit."""
    mr, dup = cap.multicast_routing, cap.nftables_dup
    if asked == SMCROUTE:
        if interfaces > MAXVIFS:
            return Choice(asked, None, f"engine smcroute: {interfaces} interfaces, the kernel has {MAXVIFS} VIFs")
        if mr.present is False:
            return Choice(asked, None, _NO_ROUTING.format(how=mr.how))
        return Choice(asked, SMCROUTE, "asked for in the configuration")
    if asked == NFTABLES:
        if dup.present is False:
            return Choice(
                asked,
                None,
                f"engine nftables needs nftables dup in the netdev family and this kernel refuses it ({dup.how}): "
                "use a kernel with CONFIG_NF_DUP_NETDEV, or set multicast.engine to auto",
            )
        return Choice(asked, NFTABLES, "asked for in the configuration")
    if dup.present is not False:
        if dup.present:
            return Choice(asked, NFTABLES, "auto: nftables dup works on this kernel")
        return Choice(asked, NFTABLES, f"auto: nftables dup, not verified ({dup.how})")
    if mr.present is not False and interfaces <= MAXVIFS:
        return Choice(asked, SMCROUTE, f"auto: no nftables dup ({dup.how}), the multicast routing table instead")
    why = f"{interfaces} interfaces, more than {MAXVIFS} VIFs" if interfaces > MAXVIFS else mr.how
    return Choice(
        asked,
        None,
        f"no engine on this kernel: nftables dup refused ({dup.how}) and multicast routing unusable ({why}); "
        "use a kernel with CONFIG_NF_DUP_NETDEV (or CONFIG_IP_MROUTE for up to 32 interfaces)",
    )


def resolve(mc: MulticastConfig, cap: Capability | None = None) -> tuple[MulticastConfig | None, Choice]:
    """A parsed `multicast:` section with its engine chosen on this host (probed if
    `cap` is not given), or None when refused; and the choice."""
    choice = choose(mc.engine, cap if cap is not None else probe(), len(mc.interfaces))
    return (None if choice.engine is None else dataclasses.replace(mc, engine=choice.engine)), choice
