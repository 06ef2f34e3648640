"""The FastAPI app: factory, dependencies and thin routes."""

import csv
import functools
import io
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from pymongo.errors import ConnectionFailure, PyMongoError

from api import auth, metrics
from api.background import Failures, Looks, one_line
from api.buckets import GranularityChoice, Scope
from api.edge import Edge
from api.fastpath import USAGE_PATH, FastPath
from api.usage import (
    Compare,
    Forbidden,
    Metric,
    Order,
    ParamError,
    Served,
    Sort,
    UsageQuery,
    UsageService,
    cache_key,
    read_served,
    resolve_query,
)
from etl import freshness, platform, rollup, runs, sketches
from etl.db import Databases, DatabaseUnavailable, DatabaseUnreachable, plain_error
from etl.jobs import utcnow
from etl.settings import Settings

STATIC = Path(__file__).parent / "static"
MAX_LIMIT = 1000
MOVERS_PATH = "/api/aggregations/movers"
log = logging.getLogger("usage.api")
MAX_MOVERS = 50


class BucketOut(BaseModel):
    key: str
    label: str
    start: str
    end: str
    partial: bool


class CellOut(BaseModel):
    """The figures of a row in a bucket, or in the whole range (`totals`)."""

    conversations: int
    messages: int
    handoffs: int
    users: int | None = Field(
        description="Distinct end users: exact for one stored day row, otherwise the union of "
        "the sketches covered (never a sum of counts); null when the served rollup has no users"
    )
    users_estimate: bool = Field(description="True when `users` is an estimate from sketches")
    users_low: int | None = Field(description="Lower 95 % bound of `users` (equal when exact)")
    users_high: int | None = Field(description="Upper 95 % bound of `users` (equal when exact)")
    avg_depth: float | None = Field(
        description="messages / conversations, 2 decimals; null without conversations"
    )


class BucketCellOut(CellOut):
    key: str


class ChangeOut(BaseModel):
    abs: float | None = Field(description="current - previous")
    pct: float | None = Field(description="abs / previous * 100, 1 decimal; null if previous is 0")


class PreviousCellsOut(BaseModel):
    totals: CellOut
    buckets: list[BucketCellOut]


class RowOut(BaseModel):
    id: str | None
    name: str
    totals: CellOut
    buckets: list[BucketCellOut]
    previous: PreviousCellsOut | None = Field(
        default=None, description="The same row in the previous period (compare=previous)"
    )
    change: dict[str, ChangeOut] | None = Field(
        default=None, description="Per metric, totals against the previous totals"
    )


class PreviousPeriodOut(BaseModel):
    start: str
    end: str
    buckets: list[BucketOut]


class MoverOut(BaseModel):
    id: str
    name: str
    current: float | None
    previous: float | None
    change: float
    pct: float | None
    estimate: bool = Field(
        description="True when current and previous are distinct users united from sketches "
        "(estimates; see the usage cells' bounds), false for exact figures"
    )


class MoversOut(BaseModel):
    scope: Literal["platform", "org"]
    org_id: str | None
    metric: Metric
    start: str
    end: str
    previous_start: str
    previous_end: str
    up: list[MoverOut]
    down: list[MoverOut]


class UsageOut(BaseModel):
    scope: Scope
    org_id: str | None
    agent_id: str | None
    start: str
    end: str
    granularity: Literal["day", "week", "month"]
    timezone: str
    metrics: list[str]
    compare: Compare
    sort: Sort
    order: Order
    metric: Metric
    buckets: list[BucketOut]
    previous: PreviousPeriodOut | None = Field(
        description="The previous period's range and buckets (compare=previous), else null"
    )
    rows: list[RowOut]
    other: RowOut | None
    total: RowOut
    total_rows: int
    limit: int | None
    offset: int
    data_from: str | None
    data_gaps: list[list[str]]
    data_through: str | None
    last_run_finished_at: str | None
    generation: int
    definition: dict[str, Any] | None


class HealthOut(BaseModel):
    # ok, or why not: the same verdict as `usage status --check`.
    status: Literal["ok", "stale", "failed", "never_ran", "unavailable"]
    freshness: str
    database: Literal["ok", "unreachable"]
    generation: int | None = None
    definition: dict[str, Any] | None = None
    data_from: str | None = None
    data_through: str | None
    last_run_status: str | None
    last_run_finished_at: str | None


