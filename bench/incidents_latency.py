"""The relay's latency with the incident register off and on, in the same run.

    python bench/incidents_latency.py [--rounds 2] [--duration 10] [--out bench/incidents-latency.json]

bench/shedding_latency.py's procedure unchanged (run_all.py's harness, 100 sites, steady
ASDUs and select/execute cycles, runs alternating without and with the section, so that
both see the same machine load); only the section differs: an `incidents:` section, so
that every site ASDU goes through the incident tap into the incident process, which
decodes it, and every link event through the link tap. "monitor=on" in its output means
the register is on. Results: docs/incidents.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import shedding_latency  # noqa: E402


def with_register(workdir: Path):  # type: ignore[no-untyped-def]
    def relay_yaml(sites: int, site_port: int, uplink_port: int, metrics_port: int, uplink_kw: tuple[int, int]) -> str:
        text = shedding_latency.BASE_YAML(sites, site_port, uplink_port, metrics_port, uplink_kw)
        lines = ["incidents:", f"  database: {workdir / f'incidents-{site_port}.sqlite'}",
                 f"  spool: {workdir / f'spool-{site_port}'}",
                 f'  metrics_listen: "127.0.0.1:{shedding_latency.free_port()}"']  # fmt: skip
        return text + "\n".join(lines) + "\n"

    return relay_yaml


if __name__ == "__main__":
    shedding_latency.with_monitor = with_register
    if "--out" not in sys.argv:
        sys.argv += ["--out", str(Path(__file__).with_name("incidents-latency.json"))]
    shedding_latency.main()
