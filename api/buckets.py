"""Pure date logic: ranges, granularity, bucket keys and labels."""

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

Scope = Literal["platform", "org", "agent"]
Granularity = Literal["day", "week", "month"]
GranularityChoice = Literal["auto", "day", "week", "month"]

EN_DASH = " – "


@dataclass(frozen=True)
class Bucket:
    key: str
    label: str
    start: date
    end: date
    partial: bool


def range_days(first: date, last: date) -> int:
    return (last - first).days + 1


def auto_granularity(first: date, last: date) -> Granularity:
    """More than 31 days: monthly; 8 to 31: weekly; 7 or fewer: daily."""
    days = range_days(first, last)
    if days > 31:
        return "month"
    if days >= 8:
        return "week"
    return "day"


def resolve_granularity(choice: GranularityChoice, first: date, last: date) -> Granularity:
    return auto_granularity(first, last) if choice == "auto" else choice


def month_start(day: date) -> date:
    return day.replace(day=1)


def add_months(day: date, months: int) -> date:
    """The first of the month `months` after day's month."""
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def month_end(day: date) -> date:
    return add_months(day, 1) - timedelta(days=1)


def week_start(day: date, first_weekday: int) -> date:
    """The start of day's week, weeks starting on `first_weekday` (Monday 0)."""
    return day - timedelta(days=(day.weekday() - first_weekday) % 7)


def default_range(scope: Scope, today: date) -> tuple[date, date]:
    """Platform: the six full months before this one. Org and agent: the last 30 days."""
    if scope == "platform":
        this_month = month_start(today)
        return add_months(this_month, -6), this_month - timedelta(days=1)
    return today - timedelta(days=29), today


def bucket_bounds(day: date, granularity: Granularity, first_weekday: int) -> tuple[date, date]:
    """The whole (unclipped) bucket containing day."""
    if granularity == "day":
        return day, day
    if granularity == "week":
        start = week_start(day, first_weekday)
        return start, start + timedelta(days=6)
    return month_start(day), month_end(day)


def bucket_key(day: date, granularity: Granularity, first_weekday: int) -> str:
    start, _ = bucket_bounds(day, granularity, first_weekday)
    if granularity == "month":
        return f"{start:%Y-%m}"
    if granularity == "week":
        return f"W{start.isoformat()}"
    return start.isoformat()


def short_day(day: date) -> str:
    return f"{day:%b} {day.day}"


def label(start: date, end: date, granularity: Granularity) -> str:
    if granularity == "day":
        return short_day(start)
    if granularity == "month":
        return f"{start:%b %Y}"
    if start == end:  # a week clipped to one day
        return short_day(start)
    if start.month == end.month and start.year == end.year:
        return f"{short_day(start)}{EN_DASH}{end.day}"
    return f"{short_day(start)}{EN_DASH}{short_day(end)}"


def make_buckets(
    first: date, last: date, granularity: Granularity, first_weekday: int
) -> list[Bucket]:
    """Every bucket of first..last, clipped to the range; clipped ones are partial."""
    buckets = []
    day = first
    while day <= last:
        whole_start, whole_end = bucket_bounds(day, granularity, first_weekday)
        start, end = max(whole_start, first), min(whole_end, last)
        partial = (start, end) != (whole_start, whole_end)
        buckets.append(
            Bucket(
                key=bucket_key(day, granularity, first_weekday),
                label=label(start, end, granularity),
                start=start,
                end=end,
                partial=partial,
            )
        )
        day = end + timedelta(days=1)
    return buckets


def is_whole_months(first: date, last: date) -> bool:
    """Whether first..last runs from the 1st of a month to the last day of a month."""
    return first == month_start(first) and last == month_end(last)


def period_bucket(start: date, end: date, granularity: Granularity, first_weekday: int) -> Bucket:
    """The bucket start..end, keyed and labelled as a calendar bucket when it is a whole one,
    otherwise by its dates (partial)."""
    whole = bucket_bounds(start, granularity, first_weekday) == (start, end)
    if whole:
        return Bucket(
            bucket_key(start, granularity, first_weekday),
            label(start, end, granularity),
            start,
            end,
            False,
        )
    text = label(start, end, "week") if granularity == "month" else label(start, end, granularity)
    return Bucket(f"{start.isoformat()}..{end.isoformat()}", text, start, end, True)


def previous_buckets(
    buckets: list[Bucket], granularity: Granularity, first_weekday: int
) -> list[Bucket]:
    """The previous period, a bucket for each of `buckets` (contiguous, in order).

    Whole calendar months by month: as many whole months just before, month i shifted back.
    Otherwise every bucket is moved back by the range's length in days, keeping its length.
    Raises OverflowError when the previous period would start before the calendar does.
    """
    first, last = buckets[0].start, buckets[-1].end
    if granularity == "month" and is_whole_months(first, last):
        months = len(buckets)
        starts = [add_months(bucket.start, -months) for bucket in buckets]
        return [period_bucket(start, month_end(start), "month", first_weekday) for start in starts]
    shift = timedelta(days=range_days(first, last))
    return [
        period_bucket(bucket.start - shift, bucket.end - shift, granularity, first_weekday)
        for bucket in buckets
    ]


def previous_range(first: date, last: date, granularity: Granularity) -> tuple[date, date]:
    """The previous period of first..last, as `previous_buckets` divides it."""
    if granularity == "month" and is_whole_months(first, last):
        months = (last.year - first.year) * 12 + last.month - first.month + 1
        return add_months(first, -months), first - timedelta(days=1)
    return first - timedelta(days=range_days(first, last)), first - timedelta(days=1)
