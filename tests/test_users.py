"""Distinct end users: exact per day row, a union of sketches in every coarser level.

Expected figures are counted here from the documents inserted, with plain Python sets, never
by the code under test.
"""

import ast
import random
import re
import struct
import subprocess
import sys
from collections.abc import Callable, Iterable
from datetime import date, datetime
from pathlib import Path
from typing import Any

import datasketches
import pytest
from bson import ObjectId

from etl import lattice, ledger, rollup, runner, sample, sketches, vanilla_sample, verify
from etl.cli import status_report
from etl.db import Databases
from etl.definition import DefinitionMismatch
from etl.sample import SampleSpec
from tests.factories import (
    BOT_1,
    BOT_2,
    DROP,
    ORG_A,
    ORG_B,
    PROJECT_A,
    PROJECT_B,
    conversation,
    make_request,
    make_row,
    make_vanilla_request,
)
from tests.test_definition import STORED_V2

NOW = datetime(2026, 10, 20, 12, 0)
HEX = re.compile(r"[0-9a-fA-F]{24}")
Key = tuple[str, ...]


def user_of(doc: dict[str, Any], fields: Iterable[str] = ("lead", "requester")) -> str | None:
    """The end user of a conversation, by the rule the README states."""
    for name in fields:
        value: Any = doc
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, ObjectId):
            return str(value)
        if isinstance(value, str) and value.strip():
            text = value.strip()
            return text.lower() if HEX.fullmatch(text) else text
    return None


def backfill(dbs: Databases, first: str = "2026-10-12", last: str = "2026-10-16") -> None:
    runner.run_backfill(dbs, date.fromisoformat(first), date.fromisoformat(last), NOW, lambda: NOW)


def stored(dbs: Databases, collection: str, *key: str) -> dict[Key, dict[str, Any]]:
    return {tuple(row[name] for name in key): row for row in dbs.level(collection).find()}


def expected_levels(by_row: dict[Key, set[str]]) -> dict[str, dict[Key, set[str]]]:
    """Each level's distinct users, as unions of the (org, agent, day) sets."""
    levels: dict[str, dict[Key, set[str]]] = {
        "usage_monthly": {},
        "usage_org_daily": {},
        "usage_org_monthly": {},
    }
    for (org, agent, day), users in by_row.items():
        levels["usage_monthly"].setdefault((org, agent, day[:7]), set()).update(users)
        levels["usage_org_daily"].setdefault((org, day), set()).update(users)
        levels["usage_org_monthly"].setdefault((org, day[:7]), set()).update(users)
    return levels


LEVEL_KEYS = {
    "usage_monthly": ("org_id", "agent_id", "month"),
    "usage_org_daily": ("org_id", "day"),
    "usage_org_monthly": ("org_id", "month"),
}


def assert_users(dbs: Databases, by_row: dict[Key, set[str]]) -> None:
    """Day rows hold exactly their users and those users' sketch; every level the number of
    distinct users of the rows it covers (exact at these sizes) and their union's sketch."""
    days = stored(dbs, "usage_daily", "org_id", "agent_id", "day")
    assert {key: row["users"] for key, row in days.items()} == {
        key: len(users) for key, users in by_row.items()
    }
    for key, row in days.items():
        if by_row[key]:
            assert bytes(row["users_hll"]) == sketches.of_ids(sorted(by_row[key]))
        else:
            assert "users_hll" not in row
    for collection, wanted in expected_levels(by_row).items():
        found = stored(dbs, collection, *LEVEL_KEYS[collection])
        assert {key: row["users"] for key, row in found.items()} == {
            key: len(users) for key, users in wanted.items()
        }, collection
        for key, row in found.items():
            assert ("users_hll" in row) == bool(wanted[key]), (collection, key)


def people() -> list[Any]:
    """Ways a field can name (or fail to name) a person; several name the same one."""
    same = ObjectId("6601bb00bb00bb00bb00bb01")
    return [
        same,
        str(same).upper(),
        f"  {same}\n",
        ObjectId("6601bb00bb00bb00bb00bb02"),
        "alice",
        " alice ",
        "Alice",
        "",
        "   ",
        5,
        None,
        ["6601bb00bb00bb00bb00bb03"],
        {"id": "x"},
        DROP,
        *(ObjectId(f"6601cc00cc00cc00cc00cc{n:02x}") for n in range(8)),
    ]


