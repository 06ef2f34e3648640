"""`/metrics` of the API: behind its own token, with request, cache and freshness series."""

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api import auth
from api.app import create_app
from etl import runner
from etl.db import Databases
from tests.test_api import NOW, ROWS, add_run, cover

TOKEN = "metrics-token-for-tests-0123456789"
ORG = "65e18830a0616000137bb854"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scraped(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return samples(response.text)


@pytest.fixture
def metered(make_dbs: Callable[..., Databases]) -> tuple[Databases, TestClient]:
    dbs = make_dbs(metrics_token=TOKEN)
    cover(dbs, datetime(2026, 9, 1).date(), datetime(2026, 11, 24).date())
    dbs.usage_daily().insert_many([dict(row) for row in ROWS])
    add_run(dbs, "2026-11-24", datetime(2026, 11, 25, 2, 30))
    return dbs, TestClient(create_app(dbs, clock=lambda: NOW))


def test_metrics_are_not_served_without_a_metrics_token(make_dbs: Callable[..., Databases]) -> None:
    dbs = make_dbs()
    staff = auth.create_key(dbs.rollup, "staff", None, NOW)[1]
    with TestClient(create_app(dbs, clock=lambda: NOW)) as client:
        response = client.get("/metrics", headers={"Authorization": f"Bearer {staff}"})
    assert response.status_code == 404


def test_api_keys_never_open_the_metrics(metered: tuple[Databases, TestClient]) -> None:
    dbs, client = metered
    staff = auth.create_key(dbs.rollup, "staff", None, NOW)[1]
    customer = auth.create_key(dbs.rollup, "GIC", ORG, NOW)[1]
    with client:
        for secret in ["", staff, customer, TOKEN[:-1]]:
            headers = {"Authorization": f"Bearer {secret}"}
            assert client.get("/metrics", headers=headers).status_code == 401
        assert "/metrics" not in client.get("/openapi.json").json()["paths"]


def test_requests_latency_cache_and_auth_failures_are_counted(
    metered: tuple[Databases, TestClient],
) -> None:
    dbs, client = metered
    staff = {"Authorization": f"Bearer {auth.create_key(dbs.rollup, 'staff', None, NOW)[1]}"}
    path = "/api/aggregations/usage"
    with client:
        for _ in range(3):  # computed once, then answered from memory
            assert client.get(path, params={"start": "2026-10-01"}, headers=staff).is_success
        assert client.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.head("/api/health").status_code == 200
        assert client.get("/no/such/page").status_code == 404
        got = scraped(client)
    route = (("route", path), ("status", "200"))
    assert got[("usage_http_requests_total", route)] == 3
    assert got[("usage_http_requests_total", (("route", path), ("status", "401")))] == 1
    assert got[("usage_http_requests_total", (("route", "/api/health"), ("status", "200")))] == 1
    assert got[("usage_http_requests_total", (("route", "unmatched"), ("status", "404")))] == 1
    assert got[("usage_http_request_duration_seconds_count", (("route", path),))] == 4
    assert got[("usage_http_auth_failures_total", ())] == 1
    assert got[("usage_api_cache_misses_total", ())] == 1
    assert got[("usage_api_cache_hits_total", ())] == 2


def test_what_is_served_and_its_freshness_are_exported(
    metered: tuple[Databases, TestClient],
) -> None:
    _, client = metered
    with client:
        got = scraped(client)
    fingerprint = client.get("/api/health").json()["definition"]["fingerprint"]
    info = (("fingerprint", fingerprint), ("generation", "1"), ("timezone", "UTC"))
    assert got[("usage_served_info", info)] == 1
    assert got[("usage_served_generation", ())] == 1
    assert got[("usage_database_up", ())] == 1
    # data_through 2026-11-24 is complete at the end of that day, UTC.
    through = datetime(2026, 11, 25, tzinfo=UTC).timestamp()
    assert got[("usage_data_through_timestamp_seconds", ())] == through
    finished = datetime(2026, 11, 25, 2, 30, tzinfo=UTC).timestamp()
    assert got[("usage_last_run_finished_timestamp_seconds", ())] == finished
    assert got[("usage_fresh", ())] == 1


def test_two_apps_in_one_process_keep_their_own_counts(
    make_dbs: Callable[..., Databases],
) -> None:
    dbs = make_dbs(metrics_token=TOKEN)
    first = TestClient(create_app(dbs, clock=lambda: NOW))
    second = TestClient(create_app(dbs, clock=lambda: NOW))
    with first, second:
        first.get("/api/ping")
        assert ("usage_http_requests_total", (("route", "/api/ping"), ("status", "200"))) in (
            scraped(first)
        )
        assert ("usage_http_requests_total", (("route", "/api/ping"), ("status", "200"))) not in (
            scraped(second)
        )


def test_freshness_is_exported_in_the_served_definitions_timezone(
    make_dbs: Callable[..., Databases],
) -> None:
    """Settings changed to UTC, not yet rebuilt: the rollup still counts Rome's days, so its
    data_through ends at Rome's midnight and its lag is measured from there, as /api/health
    and `usage status` judge it."""
    rome = make_dbs(timezone="Europe/Rome")
    now = datetime(2026, 11, 25, 2, 30)
    runner.run_nightly(rome, now, lambda: now)
    utc = make_dbs(
        timezone="UTC",
        metrics_token=TOKEN,
        source_db=rome.settings.source_db,
        rollup_db=rome.settings.rollup_db,
    )
    # Rome's 2026-11-24 ends at 23:00 UTC; 36 hours later is 11:00 on the 26th.
    later = datetime(2026, 11, 26, 11, 30)
    with TestClient(create_app(utc, clock=lambda: later)) as client:
        got = scraped(client)
        health = client.get("/api/health").json()
    through = datetime(2026, 11, 24, 23, tzinfo=UTC).timestamp()
    assert got[("usage_data_through_timestamp_seconds", ())] == through
    assert health["status"] == "stale"
    assert got[("usage_fresh", ())] == 0
