"""Users, the previous period, ranking and movers, through the API over mongomock.

Expected figures are counted by plain Python over the rows stored (`ROWS` and `USERS`), never
by the code under test.
"""

import csv
import io
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any

import mongomock
import pytest
from bson import ObjectId
from fastapi.testclient import TestClient

from api import auth
from api.app import create_app
from etl import ledger
from etl.db import Databases
from etl.definition import USERS_VERSION, of_settings
from etl.settings import Settings
from tests.factories import BOT_1, BOT_2, make_row, store_rows

NOW = datetime(2026, 11, 25, 12, 0)
A, B, INTERNAL = "65e18830a0616000137bb854", "65e18830a0616000137bb855", "65e18830a0616000137bb8ff"
MEASURES = ("conversations", "messages", "handoffs")

# (org, agent, day, conversations, messages, handoffs, users)
DATA: list[tuple[str, str, str, int, int, int, list[str]]] = [
    (A, BOT_1, "2026-09-10", 2, 8, 0, ["u1", "u2"]),
    (A, BOT_1, "2026-09-25", 1, 5, 0, ["u2"]),
    (B, BOT_2, "2026-09-15", 4, 20, 1, ["u3"]),
    (A, BOT_1, "2026-10-05", 3, 30, 1, ["u1", "u4"]),
    (A, BOT_1, "2026-10-06", 1, 4, 0, ["u1"]),  # u1 on a second day
    (A, BOT_2, "2026-10-06", 2, 10, 0, ["u4", "u5"]),  # u4 with a second agent
    (B, BOT_2, "2026-10-20", 1, 3, 0, ["u5"]),  # u5 in a second organization
    (INTERNAL, BOT_1, "2026-10-07", 50, 500, 0, ["u9"]),
]
ROWS = [make_row(o, a, d, c, m, h, user_ids=u) for o, a, d, c, m, h, u in DATA]


def counted(first: str, last: str, **match: str) -> dict[str, Any]:
    """Measures and distinct users of DATA within first..last, by plain Python."""
    sums = dict.fromkeys(MEASURES, 0)
    users: set[str] = set()
    for org, agent, day, conv, msgs, hand, ids in DATA:
        if not first <= day <= last or org == INTERNAL:
            continue
        if match.get("org", org) != org or match.get("agent", agent) != agent:
            continue
        for name, value in zip(MEASURES, (conv, msgs, hand), strict=True):
            sums[name] += value
        users |= set(ids)
    return {**sums, "users": len(users)}


def mock_databases(**overrides: Any) -> Databases:
    values: dict[str, Any] = {
        "mongodb_uri": "mongodb://mongomock",
        "source_db": "src",
        "rollup_db": "usage",
        "cache_check_seconds": 0,
        "internal_org_ids": [INTERNAL],
    }
    settings = Settings(_env_file=None, **(values | overrides))
    client: Any = mongomock.MongoClient()
    return Databases(
        client=client,
        source=client["src"],
        rollup=client["usage"],
        uri="mongodb://mongomock",
        settings=settings,
        transactions=False,
    )


def serve_rows(dbs: Databases, rows: list[dict[str, Any]], version: int = USERS_VERSION) -> None:
    """Pin a definition of `version` and store the rows, as a run would."""
    ledger.adopt(dbs, replace(of_settings(dbs.settings), version=version))
    store_rows(dbs, rows)
    dbs.rollup.etl_runs.insert_one(
        {
            "kind": "nightly",
            "status": "ok",
            "started_at": NOW,
            "finished_at": NOW,
            "complete_through": "2026-11-23",
        }
    )


class Api:
    def __init__(self, dbs: Databases) -> None:
        self.dbs = dbs
        self.client = TestClient(create_app(dbs, clock=lambda: NOW))
        self.keys = {
            "staff": auth.create_key(dbs.rollup, "staff", None, NOW)[1],
            "a": auth.create_key(dbs.rollup, "GIC", A, NOW)[1],
        }

    def get(self, path: str, key: str | None = "staff", **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.keys[key]}"} if key else {}
        return self.client.get(path, params=params, headers=headers)

    def usage(self, key: str = "staff", **params: Any) -> dict[str, Any]:
        response = self.get("/api/aggregations/usage", key, **params)
        assert response.status_code == 200, response.text
        assert "users_hll" not in response.text
        body: dict[str, Any] = response.json()
        return body

    def movers(self, key: str = "staff", **params: Any) -> dict[str, Any]:
        response = self.get("/api/aggregations/movers", key, **params)
        assert response.status_code == 200, response.text
        assert "users_hll" not in response.text
        body: dict[str, Any] = response.json()
        return body


