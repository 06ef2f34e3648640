"""Runs: plan what to recompute, take the lock, record the run, write, record the outcome.

Every write to the rollup goes through `execute`: nightly, backfill, repair and rebuild.
"""

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from pymongo.client_session import ClientSession
from pymongo.errors import PyMongoError

from etl import ledger, logs, rollup, runs, verify
from etl import metrics as run_metrics
from etl.db import ROLLUP_COLLECTIONS, Databases, Doc, mask_uri, plain_error
from etl.definition import Definition, DefinitionMismatch, of_settings
from etl.rollup import Progress, Stats, Target, day_range, local_today
from etl.settings import Settings

log = logging.getLogger("usage.runs")

# updatedAt is set by application servers whose clocks may run behind the database's.
CLOCK_SKEW = timedelta(minutes=10)
# How many uncovered changed days a run record lists (it always counts them all).
LISTED_DAYS = 50
NO_TRANSACTIONS = (
    "the server does not support transactions: days are written without one, marked dirty "
    "first so that an interrupted write is recomputed by the next run"
)


class NothingToRebuild(Exception):
    """A rebuild without a range on a rollup that has no computed day."""


class NotBegun(Exception):
    """A range of days that begins after today in the reporting timezone."""


@dataclass(frozen=True)
class Plan:
    """What a nightly run recomputes, and why."""

    today: date
    window: tuple[date, date]
    changed: list[date]
    uncovered: list[date]
    dirty: list[date]

    @property
    def days(self) -> list[date]:
        return sorted(set(day_range(*self.window)) | set(self.changed) | set(self.dirty))


def changed_after_computed(
    changes: dict[date, datetime], computed: dict[date, datetime]
) -> list[date]:
    """Computed days whose latest source change came after (or, allowing for clock skew,
    near) the moment their computation began reading the source."""
    return sorted(
        day
        for day, when in changes.items()
        if day in computed and when >= computed[day] - CLOCK_SKEW
    )


def plan_nightly(
    today: date,
    lookback_days: int,
    last_nightly_today: date | None,
    changes: dict[date, datetime],
    computed: dict[date, datetime],
    dirty: list[date],
) -> Plan:
    """The lookback window (reaching back to the last nightly run's day, so missed nights
    are caught up), every older computed day whose source changed after it was computed,
    and every day a writer left dirty. Changed days never computed are only reported:
    coverage grows by backfill, not by accident."""
    first = today - timedelta(days=lookback_days)
    if last_nightly_today is not None:
        first = min(first, last_nightly_today)
    older = {day: when for day, when in changes.items() if day < first}
    changed = changed_after_computed(older, computed)
    uncovered = sorted(day for day in older if day not in computed)
    return Plan(today, (first, today), changed, uncovered, sorted(d for d in dirty if d < first))


@dataclass
class Work:
    """What one run recomputes, where, and what its record says about it."""

    days: list[date]
    target: Target
    complete_through: date | None = None
    record: Doc = field(default_factory=dict)
    # Unplaceable documents are counted among those changed since then (None: all).
    bad_since: datetime | None = None
    # Months whose totals are re-derived even though none of their days is recomputed.
    months: list[str] = field(default_factory=list)
    on_read: Callable[[datetime], None] | None = None
    # After the days are written: returns more fields for the run record.
    finish: Callable[[], Doc] | None = None


@dataclass(frozen=True)
class RunContext:
    run_id: Any
    state: ledger.State
    wanted: Definition


@dataclass
class RunResult:
    run_id: Any
    stats: Stats
    days: list[date]
    seconds: float
    record: Doc = field(default_factory=dict)


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
    plan: Callable[[RunContext], Work],
    progress: Progress | None = None,
) -> RunResult:
    """Take the lock, check the definition, record the run, write the planned days, record
    the outcome. A run whose settings differ from the stored definition writes nothing."""
    with run_metrics.measured(dbs.settings, kind) as found, contextlib.ExitStack() as stack:
        session = None
        if dbs.supports_transactions():  # asks the server: decided after connecting
            session = stack.enter_context(dbs.client.start_session())
        result = _locked_run(dbs, kind, now, clock, plan, progress, session)
        found.stats = result.stats
        return result


