"""Trip path latency: multicast trip datagrams versus plain unicast on the same path.

    sudo python -m bench run trip_latency [--pairs 3000] [--rate 500] [--out FILE]   # from the checkout's root

writes bench/results/DATE-trip-latency.json (DATE-trip-sites.json with --sites) unless --out says otherwise.

A namespace lab (tests.lab.harness: BMI, concentrator, one site; netd and its trip path
on the engine this kernel offers, in the concentrator). The BMI sends, alternately, a
trip datagram to the group (copied by the concentrator's kernel: nftables dup or the
multicast routing table's (S,G) entry) and a unicast datagram to
the site's service address (forwarded by the same kernel through its unicast route),
both from the BMI's service address out of the primary uplink, to a receiver in the
site namespace. Latency = the site's kernel receive timestamp (SO_TIMESTAMPNS) minus
the BMI's kernel transmit timestamp (SO_TIMESTAMPING, software, taken as the veth
sends): both kernel clocks (CLOCK_REALTIME is shared by the namespaces), no user
space in the measured interval.

Three relay conditions, with the relay as a process in the concentrator namespace:
  idle       relay running, no IEC 104 traffic
  saturated  relay fed by the load generator (bench.loadgen, 100 sites)
             faster than it can relay: it takes a full core (its CPU share is reported)
  stopped    relay terminated
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import statistics
import struct
import sys
import time
from typing import Any

import yaml

from bench.common import percentile, result_path
from bench.loadgen import cpu_seconds
from netconfig.trip.render import NFT_TABLE
from tests.lab.harness import BMI_SERVICE, Lab, TripTraffic, run, site_service, wait_for
from tests.lab.trip_peers import trip_payload

GROUP, PORT = "239.192.10.1", 30104
UNICAST_PORT = PORT + 1

SO_TIMESTAMPING = 37
SOF_TX_SOFTWARE = 1 << 1
SOF_SOFTWARE = 1 << 4
SOF_OPT_TSONLY = 1 << 11
SCM_TIMESTAMPING = SO_TIMESTAMPING


# ---------------------------------------------------------------------- sender (BMI namespace)


def _tx_socket(iface: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((BMI_SERVICE, 0))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 16)  # routed: TTL > 1
    mreqn = struct.pack(
        "=4s4si", socket.inet_aton("0.0.0.0"), socket.inet_aton(BMI_SERVICE), socket.if_nametoindex(iface)
    )
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, SOF_TX_SOFTWARE | SOF_SOFTWARE | SOF_OPT_TSONLY)
    return s


def _tx_stamp(s: socket.socket, timeout: float = 1.0) -> int | None:
    """The kernel's transmit timestamp of the last datagram, from the error queue."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _data, anc, _flags, _addr = s.recvmsg(64, 512, socket.MSG_ERRQUEUE)
        except BlockingIOError:
            select.select([], [], [s], 0.001)
            continue
        for level, typ, value in anc:
            if level == socket.SOL_SOCKET and typ == SCM_TIMESTAMPING:
                sec, nsec = struct.unpack("=qq", value[:16])
                return sec * 1_000_000_000 + nsec
    return None


