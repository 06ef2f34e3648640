"""Nightly runs: the lookback window, late closes, missed nights, the lock and verify."""

from datetime import date, datetime, timedelta

import pytest

from etl import rollup, runner, runs, verify
from etl.db import Databases
from tests.factories import BOT_1, ORG_A, make_request


def nightly(dbs: Databases, now: datetime) -> runner.RunResult:
    return runner.run_nightly(dbs, now, lambda: now)


def days_of(result: runner.RunResult) -> list[str]:
    return [day.isoformat() for day in result.days]


def test_first_nightly_recomputes_the_lookback_window_and_today(dbs: Databases) -> None:
    result = nightly(dbs, datetime(2026, 10, 20, 2, 15))
    assert days_of(result) == ["2026-10-17", "2026-10-18", "2026-10-19", "2026-10-20"]
    assert runs.data_through(dbs.rollup) == date(2026, 10, 19)


def test_late_close_of_an_old_conversation_is_picked_up(dbs: Databases) -> None:
    created = datetime(2026, 10, 1, 9, 0)
    dbs.source.requests.insert_one(make_request(createdAt=created, status=200, updatedAt=created))
    first = datetime(2026, 10, 12, 2, 0)
    runner.run_backfill(dbs, date(2026, 9, 30), date(2026, 10, 11), first, lambda: first)
    nightly(dbs, first)
    dbs.source.requests.update_one(
        {}, {"$set": {"status": 1000, "updatedAt": first + timedelta(hours=5)}}
    )
    result = nightly(dbs, datetime(2026, 10, 13, 2, 0))
    assert "2026-10-01" in days_of(result)
    assert "2026-09-30" not in days_of(result)
    row = dbs.usage_daily().find_one({"day": "2026-10-01"})
    assert row is not None and row["conversations"] == 1
    run = dbs.rollup.etl_runs.find_one({"_id": result.run_id})
    assert run is not None and run["changed_days"] == ["2026-10-01"]


def test_missed_nights_are_caught_up(make_dbs: object) -> None:
    dbs = make_dbs(lookback_days=1)
    nightly(dbs, datetime(2026, 10, 10, 2, 0))
    # The job did not run for five nights; a conversation was created meanwhile.
    dbs.source.requests.insert_one(make_request(createdAt=datetime(2026, 10, 12, 15, 0)))
    result = nightly(dbs, datetime(2026, 10, 16, 2, 0))
    assert days_of(result) == [f"2026-10-{d}" for d in range(10, 17)]
    assert dbs.usage_daily().count_documents({"day": "2026-10-12"}) == 1
    assert runs.data_through(dbs.rollup) == date(2026, 10, 15)


def test_a_second_run_is_refused_while_the_lock_is_held(dbs: Databases) -> None:
    now = datetime(2026, 10, 20, 2, 0)
    holder = runs.Lease(dbs.rollup, "other-host:1:abc", 300)
    holder.acquire(now)
    with pytest.raises(runs.LockBusy, match="another rollup is running"):
        nightly(dbs, now)
    assert dbs.rollup.etl_runs.count_documents({}) == 0


def test_an_expired_lease_is_taken_over_and_its_run_marked_abandoned(dbs: Databases) -> None:
    crashed = datetime(2026, 10, 20, 2, 0)
    lease = runs.Lease(dbs.rollup, "dead-host:1:abc", 60)
    lease.acquire(crashed)
    runs.start_run(dbs.rollup, {"kind": "nightly", "holder": lease.holder, "started_at": crashed})
    later = crashed + timedelta(minutes=2)
    nightly(dbs, later)
    statuses = {run["holder"]: run["status"] for run in dbs.rollup.etl_runs.find()}
    assert statuses.pop("dead-host:1:abc") == "abandoned"
    assert list(statuses.values()) == ["ok"]
    assert runs.current_lock(dbs.rollup) is None


def test_a_failed_run_is_recorded_and_keeps_earlier_rows(dbs: Databases) -> None:
    now = datetime(2026, 10, 20, 2, 0)
    dbs.source.requests.insert_one(make_request(createdAt=datetime(2026, 10, 19, 8, 0)))
    nightly(dbs, now)
    before = list(dbs.usage_daily().find())

    def broken(ctx: runner.RunContext) -> runner.Work:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        runner.execute(dbs, "nightly", now, lambda: now, broken)
    assert list(dbs.usage_daily().find()) == before
    assert runs.current_lock(dbs.rollup) is None


