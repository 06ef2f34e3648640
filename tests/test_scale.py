"""Paths taken only at scale: many organizations on the days a run replaces, and names read
for every organization. Each is forced here by lowering the threshold that selects it."""

from datetime import date, datetime, timedelta

import pytest
from bson import ObjectId

from api import usage
from etl import rollup, runner, verify
from etl.db import Databases
from tests.factories import make_request

T0 = datetime(2026, 10, 12, 2, 0)
ORGS = [ObjectId(f"65e18830a0616000137bb9{n:02x}") for n in range(4)]


def backfill(dbs: Databases, first: str, last: str, now: datetime) -> None:
    runner.run_backfill(dbs, date.fromisoformat(first), date.fromisoformat(last), now, lambda: now)


def org_months(dbs: Databases) -> dict[tuple[str, str], int]:
    return {
        (row["org_id"], row["month"]): row["conversations"]
        for row in dbs.level("usage_org_monthly").find()
    }


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
