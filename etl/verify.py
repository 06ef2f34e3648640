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
