"""`concentrator evidence`: gather the facts of the four sections and judge them.

Each section is a `Section`: a title, the criterion in words, PASS or FAIL, the facts
(JSON, written beside the report) and the findings that made it FAIL. Rendering is
report.py's job; the checks that can be re-run from the raw files are in match.py.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from . import lab as labmod
from .appliance import Appliance, Load
from .capture import Capture
from .history import history_path, read_history
from .match import Classifier, Hop, match
from .streams import Datagram, Reassembler, Segment, parse_frame
from .trips import concentrator_processes, forwarded_datagrams, ip_maddr, judge, kernel_snapshot

OPERATOR_TOLERANCE = labmod.OPERATOR_TOLERANCE


@dataclass
class Section:
    number: int
    title: str
    criterion: str
    passed: bool
    facts: dict[str, Any]
    findings: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"


@dataclass
class Dossier:
    config: Appliance
    generated: str
    command: str
    sections: list[Section]
    duration: float
    run_seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process, capture and analysis
    files: dict[str, str] = field(default_factory=dict)  # label -> path relative to the output dir
    captures: list[str] = field(default_factory=list)  # the pcap files among them


def capture_interfaces(config: Appliance) -> list[str]:
    """Every interface the IEC 104 and trip traffic can take: the paths of the network:
    section, the trip groups' interfaces, and the interface the kernel routes each site
    endpoint and each allowed BMI address through now (`ip route get`, read-only)."""
    names: list[str] = []
    if config.network is not None:
        names += [p.interface for link in config.network.links for p in (link.primary, link.backup)]
    if config.multicast is not None:
        names += list(config.multicast.interfaces)
    targets = [e.host for s in config.sites for e in s.endpoints]
    targets += [str(p.network_address) for p in config.uplink.allowed_peers]
    for host in dict.fromkeys(targets):
        for address in _resolve(host):
            names += _route_dev(address)
    return [n for n in dict.fromkeys(names) if os.path.exists(f"/sys/class/net/{n}")]


def _resolve(host: str) -> list[str]:
    import socket

    try:
        return sorted({str(i[4][0]) for i in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})
    except OSError:
        return []


def _route_dev(address: str) -> list[str]:
    try:
        done = subprocess.run(["ip", "-j", "route", "get", address], capture_output=True, text=True, timeout=5)
        return [r["dev"] for r in json.loads(done.stdout or "[]") if "dev" in r]
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return []


# ---------------------------------------------------------------------- section 1


def _relay_reports(config: Appliance) -> str | None:
    """The SHA-256 the running relay reports (concentrator_config_info), or None."""
    listen = config.metrics.listen
    host = "127.0.0.1" if listen.host in ("0.0.0.0", "::") else listen.host
    url = f"http://{host if ':' not in host else f'[{host}]'}:{listen.port}/metrics"
    try:
        text = urllib.request.urlopen(url, timeout=10).read().decode(errors="replace")
    except OSError:
        return None
    found = re.search(r'concentrator_config_info\{[^}]*sha256="([0-9a-f]{64})"', text)
    return found.group(1) if found else None


def _command_version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=5)
        return (done.stdout or done.stderr).strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "not installed"


def _source_commit() -> str:
    """The git commit of the running source tree, when it is a checkout."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.exists(os.path.join(root, ".git")):
        return "not a git checkout"
    return _command_version(["git", "-C", root, "describe", "--always", "--dirty"])


def versions() -> dict[str, str]:
    def dist(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "concentrator": dist("iec104-concentrator"),
        "source": _source_commit(),
        "python": platform.python_version(),
        "trio": dist("trio"),
        "PyYAML": dist("PyYAML"),
        "pyroute2": dist("pyroute2"),
        "kernel": f"{platform.system()} {platform.release()}",
        "smcroute": _command_version(["smcrouted", "-v"]),
        "iproute2": _command_version(["ip", "-V"]),
    }


