"""The relay's latency with the incident register off and on, in the same run.

    python -m bench run incidents_latency [--rounds 2] [--duration 10] [--out FILE]   # from the checkout's root

writes bench/results/DATE-incidents-latency.json unless --out says otherwise.

bench/shedding_latency.py's procedure unchanged (run_all.py's harness, 100 sites, steady
ASDUs and select/execute cycles, runs alternating without and with the section, so that
both see the same machine load); only the section differs: an `incidents:` section, so
that every site ASDU goes through the incident tap into the incident process, which
decodes it, and every link event through the link tap. "monitor=on" in its output means
the register is on. Results: docs/incidents.md.
"""

from __future__ import annotations

from pathlib import Path

from bench import shedding_latency


def with_register(workdir: Path):  # type: ignore[no-untyped-def]
    def relay_yaml(sites: int, site_port: int, uplink_port: int, metrics_port: int, uplink_kw: tuple[int, int]) -> str:
        text = shedding_latency.BASE_YAML(sites, site_port, uplink_port, metrics_port, uplink_kw)
        lines = ["incidents:", f"  database: {workdir / f'incidents-{site_port}.sqlite'}",
                 f"  spool: {workdir / f'spool-{site_port}'}",
                 f'  metrics_listen: "127.0.0.1:{shedding_latency.free_port()}"']  # fmt: skip
        return text + "\n".join(lines) + "\n"

    return relay_yaml


if __name__ == "__main__":
    shedding_latency.main(with_register, "incidents-latency")
