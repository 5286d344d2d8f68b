"""The relay's load benchmarks (latency, ping-pong, storm, stream, scale) against the direct
and haproxy paths; writes bench/RESULTS.md and bench/results/DATE-results.json.

    python -m bench run run_all            # from the checkout's root: about 5 minutes
    python -m bench run run_all --quick    # shorter runs, for a look (2 minutes)

(`python -m bench list` lists every benchmark; this is one of them.)

Options: `--only latency|nominal|10x,pingpong,storm,stream,scale` and `--modes
direct,haproxy,relay` pick runs; `--relay-tree DIR` runs the relay from another source
tree; `--before-tree DIR` adds the path "before", the relay from that tree, measured
right after haproxy and before "relay" in every scenario (before/after in one run, one
table); `--render-only results/DATE-results.json` writes RESULTS.md again (bench/NOTES.md, the
hand-written analysis, is appended to it); `BENCH_PROFILE=DIR` records a py-spy profile of
the relay in each run (summarise with `python -m bench.profile_summary DIR/FILE.txt`).
Needs haproxy (Debian package); py-spy (pip) only for profiles.

Each measurement runs three processes at most: the load generator
(`bench.loadgen`: simulated sites and BMI, asyncio, one process), and the
path under test, which is one of

- direct:  the BMI connects to every site itself (one connection per site);
- haproxy: the same, through haproxy in TCP mode (one frontend per site, nbthread 1);
- relay:   the BMI holds one connection to the relay (`python -m concentrator relay`),
           which holds one per site;
- trio:    ping-pong only: the bare trio forwarder of bench/floor.py, one per site like
           haproxy, the floor under any relay written on trio, measured beside it.

The ping-pong scenario also runs bench/pingpong.py's fast client (a blocking BMI and a
selector loop of stations, not the asyncio generator) over haproxy, trio, before and
relay, rounds alternating: the figures issue 28's latency and CPU goals are set on.

The relay and haproxy run as separate processes so that their CPU time and resident
memory can be read from /proc. Everything binds to 127.0.0.1. Every process started
here is stopped at the end of its run, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.common import percentile, result_path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
RUN_TIMEOUT = 180  # seconds, any single load generator run


# ----------------------------------------------------------------------------- processes


def ports_free(first: int, count: int) -> bool:
    for port in range(first, first + count):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, port))
            except OSError:
                return False
    return True


def port_block(count: int, start: int, avoid: range | None = None) -> int:
    """The first port of `count` free consecutive ports at or after `start` (below the
    ephemeral range)."""
    first = start
    while first + count < 32768:
        if (avoid is None or first >= avoid.stop or first + count <= avoid.start) and ports_free(first, count):
            return first
        first += count
    raise RuntimeError(f"no {count} free consecutive ports")


def stop(process: subprocess.Popen[bytes] | None) -> None:
    """Stop a process we started (its own process group), politely then not."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def start_loadgen(stack: contextlib.ExitStack, argv: list[str], log: Path, tag: str) -> subprocess.Popen[bytes]:
    """Start the load generator (stopped when `stack` closes) and wait until it listens."""
    loadgen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=open(log, "wb"), cwd=ROOT, start_new_session=True)
    stack.callback(stop, loadgen)
    deadline = time.monotonic() + 30
    while b"listening" not in log.read_bytes():
        if loadgen.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{tag}: load generator did not start: {log.read_text()[-2000:]}")
        time.sleep(0.02)
    return loadgen