def make_api(rows: list[dict[str, Any]], version: int = USERS_VERSION) -> Iterator[Api]:
    dbs = mock_databases()
    serve_rows(dbs, rows, version)
    dbs.source.organizations.insert_many(
        [{"_id": ObjectId(A), "name": "GIC"}, {"_id": ObjectId(B), "name": "Northwind"}]
    )
    dbs.source.faq_kbs.insert_one({"_id": ObjectId(BOT_1), "name": "Support Bot"})
    api = Api(dbs)
    with api.client:
        yield api


@pytest.fixture
def api() -> Iterator[Api]:
    yield from make_api(ROWS)


def figures(cell: dict[str, Any]) -> dict[str, Any]:
    return {name: cell[name] for name in (*MEASURES, "users")}


def by_id(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in body["rows"]}


# --- users --------------------------------------------------------------------------------


def test_users_of_one_day_row_are_its_exact_count(api: Api) -> None:
    body = api.usage(scope="org", org_id=A, start="2026-10-05", end="2026-10-06")
    assert body["granularity"] == "day"
    rows = by_id(body)
    for agent in (BOT_1, BOT_2):
        for bucket in rows[agent]["buckets"]:
            day = bucket["key"]
            expected = counted(day, day, org=A, agent=agent)
            assert figures(bucket) == expected
            assert bucket["users_estimate"] is False
            assert bucket["users_low"] == bucket["users_high"] == expected["users"]


def test_a_person_is_one_user_of_the_week_the_month_and_the_total(api: Api) -> None:
    week = api.usage(scope="org", org_id=A, start="2026-10-05", end="2026-10-11")
    bot = by_id(week)[BOT_1]
    assert (
        bot["totals"]["users"] == counted("2026-10-05", "2026-10-11", org=A, agent=BOT_1)["users"]
    )
    assert bot["totals"]["users"] == 2  # u1 on two days, u4: two, not three
    assert week["total"]["totals"]["users"] == 3  # u4 with two agents is one user: u1, u4, u5
    for cell in (bot["totals"], week["total"]["totals"], week["total"]["buckets"][1]):
        assert cell["users_estimate"] is True
        assert cell["users_low"] <= cell["users"] <= cell["users_high"]

    month = api.usage(start="2026-10-01", end="2026-10-31", granularity="month")
    expected_total = counted("2026-10-01", "2026-10-31")
    assert figures(month["total"]["totals"]) == expected_total
    assert month["total"]["totals"]["users"] == 3  # u5 in two organizations: once
    for org in (A, B):
        expected = counted("2026-10-01", "2026-10-31", org=org)
        assert figures(by_id(month)[org]["totals"]) == expected
        assert figures(by_id(month)[org]["buckets"][0]) == expected
        assert by_id(month)[org]["buckets"][0]["users_estimate"] is True  # a derived level

    # Two months of the platform: u1 and u2 of September are counted once with October's.
    both = api.usage(start="2026-09-01", end="2026-10-31")
    assert figures(both["total"]["totals"]) == counted("2026-09-01", "2026-10-31")


def test_avg_depth_is_derived_and_null_without_conversations(api: Api) -> None:
    body = api.usage(scope="org", org_id=A, start="2026-10-05", end="2026-10-06")
    bot = by_id(body)[BOT_1]
    assert [cell["avg_depth"] for cell in bot["buckets"]] == [10.0, 4.0]
    assert bot["totals"]["avg_depth"] == round(34 / 4, 2)
    assert by_id(body)[BOT_2]["buckets"][0]["avg_depth"] is None