def specification(config: Appliance, netd_state: dict[str, Any] | None) -> Section:
    history = read_history(config.file)
    reported = _relay_reports(config)
    findings = []
    if not any(h.get("sha256") == config.sha256 for h in history):
        findings.append(
            f"SHA-256 {config.sha256} is not in the history of accepted configurations "
            f"({history_path(config.file)}): the file changed without check-config or a relay start"
        )
    if reported is None:
        findings.append(f"the relay's metrics ({config.metrics.listen}) did not answer with concentrator_config_info")
    elif reported != config.sha256:
        findings.append(
            f"the running relay reports SHA-256 {reported}, not this file's {config.sha256}: "
            "it runs another configuration"
        )
    facts: dict[str, Any] = {
        "file": os.path.abspath(config.file),
        "sha256": config.sha256,
        "modified": datetime.datetime.fromtimestamp(config.mtime, datetime.UTC).isoformat(timespec="seconds"),
        "relay_reports_sha256": reported,
        "history": history,
        "history_file": history_path(config.file),
        "versions": versions(),
        "uplink": {
            "listen": str(config.uplink.listen),
            "allowed_peers": [str(p) for p in config.uplink.allowed_peers],
            "params": asdict(config.uplink.params),
        },
        "sites": [
            {
                "name": s.name,
                "common_addresses": list(s.common_addresses),
                "endpoints": [str(e) for e in s.endpoints],
                "interruptibility": s.interruptibility,
                "params": asdict(s.params),
            }
            for s in config.sites
        ],
        "metrics": str(config.metrics.listen),
        "mqtt": None if config.mqtt is None else {"broker": str(config.mqtt.broker), "prefix": config.mqtt.prefix},
        "network": _network_json(config.network),
        "multicast": None
        if config.multicast is None
        else [
            {
                "group": str(g.group),
                "port": g.port,
                "sources": [str(s) for s in g.sources],
                "inbound": list(g.inbound),
                "outbound": list(g.outbound),
            }
            for g in config.multicast.groups
        ],
        "netd": _netd_summary(netd_state),
        "alerts": _alert_rules(),
    }
    criterion = (
        "The configuration loads with the relay's own parser; its SHA-256 is in the local history of "
        "accepted configurations (check-config / relay start) and is the one the running relay reports "
        "in concentrator_config_info."
    )
    return Section(1, "Technical specification", criterion, not findings, facts, findings)


def _network_json(network: Any) -> dict[str, Any] | None:
    if network is None:
        return None
    return {
        "service_address": str(network.service_address),
        "probe_interval": network.probe_interval,
        "probe_misses": network.probe_misses,
        "hold_time": network.hold_time,
        "failback": getattr(network.failback, "value", str(network.failback)),
        "links": [
            {
                "name": link.name,
                "destinations": [str(d) for d in link.destinations],
                "primary": {"interface": link.primary.interface, "gateway": str(link.primary.gateway)},
                "backup": {"interface": link.backup.interface, "gateway": str(link.backup.gateway)},
            }
            for link in network.links
        ],
    }


def _netd_summary(state: dict[str, Any] | None) -> dict[str, Any] | None:
    if state is None:
        return None
    return {
        name: {
            "active": st["active"],
            "healthy": st["healthy"],
            "switches_total": st["switches_total"],
            "outage_seconds_last": st.get("outage_seconds_last"),
        }
        for name, st in state.get("links", {}).items()
    }


def _alert_rules() -> list[dict[str, str]]:
    """The alert rules shipped with this software (monitoring/alerts.yml), by name."""
    import yaml

    path = os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "monitoring", "alerts.yml"
    )
    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return []
    rules = []
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            if "alert" in rule:
                rules.append(
                    {
                        "alert": rule["alert"],
                        "expr": str(rule.get("expr", "")).strip(),
                        "for": str(rule.get("for", "")),
                        "summary": str(rule.get("annotations", {}).get("summary", "")),
                    }
                )
    return rules


# ---------------------------------------------------------------------- sections 2 and 3


