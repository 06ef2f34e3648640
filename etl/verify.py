"""Recount a range from the source and compare it with `usage_daily`."""

from dataclasses import dataclass
from datetime import date

from etl import rollup
from etl.db import Databases, Doc


@dataclass(frozen=True)
class Drift:
    day: str
    org_id: str
    agent_id: str
    expected: dict[str, int]
    stored: dict[str, int]

    def describe(self) -> str:
        def fmt(values: dict[str, int]) -> str:
            if not values:
                return "no row"
            return " ".join(f"{name}={values[name]}" for name in rollup.MEASURES)

        return (
            f"{self.day} org {self.org_id} agent {self.agent_id}: "
            f"source {fmt(self.expected)}, rollup {fmt(self.stored)}"
        )


def measures(row: Doc | None) -> dict[str, int]:
    return {name: int(row[name]) for name in rollup.MEASURES} if row else {}


def find_drift(dbs: Databases, first: date, last: date) -> list[Drift]:
    """Every (org, agent, day) of first..last whose stored measures differ from the source."""
    drift: list[Drift] = []
    usage = dbs.usage_daily()
    for start, end in rollup.batches(rollup.day_range(first, last)):
        by_day, _ = rollup.fetch_rows(dbs, start, end)
        expected = {row["_id"]: row for rows in by_day.values() for row in rows}
        stored = {
            row["_id"]: row
            for row in usage.find({"day": {"$gte": start.isoformat(), "$lte": end.isoformat()}})
        }
        for key in sorted(expected.keys() | stored.keys()):
            want, have = measures(expected.get(key)), measures(stored.get(key))
            if want != have:
                row = expected.get(key) or stored[key]
                drift.append(Drift(row["day"], row["org_id"], row["agent_id"], want, have))
    return drift


def drifted_days(drift: list[Drift]) -> list[date]:
    return sorted({date.fromisoformat(item.day) for item in drift})


def monthly_from_daily(dbs: Databases, months: list[str]) -> dict[str, Doc]:
    """`usage_monthly` as it should be for `months`, summed from `usage_daily`."""
    pipeline: list[Doc] = [
        {"$match": {"day": {"$gte": f"{months[0]}-01", "$lte": f"{months[-1]}-31"}}},
        {
            "$group": {
                "_id": {
                    "org": "$org_id",
                    "agent": "$agent_id",
                    "month": {"$substrBytes": ["$day", 0, 7]},
                },
                **{name: {"$sum": f"${name}"} for name in rollup.MEASURES},
            }
        },
    ]
    expected = {}
    for group in dbs.usage_daily().aggregate(pipeline, allowDiskUse=True):
        key = group["_id"]
        row_id = rollup.row_id(key["org"], key["agent"], key["month"])
        expected[row_id] = {
            "_id": row_id,
            "org_id": key["org"],
            "agent_id": key["agent"],
            "month": key["month"],
            **measures(group),
        }
    return expected


def months_of(first: date, last: date) -> list[str]:
    return sorted({day.isoformat()[:7] for day in rollup.day_range(first, last)})


def find_month_drift(dbs: Databases, first: date, last: date) -> list[str]:
    """Months touching first..last whose `usage_monthly` rows differ from the daily sums."""
    months = months_of(first, last)
    expected = monthly_from_daily(dbs, months)
    stored = {row["_id"]: row for row in dbs.usage_monthly().find({"month": {"$in": months}})}
    drifted = {
        (expected.get(key) or stored[key])["month"]
        for key in expected.keys() | stored.keys()
        if measures(expected.get(key)) != measures(stored.get(key))
    }
    return sorted(drifted)


def rebuild_months(dbs: Databases, months: list[str]) -> None:
    """Rewrite `usage_monthly` for `months` from the daily rows."""
    if not months:
        return
    expected = monthly_from_daily(dbs, months)
    monthly = dbs.usage_monthly()
    monthly.delete_many({"month": {"$in": months}})
    if expected:
        monthly.insert_many(list(expected.values()))
