"""The cold platform view's read path at 10,000 organizations, without the backfill.

Writes six months of organization rows (the long tail of `tests/bench/large.py`: most
organizations with a few conversations a month and a handful of visitors, some hundreds with
tens, a few heavy ones with hundreds) and their platform level straight into a rollup on the
embedded server, then times the first page of the six-month platform view as the dashboard
asks it (50 rows), computed cold: the served state read again, nothing cached. The same for
200 organizations gives the ratio, and the view read from the organization rows (as before
the platform level) is timed once for comparison.

Run with `python -m tests.bench.platform_read`. Prints each figure; exits 1 when the cold
view is over 300 ms or over 3 times the small one.
"""

import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path

from bson import Binary

from api.auth import Principal
from api.usage import UsageQuery, UsageService, resolve_query
from etl import ledger, platform, sketches
from etl.db import Databases, connect
from etl.definition import of_settings
from etl.settings import Settings
from tests.bench import large
from tests.drills.conftest import ServerProcess

MONTHS = ["2026-05", "2026-06", "2026-07", "2026-08", "2026-09", "2026-10"]
TODAY = date(2026, 11, 15)
RUNS = 7


def org_rows(organizations: int, seed: int = 3) -> list[dict[str, object]]:
    """Organization-month rows of the long tail, each with its users' sketch."""
    rng = random.Random(seed)
    spec = large.LargeSpec(organizations=organizations, heavy=max(1, organizations // 500))
    rows = []
    for n in range(organizations):
        tier = large.tier_of(n, replace(spec, mid=organizations // 20))
        org = f"{n + 1:024x}"
        for month in MONTHS:
            conversations = max(0, round(rng.uniform(*tier.per_month)) - rng.randrange(2))
            if not conversations:
                continue
            pool = max(1, round(conversations * tier.leads_per_conversation * 3))
            users = sorted({f"{org}-{rng.randrange(pool)}" for _ in range(conversations)})
            rows.append(
                {
                    "_id": f"{org}:{month}",
                    "org_id": org,
                    "month": month,
                    "conversations": conversations,
                    "messages": conversations * rng.randint(3, 9),
                    "handoffs": conversations // 8,
                    "users": len(users),
                    "users_hll": Binary(sketches.of_ids(users)),
                }
            )
    return rows


def load(dbs: Databases, rows: list[dict[str, object]]) -> None:
    ledger.adopt(dbs, of_settings(dbs.settings))
    dbs.level("usage_org_monthly").insert_many(rows)
    for month in MONTHS:
        members = [row for row in rows if row["month"] == month]
        dbs.level("usage_platform").insert_many(
            platform.chunks(platform.Period("month", month), members)
        )
    days = [date(2026, 5, 1).fromordinal(date(2026, 5, 1).toordinal() + n) for n in range(184)]
    stamp = {"run_id": None, "kind": "backfill", "read_started": datetime(2026, 11, 1)}
    ledger.stamp_days(dbs, 1, days, {**stamp, "fingerprint": of_settings(dbs.settings).fingerprint})


def first_page(settings: Settings) -> UsageQuery:
    return resolve_query(
        scope="platform",
        org_id=None,
        agent_id=None,
        start=None,
        end=None,
        granularity="auto",
        include_internal=False,
        principal=Principal("bench", "bench", None),
        today=TODAY,
        settings=settings,
        limit=50,
    )


def cold_ms(dbs: Databases, query: UsageQuery, platform_level: bool = True) -> float:
    times = []
    for _ in range(RUNS if platform_level else 1):
        started = time.perf_counter()
        service = UsageService(dbs, 0)
        served = service.served()
        if not platform_level:
            served = replace(served, platform=False)
        json.dumps(service.report(query, served))
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def measure(uri: str, name: str, organizations: int) -> tuple[float, float, float]:
    settings = Settings(_env_file=None, mongodb_uri=uri, rollup_db=name)  # type: ignore[call-arg]
    dbs = connect(settings, uri)
    rows = org_rows(organizations)
    started = time.perf_counter()
    load(dbs, rows)
    print(
        f"{organizations} organizations: {len(rows)} organization-month rows written in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )
    query = first_page(settings)
    body = json.dumps(UsageService(dbs, 0).report(query)).encode()
    fast = cold_ms(dbs, query)
    slow = cold_ms(dbs, query, platform_level=False)
    print(
        f"{organizations} organizations: cold first page {fast:.0f} ms (median of {RUNS}), "
        f"{slow:.0f} ms from the organization rows, body {len(body) / 1024:.0f} KB",
        flush=True,
    )
    return fast, slow, len(body) / 1024


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="usage-platform-read-") as tmp:
        server = ServerProcess(Path(tmp) / "db")
        server.start()
        try:
            small = measure(server.uri, "small", 200)[0]
            big, _, kb = measure(server.uri, "big", 10_000)
        finally:
            server.stop()
    ratio = big / small
    print(f"cold first page, 10,000 / 200 organizations: {ratio:.2f}")
    ok = big <= 300 and ratio <= 3 and kb <= 150
    print("PASS" if ok else "SHORT: targets are <= 300 ms, <= 3x, <= 150 KB", flush=True)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
