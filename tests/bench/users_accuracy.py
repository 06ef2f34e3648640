"""How far the stored users of a month are from the true distinct count.

Builds months of day rows as the rollup stores them (`rollup.users_fields`: exact count and
sketch per day), derives the organization's month as the lattice does (`lattice.summarize`),
and compares its `users` with the number of distinct people who came, known here. People
come back on several days of the month, as they do. Prints, per size band and over all
buckets, the median and the worst relative error, the 95th percentile and the share of
buckets whose true count lies within the stored 95 % bounds.

    .venv/bin/python -m tests.bench.users_accuracy [--buckets 300] [--seed 1]
"""

import argparse
import random
import statistics
from dataclasses import dataclass

from etl import lattice, rollup, sketches
from etl.db import Doc

# Distinct people per month, from list and set mode (exact) through the transition to
# HyperLogLog (lg_k 12: 4,096 registers) to well past it.
BANDS = [(100, 600), (1_000, 3_000), (3_000, 10_000), (10_000, 40_000)]
DAYS = 30


@dataclass(frozen=True)
class Outcome:
    distinct: int
    users: int
    inside: bool

    @property
    def error(self) -> float:
        return abs(self.users - self.distinct) / self.distinct


def month_of(rng: random.Random, bucket: int, distinct: int) -> Outcome:
    """One organization's month: `distinct` people, each on one or more of its days."""
    days: list[list[str]] = [[] for _ in range(DAYS)]
    for person in range(distinct):
        user = f"{bucket}:{person}"
        visits = min(DAYS, 1 + int(rng.expovariate(0.5)))
        for day in rng.sample(range(DAYS), visits):
            days[day].append(user)
    rows: list[Doc] = []
    for day, users in enumerate(days):
        label = f"2026-10-{day + 1:02d}"
        rows.append(
            {
                "_id": rollup.row_id("org", "agent", label),
                "org_id": "org",
                "agent_id": "agent",
                "day": label,
                "conversations": len(users),
                "messages": 0,
                "handoffs": 0,
                **rollup.users_fields(users),
            }
        )
    (month,) = lattice.summarize(rows, lattice.ORG_MONTHLY)
    ordered = sorted(rows, key=lambda row: str(row["_id"]))
    bounds = sketches.union(row.get(lattice.USERS_HLL) for row in ordered).estimate()
    assert bounds.value == month[lattice.USERS]
    return Outcome(distinct, month[lattice.USERS], bounds.low <= distinct <= bounds.high)


def describe(name: str, outcomes: list[Outcome]) -> str:
    errors = sorted(outcome.error for outcome in outcomes)
    inside = sum(outcome.inside for outcome in outcomes) / len(outcomes)
    return (
        f"{name:>16}  {len(outcomes):>7}  {statistics.median(errors):>7.2%}  "
        f"{errors[int(0.95 * (len(errors) - 1))]:>7.2%}  {errors[-1]:>7.2%}  {inside:>7.1%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buckets", type=int, default=300, help="months per size band")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    print(f"lg_k {sketches.LG_K}, {DAYS} day sketches per month, seed {args.seed}")
    columns = ("buckets", "median", "p95", "worst")
    print(f"{'distinct users':>16}  " + "  ".join(f"{name:>7}" for name in columns) + "  inside")
    every: list[Outcome] = []
    estimated: list[Outcome] = []
    bucket = 0
    for low, high in BANDS:
        outcomes = []
        for _ in range(args.buckets):
            outcomes.append(month_of(rng, bucket, rng.randint(low, high)))
            bucket += 1
        print(describe(f"{low:,}-{high:,}", outcomes), flush=True)
        every += outcomes
        if low >= 1_000:
            estimated += outcomes
    print(describe("1,000 and more", estimated))
    print(describe("all", every))


if __name__ == "__main__":
    main()
