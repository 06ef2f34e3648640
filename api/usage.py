"""Read rollup rows for a scope and range, and fold them into buckets."""

import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from bson import ObjectId
from pymongo.database import Database

from api.auth import Principal, is_object_id
from api.buckets import (
    Bucket,
    Granularity,
    GranularityChoice,
    Scope,
    default_range,
    make_buckets,
    range_days,
    resolve_granularity,
)
from etl import dates, ledger, runs
from etl.db import (
    USAGE_DAILY,
    USAGE_MONTHLY,
    USAGE_ORG_DAILY,
    USAGE_ORG_MONTHLY,
    Databases,
    Doc,
)
from etl.definition import LATTICE_VERSION, Definition
from etl.rollup import MEASURES
from etl.settings import Settings
from etl.source import UNATTRIBUTED

METRICS = list(MEASURES)


class ParamError(Exception):
    """A parameter the caller sent is wrong: 422."""

    def __init__(self, param: str, reason: str) -> None:
        super().__init__(f"{param}: {reason}")
        self.param = param
        self.reason = reason


class Forbidden(Exception):
    """The caller's key may not see what it asked for: 403."""


@dataclass(frozen=True)
class UsageQuery:
    scope: Scope
    org_id: str | None
    agent_id: str | None
    first: date
    last: date
    granularity: Granularity
    include_internal: bool
    # Paging of the rows (None: every row) and a case-insensitive name filter.
    q: str | None = None
    limit: int | None = None
    offset: int = 0


def parse_date(value: str | None, param: str) -> date | None:
    if value is None or value == "":
        return None
    try:
        return dates.parse_day(value)
    except ValueError as exc:
        raise ParamError(param, str(exc)) from None


