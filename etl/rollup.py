"""Compute days: run the pipeline over the source, replace whole days of a generation."""

import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

from bson import Binary
from pymongo import ASCENDING
from pymongo.client_session import ClientSession
from pymongo.collection import Collection
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from etl import lattice, ledger, platform, runs, sketches, source
from etl.db import (
    LONG_IN,
    USAGE_PLATFORM,
    USAGE_STALE_MONTHS,
    Databases,
    Doc,
    generation_name,
)
from etl.settings import Settings

# A batch (one aggregation, one write transaction) never crosses a calendar month, so each
# batch re-derives one month's totals; a month of rows stays far below transaction limits.
BATCH_DAYS = 31
MEASURES = lattice.MEASURES
# Most organizations a stale mark names; past them it marks the whole month. A month derived
# for named organizations reads their rows with a query each; past a few thousand of them,
# reading every organization's in ranges of ids costs less.
MARKED_ORGS = 3000
TRANSACTION_ATTEMPTS = 3
T = TypeVar("T")
log = logging.getLogger("usage.rollup")


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
            **users_fields(group.get("users") or []),
        }
        stats.conversations += row["conversations"]
        by_day.setdefault(key["day"], []).append(row)
    for rows in by_day.values():
        rows.sort(key=lambda row: row["_id"])
    return by_day, stats


def users_fields(users: Iterable[Any]) -> Doc:
    """A day row's exact count of distinct end users and their sketch (none without users).

    The ids are sketched in sorted order, so a day recomputed from the same documents has
    the same bytes."""
    ids = sorted({user for user in users if isinstance(user, str)})
    fields: Doc = {lattice.USERS: len(ids)}
    if ids:
        fields[lattice.USERS_HLL] = Binary(sketches.of_ids(ids))
    return fields


@dataclass(frozen=True)
class Target:
    """Where a run writes: a generation, and what its ledger entries say about the run."""

    generation: int
    run_id: Any
    kind: str
    fingerprint: str
    # Writes to the generation the API serves move its version, so caches of it refresh.
    served: bool = True


def month_filter(month: str) -> Doc:
    return {"day": {"$gte": f"{month}-01", "$lte": f"{month}-31"}}


def replace_rows(
    stored: Collection[Doc], queries: list[Doc], rows: list[Doc], session: ClientSession | None
) -> None:
    """Make the rows `queries` match (together; no row matched by two) exactly `rows` (each
    with its `_id`): a stored row equal to its new one stays as it is, the others are
    replaced, inserted or deleted.

    A month derived again whole (a repair, a run finishing one cut short) mostly comes out as
    it was: on the embedded server, deleting and inserting a row costs several times reading
    it. A row that changed is deleted and inserted again (on a nightly run deriving 540
    organizations' months, this took 0.9 s where replacing them took 1.25 s); when most of
    the rows of a single query go, they are all deleted by the query, which costs less than
    naming them."""
    old = {doc["_id"]: doc for query in queries for doc in stored.find(query, session=session)}
    stored_ids = sorted(old)
    fresh, changed = [], []
    for row in rows:
        have = old.pop(row["_id"], None)
        if have is None:
            fresh.append(row)
        elif plain(have) != plain(row):
            changed.append(row)
    gone = sorted(old)
    if len(queries) == 1 and stored_ids and len(gone) + len(changed) > len(stored_ids) // 2:
        stored.delete_many(queries[0], session=session)
        fresh = rows
    else:
        delete_ids(stored, sorted(gone + [row["_id"] for row in changed]), session)
        fresh = changed + fresh
    if fresh:
        stored.insert_many(fresh, ordered=False, session=session)


def delete_ids(stored: Collection[Doc], ids: list[Any], session: ClientSession | None) -> None:
    """Delete the rows of `ids`, LONG_IN at a time."""
    for query in id_queries(ids):
        stored.delete_many(query, session=session)


