"""The incidents as an HTML page (`concentrator incidents report --html DIR`): a
timeline per site over the period covered (inline SVG: no plotting dependency) and a
table with each incident's times, deadline, type and cause and its notices' state."""

from __future__ import annotations

import html
import os

from .detector import Kind
from .notices import by_end_of, when
from .store import Incident, Register

COLOURS = {Kind.UNREACHABLE: "#d33", Kind.RESTART: "#a0a", Kind.MEASURES: "#e80", Kind.SKEW: "#08a",
           Kind.BMI_LINK: "#555", Kind.MAINTENANCE: "#3a3"}  # fmt: skip


def timeline(incidents: list[Incident], now: float, width: int = 900) -> str:
    sites = sorted({i.site for i in incidents})
    if not sites:
        return ""
    start = min(i.start for i in incidents)
    end = max(max((i.end or now) for i in incidents), start + 60)
    left, row = 110, 22
    height = row * len(sites) + 30

    def x(t: float) -> float:
        return left + (t - start) / (end - start) * (width - left - 10)

    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img'>"]
    for n, site in enumerate(sites):
        y = 5 + n * row
        parts.append(f"<text x='4' y='{y + 14}' font-size='12'>{html.escape(site)}</text>"
                     f"<line x1='{left}' x2='{width - 10}' y1='{y + 10}' y2='{y + 10}' stroke='#ddd'/>")  # fmt: skip
        for i in (i for i in incidents if i.site == site):
            x0, x1 = x(i.start), max(x(i.end or now), x(i.start) + 3)
            title = html.escape(f"{i.id} {i.kind}: {when(i.start)} .. {when(i.end)}")
            faded = "" if i.end is not None else " fill-opacity='0.5'"
            parts.append(f"<rect x='{x0:.1f}' y='{y + 3}' width='{x1 - x0:.1f}' height='14' fill='{COLOURS[i.kind]}'"
                         f"{faded}><title>{title}</title></rect>")  # fmt: skip
    for k in range(5):
        t = start + (end - start) * k / 4
        anchor = ("start", "middle", "middle", "middle", "end")[k]
        parts.append(f"<text x='{x(t):.1f}' y='{height - 6}' font-size='10' text-anchor='{anchor}'>"
                     f"{html.escape(when(t)[:19])}</text>")  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)


def page(register: Register, now: float) -> str:
    incidents = register.incidents()
    rows = []
    for i in incidents:
        notices = "<br>".join(
            f"{n.kind}: sent {html.escape(when(n.sent))}" if n.sent else f"{n.kind}: <b>not sent</b> ({n.attempts})"
            for n in register.notices(i.id)
        )
        cause = i.cause or (f"{i.proposed_it} / {i.proposed_en}" if i.proposed_en else "")
        late = i.end is None and i.deadline is not None and now > i.deadline
        deadline = "" if i.deadline is None else html.escape(by_end_of(i.deadline)) + (" <b>PAST</b>" if late else "")
        rows.append(f"<tr><td>{i.id}</td><td>{html.escape(i.site)}</td><td>{html.escape(i.updc)}</td>"
                    f"<td><span style='color:{COLOURS[i.kind]}'>{i.kind}</span></td><td>{i.state}</td>"
                    f"<td>{html.escape(when(i.start))}</td><td>{html.escape(when(i.end))}</td><td>{deadline}</td>"
                    f"<td>{html.escape(cause)}</td><td>{notices}</td></tr>")  # fmt: skip
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Incident register</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 6px;font-size:13px;vertical-align:top}</style>"
        "</head><body><h1>Incident register (annex A40 5.7)</h1>"
        f"<p>As of {html.escape(when(now))}. Bars: unavailability per site (faded: still open); red unreachable, "
        "purple restart, orange measures, blue time tags, grey BMI link, green planned maintenance.</p>"
        f"{timeline(incidents, now)}"
        "<table border='1' cellspacing='0'><tr><th>id</th><th>site</th><th>UPDC</th><th>kind</th><th>state</th>"
        "<th>start</th><th>end</th><th>deadline (3 working days)</th><th>type and cause</th><th>notices</th></tr>"
        f"{''.join(rows)}</table></body></html>\n"
    )


def write_report(register: Register, directory: str, now: float) -> str:
    path = os.path.join(directory, "incidents.html")
    with open(path, "w") as f:
        f.write(page(register, now))
    return path
