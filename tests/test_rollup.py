"""The rollup on the embedded server: what counts, where it counts, and replacing days."""

import contextlib
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId
from pymongo.errors import OperationFailure

from etl import rollup, runner
from etl.db import Databases, Doc
from etl.settings import Settings
from tests.factories import BOT_1, BOT_2, DROP, ORG_A, ORG_B, make_request

NOW = datetime(2026, 10, 20, 12, 0)
DAY = "2026-10-14"


def clock() -> datetime:
    return NOW


def backfill(dbs: Databases, first: str = DAY, last: str = DAY) -> runner.RunResult:
    return runner.run_backfill(dbs, date.fromisoformat(first), date.fromisoformat(last), NOW, clock)


def rows(dbs: Databases) -> list[dict[str, object]]:
    return list(dbs.usage_daily().find({}, sort=[("_id", 1)]))


def counts(dbs: Databases) -> dict[tuple[str, str, str], int]:
    return {(r["org_id"], r["agent_id"], r["day"]): r["conversations"] for r in rows(dbs)}


def test_attribution_uses_bot_id_never_participants_bots(dbs: Databases) -> None:
    dbs.source.requests.insert_many(
        [
            make_request(),  # bot_id present
            make_request(participantsBots=[], participantsAgents=["agent_1"]),  # handed off
            make_request(attributes={}, participantsBots=[f"bot_{BOT_2}"]),  # only participants
            make_request(attributes=DROP),  # no attributes
            make_request(attributes={"bot_id": ObjectId(BOT_2)}),  # ObjectId bot_id
        ]
    )
    backfill(dbs)
    org = str(ORG_A)
    assert counts(dbs) == {
        (org, BOT_1, DAY): 2,
        (org, "unattributed", DAY): 2,
        (org, BOT_2, DAY): 1,
    }
    bot_row = dbs.usage_daily().find_one({"agent_id": BOT_1})
    assert bot_row is not None
    assert (bot_row["messages"], bot_row["handoffs"]) == (10, 1)


@pytest.mark.parametrize(
    ("overrides", "billable"),
    [
        ({"depth": 2}, False),
        ({"depth": 3}, True),
        ({"isTestMode": DROP}, True),
        ({"isTestMode": False}, True),
        ({"isTestMode": True}, False),
        ({"status": 999}, False),
        ({"status": 1000}, True),
        ({"status": 200}, False),
    ],
)
def test_billable_filter_edges(
    dbs: Databases, overrides: dict[str, object], billable: bool
) -> None:
    dbs.source.requests.insert_one(make_request(**overrides))
    result = backfill(dbs)
    assert result.stats.conversations == (1 if billable else 0)
    assert len(rows(dbs)) == (1 if billable else 0)


@pytest.mark.parametrize(
    ("created_utc", "local_day"),
    [
        # Spring forward, 2026-03-08: the local day is 23 hours long (05:00Z to 04:00Z).
        (datetime(2026, 3, 8, 4, 59), "2026-03-07"),
        (datetime(2026, 3, 8, 5, 0), "2026-03-08"),
        (datetime(2026, 3, 9, 3, 59), "2026-03-08"),
        (datetime(2026, 3, 9, 4, 0), "2026-03-09"),
        # Fall back, 2026-11-01: the local day is 25 hours long (04:00Z to 05:00Z).
        (datetime(2026, 11, 1, 3, 59), "2026-10-31"),
        (datetime(2026, 11, 1, 4, 0), "2026-11-01"),
        (datetime(2026, 11, 2, 4, 59), "2026-11-01"),
        (datetime(2026, 11, 2, 5, 0), "2026-11-02"),
    ],
)
def test_day_boundaries_follow_daylight_saving(
    make_dbs: Callable[..., Databases], created_utc: datetime, local_day: str
) -> None:
    dbs = make_dbs(timezone="America/New_York")
    dbs.source.requests.insert_one(make_request(createdAt=created_utc))
    day = date.fromisoformat(local_day)
    after = datetime.combine(day + timedelta(days=2), NOW.time())  # the range is over
    runner.run_backfill(dbs, day - timedelta(days=1), day + timedelta(days=1), after, clock)
    assert [r["day"] for r in rows(dbs)] == [local_day]


def test_the_last_supported_day_is_built_once_it_has_begun(
    make_dbs: Callable[..., Databases],
) -> None:
    dbs = make_dbs(timezone="Pacific/Kiritimati")
    dbs.source.requests.insert_one(make_request(createdAt=datetime(9998, 12, 31, 0)))
    day = date(9998, 12, 31)  # 14:00 there
    noon = datetime(9998, 12, 31, 12)
    runner.run_backfill(dbs, day, day, noon, lambda: noon)
    assert [(r["day"], r["conversations"]) for r in rows(dbs)] == [("9998-12-31", 1)]


