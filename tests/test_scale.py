"""Paths taken only at scale: many organizations on the days a run replaces, and names read
for every organization. Each is forced here by lowering the threshold that selects it."""

import contextlib
import random
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from bson import Binary, ObjectId

from api import usage
from etl import ledger, platform, rollup, runner, verify
from etl.db import USAGE_PLATFORM, Databases, Doc, connect
from tests.factories import BOT_1, BOT_2, make_request, set_platform_figure, staff_query

T0 = datetime(2026, 10, 12, 2, 0)
AFTER = datetime(2026, 11, 1, 2, 0)  # the day after the last of three months of data
ORGS = [ObjectId(f"65e18830a0616000137bb9{n:02x}") for n in range(4)]


def backfill(dbs: Databases, first: str, last: str, now: datetime) -> None:
    runner.run_backfill(dbs, date.fromisoformat(first), date.fromisoformat(last), now, lambda: now)


def org_months(dbs: Databases) -> dict[tuple[str, str], int]:
    return {
        (row["org_id"], row["month"]): row["conversations"]
        for row in dbs.level("usage_org_monthly").find()
    }


def september_by_level(dbs: Databases) -> list[dict[str, int]]:
    """Conversations of each organization in September 2026, by the organization level, the
    (organization, agent) level summed, and the platform level."""
    by_agent: dict[str, int] = {}
    for (org, _), n in agent_months(dbs).items():
        by_agent[org] = by_agent.get(org, 0) + n
    by_org = {org: n for (org, month), n in org_months(dbs).items() if month == "2026-09"}
    platform = {
        org: figures["conversations"]
        for (key, org), figures in platform_figures(dbs).items()
        if key == "2026-09"
    }
    return [by_org, by_agent, platform]


def agent_months(dbs: Databases) -> dict[tuple[str, str], int]:
    return {
        (row["org_id"], row["agent_id"]): row["conversations"]
        for row in dbs.level("usage_monthly").find({"month": "2026-09"})
    }


@pytest.mark.parametrize("long_in", [1, 200])
def test_a_recompute_on_days_of_many_organizations_rederives_their_months(
    dbs: Databases, monkeypatch: pytest.MonkeyPatch, long_in: int
) -> None:
    """With more organizations on the replaced days than a query names, the month is
    re-derived whole; either way every level equals the documents' counts."""
    monkeypatch.setattr(rollup, "LONG_IN", long_in)
    day = datetime(2026, 9, 5, 9)
    docs = [
        make_request(createdAt=day, id_organization=ORGS[0]),
        make_request(createdAt=day + timedelta(days=1), id_organization=ORGS[1]),
        make_request(createdAt=day + timedelta(days=1), id_organization=ORGS[2]),
        make_request(createdAt=day + timedelta(days=9), id_organization=ORGS[2]),
        make_request(createdAt=day + timedelta(days=9), id_organization=ORGS[3]),
    ]
    dbs.source.requests.insert_many(docs)
    backfill(dbs, "2026-09-01", "2026-09-30", T0)
    assert org_months(dbs) == {
        (str(org), "2026-09"): n for org, n in zip(ORGS, [1, 1, 2, 1], strict=True)
    }

    # ORGS[0] leaves the month (its only conversation turns test mode), ORGS[1] gains one,
    # ORGS[2] and ORGS[3] keep what they had on a day not recomputed.
    dbs.source.requests.update_one({"_id": docs[0]["_id"]}, {"$set": {"isTestMode": True}})
    dbs.source.requests.insert_one(make_request(createdAt=day, id_organization=ORGS[1]))
    backfill(dbs, "2026-09-05", "2026-09-06", T0 + timedelta(hours=1))
    expected = {str(ORGS[1]): 2, str(ORGS[2]): 2, str(ORGS[3]): 1}
    assert org_months(dbs) == {(org, "2026-09"): n for org, n in expected.items()}
    assert {org: n for (org, _), n in agent_months(dbs).items()} == expected
    assert verify.find_month_drift(dbs, date(2026, 9, 1), date(2026, 9, 30)) == []


@pytest.mark.parametrize("long_in", [1, 200])
def test_names_of_many_ids_are_the_names_of_few(
    dbs: Databases, monkeypatch: pytest.MonkeyPatch, long_in: int
) -> None:
    """Past the longest `$in`, names are read from the whole collection: the same names,
    matched the same way (an ObjectId in either letter case, a string id as it is), and an
    agent of another organization still gets none."""
    monkeypatch.setattr(usage, "LONG_IN", long_in)
    owner, stranger = str(ORGS[0]), str(ORGS[1])
    dbs.source.bots.insert_many(
        [
            {"_id": ORGS[2], "name": " Sales bot ", "id_organization": owner},
            {"_id": "helper", "name": "Helper", "id_organization": owner},
            {"_id": "Other-Case", "name": "Not matched by case"},
            {"_id": ORGS[3], "name": "Someone else's", "id_organization": stranger},
            {"_id": "unnamed", "name": "  "},
            {"_id": "not-asked", "name": "Never asked for"},
        ]
    )
    ids = [str(ORGS[2]).upper(), "helper", "other-case", str(ORGS[3]), "unnamed", "missing"]
    names = usage.fetch_names(dbs.source, "bots", ids, owner)
    assert names == {str(ORGS[2]): "Sales bot", "helper": "Helper"}


# --- the platform level ---------------------------------------------------------------------


def platform_figures(dbs: Databases) -> dict[tuple[str, str], dict[str, int]]:
    """(period key, organization) -> conversations and messages, read from the platform
    level's documents by hand."""
    figures = {}
    for doc in map(platform.unpack, dbs.level("usage_platform").find()):
        for n, org in enumerate(doc["orgs"]):
            figures[(doc["key"], org)] = {
                "conversations": doc["conversations"][n],
                "messages": doc["messages"][n],
            }
    return figures


