"""The dossier as one self-contained HTML page (inline SVG, no scripts), and its PDF."""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from typing import Any

from .dossier import Dossier, Section

CSS = """
body{font-family:DejaVu Sans,Arial,sans-serif;font-size:11pt;margin:2em;color:#111}
h1{font-size:18pt;margin-bottom:0}h2{font-size:14pt;border-bottom:2px solid #333;margin-top:1.6em}
h3{font-size:11.5pt;margin-bottom:.3em}
table{border-collapse:collapse;margin:.4em 0 1em 0;font-size:9.5pt}
td,th{border:1px solid #999;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#eee}.num{text-align:right}
.PASS{background:#1a7f37;color:#fff;padding:2px 10px;font-weight:bold;border-radius:3px}
.FAIL{background:#b3261e;color:#fff;padding:2px 10px;font-weight:bold;border-radius:3px}
.criterion{background:#f4f4f4;border-left:4px solid #666;padding:.4em .8em;margin:.5em 0}
.finding{color:#b3261e}code,.hex{font-family:DejaVu Sans Mono,monospace;font-size:8.5pt;word-break:break-all}
.diff{background:#ffd54f;font-weight:bold}section{page-break-before:always}section.first{page-break-before:auto}
"""


def esc(value: Any) -> str:
    return html.escape(str(value))


def table(head: list[str] | None, rows: list[list[Any]], raw: bool = False) -> str:
    """A table; `head` None for a list of (name, value) rows."""
    cells = "" if head is None else "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{c if raw else esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{cells}{body}</table>"


def topology_svg(facts: dict[str, Any]) -> str:
    """BMI on the left, the concentrator in the middle, the sites on the right; solid
    lines primary paths, dashed backups, with interfaces (network:) or endpoints."""
    sites = facts["sites"]
    network = facts.get("network") or {}
    links = {link["name"]: link for link in network.get("links", [])}
    row, top = 58, 40
    height = max(300, top + len(sites) * row + 20)
    w = 980
    cx0, cx1 = 330, 560
    cy0, cy1 = 60, height - 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" '
        f'viewBox="0 0 {w} {height}" font-family="DejaVu Sans, Arial" font-size="11">'
    ]
    bmi_y = height / 2
    parts.append(
        f'<rect x="10" y="{bmi_y - 40}" width="130" height="80" fill="#e3f2fd" stroke="#1565c0"/>'
        f'<text x="75" y="{bmi_y - 15}" text-anchor="middle" font-weight="bold">BMI (operator)</text>'
    )
    for i, peer in enumerate(facts["uplink"]["allowed_peers"][:3]):
        parts.append(f'<text x="75" y="{bmi_y + 2 + 13 * i}" text-anchor="middle">{esc(peer)}</text>')
    parts.append(
        f'<rect x="{cx0}" y="{cy0}" width="{cx1 - cx0}" height="{cy1 - cy0}" fill="#fff8e1" '
        f'stroke="#ef6c00" stroke-width="2"/><text x="{(cx0 + cx1) / 2}" y="{cy0 + 20}" '
        f'text-anchor="middle" font-weight="bold">Concentrator</text>'
        f'<text x="{(cx0 + cx1) / 2}" y="{cy0 + 36}" text-anchor="middle">IEC 104 listen '
        f"{esc(facts['uplink']['listen'])}</text>"
    )
    up = links.get("uplink")
    for k, (role, dash, dy) in enumerate((("primary", "", -14), ("backup", ' stroke-dasharray="6 4"', 14))):
        y = bmi_y + dy
        parts.append(f'<line x1="140" y1="{y}" x2="{cx0}" y2="{y}" stroke="#1565c0" stroke-width="2"{dash}/>')
        label = f"{role}: {up[role]['interface']} via {up[role]['gateway']}" if up else f"{role}"
        if up or k == 0:
            parts.append(f'<text x="{(140 + cx0) / 2}" y="{y - 4}" text-anchor="middle">{esc(label)}</text>')
    groups = facts.get("multicast") or []
    y = bmi_y + 50
    if groups:
        parts.append(
            f'<text x="{(cx0 + cx1) / 2}" y="{y}" text-anchor="middle" font-weight="bold">'
            "Trip groups: kernel forwarding</text>"
        )
        for g in groups[:6]:
            y += 14
            parts.append(
                f'<text x="{(cx0 + cx1) / 2}" y="{y}" text-anchor="middle">{esc(g["group"])} '
                f"UDP {g['port']} from {esc(', '.join(g['sources']))}</text>"
            )
    sx = 760
    for i, s in enumerate(sites):
        sy = top + i * row
        mid = sy + row / 2 - 4
        colour = "#c62828" if s["interruptibility"] == "instantaneous" else "#6a1b9a"
        parts.append(
            f'<rect x="{sx}" y="{sy}" width="210" height="{row - 8}" fill="#f1f8e9" stroke="{colour}"/>'
            f'<text x="{sx + 6}" y="{sy + 15}" font-weight="bold">{esc(s["name"])}</text>'
            f'<text x="{sx + 6}" y="{sy + 29}">CA {esc(", ".join(map(str, s["common_addresses"])))}</text>'
            f'<text x="{sx + 6}" y="{sy + 43}" fill="{colour}">{esc(s["interruptibility"])}</text>'
        )
        link = links.get(s["name"])
        for k, dash in enumerate(("", ' stroke-dasharray="6 4"')):
            if link is None and k >= len(s["endpoints"]):
                continue
            ly = mid - 7 + 14 * k
            parts.append(f'<line x1="{cx1}" y1="{ly}" x2="{sx}" y2="{ly}" stroke="#2e7d32" stroke-width="1.5"{dash}/>')
            role = ("primary", "backup")[k]
            label = link[role]["interface"] if link else s["endpoints"][k]
            parts.append(f'<text x="{cx1 + 6}" y="{ly - 2}" font-size="9">{esc(label)}</text>')
    legend_y = height - 12
    parts.append(
        f'<text x="10" y="{legend_y}" font-size="9">solid: primary path, dashed: backup; site border red: '
        "instantaneous interruptibility, purple: emergency</text></svg>"
    )
    return "".join(parts)


