"""The freshness check: the last nightly run and how old the data is, at a given time."""

from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from etl import runner
from etl.db import Databases
from etl.freshness import check, verdict

UTC, ROME = ZoneInfo("UTC"), ZoneInfo("Europe/Rome")
LIMIT = timedelta(hours=36)


def nightly(status: str = "ok", **fields: Any) -> dict[str, Any]:
    started = datetime(2026, 11, 25, 2, 15)
    return {"kind": "nightly", "status": status, "started_at": started, **fields}


@pytest.mark.parametrize(
    ("last", "through", "now", "zone", "fresh", "starts"),
    [
        (None, None, datetime(2026, 11, 25, 3), UTC, False, "never ran"),
        (nightly("failed"), None, datetime(2026, 11, 25, 3), UTC, False, "last nightly failed"),
        (nightly("abandoned"), date(2026, 11, 23), datetime(2026, 11, 25), UTC, False, "last"),
        (nightly(), date(2026, 11, 24), datetime(2026, 11, 25, 2, 30), UTC, True, "ok"),
        (nightly(), date(2026, 11, 24), datetime(2026, 11, 26, 12, 0), UTC, True, "ok"),
        (nightly(), date(2026, 11, 24), datetime(2026, 11, 26, 12, 1), UTC, False, "stale since"),
        # Rome's day 2026-11-24 ends at 23:00 UTC: 36 hours later is 11:00 on the 26th.
        (nightly(), date(2026, 11, 24), datetime(2026, 11, 26, 11, 1), ROME, False, "stale"),
    ],
)
def test_fresh_means_the_last_nightly_run_succeeded_and_the_data_is_recent(
    last: dict[str, Any] | None,
    through: date | None,
    now: datetime,
    zone: ZoneInfo,
    fresh: bool,
    starts: str,
) -> None:
    ok, line = verdict(last, through, now, zone, LIMIT)
    assert ok is fresh
    assert line.startswith(starts)
    assert "\n" not in line


def test_a_failed_run_is_named_with_its_error() -> None:
    last = nightly("failed", error="cannot reach MongoDB at mongodb://db:27017/")
    _, line = verdict(last, date(2026, 11, 23), datetime(2026, 11, 25, 3), UTC, LIMIT)
    assert line == (
        "last nightly failed: it ended failed (started 2026-11-25 02:15 UTC): "
        "cannot reach MongoDB at mongodb://db:27017/"
    )


def test_the_check_counts_days_in_the_served_definitions_timezone(
    make_dbs: Callable[..., Databases],
) -> None:
    """Settings changed to UTC, not yet rebuilt: the rollup still counts Rome's days, and
    its lag is measured from the end of Rome's day."""
    rome = make_dbs(timezone="Europe/Rome")
    now = datetime(2026, 11, 25, 2, 30)
    runner.run_nightly(rome, now, lambda: now)
    utc = make_dbs(
        timezone="UTC",
        source_db=rome.settings.source_db,
        rollup_db=rome.settings.rollup_db,
    )
    # data through Rome's 2026-11-24, which ends at 23:00 UTC; 36 hours later is 11:00 on
    # the 26th, an hour before UTC's day would make it stale.
    later = datetime(2026, 11, 26, 11, 30)
    fresh, line = check(utc, later, LIMIT)
    assert (fresh, line.split(":")[0]) == (False, "stale since 2026-11-24")
    assert check(utc, datetime(2026, 11, 26, 10, 59), LIMIT)[0] is True