def decode(config: Appliance, packets: list[Any]) -> tuple[Any, dict[Any, Hop], list[Datagram]]:
    classify = Classifier(config)
    hops: dict[Any, Hop] = {}

    def wanted(flow: Any) -> bool:
        if flow not in hops:
            hop = classify(flow)
            if hop is None:
                return False
            hops[flow] = hop
        return True

    reasm = Reassembler(wanted)
    datagrams: list[Datagram] = []
    for p in packets:
        parsed = parse_frame(p)
        if isinstance(parsed, Segment):
            reasm.feed(parsed)
        elif isinstance(parsed, Datagram):
            datagrams.append(parsed)
    return reasm.finish(), hops, datagrams


def identity_section(config: Appliance, capture: Any, streams: Any, hops: dict[Any, Hop]) -> Section:
    ended = capture.truncated_at if capture.truncated_at is not None else capture.ended
    result = match(config, streams.apdus, hops, capture.started, ended)
    # One line per kind of exception (each one, with its bytes, is in the table and matches.json).
    kinds = Counter(f"{e.rule}: {e.what}" for e in result.exceptions)
    findings = [f"{n} × {text}" if n > 1 else text for text, n in kinds.items()]
    drops = {k: v for k, v in capture.kernel_drops.items() if v}
    if capture.truncated_at is not None:
        findings.append(
            f"the capture reached its limit of frames in memory "
            f"{capture.truncated_at - capture.started:.1f} s after its start: use a shorter --duration"
        )
    if drops:
        findings.append(f"the kernel dropped captured frames ({drops}): the capture is incomplete")
    findings += [f"stream {p.flow}: {p.what}" for p in streams.problems]
    if result.up + result.bmi == 0:
        findings.append("no IEC 104 ASDU on the uplink during the capture: nothing was shown")
    facts = {
        "match": result.to_json(),
        "interfaces": sorted(capture.files),
        "kernel_drops": capture.kernel_drops,
        "truncated_at": capture.truncated_at,
        "capture_started": capture.started,
        "capture_ended": capture.ended,
        "pcap_bytes": capture.sizes,
        "segments": streams.segments,
        "apdus": len(streams.apdus),
        "connections_joined_mid_stream": streams.joined_mid_stream,
        "stream_problems": [f"{p.flow}: {p.what}" for p in streams.problems],
        "connections": {
            f"{k[0]}:{k[1]} > {k[2]}:{k[3]}": {"conn": v, "hop": asdict(hops[k])}
            for k, v in streams.connections.items()
        },
    }
    criterion = (
        "Captured on every site-facing interface and the uplink, TCP reassembled, APDUs cut by the relay's "
        "framer: every ASDU on the uplink equals byte for byte one a site sent, in that site's order; every "
        "BMI ASDU reached the site owning its CA once (CA 65535: every site once) and no site got an ASDU "
        "not addressed to it; the only ASDUs the concentrator originated are cause-46 answers to unknown "
        "CAs. The capture must be complete (no kernel drops, no gaps) and see traffic."
    )
    return Section(2, "Byte identity and selectivity", criterion, not findings, facts, findings)


