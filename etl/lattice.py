"""The rollup lattice: coarser stored levels, each derived from the day rows.

Every level is derived from `usage_daily` (org, agent, day) a whole month at a time, in the
same write that replaces the month's days, never moved by differences: a level cannot drift
from the days it covers. Its additive measures are the sums of the day rows'; its users are
the union of their sketches (an estimate, never a sum: a person on two days is one user).
Readers take the coarsest level that answers a query exactly.
"""

from collections.abc import Iterable
from dataclasses import dataclass

from bson import Binary

from etl import sketches
from etl.db import USAGE_MONTHLY, USAGE_ORG_DAILY, USAGE_ORG_MONTHLY, Doc

MEASURES = ("conversations", "messages", "handoffs")
# Distinct end users: exact in a day row, the union's estimate in a level; and the sketch.
USERS = "users"
USERS_HLL = "users_hll"


@dataclass(frozen=True)
class Level:
    collection: str
    by_agent: bool
    period: str  # "day" or "month": the field, and how long a row's period is

    def key(self, row: Doc) -> tuple[str, ...]:
        period = row["day"] if self.period == "day" else row["day"][:7]
        return (
            (row["org_id"], row["agent_id"], period) if self.by_agent else (row["org_id"], period)
        )

    def ids_of(self, orgs: Iterable[str], periods: Iterable[str]) -> list[str]:
        """The `_id`s of the rows `orgs` would have in `periods` (days or months) of a level
        without agents: its rows' ids are their keys (see `summarize`), one per organization
        and period, so these name every row of theirs that can exist."""
        assert not self.by_agent, "a level by agent has no row id without its agents"
        return [":".join((org, period)) for org in sorted(orgs) for period in sorted(periods)]

    def of_month(self, month: str) -> Doc:
        """The filter selecting this level's rows of a month."""
        if self.period == "month":
            return {"month": month}
        return {"day": {"$gte": f"{month}-01", "$lte": f"{month}-31"}}


MONTHLY = Level(USAGE_MONTHLY, by_agent=True, period="month")
ORG_DAILY = Level(USAGE_ORG_DAILY, by_agent=False, period="day")
ORG_MONTHLY = Level(USAGE_ORG_MONTHLY, by_agent=False, period="month")
LEVELS = (MONTHLY, ORG_DAILY, ORG_MONTHLY)


def summarize(rows: Iterable[Doc], level: Level) -> list[Doc]:
    """The rows of `level` that the day rows sum to, with the union of their users.

    Sketches are merged in the day rows' `_id` order, whatever order they were read in, so
    deriving again from the same rows gives the same bytes.
    """
    sums: dict[tuple[str, ...], Doc] = {}
    unions: dict[tuple[str, ...], sketches.Union] = {}
    for row in sorted(rows, key=lambda row: str(row["_id"])):
        key = level.key(row)
        into = sums.get(key)
        if into is None:
            into = {"_id": ":".join(key), "org_id": row["org_id"]}
            if level.by_agent:
                into["agent_id"] = row["agent_id"]
            into[level.period] = key[-1]
            into.update(dict.fromkeys(MEASURES, 0))
            sums[key] = into
            unions[key] = sketches.Union()
        for name in MEASURES:
            into[name] += row[name]
        try:
            unions[key].add(row.get(USERS_HLL))
        except sketches.UnreadableSketch:
            blob, of = row[USERS_HLL], f"the users sketch of {row['_id']}"
            raise sketches.UnreadableSketch(blob, of, row.get("day")) from None
    for key, into in sums.items():
        users = unions[key]
        into[USERS] = users.estimate().value if not users.empty else 0
        if not users.empty:
            into[USERS_HLL] = Binary(users.sketch())
    return sorted(sums.values(), key=lambda row: row["_id"])
