"""Job functions for the scheduler; `jobs.toml` names them as "module:function"."""

from datetime import UTC, date, datetime, timedelta

from etl import rollup, verify
from etl.db import open_databases
from etl.settings import get_settings


def utcnow() -> datetime:
    """The clock: naive UTC, as BSON dates are."""
    return datetime.now(UTC).replace(tzinfo=None)


def nightly_rollup() -> None:
    """Recompute the lookback window, missed nights and changed older days."""
    with open_databases(get_settings()) as dbs:
        rollup.run_nightly(dbs, utcnow(), utcnow)


def weekly_repair(days: int = 90) -> None:
    """Verify the last `days` days against the source and recompute the drifted ones."""
    settings = get_settings()
    with open_databases(settings) as dbs:
        now = utcnow()
        today = rollup.local_today(now, settings)
        first: date = today - timedelta(days=days)
        drift = verify.find_drift(dbs, first, today)
        if drift:
            rollup.run_repair(dbs, verify.drifted_days(drift), now, utcnow)
        verify.rebuild_months(dbs, verify.find_month_drift(dbs, first, today))