def trips_section(
    config: Appliance,
    before: dict[str, Any],
    after: dict[str, Any],
    netd_state: dict[str, Any] | None,
    datagrams: list[Datagram],
    stopped: dict[str, Any] | None,
    maddr: str,
) -> Section:
    mc = config.multicast
    if mc is None:
        return Section(
            3,
            "Non-interposition in trip messages",
            "The configuration has trip groups (multicast:) and the kernel forwards each of them.",
            False,
            {},
            ["no multicast: section: no trip group is configured, nothing can be shown"],
        )
    forwarded = forwarded_datagrams(mc, datagrams)
    facts = judge(mc, config.network, netd_state, before, after, concentrator_processes(), forwarded, maddr)
    findings = list(facts["findings"])
    criterion = (
        "For every (source, group): the kernel has a forwarding entry whose inbound interface is the "
        "uplink's active path and whose outbound interfaces are the sites' active paths (netd's state), "
        "no socket on this host is a member of a trip group (/proc/net/igmp, ip maddr), no relay or netd "
        "process holds a UDP socket on a trip port or a packet socket, and every trip datagram captured "
        "coming in left unchanged."
    )
    if stopped is not None:
        facts["relay_stopped"] = stopped
        criterion += (
            " With --lab: while the relay was stopped (SIGSTOP) the kernel forwarded trips, and every "
            "captured trip of that interval left unchanged."
        )
        during = [
            d
            for d in datagrams
            if stopped["from"] <= d.t <= stopped["to"] and not d.outgoing and d.dst in {str(g.group) for g in mc.groups}
        ]
        facts["trips_in_while_stopped"] = len(during)
        if not stopped["pids"]:
            findings.append("--lab: no relay process found to stop")
        elif not any(v > 0 for v in stopped["forwarded_while_stopped"].values()):
            findings.append("--lab: no trip forwarded while the relay was stopped (did the BMI send any?)")
        if any(s != "T" for s in stopped["relay_states"].values()):
            findings.append(f"--lab: the relay was not stopped ({stopped['relay_states']})")
    return Section(3, "Non-interposition in trip messages", criterion, not findings, facts, findings)


# ---------------------------------------------------------------------- section 4


def failover_section(
    config: Appliance, netd_state: dict[str, Any] | None, state_file: str | None, live: list[dict[str, Any]] | None
) -> Section:
    criterion = (
        f"netd's state is readable; every link has a healthy active path; every switch netd recorded "
        f"had an outage below the {OPERATOR_TOLERANCE:.0f} s the operator tolerates."
    )
    if live is not None:
        criterion += (
            " With --lab: each protected link switched to its backup when its primary went down "
            "(ip link set down), and the longest silence between replies to ICMP echoes sent every "
            f"10 ms to the link's first destination stayed below {OPERATOR_TOLERANCE:.0f} s."
        )
    findings: list[str] = []
    if config.network is None:
        return Section(4, "Failover", criterion, False, {}, ["no network: section: no protected link"])
    if netd_state is None:
        return Section(
            4,
            "Failover",
            criterion,
            False,
            {"state_file": state_file},
            [f"netd's state file {state_file!r} is not readable (run netd with --state and pass it with --netd-state)"],
        )
    links = []
    for link in config.network.links:
        st = netd_state.get("links", {}).get(link.name)
        if st is None:
            findings.append(f"{link.name}: not in netd's state")
            continue
        if st["all_down"] or not st["healthy"].get(st["active"]):
            findings.append(f"{link.name}: active path {st['active']} is not healthy")
        for sw in st["recent_switches"]:
            if sw.get("outage_seconds") is not None and sw["outage_seconds"] >= OPERATOR_TOLERANCE:
                findings.append(
                    f"{link.name}: switch at {sw['wall_time']:.0f} had an outage of {sw['outage_seconds']:.1f} s"
                )
        links.append(
            {
                "name": link.name,
                **{
                    k: st[k]
                    for k in (
                        "active",
                        "healthy",
                        "switches_total",
                        "switches_by_reason",
                        "all_down_total",
                        "recent_switches",
                    )
                },
            }
        )
    for row in live or []:
        if "skipped" in row:
            findings.append(f"--lab: {row['link']} not switched: {row['skipped']}")
        elif "error" in row:
            findings.append(f"--lab: {row['link']}: {row['error']}")
        elif row["echo_outage_seconds"] is None:
            findings.append(f"--lab: {row['link']}: no echo reply from {row['echo_target']} after the switch")
        elif row["echo_outage_seconds"] >= OPERATOR_TOLERANCE:
            findings.append(
                f"--lab: {row['link']}: {row['echo_outage_seconds']:.1f} s without an echo reply "
                f"from {row['echo_target']}"
            )
    facts = {"state_file": state_file, "links": links, "live": live}
    return Section(4, "Failover", criterion, not findings, facts, findings)