def test_users_per_day_row_are_the_distinct_end_users_of_its_conversations(
    dbs: Databases,
) -> None:
    rng = random.Random(3)
    pool = people()
    docs = []
    for _ in range(90):
        docs.append(
            make_request(
                createdAt=datetime(2026, 10, rng.randint(13, 15), rng.randint(0, 23)),
                id_organization=rng.choice([ORG_A, ORG_B]),
                attributes={"bot_id": rng.choice([BOT_1, BOT_2, ""])},
                status=rng.choice([1000, 1000, 1000, 200]),
                lead=rng.choice(pool),
                requester=rng.choice(pool),
            )
        )
    dbs.source.requests.insert_many([dict(doc) for doc in docs])
    backfill(dbs)
    by_row: dict[Key, set[str]] = {}
    for doc in docs:
        if doc["status"] != 1000:
            continue
        key = (str(doc["id_organization"]), doc["attributes"]["bot_id"] or "unattributed")
        users = by_row.setdefault((*key, doc["createdAt"].date().isoformat()), set())
        user = user_of(doc)
        if user is not None:
            users.add(user)
    assert len(by_row) >= 12
    assert_users(dbs, by_row)


def test_a_person_on_several_days_agents_and_organizations_is_one_user_of_each_union(
    dbs: Databases,
) -> None:
    person, other = ObjectId("6601bb00bb00bb00bb00bb01"), ObjectId("6601bb00bb00bb00bb00bb02")
    dbs.source.requests.insert_many(
        [
            make_request(createdAt=datetime(2026, 10, 13, 9), lead=person),
            make_request(createdAt=datetime(2026, 10, 13, 11), lead=person),
            make_request(createdAt=datetime(2026, 10, 14, 9), lead=str(person).upper()),
            make_request(createdAt=datetime(2026, 10, 14, 9), lead=person, attributes={}),
            make_request(createdAt=datetime(2026, 10, 15, 9), lead=DROP, requester=person),
            make_request(createdAt=datetime(2026, 10, 15, 9), lead=other),
            make_request(createdAt=datetime(2026, 10, 14, 9), id_organization=ORG_B, lead=person),
        ]
    )
    backfill(dbs)
    a, b = str(ORG_A), str(ORG_B)
    days = stored(dbs, "usage_daily", "org_id", "agent_id", "day")
    assert sum(row["users"] for row in days.values()) == 6  # what a sum would wrongly say
    monthly = stored(dbs, "usage_monthly", "org_id", "agent_id", "month")
    assert {key: row["users"] for key, row in monthly.items()} == {
        (a, BOT_1, "2026-10"): 2,
        (a, "unattributed", "2026-10"): 1,
        (b, BOT_1, "2026-10"): 1,
    }
    org_daily = stored(dbs, "usage_org_daily", "org_id", "day")
    assert {key: row["users"] for key, row in org_daily.items()} == {
        (a, "2026-10-13"): 1,
        (a, "2026-10-14"): 1,
        (a, "2026-10-15"): 2,
        (b, "2026-10-14"): 1,
    }
    org_monthly = stored(dbs, "usage_org_monthly", "org_id", "month")
    assert {key: row["users"] for key, row in org_monthly.items()} == {
        (a, "2026-10"): 2,
        (b, "2026-10"): 1,
    }
    # Sums stay sums.
    assert org_monthly[(a, "2026-10")]["conversations"] == 6


def test_conversations_naming_no_user_count_but_add_no_user(dbs: Databases) -> None:
    dbs.source.requests.insert_many(
        [
            make_request(),
            make_request(lead="", requester="  "),
            make_request(lead=7, requester=None),
            make_request(lead=[ObjectId()], requester={"_id": ObjectId()}),
        ]
    )
    backfill(dbs)
    (row,) = dbs.usage_daily().find()
    assert (row["conversations"], row["messages"], row["users"]) == (4, 20, 0)
    assert "users_hll" not in row
    for collection in LEVEL_KEYS:
        (level,) = dbs.level(collection).find()
        assert (level["conversations"], level["users"]) == (4, 0)
        assert "users_hll" not in level


