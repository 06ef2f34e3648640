"""Is the rollup fresh? The check behind `usage status --check` and `/api/health`."""

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from pymongo import DESCENDING

from etl import ledger, runs
from etl.db import Databases, Doc
from etl.definition import Definition
from etl.source import day_start_utc

Status = Literal["ok", "never_ran", "failed", "stale"]


@dataclass(frozen=True)
class Freshness:
    """How fresh the rollup is, and one line saying why."""

    status: Status
    line: str

    @property
    def fresh(self) -> bool:
        return self.status == "ok"


def last_nightly(dbs: Databases) -> Doc | None:
    """The newest nightly run that has ended, well or not; one still running is not judged."""
    return dbs.rollup[runs.RUNS].find_one(
        {"kind": "nightly", "status": {"$ne": runs.RUNNING}}, sort=[("started_at", DESCENDING)]
    )


def judge(
    last: Doc | None, through: date | None, now: datetime, zone: ZoneInfo, max_lag: timedelta
) -> Freshness:
    """The freshness of the rollup from the last nightly run and data_through at `now`."""
    if last is None:
        return Freshness("never_ran", "never ran: no nightly run has ended yet")
    if last.get("status") != runs.OK:
        started = last.get("started_at")
        when = f" (started {started:%Y-%m-%d %H:%M} UTC)" if isinstance(started, datetime) else ""
        reason = " ".join(str(last.get("error") or "no error recorded").split())
        line = f"last nightly failed: it ended {last.get('status')}{when}: {reason}"
        return Freshness("failed", line)
    if through is None:
        return Freshness("never_ran", "never ran: no nightly run has completed a day")
    # The data is complete up to the end of `through` in the reporting timezone.
    age = now - day_start_utc(through + timedelta(days=1), zone)
    hours = age.total_seconds() / 3600
    limit = max_lag.total_seconds() / 3600
    if age > max_lag:
        line = f"stale since {through}: the data is {hours:.1f} hours old, over {limit:g}"
        return Freshness("stale", line)
    return Freshness("ok", f"ok: data through {through}, {hours:.1f} hours old, at most {limit:g}")


def verdict(
    last: Doc | None, through: date | None, now: datetime, zone: ZoneInfo, max_lag: timedelta
) -> tuple[bool, str]:
    """(fresh, one line saying why): `judge` for a command's exit code and line."""
    found = judge(last, through, now, zone, max_lag)
    return found.fresh, found.line


def served_zone(definition: Definition | None, fallback: ZoneInfo) -> ZoneInfo:
    """The timezone whose days the served rollup counts: its definition's, which differs
    from the settings' between a changed setting and its rebuild."""
    return ZoneInfo(definition.timezone) if definition is not None else fallback


def check(dbs: Databases, now: datetime, max_lag: timedelta) -> tuple[bool, str]:
    """The verdict on the rollup in `dbs` at `now`."""
    # What the API serves: the served generation's data_through, in its own days.
    state = ledger.read_state(dbs.rollup)
    through = ledger.data_through(dbs, state)
    zone = served_zone(state.definition if state else None, dbs.settings.zone)
    return verdict(last_nightly(dbs), through, now, zone, max_lag)
