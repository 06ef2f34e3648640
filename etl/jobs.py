"""Job functions for the scheduler; `jobs.toml` names them as "module:function"."""

from datetime import UTC, datetime, timedelta

from etl import rollup, runner
from etl.db import open_databases
from etl.settings import get_settings


def utcnow() -> datetime:
    """The clock: naive UTC, as BSON dates are."""
    return datetime.now(UTC).replace(tzinfo=None)


def nightly_rollup() -> None:
    """Recompute the lookback window, missed nights and changed older days."""
    with open_databases(get_settings()) as dbs:
        runner.run_nightly(dbs, dbs.server_time(), dbs.server_time)


def weekly_repair(days: int = 90) -> None:
    """Verify the last `days` days against the source and repair what drifted."""
    settings = get_settings()
    with open_databases(settings) as dbs:
        now = dbs.server_time()
        today = rollup.local_today(now, settings)
        first = today - timedelta(days=days)
        runner.verify_range(dbs, first, today, now, dbs.server_time, repair=True)