def plain(doc: Doc) -> Doc:
    """`doc` with its binary values as bytes, as they are read back."""
    return {key: bytes(v) if isinstance(v, bytes) else v for key, v in doc.items()}


@dataclass(frozen=True)
class OrgRange:
    """The organization ids from `first` (included) to `below` (excluded; None: no end)."""

    first: str = ""
    below: str | None = None

    def __contains__(self, org: object) -> bool:
        return (
            isinstance(org, str) and self.first <= org and (self.below is None or org < self.below)
        )

    def query(self) -> Doc:
        bounds = {"$gte": self.first}
        if self.below is not None:
            bounds["$lt"] = self.below
        return {"org_id": bounds}


def derive_months(
    dbs: Databases,
    generation: int,
    months: Iterable[str],
    session: ClientSession | None,
    days: list[str] | None = None,
    orgs: set[str] | OrgRange | None = None,
    by_month: bool = True,
    most_rows: int | None = None,
    lost: set[str] | None = None,
) -> None:
    """Rewrite every coarser level of `months` from the daily rows, never by differences.

    Given `days`, the levels by day are rewritten for those days only (the others of the
    month did not change); the levels by month always for the whole month. Given `orgs`,
    only those organizations' rows are read and rewritten (a set, or a range of ids): a level
    row sums one organization's day rows, so the others' cannot have changed. The platform
    level holds the organization rows of each period, and is rewritten with them.

    Without `by_month`, only the levels by day are rewritten (of `days`): the levels by
    month lag the day rows until they are derived again (see `mark_stale`). Given
    `most_rows`, a set of several organizations holding more day rows than that raises
    TooManyRows before anything is written.

    The stored rows of named organizations are read by their ids where these are known
    (see `named_queries`); `lost` names those of them that lost a day row of the month since
    their levels by month were last derived (None: any of them may have).
    """
    daily = dbs.usage_daily(generation)
    if orgs is not None and not orgs:
        return
    of_orgs = org_queries(orgs)
    for month in sorted(set(months)):
        rewritten = month_days(month) if days is None else [d for d in days if d[:7] == month]
        # The levels by day of a few days need those days' rows, not the month's.
        if not by_month and not rewritten:
            continue
        span = month_filter(month)
        if not by_month:
            span = {"day": {"$gte": min(rewritten), "$lte": max(rewritten)}}
        rows = [row for of in of_orgs for row in daily.find({**span, **of}, session=session)]
        if most_rows is not None and isinstance(orgs, set) and len(orgs) > 1:
            if len(rows) > most_rows:
                raise TooManyRows(orgs)
        derived: dict[lattice.Level, list[Doc]] = {}
        for level in lattice.LEVELS:
            if (level.period == "month" and not by_month) or (
                level.period == "day" and not rewritten
            ):
                continue
            stored = dbs.level(level.collection, generation)
            selected, which = rows, level.of_month(month)
            if days is not None and level.period == "day":
                selected = [row for row in rows if row["day"] in days]
                which = {"day": {"$in": rewritten}}
            derived[level] = lattice.summarize(selected, level)
            queries = [{**which, **of} for of in of_orgs]
            if isinstance(orgs, set):
                periods = rewritten if level.period == "day" else [month]
                queries = named_queries(level, orgs, periods, derived[level], which, lost)
            replace_rows(stored, queries, derived[level], session)
        by_day: dict[str, list[Doc]] = {day: [] for day in rewritten}
        for row in derived.get(lattice.ORG_DAILY, []):
            by_day[row["day"]].append(row)
        months_rows = {month: derived[lattice.ORG_MONTHLY]} if by_month else {}
        stored = dbs.level(USAGE_PLATFORM, generation)
        # A range of ids is a part of a month derived whole, under its stale mark until the
        # last part: a document no version here can read is dropped, not kept.
        whole = isinstance(orgs, OrgRange)
        platform.write_levels(stored, by_day, months_rows, session, orgs, whole)


