"""`concentrator shedding report`: the verdicts from the record, and one static HTML page
per event with a plot of Pi against the P0 - Pd band per site and in aggregate (inline
SVG written here: no plotting dependency, a file the holder can attach to a dispute).

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
from collections.abc import Sequence

from concentrator.config import load_config
from concentrator.incidents.verdicts import incidents_beside, shedding_note

from .record import StoredEvent, events, open_read_only, samples, verdicts
from .verdict import Sample

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


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


def _utc(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def report(database: str, *, since: float | None, event_id: int | None, html_dir: str | None,
           incidents: str | None = None) -> str:  # fmt: skip
    db = open_read_only(database)
    try:
        lines = []
        found = events(db, since, event_id)
        if not found:
            return "no shedding events recorded" + (f" with id {event_id}" if event_id is not None else "") + "\n"
        for event in found:
            rows = verdicts(db, event.id)
            lines.append(f"event {event.id}: {_utc(event.start)} .. {_utc(event.end)} ({event.trigger}), "
                         f"sites {', '.join(event.sites)}")  # fmt: skip
            for row in rows:
                state = "PASS" if row["passed"] else "FAIL"
                final = "" if row["final"] else " (provisional: shedding in progress)"
                if row["site"] == "*":
                    failed = json.loads(row["reasons"])
                    lines.append(f"  aggregate: {state}{final}" + (f": sites {', '.join(failed)}" if failed else ""))
                    continue
                opening = "-" if row["opening_time"] is None else f"{row['opening_time'] * 1000:.0f} ms"
                lines.append(f"  {row['site']}: {state}{final}  P0 {row['p0']:.1f} kW  Pd {row['pd']:.1f} kW  "
                             f"limit {row['limit_kw']:.1f} kW  opening {opening}")  # fmt: skip
                for failure in json.loads(row["details"]):
                    lines.append(f"    {failure['reason']}: {failure['detail']}"
                                 + (f" at {_utc(failure['at'])}" if failure["at"] else ""))  # fmt: skip
                # --- incident register (issue 27; concentrator/incidents/verdicts.py) ---
                note = shedding_note(incidents, row["site"], event.start, event.end, bool(row["passed"]))
                if note is not None:
                    lines.append(f"    register: {note}")
            # --- incident register (issue 27): the incidents beside the shedding ---
            lines.extend(f"  {line}" for line in incidents_beside(incidents, event.sites, event.start, event.end))
            if html_dir is not None:
                path = os.path.join(html_dir, f"shedding-event-{event.id}.html")
                with open(path, "w") as f:
                    f.write(event_page(db, event, rows))
                lines.append(f"  page: {path}")
        return "\n".join(lines) + "\n"
    finally:
        db.close()


# --------------------------------------------------------------------------- HTML


def event_page(db: sqlite3.Connection, event: StoredEvent, rows: Sequence[sqlite3.Row]) -> str:
    per_site = {r["site"]: r for r in rows if r["site"] != "*"}
    end = event.end if event.end is not None else time.time()
    margin = max(8.0, 0.1 * (end - event.start))
    data = samples(db, list(per_site), event.start - margin, end + margin)
    sections = []
    aggregate_pi: dict[float, float] = {}
    aggregate_limit: dict[float, float] = {}
    for site, row in per_site.items():
        points = [(s.at, s.pi) for s in data[site]]
        band = [(s.at, row["limit_kw"]) for s in data[site] if s.at >= row["judged_from"] and s.at <= end]
        for s in data[site]:
            aggregate_pi[s.at] = aggregate_pi.get(s.at, 0.0) + s.pi
        for at, limit in band:
            aggregate_limit[at] = aggregate_limit.get(at, 0.0) + limit
        verdict = "PASS" if row["passed"] else "FAIL: " + ", ".join(json.loads(row["reasons"]))
        sections.append(_section(f"{site} ({verdict})", event.start, end, points, band, _invalid(data[site])))
    agg_band = sorted(aggregate_limit.items())
    sections.insert(0, _section("Aggregate", event.start, end, sorted(aggregate_pi.items()), agg_band, []))
    table = "".join(
        f"<tr><td>{html.escape(r['site'])}</td><td>{'PASS' if r['passed'] else 'FAIL'}</td>"
        f"<td>{html.escape(', '.join(json.loads(r['reasons'])))}</td><td>{_num(r['p0'])}</td><td>{_num(r['pd'])}</td>"
        f"<td>{_num(r['limit_kw'])}</td></tr>"
        for r in rows
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>Shedding event {event.id}</title><style>body{{font-family:sans-serif}}td,th{{padding:2px 8px}}"
        "</style></head><body>"
        f"<h1>Shedding event {event.id}</h1><p>{_utc(event.start)} to {_utc(event.end)}, started by {event.trigger}. "
        "Pi is the total site power as the operator credits it (annex A40 5.3: a sample missing or invalid counts "
        "as 0); the red line is P0 - Pd + 5 % of the contractual power (5.2), judged from the opening limit plus "
        "one sample period after the command; the dashed lines mark the start and the release.</p>"
        "<table border='1'><tr><th>site</th><th>verdict</th><th>reasons (site: failed sites)</th><th>P0 kW</th>"
        f"<th>Pd kW</th><th>limit kW</th></tr>{table}</table>{''.join(sections)}</body></html>\n"
    )


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def _invalid(data: Sequence[Sample]) -> list[float]:
    return [s.at for s in data if s.total is None or not s.total_valid]


def _section(title: str, start: float, end: float, points: Sequence[tuple[float, float]],
             band: Sequence[tuple[float, float]], invalid: Sequence[float]) -> str:  # fmt: skip
    return f"<h2>{html.escape(title)}</h2>\n{svg_plot(start, end, points, band, invalid)}\n"


def svg_plot(start: float, end: float, points: Sequence[tuple[float, float]], band: Sequence[tuple[float, float]],
             invalid: Sequence[float] = (), width: int = 760, height: int = 260) -> str:  # fmt: skip
    """Pi (blue line and dots), the limit (red steps), zero-counted samples (orange
    crosses), start and release (dashed). Time axis in seconds from the start."""
    left, right, top, bottom = 60, 10, 10, 30
    xs = [t for t, _ in points] + [t for t, _ in band] + [start, end]
    ys = [v for _, v in points] + [v for _, v in band] + [0.0]
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
        parts.append(f"<text x='{sx(t):.1f}' y='{height - 12}' font-size='10' text-anchor='middle'>"
                     f"{t - start:+.0f} s</text>")  # fmt: skip
    parts.append(f"<text x='4' y='{top + 10}' font-size='10'>kW</text>")
    for t in (start, end):
        parts.append(f"<line x1='{sx(t):.1f}' x2='{sx(t):.1f}' y1='{top}' y2='{height - bottom}' "
                     "stroke='#444' stroke-dasharray='4 3'/>")  # fmt: skip
    if band:
        steps = " ".join(f"{sx(t):.1f},{sy(v):.1f}" for t, v in band)
        parts.append(f"<polyline points='{steps}' fill='none' stroke='#d00' stroke-width='2'/>")
    if points:
        line = " ".join(f"{sx(t):.1f},{sy(v):.1f}" for t, v in points)
        parts.append(f"<polyline points='{line}' fill='none' stroke='#06c' stroke-width='1.5'/>")
        parts.extend(f"<circle cx='{sx(t):.1f}' cy='{sy(v):.1f}' r='2.5' fill='#06c'><title>{_utc(t)}: {v:.1f} kW"
                     "</title></circle>" for t, v in points)  # fmt: skip
    for t in invalid:
        x, y = sx(t), sy(0.0)
        parts.append(f"<path d='M{x - 4:.1f},{y - 4:.1f}L{x + 4:.1f},{y + 4:.1f}M{x - 4:.1f},{y + 4:.1f}"
                     f"L{x + 4:.1f},{y - 4:.1f}' stroke='#f80' stroke-width='2'/>")  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="concentrator shedding report", description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="the configuration file (its shedding.database is read)")
    source.add_argument("--db", help="the SQLite record itself")
    parser.add_argument("--since", help="events since: 7d, 12h, 30m or an ISO 8601 time")
    parser.add_argument("--event", type=int, help="only this event")
    parser.add_argument("--html", metavar="DIR", help="write shedding-event-<id>.html pages here")
    args = parser.parse_args(argv)
    database = args.db
    incidents = None
    if args.config:
        config = load_config(args.config)
        if config.shedding is None:
            parser.error(f"{args.config} has no shedding: section")
        database = config.shedding.database
        incidents = None if config.incidents is None else config.incidents.database  # issue 27
    if not os.path.exists(database):
        parser.error(f"no shedding record at {database}")
    since = parse_since(args.since, time.time()) if args.since else None
    if args.html:
        os.makedirs(args.html, exist_ok=True)
    print(report(database, since=since, event_id=args.event, html_dir=args.html, incidents=incidents), end="")
    return 0
