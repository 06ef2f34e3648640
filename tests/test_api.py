"""The usage API through the TestClient, on rows written straight into `usage_daily`."""

import contextlib
import csv
import io
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId
from fastapi.testclient import TestClient
from pydantic import ValidationError
from pymongo.errors import (
    AutoReconnect,
    ConnectionFailure,
    ExecutionTimeout,
    OperationFailure,
    ServerSelectionTimeoutError,
)

from api import auth, background
from api.app import KeyCache, create_app, csv_cell
from api.background import Failures, Looks
from api.usage import UsageService, read_served
from etl import ledger, platform, runner
from etl.db import Databases, DatabaseUnavailable, connect, for_requests
from etl.definition import of_settings
from etl.settings import Settings
from tests.factories import (
    BOT_1,
    BOT_2,
    STORED_V2,
    clear_rows,
    make_request,
    make_row,
    set_platform_figure,
    store_rows,
)
from tests.stall import stalling

NOW = datetime(2026, 11, 25, 12, 0)
A, B, INTERNAL = "65e18830a0616000137bb854", "65e18830a0616000137bb855", "65e18830a0616000137bb8ff"
# End users: u1 talks to both organizations (and to two of A's agents), u2 on two days.
ROWS = [
    make_row(A, BOT_1, "2026-10-05", 3, 30, 1, ["u1", "u2"]),
    make_row(A, BOT_1, "2026-10-20", 2, 10, 0, ["u2", "u3"]),
    make_row(A, "unattributed", "2026-10-06", 1, 4, 0, ["u1"]),
    make_row(B, BOT_2, "2026-09-30", 5, 50, 2, ["u1", "u4", "u5"]),
    make_row(INTERNAL, BOT_1, "2026-10-07", 100, 900, 0, ["u9"]),
]


class Api:
    def __init__(self, client: TestClient, dbs: Databases) -> None:
        self.client = client
        self.dbs = dbs
        self.staff = auth.create_key(dbs.rollup, "staff", None, NOW)[1]
        self.customer_a = auth.create_key(dbs.rollup, "GIC", A, NOW)[1]

    def get(self, path: str, key: str | None = "staff", **params: object) -> object:
        secret = {"staff": self.staff, "a": self.customer_a}.get(key or "", key)
        headers = {"Authorization": f"Bearer {secret}"} if key else {}
        return self.client.get(path, params=params, headers=headers)

    def usage(self, key: str | None = "staff", **params: object) -> dict[str, object]:
        response = self.get("/api/aggregations/usage", key, **params)
        assert response.status_code == 200, response.text
        return response.json()


def add_run(dbs: Databases, through: str, finished: datetime) -> None:
    dbs.rollup.etl_runs.insert_one(
        {
            "kind": "nightly",
            "status": "ok",
            "started_at": finished,
            "finished_at": finished,
            "complete_through": through,
        }
    )


def cover(dbs: Databases, first: date, last: date) -> None:
    """Record first..last as computed under the settings' definition."""
    ledger.adopt(dbs, of_settings(dbs.settings))
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    stamp = {"run_id": None, "kind": "backfill", "read_started": NOW, "fingerprint": "f"}
    ledger.stamp_days(dbs, 1, days, stamp)


@pytest.fixture
def api(make_dbs: Callable[..., Databases]) -> Iterator[Api]:
    dbs = make_dbs(internal_org_ids=[INTERNAL])
    cover(dbs, date(2026, 9, 1), date(2026, 11, 24))
    store_rows(dbs, ROWS)
    dbs.source.organizations.insert_many(
        [{"_id": ObjectId(A), "name": "GIC"}, {"_id": B, "name": "Northwind"}]
    )
    dbs.source.faq_kbs.insert_one({"_id": ObjectId(BOT_1), "name": "Support Bot"})
    add_run(dbs, "2026-11-24", datetime(2026, 11, 25, 2, 30))
    with TestClient(create_app(dbs, clock=lambda: NOW)) as client:
        yield Api(client, dbs)


def conversations(row: dict[str, object]) -> list[int]:
    return [cell["conversations"] for cell in row["buckets"]]


def test_platform_default_is_six_full_months_by_organization(api: Api) -> None:
    body = api.usage()
    assert (body["start"], body["end"], body["granularity"]) == (
        "2026-05-01",
        "2026-10-31",
        "month",
    )
    assert [b["label"] for b in body["buckets"]] == [
        "May 2026",
        "Jun 2026",
        "Jul 2026",
        "Aug 2026",
        "Sep 2026",
        "Oct 2026",
    ]
    rows = body["rows"]

    def users(n: int) -> dict[str, object]:
        # Unions of the month rows' sketches: estimates, exact at these sizes.
        return {"users": n, "users_estimate": True, "users_low": n, "users_high": n}

    assert [(r["id"], r["name"], r["totals"]) for r in rows] == [
        (
            A,
            "GIC",
            {"conversations": 6, "messages": 44, "handoffs": 1, **users(3), "avg_depth": 7.33},
        ),
        (
            B,
            "Northwind",
            {"conversations": 5, "messages": 50, "handoffs": 2, **users(3), "avg_depth": 10.0},
        ),
    ]
    assert conversations(rows[0]) == [0, 0, 0, 0, 0, 6]
    assert conversations(body["total"]) == [0, 0, 0, 0, 5, 6]
    # u1 of both organizations is one user of the platform.
    assert body["total"]["totals"] == {
        "conversations": 11,
        "messages": 94,
        "handoffs": 3,
        **users(5),
        "avg_depth": 8.55,
    }
    assert body["data_through"] == "2026-11-24"
    assert body["metrics"] == ["conversations", "messages", "handoffs", "users", "avg_depth"]
    assert body["previous"] is None and rows[0]["previous"] is None and rows[0]["change"] is None


def test_a_rollup_from_before_users_reports_them_as_null_never_zero(api: Api) -> None:
    api.dbs.rollup.etl_state.update_one({}, {"$set": {"definition": STORED_V2}})
    body = api.usage()
    no_users = {"users": None, "users_estimate": False, "users_low": None, "users_high": None}
    for row in [*body["rows"], body["total"]]:
        assert {key: row["totals"][key] for key in no_users} == no_users
        assert all(cell["users"] is None for cell in row["buckets"])
    assert body["total"]["totals"]["conversations"] == 11


