"""The one date grammar of the command line and the API: YYYY-MM-DD within the supported span."""

import re
from datetime import date

ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# A year of margin at each end of Python's calendar: a day's bounds in UTC, its week, its
# month and a default range derived from it all exist for every supported day.
FIRST_DAY = date(2, 1, 1)
LAST_DAY = date(9998, 12, 31)


def parse_day(text: str) -> date:
    """The day written as YYYY-MM-DD; ValueError with a one-line reason for anything else."""
    try:
        if not ISO_DAY.fullmatch(text):
            raise ValueError
        day = date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a date of the form YYYY-MM-DD") from None
    if not FIRST_DAY <= day <= LAST_DAY:
        raise ValueError(f"{text} is outside the supported dates {FIRST_DAY} to {LAST_DAY}")
    return day