def test_the_user_fields_are_a_setting(make_dbs: Callable[..., Databases]) -> None:
    dbs = make_dbs(user_fields=["attributes.visitor", "requester"])
    dbs.source.requests.insert_many(
        [
            make_request(attributes={"bot_id": BOT_1, "visitor": "v1"}, lead=ObjectId()),
            make_request(attributes={"bot_id": BOT_1, "visitor": " v1"}, lead=ObjectId()),
            make_request(attributes={"bot_id": BOT_1}, lead=ObjectId(), requester="r1"),
        ]
    )
    backfill(dbs)
    (row,) = dbs.usage_daily().find()
    assert row["users"] == 2
    assert bytes(row["users_hll"]) == sketches.of_ids(["r1", "v1"])


def test_vanilla_conversations_count_their_leads(make_dbs: Callable[..., Databases]) -> None:
    dbs = make_dbs(source_profile="tiledesk")
    rng = random.Random(5)
    leads = [ObjectId() for _ in range(6)]
    requests, messages = [], []
    for n in range(24):
        request = make_vanilla_request(
            f"support-group-{n}",
            createdAt=datetime(2026, 10, rng.randint(13, 14), rng.randint(0, 23)),
            id_project=rng.choice([PROJECT_A, PROJECT_B]),
            lead=rng.choice([*leads, DROP]),
            requester=rng.choice([ObjectId(), DROP]),
        )
        requests.append(request)
        messages += conversation(f"support-group-{n}", rng.choice([2, 3, 4]))
    dbs.source.requests.insert_many([dict(request) for request in requests])
    dbs.source.messages.insert_many(messages)
    backfill(dbs)
    said = {m["recipient"]: 0 for m in messages}
    for m in messages:
        said[m["recipient"]] += 1
    by_row: dict[Key, set[str]] = {}
    for request in requests:
        if said[request["request_id"]] <= 2:
            continue
        key = (request["id_project"], BOT_1, request["createdAt"].date().isoformat())
        user = user_of(request)
        by_row.setdefault(key, set()).update([user] if user else [])
    assert len(by_row) >= 3
    assert_users(dbs, by_row)


def test_levels_are_derived_to_the_same_bytes_whatever_the_order_of_the_days() -> None:
    rng = random.Random(1)
    rows, everyone = [], set()
    for day in range(1, 29):
        for agent in ("a", "b"):
            ids = sorted({f"u{rng.randrange(3000)}" for _ in range(rng.randint(0, 400))})
            everyone.update(ids)
            rows.append(
                {
                    "_id": rollup.row_id("o", agent, f"2026-10-{day:02d}"),
                    "org_id": "o",
                    "agent_id": agent,
                    "day": f"2026-10-{day:02d}",
                    "conversations": len(ids) + 1,
                    "messages": 3 * len(ids),
                    "handoffs": 1,
                    **rollup.users_fields(ids),
                }
            )
    for level in lattice.LEVELS:
        first = lattice.summarize(rows, level)
        shuffled = list(rows)
        rng.shuffle(shuffled)
        assert lattice.summarize(shuffled, level) == first
        assert sum(row["conversations"] for row in first) == sum(
            row["conversations"] for row in rows
        )
    (month,) = lattice.summarize(rows, lattice.ORG_MONTHLY)
    # The union of these rows (in their _id order) is in estimation mode: its estimate,
    # within its bounds.
    ordered = sorted(rows, key=lambda row: str(row["_id"]))
    estimate = sketches.union(row.get("users_hll") for row in ordered).estimate()
    assert month["users"] == estimate.value
    assert estimate.low <= len(everyone) <= estimate.high


def test_verify_finds_users_that_drifted_and_repair_restores_them(dbs: Databases) -> None:
    dbs.source.requests.insert_many(
        [make_request(lead=ObjectId()), make_request(lead=ObjectId(), attributes={})]
    )
    backfill(dbs)
    first = last = date(2026, 10, 14)
    assert verify.find_drift(dbs, first, last) == []
    assert verify.find_month_drift(dbs, first, last) == []
    dbs.usage_daily().update_one({"agent_id": BOT_1}, {"$set": {"users": 5}})
    (drift,) = verify.find_drift(dbs, first, last)
    assert (drift.expected["users"], drift.stored["users"]) == (1, 5)
    assert "users=1" in drift.describe() and "users=5" in drift.describe()
    dbs.usage_daily().update_one({"agent_id": BOT_1}, {"$set": {"users": 1, "users_hll": b""}})
    (drift,) = verify.find_drift(dbs, first, last)
    assert drift.sketch_differs and "sketch differs" in drift.describe()
    runner.run_backfill(dbs, first, last, NOW, lambda: NOW)
    assert verify.find_drift(dbs, first, last) == []
    level = dbs.level("usage_org_monthly")
    level.update_one({}, {"$set": {"users": 1}})
    assert verify.find_month_drift(dbs, first, last) == ["2026-10"]
    level.update_one({}, {"$set": {"users": 2, "users_hll": sketches.of_ids(["x"])}})
    assert verify.find_month_drift(dbs, first, last) == ["2026-10"]
    runner.verify_range(dbs, first, last, NOW, lambda: NOW, repair=True)
    assert verify.find_month_drift(dbs, first, last) == []