def test_rerunning_a_range_gives_identical_rows(dbs: Databases) -> None:
    dbs.source.requests.insert_many(
        [make_request(createdAt=datetime(2026, 10, d, h)) for d in (12, 13, 14) for h in (1, 9)]
    )
    backfill(dbs, "2026-10-10", "2026-10-16")
    first = rows(dbs)
    second_run = backfill(dbs, "2026-10-10", "2026-10-16")
    assert rows(dbs) == first
    assert len(first) == 3
    assert second_run.stats.rows_removed == 0


def test_a_vanished_group_is_removed(dbs: Databases) -> None:
    dbs.source.requests.insert_many([make_request(), make_request(id_organization=ORG_B)])
    backfill(dbs)
    assert len(rows(dbs)) == 2
    dbs.source.requests.update_one({"id_organization": ORG_B}, {"$set": {"isTestMode": True}})
    result = backfill(dbs)
    assert counts(dbs) == {(str(ORG_A), BOT_1, DAY): 1}
    assert (result.stats.rows_written, result.stats.rows_removed) == (1, 1)


def test_malformed_documents_are_skipped_by_reason(dbs: Databases) -> None:
    dbs.source.requests.insert_many(
        [
            make_request(),
            make_request(id_organization=DROP),
            make_request(id_organization="not-an-id"),
            make_request(id_organization=str(ORG_B) + "\n"),
            make_request(id_organization=str(ORG_B).upper()),  # a usable string id
            make_request(createdAt="2026-10-14T10:00:00"),
            make_request(createdAt=None),
            make_request(attributes="junk"),
            make_request(attributes=[{"bot_id": BOT_2}]),
            make_request(attributes={"bot_id": ""}),
            make_request(attributes={"bot_id": {"nested": 1}}),
            make_request(depth=10**12),
            make_request(depth="7"),  # not a number: not billable
            make_request(participantsAgents="agent_1"),  # not a list: no handoff
            make_request(depth=[7]),  # matches `depth > 2` as an array, but is no depth
            make_request(createdAt=[datetime(2026, 10, 14, 9)]),  # matches the range likewise
        ]
    )
    result = backfill(dbs)
    assert dict(result.stats.skipped) == {
        "no_organization": 3,
        "bad_created_at": 3,
        "bad_depth": 1,
        "depth_out_of_range": 1,
    }
    org_a = str(ORG_A)
    assert counts(dbs) == {
        (org_a, BOT_1, DAY): 2,
        (org_a, "unattributed", DAY): 4,
        (str(ORG_B), BOT_1, DAY): 1,
    }
    run = dbs.rollup.etl_runs.find_one({"_id": result.run_id})
    assert run is not None
    assert run["status"] == "ok"
    assert run["skipped"] == {
        "bad_created_at": 3,
        "bad_depth": 1,
        "depth_out_of_range": 1,
        "no_organization": 3,
    }
    assert run["filter"] == {"status": 1000, "depth_gt": 2, "exclude_test_mode": True}


def test_billable_filter_values_are_settings(make_dbs: Callable[..., Databases]) -> None:
    dbs = make_dbs(billable_min_depth=5, exclude_test_mode=False)
    dbs.source.requests.insert_many(
        [make_request(depth=5), make_request(depth=6), make_request(depth=6, isTestMode=True)]
    )
    assert backfill(dbs).stats.conversations == 2


def test_backfill_record_says_what_it_did(dbs: Databases, settings: Settings) -> None:
    dbs.source.requests.insert_many([make_request(), make_request(depth=9)])
    result = backfill(dbs, "2026-10-13", "2026-10-15")
    run = dbs.rollup.etl_runs.find_one({"_id": result.run_id})
    assert run is not None
    assert run["kind"] == "backfill"
    assert run["range"] == ["2026-10-13", "2026-10-15"]
    assert (run["days_recomputed"], run["rows_written"], run["conversations_counted"]) == (3, 1, 2)
    assert run["timezone"] == "UTC"
    assert run["finished_at"] == NOW
    assert dbs.usage_daily().find_one()["messages"] == 14


def monthly(dbs: Databases) -> dict[str, tuple[int, int, int]]:
    return {
        r["_id"]: (r["conversations"], r["messages"], r["handoffs"])
        for r in dbs.usage_monthly().find()
    }


