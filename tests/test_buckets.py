"""Pure date logic of the API: granularity, buckets, labels and default ranges."""

from datetime import date, timedelta

import pytest

from api.buckets import auto_granularity, default_range, make_buckets
from etl.dates import FIRST_DAY, LAST_DAY

D = date.fromisoformat
MONDAY, SUNDAY = 0, 6


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        ("2026-02-01", "2026-02-07", "day"),  # 7 days
        ("2026-02-01", "2026-02-08", "week"),  # 8 days
        ("2026-01-01", "2026-01-31", "week"),  # 31 days
        ("2026-01-01", "2026-02-01", "month"),  # 32 days
        ("2026-02-17", "2026-02-17", "day"),
    ],
)
def test_auto_granularity_by_range_length(start: str, end: str, expected: str) -> None:
    assert auto_granularity(D(start), D(end)) == expected


@pytest.mark.parametrize(
    ("scope", "today", "expected"),
    [
        ("platform", "2026-11-25", ("2026-05-01", "2026-10-31")),
        ("platform", "2026-01-01", ("2025-07-01", "2025-12-31")),
        ("platform", "2026-03-31", ("2025-09-01", "2026-02-28")),
        ("org", "2026-11-25", ("2026-10-27", "2026-11-25")),
        ("agent", "2026-03-01", ("2026-01-31", "2026-03-01")),
    ],
)
def test_default_ranges(scope: str, today: str, expected: tuple[str, str]) -> None:
    first, last = default_range(scope, D(today))
    assert (first.isoformat(), last.isoformat()) == expected


def test_daily_buckets_and_labels() -> None:
    buckets = make_buckets(D("2026-02-17"), D("2026-02-19"), "day", MONDAY)
    assert [(b.key, b.label, b.partial) for b in buckets] == [
        ("2026-02-17", "Feb 17", False),
        ("2026-02-18", "Feb 18", False),
        ("2026-02-19", "Feb 19", False),
    ]


def test_a_week_clipped_to_one_day_is_labelled_as_that_day() -> None:
    # 2026-11-01 is a Sunday: the range's first week holds it alone.
    buckets = make_buckets(D("2026-11-01"), D("2026-11-09"), "week", MONDAY)
    assert [(b.label, b.partial) for b in buckets] == [
        ("Nov 1", True),
        ("Nov 2 – 8", False),
        ("Nov 9", True),
    ]
    assert make_buckets(D("2026-11-30"), D("2026-11-30"), "month", MONDAY)[0].label == "Nov 2026"


def test_weekly_buckets_start_monday_and_clip_to_the_range() -> None:
    # 2026-02-18 is a Wednesday; 2026-03-03 a Tuesday.
    buckets = make_buckets(D("2026-02-18"), D("2026-03-03"), "week", MONDAY)
    assert [(b.label, b.start.isoformat(), b.end.isoformat(), b.partial) for b in buckets] == [
        ("Feb 18 – 22", "2026-02-18", "2026-02-22", True),
        ("Feb 23 – Mar 1", "2026-02-23", "2026-03-01", False),
        ("Mar 2 – 3", "2026-03-02", "2026-03-03", True),
    ]
    assert buckets[0].key == "W2026-02-16"


def test_weeks_can_start_on_sunday() -> None:
    buckets = make_buckets(D("2026-02-15"), D("2026-02-28"), "week", SUNDAY)
    assert [(b.label, b.partial) for b in buckets] == [
        ("Feb 15 – 21", False),
        ("Feb 22 – 28", False),
    ]


def test_weeks_cross_the_year() -> None:
    buckets = make_buckets(D("2025-12-29"), D("2026-01-11"), "week", MONDAY)
    assert [b.label for b in buckets] == ["Dec 29 – Jan 4", "Jan 5 – 11"]


def test_monthly_buckets_across_a_year_with_partial_edges() -> None:
    buckets = make_buckets(D("2025-11-15"), D("2026-02-10"), "month", MONDAY)
    assert [
        (b.key, b.label, b.start.isoformat(), b.end.isoformat(), b.partial) for b in buckets
    ] == [
        ("2025-11", "Nov 2025", "2025-11-15", "2025-11-30", True),
        ("2025-12", "Dec 2025", "2025-12-01", "2025-12-31", False),
        ("2026-01", "Jan 2026", "2026-01-01", "2026-01-31", False),
        ("2026-02", "Feb 2026", "2026-02-01", "2026-02-10", True),
    ]


def test_february_of_a_leap_year_is_a_whole_month() -> None:
    (bucket,) = make_buckets(D("2028-02-01"), D("2028-02-29"), "month", MONDAY)
    assert (bucket.end.isoformat(), bucket.partial) == ("2028-02-29", False)


@pytest.mark.parametrize("granularity", ["day", "week", "month"])
@pytest.mark.parametrize("first_weekday", range(7))
@pytest.mark.parametrize(
    ("first", "last"),
    [(FIRST_DAY, FIRST_DAY + timedelta(days=40)), (LAST_DAY - timedelta(days=40), LAST_DAY)],
)
def test_buckets_exist_at_both_ends_of_the_supported_dates(
    first: date, last: date, granularity: str, first_weekday: int
) -> None:
    buckets = make_buckets(first, last, granularity, first_weekday)
    assert (buckets[0].start, buckets[-1].end) == (first, last)