def sender(args: argparse.Namespace) -> int:
    s = _tx_socket(args.iface)
    s.setblocking(False)
    unicast = args.unicast.split(",")  # one site after the other
    period = 1.0 / args.rate
    with open(args.out, "w") as out:
        next_at = time.monotonic()
        for i in range(args.pairs * 2):
            kind = "multicast" if i % 2 == 0 else "unicast"
            seq = args.first + i
            target = unicast[(i // 2) % len(unicast)]
            s.sendto(trip_payload(seq), (GROUP, PORT) if kind == "multicast" else (target, UNICAST_PORT))
            out.write(json.dumps({"seq": seq, "kind": kind, "to": target, "tx_ns": _tx_stamp(s)}) + "\n")
            next_at += period / 2
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    return 0


# ---------------------------------------------------------------------- the lab


def _jsonl(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def relay_busy(pid: int, window: float = 1.0) -> float:
    """The relay's CPU share (of one core) over the next `window` seconds."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(window)
    return (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


def busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def summary(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {
        "n": len(xs),
        "p50_us": round(percentile(xs, 50), 2),
        "p90_us": round(percentile(xs, 90), 2),
        "p99_us": round(percentile(xs, 99), 2),
        "max_us": round(xs[-1], 2),
        "mean_us": round(statistics.fmean(xs), 2),
    }


def measure(
    lab: Lab, trips: TripTraffic, label: str, pairs: int, rate: float, first: int, relay_pid: int | None
) -> dict[str, Any]:
    sent_file = os.path.join(lab.workdir, f"sent-{label}.jsonl")
    cpu0, t0 = (cpu_seconds(relay_pid), time.monotonic()) if relay_pid else (0.0, 0.0)
    busy0, total0 = busy_jiffies()
    run(
        [
            "ip",
            "netns",
            "exec",
            lab.ns("bmi"),
            sys.executable,
            "-m",
            "bench.trip_latency",
            "sender",
            "--iface",
            lab.uplink.primary.peer_if,
            "--unicast",
            site_service(1),
            "--pairs",
            str(pairs),
            "--rate",
            str(rate),
            "--first",
            str(first),
            "--out",
            sent_file,
        ]
    )
    relay_cpu = (cpu_seconds(relay_pid) - cpu0) / (time.monotonic() - t0) if relay_pid else None
    busy1, total1 = busy_jiffies()
    machine_busy = (busy1 - busy0) / max(1, total1 - total0)
    sent = {r["seq"]: r for r in _jsonl(sent_file)}
    want = set(sent)
    wait_for(
        lambda: want <= {r["seq"] for r in trips.received(lab.sites[0])},
        10.0,
        f"{label}: all received",
        lambda: f"{len(want - {r['seq'] for r in trips.received(lab.sites[0])})} missing",
    )
    got = {r["seq"]: r for r in trips.received(lab.sites[0]) if r["seq"] in want}
    lat: dict[str, list[float]] = {"multicast": [], "unicast": []}
    paired: list[float] = []
    for seq, s in sent.items():
        if s["tx_ns"] is None or got[seq]["t_ns"] is None:
            continue
        us = (got[seq]["t_ns"] - s["tx_ns"]) / 1000
        lat[s["kind"]].append(us)
        if s["kind"] == "multicast" and seq + 1 in sent and sent[seq + 1]["tx_ns"] is not None:
            paired.append(us - (got[seq + 1]["t_ns"] - sent[seq + 1]["tx_ns"]) / 1000)

    result: dict[str, Any] = {
        "multicast": summary(lat["multicast"]),
        "unicast": summary(lat["unicast"]),
        "added_p50_us": round(percentile(lat["multicast"], 50) - percentile(lat["unicast"], 50), 2),
        "added_paired_p50_us": round(percentile(paired, 50), 2),
        "added_p99_us": round(summary(lat["multicast"])["p99_us"] - summary(lat["unicast"])["p99_us"], 2),
        "lost": len(want - set(got)),
        "relay_cpu_share": None if relay_cpu is None else round(relay_cpu, 2),
        "machine_busy_share": round(machine_busy, 2),
    }
    print(
        f"{label:10s} multicast p50 {result['multicast']['p50_us']:7.1f} us p99 {result['multicast']['p99_us']:7.1f}"
        f" | unicast p50 {result['unicast']['p50_us']:7.1f} us p99 {result['unicast']['p99_us']:7.1f}"
        f" | added p50 {result['added_p50_us']:+6.1f} us (paired {result['added_paired_p50_us']:+6.1f})"
        f" | relay CPU {result['relay_cpu_share']} machine busy {result['machine_busy_share']}",
        flush=True,
    )
    return result


def bench(args: argparse.Namespace) -> dict[str, Any]:
    from bench.run_all import relay_yaml

    results: dict[str, Any] = {"pairs": args.pairs, "rate_pairs_per_s": args.rate, "runs": []}
    with Lab(n_sites=1, hold_time=60.0, trip_groups=[(GROUP, PORT)]) as lab:
        # Unicast baseline: the BMI reaches the site's service address through the
        # concentrator's kernel, over the same primary uplink and site path.
        lab.ip(
            "bmi", "route", "add", "10.1.0.0/16", "via", lab.uplink.primary.conc_ip, "dev", lab.uplink.primary.peer_if
        )
        run(["ip", "netns", "exec", lab.ns("conc"), "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        trips = TripTraffic(lab, GROUP, PORT)
        trips.start(unicast_port=UNICAST_PORT)
        wait_for(
            lambda: lab.netd_state().get("trip", {}).get("installed", {}).get(GROUP) is True,
            10.0,
            "trip path installed",
        )

        # The relay with 100 sites and a wide window, on the concentrator's loopback.
        sites, site_port, bmi_port = 100, 24000, 24100
        relay_conf = os.path.join(lab.workdir, "bench-relay.yaml")
        with open(relay_conf, "w") as f:
            f.write(relay_yaml(sites, site_port, bmi_port, bmi_port + 1, (600, 400)))
        relay = lab.spawn(
            "conc",
            "bench-relay",
            [sys.executable, "-m", "concentrator", "--log-level", "WARNING", "relay", "--config", relay_conf],
        )
        # The relay runs under `ip netns exec`, which execs: same pid. Let it settle
        # (imports, first connection attempts) before calling it idle.
        time.sleep(2.0)
        first = 0
        for rep in range(args.repeats):
            results["runs"].append(
                {
                    "repeat": rep,
                    "condition": "idle",
                    **measure(lab, trips, f"idle-{rep}", args.pairs, args.rate, first, relay.pid),
                }
            )
            first += 2 * args.pairs
            loadgen = lab.spawn(
                "conc",
                f"bench-loadgen-{rep}",
                [
                    sys.executable,
                    "-m",
                    "bench.loadgen",
                    "steady",
                    "--sites",
                    str(sites),
                    "--site-port",
                    str(site_port),
                    "--bmi-port",
                    str(bmi_port),
                    "--bmi-k",
                    "600",
                    "--bmi-w",
                    "400",
                    "--duration",
                    "600",
                    "--warmup",
                    "1",
                    *args.load.split(),
                ],
            )
            # The relay reconnects its sites with a backoff (up to 10 s): wait until it
            # runs flat out (its CPU share over 1 s), not for a fixed time.
            ramp = wait_for(lambda: relay_busy(relay.pid) >= 0.6, 30.0, "relay saturated", interval=0.0)
            print(f"relay saturated after {ramp:.1f} s", flush=True)
            results["runs"].append(
                {
                    "repeat": rep,
                    "condition": "saturated",
                    **measure(lab, trips, f"saturated-{rep}", args.pairs, args.rate, first, relay.pid),
                }
            )
            first += 2 * args.pairs
            lab.stop(loadgen)
        lab.stop(relay)
        for rep in range(args.repeats):
            results["runs"].append(
                {
                    "repeat": rep,
                    "condition": "stopped",
                    **measure(lab, trips, f"stopped-{rep}", args.pairs, args.rate, first, None),
                }
            )
            first += 2 * args.pairs
        engine = lab.netd_state()["trip"]["engine"]["engine"]
        results["engine"] = engine
        nft = ["nft", "list", "table", "netdev", NFT_TABLE]
        rules = ["ip", "-s", "mroute", "show"] if engine == "smcroute" else nft
        results["engine_rules"] = run(["ip", "netns", "exec", lab.ns("conc"), *rules]).stdout
        results["kernel"] = os.uname().release
    return results


# ---------------------------------------------------------------------- sites: 1, 15, 100

# (sites, engine): both engines where the routing table fits (1 and 15 sites), nftables
# past it. A size whose engine this kernel lacks (netconfig.trip.capability) is recorded as
# skipped, with the probe's reason.
SCALE_PLAN = ((1, "smcroute"), (1, "nftables"), (15, "smcroute"), (15, "nftables"), (100, "nftables"))


def measure_sites(lab: Lab, trips: TripTraffic, label: str, pairs: int, rate: float, first: int) -> dict[str, Any]:
    """One multicast datagram reaches every site; the unicast one of each pair goes to
    one site after the other. Multicast latency is taken over every (datagram, site)."""
    sent_file = os.path.join(lab.workdir, f"sent-{label}.jsonl")
    busy0, total0 = busy_jiffies()
    targets = ",".join(site_service(i) for i in range(1, len(lab.sites) + 1))
    run(
        [
            "ip",
            "netns",
            "exec",
            lab.ns("bmi"),
            sys.executable,
            "-m",
            "bench.trip_latency",
            "sender",
            "--iface",
            lab.uplink.primary.peer_if,
            "--unicast",
            targets,
            "--pairs",
            str(pairs),
            "--rate",
            str(rate),
            "--first",
            str(first),
            "--out",
            sent_file,
        ]
    )
    busy1, total1 = busy_jiffies()
    sent = {r["seq"]: r for r in _jsonl(sent_file)}
    by_site = {f"10.1.{i}.1": site for i, site in enumerate(lab.sites, start=1)}
    got: dict[str, dict[int, dict[str, Any]]] = {}
    for site in lab.sites:
        want = {q for q, r in sent.items() if r["kind"] == "multicast" or by_site[r["to"]] is site}
        wait_for(
            lambda want=want, site=site: want <= {r["seq"] for r in trips.received(site)},
            30.0,
            f"{label}: {site.name} received",
        )
        got[site.name] = {r["seq"]: r for r in trips.received(site) if r["seq"] in want}
    multicast, unicast, paired, first_site, last_site = [], [], [], [], []
    for seq, s in sent.items():
        if s["tx_ns"] is None:
            continue
        if s["kind"] == "multicast":
            for site in lab.sites:
                us = (got[site.name][seq]["t_ns"] - s["tx_ns"]) / 1000
                multicast.append(us)
                if site is lab.sites[0]:
                    first_site.append(us)
                if site is lab.sites[-1]:
                    last_site.append(us)
            u = sent.get(seq + 1)
            if u is not None and u["tx_ns"] is not None:
                site = by_site[u["to"]]
                uc = (got[site.name][seq + 1]["t_ns"] - u["tx_ns"]) / 1000
                unicast.append(uc)
                paired.append((got[site.name][seq]["t_ns"] - s["tx_ns"]) / 1000 - uc)
    mc, uc = summary(multicast), summary(unicast)
    result = {
        "multicast_all_sites": mc,
        "multicast_first_site": summary(first_site),
        "multicast_last_site": summary(last_site),
        "unicast": uc,
        "added_p50_us": round(mc["p50_us"] - uc["p50_us"], 2),
        "added_p99_us": round(mc["p99_us"] - uc["p99_us"], 2),
        "added_paired_p50_us": round(percentile(paired, 50), 2),
        "machine_busy_share": round((busy1 - busy0) / max(1, total1 - total0), 2),
    }
    first, last = result["multicast_first_site"], result["multicast_last_site"]
    print(
        f"{label:22s} multicast p50 {mc['p50_us']:7.1f} p99 {mc['p99_us']:7.1f} (site 1 p50 "
        f"{first['p50_us']:.1f}, last site p50 {last['p50_us']:.1f})"
        f" | unicast p50 {uc['p50_us']:6.1f} p99 {uc['p99_us']:6.1f} | added p50 {result['added_p50_us']:+.1f}"
        f" p99 {result['added_p99_us']:+.1f} paired {result['added_paired_p50_us']:+.1f}"
        f" | machine busy {result['machine_busy_share']}",
        flush=True,
    )
    return result


def bench_sites(args: argparse.Namespace) -> dict[str, Any]:
    from netconfig.trip.capability import choose, probe
    from tests.lab.harness import Iec104Stream

    cap = probe()
    results: dict[str, Any] = {
        "pairs": args.pairs,
        "rate_pairs_per_s": args.rate,
        "kernel_capability": cap.to_json(),
        "runs": [],
        "skipped": [],
    }
    for n, engine in SCALE_PLAN:
        refused = choose(engine, cap, 2 + 2 * n)
        if refused.engine is None:
            print(f"{n} sites, engine {engine}: skipped: {refused.reason}", flush=True)
            results["skipped"].append({"sites": n, "engine": engine, "reason": refused.reason})
            continue
        with Lab(
            n_sites=n,
            hold_time=60.0,
            probe_interval=0.5,
            trip_groups=[(GROUP, PORT)],
            trip_engine=engine,
            start_netd=False,
        ) as lab:
            for role in ("conc", "bmi"):  # sites need no return route for one-way datagrams
                lab._start_netd(role)
            for role in ("conc", "bmi"):
                lab.wait_netd_ready(role, timeout=60.0)
            wait_for(
                lambda: lab.netd_state().get("trip", {}).get("installed", {}).get(GROUP) is True,
                30.0,
                "trip path installed",
            )
            lab.ip(
                "bmi",
                "route",
                "add",
                "10.1.0.0/16",
                "via",
                lab.uplink.primary.conc_ip,
                "dev",
                lab.uplink.primary.peer_if,
            )
            run(["ip", "netns", "exec", lab.ns("conc"), "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
            trips = TripTraffic(lab, GROUP, PORT)
            trips.start(unicast_port=UNICAST_PORT)
            conf = os.path.join(lab.workdir, "relay.yaml")
            with open(conf, "w") as f:
                yaml.safe_dump(Iec104Stream(lab).relay_config(), f)
            lab.spawn(
                "conc",
                "relay",
                [sys.executable, "-m", "concentrator", "--log-level", "WARNING", "relay", "--config", conf],
            )
            time.sleep(2.0)  # relay idle: started, its sites unreachable
            first = 0
            for rep in range(args.repeats):
                label = f"{n}-sites-{engine}-{rep}"
                results["runs"].append(
                    {
                        "sites": n,
                        "engine": lab.netd_state()["trip"]["engine"]["engine"],
                        "repeat": rep,
                        "relay": "idle",
                        **measure_sites(lab, trips, label, args.pairs, args.rate, first),
                    }
                )
                first += 2 * args.pairs
    results["kernel"] = os.uname().release
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd")
    s = sub.add_parser("sender", help="(internal) run in the BMI namespace")
    s.add_argument("--iface", required=True)
    s.add_argument("--unicast", required=True, help="site addresses, comma-separated: one after the other")
    s.add_argument("--pairs", type=int, required=True)
    s.add_argument("--rate", type=float, required=True)
    s.add_argument("--first", type=int, default=0)
    s.add_argument("--out", required=True)
    ap.add_argument("--pairs", type=int, default=3000)
    ap.add_argument("--rate", type=float, default=500.0, help="pairs per second")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--load",
        default="--rate 2000 --site-k 100 --site-w 80 --commands 0",
        help="load generator options (100 sites); the default offers more than the relay carries",
    )
    ap.add_argument(
        "--sites",
        action="store_true",
        help="instead: 1, 15 and 100 two-path sites, both engines where the kernel has them, relay idle "
        "(bench/results/DATE-trip-sites.json)",
    )
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    if args.cmd == "sender":
        return sender(args)
    from tests.lab.harness import install_signal_cleanup

    install_signal_cleanup()
    args.out = args.out or result_path("trip-sites" if args.sites else "trip-latency")
    results = bench_sites(args) if args.sites else bench(args)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
