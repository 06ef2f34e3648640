"""The rollup lattice: coarser stored levels, each a plain sum of the day rows.

Every level is derived from `usage_daily` (org, agent, day) a whole month at a time, in the
same write that replaces the month's days, never moved by differences: a level cannot drift
from the days it sums. Readers take the coarsest level that answers a query exactly.
"""

from collections.abc import Iterable
from dataclasses import dataclass

from etl.db import USAGE_MONTHLY, USAGE_ORG_DAILY, USAGE_ORG_MONTHLY, Doc

MEASURES = ("conversations", "messages", "handoffs")


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
    """The rows of `level` that the day rows sum to."""
    sums: dict[tuple[str, ...], Doc] = {}
    for row in rows:
        key = level.key(row)
        into = sums.get(key)
        if into is None:
            into = {"_id": ":".join(key), "org_id": row["org_id"]}
            if level.by_agent:
                into["agent_id"] = row["agent_id"]
            into[level.period] = key[-1]
            into.update(dict.fromkeys(MEASURES, 0))
            sums[key] = into
        for name in MEASURES:
            into[name] += row[name]
    return sorted(sums.values(), key=lambda row: row["_id"])