class ErrorOut(BaseModel):
    detail: str
    parameter: str | None = None


class KeyCache:
    """Verified keys for `ttl` seconds, so a warm request costs no key lookup.

    Bounded, and only strings of a key's exact shape are ever looked up or kept, so random
    bearer tokens cost neither a query nor memory.
    """

    def __init__(
        self,
        db_lookup: Callable[[str], auth.Principal | None],
        ttl: float,
        size: int = 4096,
        describe: Callable[[Exception], str] = str,
        failures: Failures | None = None,
    ) -> None:
        self.lookup = db_lookup
        self.ttl = ttl
        self.size = size
        self.entries: OrderedDict[str, tuple[float, auth.Principal | None]] = OrderedDict()
        self.lock = threading.Lock()
        self.looks = Looks(describe)
        self.failures = failures or Failures()

    def cached(self, secret: str) -> auth.Principal | None:
        """The principal of a key verified within `ttl`, without waiting on the database.
        A key verified within two periods is looked up again in the background meanwhile
        (see `api.background`), so a revoked key fails within two periods."""
        hit = self.entries.get(secret)
        if hit is None:
            return None
        age = time.monotonic() - hit[0]
        if age >= self.ttl:
            if age >= 2 * self.ttl or hit[1] is None:
                return None
            self.looks.start(secret, functools.partial(self.verify, secret))
        return hit[1]

    def get(self, secret: str) -> auth.Principal | None:
        if not auth.looks_like_key(secret):
            return None
        hit = self.entries.get(secret)
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        return self.verify(secret)

    def verify(self, secret: str) -> auth.Principal | None:
        """The key's principal, looked up now, and remembered for `ttl` from the moment the
        lookup began, unless a lookup that began later has already answered."""
        self.failures.raise_recent(self.ttl)
        began = time.monotonic()
        try:
            principal = self.lookup(secret)
        except PyMongoError as error:
            self.failures.remember(error)
            raise
        if self.ttl > 0:
            with self.lock:
                newer = self.entries.get(secret)
                if newer is not None and newer[0] > began:
                    return newer[1]
                self.entries[secret] = (began, principal)
                self.entries.move_to_end(secret)
                while len(self.entries) > self.size:
                    self.entries.popitem(last=False)
        return principal


class Unauthorized(Exception):
    pass


bearer = HTTPBearer(auto_error=False, description="An API key created with `usage keys create`")


async def get_service(request: Request) -> UsageService:
    service: UsageService = request.app.state.service
    return service


# The hot path (a cached key, a cached response) is async and touches no database; only a
# miss goes to the thread pool, so a warm request costs little more than a trivial one.
async def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> auth.Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("an API key is required: Authorization: Bearer <key>")
    keys: KeyCache = request.app.state.keys
    principal = keys.cached(credentials.credentials)
    if principal is None:
        # A database known down fails here, not after waiting for a worker thread.
        keys.failures.raise_recent(keys.ttl)
        principal = await run_in_threadpool(keys.get, credentials.credentials)
    if principal is None:
        raise Unauthorized("unknown or revoked API key")
    return principal


ServiceDep = Annotated[UsageService, Depends(get_service)]
PrincipalDep = Annotated[auth.Principal, Depends(get_principal)]