def _locked_run(
    dbs: Databases,
    kind: str,
    now: datetime,
    clock: Callable[[], datetime],
    plan: Callable[[RunContext], Work],
    progress: Progress | None,
    session: ClientSession | None,
) -> RunResult:
    settings = dbs.settings
    wanted = of_settings(settings)
    session_id = dict(session.session_id) if session is not None else None
    lease = runs.Lease(dbs.rollup, runs.new_holder(), settings.lease_seconds, session_id)
    expired = lease.acquire_waiting(clock, settings.lock_wait_seconds)
    try:
        if expired:
            # A crashed holder's open transaction would block every write to its days
            # until the server times it out; ending its session aborts it now.
            runs.end_session(dbs.client, expired.get("session_id"))
            runs.mark_abandoned(dbs.rollup, expired["holder"], now)
        # A rebuild may start from any definition; every other run needs the stored one.
        state = ledger.adopt(dbs, wanted) if kind == "rebuild" else ledger.require(dbs, wanted)
        started = time.monotonic()
        record: Doc = {
            "kind": kind,
            "holder": lease.holder,
            "started_at": now,
            "today": local_today(now, settings).isoformat(),
            "lock_acquired_at": clock(),
            "filter": settings.billable_filter(),
            "timezone": settings.timezone,
            "definition": wanted.as_doc(),
            "generation": state.generation,
            "transactions": session is not None,
        }
        if session is None:
            record["note"] = NO_TRANSACTIONS
        run_id = runs.start_run(dbs.rollup, record)
        if session is None:
            log.warning(NO_TRANSACTIONS, extra={"run_id": str(run_id)})
        event: Doc = {"run_id": str(run_id), "kind": kind, "range": None}

        def renew() -> None:
            lease.renew(clock())

        try:
            work = plan(RunContext(run_id, state, wanted))
            days = work.days
            span = [days[0].isoformat(), days[-1].isoformat()] if days else None
            runs.update_run(dbs.rollup, run_id, {"range": span, **work.record})
            event.update(range=span, days=len(days))
            log.info("run started", extra=event)
            rollup.ensure_indexes(dbs, work.target.generation)
            stats = rollup.recompute(
                dbs,
                work.target,
                days,
                progress,
                renew,
                session,
                work.on_read,
                clock,
            )
            # Re-derived whole even when one of their days was recomputed: writing a day
            # rewrites the levels by day for that day only, not a drift on another day.
            if work.months:
                rederive_months(dbs, work.target, sorted(work.months), session, renew)
            # ...and the levels by month of months left stale by a run cut short.
            stale = rollup.stale_months(dbs, work.target.generation)
            rollup.derive_stale(dbs, work.target, stale, session, renew)
            bad = rollup.count_bad_created_at(dbs, work.bad_since)
            if bad:
                stats.skipped["bad_created_at"] += bad
            finished = work.finish() if work.finish else {}
        except BaseException as exc:
            # Logged first: when the database is gone, the record cannot say it.
            # The caller reports the error itself (the CLI in one line).
            failed = {**event, "outcome": runs.FAILED, "error": describe(exc, dbs.uri)}
            log.error("run failed", extra={**failed, **logs.SHOWN})
            runs.update_run(
                dbs.rollup,
                run_id,
                {"status": runs.FAILED, "finished_at": clock(), "error": describe(exc, dbs.uri)},
            )
            raise
        through = work.complete_through
        outcome = {
            "status": runs.OK,
            "finished_at": clock(),
            "complete_through": through.isoformat() if through else None,
            **stats.as_record(),
            **finished,
        }
        runs.update_run(dbs.rollup, run_id, outcome)
        seconds = time.monotonic() - started
        done = {"outcome": runs.OK, "seconds": round(seconds, 3), **stats.as_record()}
        log.info("run finished", extra={**event, **done})
        return RunResult(run_id, stats, days, seconds, {**record, **work.record, **outcome})
    finally:
        lease.release()