def test_a_rollup_stored_by_version_2_is_served_until_rebuilt_with_users(
    dbs: Databases,
) -> None:
    person = ObjectId()
    dbs.source.requests.insert_many([make_request(lead=person), make_request(lead=person)])
    # What version 2 stored: its definition, day rows and levels without users, the ledger.
    dbs.rollup[ledger.STATE].insert_one(
        {
            "_id": ledger.STATE_ID,
            "generation": 1,
            "definition": STORED_V2,
            "scan_from": None,
            "version": 0,
            "pending": None,
        }
    )
    row = make_row(str(ORG_A), BOT_1, "2026-10-14", 2, 10)
    dbs.usage_daily().insert_one(row)
    for level in lattice.LEVELS:
        derived = lattice.summarize([row], level)
        old = [{k: v for k, v in doc.items() if k not in ("users", "users_hll")} for doc in derived]
        dbs.level(level.collection).insert_many(old)
    stamp = {"run_id": None, "kind": "backfill", "read_started": NOW}
    stamp["fingerprint"] = STORED_V2["fingerprint"]
    ledger.stamp_days(dbs, 1, [date(2026, 10, 14)], stamp)
    state = ledger.read_state(dbs.rollup)
    assert state is not None and state.definition.fingerprint == STORED_V2["fingerprint"]
    report = status_report(dbs, dbs.settings, NOW, 5)
    assert report["generation"] == 1
    with pytest.raises(DefinitionMismatch, match="pipeline version: 2 -> 3; user fields: none"):
        runner.run_nightly(dbs, NOW, lambda: NOW)
    result = runner.run_rebuild(dbs, NOW, lambda: NOW)
    assert result.record["switched_to"] == 2
    (rebuilt,) = dbs.usage_daily(2).find()
    assert (rebuilt["conversations"], rebuilt["users"]) == (2, 1)
    assert bytes(rebuilt["users_hll"]) == sketches.of_ids([str(person)])
    assert [doc["users"] for doc in dbs.level("usage_org_monthly", 2).find()] == [1]