def named_queries(
    level: lattice.Level,
    orgs: set[str],
    periods: list[str],
    rows: list[Doc],
    which: Doc,
    lost: set[str] | None,
) -> list[Doc]:
    """Filters that together select the stored rows of `level` that the named `orgs` may
    have in `periods`, given `rows`, the level's rows derived again from every day row of
    theirs in those periods: a query or a few by ids, rather than one an organization.

    A level without agents has one row an organization and period, its id known. A level
    by agent derived from the same days before held a row for each agent of theirs then; an
    agent's day rows are only added or changed, unless its organization is among the `lost`
    (None: every one), so those agents all have rows in `rows`. The lost ones are read with
    a query each (`which`, the level's rows of the periods, beside each organization)."""
    if not level.by_agent:
        return id_queries(level.ids_of(orgs, periods))
    loose = orgs if lost is None else orgs & lost
    ids = sorted(str(row["_id"]) for row in rows if row["org_id"] not in loose)
    return id_queries(ids) + [{**which, "org_id": org} for org in sorted(loose)]


def id_queries(ids: list[str]) -> list[Doc]:
    """Filters that together select the rows of `ids`, LONG_IN ids each."""
    return [{"_id": {"$in": ids[at : at + LONG_IN]}} for at in range(0, len(ids), LONG_IN)]


def org_queries(orgs: set[str] | OrgRange | None) -> list[Doc]:
    """Filters that together select the rows of `orgs` (None: every organization): one
    for each organization of a set.

    With a period beside it, each reads one organization's rows of the period by the
    (organization, period) index, on any server. A single query with a list of ids would
    cost one round trip, but the embedded server reads such a query through the
    organization alone: every month of each one's history."""
    if orgs is None:
        return [{}]
    if isinstance(orgs, OrgRange):
        return [orgs.query()]
    return [{"org_id": org} for org in sorted(orgs)]


def mark_stale(
    dbs: Databases,
    generation: int,
    months: set[str],
    orgs: set[str] | None,
    by_month: bool,
    session: ClientSession | None,
    by_day: bool = False,
    lost: set[str] | None = None,
) -> tuple[set[str] | None, set[str], bool]:
    """Keep the marks of months whose levels by month lag their days. Return the
    organizations the write derives (None: every one), those of them that lost a day row
    (see `derive_months`), and whether it derives the levels by month in its own
    transaction.

    A part that leaves the levels by month behind (`by_month` false) marks its months with
    the organizations it wrote (past MARKED_ORGS of them, or not knowing, the whole month). The
    part that would derive them (`by_month`) adds the marked organizations to its own. If
    they are few (LONG_IN), it derives them itself and clears the marks; else it marks the
    months as well, and `derive_stale` derives them after it, in transactions bounded by
    rows: one transaction deriving a month of thousands of organizations besides writing
    days outgrows the cache of a server. Done before the write's rows, in its transaction:
    the marks are small.

    With `by_day`, the mark says the levels by day lag too; a later mark keeps that. A
    mark also names the organizations that lost a day row (`lost`; not given: every one of
    `orgs`), until their levels by month are derived again."""
    stale = dbs.level(USAGE_STALE_MONTHS, generation)
    marks = list(stale.find({"_id": {"$in": sorted(months)}}, session=session))
    lost = set(orgs or ()) if lost is None else lost
    if by_month:
        merged, merged_lost = orgs, lost
        for found in marks:
            if merged is not None and not found.get("whole"):
                merged = merged | set(found.get("orgs", ()))
                merged_lost = merged_lost | lost_of(found)
            else:
                merged = None
        if merged is not None and len(merged) <= LONG_IN:
            if marks:
                stale.delete_many({"_id": {"$in": sorted(months)}}, session=session)
            return merged, merged_lost, True
    marked = {mark["_id"]: mark for mark in marks}
    for month in sorted(months):
        earlier = marked.get(month, {})
        named = (
            None if orgs is None or earlier.get("whole") else orgs | set(earlier.get("orgs", ()))
        )
        if named is not None and not named and month not in marked:
            continue  # nothing changed, nothing to derive
        mark: Doc = {"_id": month, "whole": True}
        if named is not None and len(named) <= MARKED_ORGS:
            mark = {"_id": month, "orgs": sorted(named), "lost": sorted(lost | lost_of(earlier))}
        if by_day or earlier.get("by_day"):
            mark["by_day"] = True
        stale.replace_one({"_id": month}, mark, upsert=True, session=session)
    return orgs, lost, False


