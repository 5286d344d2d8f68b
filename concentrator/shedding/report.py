"""`concentrator shedding report`: the verdicts from the record (text or --json, both
written from one summary per event), and one static HTML page per event with a plot of Pi
against the P0 - Pd band per site and in aggregate (inline SVG written here: no plotting
dependency, a file the holder can attach to a dispute).

`--since` selects the events that overlap the time from then to now. Exit status 0 when
every verdict listed was judged (PASS or FAIL), NOT_JUDGED_EXIT when one was not.
Reads the SQLite record read-only, beside the running monitor.
"""

from __future__ import annotations

import argparse
import datetime
import html
import json
import os
import re
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from .config import SheddingConfig
from .record import StoredEvent, events, interruptions, open_read_only, samples, verdicts
from .verdict import Sample, Status, judged_samples, utc

NOT_JUDGED_EXIT = 3  # exit status when a listed verdict could not be judged (the monitor missed copies)
_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class RegisterWord(Protocol):
    """The incident register's word on a shedding (issue 27; annex A40 5.7.3), given by the
    wiring layer (concentrator/incidents/verdicts.py over the register): the shedding
    package reads nothing of the incidents."""

    def note(self, site: str, start: float, end: float | None, passed: bool) -> str | None:
        """What the register says of a shedding of `site` from `start` to `end` (None: going on)."""
        ...

    def beside(self, sites: tuple[str, ...], start: float, end: float | None) -> list[str]:
        """One line per incident of these sites (or of the BMI link) overlapping the shedding."""
        ...


@dataclass(frozen=True)
class Sources:
    """What `--config FILE` gives the report, read by the wiring layer (concentrator/cli.py):
    the `shedding:` section and, with an `incidents:` section, the register's word."""

    shedding: SheddingConfig | None
    register: RegisterWord | None


def parse_since(text: str, now: float) -> float:
    """'7d', '12h', '30m' ago, or an ISO 8601 date/time (UTC unless it says otherwise)."""
    relative = _RELATIVE.fullmatch(text)
    if relative:
        return now - float(relative[1]) * _UNIT[relative[2]]
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 7d, 12h, 30m or an ISO 8601 time, got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def event_summary(db: sqlite3.Connection, event: StoredEvent, register: RegisterWord | None = None) -> dict[str, Any]:
    """One event as the report gives it (the text is written from this, --json is this);
    `register`: the incident register's word, given beside each site."""
    rows = verdicts(db, event.id)
    sites, aggregate = [], None
    for row in rows:
        status = row["status"] or ("pass" if row["passed"] else "fail")  # schema 1 rows have no status
        if row["site"] == "*":
            aggregate = {"status": status, "final": bool(row["final"])}
            continue
        sites.append({
            "site": row["site"], "status": status, "final": bool(row["final"]), "p0_kw": row["p0"],
            "pd_kw": row["pd"], "limit_kw": row["limit_kw"], "opening_time_s": row["opening_time"],
            "judged_from": row["judged_from"], "note": row["note"] or "", "failures": json.loads(row["details"]),
            # issue 27: the register's word (concentrator/incidents/verdicts.py); "failed, not
            # notified" only for a verdict that failed, not for one the monitor could not judge
            "register": None if register is None else register.note(row["site"], event.start, event.end,
                                                                    status != Status.FAIL),
        })  # fmt: skip
    if aggregate is not None:
        aggregate["sites_not_passing"] = [v["site"] for v in sites if v["status"] != Status.PASS]
    end = event.end if event.end is not None else time.time()
    return {
        "id": event.id, "start": event.start, "end": event.end, "trigger": event.trigger, "sites": list(event.sites),
        "interruptions": [asdict(i) for i in interruptions(db, event.start, end)],
        "verdicts": sites, "aggregate": aggregate,
        "incidents": [] if register is None else register.beside(event.sites, event.start, event.end),
    }  # fmt: skip


def _label(v: dict[str, Any]) -> str:
    label = Status(v["status"]).label
    if v["status"] == Status.NOT_JUDGED:
        label += f": {v['note']}"
    return label + ("" if v["final"] else " (provisional: shedding in progress)")