@pytest.mark.parametrize("seed", [11])
def test_unions_of_thousands_of_users_are_within_their_bounds(seed: int) -> None:
    """Buckets in estimation mode, each the union of a week of overlapping day sketches with
    a known number of distinct users (2,000 to 8,000)."""
    rng = random.Random(seed)
    errors, inside = [], 0
    buckets = 240
    for bucket in range(buckets):
        distinct = rng.randint(2_000, 8_000)
        ids = [f"{bucket}:{n}" for n in range(distinct)]
        step = distinct // 7
        # Day d holds two sevenths of the people, so everyone comes on one or two days.
        days = [ids[d * step : (d + 2) * step] for d in range(6)] + [ids[6 * step :]]
        estimate = sketches.union(sketches.of_ids(day) for day in days).estimate()
        errors.append(abs(estimate.value - distinct) / distinct)
        inside += estimate.low <= distinct <= estimate.high
    errors.sort()
    assert inside >= 0.9 * buckets
    # The documented 95 % interval, about ±2.6 % to ±3.3 % (see the README): nineteen
    # buckets in twenty are within 2.6 %, and none is off by more than four standard errors.
    assert errors[int(0.95 * buckets)] <= 0.026
    assert errors[-1] <= 4 * 0.0165
    assert errors[len(errors) // 2] <= 0.013


def test_the_sample_has_returning_users_a_few_shared_and_some_without_a_lead() -> None:
    spec = SampleSpec(organizations=6, internal=1, agents_per_org=3, per_day=300, days=30)
    made = sample.make_sample(spec)
    now = datetime(2026, 10, 20, 12, 0)
    docs = list(sample.generate_requests(made, spec, now))
    assert docs == list(sample.generate_requests(made, spec, now))
    days: dict[Any, set[date]] = {}
    agents: dict[Any, set[str]] = {}
    orgs: dict[Any, set[str]] = {}
    requester_only = neither = 0
    for doc in docs[:-12]:  # the malformed ones last
        if "lead" not in doc:
            requester_only += "requester" in doc
            neither += "requester" not in doc
            continue
        lead = doc["lead"]
        assert isinstance(lead, ObjectId)
        days.setdefault(lead, set()).add(doc["createdAt"].date())
        agents.setdefault(lead, set()).add(str(doc["attributes"].get("bot_id")))
        orgs.setdefault(lead, set()).add(str(doc["id_organization"]).lower())
    assert len(days) < 0.5 * len(docs)
    assert sum(len(seen) > 3 for seen in days.values()) > 0.1 * len(days)
    assert sum(len(seen) > 1 for seen in agents.values()) > 0.1 * len(agents)
    assert 0 < sum(len(seen) > 1 for seen in orgs.values()) < 0.02 * len(orgs)
    assert 0.01 * len(docs) < requester_only < 0.06 * len(docs)
    assert 0.005 * len(docs) < neither < 0.04 * len(docs)


def test_the_vanilla_sample_reuses_leads_within_a_project() -> None:
    spec = SampleSpec(organizations=3, internal=0, agents_per_org=2, per_day=200, days=20)
    made = sample.make_sample(spec)
    _, _, departments = vanilla_sample.projects_and_bots(made, spec.seed)
    generated = vanilla_sample.generate(made, departments, spec, datetime(2026, 10, 20))
    requests = [request for request, _ in generated][:-6]
    days: dict[Any, set[date]] = {}
    for request in requests:
        if "lead" in request:
            days.setdefault((request["id_project"], request["lead"]), set()).add(
                request["createdAt"].date()
            )
    assert len(days) < 0.5 * len(requests)
    assert sum(len(seen) > 1 for seen in days.values()) > 0.2 * len(days)
    assert sum("lead" not in request for request in requests) > 0


def hll_with_exceptions() -> bytes:
    """A sketch in register mode with entries in its exception table (as millions of users
    give): every part of the stored layout present."""
    sketch = datasketches.hll_sketch(sketches.LG_K, sketches.STORED_TYPE)
    for n in range(20_000):
        sketch.update(n)
    blob = bytes(sketch.serialize_compact())
    assert blob[7] & 3 == 2 and int.from_bytes(blob[36:40], "little") > 0
    return blob


def test_every_sketch_this_version_writes_is_well_formed_and_damage_is_refused() -> None:
    written = [sketches.of_ids(f"u{n}" for n in range(k)) for k in (1, 7, 300, 5000)]
    written.append(sketches.union(written).sketch())
    written.append(hll_with_exceptions())
    for blob in written:
        assert sketches.well_formed(blob)
        assert sketches.read(blob).get_estimate() > 0
    registers = hll_with_exceptions()
    token_without_exception = registers[:40] + b"\xff" + registers[41:]
    no_number = registers[:8] + struct.pack("<d", float("nan")) + registers[16:]
    absurd = registers[:8] + struct.pack("<d", 1.8e19) + registers[16:]
    high_floor = registers[:6] + bytes([40]) + registers[7:]
    coupons = b"".join(struct.pack("<I", (5 << 26) | n) for n in range(1, 65))
    long_list = bytes([2, 1, 7, sketches.LG_K, 3, 8, 64, 0]) + coupons  # room for 7
    loose_set = bytes([3, 1, 7, sketches.LG_K, 5, 0, 0, 1]) + struct.pack("<i", 32) + coupons[:128]
    for damaged in [
        b"garbage!",
        registers[:-4],
        token_without_exception,
        no_number,
        absurd,
        high_floor,
        long_list,
        loose_set,
        b"\x02\x01\x07",
    ]:
        assert not sketches.well_formed(damaged)
        with pytest.raises(sketches.UnreadableSketch, match=r"damaged .* verify --repair"):
            sketches.read(damaged)
        with pytest.raises(sketches.UnreadableSketch):
            sketches.union_and_part([([written[0], damaged], True)])


DAMAGE = """
import random, sys
from etl import sketches
from tests.test_users import hll_with_exceptions
rng = random.Random(int(sys.argv[1]))
written = [sketches.of_ids(f"u{n}" for n in range(k)) for k in (1, 7, 300, 5000)]
written.append(hll_with_exceptions())
outcomes = {"read": 0, "refused": 0}
for _ in range(3000):
    blob = bytearray(rng.choice(written))
    if rng.random() < 0.3:
        del blob[rng.randrange(1, len(blob)):]
    for _ in range(rng.randint(1, 6)):
        blob[rng.randrange(len(blob))] = rng.randrange(256)
    try:
        sketches.union([written[-1], bytes(blob)]).estimate()
        outcomes["read"] += 1
    except sketches.UnreadableSketch:
        outcomes["refused"] += 1
print(outcomes)
"""


@pytest.mark.parametrize("seed", [1, 2])
def test_damaged_sketches_are_refused_or_read_never_crash_the_process(seed: int) -> None:
    """The library reads what it is given: before the checks, some of these bytes ended the
    process with a segmentation fault."""
    done = subprocess.run(
        [sys.executable, "-c", DAMAGE, str(seed)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr[-2000:]
    outcomes = ast.literal_eval(done.stdout.strip())
    assert outcomes["read"] > 0 and outcomes["refused"] > 0


def test_a_damaged_day_sketch_fails_views_on_it_by_name_and_repair_mends_it(
    dbs: Databases,
) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.auth import create_key

    # Two days: the range's users are the union of the two rows' sketches.
    visits = [("ann", 13, 9), ("bob", 14, 9), ("ann", 14, 10)]
    dbs.source.requests.insert_many(
        [make_request(lead=lead, createdAt=datetime(2026, 10, d, h)) for lead, d, h in visits]
    )
    backfill(dbs)
    dbs.usage_daily().update_one({"day": "2026-10-14"}, {"$set": {"users_hll": b"garbage!"}})
    first, last = date(2026, 10, 12), date(2026, 10, 16)
    (drift,) = verify.find_drift(dbs, first, last)
    assert drift.sketch_differs
    assert verify.find_month_drift(dbs, first, last) == ["2026-10"]
    secret = create_key(dbs.rollup, "s", None, NOW)[1]
    path = f"/api/aggregations/usage?start=2026-10-12&end=2026-10-16&scope=org&org_id={ORG_A}"
    with TestClient(create_app(dbs), raise_server_exceptions=False) as client:
        answer = client.get(path, headers={"Authorization": f"Bearer {secret}"})
        assert answer.status_code == 500
        assert "cannot read" in answer.json()["detail"]
        runner.verify_range(dbs, first, last, NOW, lambda: NOW, repair=True)
        assert verify.find_drift(dbs, first, last) == []
        assert verify.find_month_drift(dbs, first, last) == []
        answer = client.get(path, headers={"Authorization": f"Bearer {secret}"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["total"]["totals"]["users"] == 2


def test_damaged_sketches_on_days_apart_in_one_month_are_repaired_in_one_run(
    dbs: Databases,
) -> None:
    dbs.source.requests.insert_many(
        [make_request(lead=f"p{d}", createdAt=datetime(2026, 10, d, 9)) for d in (12, 14, 16)]
    )
    backfill(dbs)
    for day in ("2026-10-12", "2026-10-16"):
        dbs.usage_daily().update_one({"day": day}, {"$set": {"users_hll": b"garbage!"}})
    first, last = date(2026, 10, 12), date(2026, 10, 16)
    drift = verify.find_drift(dbs, first, last)
    assert sorted(item.day for item in drift if item.unreadable) == ["2026-10-12", "2026-10-16"]
    assert "sketch is damaged" in drift[0].describe()
    found = runner.verify_range(dbs, first, last, NOW, lambda: NOW, repair=True)
    assert found.repair is not None
    assert found.repair.days == rollup.day_range(first, last)
    assert verify.find_drift(dbs, first, last) == []
    assert verify.find_month_drift(dbs, first, last) == []
    (month,) = dbs.level("usage_org_monthly").find()
    assert month["users"] == 3
    # Damaged outside the range verified: found through its month, and repaired all the same.
    dbs.usage_daily().update_one({"day": "2026-10-12"}, {"$set": {"users_hll": b"garbage!"}})
    later = date(2026, 10, 16)
    found = runner.verify_range(dbs, later, later, NOW, lambda: NOW, repair=True)
    assert (found.drift, found.months, found.damaged) == ([], ["2026-10"], [first])
    assert verify.find_drift(dbs, first, last) == []
    assert verify.find_month_drift(dbs, first, last) == []
