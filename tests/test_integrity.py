"""Sequences of runs on the embedded server: every stored number traces to one definition and
to the latest source, whatever ran before. Expected numbers are counted from the documents
the tests insert, never from the code under test."""

from collections.abc import Callable
from datetime import date, datetime, timedelta

import pytest
from bson import Decimal128, ObjectId

from api.usage import UsageQuery, UsageService
from etl import jobs, ledger, runner, runs, verify
from etl.db import Databases, connect
from etl.definition import DefinitionMismatch
from etl.settings import get_settings
from tests.commands import env_for, one_line, usage
from tests.factories import BOT_1, ORG_A, make_request, staff_query

T0 = datetime(2026, 10, 12, 2, 0)  # the first run of each sequence
AFTER = datetime(2026, 11, 1, 2, 0)  # when October is over


def month_query(dbs: Databases, scope: str, first: str, last: str) -> UsageQuery:
    return staff_query(
        dbs.settings, scope, first, last, org_id=str(ORG_A) if scope == "org" else None
    )


def at(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


def nightly(dbs: Databases, now: datetime) -> runner.RunResult:
    return runner.run_nightly(dbs, now, at(now))


def backfill(dbs: Databases, first: str, last: str, now: datetime = T0) -> runner.RunResult:
    return runner.run_backfill(
        dbs, date.fromisoformat(first), date.fromisoformat(last), now, at(now)
    )


def conversations(dbs: Databases, generation: int | None = None) -> dict[str, int]:
    """Billable conversations per day, as stored in the served generation."""
    if generation is None:
        state = ledger.read_state(dbs.rollup)
        generation = state.generation if state else 1
    totals: dict[str, int] = {}
    for row in dbs.usage_daily(generation).find():
        totals[row["day"]] = totals.get(row["day"], 0) + row["conversations"]
    return totals


def monthly(dbs: Databases, generation: int = 1) -> dict[str, int]:
    totals: dict[str, int] = {}
    for row in dbs.usage_monthly(generation).find():
        totals[row["month"]] = totals.get(row["month"], 0) + row["conversations"]
    return totals


def insert_open(dbs: Databases, day: datetime, **fields: object) -> None:
    """A conversation of `day`, still open (status 200), last touched that day."""
    dbs.source.requests.insert_one(make_request(createdAt=day, status=200, updatedAt=day, **fields))


def close(dbs: Databases, created: datetime, when: datetime) -> None:
    dbs.source.requests.update_one(
        {"createdAt": created}, {"$set": {"status": 1000, "updatedAt": when}}
    )


def test_a_change_after_a_backfill_is_picked_up_by_the_first_nightly_run(dbs: Databases) -> None:
    old, flipped = datetime(2026, 9, 3, 9), datetime(2026, 9, 4, 9)
    insert_open(dbs, old)
    dbs.source.requests.insert_one(make_request(createdAt=flipped, updatedAt=flipped))
    backfill(dbs, "2026-09-01", "2026-10-11")
    assert conversations(dbs) == {"2026-09-04": 1}
    later = T0 + timedelta(hours=6)
    close(dbs, old, later)
    dbs.source.requests.update_one(
        {"createdAt": flipped}, {"$set": {"isTestMode": True, "updatedAt": later}}
    )
    result = nightly(dbs, T0 + timedelta(days=1))
    assert conversations(dbs) == {"2026-09-03": 1}
    assert monthly(dbs) == {"2026-09": 1}
    assert {"2026-09-03", "2026-09-04"} <= {day.isoformat() for day in result.days}


def test_older_days_backfilled_after_nightly_runs_follow_later_changes(dbs: Databases) -> None:
    nightly(dbs, T0)
    old = datetime(2026, 8, 20, 9)
    insert_open(dbs, old)
    backfill(dbs, "2026-08-01", "2026-08-31", T0 + timedelta(hours=1))
    close(dbs, old, T0 + timedelta(hours=3))
    nightly(dbs, T0 + timedelta(days=1))
    assert conversations(dbs) == {"2026-08-20": 1}
    assert monthly(dbs) == {"2026-08": 1}


def test_a_change_after_a_repair_is_picked_up(dbs: Databases) -> None:
    day = datetime(2026, 9, 10, 9)
    dbs.source.requests.insert_one(make_request(createdAt=day, updatedAt=day))
    backfill(dbs, "2026-09-01", "2026-09-30")
    nightly(dbs, T0)
    dbs.usage_daily().update_one({"day": "2026-09-10"}, {"$set": {"conversations": 7}})
    found = runner.verify_range(dbs, date(2026, 9, 1), date(2026, 9, 30), T0, at(T0), repair=True)
    assert found.repair is not None and [d.isoformat() for d in found.repair.days] == ["2026-09-10"]
    insert_open(dbs, datetime(2026, 9, 10, 11))
    close(dbs, datetime(2026, 9, 10, 11), T0 + timedelta(hours=2))
    nightly(dbs, T0 + timedelta(days=1))
    assert conversations(dbs) == {"2026-09-10": 2}
    assert verify.find_drift(dbs, date(2026, 9, 1), date(2026, 9, 30)) == []


def test_a_change_on_a_day_never_computed_is_reported_not_computed(dbs: Databases) -> None:
    backfill(dbs, "2026-09-01", "2026-10-11")
    nightly(dbs, T0)
    outside = datetime(2026, 3, 5, 9)
    insert_open(dbs, outside)
    close(dbs, outside, T0 + timedelta(hours=4))
    result = nightly(dbs, T0 + timedelta(days=1))
    assert "2026-03-05" not in conversations(dbs)
    assert ledger.first_day(dbs, 1) == date(2026, 9, 1)
    record = dbs.rollup.etl_runs.find_one({"_id": result.run_id})
    assert record is not None
    assert (record["changed_uncovered_days"], record["changed_uncovered"]) == (1, ["2026-03-05"])
    backfill(dbs, "2026-03-01", "2026-03-31", T0 + timedelta(days=1, hours=1))
    assert conversations(dbs)["2026-03-05"] == 1
    cover = ledger.coverage(dbs, 1)
    assert cover.first == date(2026, 3, 1)
    assert cover.gaps == [(date(2026, 4, 1), date(2026, 8, 31))]


def test_a_changed_definition_is_refused_then_rebuilt_into_a_new_generation(
    make_dbs: Callable[..., Databases],
) -> None:
    utc = make_dbs()
    # 23:30 UTC on Sep 30 is still Sep 30 in UTC, and 19:30 in New York: the same day there;
    # 02:30 UTC on Oct 1 is Sep 30 in New York.
    created = [
        datetime(2026, 9, 30, 23, 30),
        datetime(2026, 10, 1, 2, 30),
        datetime(2026, 10, 2, 12),
    ]
    utc.source.requests.insert_many([make_request(createdAt=c, updatedAt=c) for c in created])
    backfill(utc, "2026-09-01", "2026-10-11")
    assert conversations(utc) == {"2026-09-30": 1, "2026-10-01": 1, "2026-10-02": 1}
    before = list(utc.usage_daily().find(sort=[("_id", 1)]))
    runs_before = utc.rollup.etl_runs.count_documents({})

    ny = make_dbs(
        timezone="America/New_York",
        source_db=utc.settings.source_db,
        rollup_db=utc.settings.rollup_db_name,
    )
    for attempt in (
        lambda: nightly(ny, T0),
        lambda: backfill(ny, "2026-09-01", "2026-09-02"),
        lambda: runner.run_repair(ny, [date(2026, 9, 30)], T0, at(T0)),
        lambda: runner.verify_range(ny, date(2026, 9, 1), date(2026, 9, 30), T0, at(T0)),
    ):
        with pytest.raises(DefinitionMismatch, match="timezone: UTC -> America/New_York"):
            attempt()
    cli = usage("rollup", env=env_for(ny, USAGE_TIMEZONE="America/New_York"))
    assert cli.returncode == 2
    assert "timezone: UTC -> America/New_York" in one_line(cli.stderr)
    assert list(utc.usage_daily().find(sort=[("_id", 1)])) == before
    assert utc.rollup.etl_runs.count_documents({}) == runs_before

    result = runner.run_rebuild(ny, T0, at(T0))
    assert (result.record["switched_from"], result.record["switched_to"]) == (1, 2)
    assert conversations(ny) == {"2026-09-30": 2, "2026-10-02": 1}
    assert monthly(ny, 2) == {"2026-09": 2, "2026-10": 1}
    assert list(utc.usage_daily(1).find(sort=[("_id", 1)])) == before  # the old generation
    clean = make_dbs(timezone="America/New_York", source_db=utc.settings.source_db)
    backfill(clean, "2026-09-01", "2026-10-11")
    assert list(ny.usage_daily(2).find(sort=[("_id", 1)])) == list(
        clean.usage_daily(1).find(sort=[("_id", 1)])
    )
    found = runner.verify_range(ny, date(2026, 9, 1), date(2026, 10, 11), T0, at(T0))
    assert (found.drift, found.months, found.uncovered) == ([], [], [])
    nightly(ny, T0 + timedelta(days=1))  # the new definition is now the stored one
    assert ledger.read_state(ny.rollup).definition.timezone == "America/New_York"


def test_a_rebuild_into_a_zone_behind_never_serves_a_day_that_is_not_over_there(
    make_dbs: Callable[..., Databases],
) -> None:
    """02:45 UTC is 22:45 the day before in New York: the UTC rollup's yesterday is New
    York's today, and its today has not begun there."""
    utc = make_dbs()
    now = datetime(2026, 10, 12, 2, 45)
    utc.source.requests.insert_many(
        [make_request(createdAt=datetime(2026, 10, d, 15), updatedAt=now) for d in (10, 11)]
    )
    backfill(utc, "2026-10-01", "2026-10-11", now)
    nightly(utc, now)
    assert ledger.read_state(utc.rollup).complete_through == date(2026, 10, 11)
    assert date(2026, 10, 12) in ledger.covered_days(utc, 1)
    ny = make_dbs(
        timezone="America/New_York",
        source_db=utc.settings.source_db,
        rollup_db=utc.settings.rollup_db_name,
    )
    # It switches after midnight in New York: what it read of the 11th is still not whole.
    runner.run_rebuild(ny, now, at(now + timedelta(minutes=85)))
    state = ledger.read_state(ny.rollup)
    assert state.generation == 2
    assert ledger.data_through(ny, state) == date(2026, 10, 10)
    assert max(ledger.covered_days(ny, 2)) == date(2026, 10, 11)  # New York's today so far
    assert conversations(ny) == {"2026-10-10": 1, "2026-10-11": 1}


def test_an_interrupted_rebuild_keeps_serving_the_old_generation_and_finishes_when_rerun(
    make_dbs: Callable[..., Databases],
) -> None:
    old = make_dbs()
    for month in (7, 8, 9):
        old.source.requests.insert_many(
            [make_request(createdAt=datetime(2026, month, 10, 9), depth=d) for d in (3, 4)]
        )
    backfill(old, "2026-07-01", "2026-09-30")
    deeper = make_dbs(
        billable_min_depth=3,
        source_db=old.settings.source_db,
        rollup_db=old.settings.rollup_db_name,
    )
    service = UsageService(deeper, 0)

    def served_total() -> tuple[int, int]:
        query = month_query(deeper, "platform", "2026-07-01", "2026-09-30")
        body = service.report(query)
        return body["generation"], body["total"]["totals"]["conversations"]

    assert served_total() == (1, 6)
    batches_done = 0

    def stop_after_one_batch(days: int) -> None:
        nonlocal batches_done
        batches_done += 1
        if batches_done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.run_rebuild(deeper, T0, at(T0), progress=stop_after_one_batch)
    assert served_total() == (1, 6)  # the old generation, with its exact numbers
    state = ledger.read_state(deeper.rollup)
    assert state is not None and state.pending is not None and state.pending.generation == 2
    # Meanwhile a July conversation, already built into the new generation, changes.
    later = T0 + timedelta(hours=1)
    deeper.source.requests.update_one(
        {"createdAt": datetime(2026, 7, 10, 9), "depth": 3},
        {"$set": {"depth": 5, "updatedAt": later}},
    )
    result = runner.run_rebuild(deeper, later, at(later + timedelta(hours=1)))
    assert result.record["resumed"] is True
    # July 10 is built again for its change; the rest of July and August are not.
    months = [d.isoformat()[:7] for d in result.days]
    assert "2026-08" not in months and [d for d in result.days if d.month == 7] == [
        date(2026, 7, 10)
    ]
    assert served_total() == (2, 4)  # depths 4, 4, 4 and the changed 5
    assert monthly(deeper, 2) == {"2026-07": 2, "2026-08": 1, "2026-09": 1}
    found = runner.verify_range(deeper, date(2026, 7, 1), date(2026, 9, 30), T0, at(T0))
    assert (found.drift, found.months) == ([], [])


def test_without_transactions_a_day_left_dirty_is_recomputed_and_the_run_says_so(
    make_dbs: Callable[..., Databases],
) -> None:
    base = make_dbs()
    plain = connect(base.settings, base.uri, transactions=False)
    try:
        day = datetime(2026, 7, 4, 9)
        plain.source.requests.insert_one(make_request(createdAt=day, updatedAt=day))
        result = backfill(plain, "2026-07-01", "2026-07-31")
        record = plain.rollup.etl_runs.find_one({"_id": result.run_id})
        assert record is not None and record["transactions"] is False
        assert "transactions" in record["note"]
        # A writer died between marking the day and writing it: rows wrong, month wrong.
        ledger.mark_dirty(plain, 1, [date(2026, 7, 4)], "dead-run")
        plain.usage_daily().update_many({}, {"$set": {"conversations": 40}})
        plain.usage_monthly().update_many({}, {"$set": {"conversations": 40}})
        nightly(plain, T0)
        assert conversations(plain) == {"2026-07-04": 1}
        assert monthly(plain) == {"2026-07": 1}
        assert ledger.dirty_days(plain, 1) == []
    finally:
        plain.close()


def test_the_scheduler_job_learns_the_server_and_uses_transactions(
    dbs: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env_for(dbs).items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        jobs.nightly_rollup()
    finally:
        get_settings.cache_clear()
    record = runs.last_ok_run(dbs.rollup, "nightly")
    assert record is not None and record["transactions"] is True
    assert "note" not in record


def test_agent_ids_are_one_agent_whatever_their_letter_case(dbs: Databases) -> None:
    dbs.source.requests.insert_many(
        [
            make_request(attributes={"bot_id": BOT_1}),
            make_request(attributes={"bot_id": BOT_1.upper()}),
            make_request(attributes={"bot_id": ObjectId(BOT_1)}),
        ]
    )
    backfill(dbs, "2026-10-14", "2026-10-14", AFTER)
    assert [(r["agent_id"], r["conversations"]) for r in dbs.usage_daily().find()] == [(BOT_1, 3)]


@pytest.mark.parametrize(
    ("depth", "counted"),
    [
        (3, (1, 3)),
        (2.5, None),
        (3.0, (1, 3)),
        (Decimal128("2.9"), None),
        (Decimal128("4"), (1, 4)),
        (7.25, None),
    ],
)
def test_depths_that_are_not_whole_numbers_are_skipped_as_bad_depth(
    dbs: Databases, depth: object, counted: tuple[int, int] | None
) -> None:
    dbs.source.requests.insert_one(make_request(depth=depth))
    result = backfill(dbs, "2026-10-14", "2026-10-14", AFTER)
    stored = [(r["conversations"], r["messages"]) for r in dbs.usage_daily().find()]
    if counted is None:
        assert stored == [] and dict(result.stats.skipped) == {"bad_depth": 1}
    else:
        assert stored == [counted] and dict(result.stats.skipped) == {}


def test_a_response_is_cached_under_what_was_served_when_it_was_computed(dbs: Databases) -> None:
    dbs.source.requests.insert_one(make_request())
    backfill(dbs, "2026-10-01", "2026-10-31", AFTER)
    service = UsageService(dbs, 0)
    query = month_query(dbs, "org", "2026-10-01", "2026-10-31")
    seen = service.served()
    # A run finishes between reading what is served and computing the response.
    dbs.source.requests.insert_one(make_request())
    backfill(dbs, "2026-10-14", "2026-10-14", AFTER + timedelta(hours=1))
    body = service.report_json(query, seen)
    key = ("k", b"q", date(2026, 11, 1))
    service.remember(key, seen, body)
    now_served = service.served()
    assert now_served.token != seen.token
    assert service.cached(key, now_served) is None  # never the older token's body
    fresh = service.report(query, now_served)
    assert fresh["total"]["totals"]["conversations"] == 2
    assert fresh["data_from"] == "2026-10-01" and fresh["generation"] == 1


def test_a_rollup_from_before_definitions_is_adopted_and_must_be_rebuilt_once(
    dbs: Databases,
) -> None:
    day = datetime(2026, 9, 10, 9)
    dbs.source.requests.insert_one(make_request(createdAt=day, updatedAt=day))
    # What an earlier version left: rows and run records, no state, no ledger.
    dbs.usage_daily().insert_one(
        {
            "_id": f"{ORG_A}:{BOT_1}:2026-09-08",
            "org_id": str(ORG_A),
            "agent_id": BOT_1,
            "day": "2026-09-08",
            "conversations": 9,
            "messages": 45,
            "handoffs": 0,
        }
    )
    dbs.usage_daily().insert_one(
        {
            "_id": f"{ORG_A}:{BOT_1}:2026-09-12",
            "org_id": str(ORG_A),
            "agent_id": BOT_1,
            "day": "2026-09-12",
            "conversations": 1,
            "messages": 5,
            "handoffs": 0,
        }
    )
    dbs.rollup.etl_runs.insert_one(
        {
            "kind": "nightly",
            "status": "ok",
            "started_at": T0 - timedelta(days=1),
            "filter": {"status": 1000, "depth_gt": 2, "exclude_test_mode": True},
            "timezone": "UTC",
        }
    )
    with pytest.raises(DefinitionMismatch, match="pipeline version: 1 -> 3"):
        nightly(dbs, T0)
    result = runner.run_rebuild(dbs, T0, at(T0))
    assert result.record["switched_to"] == 2
    assert ledger.coverage(dbs, 2).first == date(2026, 9, 8)
    assert ledger.coverage(dbs, 2).last == date(2026, 9, 12)
    assert conversations(dbs) == {"2026-09-10": 1}


def test_every_level_of_the_lattice_is_verified_and_repaired(dbs: Databases) -> None:
    for day in (3, 17):
        created = datetime(2026, 9, day, 9)
        dbs.source.requests.insert_many(
            [make_request(createdAt=created, updatedAt=created, depth=d) for d in (3, 4)]
        )
    backfill(dbs, "2026-09-01", "2026-09-30")
    first, last = date(2026, 9, 1), date(2026, 9, 30)
    assert verify.find_month_drift(dbs, first, last) == []
    org = str(ORG_A)
    by_org_day = {r["day"]: r["messages"] for r in dbs.level("usage_org_daily").find()}
    assert by_org_day == {"2026-09-03": 7, "2026-09-17": 7}
    (org_month,) = dbs.level("usage_org_monthly").find()
    assert (org_month["org_id"], org_month["month"], org_month["conversations"]) == (
        org,
        "2026-09",
        4,
    )
    dbs.level("usage_org_daily").update_one({"day": "2026-09-17"}, {"$inc": {"messages": 1}})
    assert verify.find_month_drift(dbs, first, last) == ["2026-09"]
    runner.verify_range(dbs, first, last, T0, at(T0), repair=True)
    assert verify.find_month_drift(dbs, first, last) == []
    dbs.level("usage_org_monthly").delete_many({})
    assert verify.find_month_drift(dbs, first, last) == ["2026-09"]


def org_months(dbs: Databases) -> dict[tuple[str, str], int]:
    """Conversations per (organization, month) in the organization-month level."""
    return {
        (row["org_id"], row["month"]): row["conversations"]
        for row in dbs.level("usage_org_monthly").find()
    }


def test_a_recomputed_day_rederives_the_months_of_the_organizations_it_had_or_has(
    dbs: Databases,
) -> None:
    """A transaction re-derives only the organizations with rows on its days, before or
    after: one whose only conversation turned test mode loses its month rows; another
    organization's stay as they were."""
    other = ObjectId("65e18830a0616000137bb8aa")
    gone, kept = datetime(2026, 9, 5, 9), datetime(2026, 9, 6, 9)
    dbs.source.requests.insert_many(
        [
            make_request(createdAt=gone, updatedAt=gone),
            make_request(createdAt=kept, updatedAt=kept, id_organization=other),
        ]
    )
    backfill(dbs, "2026-09-01", "2026-09-30")
    assert org_months(dbs) == {(str(ORG_A), "2026-09"): 1, (str(other), "2026-09"): 1}
    dbs.source.requests.update_one({"createdAt": gone}, {"$set": {"isTestMode": True}})
    backfill(dbs, "2026-09-05", "2026-09-05", T0 + timedelta(hours=1))
    assert org_months(dbs) == {(str(other), "2026-09"): 1}
    assert verify.find_month_drift(dbs, date(2026, 9, 1), date(2026, 9, 30)) == []


def test_a_dirty_day_in_the_month_rederives_every_organization(dbs: Databases) -> None:
    """A run without transactions died between its day rows and their levels: the day is
    dirty, and the organization whose rows it deleted is on no day any more. The next
    recompute, in a transaction, re-derives the whole month, so its stale levels go."""
    if not dbs.supports_transactions():
        pytest.skip("needs a server with transactions")
    created = datetime(2026, 9, 5, 9)
    dbs.source.requests.insert_one(make_request(createdAt=created, updatedAt=created))
    backfill(dbs, "2026-09-01", "2026-09-30")
    day = date(2026, 9, 5)
    ledger.mark_dirty(dbs, 1, [day], run_id=None)
    dbs.usage_daily().delete_many({"day": "2026-09-05"})  # ...and died here
    dbs.source.requests.update_one({"createdAt": created}, {"$set": {"isTestMode": True}})
    backfill(dbs, "2026-09-05", "2026-09-05", T0 + timedelta(hours=1))
    assert org_months(dbs) == {}
    assert verify.find_month_drift(dbs, date(2026, 9, 1), date(2026, 9, 30)) == []


def test_a_month_repair_leaves_days_another_run_left_dirty_for_the_next_run(
    make_dbs: Callable[..., Databases], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without transactions, a run dies between deleting a day's rows and inserting them.
    A repair of an earlier range re-derives the month from the rows as they are; it must
    leave that day dirty, so the next nightly run recomputes it."""
    from etl import rollup
    from tests.factories import ORG_B

    dbs = make_dbs()
    dbs.transactions = False
    placed = [(5, ORG_A), (20, ORG_A), (20, ORG_A), (20, ORG_B)]
    dbs.source.requests.insert_many(
        [make_request(createdAt=datetime(2026, 9, d, 9), id_organization=o) for d, o in placed]
    )
    runner.run_backfill(dbs, date(2026, 9, 1), date(2026, 9, 30), T0, at(T0))

    def killed(rows: list[dict[str, object]]) -> list[dict[str, object]]:
        raise RuntimeError("killed")

    monkeypatch.setattr(rollup, "descending", killed)
    with pytest.raises(RuntimeError):
        runner.run_backfill(dbs, date(2026, 9, 20), date(2026, 9, 20), T0, at(T0))
    monkeypatch.undo()
    assert ledger.dirty_days(dbs, 1) == [date(2026, 9, 20)]
    assert dbs.usage_daily().count_documents({"day": "2026-09-20"}) == 0  # half written

    runner.verify_range(dbs, date(2026, 9, 1), date(2026, 9, 10), T0, at(T0), repair=True)
    assert ledger.dirty_days(dbs, 1) == [date(2026, 9, 20)]
    later = T0 + timedelta(days=1)
    runner.run_nightly(dbs, later, at(later))
    assert ledger.dirty_days(dbs, 1) == []
    rows = {
        (row["org_id"], row["day"]): row["conversations"]
        for row in dbs.usage_daily().find({}, {"org_id": 1, "day": 1, "conversations": 1})
    }
    assert rows == {
        (str(ORG_A), "2026-09-05"): 1,
        (str(ORG_A), "2026-09-20"): 2,
        (str(ORG_B), "2026-09-20"): 1,
    }
    assert verify.find_month_drift(dbs, date(2026, 9, 1), date(2026, 9, 30)) == []