@contextlib.contextmanager
def started(argv: list[str], log: Path, tree: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A process of ours in its own process group, stopped on the way out. With `tree`,
    Python code comes from that source tree instead of this one."""
    env = None
    if tree is not None:
        env = {**os.environ, "PYTHONPATH": str(tree)}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, cwd=tree or ROOT, env=env, start_new_session=True
        )
    try:
        yield process
    finally:
        stop(process)


def relay_yaml(sites: int, site_port: int, uplink_port: int, metrics_port: int, uplink_kw: tuple[int, int]) -> str:
    k, w = uplink_kw
    lines = [
        "uplink:",
        f'  listen: "{HOST}:{uplink_port}"',
        f'  allowed_peers: ["{HOST}"]',
        f"  k: {k}",
        f"  w: {w}",
        "sites:",
    ]
    for i in range(sites):
        lines += [
            f"  - name: site-{i + 1:04d}",
            f"    common_addresses: [{101 + i}]",
            f'    endpoints: ["{HOST}:{site_port + i}"]',
            "    interruptibility: instantaneous",
        ]
    lines += ["metrics:", f'  listen: "{HOST}:{metrics_port}"', ""]
    return "\n".join(lines)


def haproxy_cfg(sites: int, site_port: int, front_port: int) -> str:
    lines = [
        "global",
        "  nbthread 1",
        "  maxconn 4000",
        "defaults",
        "  mode tcp",
        "  timeout connect 5s",
        "  timeout client 1h",
        "  timeout server 1h",
    ]
    for i in range(sites):
        lines += [f"listen site{i}", f"  bind {HOST}:{front_port + i}", f"  server s {HOST}:{site_port + i}"]
    return "\n".join(lines) + "\n"


class Bench:
    def __init__(
        self, workdir: Path, quick: bool, relay_tree: Path | None = None, before_tree: Path | None = None
    ) -> None:
        self.workdir = workdir
        self.quick = quick
        self.trees = {"relay": relay_tree, "before": before_tree}
        self.runs = 0
        self.commands: list[str] = []

    def run(self, mode: str, scenario: str, sites: int, *, uplink_kw: tuple[int, int] = (12, 8),
            loadgen_args: list[str]) -> dict[str, object]:  # fmt: skip
        """One run, tried again once if it fails (the machine is shared: another job may
        take a port or connect to one of ours); a second failure is recorded in the result
        and the suite goes on."""
        failures: list[str] = []
        for _ in range(2):
            try:
                result = self._run(mode, scenario, sites, uplink_kw=uplink_kw, loadgen_args=loadgen_args)
            except Exception as exc:  # noqa: BLE001 - recorded, reported, and the exit status says so
                print(f"    FAILED: {str(exc)[-600:]}", flush=True)
                failures.append(str(exc)[-1500:])
                continue
            result["earlier_failures"] = failures
            return result
        return {"mode": mode, "scenario": scenario, "sites": sites, "errors": failures[-1:], "failed": True,
                "loadgen_argv": "", "path_argv": ""}  # fmt: skip

    def fast_pingpong(self, mode: str, exchanges: int) -> dict[str, object]:
        """One run of bench/pingpong.py's fast client through `mode` (haproxy, trio, before,
        relay); a failure is recorded like the generator's."""
        from bench import pingpong

        self.runs += 1
        print(
            f"[{time.strftime('%H:%M:%S')}] {self.runs:02d}-{mode}-fastpingpong-12: {exchanges} exchanges", flush=True
        )
        try:
            figures = pingpong.measure(mode, exchanges, self.workdir, self.trees.get(mode))
        except Exception as exc:  # noqa: BLE001 - recorded, reported
            print(f"    FAILED: {str(exc)[-600:]}", flush=True)
            return {"mode": mode, "errors": [str(exc)[-1500:]], "failed": True, "loadgen_argv": "", "path_argv": ""}
        return {**figures, "mode": mode, "exchanges": exchanges, "loadgen_argv": "", "path_argv": "",
                "load_average": os.getloadavg()[0]}  # fmt: skip

    def _run(self, mode: str, scenario: str, sites: int, *, uplink_kw: tuple[int, int],
             loadgen_args: list[str]) -> dict[str, object]:  # fmt: skip
        """One load generator run against one path; returns its JSON plus what we add."""
        self.runs += 1
        tag = f"{self.runs:02d}-{mode}-{scenario}-{sites}"
        site_port = port_block(sites, 24000)
        site_range = range(site_port, site_port + sites)
        extra = port_block(max(sites, 2), site_port + sites, site_range)
        argv = [sys.executable, "-m", "bench.loadgen", scenario, "--sites", str(sites),
                "--site-port", str(site_port)]  # fmt: skip
        path_process: subprocess.Popen[bytes] | None = None
        path_argv: list[str] = []
        if mode == "direct":
            argv += ["--bmi-port", str(site_port), "--per-site-bmi"]
        elif mode == "haproxy":
            cfg = self.workdir / f"{tag}.haproxy.cfg"
            cfg.write_text(haproxy_cfg(sites, site_port, extra))
            path_argv = ["haproxy", "-db", "-f", str(cfg)]
            argv += ["--bmi-port", str(extra), "--per-site-bmi"]
        elif mode == "trio":
            path_argv = [sys.executable, "-m", "bench.floor", "--sites", str(extra), str(site_port), str(sites)]
            argv += ["--bmi-port", str(extra), "--per-site-bmi"]
        elif mode in ("relay", "before"):
            cfg = self.workdir / f"{tag}.relay.yaml"
            cfg.write_text(relay_yaml(sites, site_port, extra, extra + 1, uplink_kw))
            path_argv = [sys.executable, "-m", "concentrator", "--log-level", "WARNING", "relay", "--config", str(cfg)]
            argv += ["--bmi-port", str(extra), "--bmi-k", str(uplink_kw[0]), "--bmi-w", str(uplink_kw[1])]
        else:
            raise ValueError(mode)
        if path_argv:
            argv += ["--watch-pid-file", str(self.workdir / f"{tag}.pid")]
        argv += loadgen_args
        print(f"[{time.strftime('%H:%M:%S')}] {tag}: {' '.join(argv[2:])}", flush=True)
        loadgen_log = self.workdir / f"{tag}.loadgen.log"
        with contextlib.ExitStack() as stack:
            loadgen = start_loadgen(stack, argv, loadgen_log, tag)
            if path_argv:
                tree = self.trees.get(mode)
                path_process = stack.enter_context(started(path_argv, self.workdir / f"{tag}.path.log", tree))
                # The generator reads the path's CPU and memory from /proc at the start
                # and end of its measurement window; it is already running, so the pid
                # goes by file (written whole, then renamed).
                pid_file = self.workdir / f"{tag}.pid"
                pid_file.with_suffix(".tmp").write_text(str(path_process.pid))
                pid_file.with_suffix(".tmp").rename(pid_file)
                profile_dir = os.environ.get("BENCH_PROFILE")
                if profile_dir and mode in ("relay", "before"):
                    # py-spy on the relay (raw collapsed stacks); SIGINT makes it write.
                    spy_argv = ["py-spy", "record", "--pid", str(path_process.pid), "-r", "250", "-f", "raw", "-o",
                                f"{profile_dir}/{tag}.txt"]  # fmt: skip
                    spy = subprocess.Popen(
                        spy_argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
                    )

                    def stop_spy(spy: subprocess.Popen[bytes] = spy) -> None:
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(spy.pid, signal.SIGINT)
                        try:
                            spy.wait(10)
                        except subprocess.TimeoutExpired:
                            stop(spy)

                    stack.callback(stop_spy)
            try:
                out, _ = loadgen.communicate(timeout=RUN_TIMEOUT)
            except subprocess.TimeoutExpired as exc:
                raise RuntimeError(f"{tag}: load generator still running after {RUN_TIMEOUT} s") from exc
            if path_process is not None and path_process.poll() is not None:
                raise RuntimeError(
                    f"{tag}: {mode} exited early: {(self.workdir / f'{tag}.path.log').read_text()[-2000:]}"
                )
        try:
            result: dict[str, object] = json.loads(out)
        except json.JSONDecodeError as exc:
            raise RuntimeError(f"{tag}: no result: {loadgen_log.read_text()[-3000:]}") from exc
        result["mode"] = mode
        result["scenario"] = scenario
        result["sites"] = sites
        result["loadgen_argv"] = " ".join(["python"] + argv[1:])
        result["path_argv"] = " ".join(path_argv)
        if result.get("errors"):
            print(f"    errors: {result['errors']}", flush=True)
        return result