def test_staff_can_include_internal_organizations(api: Api) -> None:
    body = api.usage(include_internal="true")
    assert [r["id"] for r in body["rows"]] == [INTERNAL, A, B]
    assert body["total"]["totals"]["conversations"] == 111


def test_org_scope_rows_are_agents_with_names_and_unattributed(api: Api) -> None:
    body = api.usage(scope="org", org_id=A, start="2026-10-01", end="2026-10-31")
    assert body["granularity"] == "week"
    assert [(r["id"], r["name"]) for r in body["rows"]] == [
        (BOT_1, "Support Bot"),
        ("unattributed", "Unattributed"),
    ]
    buckets = body["buckets"]
    assert (buckets[0]["label"], buckets[0]["partial"]) == ("Oct 1 – 4", True)
    assert (buckets[-1]["label"], buckets[-1]["partial"]) == ("Oct 26 – 31", True)
    assert conversations(body["rows"][0]) == [0, 3, 0, 2, 0]
    assert conversations(body["total"]) == [0, 4, 0, 2, 0]


def test_agent_scope_is_one_row_daily_with_zeros(api: Api) -> None:
    body = api.usage(scope="agent", org_id=A, agent_id=BOT_1, start="2026-10-01", end="2026-10-07")
    assert body["granularity"] == "day"
    (row,) = body["rows"]
    assert conversations(row) == [0, 0, 0, 0, 3, 0, 0]
    idle = api.usage(scope="agent", org_id=A, agent_id=BOT_2, start="2026-10-01", end="2026-10-07")
    (row,) = idle["rows"]
    assert (row["id"], row["name"], conversations(row)) == (BOT_2, BOT_2, [0] * 7)


def test_totals_equal_the_sum_of_rows(api: Api) -> None:
    body = api.usage(start="2026-09-01", end="2026-10-31", include_internal="true")
    for metric in ("conversations", "messages", "handoffs"):
        assert body["total"]["totals"][metric] == sum(r["totals"][metric] for r in body["rows"])


def test_customer_key_lands_on_its_own_organization(api: Api) -> None:
    body = api.usage(key="a")
    assert (body["scope"], body["org_id"]) == ("org", A)
    assert (body["start"], body["end"]) == ("2026-10-27", "2026-11-25")
    body = api.usage(key="a", start="2026-09-01", end="2026-10-31")
    assert {r["id"] for r in body["rows"]} == {BOT_1, "unattributed"}


@pytest.mark.parametrize(
    "params",
    [
        {"scope": "org", "org_id": B},
        {"scope": "platform", "org_id": B},
        {"scope": "agent", "org_id": B, "agent_id": BOT_2},
        {"scope": "org", "org_id": INTERNAL},
        {"include_internal": "true"},
        {"scope": "org", "org_id": A, "include_internal": "true"},
    ],
)
def test_customer_key_cannot_read_other_org(api: Api, params: dict[str, str]) -> None:
    response = api.get("/api/aggregations/usage", "a", **params)
    assert response.status_code == 403
    named = "include_internal" if "include_internal" in params else "org_id"
    assert response.json()["parameter"] == named
    assert response.json()["detail"].startswith(f"{named}: ")
    csv = api.get("/api/aggregations/usage.csv", "a", **params)
    assert csv.status_code == 403


def test_customer_key_may_spell_its_own_id_in_capitals(api: Api) -> None:
    assert api.usage(key="a", scope="org", org_id=A.upper())["org_id"] == A


def test_missing_unknown_and_revoked_keys_get_401(api: Api) -> None:
    assert api.get("/api/aggregations/usage", None).status_code == 401
    assert api.get("/api/aggregations/usage", "usk_nope").status_code == 401
    key_id, secret = auth.create_key(api.dbs.rollup, "temp", None, NOW)
    assert api.get("/api/aggregations/usage", secret).status_code == 200
    auth.revoke_key(api.dbs.rollup, key_id, NOW)
    assert api.get("/api/aggregations/usage", secret).status_code == 401


def test_keys_are_stored_only_as_hashes(api: Api) -> None:
    stored = str(list(api.dbs.rollup.api_keys.find()))
    assert api.staff not in stored and api.customer_a not in stored
    assert auth.hash_key(api.staff) in stored


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"start": "2026-02-30"}, "start"),
        ({"end": "yesterday"}, "end"),
        ({"start": "2026-10-05", "end": "2026-10-01"}, "start"),
        ({"start": "2024-01-01", "end": "2026-01-01"}, "end"),
        ({"scope": "org"}, "org_id"),
        ({"scope": "org", "org_id": "12345"}, "org_id"),
        ({"scope": "agent", "org_id": A}, "agent_id"),
        ({"scope": "agent", "org_id": A, "agent_id": "robot" * 210}, "agent_id"),
        ({"scope": "galaxy"}, "scope"),
        ({"granularity": "hour"}, "granularity"),
        ({"include_internal": "perhaps"}, "include_internal"),
        ({"start": "20261001"}, "start"),
        ({"end": "2026-W40-1"}, "end"),
        ({"start": "9999-12-31"}, "start"),
        ({"end": "0001-01-05"}, "end"),
        ({"start": "9998-12-20", "end": "9999-01-03", "granularity": "week"}, "end"),
        ({"scope": "org", "org_id": A, "end": "0001-12-31"}, "end"),
    ],
)
def test_bad_parameters_get_422_naming_the_parameter(
    api: Api, params: dict[str, str], parameter: str
) -> None:
    response = api.get("/api/aggregations/usage", **params)
    assert response.status_code == 422
    body = response.json()
    assert body["parameter"] == parameter
    assert body["detail"].startswith(f"{parameter}: ")


@pytest.mark.parametrize(
    "params",
    [
        {"start": "9998-12-31"},  # the default length runs past the last supported day
        {"scope": "org", "org_id": A, "end": "0002-01-05"},
        {"start": "9998-12-01", "end": "9998-12-31", "granularity": "week"},
        {"start": "0002-01-01", "end": "0002-02-15", "granularity": "month"},
    ],
)
def test_ranges_at_the_ends_of_the_supported_dates_are_answered(
    api: Api, params: dict[str, str]
) -> None:
    body = api.usage(**params)
    assert body["buckets"][0]["start"] == body["start"]
    assert body["buckets"][-1]["end"] == body["end"]