# ---------------------------------------------------------------------- the run


def build(
    load_config: Load, config_file: str, out: str, duration: float, netd_state_file: str | None, run_lab: bool
) -> Dossier:
    if not run_lab:
        return _build(load_config, config_file, out, duration, netd_state_file, run_lab)
    with labmod.unwind_on_signals():
        return _build(load_config, config_file, out, duration, netd_state_file, run_lab)


def _build(
    load_config: Load, config_file: str, out: str, duration: float, netd_state_file: str | None, run_lab: bool
) -> Dossier:
    started = time.monotonic()
    config = load_config(config_file)
    os.makedirs(out, exist_ok=True)
    state = labmod.read_state(netd_state_file)
    mc = config.multicast
    before = kernel_snapshot(mc, config.network) if mc is not None else {}
    capture = Capture(capture_interfaces(config), os.path.join(out, "capture"))
    capture.start()
    stopped = None
    try:
        if run_lab:
            # The relay is stopped in the middle third of the capture.
            time.sleep(duration / 3)
            relays = [p.pid for p in concentrator_processes() if p.role == "relay"]
            stopped = labmod.stop_relay(relays, mc, config.network, duration / 3)
            time.sleep(duration / 3)
        else:
            time.sleep(duration)
    finally:
        result = capture.stop()
    after = kernel_snapshot(mc, config.network) if mc is not None else {}
    maddr = ip_maddr()
    with open(os.path.join(out, "ip-maddr.txt"), "w") as f:
        f.write(maddr)
    streams, hops, datagrams = decode(config, result.packets)
    live = None
    if run_lab and config.network is not None and netd_state_file is not None:
        live = labmod.switch_links(config.network, netd_state_file)
    state_now = labmod.read_state(netd_state_file) or state
    sections = [
        specification(config, state_now),
        identity_section(config, result, streams, hops),
        trips_section(config, before, after, state_now, datagrams, stopped, maddr),
        failover_section(config, state_now, netd_state_file, live),
    ]
    dossier = Dossier(
        config,
        datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        f"concentrator evidence --config {config_file} --out {out} --duration {duration:g}"
        + (f" --netd-state {netd_state_file}" if netd_state_file else "")
        + (" --lab" if run_lab else ""),
        sections,
        duration,
    )
    for name, path in result.files.items():
        dossier.files[f"capture on {name}"] = os.path.relpath(path, out)
    dossier.captures = sorted(os.path.relpath(path, out) for path in result.files.values())
    _write_json(
        out,
        "evidence.json",
        {
            "generated": dossier.generated,
            "command": dossier.command,
            "config_sha256": config.sha256,
            "sections": [
                {
                    "number": s.number,
                    "title": s.title,
                    "verdict": s.verdict,
                    "criterion": s.criterion,
                    "findings": s.findings,
                    "facts": s.facts,
                }
                for s in sections
            ],
        },
    )
    dossier.files["all facts and verdicts (JSON)"] = "evidence.json"
    dossier.files["multicast memberships of every interface (ip maddr show)"] = "ip-maddr.txt"
    _write_json(out, "matches.json", sections[1].facts["match"])
    dossier.files["matching of the ASDUs (JSON)"] = "matches.json"
    shutil.copyfile(config.file, os.path.join(out, "configuration.yaml"))
    dossier.files["the configuration judged"] = "configuration.yaml"
    with open(os.path.join(out, "SHA256SUMS"), "w") as f:
        for rel in sorted(dossier.files.values()):
            with open(os.path.join(out, rel), "rb") as g:
                f.write(f"{hashlib.sha256(g.read()).hexdigest()}  {rel}\n")
    dossier.files["SHA-256 of the files above"] = "SHA256SUMS"
    dossier.run_seconds = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    dossier.cpu_seconds = usage.ru_utime + usage.ru_stime
    return dossier


def _write_json(out: str, name: str, doc: Any) -> None:
    with open(os.path.join(out, name), "w") as f:
        json.dump(doc, f, indent=1, default=str)