def event_text(e: dict[str, Any]) -> list[str]:
    lines = [f"event {e['id']}: {utc(e['start'])} .. {utc(e['end'])} ({e['trigger']}), sites {', '.join(e['sites'])}"]
    for i in e["interruptions"]:
        lines.append(f"  interruption: {i['cause']}")
    for v in e["verdicts"]:
        opening = "-" if v["opening_time_s"] is None else f"{v['opening_time_s'] * 1000:.0f} ms"
        lines.append(f"  {v['site']}: {_label(v)}  P0 {v['p0_kw']:.1f} kW  Pd {v['pd_kw']:.1f} kW  "
                     f"limit {v['limit_kw']:.1f} kW  opening {opening}")  # fmt: skip
        for failure in v["failures"]:
            lines.append(f"    {failure['reason']}: {failure['detail']}"
                         + (f" at {utc(failure['at'])}" if failure["at"] else ""))  # fmt: skip
        if v.get("register"):
            lines.append(f"    register: {v['register']}")
    lines.extend(f"  {line}" for line in e.get("incidents", []))
    a = e["aggregate"]
    if a is not None:
        failed = [v["site"] for v in e["verdicts"] if v["status"] == Status.FAIL]
        unjudged = [v["site"] for v in e["verdicts"] if v["status"] == Status.NOT_JUDGED]
        lines.append(f"  aggregate: {Status(a['status']).label}" + ("" if a["final"] else " (provisional)")
                     + (f": sites {', '.join(failed)}" if failed else "")
                     + (f" (not judged: {', '.join(unjudged)})" if unjudged else ""))  # fmt: skip
    return lines


def report(database: str, *, since: float | None, event_id: int | None, html_dir: str | None,
           as_json: bool = False, register: RegisterWord | None = None) -> tuple[str, bool]:  # fmt: skip
    """The report's text (or JSON) and whether every verdict listed could be judged."""
    db = open_read_only(database)
    try:
        summaries = []
        for event in events(db, since, event_id):
            summary = event_summary(db, event, register)
            if html_dir is not None:
                path = os.path.join(html_dir, f"shedding-event-{event.id}.html")
                with open(path, "w") as f:
                    f.write(event_page(db, event, summary))
                summary["page"] = path
            summaries.append(summary)
    finally:
        db.close()
    judged = all(v["status"] != Status.NOT_JUDGED for e in summaries for v in e["verdicts"])
    if as_json:
        return json.dumps({"events": summaries}, indent=2) + "\n", judged
    if not summaries:
        return "no shedding events recorded" + (f" with id {event_id}" if event_id is not None else "") + "\n", judged
    lines = []
    for summary in summaries:
        lines += event_text(summary)
        if "page" in summary:
            lines.append(f"  page: {summary['page']}")
    return "\n".join(lines) + "\n", judged


# --------------------------------------------------------------------------- HTML


CAPTION = (
    "Pi is the total site power as the operator credits it (annex A40 5.3: a sample missing or invalid counts as "
    "0). The red line is P0 - Pd + 5 % of the contractual power (5.2), drawn at the samples judged: those taken "
    "after the command plus the opening time allowed (200 ms instantaneous, 5 s emergency: the dotted line), in "
    "slots ending no later than the release. P0 is the total power at the command, Pd the sum of the "
    "interruptible load measures in that same sample. Dashed lines: the start and the release. A sample whose "
    "copies the monitor may have missed is drawn grey."
)


@dataclass(frozen=True)
class PlotPoint:
    at: float
    kw: float
    note: str  # the tooltip
    kind: str  # "sample", "zero" (missing or invalid: counted 0), "incomplete" (the monitor may have missed copies)


def plot_point(s: Sample) -> PlotPoint:
    if not s.complete:
        kind, note = "incomplete", "copies may have been lost here (see the interruptions)"
    elif s.total is None:
        kind, note = "zero", "missing: no sample received, counted as 0 kW (5.3)"
    elif not s.total_valid:
        kind, note = "zero", f"invalid (IV): raw {s.total:.1f} kW, counted as 0 kW (5.3)"
    else:
        kind, note = "sample", "valid"
    return PlotPoint(s.at, s.pi, f"{utc(s.at)}: Pi {s.pi:.1f} kW; {note}", kind)


