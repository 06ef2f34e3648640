"""Recompute day ranges of `usage_daily`: run the pipeline, replace whole days atomically."""

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, UpdateOne
from pymongo.client_session import ClientSession
from pymongo.errors import ConnectionFailure, PyMongoError

from etl import runs, source
from etl.db import Databases, Doc, mask_uri, plain_error
from etl.settings import Settings

# A batch (one aggregation, one write transaction) never crosses a calendar month, so each
# month's totals move once per batch; a month of rows stays far below transaction limits.
BATCH_DAYS = 31
# updatedAt is set by application servers whose clocks may run behind this one.
CLOCK_SKEW = timedelta(minutes=10)
MEASURES = ("conversations", "messages", "handoffs")
TRANSACTION_ATTEMPTS = 3


@dataclass
class Stats:
    days: int = 0
    rows_written: int = 0
    rows_removed: int = 0
    conversations: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def add(self, other: "Stats") -> None:
        self.days += other.days
        self.rows_written += other.rows_written
        self.rows_removed += other.rows_removed
        self.conversations += other.conversations
        self.skipped.update(other.skipped)

    def as_record(self) -> Doc:
        return {
            "days_recomputed": self.days,
            "rows_written": self.rows_written,
            "rows_removed": self.rows_removed,
            "conversations_counted": self.conversations,
            "skipped": dict(sorted(self.skipped.items())),
        }


Progress = Callable[[int], None]