def rederive_months(
    dbs: Databases,
    target: Target,
    months: list[str],
    session: ClientSession | None,
    heartbeat: Callable[[], None] | None = None,
) -> None:
    """Rewrite every level of `months` from the day rows, and let readers know: each month is
    marked stale first, so that readers read it from its days, then derived in ranges of
    organizations, the last of which clears the mark."""
    # Without a transaction, every computed day of each month is marked dirty first: a write
    # cut short between deleting and inserting a month's levels (the levels by day included)
    # is redone by the next run, which rewrites the levels by day of the days it recomputes.
    # Days already dirty stay so, for the next run to recompute: their rows may be half
    # written, which deriving the month from them does not mend.
    marked: list[date] = []
    if session is None:
        wanted = set(months)
        dirty = set(ledger.dirty_days(dbs, target.generation))
        covered = ledger.covered_days(dbs, target.generation)
        marked = [day for day in covered if day.isoformat()[:7] in wanted and day not in dirty]
    ledger.mark_dirty(dbs, target.generation, marked, target.run_id)
    rollup.in_transaction(session, lambda: rollup.mark_whole(dbs, target, months, session))
    for month in months:
        rollup.derive_in_ranges(dbs, target, month, None, session, heartbeat)
    ledger.clear_dirty(dbs, target.generation, marked)


def served_target(ctx: RunContext, kind: str) -> Target:
    return Target(ctx.state.generation, ctx.run_id, kind, ctx.wanted.fingerprint)


def first_read_starts_scan(dbs: Databases, state: ledger.State) -> Callable[[datetime], None]:
    return lambda read_started: ledger.start_scan(dbs.rollup, state.generation, read_started)


def run_nightly(
    dbs: Databases, now: datetime, clock: Callable[[], datetime], progress: Progress | None = None
) -> RunResult:
    """The nightly run: lookback window, missed nights, changed and dirty older days."""

    def plan(ctx: RunContext) -> Work:
        state = ctx.state
        generation = state.generation
        scan_start = clock()
        today = local_today(now, dbs.settings)
        last_ok = runs.last_ok_run(dbs.rollup, "nightly")
        last_today = date.fromisoformat(last_ok["today"]) if last_ok else None
        first = plan_nightly(today, dbs.settings.lookback_days, last_today, {}, {}, []).window[0]
        changes: dict[date, datetime] = {}
        since = state.scan_from - CLOCK_SKEW if state.scan_from else None
        if since is not None:
            changes = rollup.changed_days(dbs, since, first)
        computed = ledger.computed(dbs, generation, list(changes))
        dirty = ledger.dirty_days(dbs, generation)
        p = plan_nightly(today, dbs.settings.lookback_days, last_today, changes, computed, dirty)

        def finish() -> Doc:
            ledger.nightly_done(dbs.rollup, generation, scan_start, p.today - timedelta(days=1))
            return {}

        return Work(
            days=p.days,
            target=served_target(ctx, "nightly"),
            complete_through=p.today - timedelta(days=1),
            record={
                "window": [p.window[0].isoformat(), p.window[1].isoformat()],
                "changed_days": [day.isoformat() for day in p.changed],
                "dirty_days": [day.isoformat() for day in p.dirty],
                "changed_uncovered_days": len(p.uncovered),
                "changed_uncovered": [day.isoformat() for day in p.uncovered[:LISTED_DAYS]],
                "changed_since": since,
            },
            bad_since=since,
            on_read=first_read_starts_scan(dbs, state),
            finish=finish,
        )

    return execute(dbs, "nightly", now, clock, plan, progress)


def backfill_days(first: date, last: date, today: date, settings: Settings) -> list[date]:
    """first..last, but for the days after `today`: they have not begun."""
    if first > today:
        raise NotBegun(f"{first} has not begun in {settings.timezone} (today there is {today})")
    return day_range(first, min(last, today))