# ----------------------------------------------------------------------------- scenarios

MODES = ("direct", "haproxy", "relay")


WIDE_WINDOW = (600, 400)  # uplink k, w for the storm row that shows the relay's own limit


def scenarios(bench: Bench, only: set[str], modes: tuple[str, ...]) -> dict[str, dict[str, dict]]:  # type: ignore[type-arg]
    q = bench.quick
    steady_s, warmup_s = ("6", "1") if q else ("20", "3")
    results: dict[str, dict[str, dict]] = {"latency": {}, "pingpong": {}, "fastpingpong": {}, "storm": {}, "scale": {}}  # type: ignore[type-arg]
    # Latency at nominal load (100 sites x 10 ASDU/s) and at 10x (100 sites x 100 ASDU/s),
    # with select/execute cycles from the BMI running at the same time.
    for load, rate, cycles in (("nominal", "10", "10"), ("10x", "100", "100")):
        if not only & {"latency", load}:
            continue
        args = ["--rate", rate, "--commands", cycles, "--duration", steady_s, "--warmup", warmup_s]
        for mode in modes:
            results["latency"][f"{load}/{mode}"] = bench.run(mode, "steady", 100, loadgen_args=args)
        if load == "10x" and "relay" in modes:
            k, w = WIDE_WINDOW
            results["latency"][f"{load}/relay k={k} w={w}"] = bench.run(
                "relay", "steady", 100, uplink_kw=WIDE_WINDOW, loadgen_args=args
            )
    # Ping-pong, 12 sites: one ASDU in flight per site, up and the BMI's command back down.
    # Rounds alternate the paths, so that a busy moment of the shared machine hits all.
    if "pingpong" in only:
        args = ["--duration", "5" if q else "10", "--warmup", "1"]
        # The bare trio forwarder beside the relays: the floor, measured every time.
        floor_modes = tuple(m for m in modes if m not in ("before", "relay")) + ("trio",)
        pingpong_modes = floor_modes + tuple(m for m in modes if m in ("before", "relay"))
        for n in range(1, 2 if q else 4):
            for mode in pingpong_modes:
                results["pingpong"][f"{mode} #{n}"] = bench.run(mode, "pingpong", 12, loadgen_args=args)
        for n in range(1, 2 if q else 4):
            for mode in pingpong_modes:
                if mode != "direct":
                    results["fastpingpong"][f"{mode} #{n}"] = bench.fast_pingpong(mode, 2000 if q else 5000)
    # Interrogation storm: 1,000 sites x 100 objects at once.
    storm_sites = 200 if q else 1000
    storm_args = ["--objects", "100", "--repeats", "1" if q else "3"]
    if "storm" in only:
        for mode in modes:
            results["storm"][mode] = bench.run(mode, "storm", storm_sites, loadgen_args=storm_args)
        if "relay" in modes:
            k, w = WIDE_WINDOW
            results["storm"][f"relay k={k} w={w}"] = bench.run(
                "relay", "storm", storm_sites, uplink_kw=WIDE_WINDOW, loadgen_args=storm_args
            )
    # Streaming: 12 sites each sending as fast as k 12 / w 8 allow (the storm's shape with
    # few sites and many objects: what one uplink window turns over).
    if "stream" in only:
        stream_args = ["--objects", "1000" if q else "5000", "--repeats", "1" if q else "3"]
        for mode in modes:
            results["storm"][f"{mode}, 12 sites streaming"] = bench.run(mode, "storm", 12, loadgen_args=stream_args)
    # Scale: resident memory and CPU per 1,000 ASDU/s with 10, 100, 1,000 sites at 10 ASDU/s each.
    if "scale" in only:
        args = ["--rate", "10", "--commands", "0", "--duration", "6" if q else "15", "--warmup", warmup_s]
        for sites, window in ((10, (12, 8)), (100, (12, 8)), (1000, (12, 8)), (1000, WIDE_WINDOW)):
            label = f"{sites}" + ("" if window == (12, 8) else f" k={window[0]} w={window[1]}")
            results["scale"][label] = bench.run("relay", "steady", sites, uplink_kw=window, loadgen_args=args)
        if "before" in modes:
            results["scale"]["1000 (before)"] = bench.run("before", "steady", 1000, loadgen_args=args)
    return results