def resolve_query(
    *,
    scope: Scope,
    org_id: str | None,
    agent_id: str | None,
    start: str | None,
    end: str | None,
    granularity: GranularityChoice,
    include_internal: bool,
    principal: Principal,
    today: date,
    settings: Settings,
    q: str | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> UsageQuery:
    """Apply defaults, validation and the access rules to the raw parameters."""
    if not principal.is_staff:
        if include_internal:
            raise Forbidden("include_internal is for platform staff keys only")
        if org_id is not None and org_id.lower() != principal.org_id:
            raise Forbidden("this key may only read its own organization")
        if scope == "platform":
            scope = "org"
        org_id = principal.org_id
    if scope in ("org", "agent"):
        if not org_id:
            raise ParamError("org_id", f"required for scope={scope}")
        if not is_object_id(org_id):
            raise ParamError("org_id", f"{org_id!r} is not a 24-character ObjectId hex string")
        org_id = org_id.lower()
    else:
        org_id = None
    if scope == "agent":
        if not agent_id:
            raise ParamError("agent_id", "required for scope=agent")
        if agent_id != UNATTRIBUTED and not is_object_id(agent_id):
            raise ParamError("agent_id", f"{agent_id!r} is not an agent id or 'unattributed'")
        agent_id = agent_id.lower()
    else:
        agent_id = None
    first, last = parse_date(start, "start"), parse_date(end, "end")
    default_first, default_last = default_range(scope, today)
    if first is None and last is None:
        first, last = default_first, default_last
    elif first is None:
        assert last is not None
        first = last - (default_last - default_first)
    elif last is None:
        last = first + (default_last - default_first)
    if first > last:
        raise ParamError("start", f"{first} is after end {last}")
    if range_days(first, last) > settings.max_range_days:
        raise ParamError(
            "end",
            f"the range is {range_days(first, last)} days; at most {settings.max_range_days}",
        )
    return UsageQuery(
        scope=scope,
        org_id=org_id,
        agent_id=agent_id,
        first=first,
        last=last,
        granularity=resolve_granularity(granularity, first, last),
        include_internal=include_internal,
        q=q.strip().casefold() if q and q.strip() else None,
        limit=limit,
        offset=offset,
    )


def scope_filter(query: UsageQuery, settings: Settings) -> Doc:
    """Which rollup rows belong to the query's organization, agent and internal rule."""
    match: Doc = {}
    if query.org_id is not None:
        match["org_id"] = query.org_id
    if query.agent_id is not None:
        match["agent_id"] = query.agent_id
    if not query.include_internal and settings.internal_org_ids:
        if query.org_id is None:
            match["org_id"] = {"$nin": settings.internal_org_ids}
        elif query.org_id in settings.internal_org_ids:
            match["org_id"] = {"$in": []}
    return match


def bucket_expr(buckets: list[Bucket], granularity: Granularity) -> Any:
    """An expression mapping a row's `day` string to its bucket key, in the database."""
    if granularity == "day":
        return "$day"
    if granularity == "month":
        return {"$substrBytes": ["$day", 0, 7]}
    branches = [
        {"case": {"$lt": ["$day", following.start.isoformat()]}, "then": bucket.key}
        for bucket, following in zip(buckets, buckets[1:], strict=False)
    ]
    if not branches:
        return buckets[0].key
    return {"$switch": {"branches": branches, "default": buckets[-1].key}}


def group_stage(query: UsageQuery, bucket: Any) -> Doc:
    group_field = "$org_id" if query.scope == "platform" else "$agent_id"
    return {
        "$group": {
            "_id": {"id": group_field, "b": bucket},
            **{name: {"$sum": f"${name}"} for name in METRICS},
        }
    }


def daily_pipeline(query: UsageQuery, buckets: list[Bucket], settings: Settings) -> list[Doc]:
    """Group the daily rows of `buckets` (contiguous, in order) into them."""
    days = {"$gte": buckets[0].start.isoformat(), "$lte": buckets[-1].end.isoformat()}
    return [
        {"$match": {"day": days, **scope_filter(query, settings)}},
        group_stage(query, bucket_expr(buckets, query.granularity)),
    ]


def monthly_pipeline(query: UsageQuery, months: list[str], settings: Settings) -> list[Doc]:
    """Group the monthly rows of whole months: a few rows stand for a month of days."""
    return [
        {"$match": {"month": {"$in": months}, **scope_filter(query, settings)}},
        group_stage(query, "$month"),
    ]


def fetch_groups(
    dbs: Databases,
    query: UsageQuery,
    buckets: list[Bucket],
    generation: int,
    organization_levels: bool = True,
) -> list[Doc]:
    """Rollup totals per (row id, bucket key), from the coarsest rows that are exact: a
    platform view needs no agents, so it reads the organization levels (when the generation
    has them: a rollup from before them, served until it is rebuilt, has not)."""
    settings = dbs.settings
    by_org = query.scope == "platform" and organization_levels
    daily = dbs.reader(USAGE_ORG_DAILY if by_org else USAGE_DAILY, generation)
    if query.granularity != "month":
        return list(daily.aggregate(daily_pipeline(query, buckets, settings)))
    groups: list[Doc] = []
    whole = [bucket.key for bucket in buckets if not bucket.partial]
    if whole:
        pipeline = monthly_pipeline(query, whole, settings)
        monthly = dbs.reader(USAGE_ORG_MONTHLY if by_org else USAGE_MONTHLY, generation)
        groups += monthly.aggregate(pipeline)
    # Only the first and the last month of a range can be clipped.
    for bucket in buckets:
        if bucket.partial:
            groups += daily.aggregate(daily_pipeline(query, [bucket], settings))
    return groups


def fetch_names(db: Database[Doc], collection: str, ids: list[str]) -> dict[str, str]:
    """Display names by id from a source collection whose _id may be ObjectId or string."""
    wanted: list[Any] = [ObjectId(i) for i in ids if is_object_id(i)] + list(ids)
    names: dict[str, str] = {}
    if not wanted:
        return names
    for doc in db[collection].find({"_id": {"$in": wanted}}, {"name": 1}):
        name = doc.get("name")
        if isinstance(name, str) and name.strip():
            names[str(doc["_id"]).lower()] = name.strip()
    return names


def zero() -> dict[str, int]:
    return dict.fromkeys(METRICS, 0)


def fold(
    groups: list[Doc], buckets: list[Bucket], names: dict[str, str], always: tuple[str, ...] = ()
) -> tuple[list[Doc], Doc]:
    """Rows (sorted by conversations, largest first) and their total, every bucket present.

    Ids in `always` get a row even when they had no activity.
    """
    cells: dict[str, dict[str, dict[str, int]]] = {row_id: {} for row_id in always}
    for group in groups:
        row = cells.setdefault(group["_id"]["id"], {})
        cell = row.setdefault(group["_id"]["b"], zero())
        for name in METRICS:
            cell[name] += int(group[name])

    def make_row(row_id: str | None, name: str, by_key: dict[str, dict[str, int]]) -> Doc:
        cells_in_order = [by_key.get(b.key, zero()) for b in buckets]
        series = [{"key": b.key, **cell} for b, cell in zip(buckets, cells_in_order, strict=True)]
        totals = {name: sum(cell[name] for cell in cells_in_order) for name in METRICS}
        return {"id": row_id, "name": name, "totals": totals, "buckets": series}

    rows = [make_row(i, names.get(i, i), by_key) for i, by_key in cells.items()]
    rows.sort(key=lambda row: (-row["totals"]["conversations"], row["name"], row["id"]))
    total_cells: dict[str, dict[str, int]] = {}
    for by_key in cells.values():
        for key, cell in by_key.items():
            into = total_cells.setdefault(key, zero())
            for name in METRICS:
                into[name] += cell[name]
    return rows, make_row(None, "Total", total_cells)


@dataclass(frozen=True)
class Page:
    rows: list[Doc]
    # The rows matching the filter that are not on this page, summed; None when there are none.
    other: Doc | None
    total: Doc
    total_rows: int


def sum_rows(rows: list[Doc], buckets: list[Bucket], name: str) -> Doc:
    """A row (id None) that sums `rows`, bucket by bucket."""
    cells = [zero() for _ in buckets]
    for row in rows:
        for cell, bucket_cell in zip(cells, row["buckets"], strict=True):
            for metric in METRICS:
                cell[metric] += int(bucket_cell[metric])
    series = [{"key": b.key, **cell} for b, cell in zip(buckets, cells, strict=True)]
    totals = {metric: sum(cell[metric] for cell in cells) for metric in METRICS}
    return {"id": None, "name": name, "totals": totals, "buckets": series}


def paginate(rows: list[Doc], total: Doc, buckets: list[Bucket], query: UsageQuery) -> Page:
    """The rows matching `q` (in name or id), one page of them, and an `Other` row summing
    the rest, so that page + Other = total, the total of every matching row."""
    if query.q is not None:
        needle = query.q
        rows = [r for r in rows if needle in r["name"].casefold() or needle in (r["id"] or "")]
        total = sum_rows(rows, buckets, "Total")
    if query.limit is None:
        return Page(rows[query.offset :], None, total, len(rows))
    end = query.offset + query.limit
    page, rest = rows[query.offset : end], rows[: query.offset] + rows[end:]
    return Page(page, sum_rows(rest, buckets, "Other") if rest else None, total, len(rows))


@dataclass(frozen=True)
class Served:
    """What the API serves right now, as last read from the run records and the state."""

    # Moves with every committed write, generation switch and finished run: keys the cache.
    token: str
    generation: int
    definition: Definition | None
    data_from: date | None
    # Runs of days between data_from and the last computed day that were never computed.
    gaps: tuple[tuple[date, date], ...]
    data_through: date | None
    finished_at: datetime | None

    def definition_doc(self) -> Doc | None:
        return self.definition.as_doc() if self.definition else None


def read_served(dbs: Databases) -> Served:
    state = ledger.read_state(dbs.rollup)
    generation = state.generation if state else 1
    latest = runs.latest_finished_run(dbs.rollup)
    cover = ledger.coverage(dbs, generation)
    return Served(
        token=f"{state.token if state else '-'}:{latest['_id'] if latest else '-'}",
        generation=generation,
        definition=state.definition if state else None,
        data_from=cover.first,
        gaps=tuple(cover.gaps),
        data_through=ledger.data_through(dbs, state),
        finished_at=latest.get("finished_at") if latest else None,
    )


CacheKey = tuple[str, bytes, date]


class UsageService:
    """Answers usage queries from the served generation, caching whole responses.

    A response is cached under the `Served.token` read before it was computed, so a body
    can never outlive the data it came from.
    """

    def __init__(self, dbs: Databases, check_seconds: float = 2.0) -> None:
        self.dbs = dbs
        self.settings = dbs.settings
        self.check_seconds = check_seconds
        self._cache: OrderedDict[tuple[CacheKey, str], bytes] = OrderedDict()
        self._served: Served | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        # For /metrics: plain counts, so a warm call pays no more than an addition.
        self.hits = 0
        self.misses = 0

    def _due(self) -> bool:
        return self._served is None or time.monotonic() - self._checked >= self.check_seconds

    def served(self) -> Served:
        """What is served, re-read from the database at most every `check_seconds`."""
        with self._refresh_lock:  # one reader of the run records at a time
            if self._due():
                self._served = read_served(self.dbs)
                self._checked = time.monotonic()
            assert self._served is not None
            return self._served

    def known(self) -> Served | None:
        """What is served, if read recently enough; never waits on the database."""
        return None if self._due() or self.check_seconds == 0 else self._served

    def cached(self, key: CacheKey, served: Served | None = None) -> bytes | None:
        """A response cached for `key` under what is served, or None."""
        served = served or self.known()
        if served is None:
            return None
        with self._lock:
            body = self._cache.get((key, served.token))
            if body is not None:
                self._cache.move_to_end((key, served.token))
                self.hits += 1
            return body

    def remember(self, key: CacheKey, served: Served, body: bytes) -> None:
        if self.settings.cache_entries:
            with self._lock:
                self._cache[(key, served.token)] = body
                while len(self._cache) > self.settings.cache_entries:
                    self._cache.popitem(last=False)

    def report_json(self, query: UsageQuery, served: Served) -> bytes:
        """The response body, computed: what a call that missed the cache costs."""
        self.misses += 1
        return json.dumps(self.report(query, served), separators=(",", ":")).encode()

    def report(self, query: UsageQuery, served: Served | None = None) -> Doc:
        served = served or self.served()
        settings = self.settings
        buckets = make_buckets(
            query.first, query.last, query.granularity, settings.week_start_index
        )
        definition = served.definition
        lattice = definition is not None and definition.version >= LATTICE_VERSION
        groups = fetch_groups(self.dbs, query, buckets, served.generation, lattice)
        active = sorted({group["_id"]["id"] for group in groups})
        # Names only for rows with data in what the key may see: an agent id of another
        # organization asked for by name gets its id back, never the other's name.
        if query.scope == "platform":
            names = fetch_names(self.dbs.source, settings.org_names, active)
        else:
            names = fetch_names(self.dbs.source, settings.agent_names_collection, active)
            names[UNATTRIBUTED] = "Unattributed"
        always = (query.agent_id,) if query.agent_id else ()
        rows, total = fold(groups, buckets, names, always)
        page = paginate(rows, total, buckets, query)
        return {
            "scope": query.scope,
            "org_id": query.org_id,
            "agent_id": query.agent_id,
            "start": query.first.isoformat(),
            "end": query.last.isoformat(),
            "granularity": query.granularity,
            "timezone": definition.timezone if definition else settings.timezone,
            "metrics": METRICS,
            "buckets": [
                {
                    "key": b.key,
                    "label": b.label,
                    "start": b.start.isoformat(),
                    "end": b.end.isoformat(),
                    "partial": b.partial,
                }
                for b in buckets
            ],
            "rows": page.rows,
            "other": page.other,
            "total": page.total,
            "total_rows": page.total_rows,
            "limit": query.limit,
            "offset": query.offset,
            "data_from": served.data_from.isoformat() if served.data_from else None,
            # Never computed: buckets within these show no data, not zero.
            "data_gaps": [
                [first.isoformat(), last.isoformat()]
                for first, last in served.gaps
                if first <= query.last and last >= query.first
            ],
            "data_through": served.data_through.isoformat() if served.data_through else None,
            "last_run_finished_at": (
                served.finished_at.isoformat() + "Z" if served.finished_at else None
            ),
            "generation": served.generation,
            "definition": served.definition_doc(),
        }
