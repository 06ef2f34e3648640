"""Sequences found in review: repairs and crashes that must leave every level exact."""

from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

import pytest

from etl import lattice, runner
from etl.db import USAGE_ORG_DAILY, Databases, connect
from tests.factories import BOT_1, BOT_2, ORG_A, ORG_B, make_request, staff_query

NOW = datetime(2026, 10, 20, 3, 0)


def at(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


def seed(dbs: Databases) -> None:
    docs = [
        make_request(
            createdAt=datetime(2026, 10, day, 10), id_organization=org, attributes={"bot_id": bot}
        )
        for day in (2, 3, 5, 9)
        for org in (ORG_A, ORG_B)
        for bot in (BOT_1, BOT_2)
    ]
    dbs.source.requests.insert_many(docs)


def level_rows(dbs: Databases, base: str) -> dict[str, tuple[int, int, int]]:
    return {
        row["_id"]: (row["conversations"], row["messages"], row["handoffs"])
        for row in dbs.level(base, 1).find()
    }


def derived(dbs: Databases, level: lattice.Level) -> dict[str, tuple[int, int, int]]:
    rows = list(dbs.usage_daily(1).find())
    return {
        row["_id"]: (row["conversations"], row["messages"], row["handoffs"])
        for row in lattice.summarize(rows, level)
    }


def test_repair_fixes_an_organization_day_drift_in_a_month_whose_other_day_drifted(
    dbs: Databases,
) -> None:
    seed(dbs)
    runner.run_backfill(dbs, date(2026, 10, 1), date(2026, 10, 19), NOW, at(NOW))
    # Two drifts in October: an organization-by-day row on the 2nd, a day row on the 9th.
    dbs.level(USAGE_ORG_DAILY, 1).update_one({"day": "2026-10-02"}, {"$inc": {"conversations": 5}})
    dbs.usage_daily(1).update_one({"day": "2026-10-09"}, {"$inc": {"conversations": 7}})
    found = runner.verify_range(
        dbs, date(2026, 10, 1), date(2026, 10, 19), NOW, at(NOW), repair=True
    )
    assert found.repair is not None
    again = runner.verify_range(dbs, date(2026, 10, 1), date(2026, 10, 19), NOW, at(NOW))
    assert (again.drift, again.months) == ([], [])
    assert level_rows(dbs, USAGE_ORG_DAILY) == derived(dbs, lattice.ORG_DAILY)


def test_without_transactions_a_month_repair_cut_short_is_redone_whole_by_the_next_run(
    make_dbs: Callable[..., Databases], monkeypatch: pytest.MonkeyPatch
) -> None:
    made = make_dbs()
    dbs = connect(made.settings, made.uri, transactions=False)
    try:
        seed(dbs)
        runner.run_backfill(dbs, date(2026, 10, 1), date(2026, 10, 19), NOW, at(NOW))
        runner.run_nightly(dbs, NOW, at(NOW))
        # Month totals drift: verify --repair re-derives October without recomputing a day.
        dbs.usage_monthly(1).update_one({}, {"$inc": {"conversations": 3}})
        summarize = lattice.summarize

        def crash(rows: Any, level: lattice.Level) -> list[Any]:
            if level is lattice.ORG_DAILY:
                raise KeyboardInterrupt  # the writer dies after deleting the month's rows
            return summarize(rows, level)

        monkeypatch.setattr(lattice, "summarize", crash)
        with pytest.raises(KeyboardInterrupt):
            runner.verify_range(
                dbs, date(2026, 10, 1), date(2026, 10, 19), NOW, at(NOW), repair=True
            )
        monkeypatch.setattr(lattice, "summarize", summarize)
        later = NOW + timedelta(days=1)
        runner.run_nightly(dbs, later, at(later))
        assert level_rows(dbs, USAGE_ORG_DAILY) == derived(dbs, lattice.ORG_DAILY)
    finally:
        dbs.close()


def test_a_rollup_from_before_the_lattice_shows_its_organizations_until_rebuilt(
    dbs: Databases,
) -> None:
    from api.usage import UsageService

    # What the previous release left: day and month rows, no organization levels, no state.
    row = {"org_id": str(ORG_A), "agent_id": BOT_1, "conversations": 9, "messages": 45}
    dbs.usage_daily().insert_one({"_id": "a", "day": "2026-09-08", **row, "handoffs": 0})
    dbs.usage_monthly().insert_one({"_id": "b", "month": "2026-09", **row, "handoffs": 0})
    query = staff_query(dbs.settings, "platform", "2026-09-01", "2026-09-30")
    org_query = staff_query(dbs.settings, "org", "2026-09-01", "2026-09-30", org_id=str(ORG_A))
    service = UsageService(dbs, 0)
    assert service.report(org_query)["total"]["totals"]["conversations"] == 9
    assert service.report(query)["total"]["totals"]["conversations"] == 9
