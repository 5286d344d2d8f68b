"""Test only: the relay with a planted fault, to show that the chaos soak
(bench/soak.py --plant) fails when an invariant breaks. Nothing of this is in the
product: it patches the relay core in this process, then runs `concentrator`.

    python -m tests.lab.soak_plant drop:10000 relay --config FILE
        every 10,000th site ASDU is confirmed to its site in its turn and never
        forwarded (a silent loss)
    python -m tests.lab.soak_plant fd-leak relay --config FILE
        one descriptor (/dev/null) opened and kept per site connection
"""

from __future__ import annotations

import os
import sys
from typing import Any

from concentrator.relay.core import RelayCore


def plant_drop(every: int) -> None:
    original = RelayCore._site_asdu
    count = [0]

    def dropping(self: RelayCore, conn: Any, site: Any, asdu: bytes, now: float) -> None:
        if self.active is not None and len(asdu) >= 6 and (asdu[4] | asdu[5] << 8) in site.cas:
            count[0] += 1
            if count[0] % every == 0:
                # What _foreign does for an ASDU it does not forward, without counting it.
                if conn.last_item is not None:
                    conn.last_item.extra += 1
                else:
                    conn.link.acknowledge(1, now)
                    self._touch(conn)
                return
        original(self, conn, site, asdu, now)

    RelayCore._site_asdu = dropping  # type: ignore[method-assign]


def plant_fd_leak() -> None:
    original = RelayCore.site_connected
    leaked: list[int] = []

    def leaking(self: RelayCore, site_index: int, endpoint: str, now: float) -> Any:
        leaked.append(os.open("/dev/null", os.O_RDONLY))
        return original(self, site_index, endpoint, now)

    RelayCore.site_connected = leaking  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    plant, rest = argv[0], argv[1:]
    if plant.startswith("drop:"):
        plant_drop(int(plant.split(":", 1)[1]))
    elif plant == "fd-leak":
        plant_fd_leak()
    else:
        raise SystemExit(f"unknown plant {plant!r}: drop:N or fd-leak")
    print(f"soak_plant: relay with planted fault {plant}", flush=True)
    from concentrator.cli import main as concentrator_main

    return concentrator_main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