def lost_of(mark: Doc) -> set[str]:
    """The organizations a stale mark names that lost a day row since their levels by month
    were derived; a mark that does not say (an earlier version's) names every one."""
    named: Iterable[str] = mark.get("lost", mark.get("orgs")) or ()
    return set(named)


def clear_stale(
    dbs: Databases, generation: int, months: Iterable[str], session: ClientSession | None
) -> None:
    """Forget the marks of `months`: for a write that derives them whole."""
    dbs.level(USAGE_STALE_MONTHS, generation).delete_many(
        {"_id": {"$in": sorted(months)}}, session=session
    )


def derive_stale(
    dbs: Databases,
    target: Target,
    months: Iterable[str],
    session: ClientSession | None,
    heartbeat: Callable[[], None] | None = None,
) -> None:
    """Derive the levels by month of those of `months` marked stale, and clear their marks:
    the organizations a mark names, or a whole month, in parts (see `derive_in_ranges`)."""
    stale = dbs.level(USAGE_STALE_MONTHS, target.generation)
    for month in sorted(set(months)):
        mark = stale.find_one({"_id": month})
        if mark is None:
            continue
        named = None if mark.get("whole") else set(mark.get("orgs", ()))
        lost = lost_of(mark)
        if named is not None and session is None:
            # Without a transaction, a run dying inside a named organization's write could
            # leave any level of the month behind: the month is derived whole, and its mark
            # made whole first, so that a run cut short leaves the whole month to the next.
            mark_stale(dbs, target.generation, {month}, None, False, None)
            named = None
        # A repair's mark: the levels by day of the month lag their rows as well.
        days: list[str] | None = None if mark.get("by_day") else []
        derive_in_ranges(dbs, target, month, days, session, heartbeat, named, lost)


def mark_whole(
    dbs: Databases, target: Target, months: Iterable[str], session: ClientSession | None
) -> None:
    """Mark `months` stale whole, their levels by day too (a repair rewrites those), so
    that readers read them from their days and a run finishing them derives every level."""
    mark_stale(dbs, target.generation, set(months), None, False, session, by_day=True)
    if target.served:
        ledger.bump(dbs.rollup, target.generation, session)


def derive_in_ranges(
    dbs: Databases,
    target: Target,
    month: str,
    days: list[str] | None,
    session: ClientSession | None,
    heartbeat: Callable[[], None] | None = None,
    named: set[str] | None = None,
    lost: set[str] | None = None,
) -> None:
    """Derive a month marked stale, whole or for the organizations `named` (`lost`: see
    `derive_months`), in parts of at most `transaction_rows` day rows each (an organization
    is never split), one transaction each: its levels by month, and with `days` None its
    levels by day too. A whole month is derived in ranges of organization ids; named
    organizations together, or in halves of them while they hold more day rows than that.

    The mark stays until the last part, so that readers read the month from its days until
    every part is written, and a run cut short leaves it for the next run. The lease is
    renewed before each part (`heartbeat`). A part the server ended as too long is derived
    again in smaller parts, down to a single organization."""
    bound = dbs.settings.transaction_rows
    pending: list[set[str] | OrgRange] = []
    if named is None:
        pending.extend(org_ranges(dbs, target.generation, month, bound))
    else:
        pending.append(named)
    while pending:
        orgs = pending.pop(0)
        if heartbeat:
            heartbeat()
        write = functools.partial(
            derive_marked, dbs, target, month, orgs, days, not pending, session, bound, lost
        )
        try:
            in_transaction(session, write)
        except TooManyRows as exc:
            pending[:0] = halves(exc.orgs)
        except TransactionTooLong as exc:
            smaller = [orgs]
            if isinstance(orgs, set) and len(orgs) > 1:
                smaller = halves(orgs)
            while isinstance(orgs, OrgRange) and len(smaller) == 1 and bound > 1:
                bound //= 2
                smaller = list(org_ranges(dbs, target.generation, month, bound, orgs))
            if len(smaller) == 1:
                raise TransactionTooLong(
                    f"deriving {month} for one organization in one transaction outlived the "
                    f"server's limit ({exc}); raise the server's transactionLifetimeLimitSeconds"
                ) from exc
            log.warning(
                "a transaction outlived the server's limit; deriving its organizations in "
                "smaller ranges",
                extra={"month": month, "rows": bound},
            )
            pending[:0] = smaller


