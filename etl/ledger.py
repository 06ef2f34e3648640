"""The rollup's state and day ledger: the generation served, its definition, and for every
computed day the run that computed it and when that run began reading the source."""

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from pymongo import DESCENDING, ReplaceOne, UpdateOne
from pymongo.client_session import ClientSession
from pymongo.database import Database

from etl import runs
from etl.db import Databases, Doc
from etl.definition import Definition, DefinitionMismatch

STATE = "etl_state"
STATE_ID = "rollup"
# A rollup written before definitions were pinned: its pipeline meant what version 1 did.
LEGACY_VERSION = 1
# Days computed before the ledger existed: treated as read at the dawn of time.
EPOCH = datetime(1970, 1, 1)


@dataclass(frozen=True)
class Pending:
    """A generation a rebuild is writing, not yet served."""

    generation: int
    definition: Definition
    scan_from: datetime | None
    first: date | None
    last: date | None
    # Whether every write to it kept the platform level: a rebuild begun before the level
    # existed and resumed after it has days without it.
    platform: bool = True


@dataclass(frozen=True)
class State:
    generation: int
    definition: Definition
    # Source changes since this instant are looked for by the next nightly run.
    scan_from: datetime | None
    # Moves with every committed write to the served generation; keys caches of reads.
    version: int
    pending: Pending | None
    # The last day the generation is complete for, as its last nightly run (or the rebuild
    # that made it) said.
    complete_through: date | None = None
    # Whether the generation has the platform level: one written since the level exists
    # has it from its first day; an older one is read from its organization rows until it is
    # rebuilt.
    platform: bool = False

    @property
    def token(self) -> str:
        return f"{self.generation}.{self.version}"


def _day(value: Any) -> date | None:
    return date.fromisoformat(value) if isinstance(value, str) else None


def read_state(db: Database[Doc]) -> State | None:
    doc = db[STATE].find_one({"_id": STATE_ID})
    if doc is None:
        return None
    pending = None
    if doc.get("pending"):
        p = doc["pending"]
        pending = Pending(
            generation=int(p["generation"]),
            definition=Definition.from_doc(p["definition"]),
            scan_from=p.get("scan_from"),
            first=_day(p.get("first")),
            last=_day(p.get("last")),
            platform=bool(p.get("platform_level")),
        )
    return State(
        generation=int(doc["generation"]),
        definition=Definition.from_doc(doc["definition"]),
        scan_from=doc.get("scan_from"),
        version=int(doc.get("version", 0)),
        pending=pending,
        complete_through=_day(doc.get("complete_through")),
        platform=bool(doc.get("platform_level")),
    )


def legacy_definition(db: Database[Doc], wanted: Definition) -> Definition:
    """What an unversioned rollup was built under, as its newest run recorded it."""
    run = db[runs.RUNS].find_one({"filter": {"$exists": True}}, sort=[("started_at", DESCENDING)])
    recorded = (run or {}).get("filter") or {}
    return Definition(
        timezone=(run or {}).get("timezone", wanted.timezone),
        billable_status=recorded.get("status", wanted.billable_status),
        billable_min_depth=recorded.get("depth_gt", wanted.billable_min_depth),
        exclude_test_mode=recorded.get("exclude_test_mode", wanted.exclude_test_mode),
        version=LEGACY_VERSION,
    )


def adopt(dbs: Databases, wanted: Definition) -> State:
    """The stored state; on first use, generation 1 under `wanted` (or, when rows exist from
    before definitions were pinned, under what their runs recorded, with the days they span
    as coverage)."""
    state = read_state(dbs.rollup)
    if state is not None:
        return state
    definition = wanted
    daily = dbs.usage_daily(1)
    oldest = daily.find_one({}, sort=[("day", 1)], projection={"day": 1})
    if oldest is not None:
        newest = daily.find_one({}, sort=[("day", -1)], projection={"day": 1})
        assert newest is not None
        definition = legacy_definition(dbs.rollup, wanted)
        first, last = date.fromisoformat(oldest["day"]), date.fromisoformat(newest["day"])
        days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
        stamp = {"run_id": None, "kind": "legacy", "read_started": EPOCH}
        stamp_days(dbs, 1, days, {**stamp, "fingerprint": definition.fingerprint})
    dbs.rollup[STATE].update_one(
        {"_id": STATE_ID},
        {
            "$setOnInsert": {
                "generation": 1,
                "definition": definition.as_doc(),
                "scan_from": None,
                "version": 0,
                "pending": None,
                # Rows from before are not in the platform level.
                "platform_level": oldest is None,
            }
        },
        upsert=True,
    )
    state = read_state(dbs.rollup)
    assert state is not None
    return state


def require(dbs: Databases, wanted: Definition) -> State:
    """The state, if the served generation is under `wanted`; else DefinitionMismatch."""
    state = adopt(dbs, wanted)
    if state.definition != wanted:
        raise DefinitionMismatch(state.definition, wanted)
    return state


def start_scan(db: Database[Doc], generation: int, when: datetime) -> None:
    """A generation's first source read is where the nightly change scan starts."""
    db[STATE].update_one(
        {"_id": STATE_ID, "generation": generation, "scan_from": None},
        {"$set": {"scan_from": when}},
    )


def nightly_done(db: Database[Doc], generation: int, scan_start: datetime, through: date) -> None:
    """The next nightly run scans changes from this one's start; the data is complete
    through `through`."""
    db[STATE].update_one(
        {"_id": STATE_ID, "generation": generation},
        {"$set": {"scan_from": scan_start, "complete_through": through.isoformat()}},
    )


def bump(db: Database[Doc], generation: int, session: ClientSession | None) -> None:
    """A write to `generation` committed: readers' caches of it are stale."""
    db[STATE].update_one(
        {"_id": STATE_ID, "generation": generation}, {"$inc": {"version": 1}}, session=session
    )