async def usage_query(
    request: Request,
    service: ServiceDep,
    principal: PrincipalDep,
    scope: Annotated[Scope, Query(description="platform, org or agent")] = "platform",
    org_id: Annotated[str | None, Query(description="Organization id (org, agent)")] = None,
    agent_id: Annotated[str | None, Query(description="Agent id or 'unattributed'")] = None,
    start: Annotated[str | None, Query(description="First day, YYYY-MM-DD")] = None,
    end: Annotated[str | None, Query(description="Last day, YYYY-MM-DD, inclusive")] = None,
    granularity: Annotated[GranularityChoice, Query()] = "auto",
    include_internal: Annotated[bool, Query(description="Staff only")] = False,
    q: Annotated[
        str | None, Query(max_length=100, description="Rows whose name or id contains this")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Rows per page")] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="Rows to skip")] = 0,
    compare: Annotated[
        Compare, Query(description="previous: add the previous period and the change")
    ] = "none",
    sort: Annotated[
        Sort, Query(description="Rank rows by a metric's total, the name, or the change")
    ] = "conversations",
    order: Annotated[
        Order | None, Query(description="desc or asc; desc by default, asc for name")
    ] = None,
    metric: Annotated[
        Metric, Query(description="The metric sort=change ranks by, and the CSV's")
    ] = "conversations",
) -> UsageQuery:
    clock: Callable[[], datetime] = request.app.state.clock
    return resolve_query(
        scope=scope,
        org_id=org_id,
        agent_id=agent_id,
        start=start,
        end=end,
        granularity=granularity,
        include_internal=include_internal,
        principal=principal,
        today=rollup.local_today(clock(), service.settings),
        settings=service.settings,
        q=q,
        limit=limit,
        offset=offset,
        compare=compare,
        sort=sort,
        order=order,
        metric=metric,
    )


QueryDep = Annotated[UsageQuery, Depends(usage_query)]
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut},
    403: {"model": ErrorOut},
    422: {"model": ErrorOut},
    503: {"model": ErrorOut},
}


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(text: str) -> str:
    """Text a spreadsheet shows as text: a leading quote keeps it from reading a formula."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_lines(report: dict[str, Any], metric: str) -> Iterator[str]:
    """The report as CSV, a line at a time: every row, then the total."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def line(cells: list[Any]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(cells)
        return buffer.getvalue()

    header = ["id", "name", *[b["label"] for b in report["buckets"]], "total"]
    previous = report["previous"]
    if previous is not None:
        header += [f"previous {b['label']}" for b in previous["buckets"]]
        header += ["previous_total", "change", "change_pct"]
    yield line(header)
    for row in [*report["rows"], report["total"]]:
        cells = [cell[metric] for cell in row["buckets"]]
        names = [csv_cell(row["id"] or ""), csv_cell(row["name"])]
        cells = [*names, *cells, row["totals"][metric]]
        if previous is not None:
            cells += [cell[metric] for cell in row["previous"]["buckets"]]
            change = row["change"][metric]
            cells += [row["previous"]["totals"][metric], change["abs"], change["pct"]]
        yield line(cells)


def csv_filename(query: UsageQuery, metric: str) -> str:
    """A file name of plain characters only: an agent id can hold any (a header holds few)."""
    agent = re.sub(r"[^A-Za-z0-9._-]", "_", query.agent_id or "")
    who = {"platform": "platform", "org": f"org-{query.org_id}", "agent": f"agent-{agent}"}
    return (
        f"usage-{who[query.scope]}-{query.first}-to-{query.last}-{query.granularity}-{metric}.csv"
    )


