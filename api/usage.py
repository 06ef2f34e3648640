"""Read rollup rows for a scope and range, and fold them into buckets."""

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any, Literal

from bson import ObjectId
from pymongo.database import Database
from pymongo.errors import PyMongoError

from api import platform_view
from api.auth import Principal, is_object_id
from api.background import Failures, Looks, one_line
from api.buckets import (
    Bucket,
    Granularity,
    GranularityChoice,
    Scope,
    default_range,
    make_buckets,
    previous_buckets,
    previous_range,
    range_days,
    resolve_granularity,
)
from api.cells import MEASURES, METRICS, Cell, change_of, changes, combined
from etl import dates, ledger, runs
from etl.db import (
    LONG_IN,
    USAGE_DAILY,
    USAGE_MONTHLY,
    USAGE_ORG_DAILY,
    USAGE_ORG_MONTHLY,
    USAGE_STALE_MONTHS,
    Databases,
    Doc,
)
from etl.definition import LATTICE_VERSION, USERS_VERSION, Definition
from etl.settings import Settings
from etl.source import UNATTRIBUTED

Metric = Literal["conversations", "messages", "handoffs", "users", "avg_depth"]
# Longest agent id the API takes: the ids the rollup keeps are a source's bot ids.
MAX_AGENT_ID = 1024
Sort = Literal["conversations", "messages", "handoffs", "users", "avg_depth", "name", "change"]
Order = Literal["desc", "asc"]
Compare = Literal["none", "previous"]


class ParamError(Exception):
    """A parameter the caller sent is wrong: 422."""

    def __init__(self, param: str, reason: str) -> None:
        super().__init__(f"{param}: {reason}")
        self.param = param
        self.reason = reason


