"""Is the rollup fresh? The check behind `usage status --check`, for cron, Nagios or a probe."""

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from pymongo import DESCENDING

from etl import runs
from etl.db import Databases, Doc
from etl.source import day_start_utc

# With the nightly run at 02:15, the data is at most about 26 hours old; 36 leaves it ten
# hours to be late before the check fails.
DEFAULT_MAX_LAG_HOURS = 36.0


def last_nightly(dbs: Databases) -> Doc | None:
    """The newest nightly run that has ended, well or not; one still running is not judged."""
    return dbs.rollup[runs.RUNS].find_one(
        {"kind": "nightly", "status": {"$ne": runs.RUNNING}}, sort=[("started_at", DESCENDING)]
    )


def verdict(
    last: Doc | None, through: date | None, now: datetime, zone: ZoneInfo, max_lag: timedelta
) -> tuple[bool, str]:
    """(fresh, one line saying why) from the last nightly run and data_through at `now`."""
    if last is None:
        return False, "never ran: no nightly run has ended yet"
    if last.get("status") != runs.OK:
        started = last.get("started_at")
        when = f" (started {started:%Y-%m-%d %H:%M} UTC)" if isinstance(started, datetime) else ""
        reason = " ".join(str(last.get("error") or "no error recorded").split())
        return False, f"last nightly failed: it ended {last.get('status')}{when}: {reason}"
    if through is None:
        return False, "never ran: no nightly run has completed a day"
    # The data is complete up to the end of `through` in the reporting timezone.
    age = now - day_start_utc(through + timedelta(days=1), zone)
    hours = age.total_seconds() / 3600
    limit = max_lag.total_seconds() / 3600
    if age > max_lag:
        return False, f"stale since {through}: the data is {hours:.1f} hours old, over {limit:g}"
    return True, f"ok: data through {through}, {hours:.1f} hours old, at most {limit:g}"


def check(dbs: Databases, now: datetime, max_lag: timedelta) -> tuple[bool, str]:
    """The verdict on the rollup in `dbs` at `now`."""
    return verdict(
        last_nightly(dbs), runs.data_through(dbs.rollup), now, dbs.settings.zone, max_lag
    )