def day_range(first: date, last: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def batches(days: Iterable[date], size: int = BATCH_DAYS) -> Iterator[tuple[date, date]]:
    """Split days into contiguous (first, last) runs of at most `size` days within a month."""
    ordered = sorted(set(days))
    start = prev = None
    count = 0
    for day in ordered:
        if start is None or prev is None:
            start, prev, count = day, day, 1
        elif day == prev + timedelta(days=1) and count < size and day.month == prev.month:
            prev, count = day, count + 1
        else:
            yield start, prev
            start, prev, count = day, day, 1
    if start is not None and prev is not None:
        yield start, prev


def row_id(org: str, agent: str, day: str) -> str:
    return f"{org}:{agent}:{day}"


def fetch_rows(dbs: Databases, first: date, last: date) -> tuple[dict[str, list[Doc]], Stats]:
    """Aggregate local days first..last in the database; return rows by day and counts."""
    pipeline = source.rollup_pipeline(first, last, dbs.settings)
    by_day: dict[str, list[Doc]] = {}
    stats = Stats()
    for group in dbs.requests().aggregate(pipeline, allowDiskUse=True, batchSize=5000):
        key = group["_id"]
        if key.get("skip"):
            stats.skipped[key["skip"]] += int(group["conversations"])
            continue
        row = {
            "_id": row_id(key["org"], key["agent"], key["day"]),
            "org_id": key["org"],
            "agent_id": key["agent"],
            "day": key["day"],
            **{name: int(group[name]) for name in MEASURES},
        }
        stats.conversations += row["conversations"]
        by_day.setdefault(key["day"], []).append(row)
    for rows in by_day.values():
        rows.sort(key=lambda row: row["_id"])
    return by_day, stats


def month_deltas(old_rows: list[Doc], new_rows: list[Doc]) -> dict[tuple[str, str, str], Doc]:
    """What replacing old_rows by new_rows changes in each (org, agent, month) total."""
    deltas: dict[tuple[str, str, str], Doc] = {}
    for rows, sign in ((new_rows, 1), (old_rows, -1)):
        for row in rows:
            key = (row["org_id"], row["agent_id"], row["day"][:7])
            delta = deltas.setdefault(key, dict.fromkeys(MEASURES, 0))
            for name in MEASURES:
                delta[name] += sign * row[name]
    return {key: delta for key, delta in deltas.items() if any(delta.values())}


def save_days(
    dbs: Databases,
    days: list[str],
    by_day: dict[str, list[Doc]],
    session: ClientSession | None = None,
) -> tuple[int, int]:
    """Replace every row of `days` with `by_day`'s; in one transaction when given a session.

    `usage_monthly` (the same rows summed by month, for long views) moves by the difference
    in the same transaction, so it always equals the sum of the daily rows.
    """
    usage, monthly = dbs.usage_daily(), dbs.usage_monthly()
    new_rows = [row for day in days for row in by_day.get(day, [])]
    new_ids = {row["_id"] for row in new_rows}

    def replace() -> int:
        old_rows = list(usage.find({"day": {"$in": days}}, session=session))
        usage.delete_many({"day": {"$in": days}}, session=session)
        if new_rows:
            usage.insert_many(new_rows, ordered=False, session=session)
        deltas = month_deltas(old_rows, new_rows)
        if deltas:
            monthly.bulk_write(
                [
                    UpdateOne(
                        {"_id": row_id(org, agent, month)},
                        {
                            "$inc": delta,
                            "$setOnInsert": {"org_id": org, "agent_id": agent, "month": month},
                        },
                        upsert=True,
                    )
                    for (org, agent, month), delta in deltas.items()
                ],
                ordered=False,
                session=session,
            )
            touched = [row_id(*key) for key in deltas]
            monthly.delete_many(
                {"_id": {"$in": touched}, "conversations": {"$lte": 0}}, session=session
            )
        return len({row["_id"] for row in old_rows} - new_ids)

    if session is None:
        return len(new_rows), replace()
    # Not `with_transaction`: it retries for two minutes, and a run must fail fast when the
    # database goes away. A write conflict with another writer is worth a couple of retries.
    for attempt in range(TRANSACTION_ATTEMPTS):
        try:
            with session.start_transaction():
                removed = replace()
            return len(new_rows), removed
        except PyMongoError as exc:
            retry = exc.has_error_label("TransientTransactionError") and not isinstance(
                exc, ConnectionFailure
            )
            if not retry or attempt + 1 == TRANSACTION_ATTEMPTS:
                raise
            time.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


def recompute(
    dbs: Databases,
    days: Iterable[date],
    progress: Progress | None = None,
    heartbeat: Callable[[], None] | None = None,
    session: ClientSession | None = None,
) -> Stats:
    """Recompute the given local days, a batch at a time."""
    total = Stats()
    for first, last in batches(days):
        by_day, stats = fetch_rows(dbs, first, last)
        labels = [day.isoformat() for day in day_range(first, last)]
        stats.rows_written, stats.rows_removed = save_days(dbs, labels, by_day, session)
        stats.days = len(labels)
        total.add(stats)
        if heartbeat:
            heartbeat()
        if progress:
            progress(len(labels))
    return total


def count_bad_created_at(dbs: Databases, changed_since: datetime | None) -> int:
    pipeline = source.bad_created_at_pipeline(dbs.settings, changed_since)
    counted = list(dbs.requests().aggregate(pipeline, allowDiskUse=True))
    return int(counted[0]["n"]) if counted else 0


def changed_days(dbs: Databases, changed_since: datetime, before: date) -> list[date]:
    """Older days whose source documents changed since `changed_since`."""
    pipeline = source.changed_days_pipeline(changed_since, before, dbs.settings)
    found = dbs.requests().aggregate(pipeline, allowDiskUse=True)
    return sorted(date.fromisoformat(doc["_id"]) for doc in found)


def ensure_indexes(dbs: Databases) -> None:
    usage = dbs.usage_daily()
    usage.create_index(
        [("org_id", ASCENDING), ("agent_id", ASCENDING), ("day", ASCENDING)],
        unique=True,
        name="uniq_org_agent_day",
    )
    usage.create_index([("day", ASCENDING)], name="day")
    usage.create_index([("org_id", ASCENDING), ("day", ASCENDING)], name="org_day")
    monthly = dbs.usage_monthly()
    monthly.create_index([("month", ASCENDING)], name="month")
    monthly.create_index([("org_id", ASCENDING), ("month", ASCENDING)], name="org_month")
    runs.ensure_indexes(dbs.rollup)


@dataclass
class Plan:
    """What a nightly run recomputes, and why."""

    today: date
    window: tuple[date, date]
    changed: list[date]
    changed_since: datetime | None

    @property
    def days(self) -> list[date]:
        return sorted(set(day_range(*self.window)) | set(self.changed))


def plan_nightly(dbs: Databases, now: datetime, settings: Settings) -> Plan:
    """The lookback window, missed nights since the last ok run, and changed older days."""
    today = local_today(now, settings)
    first = today - timedelta(days=settings.lookback_days)
    last_ok = runs.last_ok_run(dbs.rollup, "nightly")
    changed_since = None
    changed: list[date] = []
    if last_ok is not None:
        # The last run's own today was only partly over, so it is recomputed too.
        first = min(first, date.fromisoformat(last_ok["today"]))
        changed_since = last_ok["started_at"] - CLOCK_SKEW
        changed = changed_days(dbs, changed_since, first)
    return Plan(today=today, window=(first, today), changed=changed, changed_since=changed_since)


def local_today(now: datetime, settings: Settings) -> date:
    """`now` is naive UTC; the reporting timezone decides which day it is."""
    return now.replace(tzinfo=UTC).astimezone(settings.zone).date()


@dataclass
class RunResult:
    run_id: Any
    stats: Stats
    days: list[date]
    seconds: float


@dataclass
class Work:
    """What one run recomputes, and what its record says about it."""

    days: list[date]
    complete_through: date | None
    record: Doc = field(default_factory=dict)
    # Unplaceable documents are counted among those changed since then (None: all).
    bad_since: datetime | None = None


def describe(exc: BaseException, uri: str) -> str:
    """A run record's error: one line, without secrets."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, PyMongoError):
        return plain_error(exc, uri)
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return mask_uri(text)[:500]


def execute(
    dbs: Databases,
    kind: str,
    now: datetime,
    clock: Callable[[], datetime],
    plan: Callable[[], Work],
    progress: Progress | None = None,
) -> RunResult:
    """Take the lock, record the run, recompute the planned days, record the outcome."""
    with contextlib.ExitStack() as stack:
        session = None
        if dbs.supports_transactions():
            session = stack.enter_context(dbs.client.start_session())
        return locked_run(dbs, kind, now, clock, plan, progress, session)


def locked_run(
    dbs: Databases,
    kind: str,
    now: datetime,
    clock: Callable[[], datetime],
    plan: Callable[[], Work],
    progress: Progress | None,
    session: ClientSession | None,
) -> RunResult:
    settings = dbs.settings
    session_id = dict(session.session_id) if session is not None else None
    lease = runs.Lease(dbs.rollup, runs.new_holder(), settings.lease_seconds, session_id)
    expired = lease.acquire_waiting(clock, settings.lock_wait_seconds)
    try:
        if expired:
            # A crashed holder's open transaction would block every write to its days
            # until the server times it out; ending its session aborts it now.
            runs.end_session(dbs.client, expired.get("session_id"))
            runs.mark_abandoned(dbs.rollup, expired["holder"], now)
        started = time.monotonic()
        run_id = runs.start_run(
            dbs.rollup,
            {
                "kind": kind,
                "holder": lease.holder,
                "started_at": now,
                "today": local_today(now, settings).isoformat(),
                "lock_acquired_at": clock(),
                "filter": settings.billable_filter(),
                "timezone": settings.timezone,
            },
        )
        try:
            ensure_indexes(dbs)
            work = plan()
            days = work.days
            span = [days[0].isoformat(), days[-1].isoformat()] if days else None
            runs.update_run(dbs.rollup, run_id, {"range": span, **work.record})
            heartbeat = lambda: lease.renew(clock())  # noqa: E731
            stats = recompute(dbs, days, progress, heartbeat, session)
            bad = count_bad_created_at(dbs, work.bad_since)
            if bad:
                stats.skipped["bad_created_at"] += bad
        except BaseException as exc:
            runs.update_run(
                dbs.rollup,
                run_id,
                {"status": runs.FAILED, "finished_at": clock(), "error": describe(exc, dbs.uri)},
            )
            raise
        through = work.complete_through
        runs.update_run(
            dbs.rollup,
            run_id,
            {
                "status": runs.OK,
                "finished_at": clock(),
                "complete_through": through.isoformat() if through else None,
                **stats.as_record(),
            },
        )
        return RunResult(run_id, stats, days, time.monotonic() - started)
    finally:
        lease.release()


def run_nightly(
    dbs: Databases, now: datetime, clock: Callable[[], datetime], progress: Progress | None = None
) -> RunResult:
    """The nightly run: lookback window, missed nights and changed older days."""

    def plan() -> Work:
        p = plan_nightly(dbs, now, dbs.settings)
        return Work(
            days=p.days,
            complete_through=p.today - timedelta(days=1),
            record={
                "window": [p.window[0].isoformat(), p.window[1].isoformat()],
                "changed_days": [day.isoformat() for day in p.changed],
                "changed_since": p.changed_since,
            },
            bad_since=p.changed_since,
        )

    return execute(dbs, "nightly", now, clock, plan, progress)


def run_backfill(
    dbs: Databases,
    first: date,
    last: date,
    now: datetime,
    clock: Callable[[], datetime],
    progress: Progress | None = None,
) -> RunResult:
    """Recompute first..last inclusive."""
    today = local_today(now, dbs.settings)
    work = Work(day_range(first, last), min(last, today - timedelta(days=1)))
    return execute(dbs, "backfill", now, clock, lambda: work, progress)


def run_repair(
    dbs: Databases, days: list[date], now: datetime, clock: Callable[[], datetime]
) -> RunResult:
    """Recompute exactly the given days (those `verify` found drifted)."""
    work = Work(sorted(days), None, {"repaired_days": [day.isoformat() for day in sorted(days)]})
    return execute(dbs, "repair", now, clock, lambda: work)
