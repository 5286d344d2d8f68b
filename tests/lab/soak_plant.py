"""Test only: the relay with a planted fault, to show that the chaos soak
(bench/soak.py --plant) fails when an invariant breaks. Nothing of this is in the
product: it patches the relay core in this process, then runs `concentrator`.

    python -m tests.lab.soak_plant drop:10000 relay --config FILE
        every 10,000th site ASDU is confirmed to its site in its turn and never
        forwarded (a silent loss)
    python -m tests.lab.soak_plant fd-leak relay --config FILE
        one descriptor (/dev/null) opened and kept per site connection
    python -m tests.lab.soak_plant tracemalloc:DIR relay --config FILE
        no fault: an instrument. Python's allocations traced (3 frames), and every
        60 s a line in DIR/tracemalloc.log: traced bytes, RSS, allocated blocks, gc
        objects, and the 15 call sites whose allocations grew most since 120 s, to
        tell a leak (traced bytes grow) from the allocator's high-water mark (RSS
        grows, traced bytes do not)
    python -m tests.lab.soak_plant malloc-trim:DIR relay --config FILE
        no fault: an instrument. Every 60 s, glibc's malloc_trim(0) and a line in
        DIR/malloc-trim.log with the RSS before and after it: how much of the RSS is
        memory the allocator holds free
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

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


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _every_minute(directory: str, log_name: str, write: Callable[[float, TextIO], None]) -> None:
    """An instrument: `write(the relay's age in s, log)` every 60 s, from a thread of the
    relay's process, into DIR/log_name."""
    import threading
    import time

    os.makedirs(directory, exist_ok=True)
    out = open(os.path.join(directory, log_name), "a", buffering=1)  # noqa: SIM115

    def loop() -> None:
        t0 = time.monotonic()
        while True:
            time.sleep(60.0)
            write(time.monotonic() - t0, out)

    threading.Thread(target=loop, daemon=True).start()


def plant_tracemalloc(directory: str) -> None:
    import gc
    import tracemalloc

    tracemalloc.start(3)
    base: list[tracemalloc.Snapshot] = []  # the snapshot at 120 s, once taken

    def write(age: float, out: TextIO) -> None:
        traced, peak = tracemalloc.get_traced_memory()
        out.write(
            f"t={age:.0f}s traced={traced / 1e6:.3f}MB peak={peak / 1e6:.3f}MB rss={_rss_kib() / 1024:.1f}MB "
            f"blocks={sys.getallocatedblocks()} gc_objects={len(gc.get_objects())}\n"
        )
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        if not base:
            if age >= 120:
                base.append(snap)
            return
        for stat in snap.compare_to(base[0], "traceback")[:15]:
            where = " <- ".join(f"{fr.filename.rsplit('/', 2)[-1]}:{fr.lineno}" for fr in stat.traceback)
            grew = f"{stat.size_diff / 1e3:+.1f}kB {stat.count_diff:+d} blocks"
            out.write(f"  {grew}, now {stat.size / 1e3:.1f}kB: {where}\n")

    _every_minute(directory, "tracemalloc.log", write)


def plant_malloc_trim(directory: str) -> None:
    import ctypes

    trim = ctypes.CDLL("libc.so.6").malloc_trim

    def write(age: float, out: TextIO) -> None:
        before = _rss_kib()
        released = trim(0)
        out.write(f"t={age:.0f}s rss before={before} KiB after={_rss_kib()} KiB released={released}\n")

    _every_minute(directory, "malloc-trim.log", write)


def main(argv: list[str]) -> int:
    plant, rest = argv[0], argv[1:]
    if plant.startswith("drop:"):
        plant_drop(int(plant.split(":", 1)[1]))
    elif plant == "fd-leak":
        plant_fd_leak()
    elif plant.startswith("tracemalloc:"):
        plant_tracemalloc(plant.split(":", 1)[1])
    elif plant.startswith("malloc-trim:"):
        plant_malloc_trim(plant.split(":", 1)[1])
    else:
        raise SystemExit(f"unknown plant {plant!r}: drop:N, fd-leak, tracemalloc:DIR or malloc-trim:DIR")
    print(f"soak_plant: relay with planted fault {plant}", flush=True)
    from concentrator.cli import main as concentrator_main

    return concentrator_main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
