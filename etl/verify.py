"""Recount a range from the source and compare it with the served rollup, at every level."""

from dataclasses import dataclass
from datetime import date

from etl import lattice, ledger, platform, rollup, sketches
from etl.db import USAGE_PLATFORM, Databases, Doc

# What verify compares: the additive measures and the distinct users.
COMPARED = (*rollup.MEASURES, lattice.USERS)


@dataclass(frozen=True)
class Drift:
    day: str
    org_id: str
    agent_id: str
    expected: dict[str, int]
    stored: dict[str, int]
    # The measures agree, but the stored sketch is not the one of the users counted.
    sketch_differs: bool = False
    # The stored sketch cannot be read at all (see `sketches.read`).
    unreadable: bool = False

    def describe(self) -> str:
        def fmt(values: dict[str, int]) -> str:
            if not values:
                return "no row"
            return " ".join(f"{name}={values[name]}" for name in COMPARED)

        sketch = "; the users' sketch differs" if self.sketch_differs else ""
        if self.unreadable:
            sketch = "; the users' sketch is damaged"
        return (
            f"{self.day} org {self.org_id} agent {self.agent_id}: "
            f"source {fmt(self.expected)}, rollup {fmt(self.stored)}{sketch}"
        )


def measures(row: Doc | None) -> dict[str, int]:
    """A row's compared figures; a row stored without users reads as -1 users, so it differs
    from any recount."""
    if not row:
        return {}
    return {name: int(row.get(name, -1)) for name in COMPARED}


def sketch_of(row: Doc | None) -> bytes:
    return bytes(row.get(lattice.USERS_HLL) or b"") if row else b""


def same(expected: Doc | None, stored: Doc | None) -> bool:
    return measures(expected) == measures(stored) and sketch_of(expected) == sketch_of(stored)


def readable(row: Doc | None) -> bool:
    blob = sketch_of(row)
    try:
        if blob:
            sketches.read(blob)
    except sketches.UnreadableSketch:
        return False
    return True


def served_generation(dbs: Databases) -> int:
    state = ledger.read_state(dbs.rollup)
    return state.generation if state else 1


def has_platform_level(dbs: Databases, generation: int) -> bool:
    """Whether `generation` keeps the platform level: every generation does but a served one
    from before it existed."""
    state = ledger.read_state(dbs.rollup)
    if state is None:
        return True
    if state.pending is not None and state.pending.generation == generation:
        return state.pending.platform
    return state.generation != generation or state.platform


def platform_drifted(dbs: Databases, generation: int, month: str, rows: list[Doc]) -> bool:
    """Whether the platform level's days and month of `month` differ from the organization
    rows that the day rows derive."""

    def keyed(level_rows: list[Doc]) -> dict[tuple[str, str, str], Doc]:
        keys = (platform.period_of(row) for row in level_rows)
        return {
            (p.kind, p.key, row["org_id"]): row for p, row in zip(keys, level_rows, strict=True)
        }

    expected = keyed(
        lattice.summarize(rows, lattice.ORG_DAILY) + lattice.summarize(rows, lattice.ORG_MONTHLY)
    )
    within = {"period": {"$in": ["day", "month"]}, "key": {"$gte": month, "$lte": f"{month}-31"}}
    try:
        found = platform.rows_of(dbs.level(USAGE_PLATFORM, generation).find(within))
    except platform.UnreadableDocument:
        return True  # what this version cannot read, it cannot serve
    stored = keyed(found)
    if len(stored) != len(found):  # an organization twice in a period
        return True
    return any(
        not same(expected.get(key), stored.get(key)) for key in expected.keys() | stored.keys()
    )


def uncovered_days(dbs: Databases, first: date, last: date, generation: int) -> list[date]:
    """Days of first..last that were never computed: verify has nothing to compare there."""
    covered = set(ledger.covered_days(dbs, generation))
    return [day for day in rollup.day_range(first, last) if day not in covered]