@pytest.mark.parametrize("long_in", [1, 200])
def test_the_platform_level_follows_the_documents_through_a_sequence(
    dbs: Databases, monkeypatch: pytest.MonkeyPatch, long_in: int
) -> None:
    """Chunks of two organizations; a backfill, then a recompute of one day that moves one
    organization out and another in: its organizations' entries replaced, or the whole
    month re-derived."""
    monkeypatch.setattr("etl.platform.CHUNK", 2)
    monkeypatch.setattr(rollup, "LONG_IN", long_in)
    day = datetime(2026, 9, 5, 9)
    docs = [
        make_request(createdAt=day, id_organization=ORGS[0], depth=3),
        make_request(createdAt=day, id_organization=ORGS[1], depth=4),
        make_request(createdAt=day, id_organization=ORGS[2], depth=5),
        make_request(createdAt=day + timedelta(days=1), id_organization=ORGS[2], depth=6),
    ]
    dbs.source.requests.insert_many(docs)
    backfill(dbs, "2026-09-01", "2026-09-30", T0)
    c = "conversations"
    assert platform_figures(dbs) == {
        ("2026-09-05", str(ORGS[0])): {c: 1, "messages": 3},
        ("2026-09-05", str(ORGS[1])): {c: 1, "messages": 4},
        ("2026-09-05", str(ORGS[2])): {c: 1, "messages": 5},
        ("2026-09-06", str(ORGS[2])): {c: 1, "messages": 6},
        ("2026-09", str(ORGS[0])): {c: 1, "messages": 3},
        ("2026-09", str(ORGS[1])): {c: 1, "messages": 4},
        ("2026-09", str(ORGS[2])): {c: 2, "messages": 11},
    }
    # Two chunks for the fifth and the month, one for the sixth.
    assert dbs.level("usage_platform").count_documents({}) == 5

    dbs.source.requests.update_one({"_id": docs[1]["_id"]}, {"$set": {"isTestMode": True}})
    dbs.source.requests.insert_one(make_request(createdAt=day, id_organization=ORGS[3], depth=7))
    backfill(dbs, "2026-09-05", "2026-09-05", T0 + timedelta(hours=1))
    assert platform_figures(dbs) == {
        ("2026-09-05", str(ORGS[0])): {c: 1, "messages": 3},
        ("2026-09-05", str(ORGS[2])): {c: 1, "messages": 5},
        ("2026-09-05", str(ORGS[3])): {c: 1, "messages": 7},
        ("2026-09-06", str(ORGS[2])): {c: 1, "messages": 6},
        ("2026-09", str(ORGS[0])): {c: 1, "messages": 3},
        ("2026-09", str(ORGS[2])): {c: 2, "messages": 11},
        ("2026-09", str(ORGS[3])): {c: 1, "messages": 7},
    }
    assert verify.find_month_drift(dbs, date(2026, 9, 1), date(2026, 9, 30)) == []


def test_verify_finds_a_drifted_platform_level_and_repair_rebuilds_it(dbs: Databases) -> None:
    day = datetime(2026, 9, 5, 9)
    dbs.source.requests.insert_many(
        [make_request(createdAt=day, id_organization=org) for org in ORGS[:3]]
    )
    backfill(dbs, "2026-09-01", "2026-09-30", T0)
    first, last = date(2026, 9, 1), date(2026, 9, 30)
    expected = platform_figures(dbs)
    assert len(expected) == 6 and verify.find_month_drift(dbs, first, last) == []
    stored = dbs.level("usage_platform")
    set_platform_figure(stored, {"key": "2026-09-05"}, "conversations", 1, 9)
    assert verify.find_month_drift(dbs, first, last) == ["2026-09"]
    runner.verify_range(dbs, first, last, T0, lambda: T0, repair=True)
    assert platform_figures(dbs) == expected
    stored.delete_many({"period": "month"})
    assert verify.find_month_drift(dbs, first, last) == ["2026-09"]
    runner.verify_range(dbs, first, last, T0, lambda: T0, repair=True)
    assert platform_figures(dbs) == expected
    assert verify.find_month_drift(dbs, first, last) == []


# --- platform views from the platform level ---------------------------------------------------

MANY = [ObjectId(f"65e18830a0616000137bba{n:02x}") for n in range(9)]


@pytest.fixture
def platform_dbs(make_dbs: Any) -> Databases:
    """Nine organizations (the first internal) over three months, with ties in their
    conversations and users who come back; built through the real runs."""
    dbs: Databases = make_dbs(internal_org_ids=[str(MANY[0])])
    rng = random.Random(5)
    docs = []
    for n, org in enumerate(MANY):
        for _ in range(2 + n % 4):  # 2..5 conversations: ties between organizations
            created = datetime(2026, 8, 1, 9) + timedelta(days=rng.randrange(92))
            lead = f"{org}-{rng.randrange(3)}"
            docs.append(
                make_request(createdAt=created, id_organization=org, lead=lead, depth=3 + n % 4)
            )
    dbs.source.requests.insert_many(docs)
    names = ["Alpha", "Beta", "Alphabet", "Gamma", "ALPINE"]
    dbs.source.organizations.insert_many(
        [{"_id": org, "name": name} for org, name in zip(MANY[1:], names, strict=False)]
    )
    backfill(dbs, "2026-07-01", "2026-10-31", AFTER)
    return dbs


QUERIES = [
    {},
    {"limit": 3},
    {"limit": 3, "offset": 3},
    {"limit": 4, "order": "asc"},
    {"limit": 2, "sort": "messages"},
    {"limit": 20},
    {"limit": 3, "include_internal": True},
    {"limit": 3, "granularity": "week"},
    {"limit": 3, "granularity": "day", "start": "2026-09-20", "end": "2026-10-05"},
    {"limit": 3, "start": "2026-08-15", "end": "2026-10-20"},
    {"limit": 3, "compare": "previous", "start": "2026-09-01", "end": "2026-10-31"},
    {"limit": 2, "compare": "previous", "start": "2026-09-10", "end": "2026-10-03"},
    {"limit": 3, "sort": "users"},
    {"limit": 3, "sort": "avg_depth"},
    {"limit": 2, "offset": 1, "sort": "avg_depth", "order": "asc"},
    {"limit": 3, "sort": "avg_depth", "compare": "previous", "start": "2026-10-01"},
    {"limit": 2, "offset": 2, "sort": "avg_depth", "compare": "previous", "start": "2026-10-17"},
    {"limit": 9, "sort": "avg_depth", "order": "asc", "compare": "previous", "start": "2026-10-17"},
    {"limit": 3, "sort": "name", "order": "asc"},
    {"limit": 2, "offset": 2, "sort": "name", "order": "desc", "compare": "previous"},
    {"limit": 2, "sort": "name", "q": "alp"},
    {"limit": 3, "q": "65e1"},
    {"limit": 2, "q": "alp"},
    {"limit": 2, "offset": 1, "q": "ALP", "compare": "previous"},
    {"limit": 5, "q": "bba8"},
    {"limit": 5, "q": "nothing like it"},
    {"compare": "previous", "start": "2026-10-01", "end": "2026-10-31"},
]