def event_page(db: sqlite3.Connection, event: StoredEvent, summary: dict[str, Any]) -> str:
    per_site = {v["site"]: v for v in summary["verdicts"]}
    end = event.end if event.end is not None else time.time()
    margin = max(8.0, 0.1 * (end - event.start))
    data = samples(db, list(per_site), event.start - margin, end + margin)
    sections = []
    aggregate_pi: dict[float, float] = {}
    aggregate_limit: dict[float, float] = {}
    for site, v in per_site.items():
        band = [(s.at, v["limit_kw"]) for s in judged_samples(data[site], v["judged_from"], end)]
        for s in data[site]:
            aggregate_pi[s.at] = aggregate_pi.get(s.at, 0.0) + s.pi
        for at, limit in band:
            aggregate_limit[at] = aggregate_limit.get(at, 0.0) + limit
        title = f"{site} ({Status(v['status']).label}" + (f": {', '.join(f['reason'] for f in v['failures'])}"
                                                          if v["failures"] else "") + ")"  # fmt: skip
        points = [plot_point(s) for s in data[site]]
        sections.append(_section(title, event.start, end, points, band, v["judged_from"]))
    total = [
        PlotPoint(at, kw, f"{utc(at)}: sum of Pi {kw:.1f} kW", "sample") for at, kw in sorted(aggregate_pi.items())
    ]
    sections.insert(0, _section("Aggregate", event.start, end, total, sorted(aggregate_limit.items()), None))
    table = "".join(
        f"<tr><td>{html.escape(v['site'])}</td><td>{html.escape(_label(v))}</td>"
        f"<td>{html.escape(', '.join(f['reason'] for f in v['failures']))}</td><td>{_num(v['p0_kw'])}</td>"
        f"<td>{_num(v['pd_kw'])}</td><td>{_num(v['limit_kw'])}</td></tr>"
        for v in summary["verdicts"]
    )
    a = summary["aggregate"]
    if a is not None:
        failed = html.escape(", ".join(a["sites_not_passing"]))
        table += (
            f"<tr><td>aggregate</td><td>{Status(a['status']).label}</td><td>{failed}</td><td colspan='3'></td></tr>"
        )
    notes = "".join(f"<li>{html.escape(i['cause'])}</li>" for i in summary["interruptions"])
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>Shedding event {event.id}</title><style>body{{font-family:sans-serif}}td,th{{padding:2px 8px}}"
        "</style></head><body>"
        f"<h1>Shedding event {event.id}</h1><p>{utc(event.start)} to {utc(event.end)}, started by "
        f"{html.escape(event.trigger)}. {CAPTION}</p>"
        + (f"<p>Interruptions of the monitor:</p><ul>{notes}</ul>" if notes else "")
        + "<table border='1'><tr><th>site</th><th>verdict</th><th>reasons (aggregate: sites not passing)</th>"
        f"<th>P0 kW</th><th>Pd kW</th><th>limit kW</th></tr>{table}</table>{''.join(sections)}</body></html>\n"
    )


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _section(title: str, start: float, end: float, points: Sequence[PlotPoint], band: Sequence[tuple[float, float]],
             judged_from: float | None) -> str:  # fmt: skip
    return f"<h2>{html.escape(title)}</h2>\n{svg_plot(start, end, points, band, judged_from)}\n"


_COLOURS = {"sample": "#06c", "zero": "#f80", "incomplete": "#999"}
_LEGEND = (("line", "#06c", "Pi (credited total power)"), ("line", "#d00", "limit P0 - Pd + 5 % Pc, judged samples"),
           ("cross", "#f80", "missing or invalid: counted 0"), ("dot", "#999", "copies may have been lost"),
           ("dash", "#444", "start, release"), ("dot-line", "#444", "judged from"))  # fmt: skip