def run_backfill(
    dbs: Databases,
    first: date,
    last: date,
    now: datetime,
    clock: Callable[[], datetime],
    progress: Progress | None = None,
) -> RunResult:
    """Recompute first..last inclusive, extending coverage to it; days after today in the
    reporting timezone have not begun and are not built (the nightly run computes them)."""
    today = local_today(now, dbs.settings)
    days = backfill_days(first, last, today, dbs.settings)

    def plan(ctx: RunContext) -> Work:
        return Work(
            days=days,
            target=served_target(ctx, "backfill"),
            complete_through=min(last, today - timedelta(days=1)),
            on_read=first_read_starts_scan(dbs, ctx.state),
        )

    return execute(dbs, "backfill", now, clock, plan, progress)


def run_repair(
    dbs: Databases,
    days: list[date],
    now: datetime,
    clock: Callable[[], datetime],
    months: list[str] | None = None,
) -> RunResult:
    """Recompute exactly the given days, and re-derive the given months' totals (those
    `verify` found drifted)."""

    def plan(ctx: RunContext) -> Work:
        return Work(
            days=sorted(days),
            target=served_target(ctx, "repair"),
            record={
                "repaired_days": [day.isoformat() for day in sorted(days)],
                "repaired_months": sorted(months or []),
            },
            months=list(months or []),
        )

    return execute(dbs, "repair", now, clock, plan)


def generations_present(dbs: Databases) -> set[int]:
    """Generations that have any rollup collection."""
    found = set()
    for name in dbs.rollup.list_collection_names():
        for base in ROLLUP_COLLECTIONS:
            if name == base:
                found.add(1)
            elif name.startswith(base + "_g") and name[len(base) + 2 :].isdigit():
                found.add(int(name[len(base) + 2 :]))
    return found


def drop_generation(dbs: Databases, generation: int) -> None:
    for base in ROLLUP_COLLECTIONS:
        dbs.level(base, generation).drop()


def rebuild_days(
    dbs: Databases, generation: int, first: date | None, last: date | None
) -> list[date]:
    """Every computed day of `generation`, and first..last when given."""
    days = set(ledger.covered_days(dbs, generation))
    if first is not None and last is not None:
        days.update(day_range(first, last))
    return sorted(days)


def stale_days(
    dbs: Databases, generation: int, scan_from: datetime | None, now: datetime
) -> list[date]:
    """Computed days of `generation` whose source changed after they were computed: what a
    rebuild resumed after a pause must build again before it is served."""
    if scan_from is None:
        return []
    tomorrow = local_today(now, dbs.settings) + timedelta(days=1)
    changes = rollup.changed_days(dbs, scan_from - CLOCK_SKEW, tomorrow)
    return changed_after_computed(changes, ledger.computed(dbs, generation, list(changes)))