def _template(text: str) -> str:
    """An alert's summary with Prometheus' templates shown as placeholders: <site>, <value>."""
    text = re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", r"<\1>", text)
    return re.sub(r"\{\{[^}]*\$value[^}]*\}\}", "<value>", text)


def _hexdiff(asdu: str, offsets: list[int]) -> str:
    octets = asdu.split()
    return " ".join(f'<span class="diff">{o}</span>' if i in offsets else o for i, o in enumerate(octets))


def _section_head(s: Section) -> str:
    findings = "".join(f'<li class="finding">{esc(f)}</li>' for f in s.findings[:50])
    more = f"<li>... {len(s.findings) - 50} more (evidence.json)</li>" if len(s.findings) > 50 else ""
    return (
        f'<h2>{s.number}. {esc(s.title)} <span class="{s.verdict}">{s.verdict}</span></h2>'
        f'<div class="criterion"><b>Criterion.</b> {esc(s.criterion)}</div>'
        + (f"<ul>{findings}{more}</ul>" if s.findings else "")
    )


def _spec(s: Section) -> str:
    f = s.facts
    parts = [_section_head(s), "<h3>Topology</h3>", topology_svg(f), "<h3>IEC 104 links</h3>"]
    up = f["uplink"]["params"]
    keys = ("k", "w", "t0", "t1", "t2", "t3")
    rows = [["uplink (to the BMI)", f["uplink"]["listen"], "-", "-", *[up[k] for k in keys]]]
    for site in f["sites"]:
        p = site["params"]
        rows.append(
            [
                site["name"],
                " / ".join(site["endpoints"]),
                ", ".join(map(str, site["common_addresses"])),
                site["interruptibility"],
                *[p[k] for k in keys],
            ]
        )
    parts.append(
        table(
            [
                "link",
                "endpoints (primary / backup)",
                "CA",
                "interruptibility",
                "k",
                "w",
                "t0 s",
                "t1 s",
                "t2 s",
                "t3 s",
            ],
            rows,
        )
    )
    parts.append(
        "<p>Byte identity: each ASDU leaves as it arrived; only the APCI is rebuilt per TCP connection. "
        "Selectivity: a BMI ASDU goes to the site owning its CA, CA 65535 to every site once; an unknown CA "
        "is answered with cause 46. A UPDC's frame is confirmed only after the BMI confirmed the copy.</p>"
    )
    net = f.get("network")
    parts.append("<h3>Redundancy and failover</h3>")
    if net:
        parts.append(
            f"<p>Link manager (netd): service address {esc(net['service_address'])}, probe every "
            f"{net['probe_interval']} s, {net['probe_misses']} misses, hold time {net['hold_time']} s, "
            f"fail-back {esc(net['failback'])}. Carrier loss switches at once; silent loss after "
            f"{net['probe_misses']} missed probes.</p>"
        )
        netd = f.get("netd") or {}
        parts.append(
            table(
                ["link", "primary", "backup", "destinations", "active now", "switches", "last outage s"],
                [
                    [
                        link["name"],
                        f"{link['primary']['interface']} via {link['primary']['gateway']}",
                        f"{link['backup']['interface']} via {link['backup']['gateway']}",
                        ", ".join(link["destinations"]),
                        netd.get(link["name"], {}).get("active", "?"),
                        netd.get(link["name"], {}).get("switches_total", "?"),
                        _seconds(netd.get(link["name"], {}).get("outage_seconds_last")),
                    ]
                    for link in net["links"]
                ],
            )
        )
    else:
        parts.append("<p>No network: section: no link manager protects the paths.</p>")
    parts.append("<h3>Trip groups</h3>")
    if f.get("multicast"):
        parts.append(
            "<p>Forwarded by the kernel, by the engine netd chose on this kernel (nftables dup rules, or "
            "static (source, group) routes that smcrouted installs; section 3 names it); only the uplink's "
            "active path is the inbound interface and each site gets one copy on its active path. No "
            "concentrator process joins a group.</p>"
        )
        parts.append(
            table(
                ["group", "UDP port", "sources", "inbound", "outbound"],
                [
                    [g["group"], g["port"], ", ".join(g["sources"]), ", ".join(g["inbound"]), ", ".join(g["outbound"])]
                    for g in f["multicast"]
                ],
            )
        )
    else:
        parts.append("<p>No multicast: section.</p>")
    parts.append(
        f"<h3>Monitoring and alarms</h3><p>Relay metrics on {esc(f['metrics'])}"
        + (f"; MQTT mirror to {esc(f['mqtt']['broker'])}" if f.get("mqtt") else "")
        + ".</p>"
    )
    if f["alerts"]:
        parts.append(
            table(["alert", "for", "summary"], [[a["alert"], a["for"], _template(a["summary"])] for a in f["alerts"]])
        )
    parts.append("<h3>Configuration and its history</h3>")
    reported = f["relay_reports_sha256"]
    same = "the same" if reported == f["sha256"] else (reported or "no answer")
    parts.append(
        table(
            None,
            [
                ["file", f["file"]],
                ["SHA-256", f["sha256"]],
                ["modified (UTC)", f["modified"]],
                ["the running relay reports", same],
            ],
        )
    )
    parts.append(f"<p>Accepted configurations ({esc(f['history_file'])}, append-only):</p>")
    parts.append(
        table(
            ["accepted at (UTC)", "by", "command", "SHA-256"],
            [[h.get("accepted_at"), h.get("user"), h.get("command"), h.get("sha256")] for h in f["history"]],
        )
    )
    parts.append("<h3>Software</h3>" + table(["component", "version"], [[k, v] for k, v in f["versions"].items()]))
    return "".join(parts)