def test_monthly_rows_follow_every_replacement_of_days(dbs: Databases) -> None:
    dbs.source.requests.insert_many(
        [
            make_request(createdAt=datetime(2026, 9, 30, 10)),
            make_request(createdAt=datetime(2026, 10, 1, 10), depth=4),
            make_request(createdAt=datetime(2026, 10, 2, 10), participantsAgents=["x"]),
            make_request(createdAt=datetime(2026, 10, 2, 11), id_organization=ORG_B),
        ]
    )
    backfill(dbs, "2026-09-28", "2026-10-03")
    a, b = str(ORG_A), str(ORG_B)
    assert monthly(dbs) == {
        f"{a}:{BOT_1}:2026-09": (1, 5, 0),
        f"{a}:{BOT_1}:2026-10": (2, 9, 1),
        f"{b}:{BOT_1}:2026-10": (1, 5, 0),
    }
    backfill(dbs, "2026-09-28", "2026-10-03")  # re-running changes nothing
    assert len(monthly(dbs)) == 3
    dbs.source.requests.update_many({"id_organization": ORG_B}, {"$set": {"isTestMode": True}})
    dbs.source.requests.update_many(
        {"createdAt": datetime(2026, 10, 1, 10)}, {"$set": {"depth": 9}}
    )
    backfill(dbs, "2026-10-01", "2026-10-01")
    backfill(dbs, "2026-10-02", "2026-10-02")
    assert monthly(dbs) == {
        f"{a}:{BOT_1}:2026-09": (1, 5, 0),
        f"{a}:{BOT_1}:2026-10": (2, 14, 1),
    }


def test_rollup_batches_never_cross_a_month() -> None:
    days = rollup.day_range(date.fromisoformat("2026-01-20"), date.fromisoformat("2026-03-05")) + [
        date.fromisoformat("2026-03-09"),
        date.fromisoformat("2026-03-10"),
    ]
    assert [(a.isoformat(), b.isoformat()) for a, b in rollup.batches(days)] == [
        ("2026-01-20", "2026-01-31"),
        ("2026-02-01", "2026-02-28"),
        ("2026-03-01", "2026-03-05"),
        ("2026-03-09", "2026-03-10"),
    ]
    assert (
        len(
            list(
                rollup.batches(
                    rollup.day_range(
                        date.fromisoformat("2026-01-01"), date.fromisoformat("2026-01-31")
                    ),
                    size=10,
                )
            )
        )
        == 4
    )


@pytest.mark.parametrize(
    ("rows", "bound", "groups"),
    [
        ([1, 1, 1], 10, [[0, 1, 2]]),
        ([4, 4, 4], 8, [[0, 1], [2]]),
        ([0, 0, 9, 0], 5, [[0, 1], [2], [3]]),  # a day over the bound stays whole, alone
        ([5, 5, 5], 5, [[0], [1], [2]]),
        ([], 5, []),
    ],
)
def test_transactions_are_sized_by_rows_and_never_split_a_day(
    rows: list[int], bound: int, groups: list[list[int]]
) -> None:
    days = [date(2026, 10, 1) + timedelta(days=n) for n in range(len(rows))]
    split = rollup.split_by_rows(days, rows, bound)
    assert [[days.index(day) for day in group] for group in split] == groups


def test_a_day_with_many_groups_is_replaced_whole_in_bounded_transactions(
    make_dbs: Callable[..., Databases],
) -> None:
    dbs = make_dbs(transaction_rows=50)
    orgs = [ObjectId() for _ in range(300)]  # 300 groups on one day, 3 on the next
    dbs.source.requests.insert_many([make_request(id_organization=org) for org in orgs])
    dbs.source.requests.insert_many(
        [make_request(createdAt=datetime(2026, 10, 15, 9), id_organization=org) for org in orgs[:3]]
    )
    result = backfill(dbs, "2026-10-13", "2026-10-16")
    assert result.stats.rows_written == 303
    assert dbs.usage_daily().count_documents({"day": DAY}) == 300
    assert dbs.level("usage_org_daily").count_documents({"day": DAY}) == 300
    (month,) = dbs.level("usage_org_monthly").aggregate(
        [{"$group": {"_id": None, "n": {"$sum": "$conversations"}}}]
    )
    assert month["n"] == 303
    dbs.source.requests.update_many({}, {"$set": {"isTestMode": True}})
    backfill(dbs, "2026-10-13", "2026-10-16")
    assert dbs.usage_daily().count_documents({}) == 0
    assert dbs.level("usage_org_daily").count_documents({}) == 0


class EndedBy:
    """A session that counts the transactions it starts."""

    def __init__(self) -> None:
        self.started = 0

    @contextlib.contextmanager
    def start_transaction(self) -> Iterator[None]:
        self.started += 1
        yield


