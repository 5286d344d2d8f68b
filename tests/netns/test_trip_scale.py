"""The trip path at 100 two-path sites (past the multicast routing table's 32
interfaces: netd copies with nftables `dup`, in the kernel).

One lab: BMI, concentrator (netd with 101 links, the real relay configured for the
100 sites), 100 site namespaces with one receiver socket each. Only the
concentrator's and the BMI's link managers run (sites need no return route for a
one-way trip), probing every 0.5 s: 202 probes per interval on a shared 2-core machine.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import pytest
import yaml

from netconfig.trip.render import NFT_TABLE
from netconfig.trip.tables import parse_nft
from tests.conftest import require_root, require_tool
from tests.lab.harness import CONC_SERVICE, Iec104Stream, Lab, TripTraffic, run, wait_for
from tests.netns.test_trip_path import assert_identical, path_status_in, trip_path_command, trip_state

pytestmark = pytest.mark.netns

GROUP, PORT = "239.192.10.1", 30104
N = 100


def copy_rules(lab: Lab) -> dict[int, Any]:
    """The (S,G) chain's copy rules by handle."""
    listed = run(["ip", "netns", "exec", lab.ns("conc"), "nft", "-j", "list", "table", "netdev", NFT_TABLE])
    return {r.handle: r for r in parse_nft(json.loads(listed.stdout)) if r.comment == "out"}


def test_trips_reach_100_two_path_sites_and_a_site_failover_repoints_only_its_copy() -> None:
    require_root()
    require_tool("nft", "nftables")
    with Lab(n_sites=N, hold_time=60.0, probe_interval=0.5, trip_groups=[(GROUP, PORT)], start_netd=False) as lab:
        for role in ("conc", "bmi"):
            lab._start_netd(role)
        for role in ("conc", "bmi"):
            lab.wait_netd_ready(role, timeout=60.0)
        wait_for(lambda: trip_state(lab).get("installed", {}).get(GROUP) is True, 30.0, "trip path installed")
        assert "engine" not in lab.netd_config("conc")["multicast"]  # auto: the default
        [status] = path_status_in(lab)
        assert status.ok and status.outbound == tuple(f"s{i}p" for i in range(1, N + 1))
        trips = TripTraffic(lab, GROUP, PORT)
        trips.start()

        # The real relay, configured for the 100 sites (not reachable: it keeps trying).
        conf = os.path.join(lab.workdir, "relay.yaml")
        with open(conf, "w") as f:
            yaml.safe_dump(Iec104Stream(lab).relay_config(), f)
        relay = lab.spawn("conc", "relay", [sys.executable, "-m", "concentrator", "relay", "--config", conf])
        wait_for(
            lambda: (
                bool(
                    run(
                        ["ip", "netns", "exec", lab.ns("conc"), "ss", "-Hltn", f"src {CONC_SERVICE} and sport = :2404"]
                    ).stdout.strip()
                )
                or lab.assert_running()
            ),
            30.0,
            "relay listening",
            lab._log_tail("relay"),
        )
        assert_identical(trips, trips.send(20))  # relay running
        relay._stopped = True  # type: ignore[attr-defined]   # killed on purpose
        relay.kill()
        relay.wait(5.0)
        assert_identical(trips, trips.send(20))  # relay killed
        doc = trip_path_command(lab, "--json")
        assert doc["ok"] and doc["paths"][0]["packets_forwarded"] == 40

        # Site 50 fails over: its copy, and only its, moves to its backup.
        before = copy_rules(lab)
        lab.link_down("site50", "primary")
        lab.wait_active("site50", "backup", roles=("conc",))
        wait_for(lambda: "s50b" in path_status_in(lab)[0].outbound, 10.0, "site50's copy on s50b")
        after = copy_rules(lab)
        assert set(after) == set(before)
        changed = {h for h in before if after[h].target != before[h].target}
        [moved] = changed
        assert (before[moved].target, after[moved].target) == ("s50p", "s50b")
        # The other 99 rules were not touched: their counters were not reset.
        assert all(after[h].packets == before[h].packets == 40 for h in before if h != moved)
        sent = trips.send(20)
        assert_identical(trips, sent)
        for site in lab.sites:
            ifaces = {r["iface"] for r in trips.received(site)[-20:]}
            assert ifaces == ({"p1"} if site.name == "site50" else {"p0"}), (site.name, ifaces)
        [path] = trip_path_command(lab, "--json")["paths"]
        assert path["ok"] and path["outbound"][49] == "s50b" and len(path["outbound"]) == N