@pytest.mark.parametrize("params", QUERIES, ids=[str(n) for n in range(len(QUERIES))])
def test_a_platform_view_from_the_platform_level_is_the_view_from_the_organization_rows(
    platform_dbs: Databases, params: dict[str, Any]
) -> None:
    """Every figure of the page, Other and the total, the order and total_rows, as the view
    read from the organization level gives them."""
    from api.usage import UsageService

    dbs = platform_dbs
    service = UsageService(dbs, 0)
    served = service.served()
    assert served.platform
    query = resolve(dbs, params)
    fast = service.report(query, served)
    slow = service.report(query, replace(served, platform=False))
    assert fast == slow
    assert len(fast["rows"]) == max(0, min(query.limit or 99, fast["total_rows"] - query.offset))
    if query.q == "alp":
        assert len(fast["rows"]) == 2
        assert {row["name"] for row in fast["rows"]} <= {"Alpha", "Alphabet", "ALPINE"}
        assert fast["total_rows"] == 3


def resolve(dbs: Databases, params: dict[str, Any]) -> Any:
    from api.auth import Principal
    from api.usage import resolve_query

    values = {"start": "2026-08-01", "end": "2026-10-31", "granularity": "month", **params}
    return resolve_query(
        scope="platform",
        org_id=None,
        agent_id=None,
        principal=Principal("k", "staff", None),
        today=date(2026, 11, 1),
        settings=dbs.settings,
        **{"include_internal": False, **values},
    )


def test_the_platform_page_adds_up_to_counts_from_the_documents(platform_dbs: Databases) -> None:
    """Page rows and Other sum to the total, which is the documents' count (internal left
    out); pages of two cover every organization exactly once."""
    from api.usage import UsageService

    dbs = platform_dbs
    billable = [
        doc
        for doc in dbs.source.requests.find()
        if doc["id_organization"] != MANY[0] and "2026-08-01" <= doc["createdAt"].isoformat()[:10]
    ]
    service = UsageService(dbs, 0)
    seen: list[str] = []
    for offset in range(0, 10, 2):
        body = service.report(resolve(dbs, {"limit": 2, "offset": offset}))
        page = sum(row["totals"]["conversations"] for row in body["rows"])
        other = body["other"]["totals"]["conversations"] if body["other"] else 0
        assert page + other == body["total"]["totals"]["conversations"] == len(billable)
        assert body["total_rows"] == 8
        seen += [row["id"] for row in body["rows"]]
    assert sorted(seen) == sorted(str(org) for org in MANY[1:])
    users = {doc["lead"] for doc in billable}
    assert body["total"]["totals"]["users"] == len(users)


def test_totals_of_many_users_do_not_depend_on_the_page(make_dbs: Any) -> None:
    """Sketches past their exact range: the total's and Other's users are the same figures
    on every page, and the same as the view from the organization rows."""
    from api.usage import UsageService

    dbs: Databases = make_dbs()
    orgs = [ObjectId(f"65e18830a0616000137bbb{n:02x}") for n in range(30)]
    docs = []
    for n, org in enumerate(orgs):
        for lead in range(60 + n):
            created = datetime(2026, 9, 1 + lead % 28, 9)
            docs.append(make_request(createdAt=created, id_organization=org, lead=f"{org}-{lead}"))
    dbs.source.requests.insert_many(docs)
    backfill(dbs, "2026-09-01", "2026-09-30", T0)
    service = UsageService(dbs, 0)
    served = service.served()
    people = len(docs)
    totals, others = set(), set()
    for offset in (0, 2, 10):
        query = resolve(
            dbs, {"start": "2026-09-01", "end": "2026-09-30", "limit": 2, "offset": offset}
        )
        fast = service.report(query, served)
        assert fast == service.report(query, replace(served, platform=False))
        totals.add(fast["total"]["totals"]["users"])
        others.add((offset, fast["other"]["totals"]["users"]))
        assert fast["total"]["totals"]["users_estimate"] is True
    (total,) = totals
    assert abs(total - people) <= 0.033 * people
    assert len(others) == 3


def test_platform_documents_are_stored_packed_and_those_stored_as_lists_read_the_same(
    platform_dbs: Databases,
) -> None:
    """Every column of a stored document is one binary value; documents an earlier version
    stored with a list per column give the same views and verify clean, and the next run over
    their period stores them packed."""
    from api.usage import UsageService

    dbs = platform_dbs
    stored = dbs.level("usage_platform")
    raw = list(stored.find())
    assert raw and all(doc[platform.PACKED] == 1 for doc in raw)
    for doc in raw:
        orgs = platform.unpack(doc)["orgs"]
        assert bytes(doc["orgs"]) == b"".join(ObjectId(org).binary for org in orgs)
        assert len(doc["conversations"]) == 8 * len(orgs)
    queries = [resolve(dbs, params) for params in QUERIES]
    service = UsageService(dbs, 0)
    before = [service.report(query, service.served()) for query in queries]

    for doc in raw:  # as an earlier version stored them
        stored.replace_one({"_id": doc["_id"]}, platform.unpack(doc))
    assert all(isinstance(doc["orgs"], list) for doc in stored.find())
    assert [service.report(query, service.served()) for query in queries] == before
    assert verify.find_month_drift(dbs, date(2026, 7, 1), date(2026, 10, 31)) == []

    dbs.source.requests.insert_one(
        make_request(createdAt=datetime(2026, 9, 9, 9), id_organization=MANY[3], depth=4)
    )
    backfill(dbs, "2026-09-09", "2026-09-09", T0 + timedelta(hours=1))
    for doc in stored.find({"key": {"$in": ["2026-09", "2026-09-09"]}}):
        assert doc[platform.PACKED] == 1
    assert verify.find_month_drift(dbs, date(2026, 7, 1), date(2026, 10, 31)) == []
    after = service.report(queries[0], service.served())
    total = before[0]["total"]["totals"]["conversations"]
    assert after["total"]["totals"]["conversations"] == total + 1


MEASURE_COLUMNS = ("conversations", "messages", "handoffs", "users")


def month_document(ids: list[str], **columns: list[int]) -> Doc:
    """A platform document of September with three organizations, its columns as lists."""
    return {
        "_id": "month:2026-09:0000",
        "period": "month",
        "key": "2026-09",
        "orgs": ids,
        **{name: columns.get(name, [1, 2, 3]) for name in MEASURE_COLUMNS},
        "users_hll": [b"\x01\x02", None, b"\x03" * 40],
    }


def test_packing_keeps_every_figure_and_sketch_and_leaves_other_ids_as_lists() -> None:
    ids = sorted(str(ObjectId()) for _ in range(3))
    doc = month_document(
        ids,
        conversations=[1, 2**40, 0],
        messages=[3, 2**62, 0],
        handoffs=[0, 1, 2],
        users=[1, 0, 7],
    )
    packed = platform.pack(doc)
    assert bytes(packed["orgs"]) == b"".join(bytes.fromhex(org) for org in ids)
    assert bytes(packed["messages"]) == b"".join(n.to_bytes(8, "little") for n in (3, 2**62, 0))
    assert bytes(packed["users_hll"]) == b"\x01\x02" + b"\x03" * 40
    assert bytes(packed["users_hll_ends"]) == b"".join(n.to_bytes(8, "little") for n in (2, 2, 42))
    assert platform.unpack(packed) == doc
    assert platform.unpack(doc) is doc
    odd = {**doc, "orgs": ["not-an-object-id", *ids[1:]]}
    assert platform.pack(odd) == odd
    with pytest.raises(platform.UnreadableDocument, match="format 2, which this version"):
        platform.unpack({**packed, platform.PACKED: 2})
    empty = {**doc, **{name: [] for name in ("orgs", *MEASURE_COLUMNS, "users_hll")}}
    assert platform.unpack(platform.pack(empty)) == empty


