"""Link and carrier events from the kernel, as a trio async iterator.

A plain AF_NETLINK socket subscribed to RTMGRP_LINK is read with trio's own socket
layer (no thread, cancellable like any trio call); pyroute2 only decodes the
messages. A link is "usable" when it is administratively up (IFF_UP) and has
carrier (IFF_LOWER_UP): `ip link set X down` on our side clears the first, the
same on the far end of a veth (or a pulled cable) clears the second.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import trio
from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTMGRP_LINK
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
RTM_NEWLINK = 16
RTM_DELLINK = 17


@dataclass(frozen=True, slots=True)
class LinkState:
    ifname: str
    index: int
    usable: bool


def _state(msg: Any) -> LinkState | None:  # a pyroute2 ifinfmsg (pyroute2 has no type hints)
    name = msg.get_attr("IFLA_IFNAME")
    if name is None:
        return None
    header_type = msg["header"]["type"]
    flags = msg["flags"]
    usable = header_type != RTM_DELLINK and bool(flags & IFF_UP) and bool(flags & IFF_LOWER_UP)
    return LinkState(name, msg["index"], usable)


def current_links() -> dict[str, LinkState]:
    """Snapshot of every link's state, to start from before events arrive."""
    with IPRoute() as ipr:
        out: dict[str, LinkState] = {}
        for msg in ipr.get_links():
            st = _state(msg)
            if st is not None:
                out[st.ifname] = st
        return out


class LinkMonitor:
    """Open before taking the snapshot so that no event falls in between."""

    def __init__(self) -> None:
        raw = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        # A large buffer: a burst of events (many links flapping) must not overflow it;
        # an overflow (ENOBUFS) is handled by re-reading the full state.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        raw.bind((0, RTMGRP_LINK))
        self._sock = trio.socket.from_stdlib_socket(raw)
        self._marshal = MarshalRtnl()

    def close(self) -> None:
        self._sock.close()

    async def events(self) -> AsyncIterator[LinkState]:
        while True:
            try:
                data = await self._sock.recv(1 << 16)
            except OSError as exc:  # ENOBUFS: events were lost, resynchronise
                if exc.errno != 105:
                    raise
                for st in (await trio.to_thread.run_sync(current_links)).values():
                    yield st
                continue
            for msg in self._marshal.parse(data):
                if msg["header"]["type"] not in (RTM_NEWLINK, RTM_DELLINK):
                    continue
                changed = _state(msg)
                if changed is not None:
                    yield changed


RTMGRP_IPV4_MROUTE = 0x20  # RTNLGRP_IPV4_MROUTE (6) as a group bit
NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES_BIT = 1 << (7 - 1)  # NFNLGRP_NFTABLES (7): every nftables change
_ENOBUFS = 105


class ChangeMonitor:
    """Kernel change notifications on one netlink multicast group, in this namespace:
    the multicast forwarding cache (`mroute()`: RTM_NEWROUTE / RTM_DELROUTE of family
    RTNL_FAMILY_IPMR whenever an entry is added or deleted) or nftables (`nftables()`:
    every ruleset change). The messages are not decoded: each only means "read the
    table again"."""

    def __init__(self, protocol: int, groups: int) -> None:
        self._raw = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        self._raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._raw.bind((0, groups))
        self._raw.setblocking(False)

    @classmethod
    def mroute(cls) -> ChangeMonitor:
        return cls(socket.NETLINK_ROUTE, RTMGRP_IPV4_MROUTE)

    @classmethod
    def nftables(cls) -> ChangeMonitor:
        return cls(NETLINK_NETFILTER, NFNLGRP_NFTABLES_BIT)

    def close(self) -> None:
        self._raw.close()

    async def changed(self) -> None:
        """Return once the table changed (or messages were lost: ENOBUFS, which also
        means it changed), having read every message already queued."""
        await trio.lowlevel.wait_readable(self._raw)
        while True:
            try:
                self._raw.recv(1 << 16)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != _ENOBUFS:
                    raise
