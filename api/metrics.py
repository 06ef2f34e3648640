"""Prometheus metrics of the API: a cheap measuring layer, and `/metrics` behind its own token.

Counters are kept in a registry of the app's own, so several apps in one process (tests)
never share series. What is served (data_through, the last run, the definition) is read
when Prometheus scrapes, not per request.
"""

import hmac
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from pymongo.errors import PyMongoError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.fastpath import USAGE_PATH
from api.usage import UsageService
from etl import freshness
from etl.db import DatabaseUnavailable
from etl.settings import Settings
from etl.source import day_start_utc

METRICS_PATH = "/metrics"
UNMATCHED = "unmatched"
# Warm answers take well under a millisecond; cold ones up to a few hundred.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


def timestamp(moment: datetime) -> float:
    """Seconds since the epoch of a naive UTC datetime, as BSON dates are."""
    return moment.replace(tzinfo=UTC).timestamp()


def route_of(scope: Scope) -> str:
    """The route template that answered, never the raw path: a bounded label."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    # The fast path answers a warm usage call before routing.
    return USAGE_PATH if scope["path"] == USAGE_PATH else UNMATCHED


class RequestMetrics:
    """Requests by route and status, their latency, and authentication failures."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "usage_http_requests",
            "HTTP requests answered, by route template and status code.",
            ["route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "usage_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.auth_failures = Counter(
            "usage_http_auth_failures",
            "Requests refused for a missing, unknown or revoked key or metrics token (401).",
            registry=registry,
        )
        # Children by label values: a label lookup is the costly part of an increment.
        self._counts: dict[tuple[str, int], Counter] = {}
        self._times: dict[str, Histogram] = {}

    def observe(self, route: str, status: int, seconds: float) -> None:
        count = self._counts.get((route, status))
        if count is None:
            count = self._counts.setdefault(
                (route, status), self.requests.labels(route, str(status))
            )
        count.inc()
        timer = self._times.get(route)
        if timer is None:
            timer = self._times.setdefault(route, self.latency.labels(route))
        timer.observe(seconds)
        if status == 401:
            self.auth_failures.inc()


class Measure:
    """ASGI layer timing every request, those the fast path answers from memory too."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers when the app fails before responding

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            self.metrics.observe(route_of(scope), status, time.perf_counter() - started)


class ServedCollector(Collector):
    """What the API serves and how fresh it is, read when Prometheus scrapes."""

    def __init__(
        self, service: UsageService, settings: Settings, clock: Callable[[], datetime]
    ) -> None:
        self.service = service
        self.settings = settings
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        service = self.service
        yield CounterMetricFamily(
            "usage_api_cache_hits",
            "Usage calls answered from the response cache.",
            value=service.hits,
        )
        yield CounterMetricFamily(
            "usage_api_cache_misses",
            "Usage responses computed because no cached one was current.",
            value=service.misses,
        )
        up = GaugeMetricFamily("usage_database_up", "Whether the database answered this scrape.")
        try:
            served = service.served()
            nightly = freshness.last_nightly(service.dbs)
        except (DatabaseUnavailable, PyMongoError):
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        definition = served.definition
        info = GaugeMetricFamily(
            "usage_served_info",
            "The generation and definition (fingerprint, timezone) the API serves; always 1.",
            labels=["generation", "fingerprint", "timezone"],
        )
        info.add_metric(
            [
                str(served.generation),
                definition.fingerprint if definition else "",
                definition.timezone if definition else self.settings.timezone,
            ],
            1,
        )
        yield info
        # The served rollup's days are its definition's, whatever the settings say now.
        zone = freshness.served_zone(definition, self.settings.zone)
        yield GaugeMetricFamily(
            "usage_served_generation", "The generation the API serves.", value=served.generation
        )
        if served.data_through is not None:
            yield GaugeMetricFamily(
                "usage_data_through_timestamp_seconds",
                "End of the last complete day served (data_through), in the reporting timezone.",
                value=timestamp(day_start_utc(served.data_through + timedelta(days=1), zone)),
            )
        if served.finished_at is not None:
            yield GaugeMetricFamily(
                "usage_last_run_finished_timestamp_seconds",
                "When the newest successful run of any kind finished.",
                value=timestamp(served.finished_at),
            )
        found = freshness.judge(
            nightly,
            served.data_through,
            self.clock(),
            zone,
            timedelta(hours=self.settings.max_lag_hours),
        )
        yield GaugeMetricFamily(
            "usage_fresh",
            "1 when the last nightly run succeeded and the data is within USAGE_MAX_LAG_HOURS.",
            value=int(found.fresh),
        )


def bearer_token(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def install(
    app: FastAPI, service: UsageService, settings: Settings, clock: Callable[[], datetime]
) -> None:
    """Measure every request from here inwards, and serve `/metrics` to the metrics token.

    Without `USAGE_METRICS_TOKEN`, `/metrics` is not served at all (404). API keys, staff
    or customer, never open it: Prometheus holds a secret of its own.
    """
    registry = CollectorRegistry()
    requests = RequestMetrics(registry)
    registry.register(ServedCollector(service, settings, clock))
    app.state.metrics = registry
    app.add_middleware(Measure, metrics=requests)
    token = settings.metrics_token

    def metrics(request: Request) -> Response:
        if token is None:
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        given = bearer_token(request).encode()
        if not hmac.compare_digest(given, token.get_secret_value().encode()):
            return JSONResponse(
                {"detail": "the metrics token is required: Authorization: Bearer <token>"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route(METRICS_PATH, metrics, methods=["GET"], include_in_schema=False)