def svg_plot(start: float, end: float, points: Sequence[PlotPoint], band: Sequence[tuple[float, float]],
             judged_from: float | None = None, width: int = 760, height: int = 290) -> str:  # fmt: skip
    """Pi (blue line and dots; orange crosses where counted 0; grey where copies may be
    missing), the limit (red), start and release (dashed), the judged-from instant
    (dotted), a legend below. Every point's tooltip says what it is. Time axis in seconds
    from the start."""
    left, right, top, bottom = 60, 10, 10, 60
    xs = [p.at for p in points] + [t for t, _ in band] + [start, end]
    ys = [p.kw for p in points] + [v for _, v in band] + [0.0]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    pad = (y1 - y0) * 0.1 or 1.0
    y0, y1 = y0 - pad, y1 + pad

    def sx(t: float) -> float:
        return left + (t - x0) / (x1 - x0) * (width - left - right)

    def sy(v: float) -> float:
        return top + (y1 - v) / (y1 - y0) * (height - top - bottom)

    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
             f"viewBox='0 0 {width} {height}' role='img'>",
             f"<rect x='{left}' y='{top}' width='{width - left - right}' height='{height - top - bottom}' "
             "fill='none' stroke='#888'/>"]  # fmt: skip
    for k in range(5):  # y grid and labels
        v = y0 + (y1 - y0) * k / 4
        parts.append(
            f"<line x1='{left}' x2='{width - right}' y1='{sy(v):.1f}' y2='{sy(v):.1f}' stroke='#eee'/>"
            f"<text x='{left - 4}' y='{sy(v) + 4:.1f}' font-size='10' text-anchor='end'>{v:.0f}</text>"
        )
    for k in range(6):  # x labels: seconds from the start
        t = x0 + (x1 - x0) * k / 5
        parts.append(f"<text x='{sx(t):.1f}' y='{height - bottom + 14}' font-size='10' text-anchor='middle'>"
                     f"{t - start:+.0f} s</text>")  # fmt: skip
    parts.append(f"<text x='4' y='{top + 10}' font-size='10'>kW</text>")
    for t in (start, end):
        parts.append(f"<line x1='{sx(t):.1f}' x2='{sx(t):.1f}' y1='{top}' y2='{height - bottom}' "
                     "stroke='#444' stroke-dasharray='4 3'/>")  # fmt: skip
    if judged_from is not None and x0 <= judged_from <= x1:
        parts.append(
            f"<line x1='{sx(judged_from):.1f}' x2='{sx(judged_from):.1f}' y1='{top}' y2='{height - bottom}' "
            f"stroke='#444' stroke-dasharray='1 2'><title>judged from {utc(judged_from)}</title></line>"
        )
    if band:
        steps = " ".join(f"{sx(t):.1f},{sy(v):.1f}" for t, v in band)
        parts.append(f"<polyline points='{steps}' fill='none' stroke='#d00' stroke-width='2'/>")
    if points:
        line = " ".join(f"{sx(p.at):.1f},{sy(p.kw):.1f}" for p in points)
        parts.append(f"<polyline points='{line}' fill='none' stroke='#06c' stroke-width='1.5'/>")
    for p in points:
        x, y, colour, tip = sx(p.at), sy(p.kw), _COLOURS[p.kind], f"<title>{html.escape(p.note)}</title>"
        if p.kind == "zero":
            parts.append(f"<path d='M{x - 4:.1f},{y - 4:.1f}L{x + 4:.1f},{y + 4:.1f}M{x - 4:.1f},{y + 4:.1f}"
                         f"L{x + 4:.1f},{y - 4:.1f}' stroke='{colour}' stroke-width='2'>{tip}</path>")  # fmt: skip
        else:
            parts.append(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='2.5' fill='{colour}'>{tip}</circle>")
    parts.append(_legend(left, height - 26))
    parts.append("</svg>")
    return "".join(parts)


def _legend(x: float, y: float) -> str:
    parts = ["<g class='legend' font-size='10'>"]
    for k, (mark, colour, text) in enumerate(_LEGEND):
        cx, cy = x + (k % 3) * 230, y + (k // 3) * 14
        if mark == "cross":
            parts.append(f"<path d='M{cx + 6},{cy - 4}l8,8m-8,0l8,-8' stroke='{colour}' stroke-width='2'/>")
        elif mark == "dot":
            parts.append(f"<circle cx='{cx + 10}' cy='{cy}' r='3' fill='{colour}'/>")
        else:
            dash = {"dash": " stroke-dasharray='4 3'", "dot-line": " stroke-dasharray='1 2'"}.get(mark, "")
            parts.append(
                f"<line x1='{cx}' x2='{cx + 20}' y1='{cy}' y2='{cy}' stroke='{colour}' stroke-width='2'{dash}/>"
            )
        parts.append(f"<text x='{cx + 26}' y='{cy + 4}'>{html.escape(text)}</text>")
    parts.append("</g>")
    return "".join(parts)


def main(argv: list[str], sources: Callable[[str], Sources]) -> int:
    """`sources`: what a configuration file gives the report, read by the wiring layer."""
    parser = argparse.ArgumentParser(prog="concentrator shedding report", description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="the configuration file (its shedding.database is read)")
    source.add_argument("--db", help="the SQLite record itself")
    parser.add_argument(
        "--since",
        help="events that overlap the time from then to now (started before and ended "
        "after, or still running, included): 7d, 12h, 30m or an ISO 8601 time (UTC unless it says)",
    )
    parser.add_argument("--event", type=int, help="only this event")
    parser.add_argument("--html", metavar="DIR", help="write shedding-event-<id>.html pages here")
    parser.add_argument("--json", action="store_true", help="the same events and verdicts as JSON")
    args = parser.parse_args(argv)
    database = args.db
    register = None
    if args.config:
        given = sources(args.config)
        if given.shedding is None:
            parser.error(f"{args.config} has no shedding: section")
        database = given.shedding.database
        register = given.register  # issue 27
    if not os.path.exists(database):
        parser.error(f"no shedding record at {database}")
    since = parse_since(args.since, time.time()) if args.since else None
    if args.html:
        os.makedirs(args.html, exist_ok=True)
    text, judged = report(
        database, since=since, event_id=args.event, html_dir=args.html, as_json=args.json, register=register
    )
    print(text, end="")
    return 0 if judged else NOT_JUDGED_EXIT
