"""The one date grammar of the command line and the API."""

from datetime import date

import pytest

from etl.dates import parse_day


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-10-01", date(2026, 10, 1)),
        ("2028-02-29", date(2028, 2, 29)),
        ("0002-01-01", date(2, 1, 1)),
        ("9998-12-31", date(9998, 12, 31)),
    ],
)
def test_a_day_is_written_yyyy_mm_dd(text: str, expected: date) -> None:
    assert parse_day(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "20261001",
        "2026-W40-1",
        "2026-274",
        "2026-10-1",
        "2026-10-01T00:00",
        " 2026-10-01",
        "2026-10-01\n",
        "２０２６-10-01",
        "2026-02-30",
        "yesterday",
        "",
    ],
)
def test_any_other_spelling_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a date of the form YYYY-MM-DD"):
        parse_day(text)


@pytest.mark.parametrize("text", ["0001-01-05", "0001-12-31", "9999-01-01", "9999-12-31"])
def test_days_at_the_ends_of_the_calendar_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="outside the supported dates 0002-01-01 to 9998-12-31"):
        parse_day(text)