# ----------------------------------------------------------------------------- report


def machine() -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    haproxy = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    import trio

    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "trio": trio.__version__,
        "haproxy": haproxy,
    }


def _watched(result: dict, key: str = "watched") -> dict:  # type: ignore[type-arg]
    watched = result.get(key) or {}
    return next(iter(watched.values()), {})


def others(result: dict) -> str:  # type: ignore[type-arg]
    """Cores busy with processes other than the generator and the path under test."""
    busy = result.get("machine_busy_cores")
    if busy is None:
        return "-"
    value = busy - result["loadgen_cpu_s_per_s"] - _watched(result).get("cpu_s_per_s", 0.0)
    return f"{max(0.0, value):.1f}"


def fmt(value: object, digits: int = 0) -> str:
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}"
    return "-"


def render(results: dict, meta: dict) -> str:  # type: ignore[type-arg]
    lat, storm, scale = results["latency"], results["storm"], results["scale"]
    out = [
        "# Benchmark results",
        "",
        f"Recorded {meta['date']} by `{meta['command']}` ({meta['elapsed_s']:.0f} s)"
        + (
            f"; load average (1 min) {meta['load_average'][0]:.2f} at the start, {meta['load_average'][1]:.2f} at"
            " the end."
            if "load_average" in meta
            else "."
        ),  # fmt: skip
        "",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in meta["machine"].items()) + ".",
        "",
        "Three processes share the two cores: the load generator (`bench.loadgen`,",
        "asyncio, simulated sites and BMI in one process), the path under test (the relay or",
        "haproxy; nothing for direct) and the kernel's loopback. The generator's own cost is in",
        "every figure, baselines included, which is why the baselines are measured in the same run",
        "with the same generator: *added* latency is the path's figure minus direct's.",
        "",
        "## Latency per direction, 100 sites",
        "",
        "Up: site to BMI, every ASDU time-stamped by the sending site and timed at the BMI.",
        "Down: select and execute commands from the BMI, timed at the site. Command round",
        "trips: select to its activation confirmation, execute to its activation termination.",
        "µs; added = path minus direct at the same percentile.",
        "",
        "| load | path | up p50 | up p99 | up max | added up p50 | added up p99 | down p50 | down p99 | down max"
        " | select RTT p50 / p99 | execute RTT p50 / p99 | path CPU | generator CPU | others (cores) | loss |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for load, label in (("nominal", "nominal, 1,000 ASDU/s"), ("10x", "10x, 10,000 ASDU/s")):
        direct = lat.get(f"{load}/direct")
        for key, r in lat.items():
            if not key.startswith(f"{load}/"):
                continue
            mode = key.split("/", 1)[1]
            if r.get("failed"):
                out.append(f"| {label} | {mode} | failed: {r['errors'][0][-300:]!r} |")
                continue
            up, down = r["up"], r["down"]
            ok = direct and not direct.get("failed") and mode != "direct"
            added50 = up["p50"] - direct["up"]["p50"] if ok else None
            added99 = up["p99"] - direct["up"]["p99"] if ok else None
            w = _watched(r)
            cpu = f"{w['cpu_s_per_s'] * 100:.0f} %" if w else "-"
            loss = f"{r['gaps']} lost, {r['duplicates']} dup" + (" **errors**" if r.get("errors") else "")
            out.append(
                f"| {label} | {mode} | {fmt(up['p50'])} | {fmt(up['p99'])} | {fmt(up['max'])} | {fmt(added50)} | "
                f"{fmt(added99)} | {fmt(down.get('p50'))} | {fmt(down.get('p99'))} | {fmt(down.get('max'))} | "
                f"{fmt(r['select_rtt'].get('p50'))} / {fmt(r['select_rtt'].get('p99'))} | "
                f"{fmt(r['execute_term_rtt'].get('p50'))} / {fmt(r['execute_term_rtt'].get('p99'))} | {cpu} | "
                f"{r['loadgen_cpu_s_per_s'] * 100:.0f} % | {others(r)} | {loss} |"
            )
    out += _pingpong(results.get("pingpong", {}))
    out += _fast_pingpong(results.get("fastpingpong", {}))
    out += [
        "",
        "## Interrogation storm",
        "",
        "The BMI sends one interrogation to CA 65535 (through the relay: one ASDU fanned out to",
        "every site; direct and haproxy: one per connection); every site confirms it, sends",
        "100 objects as 100 ASDUs and terminates it. Time until the BMI has all of it; rate",
        "over the whole storm and over its middle 80 % (sustained). Median run of those shown.",
        "Windows: k 12, w 8 everywhere (IEC defaults), except the row that says otherwise, where",
        "the relay's uplink (and the generator's BMI) use that k and w.",
        "",
        "| path | sites | ASDUs | time to all (s) | ASDU/s overall | ASDU/s sustained | path CPU | path CPU s per"
        " 1,000 ASDU | path RSS after | generator CPU | others (cores) | runs | bytes, loss, order per site |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for mode, r in storm.items():
        if r.get("failed"):
            out.append(f"| {mode} | failed: {r['errors'][0][-300:]!r} |")
            continue
        runs = sorted(r["runs"], key=lambda x: x["total_s"])
        m = runs[len(runs) // 2]
        w = _watched(m)
        cpu = f"{w['cpu_s_per_s'] * 100:.0f} %" if w else "-"
        rss = f"{w['rss_mb']:.0f} MB" if w else "-"
        out.append(
            f"| {mode} | {r['sites']:,} | {m['asdus']:,} | {m['total_s']:.2f} | {fmt(m['asdus_per_s'])} | "
            f"{fmt(m['sustained_asdus_per_s'])} | {cpu} | {w.get('cpu_s_per_1000_asdu', float('nan')):.3f} | {rss} | "
            f"{m['loadgen_cpu_s_per_s'] * 100:.0f} % | {others(m)} | "
            + ", ".join(f"{x['total_s']:.2f} s" for x in r["runs"])
            + f" | {_storm_check(r['runs'])} |"
        )
    out += [
        "",
        "## Scale (relay, 10 ASDU/s per site)",
        "",
        'RSS and CPU are the relay process\'s; "+ exporter" adds its metrics exporter (a child process).',
        "",
        "| sites | ASDU/s | relay RSS idle (MB) | relay RSS under load (MB) | + exporter (MB) | relay peak RSS (MB) |"
        " relay CPU | CPU s per 1,000 ASDU | up p50 / p99 (µs) | generator CPU | others (cores) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for sites, r in scale.items():
        if r.get("failed"):
            out.append(f"| {sites} | failed: {r['errors'][0][-300:]!r} |")
            continue
        w = _watched(r)
        ready = _watched(r, "ready_watched")
        out.append(
            f"| {sites} | {fmt(r['up_asdus_per_s'])} | {ready.get('rss_bytes', 0) / 2**20:.0f} | "
            f"{w.get('rss_mb', 0):.0f} | {w.get('tree_rss_mb', w.get('rss_mb', 0)):.0f} | {w.get('hwm_mb', 0):.0f} | "
            f"{w.get('cpu_s_per_s', 0) * 100:.0f} % | "
            f"{w.get('cpu_s_per_1000_asdu', float('nan')):.3f} | {fmt(r['up']['p50'])} / {fmt(r['up']['p99'])} | "
            f"{r['loadgen_cpu_s_per_s'] * 100:.0f} % | {others(r)} |"
        )
    out += _goals(results)
    notes = Path(__file__).with_name("NOTES.md")
    if notes.exists():
        out += ["", notes.read_text().rstrip()]
    out += ["", "## Commands", "", "```"]
    out += [meta["command"]]
    examples: dict[str, str] = {}
    for r in meta["all_runs"]:
        if r["path_argv"]:
            examples.setdefault(r["mode"], r["path_argv"])
    out += list(examples.values())
    out += sorted({r["loadgen_argv"] for r in meta["all_runs"] if r["loadgen_argv"]})
    out += ["```", ""]
    return "\n".join(out)


def _pingpong(pingpong: dict) -> list[str]:  # type: ignore[type-arg]
    if not pingpong:
        return []
    out = [
        "",
        "## Ping-pong, 12 sites",
        "",
        "Each site has one ASDU in flight: up to the BMI, whose command back down makes the site",
        "send the next 10 ms later (about 1,100 exchanges/s in all, so that the figure is the path's",
        "and not the generator's queue). One-way latency each way (µs);",
        "rounds alternate the paths; ratio = the path's figure over haproxy's in the same round.",
        "",
        "| round | path | exchanges/s | up p50 | up p99 | down p50 | down p99 | ratio up p50 / p99"
        " | ratio down p50 / p99 | path CPU | CPU s per 1,000 ASDU | generator CPU | others (cores) | loss |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key, r in pingpong.items():
        mode, n = key.rsplit(" #", 1)
        if r.get("failed"):
            out.append(f"| {n} | {mode} | failed: {r['errors'][0][-300:]!r} |")
            continue
        ratios = _pingpong_ratios(pingpong, key)
        w = _watched(r)
        cpu = f"{w['cpu_s_per_s'] * 100:.0f} %" if w else "-"
        loss = f"{r['gaps']} lost, {r['duplicates']} dup" + (" **errors**" if r.get("errors") else "")
        shown = {k: f"{v:.2f}" for k, v in ratios.items()}
        out.append(
            f"| {n} | {mode} | {fmt(r['up_asdus_per_s'])} | {fmt(r['up']['p50'])} | {fmt(r['up']['p99'])} | "
            f"{fmt(r['down'].get('p50'))} | {fmt(r['down'].get('p99'))} | "
            f"{shown.get('up p50', '-')} / {shown.get('up p99', '-')} | "
            f"{shown.get('down p50', '-')} / {shown.get('down p99', '-')} | {cpu} | "
            f"{w.get('cpu_s_per_1000_asdu', float('nan')):.3f} | {r['loadgen_cpu_s_per_s'] * 100:.0f} % | "
            f"{others(r)} | {loss} |"
        )
    return out


def _pingpong_ratios(pingpong: dict, key: str) -> dict[str, float]:  # type: ignore[type-arg]
    """The run's one-way percentiles over haproxy's in the same round."""
    mode, n = key.rsplit(" #", 1)
    r, base = pingpong[key], pingpong.get(f"haproxy #{n}")
    if mode == "haproxy" or not base or base.get("failed") or r.get("failed"):
        return {}
    return {
        f"{way} {q}": r[way][q] / base[way][q]
        for way in ("up", "down")
        for q in ("p50", "p99")
        if r[way].get(q) and base[way].get(q)
    }


def _fast_pingpong(fast: dict) -> list[str]:  # type: ignore[type-arg]
    if not fast:
        return []
    out = [
        "",
        "## Ping-pong, 12 sites, fast client (bench/pingpong.py)",
        "",
        "The same exchange with a client that is not the bottleneck: a blocking BMI, the twelve",
        "stations one selector loop, one exchange in flight. One-way µs; ratios are the path's",
        "figure over the bare trio forwarder's (trio) and haproxy's in the same round; CPU is",
        "the path process's per exchange (two ASDUs). Load average: the machine's 1-minute",
        "figure at the end of the run.",
        "",
        "| round | path | down p50 | down p99 | up p50 | up p99 | p50 / trio's (down, up) | p50 / haproxy's (down, up)"
        " | CPU µs per exchange | CPU / trio's | load average |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, r in fast.items():
        mode, n = key.rsplit(" #", 1)
        if r.get("failed"):
            out.append(f"| {n} | {mode} | failed: {r['errors'][0][-300:]!r} |")
            continue
        trio, haproxy = fast.get(f"trio #{n}"), fast.get(f"haproxy #{n}")
        p50_trio, p50_haproxy = _p50_ratios(r, trio), _p50_ratios(r, haproxy)
        cpu = _cpu_ratio(r, trio)
        out.append(
            f"| {n} | {mode} | {r['down_p50']:.0f} | {r['down_p99']:.0f} | {r['up_p50']:.0f} | {r['up_p99']:.0f} | "
            f"{p50_trio} | {p50_haproxy} | {r['cpu_us_per_exchange']:.0f} | {cpu} | {r['load_average']:.2f} |"
        )
    return out


def _p50_ratios(r: dict, base: dict | None) -> str:  # type: ignore[type-arg]
    if base is None or base is r or base.get("failed"):
        return "-"
    return f"{r['down_p50'] / base['down_p50']:.2f}, {r['up_p50'] / base['up_p50']:.2f}"


def _cpu_ratio(r: dict, base: dict | None) -> str:  # type: ignore[type-arg]
    if base is None or base is r or base.get("failed"):
        return "-"
    return f"{r['cpu_us_per_exchange'] / base['cpu_us_per_exchange']:.2f}"


def _goals(results: dict) -> list[str]:  # type: ignore[type-arg]
    """Issue 28's goals, each computed from this run's figures and marked met or not."""
    lat, storm, scale = results["latency"], results["storm"], results.get("scale", {})
    fast = results.get("fastpingpong", {})
    rows: list[tuple[str, str, str, str, bool | None]] = []

    def ok(r: dict | None) -> bool:  # type: ignore[type-arg]
        return bool(r) and not r.get("failed")  # type: ignore[union-attr]

    def rounds(mode: str, base: str, figure: Callable[[dict, dict], float]) -> float | None:  # type: ignore[type-arg]
        """The median over rounds of `figure(run, base's run in the same round)`."""
        values = []
        for key, r in fast.items():
            b = fast.get(f"{base} #{key.rsplit(' #', 1)[1]}")
            if key.startswith(f"{mode} #") and ok(r) and ok(b):
                values.append(figure(r, b))  # type: ignore[arg-type]
        return percentile(values, 50) if values else None

    def cpu_ratio(r: dict, b: dict) -> float:  # type: ignore[type-arg]
        return r["cpu_us_per_exchange"] / b["cpu_us_per_exchange"]  # type: ignore[no-any-return]

    def worse_p50(r: dict, b: dict) -> float:  # type: ignore[type-arg]
        return max(r[f"{way}_p50"] / b[f"{way}_p50"] for way in ("down", "up"))  # type: ignore[no-any-return]

    for mode in ("before", "relay"):
        label = "relay (before)" if mode == "before" else "relay"
        if (value := rounds(mode, "trio", cpu_ratio)) is not None:
            what = "12-site ping-pong (fast client), CPU per exchange / bare trio forwarder's, median of rounds"
            rows.append((what, label, f"{value:.2f} x", "<= 1.5 x", value <= 1.5))
        if (value := rounds(mode, "trio", worse_p50)) is not None:
            what = "same, one-way p50 (worse way) / bare trio forwarder's, median of rounds"
            rows.append((what, label, f"{value:.2f} x", "<= 1.3 x", value <= 1.3))
        if (value := rounds(mode, "haproxy", worse_p50)) is not None:
            what = "same, one-way p50 (worse way) / haproxy's, median of rounds"
            rows.append((what, label, f"{value:.2f} x", "(stated)", None))
        direct, haproxy, path = lat.get("nominal/direct"), lat.get("nominal/haproxy"), lat.get(f"nominal/{mode}")
        if ok(path) and (cpu_s := _watched(path).get("cpu_s_per_1000_asdu")) is not None:  # type: ignore[arg-type]
            rows.append(("100 sites nominal, CPU s per 1,000 ASDU", label, f"{cpu_s:.3f}", "<= 0.033", cpu_s <= 0.033))
        if ok(direct) and ok(haproxy) and ok(path):
            added = path["up"]["p99"] - direct["up"]["p99"]  # type: ignore[index]
            base = haproxy["up"]["p99"] - direct["up"]["p99"]  # type: ignore[index]
            ratio = added / base if base > 0 else float("inf")
            shown = f"{fmt(added)} / {fmt(base)} µs = {ratio:.2f} x"
            rows.append(("100 sites nominal, added up p99 / haproxy's", label, shown, "<= 2 x", ratio <= 2))
        stream, theirs = storm.get(f"{mode}, 12 sites streaming"), storm.get("haproxy, 12 sites streaming")
        if ok(stream) and ok(theirs):
            a, b = (_median_run(x)["sustained_asdus_per_s"] for x in (stream, theirs))  # type: ignore[arg-type]
            what = "12 sites streaming (k 12 w 8), sustained ASDU/s / haproxy's, median runs"
            rows.append((what, label, f"{fmt(a)} / {fmt(b)} = {a / b:.2f} x", ">= 0.8 x", a / b >= 0.8))
        if ok(r := storm.get(mode)) and r["sites"] >= 1000:  # type: ignore[index]
            total = _median_run(r)["total_s"]  # type: ignore[arg-type]
            what = "1,000-site storm (k 12 w 8), time to all, median run"
            rows.append((what, label, f"{total:.2f} s", "<= 1.2 s", total <= 1.2))
        r = scale.get("1000" if mode == "relay" else "1000 (before)")
        if ok(r) and (peak := _watched(r).get("hwm_mb")) is not None:  # type: ignore[arg-type]
            what = "1,000 sites at 10 ASDU/s, relay peak RSS (VmHWM)"
            rows.append((what, label, f"{peak:.0f} MB", "<= 60 MB", peak <= 60))
    if not rows:
        return []
    out = ["", "## Issue 28's goals, from the figures above", "",
           "| goal | path | measured | goal | met |", "|---|---|---:|---:|---|"]  # fmt: skip
    for what, label, shown, goal, met in rows:
        verdict = "-" if met is None else "met" if met else "**not met**"
        out.append(f"| {what} | {label} | {shown} | {goal} | {verdict} |")
    return out


def _median_run(r: dict) -> dict:  # type: ignore[type-arg]
    runs = sorted(r["runs"], key=lambda x: x["total_s"])
    return runs[len(runs) // 2]  # type: ignore[no-any-return]


def _storm_check(runs: list[dict]) -> str:  # type: ignore[type-arg]
    """What the generator's per-site CRC-32 of the storm's answers found, over all runs."""
    if any("sites_differing" not in x for x in runs):
        return "not checked"
    differing = sum(x["sites_differing"] for x in runs)
    return "identical in every run" if differing == 0 else f"**{differing} site answers differ**"


def _without_out(argv: list[str]) -> list[str]:
    """The arguments that change what is measured (not where the files go)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif not arg.startswith("--out="):
            out.append(arg)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs and a smaller storm")
    parser.add_argument("--out", default=str(ROOT / "bench"), help="where RESULTS.md and results/DATE-results.json go")
    parser.add_argument("--keep", action="store_true", help="keep the working directory (configs, logs)")
    parser.add_argument(
        "--only",
        default="latency,storm,stream,scale",
        help="comma-separated: latency|nominal|10x, storm, stream, scale",
    )
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated paths: direct, haproxy, relay")
    parser.add_argument(
        "--relay-tree", type=Path, help="run the relay from this source tree (before/after comparisons)"
    )
    parser.add_argument("--before-tree", type=Path, help='add the path "before": the relay from this source tree')
    parser.add_argument(
        "--render-only", type=Path, help="only write RESULTS.md again from this results/DATE-results.json"
    )
    args = parser.parse_args()
    if args.render_only:
        saved = json.loads(args.render_only.read_text())
        meta = {**saved["meta"], "all_runs": [r for g in saved["results"].values() for r in g.values()]}
        Path(args.out, "RESULTS.md").write_text(render(saved["results"], meta))
        return 0
    started_at = time.monotonic()
    load_at_start = os.getloadavg()[0]
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    workdir = Path(tempfile.mkdtemp(prefix="concentrator-bench-"))
    bench = Bench(workdir, args.quick, args.relay_tree, args.before_tree)
    modes = tuple(args.modes.split(","))
    if args.before_tree:  # measured right before the relay it is compared with
        modes = tuple(m for m in modes if m != "relay") + ("before",) + (("relay",) if "relay" in modes else ())
    try:
        results = scenarios(bench, set(args.only.split(",")), modes)
    finally:
        if args.keep:
            print(f"working directory kept: {workdir}")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    all_runs = [r for group in results.values() for r in group.values()]  # type: ignore[union-attr]
    meta = {
        "date": date,
        "command": " ".join(["python -m bench run run_all"] + _without_out(sys.argv[1:])),
        "elapsed_s": time.monotonic() - started_at,
        "load_average": (load_at_start, os.getloadavg()[0]),
        "machine": machine(),
        "all_runs": all_runs,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recorded = {"meta": {k: v for k, v in meta.items() if k != "all_runs"}, "results": results}
    result_path("results", out / "results").write_text(json.dumps(recorded, indent=1))
    (out / "RESULTS.md").write_text(render(results, meta))
    print(f"wrote {out / 'RESULTS.md'} in {meta['elapsed_s']:.0f} s")
    return 1 if any(r.get("errors") for r in all_runs) else 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    sys.exit(main())
