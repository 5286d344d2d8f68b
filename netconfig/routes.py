"""Route installation with pyroute2: the only module that changes the routing table.

Destination routes always carry `prefsrc` = the service address, which lives on a
dummy/loopback interface and on neither path: the TCP endpoints therefore do not
change when the route moves from one path to the other, and sessions survive.

Probe routes (a /32 to each path's probe target through that path) carry no
prefsrc: a probe leaves from the path's own interface address so its answer comes
back over the same path whatever the destination routes say.

Each destination gets two routes: the active path's at metric 10 and the standby
path's at metric 20. A switch is an atomic `route replace` of the metric-10 route.
The standby route closes the gap between the kernel reacting to a link change and
us: when the active interface goes down the kernel deletes its route at once, and
with ignore_routes_with_linkdown=1 it skips a route whose carrier is gone; either
way the metric-20 route carries the traffic in the meantime instead of TCP finding
no route (which costs a whole retransmission timeout, >= 200 ms).

`ip link set X down` deletes every route through X and the kernel never puts them
back: callers re-apply after a link comes back (`apply` is idempotent: route replace).

Optional `rto_min` (route metric RTAX_RTO_MIN, locked, like `ip route ... rto_min`)
lowers the TCP retransmission timeout floor of sessions using these routes: after a
silent failure the sender retransmits at rto_min, 3 rto_min, 7 rto_min... and the
first retransmission after the switch ends the outage.
"""

from __future__ import annotations

import time
from ipaddress import IPv4Address

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .config import LinkConfig, PathConfig

# Routes we own carry this protocol number, so that they can be told apart from
# the administrator's (`ip route show proto 104`).
RTPROT_NETD = 104
ACTIVE_METRIC = 10
STANDBY_METRIC = 20
_RTAX_RTO_MIN = 13


class RouteError(Exception):
    pass


class Routes:
    def __init__(self, service_address: IPv4Address, ipr: IPRoute | None = None, rto_min: float | None = None) -> None:
        self.service_address = service_address
        self._metrics: dict[str, int] = {}
        if rto_min is not None:
            self._metrics = {"rto_min": max(1, round(rto_min * 1000)), "lock": 1 << _RTAX_RTO_MIN}
        self._ipr = ipr if ipr is not None else IPRoute()
        self._index: dict[str, int] = {}

    def close(self) -> None:
        self._ipr.close()

    def _ifindex(self, name: str, fresh: bool = False) -> int:
        # Interfaces may be deleted and re-created with a new index: look again on error.
        if fresh or name not in self._index:
            found = self._ipr.link_lookup(ifname=name)
            if not found:
                raise RouteError(f"no interface {name}")
            self._index[name] = found[0]
        return self._index[name]

    def _replace(self, path: PathConfig, **kw: object) -> None:
        for attempt in (False, True):
            try:
                self._ipr.route(
                    "replace",
                    gateway=str(path.gateway),
                    oif=self._ifindex(path.interface, fresh=attempt),
                    proto=RTPROT_NETD,
                    **kw,
                )
                return
            except NetlinkError as exc:
                if attempt:
                    raise RouteError(f"route via {path.interface} {path.gateway}: {exc}") from exc

    def apply(self, link: LinkConfig, path: PathConfig) -> float:
        """Point every destination of `link` at `path` (the metric-10 route); returns
        the seconds it took. This is the switch itself."""
        start = time.monotonic()
        for dest in link.destinations:
            self._replace(
                path, dst=str(dest), prefsrc=str(self.service_address), priority=ACTIVE_METRIC, **self._extra()
            )
        return time.monotonic() - start

    def apply_standby(self, link: LinkConfig, path: PathConfig) -> None:
        """The metric-20 fallback route through the other path (fails while that
        interface is down: re-applied when it comes back)."""
        for dest in link.destinations:
            self._replace(
                path, dst=str(dest), prefsrc=str(self.service_address), priority=STANDBY_METRIC, **self._extra()
            )

    def _extra(self) -> dict[str, object]:
        return {"metrics": dict(self._metrics)} if self._metrics else {}

    def apply_probe_route(self, path: PathConfig) -> None:
        """Keep the probe target reachable through this path only (if not on-link)."""
        if path.probe_target == path.gateway:
            return  # on the link's own subnet: the connected route does it
        self._replace(path, dst=f"{path.probe_target}/32")

    def remove(self, link: LinkConfig) -> None:
        """Withdraw our routes for `link` (used on orderly shutdown if asked)."""
        for dest in link.destinations:
            for metric in (ACTIVE_METRIC, STANDBY_METRIC):
                try:
                    self._ipr.route("del", dst=str(dest), priority=metric, proto=RTPROT_NETD)
                except NetlinkError:
                    pass


def paths_in_use(links: tuple[LinkConfig, ...]) -> dict[str, str | None]:
    """Which interface the kernel sends each link's traffic over now (`ip route get`
    of the link's first destination), as `netconfig.trip.plan.wanted_routes` wants it: every
    path interface of a link -> the interface in use (None: no route). Read-only:
    for the diagnostic, which must judge what the kernel does, not what netd thinks."""
    out: dict[str, str | None] = {}
    with IPRoute() as ipr:
        names = {msg["index"]: msg.get_attr("IFLA_IFNAME") for msg in ipr.get_links()}
        for link in links:
            dest = link.destinations[0]
            addr = dest.network_address if dest.prefixlen == 32 else next(dest.hosts())
            try:
                [route] = ipr.route("get", dst=str(addr))
                used: str | None = names.get(route.get_attr("RTA_OIF"))
            except (NetlinkError, ValueError):
                used = None
            out[link.primary.interface] = used
            out[link.backup.interface] = used
    return out