class Forbidden(Exception):
    """The caller's key may not see what it asked for (through `param`): 403."""

    def __init__(self, param: str, reason: str) -> None:
        super().__init__(f"{param}: {reason}")
        self.param = param
        self.reason = reason


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
    # The previous period alongside, and how rows are ranked (`metric`: what sort=change ranks).
    compare: Compare = "none"
    sort: Sort = "conversations"
    order: Order = "desc"
    metric: Metric = "conversations"


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
    compare: Compare = "none",
    sort: Sort = "conversations",
    order: Order | None = None,
    metric: Metric = "conversations",
) -> UsageQuery:
    """Apply defaults, validation and the access rules to the raw parameters."""
    if not principal.is_staff:
        if include_internal:
            raise Forbidden("include_internal", "for platform staff keys only")
        if org_id is not None and org_id.lower() != principal.org_id:
            raise Forbidden("org_id", "this key may only read its own organization")
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
        # The rollup keeps a bot_id as it is (trimmed) unless it is an ObjectId's hex, which
        # names one agent whatever its letter case: any id an organization's view shows.
        if is_object_id(agent_id) or agent_id.lower() == UNATTRIBUTED:
            agent_id = agent_id.lower()
        elif len(agent_id) > MAX_AGENT_ID:
            raise ParamError("agent_id", f"longer than {MAX_AGENT_ID} characters")
    else:
        agent_id = None
    first, last = parse_date(start, "start"), parse_date(end, "end")
    default_first, default_last = default_range(scope, today)
    if first is None and last is None:
        first, last = default_first, default_last
    elif first is None:
        # A range worked out from one date stays within the dates the API accepts.
        assert last is not None
        first = max(dates.FIRST_DAY, last - (default_last - default_first))
    elif last is None:
        last = min(dates.LAST_DAY, first + (default_last - default_first))
    if first > last:
        raise ParamError("start", f"{first} is after end {last}")
    if range_days(first, last) > settings.max_range_days:
        raise ParamError(
            "end",
            f"the range is {range_days(first, last)} days; at most {settings.max_range_days}",
        )
    if sort == "change" and compare != "previous":
        raise ParamError("sort", "sort=change needs compare=previous")
    resolved = resolve_granularity(granularity, first, last)
    if compare == "previous":
        try:
            previous_first: date | None = previous_range(first, last, resolved)[0]
        except (OverflowError, ValueError):
            previous_first = None
        if previous_first is None or previous_first < dates.FIRST_DAY:
            raise ParamError("compare", f"the previous period would start before {dates.FIRST_DAY}")
    return UsageQuery(
        scope=scope,
        org_id=org_id,
        agent_id=agent_id,
        first=first,
        last=last,
        granularity=resolved,
        include_internal=include_internal,
        q=q.strip().casefold() if q and q.strip() else None,
        limit=limit,
        offset=offset,
        compare=compare,
        sort=sort,
        order=order or ("asc" if sort == "name" else "desc"),
        metric=metric,
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
    """An expression mapping a day row's `day` string to its bucket key, in the database.

    `buckets` are contiguous and in order, calendar buckets or not (a previous period's)."""
    if granularity == "day":
        return "$day"
    branches = [
        {"case": {"$lt": ["$day", following.start.isoformat()]}, "then": bucket.key}
        for bucket, following in zip(buckets, buckets[1:], strict=False)
    ]
    if not branches:
        return buckets[0].key
    return {"$switch": {"branches": branches, "default": buckets[-1].key}}


def group_stage(query: UsageQuery, bucket: Any, with_users: bool) -> Doc:
    group_field = "$org_id" if query.scope == "platform" else "$agent_id"
    users: Doc = {}
    if with_users:
        # A day row's own count is exact when it is alone in its cell; otherwise the cell's
        # users are the union of the sketches, done by the API (the server cannot).
        users = {"users": {"$sum": "$users"}, "users_hll": {"$push": "$users_hll"}}
    return {
        "$group": {
            "_id": {"id": group_field, "b": bucket},
            **{name: {"$sum": f"${name}"} for name in MEASURES},
            "rows": {"$sum": 1},
            **users,
        }
    }


def daily_pipeline(
    query: UsageQuery, buckets: list[Bucket], settings: Settings, with_users: bool = False
) -> list[Doc]:
    """Group the daily rows of `buckets` (contiguous, in order) into them."""
    days = {"$gte": buckets[0].start.isoformat(), "$lte": buckets[-1].end.isoformat()}
    return [
        {"$match": {"day": days, **scope_filter(query, settings)}},
        group_stage(query, bucket_expr(buckets, query.granularity), with_users),
    ]


def monthly_pipeline(
    query: UsageQuery, months: list[str], settings: Settings, with_users: bool = False
) -> list[Doc]:
    """Group the monthly rows of whole months: a few rows stand for a month of days."""
    return [
        {"$match": {"month": {"$in": months}, **scope_filter(query, settings)}},
        group_stage(query, "$month", with_users),
    ]


def fetch_groups(
    dbs: Databases,
    query: UsageQuery,
    buckets: list[Bucket],
    generation: int,
    organization_levels: bool = True,
    with_users: bool = False,
    stale: frozenset[str] = frozenset(),
) -> list[Doc]:
    """Rollup totals per (row id, bucket key), from the coarsest rows that are exact: a
    platform view needs no agents, so it reads the organization levels (when the generation
    has them: a rollup from before them, served until it is rebuilt, has not).

    Whole calendar months are read from a monthly level; every other run of contiguous
    buckets (days, weeks, clipped months, a previous period's shifted buckets) is grouped from
    day rows, and so is a month whose levels by month are `stale` (a run is replacing its
    days in parts). Each group says whether it came from a derived level (`derived`)."""
    settings = dbs.settings
    by_org = query.scope == "platform" and organization_levels
    daily = dbs.reader(USAGE_ORG_DAILY if by_org else USAGE_DAILY, generation)
    months: list[str] = []
    runs_of_days: list[list[Bucket]] = [[]]
    for bucket in buckets:
        if query.granularity == "month" and not bucket.partial and bucket.key not in stale:
            months.append(bucket.key)
            runs_of_days.append([])
        else:
            runs_of_days[-1].append(bucket)
    groups: list[Doc] = []
    if months:
        monthly = dbs.reader(USAGE_ORG_MONTHLY if by_org else USAGE_MONTHLY, generation)
        for group in monthly.aggregate(monthly_pipeline(query, months, settings, with_users)):
            groups.append({**group, "derived": True})
    for run in runs_of_days:
        if run:
            pipeline = daily_pipeline(query, run, settings, with_users)
            groups += ({**group, "derived": by_org} for group in daily.aggregate(pipeline))
    return groups


def fetch_names(
    db: Database[Doc],
    collection: str,
    ids: list[str],
    owner: str | None = None,
    owner_field: str = "id_organization",
) -> dict[str, str]:
    """Display names by id from a source collection whose _id may be ObjectId or string.

    Given `owner`, a document whose `owner_field` (the source profile's organization field:
    `id_organization`, or vanilla Tiledesk's `id_project`) names another organization gives
    no name: a conversation can carry any agent id in its attributes, and an agent of another
    organization must never show its name there. A document without the field keeps its name.
    Many ids (a search over every organization) read the whole collection rather than a long
    `$in`.
    """
    names: dict[str, str] = {}
    if not ids:
        return names
    chosen: Doc = {}
    if len(ids) <= LONG_IN:
        chosen = {"_id": {"$in": [ObjectId(i) for i in ids if is_object_id(i)] + list(ids)}}
    # What the `$in` matches: a string id as it is, an ObjectId in either letter case.
    wanted = set(ids)
    hex_ids = {i.lower() for i in ids if is_object_id(i)}
    for doc in db[collection].find(chosen, {"name": 1, owner_field: 1}):
        key = str(doc["_id"])
        if key not in hex_ids if isinstance(doc["_id"], ObjectId) else key not in wanted:
            continue
        name = doc.get("name")
        held_by = doc.get(owner_field)
        if owner is not None and held_by is not None and str(held_by).strip().lower() != owner:
            continue
        if isinstance(name, str) and name.strip():
            names[str(doc["_id"]).lower()] = name.strip()
    return names


def fold(
    groups: list[Doc], buckets: list[Bucket], always: tuple[str, ...] = ()
) -> dict[str, list[Cell]]:
    """Cells per row id, one per bucket in order; ids in `always` get a row even when they
    had no activity."""
    index = {bucket.key: n for n, bucket in enumerate(buckets)}
    # A bucket without data shares one empty cell, never added to: most of a long tail of
    # small organizations is empty buckets.
    empty = Cell()
    cells: dict[str, list[Cell]] = {}
    for row_id in always:
        cells[row_id] = [empty] * len(buckets)
    for group in groups:
        row = cells.get(group["_id"]["id"])
        if row is None:
            row = cells[group["_id"]["id"]] = [empty] * len(buckets)
        n = index[group["_id"]["b"]]
        cell = row[n]
        if cell is empty:
            cell = row[n] = Cell()
        cell.add_group(group)
    return cells


@dataclass
class Line:
    """A row of a report: its cells per bucket, and per previous bucket when compared."""

    id: str | None
    cells: list[Cell]
    previous: list[Cell] | None = None
    _total: Cell | None = None
    _previous_total: Cell | None = None

    def total(self) -> Cell:
        if self._total is None:
            self._total = combined(self.cells)
        return self._total

    def previous_total(self) -> Cell | None:
        if self.previous is None:
            return None
        if self._previous_total is None:
            self._previous_total = combined(self.previous)
        return self._previous_total


def make_lines(
    current: dict[str, list[Cell]], previous: dict[str, list[Cell]] | None, buckets: int
) -> list[Line]:
    """A line per id active in either period (compared: a row that stopped is a change too)."""
    if previous is None:
        return [Line(row_id, cells) for row_id, cells in current.items()]
    ids = list(current) + [row_id for row_id in previous if row_id not in current]
    empty = [Cell() for _ in range(buckets)]
    return [Line(row_id, current.get(row_id, empty), previous.get(row_id, empty)) for row_id in ids]


def sum_lines(lines: list[Line], buckets: int, compared: bool) -> Line:
    """A line (id None) covering `lines`, bucket by bucket: measures summed, users united."""
    cells = [combined(line.cells[n] for line in lines) for n in range(buckets)]
    previous = None
    if compared:
        previous = [
            combined(line.previous[n] for line in lines if line.previous is not None)
            for n in range(buckets)
        ]
    return Line(None, cells, previous)


def sort_value(line: Line, query: UsageQuery, names: dict[str, str], with_users: bool) -> Any:
    """What a line is ranked by; None sorts last in either order."""
    assert line.id is not None
    if query.sort == "name":
        return names.get(line.id, line.id).casefold()
    if query.sort == "change":
        before = line.previous_total()
        if before is None:
            return None
        now_value = line.total().value(query.metric, with_users)
        before_value = before.value(query.metric, with_users)
        return change_of(query.metric, now_value, before_value)["abs"]
    if query.sort in MEASURES:
        # A sum needs no total cell: ranking 10,000 rows builds none.
        return sum(cell.sums[query.sort] for cell in line.cells)
    return line.total().value(query.sort, with_users)


def sort_lines(
    lines: list[Line], query: UsageQuery, names: dict[str, str], with_users: bool
) -> list[Line]:
    """Lines by the query's sort and order, ties by id ascending, missing values last."""
    by_id = sorted(lines, key=lambda line: line.id or "")
    valued = [(sort_value(line, query, names, with_users), line) for line in by_id]
    present = [pair for pair in valued if pair[0] is not None]
    # Sorting is stable, also reversed: equal values keep the id order.
    present.sort(key=lambda pair: pair[0], reverse=query.order == "desc")
    return [line for _, line in present] + [line for value, line in valued if value is None]


# The sorts a platform page ranks from sums alone (see `platform_page`); users and change
# need every organization's cells.
PAGED_SORTS = (*MEASURES, "avg_depth", "name")


def ranked_ids(
    orgs: set[str],
    query: UsageQuery,
    summed: dict[str, int],
    placed: list["platform_view.Placed"],
    excluded: set[str],
    names: dict[str, str],
) -> list[str]:
    """`orgs` in the order `sort_lines` gives their lines, from `summed` (each one's sum of
    the measure sorted by, or of conversations) and the names: ties by id, missing values
    last."""
    if query.sort == "name":

        def rank(org: str) -> Any:
            return names.get(org, org).casefold()

    elif query.sort == "avg_depth":
        messages = platform_view.values(placed, "messages", excluded)

        def rank(org: str) -> Any:
            conversations = summed.get(org, 0)
            return messages.get(org, 0) / conversations if conversations else None

    else:

        def rank(org: str) -> Any:
            return summed.get(org, 0)

    valued = [(rank(org), org) for org in sorted(orgs)]
    present = [pair for pair in valued if pair[0] is not None]
    # Sorting is stable, also reversed: equal values keep the id order.
    present.sort(key=lambda pair: pair[0], reverse=query.order == "desc")
    return [org for _, org in present] + [org for value, org in valued if value is None]


@dataclass(frozen=True)
class Page:
    rows: list[Line]
    # The rows matching the filter that are not on this page, combined; None when none.
    other: Line | None
    total: Line
    total_rows: int


def paginate(
    lines: list[Line],
    buckets: int,
    query: UsageQuery,
    names: dict[str, str],
    with_users: bool = False,
) -> Page:
    """The lines matching `q` (in name or id), sorted, one page of them, and an `Other` line
    covering the rest, so that page + Other = total, the total of every matching line (the
    measures summed; Other's users are the union of the rest, like the total's of all)."""
    if query.q is not None:
        needle = query.q
        lines = [line for line in lines if line.id is not None and matches(line.id, names, needle)]
    compared = query.compare == "previous"
    # Totals unite their rows' sketches in id order: a union's estimate depends a little on
    # its order, and this way neither the total nor Other depends on the sort or the page.
    total = sum_lines(sorted(lines, key=line_id), buckets, compared)
    lines = sort_lines(lines, query, names, with_users)
    if query.limit is None:
        return Page(lines[query.offset :], None, total, len(lines))
    end = query.offset + query.limit
    page, rest = lines[query.offset : end], lines[: query.offset] + lines[end:]
    other = sum_lines(sorted(rest, key=line_id), buckets, compared) if rest else None
    return Page(page, other, total, len(lines))


def line_id(line: Line) -> str:
    return line.id or ""


def matches(row_id: str, names: dict[str, str], needle: str) -> bool:
    """Whether a row's name (its id when it has none) or its id holds `needle` (casefolded)."""
    return needle in names.get(row_id, row_id).casefold() or needle in row_id


def render(
    line: Line,
    name: str,
    buckets: list[Bucket],
    previous: list[Bucket] | None,
    with_users: bool,
) -> Doc:
    """A line as the API shows it: figures only, never a sketch."""
    totals = line.total().doc(with_users)
    doc: Doc = {
        "id": line.id,
        "name": name,
        "totals": totals,
        "buckets": [
            {"key": bucket.key, **cell.doc(with_users)}
            for bucket, cell in zip(buckets, line.cells, strict=True)
        ],
        "previous": None,
        "change": None,
    }
    before = line.previous_total()
    if previous is not None and line.previous is not None and before is not None:
        before_totals = before.doc(with_users)
        doc["previous"] = {
            "totals": before_totals,
            "buckets": [
                {"key": bucket.key, **cell.doc(with_users)}
                for bucket, cell in zip(previous, line.previous, strict=True)
            ],
        }
        doc["change"] = changes(line.total(), before, with_users)
    return doc


def bucket_doc(bucket: Bucket) -> Doc:
    return {
        "key": bucket.key,
        "label": bucket.label,
        "start": bucket.start.isoformat(),
        "end": bucket.end.isoformat(),
        "partial": bucket.partial,
    }


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
    # Whether the generation has the platform level (etl/platform.py).
    platform: bool = False

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
        platform=state.platform if state else False,
    )