def test_a_rollup_from_before_users_shows_them_as_null() -> None:
    for api in make_api(ROWS, version=USERS_VERSION - 1):
        body = api.usage(start="2026-10-01", end="2026-10-31", compare="previous")
        for cell in [body["total"]["totals"], *body["total"]["buckets"]]:
            assert (cell["users"], cell["users_low"], cell["users_high"]) == (None, None, None)
        assert body["total"]["change"]["users"] == {"abs": None, "pct": None}
        assert body["total"]["totals"]["conversations"] == 7


def test_large_unions_are_estimates_with_bounds_around_the_true_count() -> None:
    people = [f"person-{n}" for n in range(3000)]
    rows = [
        make_row(A, BOT_1, "2026-10-05", 2000, user_ids=people[:2000]),
        make_row(A, BOT_1, "2026-10-06", 1500, user_ids=people[1500:]),
    ]
    for api in make_api(rows):
        body = api.usage(scope="org", org_id=A, start="2026-10-05", end="2026-10-06")
        days = by_id(body)[BOT_1]["buckets"]
        assert [(d["users"], d["users_estimate"]) for d in days] == [(2000, False), (1500, False)]
        total = body["total"]["totals"]
        assert total["users_estimate"] is True
        assert total["users_low"] < total["users"] < total["users_high"]
        assert total["users_low"] <= 3000 <= total["users_high"]
        assert abs(total["users"] - 3000) <= 0.03 * 3000


# --- the previous period ------------------------------------------------------------------


def test_whole_months_compare_with_the_months_just_before(api: Api) -> None:
    body = api.usage(start="2026-10-01", end="2026-10-31", granularity="month", compare="previous")
    assert body["previous"] == {
        "start": "2026-09-01",
        "end": "2026-09-30",
        "buckets": [
            {
                "key": "2026-09",
                "label": "Sep 2026",
                "start": "2026-09-01",
                "end": "2026-09-30",
                "partial": False,
            }
        ],
    }
    for row in [*body["rows"], body["total"]]:
        org = {"org": row["id"]} if row["id"] else {}
        now = counted("2026-10-01", "2026-10-31", **org)
        before = counted("2026-09-01", "2026-09-30", **org)
        assert figures(row["totals"]) == now
        assert figures(row["previous"]["totals"]) == before
        assert figures(row["previous"]["buckets"][0]) == before
        for metric in (*MEASURES, "users"):
            diff = now[metric] - before[metric]
            pct = round(diff / before[metric] * 100, 1) if before[metric] else None
            assert row["change"][metric] == {"abs": diff, "pct": pct}, (row["id"], metric)
    # By hand: GIC 6 conversations against 3 (+100 %), Northwind 1 against 4 (-75 %).
    assert by_id(body)[A]["change"]["conversations"] == {"abs": 3, "pct": 100.0}
    assert by_id(body)[B]["change"]["conversations"] == {"abs": -3, "pct": -75.0}
    assert body["total"]["change"]["conversations"] == {"abs": 0, "pct": 0.0}
    # Averages: 44/6 against 13/3, from the exact averages.
    assert by_id(body)[A]["change"]["avg_depth"] == {
        "abs": round(44 / 6 - 13 / 3, 2),
        "pct": round((44 / 6 - 13 / 3) / (13 / 3) * 100, 1),
    }


def test_change_in_percent_is_null_when_the_previous_figure_is_zero(api: Api) -> None:
    body = api.usage(start="2026-09-01", end="2026-10-31", compare="previous")
    assert (body["previous"]["start"], body["previous"]["end"]) == ("2026-07-01", "2026-08-31")
    assert [b["label"] for b in body["previous"]["buckets"]] == ["Jul 2026", "Aug 2026"]
    gic = by_id(body)[A]
    assert gic["change"]["conversations"] == {"abs": 9, "pct": None}
    assert gic["change"]["avg_depth"] == {"abs": None, "pct": None}  # no previous average
    assert gic["previous"]["totals"]["avg_depth"] is None