def _identity(s: Section) -> str:
    f = s.facts
    m = f.get("match", {})
    parts = [_section_head(s)]
    drops = {k: v for k, v in f.get("kernel_drops", {}).items() if v}
    parts.append(
        f"<p>Captured on {esc(', '.join(f.get('interfaces', [])))}: {f.get('segments', 0)} TCP segments, "
        f"{f.get('apdus', 0)} I-frames, {sum(f.get('pcap_bytes', {}).values())} bytes of pcap; "
        f"frames dropped by the kernel: {esc(drops) if drops else 'none'}; "
        f"{f.get('connections_joined_mid_stream', 0)} connection directions began before the capture.</p>"
    )
    parts.append(
        table(
            [
                "uplink ASDUs",
                "from the BMI",
                "BMI broadcast",
                "BMI unknown CA",
                "cause-46 answers",
                "before the capture",
                "in flight at the end",
                "exceptions",
            ],
            [
                [
                    m.get("up"),
                    m.get("bmi"),
                    m.get("bmi_broadcast"),
                    m.get("bmi_unknown_ca"),
                    m.get("negative_answers"),
                    m.get("before_capture"),
                    m.get("in_flight"),
                    len(m.get("exceptions", [])),
                ]
            ],
        )
    )
    rows = [
        [
            name,
            c["from_site"],
            c["forwarded"],
            c["repeated_ed2"],
            c["not_on_uplink"],
            c["in_flight_at_end"],
            c["commands_for_site"],
            c["commands_delivered"],
            c["commands_site_unconnected"],
            c["to_site"],
        ]
        for name, c in m.get("sites", {}).items()
    ]
    parts.append(
        table(
            [
                "site",
                "ASDUs from the site",
                "equal on the uplink",
                "re-sent (Ed. 2)",
                "not on the uplink",
                "in flight at end",
                "BMI ASDUs for it",
                "delivered",
                "while not connected",
                "ASDUs it received",
            ],
            rows,
        )
    )
    exceptions = m.get("exceptions", [])
    if exceptions:
        parts.append("<h3>Exceptions, with their bytes</h3>")
        rows = []
        for e in exceptions[:100]:
            expected = _hexdiff(e["expected"], e["differs_at"]) if e.get("expected") else "-"
            rows.append(
                [
                    esc(e["rule"]),
                    esc(e["hop"]),
                    esc(e["what"]),
                    f'<span class="hex">{esc(e["asdu"])}</span>',
                    f'<span class="hex">{expected}</span>',
                    esc(", ".join(map(str, e["differs_at"]))),
                ]
            )
        parts.append(
            table(
                ["rule", "hop", "what", "ASDU (hex)", "expected (hex, differences marked)", "differing octets"],
                rows,
                raw=True,
            )
        )
    return "".join(parts)