def halves(orgs: set[str]) -> list[set[str] | OrgRange]:
    """`orgs` in two sets, the lower ids first."""
    ids = sorted(orgs)
    return [set(ids[: len(ids) // 2]), set(ids[len(ids) // 2 :])]


class TooManyRows(Exception):
    """Organizations named together hold more day rows than a transaction may: derived again
    in halves (no count is read beforehand: that would cost a query an organization)."""

    def __init__(self, orgs: set[str]) -> None:
        super().__init__(f"{len(orgs)} organizations hold more day rows than a transaction may")
        self.orgs = orgs


def derive_marked(
    dbs: Databases,
    target: Target,
    month: str,
    orgs: set[str] | OrgRange,
    days: list[str] | None,
    last: bool,
    session: ClientSession | None,
    most_rows: int | None = None,
    lost: set[str] | None = None,
) -> None:
    """Derive `orgs`' levels of a stale `month` (by month; with `days` None, by day too);
    the `last` of them clears its mark. More than one organization named holding more than
    `most_rows` day rows raise TooManyRows, before anything is written. `lost`: see
    `derive_months`."""
    derive_months(
        dbs, target.generation, [month], session, days, orgs, most_rows=most_rows, lost=lost
    )
    if last:
        clear_stale(dbs, target.generation, [month], session)
        if target.served:
            ledger.bump(dbs.rollup, target.generation, session)


def org_ranges(
    dbs: Databases, generation: int, month: str, bound: int, within: OrgRange | None = None
) -> Iterator[OrgRange]:
    """Ranges of organization ids that cover every id (or every id `within`), each holding
    at most `bound` of the month's day rows (or one organization with more)."""
    within = within or OrgRange()
    counted = dbs.usage_daily(generation).aggregate(
        [
            {"$match": {**month_filter(month), **within.query()}},
            {"$group": {"_id": "$org_id", "rows": {"$sum": 1}}},
            {"$sort": {"_id": 1}},
        ]
    )
    first, size = within.first, 0
    for found in counted:
        org, rows = str(found["_id"]), int(found["rows"])
        if size and size + rows > bound:
            yield OrgRange(first, org)
            first, size = org, 0
        size += rows
    yield OrgRange(first, within.below)


def stale_months(
    dbs: Databases, generation: int, session: ClientSession | None = None
) -> list[str]:
    """Months whose levels by month lag their day rows: a run replacing them in parts was
    cut short before its last part."""
    found = dbs.level(USAGE_STALE_MONTHS, generation).find({}, session=session)
    return sorted(str(doc["_id"]) for doc in found)


def month_days(month: str) -> list[str]:
    """Every calendar day of `month` ("2026-09"), as day keys."""
    first = date.fromisoformat(f"{month}-01")
    following = (first + timedelta(days=31)).replace(day=1)
    return [day.isoformat() for day in day_range(first, following - timedelta(days=1))]


def any_dirty(dbs: Databases, generation: int, months: set[str], session: ClientSession) -> bool:
    """Whether a day of `months` is marked dirty: written without a transaction by a run
    that may have died between its day rows and their levels."""
    first, last = min(months), max(months)
    within = {"$gte": f"{first}-01", "$lte": f"{last}-31"}
    found = dbs.usage_days(generation).find_one({"_id": within, "dirty": True}, session=session)
    return found is not None


def save_days(
    dbs: Databases,
    target: Target,
    days: list[date],
    by_day: dict[str, list[Doc]],
    read_started: datetime,
    session: ClientSession | None = None,
    by_month: bool = True,
) -> tuple[int, int]:
    """Replace every row of `days` with `by_day`'s, re-derive their months and stamp them in
    the ledger: in one transaction when given a session. Without `by_month`, the levels by
    month are left for a later part of the same batch (see `recompute`). Return the rows
    written (a day whose rows did not change is not written again) and the rows removed.

    Without one, the days are marked dirty first, so that a writer dying half-way leaves
    them for the next run to recompute rather than silently wrong.
    """
    generation = target.generation
    usage = dbs.usage_daily(generation)
    labels = [day.isoformat() for day in days]
    new_rows = [row for label in labels for row in by_day.get(label, [])]
    new_ids = {row["_id"] for row in new_rows}
    stamp = {
        "run_id": target.run_id,
        "kind": target.kind,
        "read_started": read_started,
        "fingerprint": target.fingerprint,
    }

    def replace() -> tuple[int, int]:
        old = list(usage.find({"day": {"$in": labels}}, session=session))
        old_ids = {doc["_id"] for doc in old}
        months = {label[:7] for label in labels}
        # In a transaction the levels agreed with the day rows before it (unless a run
        # without one left a day dirty), so only the organizations whose day rows on these
        # days changed need theirs re-derived, and only the days that changed rewritten: a
        # nightly run over a few days of a platform with many small organizations rewrites
        # the months of the organizations active since the last run, not every one.
        # Without a transaction, a run that died half-way may have left any level behind.
        orgs, rewritten, lost = None, labels, None
        if session is not None and not any_dirty(dbs, generation, months, session):
            orgs, rewritten, lost = changed_rows(old, new_rows)
        orgs, lost, derives = mark_stale(
            dbs, generation, months, orgs, by_month, session, lost=lost
        )
        # When many organizations changed on these days, their levels by day are re-derived
        # whole: reading them by their index costs less than naming thousands of ids.
        if orgs is not None and len(orgs) > LONG_IN:
            orgs = None
        days_rewritten = set(rewritten)
        fresh = [row for row in new_rows if row["day"] in days_rewritten]
        if rewritten:
            usage.delete_many({"day": {"$in": rewritten}}, session=session)
        if fresh:
            usage.insert_many(descending(fresh), ordered=False, session=session)
        derive_months(dbs, generation, months, session, rewritten, orgs, derives, lost=lost)
        ledger.stamp_days(dbs, generation, days, stamp, session)
        if target.served:
            ledger.bump(dbs.rollup, generation, session)
        return len(fresh), len(old_ids - new_ids)

    if session is None:
        ledger.mark_dirty(dbs, generation, days, target.run_id)
    return in_transaction(session, replace)


def changed_rows(old: list[Doc], new: list[Doc]) -> tuple[set[str], list[str], set[str]]:
    """The organizations and the days of the rows of `old` and `new` (day rows of the same
    days) that are not in both alike (a row gone, a row added, or a row that changed), and
    the organizations of the rows gone."""
    stored = {doc["_id"]: plain(doc) for doc in old}
    changed = []
    for row in new:
        have = stored.pop(row["_id"], None)
        if have != plain(row):
            changed.append(row)
    gone = list(stored.values())
    changed += gone
    orgs = {row["org_id"] for row in changed}
    return orgs, sorted({row["day"] for row in changed}), {row["org_id"] for row in gone}


def descending(rows: list[Doc]) -> list[Doc]:
    """Day rows in descending order of their unique key, the order to insert them in after
    deleting their days in the same transaction.

    The embedded server checks a unique key by looking for the nearest entry at or after it,
    stepping over entries deleted but not yet committed. In ascending order every insert
    would step over all the deleted entries after its own, so replacing a day of n groups
    costs n² steps (20,000 groups: 28 s); in descending order the entries after it are the
    ones just inserted (7 s). MongoDB checks either order alike."""
    return sorted(
        rows, key=lambda row: (str(row["org_id"]), str(row["agent_id"]), row["day"]), reverse=True
    )


class TransactionTooLong(Exception):
    """The server ended a transaction before its commit, as it does with one that outlives
    its lifetime limit (60 s by default on MongoDB): its writes are gone, nothing is half
    written, and the same days in smaller transactions may fit."""


# TransactionExceededLifetimeLimitSeconds, and NoSuchTransaction (the server aborted it: the
# commit finds no transaction), which a failover also gives: that one is retried once first.
LIFETIME_EXCEEDED = 290
NO_SUCH_TRANSACTION = 251


def in_transaction(session: ClientSession | None, write: Callable[[], T]) -> T:
    """Run `write` in one transaction of `session`, or plainly when there is none."""
    if session is None:
        return write()
    # Not `with_transaction`: it retries for two minutes, and a run must fail fast when the
    # database goes away. A write conflict with another writer is worth a couple of retries.
    for attempt in range(TRANSACTION_ATTEMPTS):
        try:
            with session.start_transaction():
                return write()
        except PyMongoError as exc:
            code = exc.code if isinstance(exc, OperationFailure) else None
            if code == LIFETIME_EXCEEDED or (code == NO_SUCH_TRANSACTION and attempt > 0):
                # Retrying the same transaction would only outlive the limit again.
                raise TransactionTooLong(str(exc)) from exc
            if code == NO_SUCH_TRANSACTION:
                continue
            retry = exc.has_error_label("TransientTransactionError") and not isinstance(
                exc, ConnectionFailure
            )
            if not retry or attempt + 1 == TRANSACTION_ATTEMPTS:
                raise
            time.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


def split_by_rows(days: list[date], rows: list[int], bound: int) -> list[list[date]]:
    """Consecutive groups of `days` of at most `bound` rows each, so that a transaction stays
    well inside the server's limits; a day is never split, so a day with more rows than
    `bound` is a group of its own, still replaced in one transaction."""
    groups: list[list[date]] = []
    size = 0
    for day, count in zip(days, rows, strict=True):
        if groups and size + count <= bound:
            groups[-1].append(day)
            size += count
        else:
            groups.append([day])
            size = count
    return groups


def save_counted(
    dbs: Databases,
    target: Target,
    by_day: dict[str, list[Doc]],
    read_started: datetime,
    session: ClientSession | None,
    stats: Stats,
    last: date,
    part: list[date],
) -> None:
    # A batch in several parts derives its month's levels by month once, with its last day:
    # each part before leaves them stale, which readers see and read around.
    by_month = part[-1] == last
    written, removed = save_days(dbs, target, part, by_day, read_started, session, by_month)
    stats.rows_written += written
    stats.rows_removed += removed


def save_in_parts(parts: list[list[date]], save: Callable[[list[date]], None]) -> None:
    """Save each part in its own transaction; a part the server ended as too long is saved
    again as two halves (a slow server, or rows far larger than usual), down to single days,
    which are never split: a day that cannot be replaced in one transaction fails the run,
    naming the day and what to do."""
    pending = list(parts)
    while pending:
        part = pending.pop(0)
        try:
            save(part)
        except TransactionTooLong as exc:
            if len(part) == 1:
                raise TransactionTooLong(
                    f"replacing {part[0]} in one transaction outlived the server's limit "
                    f"({exc}); raise the server's transactionLifetimeLimitSeconds"
                ) from exc
            half = len(part) // 2
            log.warning(
                "a transaction outlived the server's limit; saving its days in two",
                extra={"first": part[0].isoformat(), "last": part[-1].isoformat()},
            )
            pending[:0] = [part[:half], part[half:]]


def recompute(
    dbs: Databases,
    target: Target,
    days: Iterable[date],
    progress: Progress | None = None,
    heartbeat: Callable[[], None] | None = None,
    session: ClientSession | None = None,
    on_read: Callable[[datetime], None] | None = None,
    clock: Callable[[], datetime] | None = None,
) -> Stats:
    """Recompute the given local days, a batch at a time.

    `clock` stamps when each batch began reading the source (default: the server's clock).
    """
    total = Stats()
    for first, last in batches(days):
        read_started = (clock or dbs.server_time)()
        if on_read:
            on_read(read_started)
        by_day, stats = fetch_rows(dbs, first, last)
        batch = day_range(first, last)
        sizes = [len(by_day.get(day.isoformat(), [])) for day in batch]
        parts = split_by_rows(batch, sizes, dbs.settings.transaction_rows)
        save = functools.partial(
            save_counted, dbs, target, by_day, read_started, session, stats, batch[-1]
        )
        save_in_parts(parts, save)
        derive_stale(dbs, target, {first.isoformat()[:7]}, session, heartbeat)
        stats.days = len(batch)
        total.add(stats)
        if heartbeat:
            heartbeat()
        if progress:
            progress(len(batch))
    return total


def count_bad_created_at(dbs: Databases, changed_since: datetime | None) -> int:
    pipeline = source.bad_created_at_pipeline(dbs.settings, changed_since)
    counted = list(dbs.requests().aggregate(pipeline, allowDiskUse=True))
    return int(counted[0]["n"]) if counted else 0


def changed_days(dbs: Databases, changed_since: datetime, before: date) -> dict[date, datetime]:
    """Older days whose source documents changed since `changed_since`, with the latest
    change of each."""
    pipeline = source.changed_days_pipeline(changed_since, before, dbs.settings)
    found = dbs.requests().aggregate(pipeline, allowDiskUse=True)
    return {date.fromisoformat(doc["_id"]): doc["updated"] for doc in found}


def ensure_indexes(dbs: Databases, generation: int) -> None:
    usage = dbs.usage_daily(generation)
    usage.create_index(
        [("org_id", ASCENDING), ("agent_id", ASCENDING), ("day", ASCENDING)],
        unique=True,
        name="uniq_org_agent_day",
    )
    usage.create_index([("day", ASCENDING)], name="day")
    usage.create_index([("org_id", ASCENDING), ("day", ASCENDING)], name="org_day")
    for level in lattice.LEVELS:
        stored = dbs.level(level.collection, generation)
        stored.create_index([(level.period, ASCENDING)], name=level.period)
        stored.create_index(
            [("org_id", ASCENDING), (level.period, ASCENDING)], name=f"org_{level.period}"
        )
    dbs.level(USAGE_PLATFORM, generation).create_index(
        [("period", ASCENDING), ("key", ASCENDING)], name="period_key"
    )
    dbs.usage_days(generation).create_index([("dirty", ASCENDING)], name="dirty", sparse=True)
    # Made before any transaction writes to it: no run creates a collection in one.
    if generation_name(USAGE_STALE_MONTHS, generation) not in dbs.rollup.list_collection_names():
        dbs.rollup.create_collection(generation_name(USAGE_STALE_MONTHS, generation))
    runs.ensure_indexes(dbs.rollup)


def local_today(now: datetime, settings: Settings) -> date:
    """`now` is naive UTC; the reporting timezone decides which day it is."""
    return now.replace(tzinfo=UTC).astimezone(settings.zone).date()