def test_other_ranges_compare_with_as_many_days_just_before_bucket_by_bucket(api: Api) -> None:
    body = api.usage(
        scope="org", org_id=A, start="2026-10-01", end="2026-10-10", compare="previous"
    )
    assert body["granularity"] == "week"
    assert [(b["start"], b["end"], b["partial"]) for b in body["buckets"]] == [
        ("2026-10-01", "2026-10-04", True),
        ("2026-10-05", "2026-10-10", True),
    ]
    assert [
        (b["label"], b["start"], b["end"], b["partial"]) for b in body["previous"]["buckets"]
    ] == [
        ("Sep 21 – 24", "2026-09-21", "2026-09-24", True),
        ("Sep 25 – 30", "2026-09-25", "2026-09-30", True),
    ]
    bot = by_id(body)[BOT_1]
    assert [figures(c) for c in bot["previous"]["buckets"]] == [
        counted("2026-09-21", "2026-09-24", org=A, agent=BOT_1),
        counted("2026-09-25", "2026-09-30", org=A, agent=BOT_1),
    ]
    assert bot["previous"]["buckets"][1]["conversations"] == 1  # the row of Sep 25
    # Whole weeks shifted by whole weeks stay calendar weeks.
    weeks = api.usage(
        scope="org", org_id=A, start="2026-10-05", end="2026-10-18", compare="previous"
    )
    assert [(b["key"], b["label"], b["partial"]) for b in weeks["previous"]["buckets"]] == [
        ("W2026-09-21", "Sep 21 – 27", False),
        ("W2026-09-28", "Sep 28 – Oct 4", False),
    ]
    assert figures(weeks["total"]["previous"]["totals"]) == counted(
        "2026-09-21", "2026-10-04", org=A
    )


def test_a_clipped_month_range_compares_with_shifted_days_in_month_buckets(api: Api) -> None:
    body = api.usage(start="2026-08-20", end="2026-10-05", granularity="month", compare="previous")
    assert [
        (b["label"], b["start"], b["end"], b["partial"]) for b in body["previous"]["buckets"]
    ] == [
        ("Jul 4 – 15", "2026-07-04", "2026-07-15", True),
        ("Jul 16 – Aug 14", "2026-07-16", "2026-08-14", True),
        ("Aug 15 – 19", "2026-08-15", "2026-08-19", True),
    ]
    assert figures(body["total"]["totals"]) == counted("2026-08-20", "2026-10-05")


def test_rows_active_only_in_the_previous_period_are_rows_of_the_comparison(api: Api) -> None:
    body = api.usage(start="2026-09-20", end="2026-09-30", granularity="day", compare="previous")
    # Northwind's only September row is Sep 15, in the previous period (Sep 9 – 19).
    northwind = by_id(body)[B]
    assert northwind["totals"]["conversations"] == 0
    assert northwind["previous"]["totals"]["conversations"] == 4
    assert northwind["name"] == "Northwind"
    assert body["total"]["previous"]["totals"]["conversations"] == 4 + 2  # and GIC's Sep 10


def test_a_previous_period_before_the_supported_dates_is_refused(api: Api) -> None:
    response = api.get(
        "/api/aggregations/usage", start="0002-01-01", end="0002-03-01", compare="previous"
    )
    assert response.status_code == 422
    assert response.json()["parameter"] == "compare"


# --- ranking ------------------------------------------------------------------------------

ORGS = [f"65e18830a0616000137c000{n}" for n in range(1, 6)]
# org: (September conversations, October conversations, messages, handoffs, October users)
RANKED = {
    ORGS[0]: (2, 5, 10, 1, ["a", "b"]),
    ORGS[1]: (5, 5, 20, 0, ["c"]),
    ORGS[2]: (1, 2, 10, 2, ["d", "e", "f"]),
    ORGS[3]: (4, 0, 0, 0, []),
    ORGS[4]: (0, 3, 6, 1, ["g", "h"]),
}
NAMES = {ORGS[0]: "delta", ORGS[1]: "Alpha", ORGS[2]: "charlie", ORGS[3]: "Bravo", ORGS[4]: "echo"}


@pytest.fixture
def ranked() -> Iterator[Api]:
    rows = []
    for org, (before, now, messages, handoffs, users) in RANKED.items():
        if before:
            rows.append(make_row(org, BOT_1, "2026-09-12", before, 2 * before, 0, ["old-" + org]))
        if now:
            rows.append(make_row(org, BOT_1, "2026-10-12", now, messages, handoffs, users))
    dbs = mock_databases()
    serve_rows(dbs, rows)
    dbs.source.organizations.insert_many(
        [{"_id": ObjectId(org), "name": name} for org, name in NAMES.items()]
    )
    api = Api(dbs)
    with api.client:
        yield api