def test_csv_is_the_same_query_as_an_attachment(api: Api) -> None:
    response = api.get(
        "/api/aggregations/usage.csv", start="2026-09-01", end="2026-10-31", metric="messages"
    )
    assert response.status_code == 200
    assert response.headers["content-disposition"] == (
        'attachment; filename="usage-platform-2026-09-01-to-2026-10-31-month-messages.csv"'
    )
    assert response.text.splitlines() == [
        "id,name,Sep 2026,Oct 2026,total",
        f"{A},GIC,0,44,44",  # rows by conversations: 6 before 5
        f"{B},Northwind,50,0,50",
        ",Total,50,44,94",
    ]


def test_csv_cells_that_a_spreadsheet_would_run_as_formulas_are_quoted(
    make_dbs: Callable[..., Databases],
) -> None:
    names = ['=HYPERLINK("http://x")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)"]
    orgs = [str(ObjectId()) for _ in names]
    dbs = make_dbs()
    rows = [make_row(org, BOT_1, "2026-10-05", n + 1) for n, org in enumerate(orgs)]
    store_rows(dbs, rows)
    dbs.source.organizations.insert_many(
        [{"_id": ObjectId(org), "name": name} for org, name in zip(orgs, names, strict=True)]
    )
    key = auth.create_key(dbs.rollup, "staff", None, NOW)[1]
    with TestClient(create_app(dbs, clock=lambda: NOW)) as client:
        response = client.get(
            "/api/aggregations/usage.csv",
            params={"start": "2026-10-01", "end": "2026-10-31", "granularity": "month"},
            headers={"Authorization": f"Bearer {key}"},
        )
    assert response.status_code == 200
    lines = list(csv.reader(io.StringIO(response.text, newline="")))
    by_id = {line[0]: line[1:] for line in lines[1:]}
    for n, (org, name) in enumerate(zip(orgs, names, strict=True)):
        assert by_id[org] == ["'" + name, str(n + 1), str(n + 1)]
    assert by_id[""] == ["Total", "10", "10"]


@pytest.mark.parametrize(
    ("text", "cell"),
    [
        ("=1+1", "'=1+1"),
        ("+1", "'+1"),
        ("-1", "'-1"),
        ("@A1", "'@A1"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("Northwind", "Northwind"),
        ("a=b", "a=b"),
        ("", ""),
    ],
)
def test_a_csv_text_cell_never_starts_a_formula(text: str, cell: str) -> None:
    assert csv_cell(text) == cell


def test_a_new_run_invalidates_cached_responses(api: Api) -> None:
    before = api.usage()
    api.dbs.usage_daily().update_one({"_id": ROWS[0]["_id"]}, {"$inc": {"conversations": 10}})
    api.dbs.usage_monthly().update_one(
        {"org_id": A, "month": "2026-10", "agent_id": BOT_1}, {"$inc": {"conversations": 10}}
    )
    api.dbs.level("usage_org_monthly").update_one(
        {"org_id": A, "month": "2026-10"}, {"$inc": {"conversations": 10}}
    )
    month = {"period": "month", "key": "2026-10"}
    (stored,) = map(platform.unpack, api.dbs.level("usage_platform").find(month))
    at = stored["orgs"].index(A)
    figure = stored["conversations"][at] + 10
    set_platform_figure(api.dbs.level("usage_platform"), month, "conversations", at, figure)
    assert api.usage() == before  # served from the cache: no run completed
    cover(api.dbs, date(2026, 11, 25), date(2026, 11, 25))
    add_run(api.dbs, "2026-11-25", datetime(2026, 11, 25, 13, 0))
    after = api.usage()
    assert after["rows"][0]["totals"]["conversations"] == 16
    assert after["data_through"] == "2026-11-25"


def test_health_reports_the_database_and_the_last_run(api: Api) -> None:
    body = api.get("/api/health", None).json()
    assert body == {
        "status": "ok",
        "freshness": "ok: data through 2026-11-24, 12.0 hours old, at most 36",
        "database": "ok",
        "generation": 1,
        "definition": {
            "timezone": "UTC",
            "billable_status": 1000,
            "billable_min_depth": 2,
            "exclude_test_mode": True,
            "profile": "deployment",
            "attribution": "attributes.bot_id, else unattributed",
            "skip_rules": "no_organization, bad_created_at, bad_depth, depth_out_of_range",
            "version": 3,
            "users_from": ["lead", "requester"],
            "fingerprint": body["definition"]["fingerprint"],
        },
        "data_from": "2026-09-01",
        "data_through": "2026-11-24",
        "last_run_status": "ok",
        "last_run_finished_at": "2026-11-25T02:30:00Z",
    }


@pytest.mark.parametrize(
    ("runs", "now", "status", "starts"),
    [
        ([], NOW, "never_ran", "never ran"),
        ([("ok", "2026-11-24")], datetime(2026, 11, 26, 12, 0), "ok", "ok: data through"),
        ([("ok", "2026-11-24")], datetime(2026, 11, 26, 12, 1), "stale", "stale since 2026-11-24"),
        ([("ok", "2026-11-24"), ("failed", None)], NOW, "failed", "last nightly failed"),
    ],
    ids=["never ran", "at the threshold", "past it", "last nightly failed"],
)
def test_health_says_whether_the_data_is_fresh_and_still_answers_200(
    make_dbs: Callable[..., Databases],
    runs: list[tuple[str, str | None]],
    now: datetime,
    status: str,
    starts: str,
) -> None:
    dbs = make_dbs()
    for n, (outcome, through) in enumerate(runs):
        started = datetime(2026, 11, 25, 2, 15) + timedelta(minutes=n)
        dbs.rollup.etl_runs.insert_one(
            {"kind": "nightly", "status": outcome, "started_at": started, "finished_at": started}
            | ({"complete_through": through} if through else {})
        )
    with TestClient(create_app(dbs, clock=lambda: now)) as client:
        response = client.get("/api/health")
    assert response.status_code == 200
    assert response.json()["status"] == status
    assert response.json()["freshness"].startswith(starts)


def test_health_uses_the_max_lag_setting(make_dbs: Callable[..., Databases]) -> None:
    dbs = make_dbs(max_lag_hours=12)
    add_run(dbs, "2026-11-24", datetime(2026, 11, 25, 2, 30))
    with TestClient(create_app(dbs, clock=lambda: datetime(2026, 11, 25, 12, 1))) as client:
        assert client.get("/api/health").json()["status"] == "stale"


@pytest.mark.parametrize("path", ["/", "/api/health", "/docs", "/api/aggregations/usage"])
def test_head_answers_as_get_does_without_a_body(api: Api, path: str) -> None:
    headers = {"Authorization": f"Bearer {api.staff}"}
    got = api.client.get(path, headers=headers)
    head = api.client.head(path, headers=headers)
    assert (head.status_code, got.status_code) == (200, 200)
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.headers["content-length"] == got.headers["content-length"]


def test_the_page_cannot_be_framed_or_sniffed(api: Api) -> None:
    page = api.client.get("/")
    assert page.headers["content-security-policy"] == "frame-ancestors 'none'"
    assert page.headers["x-frame-options"] == "DENY"
    for response in [page, api.client.get("/static/app.js"), api.client.get("/docs")]:
        assert response.headers["x-content-type-options"] == "nosniff"
    assert "cache-control" not in page.headers


def test_api_answers_are_never_stored_by_a_cache(make_dbs: Callable[..., Databases]) -> None:
    dbs = make_dbs(cache_check_seconds=60)
    store_rows(dbs, ROWS)
    add_run(dbs, "2026-11-24", datetime(2026, 11, 25, 2, 30))
    staff = {"Authorization": f"Bearer {auth.create_key(dbs.rollup, 's', None, NOW)[1]}"}
    path = "/api/aggregations/usage?start=2026-09-01&end=2026-10-31"
    with TestClient(create_app(dbs, clock=lambda: NOW)) as client:
        answers = [
            client.get(path, headers=staff),
            client.get(path, headers=staff),  # the same call again: answered from memory
            client.get(path.replace("usage?", "usage.csv?"), headers=staff),
            client.get(path),
            client.get(path + "&granularity=hour", headers=staff),
        ]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 401, 422]
    for answer in answers:
        assert answer.headers["cache-control"] == "no-store"
        assert answer.headers["x-content-type-options"] == "nosniff"


def test_the_api_docs_load_nothing_from_elsewhere(api: Api) -> None:
    page = api.client.get("/docs").text
    assets = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", page)
    assert len(assets) >= 3
    for asset in assets:
        assert asset.startswith("/"), asset
        assert api.client.get(asset).status_code == 200, asset
    assert "swagger-ui-bundle.js" in page


def test_an_unreachable_database_gets_503_not_500(
    make_dbs: Callable[..., Databases], dead_uri: str
) -> None:
    dbs = make_dbs(server_selection_timeout_ms=200)
    from etl.db import connect

    down = connect(dbs.settings, dead_uri)
    try:
        with TestClient(create_app(down, clock=lambda: NOW)) as client:
            auth_header = {"Authorization": "Bearer usk_" + "k" * 43}  # a key's shape
            usage = client.get("/api/aggregations/usage", headers=auth_header)
            assert usage.status_code == 503
            assert usage.json() == {"detail": "the database is unavailable; try again"}
            health = client.get("/api/health")
            assert (health.status_code, health.json()["status"]) == (503, "unavailable")
    finally:
        down.close()


def test_a_stalled_database_gets_503_within_the_read_timeout_and_the_api_recovers(
    make_dbs: Callable[..., Databases], server_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Replies that never come (a hung server, a network dropping packets) fail a request
    after `api_read_timeout_ms`, not never; once they flow again, requests are answered."""
    dbs = make_dbs(api_read_timeout_ms=400, cache_check_seconds=0.2)
    store_rows(dbs, ROWS)
    add_run(dbs, "2026-11-24", datetime(2026, 11, 25, 2, 30))
    staff = {"Authorization": f"Bearer {auth.create_key(dbs.rollup, 's', None, NOW)[1]}"}
    path = "/api/aggregations/usage?start=2026-09-01&end=2026-10-{}"
    with (
        stalling(server_uri) as proxy,
        contextlib.closing(connect(dbs.settings, proxy.uri)) as proxied,
        for_requests(proxied) as reading,
        TestClient(create_app(reading, clock=lambda: NOW)) as client,
    ):
        assert client.get(path.format(31), headers=staff).status_code == 200
        proxy.stall()
        started = time.monotonic()
        stalled = client.get(path.format(30), headers=staff)  # not cached: reads the rows
        waited = time.monotonic() - started
        assert stalled.status_code == 503, stalled.text
        assert stalled.json() == {"detail": "the database is unavailable; try again"}
        assert waited < 3.0, waited  # the read timeout and a look's, not forever
        # Known down: every request fails at once while a probe tries the database.
        for day in range(10, 20):
            started = time.monotonic()
            assert client.get(path.format(day), headers=staff).status_code == 503
            assert time.monotonic() - started < 0.2
        health = client.get("/api/health")
        assert (health.status_code, health.json()["database"]) == (503, "unreachable")
        logged = [r for r in caplog.records if "database unavailable" in r.getMessage()]
        assert len(logged) == 1  # when the outage began, not once a request
        proxy.resume()
        deadline = time.monotonic() + 15
        while (answer := client.get(path.format(29), headers=staff)).status_code != 200:
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.2)
        assert [r["id"] for r in answer.json()["rows"]] == [INTERNAL, A, B]  # 100, 6, 5


def test_the_commands_client_has_no_read_timeout_and_the_apis_has(dbs: Databases) -> None:
    """A backfill's aggregation may take minutes: only the API's replies are bounded."""
    assert dbs.client.options.timeout is None
    with for_requests(dbs) as reading:
        assert reading.client.options.timeout == 5.0
        assert (reading.uri, reading.settings) == (dbs.uri, dbs.settings)


def test_an_agent_whose_bot_id_is_no_object_id_has_a_view_like_any_other(
    make_dbs: Callable[..., Databases],
) -> None:
    """The rollup keeps such a bot_id (trimmed) as its agent: the organization's view lists
    it, so its own view must answer too."""
    dbs = make_dbs()
    created = datetime(2026, 10, 14, 10, 0)
    dbs.source.requests.insert_many(
        [make_request(attributes={"bot_id": " Bot-7 "}) for _ in range(2)] + [make_request()]
    )
    runner.run_backfill(dbs, date(2026, 10, 1), date(2026, 10, 31), created, lambda: created)
    secret = auth.create_key(dbs.rollup, "s", None, NOW)[1]
    headers = {"Authorization": f"Bearer {secret}"}
    with TestClient(create_app(dbs, clock=lambda: NOW)) as client:
        org = client.get(
            f"/api/aggregations/usage?scope=org&org_id={A}&start=2026-10-01&end=2026-10-31",
            headers=headers,
        ).json()
        assert [(r["id"], r["totals"]["conversations"]) for r in org["rows"]] == [
            ("Bot-7", 2),
            (BOT_1, 1),
        ]
        agent = client.get(
            f"/api/aggregations/usage?scope=agent&org_id={A}&agent_id=Bot-7"
            "&start=2026-10-01&end=2026-10-31",
            headers=headers,
        )
        assert agent.status_code == 200, agent.text
        assert agent.json()["total"]["totals"]["conversations"] == 2
        padded = client.get(  # no such agent (the rollup trims): nothing, and no error
            f"/api/aggregations/usage?scope=agent&org_id={A}&agent_id=%20Bot-7", headers=headers
        )
        assert padded.json()["total"]["totals"]["conversations"] == 0
        # Any id fits a file name: a header holds latin-1 only, and a quote would end it.
        exported = client.get(
            "/api/aggregations/usage.csv",
            params={"scope": "agent", "org_id": A, "agent_id": 'Bot-€"7', "start": "2026-10-01"},
            headers=headers,
        )
        assert exported.status_code == 200, exported.text
        assert exported.headers["content-disposition"] == (
            'attachment; filename="usage-agent-Bot-__7-2026-10-01-to-2026-10-30-week'
            '-conversations.csv"'
        )


def test_clipped_months_count_only_their_days(api: Api) -> None:
    body = api.usage(start="2026-08-20", end="2026-10-05", granularity="month")
    assert [(b["key"], b["partial"]) for b in body["buckets"]] == [
        ("2026-08", True),
        ("2026-09", False),
        ("2026-10", True),
    ]
    assert [(r["id"], conversations(r)) for r in body["rows"]] == [
        (B, [0, 5, 0]),
        (A, [0, 0, 3]),  # Oct 1 – 5 only: the row of Oct 20 is outside the range
    ]


def test_warm_calls_are_answered_from_memory_per_key_until_a_new_run(
    make_dbs: Callable[..., Databases],
) -> None:
    dbs = make_dbs(cache_check_seconds=0.3)
    store_rows(dbs, ROWS)
    add_run(dbs, "2026-11-24", datetime(2026, 11, 25, 2, 30))
    staff = {"Authorization": f"Bearer {auth.create_key(dbs.rollup, 's', None, NOW)[1]}"}
    customer = {"Authorization": f"Bearer {auth.create_key(dbs.rollup, 'c', B, NOW)[1]}"}
    path = "/api/aggregations/usage?start=2026-09-01&end=2026-10-31"
    with TestClient(create_app(dbs, clock=lambda: NOW)) as client:
        first = client.get(path, headers=staff).json()
        clear_rows(dbs)
        assert client.get(path, headers=staff).json() == first  # from memory
        theirs = client.get(path, headers=customer).json()  # another key: never staff's answer
        assert (theirs["scope"], theirs["org_id"], theirs["rows"]) == ("org", B, [])
        add_run(dbs, "2026-11-25", datetime(2026, 11, 25, 13, 0))
        deadline = time.monotonic() + 5
        while client.get(path, headers=staff).json()["data_through"] != "2026-11-25":
            assert time.monotonic() < deadline, "a new run did not reach the cached answer"
            time.sleep(0.05)
        assert client.get(path, headers=staff).json()["rows"] == []


class Gate:
    """Stands in for a database look: blocks until opened, then answers as the real one
    (or, `read_first`, answers from what it read before it blocked)."""

    def __init__(self, look: Callable[..., Any], read_first: bool = False) -> None:
        self.look = look
        self.read_first = read_first
        self.calls = 0
        self.started = threading.Event()
        self.opened = threading.Event()

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        answer = self.look(*args) if self.read_first else None
        self.started.set()
        self.opened.wait(10)  # not asserted: a look's thread would swallow it
        return answer if self.read_first else self.look(*args)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_request_due_for_a_look_at_the_runs_is_answered_without_waiting_for_it(
    make_dbs: Callable[..., Databases],
) -> None:
    dbs = make_dbs()
    store_rows(dbs, ROWS)
    add_run(dbs, "2026-11-24", datetime(2026, 11, 25, 2, 30))
    gate = Gate(read_served)
    gate.opened.set()
    service = UsageService(dbs, check_seconds=1.0, read=gate)
    first = service.served()
    gate.opened.clear()
    add_run(dbs, "2026-11-25", datetime(2026, 11, 25, 13, 0))
    time.sleep(1.05)
    # Due: callers get what they had while one look runs (and blocks) in the background.
    assert service.known() is first
    assert gate.started.wait(5)
    assert all(service.known() is first for _ in range(50))
    assert gate.calls == 2 and not gate.opened.is_set()
    gate.opened.set()
    wait_until(
        lambda: (service.known() or first).data_through == date(2026, 11, 25),
        "the background look never landed",
    )

    # A look that hangs past a second period: callers wait for the database again.
    gate.opened.clear()
    gate.started.clear()
    time.sleep(1.05)
    assert service.known() is not None
    assert gate.started.wait(5)
    time.sleep(1.0)
    assert service.known() is None
    gate.opened.set()


def test_a_key_due_for_a_look_is_accepted_while_it_is_looked_up_and_a_revoked_one_then_fails(
    make_dbs: Callable[..., Databases],
) -> None:
    dbs = make_dbs()
    key_id, secret = auth.create_key(dbs.rollup, "s", None, NOW)
    gate = Gate(lambda s: auth.authenticate(dbs.rollup, s))
    gate.opened.set()
    keys = KeyCache(gate, ttl=1.0)
    principal = keys.get(secret)
    assert principal is not None and keys.cached(secret) == principal
    auth.revoke_key(dbs.rollup, key_id, NOW)
    gate.opened.clear()
    gate.started.clear()
    time.sleep(1.05)
    assert keys.cached(secret) == principal  # due: accepted while the look runs
    assert gate.started.wait(5)
    assert all(keys.cached(secret) == principal for _ in range(50))
    assert gate.calls == 2 and not gate.opened.is_set()
    gate.opened.set()
    wait_until(lambda: keys.cached(secret) is None, "a revoked key was still accepted")
    assert keys.get(secret) is None


def test_a_slow_look_never_brings_back_a_key_refused_since(
    make_dbs: Callable[..., Databases],
) -> None:
    """A background look that read the key before its revocation and answers after a later
    lookup refused it: the later lookup's answer stands."""
    dbs = make_dbs()
    key_id, secret = auth.create_key(dbs.rollup, "s", None, NOW)
    calls: list[Any] = []
    stall, stalled = threading.Event(), threading.Event()

    def lookup(key: str) -> Any:
        principal = auth.authenticate(dbs.rollup, key)
        calls.append(principal)
        if len(calls) == 2:  # the background look: reads the key valid, then answers late
            stalled.set()
            stall.wait(10)
        return principal

    keys = KeyCache(lookup, ttl=0.5)
    principal = keys.get(secret)
    assert principal is not None
    time.sleep(0.55)
    assert keys.cached(secret) == principal
    assert stalled.wait(5)
    auth.revoke_key(dbs.rollup, key_id, NOW)
    time.sleep(0.5)  # two periods since the first lookup began
    assert keys.cached(secret) is None
    assert keys.get(secret) is None  # looked up again: refused
    stall.set()
    wait_until(lambda: not keys.looks.running(secret), "the slow look never answered")
    assert calls == [principal, principal, None]
    assert keys.cached(secret) is None and keys.get(secret) is None


def test_a_key_whose_look_hangs_is_refused_after_two_periods(
    make_dbs: Callable[..., Databases],
) -> None:
    dbs = make_dbs()
    _, secret = auth.create_key(dbs.rollup, "s", None, NOW)
    gate = Gate(lambda s: auth.authenticate(dbs.rollup, s))
    gate.opened.set()
    keys = KeyCache(gate, ttl=1.0)
    assert keys.get(secret) is not None
    gate.opened.clear()
    time.sleep(1.05)
    assert keys.cached(secret) is not None
    time.sleep(1.0)
    assert keys.cached(secret) is None
    gate.opened.set()


def test_while_the_database_is_down_callers_fail_fast_instead_of_each_waiting_it_out(
    make_dbs: Callable[..., Databases],
) -> None:
    dbs = make_dbs()
    calls: list[str] = []

    def down(*args: Any) -> Any:
        calls.append("read")
        raise ServerSelectionTimeoutError("No servers found yet, Timeout: 5s, Topology: ...")

    service = UsageService(dbs, check_seconds=0.5, read=down)
    keys = KeyCache(down, ttl=0.5)
    for _ in range(3):
        with pytest.raises(ConnectionFailure):
            service.served()
        with pytest.raises(ConnectionFailure):
            keys.get("usk_" + "k" * 43)
    assert calls == ["read", "read"]  # once each: the others failed on the remembered error
    time.sleep(0.55)
    with pytest.raises(ConnectionFailure):
        service.served()
    assert calls == ["read", "read", "read"]


def test_a_failed_look_logs_one_line_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    looks = Looks(describe=lambda error: "cannot reach MongoDB at mongodb://db/")

    def fail() -> None:
        raise ServerSelectionTimeoutError("No servers found yet, Timeout: 5s, Topology: ...")

    for entry in ("a", "b"):
        assert looks.start(entry, fail)
        wait_until(lambda: not looks.running(entry), "the look never ended")  # noqa: B023
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "background look at the database failed: cannot reach MongoDB at mongodb://db/"
    ]


def test_the_look_period_is_at_most_an_hour() -> None:
    for bad in (float("inf"), 3601):
        with pytest.raises(ValidationError, match="cache_check_seconds"):
            Settings(_env_file=None, cache_check_seconds=bad)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="finite number"):
        Settings(_env_file=None, cache_check_seconds="nan")  # type: ignore[call-arg]