def test_an_interrupted_backfill_is_recorded_failed_and_days_stay_whole(dbs: Databases) -> None:
    now = datetime(2026, 10, 20, 2, 0)
    first, last = date(2026, 9, 25), date(2026, 10, 8)
    for day in rollup.day_range(first, last):
        dbs.source.requests.insert_one(
            make_request(createdAt=datetime(day.year, day.month, day.day, 8))
        )
    runner.run_backfill(dbs, first, last, now, lambda: now)
    dbs.source.requests.update_many({}, {"$set": {"depth": 7}})

    def interrupt(days: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.run_backfill(dbs, first, last, now, lambda: now, interrupt)
    failed = dbs.rollup.etl_runs.find_one({"status": "failed"})
    assert failed is not None and failed["error"] == "interrupted"
    messages = {r["day"]: r["messages"] for r in dbs.usage_daily().find()}
    # The first batch (the September days) was replaced whole; October kept its earlier rows.
    assert messages == {
        day.isoformat(): 7 if day.month == 9 else 5 for day in rollup.day_range(first, last)
    }
    assert runs.current_lock(dbs.rollup) is None


def test_verify_finds_drift_and_repair_fixes_exactly_those_days(dbs: Databases) -> None:
    now = datetime(2026, 10, 20, 2, 0)
    for day in (5, 6, 7):
        dbs.source.requests.insert_one(make_request(createdAt=datetime(2026, 10, day, 8, 0)))
    runner.run_backfill(dbs, date(2026, 10, 1), date(2026, 10, 10), now, lambda: now)
    assert verify.find_drift(dbs, date(2026, 10, 1), date(2026, 10, 10)) == []
    dbs.source.requests.delete_one({"createdAt": datetime(2026, 10, 6, 8, 0)})
    dbs.usage_daily().update_one({"day": "2026-10-07"}, {"$set": {"messages": 99}})
    drift = verify.find_drift(dbs, date(2026, 10, 1), date(2026, 10, 10))
    assert [(d.day, d.expected, d.stored["messages"]) for d in drift] == [
        ("2026-10-06", {}, 5),
        ("2026-10-07", {"conversations": 1, "messages": 5, "handoffs": 0, "users": 0}, 99),
    ]
    result = runner.run_repair(dbs, verify.drifted_days(drift), now, lambda: now)
    assert days_of(result) == ["2026-10-06", "2026-10-07"]
    assert verify.find_drift(dbs, date(2026, 10, 1), date(2026, 10, 10)) == []
    assert sorted(r["day"] for r in dbs.usage_daily().find()) == ["2026-10-05", "2026-10-07"]
    assert {r["agent_id"] for r in dbs.usage_daily().find()} == {BOT_1}
    assert {r["org_id"] for r in dbs.usage_daily().find()} == {str(ORG_A)}


def test_repair_of_drifted_months_that_are_not_adjacent_leaves_every_month_exact(
    dbs: Databases,
) -> None:
    now = datetime(2026, 10, 20, 2, 0)
    created = [datetime(2026, month, day, 8, 0) for month in (7, 8, 9) for day in (5, 6)]
    dbs.source.requests.insert_many([make_request(createdAt=at) for at in created])
    runner.run_backfill(dbs, date(2026, 7, 1), date(2026, 9, 30), now, lambda: now)
    first, last = date(2026, 7, 1), date(2026, 9, 30)
    assert verify.find_month_drift(dbs, first, last) == []
    dbs.usage_monthly().update_many(
        {"month": {"$in": ["2026-07", "2026-09"]}}, {"$inc": {"conversations": 1}}
    )
    dbs.usage_monthly().insert_one(
        {
            "_id": "x",
            "org_id": "x",
            "agent_id": "y",
            "month": "2026-09",
            "conversations": 1,
            "messages": 1,
            "handoffs": 0,
        }
    )
    assert verify.find_month_drift(dbs, first, last) == ["2026-07", "2026-09"]
    found = runner.verify_range(dbs, first, last, now, lambda: now, repair=True)
    assert found.drift == [] and found.months == ["2026-07", "2026-09"]
    assert found.repair is not None
    run = dbs.rollup.etl_runs.find_one({"_id": found.repair.run_id})
    assert run is not None and run["kind"] == "repair" and run["status"] == "ok"
    assert run["repaired_months"] == ["2026-07", "2026-09"]
    assert verify.find_month_drift(dbs, first, last) == []
    # Two conversations of depth 5 per month, counted independently of the rollup.
    assert {
        r["month"]: (r["conversations"], r["messages"]) for r in dbs.usage_monthly().find()
    } == {
        "2026-07": (2, 10),
        "2026-08": (2, 10),
        "2026-09": (2, 10),
    }
