"""The largest day replaced in one transaction: one day of `--groups` (organization, agent)
groups, backfilled on the embedded server, and replaced again with every group changed.

Run with `python -m tests.bench.big_day [--groups N]`. Prints the rows of the day, how long each
replacement took (one transaction: the day rows, every level of the month and the platform
level), and whether the stored levels equal counts made here from the documents. Exits 1 when
a run fails or a figure differs.
"""

import argparse
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

from bson import ObjectId

from etl import platform, runner
from etl.db import Databases, connect
from etl.settings import EMBEDDED_CACHE, Settings
from tests.drills.conftest import ServerProcess

DAY = datetime(2026, 9, 15)
AGENTS = 2  # groups per organization


def documents(groups: int, depth: int) -> list[dict[str, object]]:
    """One billable conversation per group, `depth` messages each."""
    docs = []
    for n in range(groups):
        org = ObjectId(f"{n // AGENTS:024x}")
        bot = f"{n:024x}"
        created = DAY + timedelta(seconds=n % 86400)
        docs.append(
            {
                "id_organization": org,
                "status": 1000,
                "depth": depth,
                "attributes": {"bot_id": bot},
                "lead": f"{org}-{n % 3}",
                "createdAt": created,
                "updatedAt": created + timedelta(hours=1),
            }
        )
    return docs


def replace_day(dbs: Databases, now: datetime) -> float:
    started = time.perf_counter()
    result = runner.run_backfill(dbs, DAY.date(), DAY.date(), now, lambda: now)
    elapsed = time.perf_counter() - started
    print(
        f"replaced {result.stats.rows_written} day rows "
        f"({result.stats.rows_removed} removed) in {elapsed:.1f} s",
        flush=True,
    )
    return elapsed


def check(dbs: Databases, groups: int, depth: int) -> bool:
    """The stored totals against the documents' own: every level and the platform level."""
    month = DAY.strftime("%Y-%m")
    want = {"conversations": groups, "messages": groups * depth}
    found = {
        "usage_daily": dbs.level("usage_daily").find({"day": DAY.date().isoformat()}),
        "usage_monthly": dbs.level("usage_monthly").find({"month": month}),
        "usage_org_daily": dbs.level("usage_org_daily").find({"day": DAY.date().isoformat()}),
        "usage_org_monthly": dbs.level("usage_org_monthly").find({"month": month}),
    }
    ok = True
    for name, rows in found.items():
        have = {"conversations": 0, "messages": 0}
        for row in rows:
            have["conversations"] += row["conversations"]
            have["messages"] += row["messages"]
        ok &= have == want
        print(f"{name:<20} {have}", flush=True)
    for period in ("day", "month"):
        have = {"conversations": 0, "messages": 0}
        for doc in map(platform.unpack, dbs.level("usage_platform").find({"period": period})):
            have["conversations"] += sum(doc["conversations"])
            have["messages"] += sum(doc["messages"])
        ok &= have == want
        print(f"usage_platform {period:<6} {have}", flush=True)
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--groups", type=int, default=100_000)
    parser.add_argument("--cache", default=EMBEDDED_CACHE, help="the server's cache, e.g. 4G")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="usage-big-day-") as tmp:
        server = ServerProcess(Path(tmp) / "db", args.cache)
        server.start()
        try:
            settings = Settings(_env_file=None, mongodb_uri=server.uri, source_db="big")  # type: ignore[call-arg]
            dbs = connect(settings, server.uri)
            now = DAY + timedelta(days=20)
            started = time.perf_counter()
            dbs.requests().insert_many(documents(args.groups, 3), ordered=False)
            print(f"loaded {args.groups} requests in {time.perf_counter() - started:.1f} s")
            first = replace_day(dbs, now)
            ok = check(dbs, args.groups, 3)
            dbs.requests().update_many({}, {"$set": {"depth": 4}})
            again = replace_day(dbs, now + timedelta(hours=1))
            ok &= check(dbs, args.groups, 4)
            print(f"largest day: {args.groups} groups, {first:.1f} s then {again:.1f} s")
            print("figures agree" if ok else "FIGURES DIFFER", flush=True)
            if not ok:
                sys.exit(1)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
