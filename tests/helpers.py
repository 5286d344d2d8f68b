"""Shared test helpers: free ports, relay configurations, waiting on conditions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from concentrator.config import Config, parse_config
from concentrator.sim.points import free_tcp_port as free_port


def relay_config(
    site_ports: list[int],
    *,
    uplink_port: int | None = None,
    allowed_peers: list[str] | None = None,
    first_ca: int = 101,
    uplink: dict[str, Any] | None = None,
    site: dict[str, Any] | None = None,
) -> Config:
    """A relay on loopback for sites listening on `site_ports`, CA first_ca + index."""
    data = {
        "uplink": {
            "listen": f"127.0.0.1:{uplink_port or free_port()}",
            "allowed_peers": allowed_peers or ["127.0.0.1"],
            **(uplink or {}),
        },
        "sites": [
            {
                "name": f"site-{n + 1:02d}",
                "common_addresses": [first_ca + n],
                "endpoints": [f"127.0.0.1:{port}"],
                "interruptibility": "instantaneous",
                **(site or {}),
            }
            for n, port in enumerate(site_ports)
        ],
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
    }
    return parse_config(data, "<test>")


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll `condition` (trio time) until true; fail with `what` after `timeout` seconds."""
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