@pytest.mark.parametrize(
    "damage",
    [
        {"orgs": Binary(b"\x65" * 30)},  # two ids and a half
        {"messages": Binary(b"\x00" * 16)},  # two figures for three organizations
        {"users": Binary(b"\x00" * 23)},  # not a whole number of figures
        {"users_hll_ends": Binary(b"".join(n.to_bytes(8, "little") for n in (2, 1, 42)))},
        {"users_hll_ends": Binary(b"".join(n.to_bytes(8, "little") for n in (2, 2, 50)))},
        {"handoffs": None},
    ],
)
def test_a_damaged_packed_document_is_refused_naming_it_never_misread(damage: Doc) -> None:
    doc = month_document(sorted(str(ObjectId()) for _ in range(3)))
    with pytest.raises(platform.UnreadableDocument, match="month:2026-09:0000 is damaged"):
        platform.unpack({**platform.pack(doc), **damage})


@pytest.mark.parametrize("packed", [0, None, False, "1", -1, 2])
def test_a_packed_document_of_another_format_is_refused_naming_it(packed: Any) -> None:
    doc = platform.pack(month_document(sorted(str(ObjectId()) for _ in range(3))))
    with pytest.raises(platform.UnreadableDocument, match=r"month:2026-09:0000 is in format") as e:
        platform.unpack({**doc, platform.PACKED: packed})
    assert ("a newer version wrote it" in str(e.value)) == (packed == 2)
    without = {key: value for key, value in doc.items() if key != platform.PACKED}
    with pytest.raises(platform.UnreadableDocument, match="is in format None"):
        platform.unpack(without)


def test_a_document_stored_as_lists_with_columns_that_disagree_is_refused() -> None:
    doc = month_document(sorted(str(ObjectId()) for _ in range(3)), handoffs=[1, 2])
    with pytest.raises(platform.UnreadableDocument, match="month:2026-09:0000 is damaged"):
        platform.unpack(doc)


def test_an_unreadable_platform_document_fails_the_api_and_verify_repairs_it(
    platform_dbs: Databases,
) -> None:
    """A newer version's document, and damaged ones: the API answers 500 saying so (not a
    bare error), verify calls their month drifted, and its repair writes them again."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.auth import create_key

    dbs = platform_dbs
    generation = ledger.read_state(dbs.rollup).generation
    stored = dbs.level(USAGE_PLATFORM, generation)
    stored.update_many({"key": "2026-09"}, {"$set": {platform.PACKED: 2}})
    secret = create_key(dbs.rollup, "s", None, T0)[1]
    with TestClient(create_app(dbs), raise_server_exceptions=False) as client:
        answer = client.get(
            "/api/aggregations/usage?start=2026-08-01&end=2026-10-31&granularity=month",
            headers={"Authorization": f"Bearer {secret}"},
        )
    assert answer.status_code == 500
    assert answer.json()["detail"] == (
        "the rollup holds a document this version cannot read; its operator is told why"
    )
    drifted = verify.find_month_drift(dbs, date(2026, 8, 1), date(2026, 10, 31))
    assert "2026-09" in drifted
    # Repair writes the month again, in ranges of organizations: the document is replaced.
    stored.update_many({"key": {"$regex": "^2026-09-1"}}, {"$set": {"orgs": Binary(b"e" * 30)}})
    first, last = date(2026, 8, 1), date(2026, 10, 31)
    runner.verify_range(dbs, first, last, AFTER, lambda: AFTER, repair=True)
    assert verify.find_month_drift(dbs, first, last) == []
    assert all(doc[platform.PACKED] == 1 for doc in stored.find({"key": {"$regex": "^2026-09"}}))
    counted = sum(1 for doc in dbs.source.requests.find() if doc["id_organization"] != MANY[0])
    with TestClient(create_app(dbs)) as client:
        answer = client.get(
            "/api/aggregations/usage?start=2026-08-01&end=2026-10-31&granularity=month",
            headers={"Authorization": f"Bearer {secret}"},
        )
    assert answer.json()["total"]["totals"]["conversations"] == counted


def test_a_rollup_from_before_the_platform_level_is_served_from_organization_rows(
    dbs: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A generation written before the platform level (its state without the flag) is read
    from its organization rows; a rebuild begun then and resumed now switches to a
    generation without the flag too; one begun now has it."""
    from api.usage import UsageService
    from etl import ledger
    from etl.cli import status_report

    day = datetime(2026, 9, 5, 9)
    dbs.source.requests.insert_many(
        [make_request(createdAt=day, id_organization=org) for org in ORGS[:3]]
    )
    backfill(dbs, "2026-09-01", "2026-09-30", T0)
    state = dbs.rollup["etl_state"]
    state.update_one({}, {"$unset": {"platform_level": ""}})
    dbs.level("usage_platform").delete_many({})  # as the earlier version left it
    body = UsageService(dbs, 0).report(resolve(dbs, {"start": "2026-09-01", "end": "2026-09-30"}))
    assert body["total"]["totals"]["conversations"] == 3
    report = status_report(dbs, dbs.settings, T0, 5)
    assert report["platform_level"] is False
    assert any("before the platform level" in line for line in report["warnings"])

    # A rebuild that the earlier version began (its pending state without the flag), resumed.
    pending = ledger.Pending(2, ledger.read_state(dbs.rollup).definition, None, None, None)
    ledger.begin_pending(dbs.rollup, pending)
    state.update_one({}, {"$unset": {"pending.platform_level": ""}})
    runner.run_rebuild(dbs, T0, lambda: T0)
    assert ledger.read_state(dbs.rollup).generation == 2
    assert ledger.read_state(dbs.rollup).platform is False
    assert verify.find_month_drift(dbs, date(2026, 9, 1), date(2026, 9, 30)) == []

    runner.run_rebuild(dbs, T0, lambda: T0)
    latest = ledger.read_state(dbs.rollup)
    assert (latest.generation, latest.platform) == (3, True)
    assert UsageService(dbs, 0).served().platform is True
    body = UsageService(dbs, 0).report(resolve(dbs, {"start": "2026-09-01", "end": "2026-09-30"}))
    assert body["total"]["totals"]["conversations"] == 3
    assert status_report(dbs, dbs.settings, T0, 5)["warnings"] == []