def create_app(dbs: Databases, clock: Callable[[], datetime] = utcnow) -> FastAPI:
    settings: Settings = dbs.settings
    # /docs and /redoc with their scripts served from here, so they work offline.
    app = FastAPIOffline(
        title="Usage analytics",
        version="1.0",
        description="Billable conversations per organization and agent, from the daily rollup.",
        swagger_ui_parameters={"validatorUrl": None},
    )
    # Whether the database is down, for every caller: while it is, requests get 503 at once
    # and one probe at a time tries it until it answers.
    failures = Failures(
        probe=lambda: dbs.client.admin.command("ping"),
        describe=lambda error: one_line(error, dbs.uri),
    )
    app.state.service = UsageService(dbs, settings.cache_check_seconds, failures=failures)
    app.state.keys = KeyCache(
        lambda s: auth.authenticate(dbs.rollup, s),
        settings.cache_check_seconds,
        describe=lambda error: one_line(error, dbs.uri),
        failures=failures,
    )
    app.state.failures = failures
    app.state.clock = clock

    def today() -> date:
        return rollup.local_today(clock(), settings)

    async def answer(
        request: Request,
        service: UsageService,
        principal: auth.Principal,
        path: str,
        compute: Callable[[Served], bytes],
    ) -> Response:
        """The JSON body cached for the caller's query under what is served, or computed
        (off the event loop) and cached."""
        served = service.known()
        if served is None:
            failures.raise_recent(settings.cache_check_seconds)  # before a worker thread
            served = await run_in_threadpool(service.served)
        key = cache_key(principal.key_id, path, request.scope["query_string"], today())
        body = service.cached(key, served)
        if body is None:
            failures.raise_recent(settings.cache_check_seconds)
            body = await run_in_threadpool(compute, served)
            service.remember(key, served, body)
        return Response(body, media_type="application/json")

    app.add_middleware(
        FastPath, service=app.state.service, principal_of=app.state.keys.cached, today=today
    )
    metrics.install(app, app.state.service, settings, clock)  # outside: times fast answers too
    app.add_middleware(Edge)  # added last: outermost, so fast answers get its headers too

    @app.exception_handler(ParamError)
    def param_error(request: Request, exc: ParamError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "parameter": exc.param}, status_code=422)

    @app.exception_handler(RequestValidationError)
    def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        loc = [str(part) for part in first.get("loc", ()) if part not in ("query", "header")]
        param = loc[0] if loc else "request"
        return JSONResponse(
            {"detail": f"{param}: {first.get('msg', 'invalid')}", "parameter": param},
            status_code=422,
        )

    @app.exception_handler(Forbidden)
    def forbidden(request: Request, exc: Forbidden) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "parameter": exc.param}, status_code=403)

    @app.exception_handler(Unauthorized)
    def unauthorized(request: Request, exc: Unauthorized) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc)}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )

    def unreadable(request: Request, exc: Exception) -> JSONResponse:
        # Which document and what to run are the operator's business, not a caller's.
        log.error("unreadable rollup", extra={"path": request.url.path, "error": str(exc)})
        detail = "the rollup holds a document this version cannot read; its operator is told why"
        return JSONResponse({"detail": detail}, status_code=500)

    app.add_exception_handler(platform.UnreadableDocument, unreadable)
    app.add_exception_handler(sketches.UnreadableSketch, unreadable)

    @app.exception_handler(DatabaseUnavailable)
    def database_unreachable(request: Request, exc: DatabaseUnavailable) -> JSONResponse:
        kind = ConnectionFailure if isinstance(exc, DatabaseUnreachable) else PyMongoError
        return database_down(request, kind(str(exc)))

    @app.exception_handler(PyMongoError)
    def database_down(request: Request, exc: PyMongoError) -> JSONResponse:
        # An outage is logged when it begins and when it ends (see `Failures`), with the
        # 503s answered meanwhile; any other error of the database each time.
        failures.remember(exc)
        if isinstance(exc, ConnectionFailure) or exc.timeout:
            failures.count_503()
        else:
            log.error(
                "database error",
                extra={"path": request.url.path, "error": plain_error(exc, dbs.uri)},
            )
        return JSONResponse({"detail": "the database is unavailable; try again"}, status_code=503)

    @app.get(USAGE_PATH, response_model=UsageOut, responses=ERRORS)
    async def usage(
        request: Request, service: ServiceDep, principal: PrincipalDep, query: QueryDep
    ) -> Response:
        """Usage per organization (platform), per agent (org) or for one agent, in buckets.

        Every cell has `conversations`, `messages`, `handoffs`, `users` (with
        `users_estimate`, `users_low`, `users_high`) and `avg_depth`. With compare=previous,
        `previous` gives the previous period (whole calendar months by month: as many months
        just before; otherwise every bucket moved back by the range's length in days) and
        every row, `other` and `total` carry `previous` and `change`. Rows are ranked by
        `sort` and `order`, ties by id; `other` covers the matching rows not on the page."""
        compute = functools.partial(service.report_json, query)
        return await answer(request, service, principal, USAGE_PATH, compute)

    @app.get(
        "/api/aggregations/usage.csv",
        response_class=Response,
        responses={**ERRORS, 200: {"content": {"text/csv": {}}}},
    )
    def usage_csv(service: ServiceDep, query: QueryDep) -> Response:
        """The same query as CSV: a line per row, a column per bucket, one `metric`; every
        row matching `q`, whatever `limit` and `offset` say. With compare=previous, after
        `total`: a column per previous bucket, `previous_total`, `change`, `change_pct`."""
        report = service.report(replace(query, limit=None, offset=0))
        disposition = f'attachment; filename="{csv_filename(query, query.metric)}"'
        return StreamingResponse(
            csv_lines(report, query.metric),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": disposition},
        )

    @app.get(MOVERS_PATH, response_model=MoversOut, responses=ERRORS)
    async def movers(
        request: Request,
        service: ServiceDep,
        principal: PrincipalDep,
        scope: Annotated[
            Literal["platform", "org"], Query(description="platform: organizations; org: agents")
        ] = "platform",
        org_id: Annotated[str | None, Query(description="Organization id (org)")] = None,
        start: Annotated[str | None, Query(description="First day, YYYY-MM-DD")] = None,
        end: Annotated[str | None, Query(description="Last day, YYYY-MM-DD, inclusive")] = None,
        include_internal: Annotated[bool, Query(description="Staff only")] = False,
        granularity: Annotated[
            GranularityChoice, Query(description="As usage's: decides the previous period")
        ] = "auto",
        metric: Annotated[Metric, Query(description="The metric compared")] = "conversations",
        n: Annotated[int, Query(ge=1, le=MAX_MOVERS, description="Rows up and rows down")] = 5,
    ) -> Response:
        """The rows that grew most (`up`, largest change first) and fell most (`down`, most
        negative first) against the previous period, ties by id.

        The previous period is usage's for the same `start`, `end` and `granularity` (so a
        view's movers and its change column agree): whole calendar months shown by month
        against as many whole months just before; any other range against as many days just
        before. Same defaults and access rules as usage: a customer key's platform request is
        its own organization's (its agents)."""
        try:
            query = resolve_query(
                scope=scope,
                org_id=org_id,
                agent_id=None,
                start=start,
                end=end,
                granularity=granularity,
                include_internal=include_internal,
                principal=principal,
                today=today(),
                settings=settings,
                compare="previous",
                metric=metric,
            )
        except ParamError as exc:
            if exc.param != "compare":
                raise
            raise ParamError("start", exc.reason) from None  # movers always compare
        compute = functools.partial(service.movers_json, query, n)
        return await answer(request, service, principal, MOVERS_PATH, compute)

    @app.get("/api/health", response_model=HealthOut, responses={503: {"model": HealthOut}})
    async def health() -> JSONResponse:
        """Fresh, stale, failed or never ran (200); 503 only when the database is unreachable.

        A stale rollup is still served correctly, labelled with its data_through: taking the
        API out of a load balancer for it would only add an outage to a late run.
        """
        if failures.down(settings.cache_check_seconds) is not None:
            return unreachable_health()  # at once, not after waiting for a worker thread
        return await run_in_threadpool(checked_health)

    def unreachable_health() -> JSONResponse:
        body = {"status": "unavailable", "freshness": "the database is unreachable"}
        failures.count_503()
        return JSONResponse(
            {
                **body,
                "database": "unreachable",
                "data_through": None,
                "last_run_status": None,
                "last_run_finished_at": None,
            },
            status_code=503,
        )

    def checked_health() -> JSONResponse:
        try:
            dbs.ping()
            last = runs.recent_runs(dbs.rollup, 1)
            served = read_served(dbs)
            nightly = freshness.last_nightly(dbs)
        except (DatabaseUnavailable, PyMongoError) as exc:
            if isinstance(exc, DatabaseUnreachable):
                exc = ConnectionFailure(str(exc))
            if isinstance(exc, PyMongoError):
                failures.remember(exc)  # an outage if it is one (not a refusal)
            return unreachable_health()
        run = last[0] if last else {}
        finished = run.get("finished_at")
        lag = timedelta(hours=settings.max_lag_hours)
        zone = freshness.served_zone(served.definition, settings.zone)
        fresh = freshness.judge(nightly, served.data_through, clock(), zone, lag)
        return JSONResponse(
            {
                "status": fresh.status,
                "freshness": fresh.line,
                "database": "ok",
                "generation": served.generation,
                "definition": served.definition_doc(),
                "data_from": served.data_from.isoformat() if served.data_from else None,
                "data_through": served.data_through.isoformat() if served.data_through else None,
                "last_run_status": run.get("status"),
                "last_run_finished_at": finished.isoformat() + "Z" if finished else None,
            }
        )

    @app.get("/api/ping", include_in_schema=False)
    async def ping() -> Response:
        return Response(b'{"ok":true}', media_type="application/json")

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