CacheKey = tuple[str, bytes, date]


def cache_key(key_id: str, path: str, query_string: bytes, today: date) -> CacheKey:
    """What a response is cached under: the caller's key, the path with its raw query (every
    endpoint shares the cache, so the path keeps their bodies apart) and the day."""
    return key_id, path.encode() + b"?" + query_string, today


class UsageService:
    """Answers usage queries from the served generation, caching whole responses.

    A response is cached under the `Served.token` read before it was computed, so a body
    outlives the data it came from only until the next look at what is served (at most two
    periods of `check_seconds`, see `api.background`).
    """

    def __init__(
        self,
        dbs: Databases,
        check_seconds: float = 2.0,
        read: Callable[[Databases], Served] = read_served,
        failures: Failures | None = None,
    ) -> None:
        self.dbs = dbs
        self.read = read
        self.settings = dbs.settings
        self.check_seconds = check_seconds
        self._cache: OrderedDict[tuple[CacheKey, str], bytes] = OrderedDict()
        self._served: Served | None = None
        # When the last read of what is served began (its age counts from then), and ended.
        self._checked = 0.0
        self._read_at = 0.0
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._looks = Looks(lambda error: one_line(error, dbs.uri))
        self.failures = failures or Failures()
        # For /metrics: plain counts, so a warm call pays no more than an addition.
        self.hits = 0
        self.misses = 0

    def _due(self) -> bool:
        return self._served is None or time.monotonic() - self._checked >= self.check_seconds

    def served(self) -> Served:
        """What is served, re-read from the database at most every `check_seconds`. A read
        that ended while the caller waited for the one before it is as fresh as one the
        caller would make: when reads are slow, waiting callers do not read one after another."""
        self.failures.raise_recent(self.check_seconds)  # rather than queue behind a reader
        waited = time.monotonic()
        with self._refresh_lock:  # one reader of the run records at a time
            if self._due() and not (self._served is not None and self._read_at >= waited):
                self.failures.raise_recent(self.check_seconds)
                began = time.monotonic()
                try:
                    self._served = self.read(self.dbs)
                except PyMongoError as error:
                    self.failures.remember(error)
                    raise
                self._checked, self._read_at = began, time.monotonic()
            assert self._served is not None
            return self._served

    def known(self) -> Served | None:
        """What is served, never waiting on the database: the last read, also while a newer
        one runs in the background (see `api.background`). None before the first read, with
        `check_seconds` 0, or once the last read is two periods old."""
        served = self._served
        if served is None or self.check_seconds == 0:
            return None
        age = time.monotonic() - self._checked
        if age >= self.check_seconds:
            if age >= 2 * self.check_seconds:
                return None
            self._looks.start("served", self.served)
        return served

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

    def names(self, query: UsageQuery, ids: list[str]) -> dict[str, str]:
        """Display names of `ids`, which must be rows with data in what the key may see: an
        agent id of another organization asked for by name gets its id back, never the
        other's name."""
        if query.scope == "platform":
            return fetch_names(self.dbs.source, self.settings.org_names, ids)
        collection = self.settings.agent_names_collection
        field = self.settings.profile.organization
        names = fetch_names(self.dbs.source, collection, ids, query.org_id, field)
        names[UNATTRIBUTED] = "Unattributed"
        return names

    def lines(self, query: UsageQuery, served: Served) -> "Lines":
        """The query's lines, every active one, and the buckets they are in."""
        settings = self.settings
        buckets = make_buckets(
            query.first, query.last, query.granularity, settings.week_start_index
        )
        definition = served.definition
        lattice = definition is not None and definition.version >= LATTICE_VERSION
        with_users = definition is not None and definition.version >= USERS_VERSION
        stale = self.stale(served)
        fetch_args = (served.generation, lattice, with_users, stale)

        def fetch(buckets: list[Bucket]) -> list[Doc]:
            if self.from_platform_level(query, served):
                whole_months = query.granularity == "month"
                placed = platform_view.read(
                    self.dbs, buckets, whole_months, served.generation, stale
                )
                return platform_view.groups(placed, buckets, self.excluded(query))
            return fetch_groups(self.dbs, query, buckets, *fetch_args)

        groups = fetch(buckets)
        always = (query.agent_id,) if query.agent_id else ()
        current = fold(groups, buckets, always)
        active = {group["_id"]["id"] for group in groups}
        before: list[Bucket] | None = None
        previous = None
        if query.compare == "previous":
            before = previous_buckets(buckets, query.granularity, settings.week_start_index)
            previous_groups = fetch(before)
            previous = fold(previous_groups, before, always)
            active |= {group["_id"]["id"] for group in previous_groups}
        lines = make_lines(current, previous, len(buckets))
        return Lines(lines, buckets, before, active, with_users)

    def from_platform_level(self, query: UsageQuery, served: Served) -> bool:
        return query.scope == "platform" and served.platform

    def stale(self, served: Served) -> frozenset[str]:
        """Months whose levels by month lag their days (a run is replacing them in parts):
        read from their days."""
        found = self.dbs.reader(USAGE_STALE_MONTHS, served.generation).find({}, {"_id": 1})
        return frozenset(str(doc["_id"]) for doc in found)

    def excluded(self, query: UsageQuery) -> set[str]:
        """The organizations a view leaves out (the internal ones, unless included)."""
        return set() if query.include_internal else set(self.settings.internal_org_ids)

    def platform_page(
        self, query: UsageQuery, served: Served
    ) -> tuple["Found", Page, dict[str, str]]:
        """One page of a platform view ranked by a measure, from the platform level: cells
        only for the page's organizations, the rest summed bucket by bucket into Other.
        Searched, the organizations whose name or id does not match are left out like the
        internal ones, and every active organization's name is read (and returned)."""
        assert query.limit is not None
        settings = self.settings
        buckets = make_buckets(
            query.first, query.last, query.granularity, settings.week_start_index
        )
        # Whole months from the month documents, unless a run left their levels stale.
        args = (query.granularity == "month", served.generation, self.stale(served))
        excluded = self.excluded(query)
        placed = platform_view.read(self.dbs, buckets, *args)
        summed = query.sort if query.sort in MEASURES else "conversations"
        value = platform_view.values(placed, summed, excluded)
        active = set(value)
        before: list[Bucket] | None = None
        placed_before: list[platform_view.Placed] = []
        if query.compare == "previous":
            before = previous_buckets(buckets, query.granularity, settings.week_start_index)
            placed_before = platform_view.read(self.dbs, before, *args)
            active |= set(platform_view.values(placed_before, summed, excluded))
        names: dict[str, str] = {}
        matching = active
        if query.q is not None or query.sort == "name":
            names = self.names(query, sorted(active))
        if query.q is not None:
            matching = {org for org in active if matches(org, names, query.q)}
            excluded = excluded | (active - matching)
        ranked = ranked_ids(matching, query, value, placed, excluded, names)
        ids = ranked[query.offset : query.offset + query.limit]
        chosen = set(ids)

        now = platform_view.split(placed, chosen, excluded, len(buckets))
        then = platform_view.split(placed_before, chosen, excluded, len(before)) if before else None
        rows = [Line(org, now.page[org], then.page[org] if then else None) for org in ids]
        other = None
        if len(ranked) > len(ids):
            other = Line(None, now.rest, then.rest if then else None)
        total = Line(None, now.total, then.total if then else None)
        page = Page(rows, other, total, len(ranked))
        definition = served.definition
        with_users = definition is not None and definition.version >= USERS_VERSION
        return Found(buckets, before, active, with_users), page, names

    def report(self, query: UsageQuery, served: Served | None = None) -> Doc:
        served = served or self.served()
        # Every name only when the rows are searched or ranked by it: a platform of 10,000
        # organizations otherwise costs one page of names.
        every_name = query.q is not None or query.sort == "name"
        fast = (
            self.from_platform_level(query, served)
            and query.sort in PAGED_SORTS
            and query.limit is not None
        )
        if fast:
            found, page, names = self.platform_page(query, served)
        else:
            lines = self.lines(query, served)
            found = Found(lines.buckets, lines.previous, lines.active, lines.with_users)
            names = self.names(query, sorted(found.active)) if every_name else {}
            page = paginate(lines.lines, len(found.buckets), query, names, found.with_users)
        if not every_name:
            ids = [line.id for line in page.rows if line.id and line.id in found.active]
            names = self.names(query, ids)

        def shown(line: Line, name: str | None = None) -> Doc:
            label = name or names.get(line.id or "", line.id or "")
            return render(line, label, found.buckets, found.previous, found.with_users)

        definition = served.definition
        return {
            "scope": query.scope,
            "org_id": query.org_id,
            "agent_id": query.agent_id,
            "start": query.first.isoformat(),
            "end": query.last.isoformat(),
            "granularity": query.granularity,
            "timezone": definition.timezone if definition else self.settings.timezone,
            "metrics": METRICS,
            "compare": query.compare,
            "sort": query.sort,
            "order": query.order,
            "metric": query.metric,
            "buckets": [bucket_doc(b) for b in found.buckets],
            "previous": (
                {
                    "start": found.previous[0].start.isoformat(),
                    "end": found.previous[-1].end.isoformat(),
                    "buckets": [bucket_doc(b) for b in found.previous],
                }
                if found.previous
                else None
            ),
            "rows": [shown(line) for line in page.rows],
            "other": shown(page.other, "Other") if page.other else None,
            "total": shown(page.total, "Total"),
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

    def movers_json(self, query: UsageQuery, n: int, served: Served) -> bytes:
        self.misses += 1
        return json.dumps(self.movers(query, n, served), separators=(",", ":")).encode()

    def movers(self, query: UsageQuery, n: int, served: Served | None = None) -> Doc:
        """The `n` rows whose `query.metric` grew most and the `n` that fell most against
        the previous period."""
        served = served or self.served()
        query = replace(query, compare="previous", limit=None, offset=0, q=None)
        found = self.lines(query, served)
        assert found.previous is not None
        moves: list[Doc] = []
        for line in sorted(found.lines, key=lambda line: line.id or ""):
            before = line.previous_total()
            assert line.id is not None and before is not None
            now_value = line.total().value(query.metric, found.with_users)
            before_value = before.value(query.metric, found.with_users)
            change = change_of(query.metric, now_value, before_value)
            if change["abs"]:
                # Users of a range are unions of sketches: say so, as the usage cells do.
                estimate = query.metric == "users" and (
                    line.total().users()[1] or before.users()[1]
                )
                moves.append(
                    {
                        "id": line.id,
                        "name": line.id,
                        "current": rounded(now_value),
                        "previous": rounded(before_value),
                        "change": change["abs"],
                        "pct": change["pct"],
                        "estimate": estimate,
                    }
                )
        # Stable sorts over the id order: ties stay by id.
        up = sorted((m for m in moves if m["change"] > 0), key=lambda m: -m["change"])[:n]
        down = sorted((m for m in moves if m["change"] < 0), key=lambda m: m["change"])[:n]
        names = self.names(query, [m["id"] for m in up + down if m["id"] in found.active])
        for move in up + down:
            move["name"] = names.get(move["id"], move["id"])
        return {
            "scope": query.scope,
            "org_id": query.org_id,
            "metric": query.metric,
            "start": query.first.isoformat(),
            "end": query.last.isoformat(),
            "previous_start": found.previous[0].start.isoformat(),
            "previous_end": found.previous[-1].end.isoformat(),
            "up": up,
            "down": down,
        }


def rounded(value: float | None) -> float | None:
    """An average as shown: 2 decimals (counts are shown as they are)."""
    return round(value, 2) if isinstance(value, float) else value


@dataclass(frozen=True)
class Found:
    """What a report shows besides its lines: the buckets, the previous period's, the ids
    with data and whether users are counted."""

    buckets: list[Bucket]
    previous: list[Bucket] | None
    active: set[str]
    with_users: bool


@dataclass(frozen=True)
class Lines:
    lines: list[Line]
    buckets: list[Bucket]
    # The previous period's buckets, when compared.
    previous: list[Bucket] | None
    # Ids with data in either period: the only ones whose names may be shown.
    active: set[str]
    with_users: bool