def find_drift(
    dbs: Databases, first: date, last: date, generation: int | None = None
) -> list[Drift]:
    """Every (org, agent, day) of the computed days of first..last whose stored measures
    differ from the source."""
    generation = served_generation(dbs) if generation is None else generation
    skip = set(uncovered_days(dbs, first, last, generation))
    days = [day for day in rollup.day_range(first, last) if day not in skip]
    drift: list[Drift] = []
    usage = dbs.usage_daily(generation)
    for start, end in rollup.batches(days):
        by_day, _ = rollup.fetch_rows(dbs, start, end)
        expected = {row["_id"]: row for rows in by_day.values() for row in rows}
        stored = {
            row["_id"]: row
            for row in usage.find({"day": {"$gte": start.isoformat(), "$lte": end.isoformat()}})
        }
        for key in sorted(expected.keys() | stored.keys()):
            if not same(expected.get(key), stored.get(key)):
                want, have = measures(expected.get(key)), measures(stored.get(key))
                row = expected.get(key) or stored[key]
                damaged = not readable(stored.get(key))
                where = (row["day"], row["org_id"], row["agent_id"])
                drift.append(Drift(*where, want, have, want == have, damaged))
    return drift


def drifted_days(drift: list[Drift]) -> list[date]:
    return sorted({date.fromisoformat(item.day) for item in drift})


def damaged_days(dbs: Databases, generation: int, months: list[str]) -> list[date]:
    """The days of `months` with a day row whose sketch cannot be read, in or out of the
    range verified: its month cannot be derived until they are recomputed."""
    daily = dbs.usage_daily(generation)
    fields = {"day": 1, lattice.USERS_HLL: 1}
    found = (row for month in months for row in daily.find(rollup.month_filter(month), fields))
    return sorted({date.fromisoformat(row["day"]) for row in found if not readable(row)})


def repair_days(drift: list[Drift], damaged: list[date]) -> list[date]:
    """The days a repair recomputes: the drifted days, the `damaged` ones (`damaged_days`
    of the drifted months, which holds the month of any drift whose sketch is damaged) and,
    in a month with a damaged day row, every day from its first such day to its last.
    Writing days derives their month from all its day rows, so no damaged one may be left
    for a later batch: a month's run of days is one batch (`rollup.batches`)."""
    days = set(drifted_days(drift)) | set(damaged)
    for month in {day.isoformat()[:7] for day in damaged}:
        of_month = sorted(day for day in days if day.isoformat()[:7] == month)
        days.update(rollup.day_range(of_month[0], of_month[-1]))
    return sorted(days)


def months_of(first: date, last: date) -> list[str]:
    return sorted({day.isoformat()[:7] for day in rollup.day_range(first, last)})


def find_month_drift(
    dbs: Databases, first: date, last: date, generation: int | None = None
) -> list[str]:
    """Months touching first..last where any coarser level (monthly, organization by day
    or by month, the platform's) differs from what the day rows derive: their sums, their
    users' union."""
    generation = served_generation(dbs) if generation is None else generation
    daily = dbs.usage_daily(generation)
    with_platform = has_platform_level(dbs, generation)
    stale = set(rollup.stale_months(dbs, generation))
    drifted = []
    for month in months_of(first, last):
        if month in stale:  # left behind by a run cut short: its levels by month lag
            drifted.append(month)
            continue
        rows = list(daily.find(rollup.month_filter(month)))
        try:
            if levels_drifted(dbs, generation, month, rows, with_platform):
                drifted.append(month)
        except sketches.UnreadableSketch:
            drifted.append(month)  # a day row's sketch: its day differs from the source too
    return drifted


def levels_drifted(
    dbs: Databases, generation: int, month: str, rows: list[Doc], with_platform: bool
) -> bool:
    """Whether a level of `month` differs from what its day rows, `rows`, derive."""
    if with_platform and platform_drifted(dbs, generation, month, rows):
        return True
    for level in lattice.LEVELS:
        expected = {row["_id"]: row for row in lattice.summarize(rows, level)}
        found = dbs.level(level.collection, generation).find(level.of_month(month))
        stored = {row["_id"]: row for row in found}
        if any(
            not same(expected.get(key), stored.get(key)) for key in expected.keys() | stored.keys()
        ):
            return True
    return False