# --- a month replaced in parts --------------------------------------------------------------


def test_a_month_in_parts_cut_short_is_read_from_its_days_until_a_run_derives_it(
    make_dbs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parts of one day each: the month's levels by month wait for the part with the batch's
    last day. The run dies there; the month is stale, the views read its days and still show
    the documents' counts, verify names the month, and the next run derives it."""
    from api.usage import UsageService

    dbs: Databases = make_dbs(transaction_rows=1)
    days = [datetime(2026, 9, d, 9) for d in (3, 4, 30)]
    dbs.source.requests.insert_many(
        [make_request(createdAt=day, id_organization=ORGS[n % 2]) for n, day in enumerate(days)]
    )
    backfill(dbs, "2026-09-01", "2026-09-30", T0)
    assert rollup.stale_months(dbs, 1) == []
    dbs.source.requests.insert_many(
        [make_request(createdAt=day, id_organization=ORGS[2]) for day in days]
    )

    real = rollup.save_days

    def dies_on_the_last_day(*args: Any, **kwargs: Any) -> tuple[int, int]:
        if date(2026, 9, 30) in args[2]:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(rollup, "save_days", dies_on_the_last_day)
    with pytest.raises(RuntimeError):
        backfill(dbs, "2026-09-01", "2026-09-30", T0 + timedelta(hours=1))
    monkeypatch.setattr(rollup, "save_days", real)
    assert rollup.stale_months(dbs, 1) == ["2026-09"]
    # The month's rows lag: ORGS[2] has its two early conversations only in the day rows.
    stored = {r["org_id"]: r["conversations"] for r in dbs.level("usage_org_monthly").find()}
    assert str(ORGS[2]) not in stored

    expected = {str(ORGS[0]): 2, str(ORGS[1]): 1, str(ORGS[2]): 2}  # the 30th not yet redone
    service = UsageService(dbs, 0)
    for granularity in ("month", "week"):
        query = resolve(
            dbs, {"start": "2026-09-01", "end": "2026-09-30", "granularity": granularity}
        )
        body = service.report(query)
        assert {row["id"]: row["totals"]["conversations"] for row in body["rows"]} == expected
        slow = service.report(query, replace(service.served(), platform=False))
        assert {row["id"]: row["totals"]["conversations"] for row in slow["rows"]} == expected
    org = staff_query(dbs.settings, "org", "2026-09-01", "2026-09-30", org_id=str(ORGS[2]))
    assert service.report(org)["total"]["totals"]["conversations"] == 2
    assert verify.find_month_drift(dbs, date(2026, 9, 1), date(2026, 9, 30)) == ["2026-09"]
    found = runner.verify_range(dbs, date(2026, 9, 1), date(2026, 9, 30), T0, lambda: T0)
    assert (found.months, found.stale) == (["2026-09"], ["2026-09"])
    from etl.cli import status_report

    warnings = status_report(dbs, dbs.settings, T0, 5)["warnings"]
    assert any("lag their days in 2026-09" in line for line in warnings)

    backfill(dbs, "2026-08-01", "2026-08-02", T0 + timedelta(hours=2))  # another month
    assert rollup.stale_months(dbs, 1) == []
    assert verify.find_month_drift(dbs, date(2026, 9, 1), date(2026, 9, 30)) == []
    stored = {r["org_id"]: r["conversations"] for r in dbs.level("usage_org_monthly").find()}
    assert stored == expected


@pytest.mark.parametrize("long_in", [1, 200])
def test_the_last_part_derives_the_months_of_organizations_only_on_earlier_parts(
    make_dbs: Any, monkeypatch: pytest.MonkeyPatch, long_in: int
) -> None:
    """One day a part: an organization on the first days only still gets its month rows,
    derived with the batch's last day (by name, or the whole month past LONG_IN)."""
    monkeypatch.setattr(rollup, "LONG_IN", long_in)
    dbs: Databases = make_dbs(transaction_rows=1)
    placed = [(3, ORGS[0]), (4, ORGS[1]), (4, ORGS[0]), (30, ORGS[2])]
    dbs.source.requests.insert_many(
        [make_request(createdAt=datetime(2026, 9, d, 9), id_organization=org) for d, org in placed]
    )
    backfill(dbs, "2026-09-01", "2026-09-30", T0)
    expected = {str(ORGS[0]): 2, str(ORGS[1]): 1, str(ORGS[2]): 1}
    assert september_by_level(dbs) == [expected] * 3
    assert rollup.stale_months(dbs, 1) == []
    assert verify.find_month_drift(dbs, date(2026, 9, 1), date(2026, 9, 30)) == []


# --- a month derived in ranges of organizations ------------------------------------------------


@contextlib.contextmanager
def killed_after_one_range(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The run inside dies as it derives the second range of organizations of a month."""
    real, calls = rollup.derive_marked, []

    def dies_after_one(*args: Any, **kwargs: Any) -> None:
        calls.append(args[3])
        if len(calls) > 1:
            raise RuntimeError("killed")
        real(*args, **kwargs)

    monkeypatch.setattr(rollup, "derive_marked", dies_after_one)
    with pytest.raises(RuntimeError, match="killed"):
        yield
    monkeypatch.setattr(rollup, "derive_marked", real)


def test_named_organizations_over_the_bound_of_rows_are_derived_in_halves(
    make_dbs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Organizations a mark names, holding more day rows than a transaction may, are derived
    in halves until each part fits or holds one organization; every level then equals the
    documents' counts."""
    dbs, expected = month_in_ranges(make_dbs, monkeypatch)
    dbs.settings.transaction_rows = 2
    real = rollup.derive_marked
    derived: list[set[str]] = []

    def recorded(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)
        derived.append(args[3])

    monkeypatch.setattr(rollup, "derive_marked", recorded)
    dbs.source.requests.insert_many(
        [make_request(createdAt=datetime(2026, 9, 20, 9), id_organization=o) for o in ORGS[1:]]
    )
    backfill(dbs, "2026-09-01", "2026-09-30", T0 + timedelta(hours=1))
    # Each of the three holds two day rows of September.
    assert derived == [{str(org)} for org in sorted(ORGS[1:], key=str)]
    expected.update({str(org): expected[str(org)] + 1 for org in ORGS[1:]})
    assert september_by_level(dbs) == [expected] * 3
    assert rollup.stale_months(dbs, 1) == []
    assert verify.find_month_drift(dbs, date(2026, 9, 1), date(2026, 9, 30)) == []


def test_a_nightly_rederives_only_the_organizations_whose_days_changed(
    dbs: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over a window of days where one organization's conversations changed, the nightly
    run rewrites that day and that organization's levels, and none when nothing changed;
    every level equals the documents' counts either way."""
    placed = [(9, ORGS[0]), (10, ORGS[1]), (10, ORGS[2]), (11, ORGS[3]), (2, ORGS[1])]
    docs = [
        make_request(createdAt=datetime(2026, 10, d, 9), id_organization=org) for d, org in placed
    ]
    dbs.source.requests.insert_many(docs)
    backfill(dbs, "2026-10-01", "2026-10-11", T0)
    derived: list[tuple[list[str] | None, Any]] = []
    real = rollup.derive_months

    def recorded(*args: Any, **kwargs: Any) -> None:
        derived.append((args[4], args[5]))
        real(*args, **kwargs)

    monkeypatch.setattr(rollup, "derive_months", recorded)
    later = T0 + timedelta(hours=1)
    runner.run_nightly(dbs, later, lambda: later)
    assert derived == [([], set())]

    dbs.source.requests.insert_one(
        make_request(createdAt=datetime(2026, 10, 10, 15), id_organization=ORGS[1])
    )
    derived.clear()
    later += timedelta(hours=1)
    runner.run_nightly(dbs, later, lambda: later)
    assert derived == [(["2026-10-10"], {str(ORGS[1])})]
    expected = {str(ORGS[0]): 1, str(ORGS[1]): 3, str(ORGS[2]): 1, str(ORGS[3]): 1}
    assert {org: n for (org, month), n in org_months(dbs).items()} == expected
    by_day = {
        (r["org_id"], r["day"]): r["conversations"] for r in dbs.level("usage_org_daily").find()
    }
    assert by_day == {
        (str(ORGS[0]), "2026-10-09"): 1,
        (str(ORGS[1]), "2026-10-10"): 2,
        (str(ORGS[2]), "2026-10-10"): 1,
        (str(ORGS[3]), "2026-10-11"): 1,
        (str(ORGS[1]), "2026-10-02"): 1,
    }
    assert verify.find_month_drift(dbs, date(2026, 10, 1), date(2026, 10, 11)) == []


def test_ranges_of_organizations_cover_every_id_within_the_bound(make_dbs: Any) -> None:
    """Each organization in exactly one range, every id in some range, and no range over the
    bound of day rows unless it holds a single organization."""
    dbs: Databases = make_dbs()
    rows_of = {ORGS[0]: 3, ORGS[1]: 1, ORGS[2]: 5, ORGS[3]: 2}
    dbs.usage_daily(1).insert_many(
        [
            {"_id": f"{org}:a:2026-09-{d:02d}", "org_id": str(org), "day": f"2026-09-{d:02d}"}
            for org, n in rows_of.items()
            for d in range(1, n + 1)
        ]
        + [{"_id": f"{ORGS[0]}:a:2026-10-01", "org_id": str(ORGS[0]), "day": "2026-10-01"}]
    )
    ranges = list(rollup.org_ranges(dbs, 1, "2026-09", 4))
    assert [[str(org) for org in ORGS if str(org) in r] for r in ranges] == [
        [str(ORGS[0]), str(ORGS[1])],
        [str(ORGS[2])],
        [str(ORGS[3])],
    ]
    for probe in ["", "0", str(ORGS[0])[:-1], str(ORGS[3]) + "0", "z" * 24]:
        assert sum(probe in r for r in ranges) == 1, probe


@pytest.mark.parametrize("marked", [1, rollup.MARKED_ORGS])
def test_a_month_cut_short_between_its_ranges_is_read_from_its_days_until_derived(
    make_dbs: Any, monkeypatch: pytest.MonkeyPatch, marked: int
) -> None:
    """A month derived one organization a transaction (whole, or the organizations that
    changed, by name): a run dies after the first part. The month stays marked, the views
    read its days, and the next run derives the rest; every level then equals the
    documents' counts."""
    from api.usage import UsageService

    monkeypatch.setattr(rollup, "LONG_IN", 1)
    monkeypatch.setattr(rollup, "MARKED_ORGS", marked)
    dbs: Databases = make_dbs(transaction_rows=1)
    placed = [(3, ORGS[0]), (4, ORGS[1]), (4, ORGS[0]), (30, ORGS[2]), (12, ORGS[3])]
    docs = [
        make_request(createdAt=datetime(2026, 9, d, 9), id_organization=org) for d, org in placed
    ]
    dbs.source.requests.insert_many(docs)
    backfill(dbs, "2026-09-01", "2026-09-30", T0)
    assert rollup.stale_months(dbs, 1) == []
    # ORGS[0] loses a conversation; ORGS[3] leaves the month; ORGS[1] gains two.
    dbs.source.requests.delete_one({"_id": docs[0]["_id"]})
    dbs.source.requests.update_one({"_id": docs[4]["_id"]}, {"$set": {"isTestMode": True}})
    dbs.source.requests.insert_many(
        [make_request(createdAt=datetime(2026, 9, d, 9), id_organization=ORGS[1]) for d in (5, 6)]
    )
    with killed_after_one_range(monkeypatch):
        backfill(dbs, "2026-09-01", "2026-09-30", T0 + timedelta(hours=1))
    assert rollup.stale_months(dbs, 1) == ["2026-09"]
    expected = {str(ORGS[0]): 1, str(ORGS[1]): 3, str(ORGS[2]): 1}
    service = UsageService(dbs, 0)
    query = resolve(dbs, {"start": "2026-09-01", "end": "2026-09-30", "granularity": "month"})
    body = service.report(query)
    assert {row["id"]: row["totals"]["conversations"] for row in body["rows"]} == expected
    assert verify.find_month_drift(dbs, date(2026, 9, 1), date(2026, 9, 30)) == ["2026-09"]

    runner.run_nightly(dbs, T0 + timedelta(hours=2), lambda: T0 + timedelta(hours=2))
    assert rollup.stale_months(dbs, 1) == []
    assert september_by_level(dbs) == [expected] * 3
    assert verify.find_month_drift(dbs, date(2026, 9, 1), date(2026, 9, 30)) == []


def month_in_ranges(
    make_dbs: Any, monkeypatch: pytest.MonkeyPatch
) -> tuple[Databases, dict[str, int]]:
    """A month of four organizations backfilled one organization a range."""
    monkeypatch.setattr(rollup, "LONG_IN", 1)
    dbs: Databases = make_dbs(transaction_rows=1)
    placed = [(3, ORGS[0]), (4, ORGS[1]), (4, ORGS[0]), (30, ORGS[2]), (12, ORGS[3])]
    dbs.source.requests.insert_many(
        [make_request(createdAt=datetime(2026, 9, d, 9), id_organization=o) for d, o in placed]
    )
    backfill(dbs, "2026-09-01", "2026-09-30", T0)
    return dbs, {str(ORGS[0]): 2, str(ORGS[1]): 1, str(ORGS[2]): 1, str(ORGS[3]): 1}


def test_repair_rewrites_a_drifted_month_in_ranges_and_a_cut_short_repair_is_finished(
    make_dbs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Repair marks the month, then rewrites every level a range at a time; cut short after
    one range, the month stays marked (views read its days) and the next run finishes it."""
    from api.usage import UsageService

    dbs, expected = month_in_ranges(make_dbs, monkeypatch)
    for collection in ("usage_org_monthly", "usage_monthly", "usage_org_daily"):
        dbs.level(collection).update_many({}, {"$inc": {"conversations": 5}})
    first, last = date(2026, 9, 1), date(2026, 9, 30)
    assert verify.find_month_drift(dbs, first, last) == ["2026-09"]
    with killed_after_one_range(monkeypatch):
        runner.verify_range(dbs, first, last, T0, lambda: T0, repair=True)
    assert rollup.stale_months(dbs, 1) == ["2026-09"]
    query = resolve(dbs, {"start": "2026-09-01", "end": "2026-09-30", "granularity": "month"})
    body = UsageService(dbs, 0).report(query)
    assert {row["id"]: row["totals"]["conversations"] for row in body["rows"]} == expected

    runner.verify_range(dbs, first, last, T0, lambda: T0, repair=True)
    assert rollup.stale_months(dbs, 1) == []
    assert {org: n for (org, _), n in org_months(dbs).items()} == expected
    assert {org: n for (org, _), n in agent_months(dbs).items()} == expected
    by_day = [
        (r["org_id"], r["day"], r["conversations"]) for r in dbs.level("usage_org_daily").find()
    ]
    assert sorted(by_day) == sorted(
        [(str(ORGS[0]), "2026-09-03", 1), (str(ORGS[0]), "2026-09-04", 1)]
        + [(str(ORGS[1]), "2026-09-04", 1), (str(ORGS[2]), "2026-09-30", 1)]
        + [(str(ORGS[3]), "2026-09-12", 1)]
    )
    assert verify.find_month_drift(dbs, first, last) == []


def test_a_range_the_server_ends_as_too_long_is_derived_in_smaller_ones(
    make_dbs: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Ranges of more than one organization outlive the server's limit: they are derived
    again one organization at a time; a single organization that still does fails the run
    naming the month, and leaves it marked."""
    dbs, expected = month_in_ranges(make_dbs, monkeypatch)
    dbs.settings.transaction_rows = 10
    real = rollup.derive_marked
    derived: list[int] = []

    def limited(*args: Any, **kwargs: Any) -> None:
        held = sum(str(org) in args[3] for org in ORGS)
        if held > 1:
            raise rollup.TransactionTooLong("lifetime exceeded")
        derived.append(held)
        real(*args, **kwargs)

    monkeypatch.setattr(rollup, "derive_marked", limited)
    first, last = date(2026, 9, 1), date(2026, 9, 30)
    dbs.level("usage_org_monthly").update_many({}, {"$inc": {"conversations": 5}})
    runner.verify_range(dbs, first, last, T0, lambda: T0, repair=True)
    assert "smaller ranges" in caplog.text
    assert derived and max(derived) == 1
    assert {org: n for (org, _), n in org_months(dbs).items()} == expected
    assert verify.find_month_drift(dbs, first, last) == []

    def always_too_long(*args: Any, **kwargs: Any) -> None:
        raise rollup.TransactionTooLong("lifetime exceeded")

    monkeypatch.setattr(rollup, "derive_marked", always_too_long)
    dbs.level("usage_org_monthly").update_many({}, {"$inc": {"conversations": 5}})
    with pytest.raises(rollup.TransactionTooLong, match="deriving 2026-09 for one organization"):
        runner.verify_range(dbs, first, last, T0, lambda: T0, repair=True)
    assert rollup.stale_months(dbs, 1) == ["2026-09"]


def test_named_organizations_the_server_ends_as_too_long_are_derived_in_smaller_sets(
    make_dbs: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Organizations named by a mark, derived together, outlive the server's limit: they are
    derived again one at a time, and every level equals the documents' counts."""
    dbs, expected = month_in_ranges(make_dbs, monkeypatch)
    dbs.settings.transaction_rows = 10
    real = rollup.derive_marked
    derived: list[set[str]] = []

    def limited(*args: Any, **kwargs: Any) -> None:
        assert isinstance(args[3], set)  # by name, not by range
        if len(args[3]) > 1:
            raise rollup.TransactionTooLong("lifetime exceeded")
        derived.append(args[3])
        real(*args, **kwargs)

    monkeypatch.setattr(rollup, "derive_marked", limited)
    dbs.source.requests.insert_many(
        [make_request(createdAt=datetime(2026, 9, 20, 9), id_organization=o) for o in ORGS[1:]]
    )
    backfill(dbs, "2026-09-01", "2026-09-30", T0 + timedelta(hours=1))
    assert "smaller ranges" in caplog.text
    assert sorted(derived, key=sorted) == [{str(org)} for org in sorted(ORGS[1:], key=str)]
    expected.update({str(org): expected[str(org)] + 1 for org in ORGS[1:]})
    assert september_by_level(dbs) == [expected] * 3
    assert rollup.stale_months(dbs, 1) == []
    assert verify.find_month_drift(dbs, date(2026, 9, 1), date(2026, 9, 30)) == []


def test_a_run_that_lost_its_lease_between_ranges_stops_and_keeps_the_mark(
    make_dbs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another run took the lease while a month was derived in ranges: the next range's
    renewal fails the run, before it could clear a mark the other run may rely on."""
    from etl import runs

    dbs, _ = month_in_ranges(make_dbs, monkeypatch)
    real = rollup.derive_marked

    def taken_over(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)
        dbs.rollup[runs.LOCKS].update_one({}, {"$set": {"holder": "another run"}})

    monkeypatch.setattr(rollup, "derive_marked", taken_over)
    dbs.level("usage_org_monthly").update_many({}, {"$inc": {"conversations": 5}})
    first, last = date(2026, 9, 1), date(2026, 9, 30)
    with pytest.raises(runs.LockBusy, match="lease was lost"):
        runner.verify_range(dbs, first, last, T0, lambda: T0, repair=True)
    assert rollup.stale_months(dbs, 1) == ["2026-09"]


class Killed(BaseException):
    """A run dying where a test says (not an Exception: nothing catches it)."""


def backfill_dying_before_marked(
    dbs: Databases, monkeypatch: pytest.MonkeyPatch, now: datetime
) -> None:
    """Backfill September, the run dying when it would derive the months it marked stale."""
    real_marked = rollup.derive_marked

    def dies(*args: Any, **kwargs: Any) -> None:
        raise Killed

    monkeypatch.setattr(rollup, "derive_marked", dies)
    with pytest.raises(Killed):
        backfill(dbs, "2026-09-01", "2026-09-30", now)
    monkeypatch.setattr(rollup, "derive_marked", real_marked)


def test_a_named_mark_derived_without_a_transaction_and_cut_short_in_the_platform_level(
    make_dbs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run with transactions leaves September marked for two organizations; a run without
    them dies while rewriting the platform level's September (its documents deleted, the new
    ones not yet inserted). The mark was made whole before: the next run derives every
    organization's levels, and the platform level holds them all again."""
    dbs = make_dbs()
    dbs.source.requests.insert_many(
        [
            make_request(createdAt=datetime(2026, 9, 3 + n, 9), id_organization=o)
            for n, o in enumerate(ORGS)
        ]
    )
    backfill(dbs, "2026-09-01", "2026-09-30", T0)
    expected = {str(org): 1 for org in ORGS}
    assert september_by_level(dbs) == [expected] * 3

    # ORGS[0] and ORGS[1] gain a conversation; the month is left marked for them (a run cut
    # short after its days: past LONG_IN organizations go to derive_stale).
    dbs.source.requests.insert_many(
        [make_request(createdAt=datetime(2026, 9, 3, 15), id_organization=o) for o in ORGS[:2]]
    )
    monkeypatch.setattr(rollup, "LONG_IN", 1)
    backfill_dying_before_marked(dbs, monkeypatch, T0 + timedelta(hours=1))
    marks = list(dbs.level("usage_stale_months").find())
    # Their rows only grew: neither lost a day row.
    assert marks == [{"_id": "2026-09", "orgs": sorted(str(o) for o in ORGS[:2]), "lost": []}]

    # A run without transactions derives the mark and dies inside the platform level's month.
    plain = connect(dbs.settings, dbs.uri, transactions=False)
    real_chunks = platform.chunks

    def chunks(period: platform.Period, rows: Any) -> list[Any]:
        if (period.kind, period.key) == ("month", "2026-09"):
            raise Killed
        return real_chunks(period, rows)

    monkeypatch.setattr(platform, "chunks", chunks)
    later = datetime(2026, 10, 20, 2)
    with pytest.raises(Killed):
        runner.run_nightly(plain, later, lambda: later)
    monkeypatch.setattr(platform, "chunks", real_chunks)
    plain.close()
    assert list(dbs.level("usage_stale_months").find()) == [{"_id": "2026-09", "whole": True}]

    # The next run (with transactions) finishes the mark.
    later += timedelta(hours=1)
    runner.run_nightly(dbs, later, lambda: later)
    assert rollup.stale_months(dbs, 1) == []
    expected[str(ORGS[0])] = expected[str(ORGS[1])] = 2
    assert september_by_level(dbs) == [expected] * 3
    assert verify.find_month_drift(dbs, date(2026, 9, 1), date(2026, 9, 30)) == []


def test_a_repair_cut_short_between_ranges_is_finished_levels_by_day_included(
    make_dbs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repair re-derives a month whole in ranges, its levels by day included; cut short
    after one range, its mark says the levels by day lag too, and the next nightly run
    derives them as well before it clears the mark."""
    dbs, _ = month_in_ranges(make_dbs, monkeypatch)
    dbs.level("usage_org_daily").update_many({}, {"$inc": {"conversations": 5}})
    first, last = date(2026, 9, 1), date(2026, 9, 30)
    assert verify.find_month_drift(dbs, first, last) == ["2026-09"]
    with killed_after_one_range(monkeypatch):
        runner.verify_range(dbs, first, last, T0, lambda: T0, repair=True)
    marks = list(dbs.level("usage_stale_months").find())
    assert marks == [{"_id": "2026-09", "whole": True, "by_day": True}]
    later = T0 + timedelta(days=1)
    runner.run_nightly(dbs, later, lambda: later)
    assert rollup.stale_months(dbs, 1) == []
    assert verify.find_month_drift(dbs, first, last) == []


@pytest.mark.parametrize("path", ["together", "named", "marked", "marked before lost"])
def test_an_agent_gone_from_a_month_leaves_no_row_by_month(
    dbs: Databases, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """An agent's only conversation of September moves to another agent: its row by agent
    and month goes, whether the month is derived with the days ("together"), after them for
    named organizations ("named"), by a later run from the mark a run cut short left
    ("marked"), or from a mark that does not say which organizations lost a day row, as an
    earlier version wrote them ("marked before lost")."""
    bot_2 = {"attributes": {"bot_id": BOT_2}, "participantsBots": [f"bot_{BOT_2}"]}
    dbs.source.requests.insert_many(
        [
            make_request(createdAt=datetime(2026, 9, 3, 9), id_organization=ORGS[0]),
            make_request(createdAt=datetime(2026, 9, 4, 9), id_organization=ORGS[0], **bot_2),
            make_request(createdAt=datetime(2026, 9, 3, 9), id_organization=ORGS[1]),
        ]
    )
    backfill(dbs, "2026-09-01", "2026-09-30", T0)
    first, second = str(ORGS[0]), str(ORGS[1])
    assert agent_months(dbs) == {(first, BOT_1): 1, (first, BOT_2): 1, (second, BOT_1): 1}

    dbs.source.requests.update_one(
        {"attributes.bot_id": BOT_2},
        {"$set": {"attributes.bot_id": BOT_1, "participantsBots": [f"bot_{BOT_1}"]}},
    )
    dbs.source.requests.insert_one(
        make_request(createdAt=datetime(2026, 9, 4, 11), id_organization=ORGS[1])
    )
    if path != "together":
        monkeypatch.setattr(rollup, "LONG_IN", 1)
    if path.startswith("marked"):
        backfill_dying_before_marked(dbs, monkeypatch, T0 + timedelta(hours=1))
        stale = dbs.level("usage_stale_months")
        assert stale.find_one({"_id": "2026-09"}) == {
            "_id": "2026-09",
            "orgs": [first, second],
            "lost": [first],
        }
        if path == "marked before lost":
            stale.update_one({"_id": "2026-09"}, {"$unset": {"lost": ""}})
    backfill(dbs, "2026-09-01", "2026-09-30", T0 + timedelta(hours=2))

    assert agent_months(dbs) == {(first, BOT_1): 2, (second, BOT_1): 2}
    assert september_by_level(dbs) == [{first: 2, second: 2}] * 3
    assert rollup.stale_months(dbs, 1) == []
    checked = runner.verify_range(
        dbs, date(2026, 9, 1), date(2026, 9, 30), T0 + timedelta(hours=3), lambda: T0
    )
    assert checked.drift == []