def _trips(s: Section) -> str:
    f = s.facts
    parts = [_section_head(s)]
    if not f:
        return "".join(parts)
    e = f["engine"]
    engine = e["choice"]["engine"] or "NONE (refused)"
    parts.append(
        f"<p>Trip path engine: <b>{esc(engine)}</b> (multicast.engine {esc(e['choice']['asked'])}): "
        f"{esc(e['choice']['reason'])}. {esc(e['summary'])}.</p>"
        "<p>That engine's own rules and counters, read from the kernel after the capture (the table "
        "below is computed from them):</p>"
        f"<pre>{esc(e['rules'])}</pre>"
    )
    parts.append(
        table(
            [
                "source > group",
                "installed",
                "inbound (wanted)",
                "outbound (wanted)",
                "packets forwarded",
                "during capture",
                "of them on the uplink path not in use",
                "wrong interface during capture",
                "members on this host",
            ],
            [
                [
                    f"{p['source']} > {p['group']}",
                    p["installed"],
                    f"{p['inbound']} ({p['wanted_inbound']})",
                    f"{', '.join(p['outbound'])} ({', '.join(p['wanted_outbound'])})",
                    p["packets_forwarded"],
                    p["packets_during_capture"],
                    p["standby_during_capture"],
                    p["wrong_if_during_capture"],
                    ", ".join(p["members_on_this_host"]) or "none",
                ]
                for p in f["paths"]
            ],
        )
    )
    fw = f["forwarded"]
    parts.append("<h3>Trip datagrams captured here</h3>")
    parts.append(
        table(
            ["group", "came in", "copies out per interface", "not forwarded"],
            [
                [g, v["in"], ", ".join(f"{k}: {n}" for k, n in v["copies"].items()), v["not_forwarded"]]
                for g, v in fw["groups"].items()
            ],
        )
    )
    d = fw["delay"]
    added = fw.get("added_median_us")
    parts.append(
        table(
            ["kernel forwarding time (in to out, captured here)", "count", "p50 µs", "p99 µs", "max µs"],
            [
                [k, v.get("count"), _us(v.get("p50_us")), _us(v.get("p99_us")), _us(v.get("max_us"))]
                for k, v in d.items()
            ],
        )
    )
    added_text = "not measured (no forwarded unicast datagram captured)" if added is None else f"{added:.1f} µs"
    parts.append(f"<p>Added latency of multicast over unicast (median): {added_text}.</p>")
    if "relay_stopped" in f:
        st = f["relay_stopped"]
        parts.append(
            f"<p>--lab: relay pid(s) {esc(st['pids'])} stopped (SIGSTOP) for {st['to'] - st['from']:.1f} s "
            f"(state {esc(st['relay_states'])}); the kernel forwarded meanwhile "
            f"{esc(st['forwarded_while_stopped'])}; {f.get('trips_in_while_stopped', 0)} trip datagrams "
            "captured coming in during the stop.</p>"
        )
    parts.append("<h3>Group memberships and sockets</h3>")
    parts.append(f"<p>/proc/net/igmp, groups joined on this host by interface: {esc(f['igmp'])}.</p>")
    lines = f["ip_maddr_trip_lines"]
    parts.append(
        "<p><code>ip maddr show</code> (whole output in ip-maddr.txt): "
        + (f"trip groups joined: <code>{esc('; '.join(lines))}</code>" if lines else "no trip group appears")
        + ".</p>"
    )
    parts.append(
        table(
            ["process", "pid", "command", "UDP/raw/packet sockets"],
            [
                [
                    p["role"],
                    p["pid"],
                    p["cmdline"],
                    "; ".join(f"{x['kind']} {x['local']}:{x['port']}" for x in p["sockets"]) or "none",
                ]
                for p in f["processes"]
            ],
        )
    )
    return "".join(parts)