def test_one_look_at_a_time_per_entry() -> None:
    looks = Looks()
    release = threading.Event()
    ran: list[str] = []

    def look(name: str) -> None:
        ran.append(name)
        release.wait(10)

    assert looks.start("a", lambda: look("a"))
    assert not looks.start("a", lambda: look("a again"))
    assert looks.start("b", lambda: look("b"))
    release.set()
    wait_until(lambda: not looks.running("a") and not looks.running("b"), "looks never ended")
    assert sorted(ran) == ["a", "b"]
    assert looks.start("a", lambda: None)


def test_callers_waiting_on_a_slow_read_of_what_is_served_take_its_answer(
    make_dbs: Callable[..., Databases],
) -> None:
    """Reads slower than the period (a struggling database): eight callers due at once make
    one read, not eight in a row, each waiting for the ones before."""
    dbs = make_dbs()
    add_run(dbs, "2026-11-24", datetime(2026, 11, 25, 2, 30))
    reads: list[float] = []

    def slow(dbs: Databases) -> Any:
        reads.append(time.monotonic())
        time.sleep(0.3)
        return read_served(dbs)

    service = UsageService(dbs, check_seconds=0.2, read=slow)
    answers: list[Any] = []
    callers = [threading.Thread(target=lambda: answers.append(service.served())) for _ in range(8)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(10)
    assert len(reads) == 1
    assert len(answers) == 8 and all(answer is answers[0] for answer in answers)
    assert answers[0].data_through == date(2026, 11, 24)


def test_while_a_probe_finds_the_database_down_callers_fail_at_once_and_go_on_after_it() -> None:
    answers = [AutoReconnect("down")] * 3 + [None]
    probes: list[float] = []

    def probe() -> None:
        probes.append(time.monotonic())
        answer = answers[min(len(probes), len(answers)) - 1]
        if answer is not None:
            raise answer

    failures = Failures(probe=probe)
    failures.raise_recent(2.0)  # nothing known: callers go to the database
    failures.remember(ServerSelectionTimeoutError("No servers found yet"))
    with pytest.raises(ConnectionFailure):  # the failure, or the probe's since
        failures.raise_recent(2.0)
    wait_until(lambda: failures.down(2.0) is None, "the probe never found the database back")
    assert len(probes) == 4  # down three times, half a second apart, then an answer
    assert probes[-1] - probes[0] >= 3 * background.PROBE_PAUSE_SECONDS * 0.9
    failures.raise_recent(2.0)
    failures.remember(OperationFailure("not authorized"))  # an answer: not down
    assert failures.down(2.0) is None
    failures.remember(background.KnownDown("down"))  # a caller failed on what was known
    assert failures.down(2.0) is None and len(probes) == 4
    # An operation the server cut at the time limit: too slow to go to at once again.
    assert failures.remember(ExecutionTimeout("operation exceeded time limit", 50))
    assert failures.down(2.0) is not None
    wait_until(lambda: failures.down(2.0) is None, "the probe never found the database back")


def test_an_error_of_a_database_that_answers_is_logged_every_time_an_outage_once(
    make_dbs: Callable[..., Databases],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An outage: a line when it begins, and one when the probe finds the database back
    with the 503s answered meanwhile (health's too); any other error: a line each time."""
    dbs = make_dbs()
    store_rows(dbs, ROWS)
    add_run(dbs, "2026-11-24", datetime(2026, 11, 25, 2, 30))
    staff = {"Authorization": f"Bearer {auth.create_key(dbs.rollup, 's', None, NOW)[1]}"}
    errors = iter([OperationFailure("exceeded memory limit")] * 2 + [AutoReconnect("gone")])
    gate = threading.Event()

    def failing(*args: Any) -> bytes:
        raise next(errors)

    def ping(*args: Any, **kwargs: Any) -> Any:
        gate.wait(10)
        return {"ok": 1}

    monkeypatch.setattr(UsageService, "report_json", failing)
    with TestClient(create_app(dbs, clock=lambda: NOW)) as client:
        monkeypatch.setattr(client.app.state.failures, "_probe", ping)
        for day in range(20, 26):
            path = f"/api/aggregations/usage?start=2026-09-01&end=2026-10-{day}"
            assert client.get(path, headers=staff).status_code == 503
        assert client.get("/api/health").status_code == 503
        gate.set()
        wait_until(lambda: client.app.state.failures.down(1) is None, "never found back")
    lines = [r.getMessage() for r in caplog.records if r.name == "usage.api"]
    assert [line.split(" after ")[0] for line in lines] == [
        "database error",
        "database error",
        "database unavailable: cannot reach MongoDB at " + dbs.uri,
        "the database answers again",
    ]
    assert lines[-1].endswith("; 5 requests were answered 503 meanwhile")


def test_a_database_that_refuses_is_no_outage_to_health(
    dbs: Databases, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bad credentials: health answers 503 each time, but nothing is probed or failed fast."""

    def refuse() -> None:
        raise DatabaseUnavailable("authentication failed")

    monkeypatch.setattr(dbs, "ping", refuse)
    with TestClient(create_app(dbs, clock=lambda: NOW)) as client:
        for _ in range(3):
            assert client.get("/api/health").status_code == 503
        assert client.app.state.failures.down(1.0) is None
    assert not [r for r in caplog.records if "database unavailable" in r.getMessage()]


def test_only_an_unreachable_database_fails_callers_fast_and_only_for_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failures = Failures()
    failures.remember(OperationFailure("not authorized on usage to execute command"))
    failures.raise_recent(3600)  # an error the next call may not meet: nothing remembered
    failures.remember(AutoReconnect("connection closed"))
    with pytest.raises(ConnectionFailure, match="connection closed"):
        failures.raise_recent(3600)
    monkeypatch.setattr(background, "FAIL_FAST_SECONDS", 0.1)
    time.sleep(0.15)
    failures.raise_recent(3600)  # a period of an hour: tried again after seconds


def test_looks_run_a_bounded_number_at_once_and_a_fault_in_one_is_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    looks = Looks(most=2)
    release = threading.Event()
    assert looks.start("a", lambda: release.wait(10))
    assert looks.start("b", lambda: release.wait(10))
    assert not looks.start("c", lambda: None)  # the entry ages out and its callers wait
    release.set()
    wait_until(lambda: looks.start("c", lambda: {}["missing"]), "looks never ended")
    wait_until(lambda: not looks.running("c"), "the look never ended")
    faults = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in faults] == ["background look failed"]
    assert faults[0].exc_info is not None and faults[0].exc_info[0] is KeyError


def test_days_never_computed_are_named_as_gaps_not_answered_as_zero(api: Api) -> None:
    cover(api.dbs, date(2026, 5, 1), date(2026, 5, 31))
    body = api.usage(start="2026-05-01", end="2026-10-31")
    assert body["data_from"] == "2026-05-01"
    assert body["data_gaps"] == [["2026-06-01", "2026-08-31"]]
    clipped = api.usage(start="2026-09-01", end="2026-10-31")
    assert clipped["data_gaps"] == []
    health = api.get("/api/health", None).json()
    assert health["data_from"] == "2026-05-01"


@pytest.fixture
def many(make_dbs: Callable[..., Databases]) -> Iterator[Api]:
    """23 organizations, several tied on conversations, named North 0 … North 22."""
    dbs = make_dbs()
    orgs = [f"65e18830a0616000137b{n:04x}" for n in range(23)]
    rows = [
        make_row(org, BOT_1, f"2026-10-{1 + n % 20:02d}", 1 + n % 4, 10, n % 2)
        for n, org in enumerate(orgs)
    ]
    store_rows(dbs, rows)
    dbs.source.organizations.insert_many(
        [{"_id": ObjectId(org), "name": f"North {n}"} for n, org in enumerate(orgs)]
    )
    with TestClient(create_app(dbs, clock=lambda: NOW)) as client:
        yield Api(client, dbs)


def test_pages_show_every_organization_once_in_a_stable_order_with_other_and_total(
    many: Api,
) -> None:
    range_ = {"start": "2026-10-01", "end": "2026-10-31"}
    conversations = {f"North {n}": 1 + n % 4 for n in range(23)}
    # Ties by id, which is in the order of n here (North 2 before North 10).
    order = sorted(conversations, key=lambda name: (-conversations[name], int(name[6:])))
    seen: list[str] = []
    for offset in range(0, 25, 5):
        body = many.usage(limit=5, offset=offset, **range_)
        assert body["total_rows"] == 23
        assert body["total"]["totals"]["conversations"] == sum(conversations.values())
        page = [row["name"] for row in body["rows"]]
        seen += page
        other = body["other"]["totals"]["conversations"] if body["other"] else 0
        assert sum(conversations[name] for name in page) + other == sum(conversations.values())
        if body["other"]:
            for n, bucket in enumerate(body["other"]["buckets"]):
                on_page = sum(row["buckets"][n]["conversations"] for row in body["rows"])
                assert (
                    bucket["conversations"] + on_page
                    == body["total"]["buckets"][n]["conversations"]
                )
    assert seen == order
    assert many.usage(limit=5, offset=5, **range_) == many.usage(limit=5, offset=5, **range_)


def test_a_name_search_keeps_matching_rows_and_their_exact_total(many: Api) -> None:
    body = many.usage(q="  nORTH 1", start="2026-10-01", end="2026-10-31")
    names = {f"North {n}" for n in (1, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19)}
    assert {row["name"] for row in body["rows"]} == names
    assert body["total_rows"] == len(names)
    assert body["total"]["totals"]["conversations"] == sum(1 + int(n[6:]) % 4 for n in names)
    assert body["other"] is None
    nothing = many.usage(q="south", start="2026-10-01", end="2026-10-31")
    assert (
        nothing["rows"],
        nothing["total_rows"],
        nothing["total"]["totals"]["conversations"],
    ) == ([], 0, 0)


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"offset": -1}, "offset"),
        ({"q": "x" * 101}, "q"),
    ],
)
def test_paging_parameters_out_of_bounds_get_422(
    many: Api, params: dict[str, object], parameter: str
) -> None:
    response = many.get("/api/aggregations/usage", **params)
    assert response.status_code == 422
    assert response.json()["parameter"] == parameter


def test_the_csv_export_holds_every_row_whatever_the_page(many: Api) -> None:
    response = many.get(
        "/api/aggregations/usage.csv", start="2026-10-01", end="2026-10-31", limit=5, offset=10
    )
    assert response.status_code == 200
    lines = response.text.splitlines()
    assert len(lines) == 1 + 23 + 1  # header, every organization, total
    assert lines[-1].split(",")[-1] == str(sum(1 + n % 4 for n in range(23)))


def test_a_customer_key_never_learns_another_organizations_agent_name(api: Api) -> None:
    api.dbs.source.faq_kbs.insert_one({"_id": ObjectId(BOT_2), "name": "Northwind Secret Bot"})
    span = {"start": "2026-09-01", "end": "2026-10-31"}
    theirs = api.usage("a", scope="agent", org_id=A, agent_id=BOT_2, **span)
    assert [(row["id"], row["name"]) for row in theirs["rows"]] == [(BOT_2, BOT_2)]
    assert theirs["total"]["totals"]["conversations"] == 0
    searched = api.usage("a", q="secret", **span)
    assert (searched["rows"], searched["total_rows"]) == ([], 0)
    for params in ({"q": "secret"}, {"scope": "agent", "org_id": A, "agent_id": BOT_2}):
        exported = api.get("/api/aggregations/usage.csv", "a", **params, **span)
        assert exported.status_code == 200 and "Secret" not in exported.text
    # Staff, and the organization it belongs to, see the name.
    assert api.usage(scope="org", org_id=B, **span)["rows"][0]["name"] == "Northwind Secret Bot"


def test_a_conversation_naming_another_organizations_agent_never_shows_its_name(
    api: Api,
) -> None:
    """A conversation's attributes can carry any agent id: GIC's rows for Northwind's bot
    (owned by Northwind in the profile's `id_organization`) show its id, never its name,
    to GIC's key, in usage, search, name order, the CSV and movers alike."""
    api.dbs.source.faq_kbs.insert_many(
        [
            {"_id": ObjectId(BOT_2), "name": "Northwind Secret Bot", "id_organization": B.upper()},
            {"_id": "b3", "name": "Other Secret Bot", "id_organization": ObjectId(B)},
            # A Tiledesk project id beside it is not the deployment's organization.
            {"_id": "b4", "name": "Own Bot", "id_organization": A, "id_project": "proj1"},
        ]
    )
    clear_rows(api.dbs)
    store_rows(
        api.dbs,
        [
            *ROWS,
            make_row(A, BOT_2, "2026-10-08", 2, 8, 0, ["u7"]),
            make_row(A, "b3", "2026-10-09", 1, 3, 0, ["u8"]),
            make_row(A, "b4", "2026-10-10", 1, 3, 0, ["u9"]),
        ],
    )
    span = {"start": "2026-10-01", "end": "2026-10-31"}
    for key in ("a", "staff"):
        body = api.usage(key, scope="org", org_id=A, sort="name", **span)
        names = {row["id"]: row["name"] for row in body["rows"]}
        assert (names[BOT_2], names["b3"], names["b4"]) == (BOT_2, "b3", "Own Bot")
        assert names[BOT_1] == "Support Bot"  # no owner field: its name stands
    assert api.usage("a", q="secret", **span)["total_rows"] == 0
    exported = api.get("/api/aggregations/usage.csv", "a", **span)
    assert exported.status_code == 200 and "Secret" not in exported.text
    movers = api.get("/api/aggregations/movers", "a", **span)
    assert movers.status_code == 200 and "Secret" not in movers.text
    # In Northwind's own view its bot keeps its name.
    assert (
        api.usage(scope="org", org_id=B, start="2026-09-01", end="2026-09-30")["rows"][0]["name"]
        == "Northwind Secret Bot"
    )