def run_rebuild(
    dbs: Databases,
    now: datetime,
    clock: Callable[[], datetime],
    first: date | None = None,
    last: date | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Build every covered day (and first..last) under the current settings into a new
    generation while the current one is served, then switch to it in one write.

    Run again after an interruption, it goes on with the days not yet built.
    """
    if first is not None and last is not None:
        backfill_days(first, last, local_today(now, dbs.settings), dbs.settings)  # begun?

    def plan(ctx: RunContext) -> Work:
        state = ctx.state
        pending = state.pending
        resumed = (
            pending is not None
            and pending.definition == ctx.wanted
            and (pending.first, pending.last) == (first, last)
        )
        if not resumed:
            number = max(state.generation, pending.generation if pending else 0) + 1
            pending = ledger.Pending(number, ctx.wanted, None, first, last)
            drop_generation(dbs, number)
            ledger.begin_pending(dbs.rollup, pending)
        assert pending is not None
        for generation in generations_present(dbs) - {state.generation, pending.generation}:
            drop_generation(dbs, generation)
        # The new generation replaces the served one whole: every computed day is rebuilt,
        # and a range only adds to them, never drops what is served.
        # Under a zone behind the old one, the old generation's today can be tomorrow here:
        # a day that has not begun is not built (the nightly run computes it when it has).
        today = local_today(now, dbs.settings)
        wanted_days = [d for d in rebuild_days(dbs, state.generation, first, last) if d <= today]
        if not wanted_days:
            raise NothingToRebuild(
                "no day has been computed yet: give --start and --end, or run `usage backfill`"
            )
        built = set(ledger.covered_days(dbs, pending.generation))
        built -= set(ledger.dirty_days(dbs, pending.generation))
        built -= set(stale_days(dbs, pending.generation, pending.scan_from, clock()))
        number = pending.generation

        def on_read(read_started: datetime) -> None:
            ledger.note_pending_read(dbs.rollup, number, read_started)

        def finish() -> Doc:
            latest = ledger.read_state(dbs.rollup)
            assert latest is not None and latest.pending is not None
            through = ledger.data_through(dbs, latest)
            built_last = ledger.last_day(dbs, number)
            if through is not None and built_last is not None:
                through = min(through, built_last)
            # Complete through the old zone's yesterday is not complete here if it is behind:
            # at most the day before the one the rebuild read as today.
            if through is not None:
                through = min(through, today - timedelta(days=1))
            ledger.switch(dbs.rollup, latest.pending, through)
            return {"switched_from": state.generation, "switched_to": number}

        return Work(
            days=[day for day in wanted_days if day not in built],
            target=Target(number, ctx.run_id, "rebuild", ctx.wanted.fingerprint, served=False),
            record={
                "rebuild_generation": number,
                "rebuild_days": len(wanted_days),
                "resumed": resumed,
            },
            on_read=on_read,
            finish=finish,
        )

    return execute(dbs, "rebuild", now, clock, plan, progress)


@dataclass
class Verification:
    drift: list[Any]
    months: list[str]
    uncovered: list[date]
    repair: RunResult | None = None
    # Of `months`, those a run replacing them in parts left with lagging levels by month.
    stale: list[str] = field(default_factory=list)
    # Days of `months`, in the range or not, with a day row whose sketch cannot be read.
    damaged: list[date] = field(default_factory=list)


def verify_range(
    dbs: Databases,
    first: date,
    last: date,
    now: datetime,
    clock: Callable[[], datetime],
    repair: bool = False,
) -> Verification:
    """Recount first..last from the source against the served rollup; with `repair`,
    recompute the drifted days and re-derive the drifted months in one recorded run."""
    event: Doc = {"kind": "verify", "range": [first.isoformat(), last.isoformat()]}
    log.info("verify started", extra=event)
    with run_metrics.measured(dbs.settings, "verify") as found:
        try:
            result = _verify_range(dbs, first, last, now, clock, repair)
        except BaseException as exc:
            failed = {**event, "outcome": runs.FAILED, "error": describe(exc, dbs.uri)}
            log.error("verify failed", extra={**failed, **logs.SHOWN})
            raise
        found.drifted_days = len(verify.drifted_days(result.drift))
        found.drifted_months = len(result.months)
    drift = {"drifted_days": found.drifted_days, "drifted_months": found.drifted_months}
    log.info("verify finished", extra={**event, "outcome": runs.OK, **drift})
    return result


def _verify_range(
    dbs: Databases,
    first: date,
    last: date,
    now: datetime,
    clock: Callable[[], datetime],
    repair: bool,
) -> Verification:
    wanted = of_settings(dbs.settings)
    state = ledger.read_state(dbs.rollup)
    if state is not None and state.definition != wanted:
        raise DefinitionMismatch(state.definition, wanted)
    generation = state.generation if state else 1
    drift = verify.find_drift(dbs, first, last, generation)
    months = verify.find_month_drift(dbs, first, last, generation)
    # Days that have not begun are not computed yet, nor to be backfilled.
    begun = min(last, local_today(now, dbs.settings))
    result = Verification(drift, months, verify.uncovered_days(dbs, first, begun, generation))
    result.stale = [month for month in rollup.stale_months(dbs, generation) if month in months]
    result.damaged = verify.damaged_days(dbs, generation, months)
    if repair and (drift or months):
        days = verify.repair_days(drift, result.damaged)
        result.repair = run_repair(dbs, days, now, clock, months)
    return result
