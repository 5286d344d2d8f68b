"""The 3-working-day deadline of annex A40 5.7.1 ("il completo ripristino deve avvenire
comunque entro 3 giorni lavorativi dal malfunzionamento").

Read as Italian law counts terms in days (the day of the event is not counted, the term
ends at the end of its last day): the deadline is the end (24:00, Europe/Rome) of the
third working day after the day the malfunction began. Working days are Monday to
Friday that are not national public holidays, from the `holidays` package (kept by its
maintainers, Easter Monday included), not from a table of ours. Local patron-saint days
are not national holidays and are not excluded (docs/incidents.md).
"""

from __future__ import annotations

import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays

ROME = ZoneInfo("Europe/Rome")
WORKING_DAYS = 3


@lru_cache(maxsize=64)
def _holidays(year: int) -> holidays.HolidayBase:
    return holidays.country_holidays("IT", years=year)


def is_working_day(day: datetime.date) -> bool:
    return day.weekday() < 5 and day not in _holidays(day.year)


def deadline(start: float, working_days: int = WORKING_DAYS) -> float:
    """Seconds since the epoch: the end of the `working_days`-th working day after the
    (Rome) day of `start`."""
    day = datetime.datetime.fromtimestamp(start, ROME).date()
    counted = 0
    while counted < working_days:
        day += datetime.timedelta(days=1)
        if is_working_day(day):
            counted += 1
    end = datetime.datetime.combine(day + datetime.timedelta(days=1), datetime.time(), ROME)
    return end.timestamp()