def _seconds(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _us(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _failover(s: Section) -> str:
    f = s.facts
    parts = [_section_head(s)]
    rows = []
    for link in f.get("links", []):
        for sw in link["recent_switches"]:
            rows.append(
                [
                    link["name"],
                    _when(sw["wall_time"]),
                    sw["frm"],
                    sw["to"],
                    sw["reason"],
                    _ms(sw.get("detection_seconds")),
                    _ms(sw.get("outage_seconds")),
                ]
            )
    if f.get("links"):
        parts.append(
            table(
                ["link", "active", "healthy", "switches", "by reason"],
                [
                    [
                        x["name"],
                        x["active"],
                        ", ".join(k for k, v in x["healthy"].items() if v) or "none",
                        x["switches_total"],
                        esc(x["switches_by_reason"]),
                    ]
                    for x in f["links"]
                ],
            )
        )
        parts.append("<h3>Switches recorded by netd</h3>")
        parts.append(
            table(["link", "when (UTC)", "from", "to", "reason", "detection ms", "outage ms"], rows)
            if rows
            else "<p>No switch recorded.</p>"
        )
    if f.get("live") is not None:
        parts.append("<h3>--lab: live switch of each protected link</h3>")
        parts.append(
            table(
                [
                    "link",
                    "primary interface taken down",
                    "reason",
                    "outage ms (echo replies)",
                    "echo target",
                    "outage ms (netd)",
                    "switch in netd's state after ms",
                    "back on primary",
                ],
                [
                    [
                        r["link"],
                        r["interface"],
                        r.get("switch", {}).get("reason", r.get("skipped") or r.get("error")),
                        _ms(r.get("echo_outage_seconds")),
                        r.get("echo_target", "-"),
                        _ms(r.get("outage_seconds")),
                        _ms(r.get("seen_after_seconds")),
                        r.get("back_on_primary"),
                    ]
                    for r in f["live"]
                ],
            )
        )
    return "".join(parts)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None or seconds != seconds else f"{seconds * 1000:.1f}"


def _when(t: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def render(d: Dossier) -> str:
    overall = "PASS" if all(s.passed for s in d.sections) else "FAIL"
    summary = table(
        ["section", "verdict"],
        [[f"{s.number}. {esc(s.title)}", f'<span class="{s.verdict}">{s.verdict}</span>'] for s in d.sections],
        raw=True,
    )
    pcaps = ", ".join(f'<a href="{esc(rel)}">{esc(os.path.basename(rel))}</a>' for rel in d.captures)
    files = f"<li>capture/ (one pcap per interface): {pcaps}</li>" + "".join(
        f'<li><a href="{esc(rel)}">{esc(rel)}</a>: {esc(label)}</li>'
        for label, rel in d.files.items()
        if rel not in d.captures
    )
    renderers = {1: _spec, 2: _identity, 3: _trips, 4: _failover}
    body = "".join(
        f'<section id="s{s.number}" class="{"first" if i == 0 else ""}">{renderers[s.number](s)}</section>'
        for i, s in enumerate(d.sections)
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Concentrator evidence {esc(d.generated)}"
        f"</title><style>{CSS}</style></head><body>"
        f"<h1>IEC 104 concentrator: evidence for annex A40 section 5.10 "
        f'<span class="{overall}">{overall}</span></h1>'
        f"<p>Generated {esc(d.generated)} on {esc(os.uname().nodename)} in {d.run_seconds:.1f} s "
        f"(capture {d.duration:g} s, {d.cpu_seconds:.1f} s of CPU). Re-run: <code>{esc(d.command)}</code></p>"
        f"{summary}<p>Raw evidence beside this page:</p><ul>{files}</ul>{body}</body></html>"
    )


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def to_pdf(html_file: str, pdf_file: str) -> str | None:
    """The PDF through headless Chromium; None when done, else why not (with how to install)."""
    browser = chromium()
    if browser is None:
        return "no PDF: no HTML-to-PDF converter installed (apt-get install chromium)"
    done = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-pdf-header-footer",
            f"--print-to-pdf={pdf_file}",
            f"file://{os.path.abspath(html_file)}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0 or not os.path.exists(pdf_file):
        return f"no PDF: {browser} failed ({done.returncode}): {done.stderr.strip()[-300:]}"
    return None