def value_of(org: str, key: str) -> Any:
    before, now, messages, handoffs, users = RANKED[org]
    return {
        "conversations": now,
        "messages": messages,
        "handoffs": handoffs,
        "users": len(users),
        "avg_depth": messages / now if now else None,
        "name": NAMES[org].casefold(),
        "change": now - before,
    }[key]


def expected_order(key: str, order: str) -> list[str]:
    present = [org for org in sorted(RANKED) if value_of(org, key) is not None]
    missing = [org for org in sorted(RANKED) if value_of(org, key) is None]
    if order == "desc":
        present.sort(key=lambda org: value_of(org, key), reverse=True)  # stable: ties by id
    else:
        present.sort(key=lambda org: value_of(org, key))
    return present + missing


@pytest.mark.parametrize("order", ["desc", "asc"])
@pytest.mark.parametrize(
    "key", ["conversations", "messages", "handoffs", "users", "avg_depth", "name", "change"]
)
def test_rows_are_ranked_by_any_key_in_either_order_ties_by_id(
    ranked: Api, key: str, order: str
) -> None:
    span = {"start": "2026-10-01", "end": "2026-10-31", "compare": "previous"}
    body = ranked.usage(sort=key, order=order, **span)
    assert [row["id"] for row in body["rows"]] == expected_order(key, order)
    assert (body["sort"], body["order"]) == (key, order)


def test_ties_are_broken_by_id_and_name_defaults_to_ascending(ranked: Api) -> None:
    span = {"start": "2026-10-01", "end": "2026-10-31"}
    body = ranked.usage(**span)
    # ORGS[0] and ORGS[1] both had 5 conversations: the smaller id first, whatever the names.
    assert [row["id"] for row in body["rows"]][:2] == [ORGS[0], ORGS[1]]
    assert [row["name"] for row in ranked.usage(sort="name", **span)["rows"]] == [
        "Alpha",
        "charlie",
        "delta",
        "echo",
    ]


def test_sort_by_change_ranks_the_chosen_metric(ranked: Api) -> None:
    body = ranked.usage(
        start="2026-10-01", end="2026-10-31", compare="previous", sort="change", metric="users"
    )
    changes = [row["change"]["users"]["abs"] for row in body["rows"]]
    assert changes == sorted(changes, reverse=True)
    assert body["rows"][0]["id"] == ORGS[2]  # 3 users against 1


def test_sort_by_change_needs_the_comparison(ranked: Api) -> None:
    response = ranked.get("/api/aggregations/usage", sort="change")
    assert response.status_code == 422
    assert response.json()["parameter"] == "sort"


def test_pages_of_a_ranking_add_up_and_other_unites_the_users_of_the_rest(ranked: Api) -> None:
    span = {
        "start": "2026-10-01",
        "end": "2026-10-31",
        "granularity": "month",
        "compare": "previous",
        "sort": "users",
    }
    full = ranked.usage(**span)
    page = ranked.usage(limit=2, **span)
    assert [row["id"] for row in page["rows"]] == [row["id"] for row in full["rows"]][:2]
    assert [row["id"] for row in page["rows"]] == [ORGS[2], ORGS[0]]  # 3 users, then 2 (id)
    rest = [org for org in RANKED if org not in {row["id"] for row in page["rows"]}]
    for metric in MEASURES:
        on_page = sum(row["totals"][metric] for row in page["rows"])
        assert on_page + page["other"]["totals"][metric] == page["total"]["totals"][metric]
        before = sum(row["previous"]["totals"][metric] for row in page["rows"])
        other_before = page["other"]["previous"]["totals"][metric]
        assert before + other_before == page["total"]["previous"]["totals"][metric]
    assert page["other"]["previous"]["totals"]["conversations"] == sum(
        RANKED[org][0] for org in rest
    )
    assert page["other"]["totals"]["users"] == len({u for org in rest for u in RANKED[org][4]})
    assert page["other"]["totals"]["users_estimate"] is True
    assert page["total"]["totals"]["users"] == len({u for org in RANKED for u in RANKED[org][4]})