def begin_pending(db: Database[Doc], pending: Pending) -> None:
    doc = {
        "generation": pending.generation,
        "definition": pending.definition.as_doc(),
        "scan_from": pending.scan_from,
        "first": pending.first.isoformat() if pending.first else None,
        "last": pending.last.isoformat() if pending.last else None,
        "platform_level": pending.platform,
    }
    db[STATE].update_one({"_id": STATE_ID}, {"$set": {"pending": doc}})


def note_pending_read(db: Database[Doc], generation: int, when: datetime) -> None:
    """The first source read of a pending generation: where its change scan will start."""
    db[STATE].update_one(
        {"_id": STATE_ID, "pending.generation": generation, "pending.scan_from": None},
        {"$set": {"pending.scan_from": when}},
    )


def switch(db: Database[Doc], pending: Pending, complete_through: date | None) -> None:
    """Serve the pending generation: one write, so a reader sees the old or the new."""
    db[STATE].update_one(
        {"_id": STATE_ID, "pending.generation": pending.generation},
        {
            "$set": {
                "generation": pending.generation,
                "definition": pending.definition.as_doc(),
                "scan_from": pending.scan_from,
                "complete_through": complete_through.isoformat() if complete_through else None,
                "pending": None,
                "platform_level": pending.platform,
            },
            "$inc": {"version": 1},
        },
    )


# The day ledger ----------------------------------------------------------------------------


def stamp_days(
    dbs: Databases,
    generation: int,
    days: list[date],
    stamp: Doc,
    session: ClientSession | None = None,
) -> None:
    """Record that `days` were computed as `stamp` says (run, kind, read_started)."""
    if not days:
        return
    dbs.usage_days(generation).bulk_write(
        [
            ReplaceOne({"_id": day.isoformat()}, {**stamp, "dirty": False}, upsert=True)
            for day in days
        ],
        ordered=False,
        session=session,
    )


def clear_dirty(dbs: Databases, generation: int, days: list[date]) -> None:
    dbs.usage_days(generation).update_many(
        {"_id": {"$in": [day.isoformat() for day in days]}},
        {"$set": {"dirty": False}, "$unset": {"dirty_run_id": ""}},
    )


def mark_dirty(dbs: Databases, generation: int, days: list[date], run_id: Any) -> None:
    """Days about to be rewritten without a transaction: recomputed by the next run if the
    writer dies half-way."""
    if not days:
        return
    dbs.usage_days(generation).bulk_write(
        [
            UpdateOne(
                {"_id": day.isoformat()},
                {"$set": {"dirty": True, "dirty_run_id": run_id}},
                upsert=True,
            )
            for day in days
        ],
        ordered=False,
    )


def computed(dbs: Databases, generation: int, days: list[date]) -> dict[date, datetime]:
    """When the computation of each of `days` that has one began reading the source."""
    found = dbs.usage_days(generation).find(
        {"_id": {"$in": [day.isoformat() for day in days]}}, {"read_started": 1, "dirty": 1}
    )
    return {
        date.fromisoformat(doc["_id"]): (EPOCH if doc.get("dirty") else doc["read_started"])
        for doc in found
        if doc.get("read_started") is not None or doc.get("dirty")
    }


def dirty_days(dbs: Databases, generation: int) -> list[date]:
    found = dbs.usage_days(generation).find({"dirty": True}, {"_id": 1})
    return sorted(date.fromisoformat(doc["_id"]) for doc in found)


def covered_days(dbs: Databases, generation: int) -> list[date]:
    found = dbs.usage_days(generation).find({}, {"_id": 1}, sort=[("_id", 1)])
    return [date.fromisoformat(doc["_id"]) for doc in found]


@dataclass(frozen=True)
class Coverage:
    first: date | None
    last: date | None
    days: int
    gaps: list[tuple[date, date]]

    def as_doc(self) -> Doc:
        return {
            "first": self.first.isoformat() if self.first else None,
            "last": self.last.isoformat() if self.last else None,
            "days": self.days,
            "gaps": [[a.isoformat(), b.isoformat()] for a, b in self.gaps],
        }


def coverage_of(days: list[date]) -> Coverage:
    """First and last computed day, and the runs of days between them never computed."""
    if not days:
        return Coverage(None, None, 0, [])
    ordered = sorted(set(days))
    gaps = [
        (before + timedelta(days=1), after - timedelta(days=1))
        for before, after in zip(ordered, ordered[1:], strict=False)
        if (after - before).days > 1
    ]
    return Coverage(ordered[0], ordered[-1], len(ordered), gaps)


def coverage(dbs: Databases, generation: int) -> Coverage:
    return coverage_of(covered_days(dbs, generation))


def first_day(dbs: Databases, generation: int) -> date | None:
    """The first computed day (cheap: the ledger's _id is the day)."""
    doc = dbs.usage_days(generation).find_one({}, {"_id": 1}, sort=[("_id", 1)])
    return date.fromisoformat(doc["_id"]) if doc else None


def last_day(dbs: Databases, generation: int) -> date | None:
    doc = dbs.usage_days(generation).find_one({}, {"_id": 1}, sort=[("_id", -1)])
    return date.fromisoformat(doc["_id"]) if doc else None


def data_through(dbs: Databases, state: State | None) -> date | None:
    """The last day the served generation is complete for, never past its last computed
    day. (A rollup from before generations kept it only in its nightly run records.)"""
    generation = state.generation if state else 1
    through = state.complete_through if state else None
    if through is None:
        through = runs.data_through(dbs.rollup)
    last = last_day(dbs, generation)
    if through is None or last is None:
        return through
    return min(through, last)
