"""The 3-working-day deadline (annex A40 5.7.1) with Italian public holidays from the
`holidays` package: across a weekend, 8 December and Easter Monday."""

from __future__ import annotations

import datetime

import pytest

from concentrator.incidents.workdays import ROME, deadline, is_working_day


def rome(*args: int) -> float:
    return datetime.datetime(*args, tzinfo=ROME).timestamp()


def day_of(t: float) -> str:
    """The (Rome) day the deadline ends, 24:00 read as the end of that day."""
    return (datetime.datetime.fromtimestamp(t, ROME) - datetime.timedelta(seconds=1)).strftime("%a %d/%m/%Y")


@pytest.mark.parametrize(("start", "due"), [
    # A weekday: the three following working days.
    (rome(2026, 11, 24, 10, 0), "Fri 27/11/2026"),
    # Friday: Saturday and Sunday do not count.
    (rome(2026, 11, 27, 14, 2), "Wed 02/12/2026"),
    # Monday 7 December 2026: Tuesday 8 (Immacolata) does not count.
    (rome(2026, 12, 7, 9, 30), "Fri 11/12/2026"),
    # Thursday before Easter 2027: the weekend and Easter Monday (29 March) do not count.
    (rome(2027, 3, 25, 16, 45), "Wed 31/03/2027"),
    # During a weekend: counted from the next working day.
    (rome(2026, 11, 28, 23, 59), "Wed 02/12/2026"),
])  # fmt: skip
def test_deadline_is_the_end_of_the_third_working_day_after(start: float, due: str) -> None:
    end = deadline(start)
    assert day_of(end) == due
    local = datetime.datetime.fromtimestamp(end, ROME)
    assert (local.hour, local.minute, local.second) == (0, 0, 0)  # midnight, Rome time


def test_the_holidays_come_from_the_package() -> None:
    assert not is_working_day(datetime.date(2026, 12, 8))  # Immacolata, a Tuesday
    assert not is_working_day(datetime.date(2027, 3, 29))  # Easter Monday
    assert not is_working_day(datetime.date(2026, 12, 26))  # Santo Stefano (a Saturday anyway)
    assert is_working_day(datetime.date(2026, 12, 9))
    assert not is_working_day(datetime.date(2026, 12, 12))  # a Saturday


def test_across_new_year_holidays() -> None:
    # Wednesday 30 Dec 2026: Thu 31 (1), Fri 1 Jan holiday, Mon 4 (2), Tue 5 (3).
    assert day_of(deadline(rome(2026, 12, 30, 12, 0))) == "Tue 05/01/2027"