def test_a_transaction_the_server_ended_is_not_retried_as_it_was() -> None:
    session = EndedBy()

    def write() -> None:
        raise OperationFailure("Given transaction number 4 does not match any", code=251)

    with pytest.raises(rollup.TransactionTooLong):
        rollup.in_transaction(session, write)  # type: ignore[arg-type]
    assert session.started == 2  # once more: a failover ends a transaction the same way

    def too_long() -> None:
        raise OperationFailure("transaction exceeded its lifetime", code=290)

    session = EndedBy()
    with pytest.raises(rollup.TransactionTooLong):
        rollup.in_transaction(session, too_long)  # type: ignore[arg-type]
    assert session.started == 1


def test_parts_the_server_ends_are_saved_again_in_halves_down_to_a_day() -> None:
    """A server that ends any transaction of more than two days: every day is saved once,
    in order, in parts of at most two days; a single day that cannot fit fails, named."""
    days = [date(2026, 10, 1) + timedelta(days=n) for n in range(7)]
    saved: list[list[date]] = []

    def save(part: list[date]) -> None:
        if len(part) > 2:
            raise rollup.TransactionTooLong("ended by the server")
        saved.append(part)

    rollup.save_in_parts([days[:5], days[5:]], save)
    assert [day for part in saved for day in part] == days
    assert [len(part) for part in saved] == [2, 1, 2, 2]

    def never(part: list[date]) -> None:
        raise rollup.TransactionTooLong("ended by the server")

    with pytest.raises(rollup.TransactionTooLong, match="replacing 2026-10-01 in one"):
        rollup.save_in_parts([days[:3]], never)


@pytest.mark.parametrize("long_in", [1, 200])
def test_rows_are_replaced_by_writing_only_those_that_differ(
    dbs: Databases, monkeypatch: pytest.MonkeyPatch, long_in: int
) -> None:
    """The rows a query matches become exactly the new rows; a stored row equal to its new
    one (binary fields read back as bytes) is not written again, the others are deleted (past
    LONG_IN, a list at a time) and inserted. With most changed or gone, all are deleted by
    the query and inserted."""
    from bson import Binary

    monkeypatch.setattr(rollup, "LONG_IN", long_in)
    stored = dbs.level("usage_org_monthly")
    sketch = Binary(b"\x01\x02")
    same = {"_id": "a", "month": "2026-09", "conversations": 1, "users_hll": sketch}
    alike = [{"_id": f"a{n}", "month": "2026-09", "conversations": n} for n in range(3)]
    changed = {"_id": "b", "month": "2026-09", "conversations": 2}
    stored.insert_many(
        [
            same,
            *alike,
            {**changed, "conversations": 1},
            {"_id": "c", "month": "2026-09", "conversations": 3},
            {"_id": "d", "month": "2026-09", "conversations": 4},
            {"_id": "x", "month": "2026-10", "conversations": 5},
        ]
    )
    inserted: list[str] = []
    deleted: list[object] = []
    collection = type(stored)
    real_insert, real_delete = collection.insert_many, collection.delete_many

    def insert_many(self: Any, rows: list[Doc], *args: Any, **kwargs: Any) -> Any:
        inserted.extend(row["_id"] for row in rows)
        return real_insert(self, rows, *args, **kwargs)

    def delete_many(self: Any, query: Doc, *args: Any, **kwargs: Any) -> Any:
        deleted.append(query)
        return real_delete(self, query, *args, **kwargs)

    monkeypatch.setattr(collection, "insert_many", insert_many)
    monkeypatch.setattr(collection, "delete_many", delete_many)
    new = {"_id": "e", "month": "2026-09", "conversations": 6}
    rows = [dict(same), *[dict(row) for row in alike], changed, new]
    rollup.replace_rows(stored, [{"month": "2026-09"}], rows, None)
    assert sorted(stored.find(), key=lambda row: row["_id"]) == [
        {**same, "users_hll": b"\x01\x02"},
        *alike,
        changed,
        new,
        {"_id": "x", "month": "2026-10", "conversations": 5},
    ]
    assert sorted(inserted) == ["b", "e"]
    # The changed row and the two gone: by their ids, LONG_IN at a time.
    ids = ["b", "c", "d"]
    assert deleted == [{"_id": {"$in": ids[at : at + long_in]}} for at in range(0, 3, long_in)]
    inserted.clear()
    deleted.clear()
    most = [{**row, "conversations": 9} for row in rows[:4]]
    rollup.replace_rows(stored, [{"month": "2026-09"}], most, None)
    assert deleted == [{"month": "2026-09"}]
    assert sorted(inserted) == sorted(row["_id"] for row in most)
    assert sorted(stored.find(), key=lambda row: row["_id"]) == [
        {**row, "users_hll": b"\x01\x02"} if "users_hll" in row else row for row in most
    ] + [{"_id": "x", "month": "2026-10", "conversations": 5}]
    rollup.replace_rows(stored, [{"month": "2026-09"}], [], None)
    assert [row["_id"] for row in stored.find()] == ["x"]