def test_names_are_read_only_for_the_page(ranked: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[list[str]] = []
    import api.usage as usage

    real = usage.fetch_names

    def counting(db: Any, collection: str, ids: list[str]) -> dict[str, str]:
        asked.append(list(ids))
        return real(db, collection, ids)

    monkeypatch.setattr(usage, "fetch_names", counting)
    span = {"start": "2026-10-01", "end": "2026-10-31"}
    body = ranked.usage(limit=2, **span)
    assert asked == [[row["id"] for row in body["rows"]]]
    asked.clear()
    ranked.usage(limit=2, q="a", **span)  # searching names needs every active one, once
    assert [sorted(ids) for ids in asked] == [[ORGS[0], ORGS[1], ORGS[2], ORGS[4]]]


# --- CSV ----------------------------------------------------------------------------------


def test_csv_with_compare_adds_previous_columns_and_the_change(api: Api) -> None:
    response = api.get(
        "/api/aggregations/usage.csv",
        start="2026-10-01",
        end="2026-10-31",
        granularity="month",
        compare="previous",
        metric="users",
    )
    assert response.status_code == 200
    assert "users_hll" not in response.text
    lines = list(csv.reader(io.StringIO(response.text, newline="")))
    assert lines == [
        [
            "id",
            "name",
            "Oct 2026",
            "total",
            "previous Sep 2026",
            "previous_total",
            "change",
            "change_pct",
        ],
        [A, "GIC", "3", "3", "2", "2", "1", "50.0"],
        [B, "Northwind", "1", "1", "1", "1", "0", "0.0"],
        ["", "Total", "3", "3", "3", "3", "0", "0.0"],
    ]


def test_csv_without_compare_keeps_its_columns(api: Api) -> None:
    response = api.get(
        "/api/aggregations/usage.csv", start="2026-10-01", end="2026-10-31", metric="avg_depth"
    )
    lines = list(csv.reader(io.StringIO(response.text, newline="")))
    assert lines[0] == [
        "id",
        "name",
        "Oct 1 – 4",
        "Oct 5 – 11",
        "Oct 12 – 18",
        "Oct 19 – 25",
        "Oct 26 – 31",
        "total",
    ]
    assert lines[1] == [A, "GIC", "", "7.33", "", "", "", "7.33"]


# --- movers -------------------------------------------------------------------------------


def test_movers_rank_growth_and_decline_ties_by_id(ranked: Api) -> None:
    body = ranked.movers(start="2026-10-01", end="2026-10-31", granularity="month")
    assert (body["previous_start"], body["previous_end"]) == ("2026-09-01", "2026-09-30")
    # By week (October's automatic granularity), usage's previous period: 31 days before.
    weekly = ranked.movers(start="2026-10-01", end="2026-10-31")
    usage = ranked.usage(start="2026-10-01", end="2026-10-31", compare="previous")
    assert (weekly["previous_start"], weekly["previous_end"]) == ("2026-08-31", "2026-09-30")
    assert (usage["previous"]["start"], usage["previous"]["end"]) == ("2026-08-31", "2026-09-30")
    changes = {org: RANKED[org][1] - RANKED[org][0] for org in RANKED}
    up = sorted((o for o in changes if changes[o] > 0), key=lambda o: (-changes[o], o))
    down = sorted((o for o in changes if changes[o] < 0), key=lambda o: (changes[o], o))
    assert [m["id"] for m in body["up"]] == up == [ORGS[0], ORGS[4], ORGS[2]]
    assert [m["id"] for m in body["down"]] == down == [ORGS[3]]
    first = body["up"][0]
    assert first == {
        "id": ORGS[0],
        "name": "delta",
        "current": 5,
        "previous": 2,
        "change": 3,
        "pct": 150.0,
        "estimate": False,
    }
    assert body["up"][1]["pct"] is None  # echo had no conversations in September
    one = ranked.movers(start="2026-10-01", end="2026-10-31", granularity="month", n=1)
    assert [m["id"] for m in one["up"]] == [ORGS[0]]
    users = ranked.movers(start="2026-10-01", end="2026-10-31", granularity="month", metric="users")
    assert users["metric"] == "users"
    assert [(m["id"], m["change"], m["estimate"]) for m in users["up"]] == [
        (ORGS[2], 2, True),
        (ORGS[4], 2, True),
        (ORGS[0], 1, True),
    ]


def test_a_usage_query_is_never_answered_with_a_movers_body(api: Api) -> None:
    """Both endpoints share the response cache: the path keeps their bodies apart."""
    movers = api.get("/api/aggregations/movers", scope="platform")
    assert movers.status_code == 200
    headers = {"Authorization": f"Bearer {api.keys['staff']}"}
    # A raw query string that spells the movers call's, `?` and all.
    lookalike = api.client.get("/api/aggregations/usage?movers?scope=platform", headers=headers)
    assert lookalike.status_code == 200
    assert "rows" in lookalike.json() and "up" not in lookalike.json()


def test_movers_follow_the_access_rules_of_usage(api: Api) -> None:
    mine = api.movers("a", start="2026-10-01", end="2026-10-31")
    assert (mine["scope"], mine["org_id"]) == ("org", A)
    assert {m["id"] for m in mine["up"] + mine["down"]} <= {BOT_1, BOT_2}
    assert [(m["id"], m["name"], m["change"]) for m in mine["up"]] == [
        (BOT_2, BOT_2, 2),
        (BOT_1, "Support Bot", 1),
    ]
    staff = api.movers(start="2026-10-01", end="2026-10-31")
    assert [m["id"] for m in staff["up"]] == [A] and [m["id"] for m in staff["down"]] == [B]
    assert INTERNAL not in str(staff)
    for params, status, parameter in [
        ({"scope": "org", "org_id": B}, 403, None),
        ({"include_internal": "true"}, 403, None),
        ({"n": 0}, 422, "n"),
        ({"n": 51}, 422, "n"),
        ({"metric": "depth"}, 422, "metric"),
        ({"scope": "agent"}, 422, "scope"),
        ({"scope": "org"}, 422, "org_id"),
        ({"start": "2026-10-31", "end": "2026-10-01"}, 422, "start"),
        ({"start": "0002-01-01", "end": "0002-01-31"}, 422, "start"),
    ]:
        key = "a" if status == 403 else "staff"
        response = api.get("/api/aggregations/movers", key, **params)
        assert response.status_code == status, params
        if parameter:
            assert response.json()["parameter"] == parameter
    assert api.get("/api/aggregations/movers", None).status_code == 401


def test_no_body_carries_a_sketch(api: Api) -> None:
    span = {"start": "2026-09-01", "end": "2026-10-31", "compare": "previous"}
    for path in (
        "/api/aggregations/usage",
        "/api/aggregations/usage.csv",
        "/api/aggregations/movers",
    ):
        for scope in ({}, {"scope": "org", "org_id": A}):
            response = api.get(path, **span, **scope)
            assert response.status_code == 200
            assert "hll" not in response.text
            for row in ROWS:
                if "users_hll" in row:
                    assert row["users_hll"] not in response.content


def test_compare_and_users_on_the_real_server(make_dbs: Any) -> None:
    dbs = make_dbs(internal_org_ids=[INTERNAL])
    serve_rows(dbs, ROWS)
    dbs.source.organizations.insert_one({"_id": ObjectId(A), "name": "GIC"})
    api = Api(dbs)
    with api.client:
        body = api.usage(
            start="2026-09-01", end="2026-10-31", granularity="month", compare="previous"
        )
        assert figures(body["total"]["totals"]) == counted("2026-09-01", "2026-10-31")
        gic = by_id(body)[A]
        assert [figures(cell) for cell in gic["buckets"]] == [
            counted("2026-09-01", "2026-09-30", org=A),
            counted("2026-10-01", "2026-10-31", org=A),
        ]
        assert gic["change"]["conversations"] == {"abs": 9, "pct": None}
        days = api.usage(
            scope="org", org_id=A, start="2026-10-05", end="2026-10-11", compare="previous"
        )
        bot = by_id(days)[BOT_1]
        assert [(c["users"], c["users_estimate"]) for c in bot["buckets"][:2]] == [
            (2, False),
            (1, False),
        ]
        assert bot["totals"]["users"] == 2 and bot["totals"]["users_estimate"] is True
        assert figures(bot["previous"]["totals"]) == counted(
            "2026-09-28", "2026-10-04", org=A, agent=BOT_1
        )
