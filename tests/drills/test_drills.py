"""Reliability drills on the embedded server: crashes, concurrency, outages, readers, bad data."""

import itertools
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId
from fastapi.testclient import TestClient

from api import auth
from api.app import create_app
from etl import rollup, runner, runs, sample, verify
from etl.db import Databases, connect, mask_uri
from etl.jobs import utcnow
from tests.commands import COMMAND, clean_env, env_for, one_line, usage
from tests.conftest import make_settings
from tests.drills.conftest import ServerProcess
from tests.factories import BOT_1, BOT_2, ORG_A, ORG_B, make_request, staff_query

SPEC = sample.SampleSpec(organizations=5, internal=1, agents_per_org=2, per_day=30, days=60)


def load(dbs: Databases, now: datetime) -> tuple[date, date]:
    sample.load_sample(dbs, SPEC, now)
    today = rollup.local_today(now, dbs.settings)
    return today - timedelta(days=SPEC.days), today - timedelta(days=1)


def rows(dbs: Databases) -> list[dict[str, Any]]:
    return list(dbs.usage_daily().find({}, sort=[("_id", 1)]))


def clean_rows(make_dbs: Callable[..., Databases], dbs: Databases, first: date, last: date) -> Any:
    """The rows a single uninterrupted backfill gives, written to a separate database."""
    other = make_dbs(source_db=dbs.settings.source_db)
    runner.run_backfill(other, first, last, utcnow(), utcnow)
    return rows(other)


def test_drill_backfill_killed_at_ten_random_points_recovers_exactly(
    dbs: Databases, make_dbs: Callable[..., Databases]
) -> None:
    """Proves: a backfill killed with SIGKILL anywhere, then run again, leaves no drift and
    exactly the rows of a clean run; the killed run's record is visibly not ok and its lease
    is taken over once expired.

    Between kills a fifth of the conversations turn test mode or back, so that each run
    killed rewrites most days, as a first backfill does."""
    first, last = load(dbs, utcnow())
    toggled = [doc["_id"] for doc in dbs.source.requests.find({}, {"_id": 1})][::5]

    def turn(test_mode: bool) -> None:
        chosen = {"_id": {"$in": toggled}}
        dbs.source.requests.update_many(chosen, {"$set": {"isTestMode": test_mode}})

    expected = {}
    for test_mode in (True, False):
        turn(test_mode)
        expected[test_mode] = clean_rows(make_dbs, dbs, first, last)
    assert expected[True] != expected[False]
    env = env_for(dbs, USAGE_LEASE_SECONDS="5", USAGE_LOCK_WAIT_SECONDS="30")
    args = ["backfill", "--start", str(first), "--end", str(last)]
    assert usage(*args, env=env).returncode == 0
    turn(True)
    clean = usage(*args, env=env)
    assert clean.returncode == 0
    # How long the run itself takes, from its record to its end: the process's start-up
    # varies with the machine's load, so a kill is timed from the record.
    duration = float(clean.stdout.split(" in ")[1].split("s;")[0])
    rng = random.Random(20261125)
    landed = 0
    for n in range(10):
        test_mode = n % 2 == 1
        turn(test_mode)
        with subprocess.Popen([*COMMAND, *args], env=clean_env(env)) as proc:
            while proc.poll() is None and not dbs.rollup.etl_runs.find_one(
                {"status": runs.RUNNING}
            ):
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.95) * duration)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        killed = dbs.rollup.etl_runs.find_one({"status": runs.RUNNING})
        if killed is not None:
            landed += 1
            assert runs.current_lock(dbs.rollup) is not None
        rerun = usage(*args, env=env)
        assert rerun.returncode == 0, rerun.stderr
        if killed is not None:
            after = dbs.rollup.etl_runs.find_one({"_id": killed["_id"]})
            assert after is not None and after["status"] == runs.ABANDONED
        assert verify.find_drift(dbs, first, last) == []
        assert verify.find_month_drift(dbs, first, last) == []
        assert rows(dbs) == expected[test_mode]
    statuses = Counter(run["status"] for run in dbs.rollup.etl_runs.find())
    assert statuses[runs.RUNNING] == 0 and statuses[runs.FAILED] == 0
    assert statuses[runs.ABANDONED] == landed
    assert landed >= 5  # most kills landed inside a run, the others before or after one


def test_drill_four_concurrent_rollups_run_one_at_a_time(
    dbs: Databases, make_dbs: Callable[..., Databases]
) -> None:
    """Proves: of four `usage rollup` started at once, one works at a time; without waiting
    the others exit 3 with the documented message; with waiting all finish, never overlapping,
    and the rows equal those of a single run."""
    load(dbs, utcnow())

    def start_four(wait: str) -> list[subprocess.CompletedProcess[str]]:
        env = clean_env(env_for(dbs, USAGE_LOCK_WAIT_SECONDS=wait))
        procs = [
            subprocess.Popen([*COMMAND, "rollup"], env=env, stderr=subprocess.PIPE, text=True)
            for _ in range(4)
        ]
        done = []
        for proc in procs:
            _, err = proc.communicate(timeout=300)
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, "", err))
        return done

    refused = start_four("0")
    codes = sorted(p.returncode for p in refused)
    assert codes[0] == 0 and set(codes) <= {0, 3}
    for proc in refused:
        if proc.returncode == 3:
            assert "another rollup is running" in one_line(proc.stderr)
    waited = start_four("120")
    assert [p.returncode for p in waited] == [0, 0, 0, 0]
    spans = sorted(
        (run["lock_acquired_at"], run["finished_at"])
        for run in dbs.rollup.etl_runs.find({"status": runs.OK})
    )
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start
    single = make_dbs(source_db=dbs.settings.source_db)
    runner.run_nightly(single, utcnow(), utcnow)
    assert rows(dbs) == rows(single)


def test_drill_database_outage_fails_cleanly_and_the_next_night_catches_up(
    db_process: ServerProcess,
) -> None:
    """Proves: stopping the database mid-backfill ends the run with one clear line and a
    non-zero exit; the API answers 503 while it is down and recovers by itself; after a
    restart the next nightly run catches up and verify finds no drift."""
    settings = make_settings(db_process.uri, server_selection_timeout_ms=1000)
    dbs = connect(settings, db_process.uri)
    try:
        outage(db_process, dbs)
    finally:
        dbs.close()


def outage(db_process: ServerProcess, dbs: Databases) -> None:
    now = utcnow()
    first, last = load(dbs, now)
    runner.run_nightly(dbs, now, utcnow)
    runner.run_backfill(dbs, first, last, now, utcnow)
    old = dbs.source.requests.find({"status": 1000}, {"_id": 1}, limit=40)
    flipped = [doc["_id"] for doc in old]
    dbs.source.requests.update_many(
        {"_id": {"$in": flipped}}, {"$set": {"isTestMode": True, "updatedAt": utcnow()}}
    )
    key = auth.create_key(dbs.rollup, "staff", None, now)[1]
    headers = {"Authorization": f"Bearer {key}"}
    env = env_for(
        dbs,
        USAGE_SERVER_SELECTION_TIMEOUT_MS="1000",
        USAGE_LEASE_SECONDS="5",
        USAGE_LOCK_WAIT_SECONDS="30",
    )
    with TestClient(create_app(dbs)) as api:
        assert api.get("/api/aggregations/usage", headers=headers).status_code == 200
        with subprocess.Popen(
            [*COMMAND, "backfill", "--start", str(first), "--end", str(last)],
            env=clean_env(env),
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        ) as proc:
            while dbs.rollup.etl_runs.find_one({"kind": "backfill", "status": "running"}) is None:
                assert proc.poll() is None, "the backfill ended before the outage"
                time.sleep(0.01)
            db_process.stop()
            _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1
        assert "cannot reach MongoDB" in one_line(err)
        down = api.get("/api/aggregations/usage?start=2026-01-01&end=2026-01-02", headers=headers)
        assert down.status_code == 503
        assert api.get("/api/health").status_code == 503
        db_process.start()
        # Found back by the API's own probe (every half second), not by a request.
        deadline = time.monotonic() + 10
        while api.get("/api/aggregations/usage", headers=headers).status_code != 200:
            assert time.monotonic() < deadline, "the API did not find the database back"
            time.sleep(0.05)
    assert usage("rollup", env=env).returncode == 0
    assert verify.find_drift(dbs, first, last) == []
    assert verify.find_month_drift(dbs, first, last) == []


def test_drill_readers_see_each_day_old_or_new_never_half(
    dbs: Databases,
) -> None:
    """Proves: while backfills rewrite the same days, a reader polling the API sees every day
    with either its old or its new values, never missing, doubled or mixed."""
    now = utcnow()
    first, last = load(dbs, now)
    first = last - timedelta(days=29)
    runner.run_backfill(dbs, first, last, now, utcnow)

    def per_day() -> dict[str, int]:
        return {
            day: sum(r["messages"] for r in rows(dbs) if r["day"] == day)
            for day in {r["day"] for r in rows(dbs)}
        }

    old = per_day()
    dbs.source.requests.update_many({}, {"$inc": {"depth": 1}})
    runner.run_backfill(dbs, first, last, now, utcnow)
    new = per_day()
    assert all(old[day] != new[day] for day in old)
    key = auth.create_key(dbs.rollup, "staff", None, now)[1]
    stop = threading.Event()
    errors: list[BaseException] = []

    def rewrite() -> None:
        try:
            for n in range(4):
                dbs.source.requests.update_many({}, {"$inc": {"depth": -1 if n % 2 == 0 else 1}})
                runner.run_backfill(dbs, first, last, now, utcnow)
        except BaseException as exc:
            errors.append(exc)
        finally:
            stop.set()

    seen: Counter[str] = Counter()
    params = {"start": str(first), "end": str(last), "granularity": "day"}
    with TestClient(create_app(dbs)) as api:
        writer = threading.Thread(target=rewrite)
        writer.start()
        while not stop.is_set():
            body = api.get(
                "/api/aggregations/usage",
                params={**params, "include_internal": "true"},
                headers={"Authorization": f"Bearer {key}"},
            ).json()
            for bucket in body["total"]["buckets"]:
                day, value = bucket["key"], bucket["messages"]
                assert value in (old.get(day, 0), new.get(day, 0)), (day, value)
                seen["old" if value == old.get(day, 0) else "new"] += 1
        writer.join()
    assert not errors
    assert seen["old"] > 0 and seen["new"] > 0


def test_drill_late_and_changed_data_is_reflected_and_nothing_else_touched(
    dbs: Databases,
) -> None:
    """Proves: a late close, a flip to test mode at any age and a deletion inside the lookback
    window are reflected by the next nightly run with no other row changed; a deletion older
    than the window is found by verify and repaired on exactly its day."""
    midnight = datetime(2026, 10, 20)
    day0 = midnight + timedelta(hours=2)
    docs = [
        make_request(createdAt=midnight - timedelta(days=d, hours=-h), id_organization=org)
        for d in range(1, 21)
        for h in (3, 9)
        for org in (ORG_A, ORG_B)
    ]
    late = make_request(createdAt=midnight - timedelta(days=6) + timedelta(hours=5), status=200)
    docs.append(late)
    dbs.source.requests.insert_many(docs)
    runner.run_backfill(dbs, date(2026, 9, 20), date(2026, 10, 19), day0, lambda: day0)
    runner.run_nightly(dbs, day0, lambda: day0)
    before = {r["_id"]: r for r in rows(dbs)}
    later = day0 + timedelta(days=1)
    touched = later - timedelta(hours=1)

    def pick(days: int, org: ObjectId) -> Any:
        created = midnight - timedelta(days=days) + timedelta(hours=3)
        return {"createdAt": created, "id_organization": org}

    dbs.source.requests.update_one(
        {"_id": late["_id"]}, {"$set": {"status": 1000, "updatedAt": touched}}
    )
    flip = {"$set": {"isTestMode": True, "updatedAt": touched}}
    dbs.source.requests.update_one(pick(15, ORG_B), flip)
    dbs.source.requests.delete_one(pick(1, ORG_A))
    dbs.source.requests.delete_one(pick(12, ORG_A))
    runner.run_nightly(dbs, later, lambda: later)
    after = {r["_id"]: r for r in rows(dbs)}
    changed = {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}
    day = lambda n: (midnight - timedelta(days=n)).date().isoformat()  # noqa: E731
    assert changed == {
        f"{ORG_A}:{BOT_1}:{day(6)}",
        f"{ORG_B}:{BOT_1}:{day(15)}",
        f"{ORG_A}:{BOT_1}:{day(1)}",
    }
    assert after[f"{ORG_A}:{BOT_1}:{day(6)}"]["conversations"] == 3
    assert after[f"{ORG_B}:{BOT_1}:{day(15)}"]["conversations"] == 1
    assert after[f"{ORG_A}:{BOT_1}:{day(1)}"]["conversations"] == 1
    first, last = date(2026, 9, 20), later.date()
    drift = verify.find_drift(dbs, first, last)
    assert [(d.day, d.expected["conversations"], d.stored["conversations"]) for d in drift] == [
        (day(12), 1, 2)
    ]
    runner.run_repair(dbs, verify.drifted_days(drift), later, lambda: later)
    assert verify.find_drift(dbs, first, last) == []


# Field values real data has held, and what the rollup must make of each.
STATUS = [1000, 1000, 1000, 999, "1000", None, 1000.0, [1000], "missing"]
TEST_MODE = ["missing", True, False, "true", None, 1, [True]]
DEPTH = [5, 2, 3, -4, 10**12, 3.5, "7", None, True, [7], "missing", float("inf"), float("nan")]
ORG = [ORG_A, ORG_B, str(ORG_A), str(ORG_B).upper(), "not-an-id", None, "missing", 12345, [ORG_A]]
ATTRIBUTES = [
    {"bot_id": BOT_1},
    {"bot_id": ObjectId(BOT_2)},
    {"bot_id": " " + BOT_2 + " "},
    {"bot_id": ""},
    {"bot_id": "   "},
    {"bot_id": None},
    {},
    "junk",
    None,
    "missing",
    [{"bot_id": BOT_1}],
    {"bot_id": {"nested": {"deep": [1, 2]}}},
    {"bot_id": 42},
]
AGENTS = [[], ["a1"], "a1", None, "missing", [None]]
DAY = datetime(2026, 10, 14, 10, 0)
CREATED = [DAY, DAY, DAY + timedelta(days=1), "2026-10-14T10:00:00", None, "missing", [DAY], 12345]


def hostile(rng: random.Random) -> dict[str, Any]:
    fields = {
        "status": rng.choice(STATUS),
        "isTestMode": rng.choice(TEST_MODE),
        "depth": rng.choice(DEPTH),
        "id_organization": rng.choice(ORG),
        "attributes": rng.choice(ATTRIBUTES),
        "participantsAgents": rng.choice(AGENTS),
        "createdAt": rng.choice(CREATED),
    }
    return {k: v for k, v in fields.items() if not (isinstance(v, str) and v == "missing")}


HEX = set("0123456789abcdef")


def expected_outcome(doc: dict[str, Any]) -> tuple[str, Any]:
    """An independent reading of one document: ("skip", reason), ("count", key) or ("none",)."""

    def has(value: Any, wanted: Callable[[Any], bool]) -> bool:
        items = value if isinstance(value, list) else [value]
        return any(wanted(v) for v in items)

    def is_number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    if not has(doc.get("status"), lambda v: is_number(v) and v == 1000):
        return ("none", None)
    if has(doc.get("isTestMode"), lambda v: v is True):
        return ("none", None)
    if not has(doc.get("depth"), lambda v: is_number(v) and v > 2):
        return ("none", None)
    created, depth, org = doc.get("createdAt"), doc.get("depth"), doc.get("id_organization")
    if not isinstance(created, datetime):
        return ("skip", "bad_created_at")
    if isinstance(org, ObjectId):
        org_id = str(org)
    elif isinstance(org, str) and len(org) == 24 and set(org.lower()) <= HEX:
        org_id = org.lower()
    else:
        return ("skip", "no_organization")
    if isinstance(depth, list):
        return ("skip", "bad_depth")
    if depth > 1_000_000:
        return ("skip", "depth_out_of_range")
    if depth != int(depth):  # 2.5 messages: no such thing
        return ("skip", "bad_depth")
    attributes = doc.get("attributes")
    bot = attributes.get("bot_id") if isinstance(attributes, dict) else None
    if isinstance(bot, ObjectId):
        agent = str(bot)
    elif isinstance(bot, str) and bot.strip():
        agent = bot.strip()
        if len(agent) == 24 and set(agent.lower()) <= HEX:
            agent = agent.lower()
    else:
        agent = "unattributed"
    agents = doc.get("participantsAgents")
    handoff = int(isinstance(agents, list) and len(agents) > 0)
    return ("count", (org_id, agent, created.date().isoformat(), int(depth), handoff))


def test_drill_hostile_source_documents_never_crash_and_are_counted_by_reason(
    dbs: Databases,
) -> None:
    """Proves: documents with wrong types, missing fields, huge, negative and array depths,
    nested junk in attributes and dates as strings never crash a run; what can be counted is
    counted exactly and the rest is skipped by reason."""
    rng = random.Random(6)
    docs = [hostile(rng) for _ in range(600)]
    dbs.source.requests.insert_many([dict(doc) for doc in docs])
    skipped: Counter[str] = Counter()
    totals: dict[tuple[str, str, str], list[int]] = {}
    for doc in docs:
        outcome = expected_outcome(doc)
        if outcome[0] == "skip":
            skipped[outcome[1]] += 1
        elif outcome[0] == "count":
            org, agent, day, depth, handoff = outcome[1]
            cell = totals.setdefault((org, agent, day), [0, 0, 0])
            cell[0] += 1
            cell[1] += depth
            cell[2] += handoff
    after = datetime(2026, 10, 21, 2, 0)  # the range is over
    result = runner.run_backfill(dbs, date(2026, 10, 10), date(2026, 10, 20), after, lambda: after)
    assert dict(result.stats.skipped) == dict(skipped)
    assert len(skipped) >= 4  # the generator reached every reason
    got = {
        (r["org_id"], r["agent_id"], r["day"]): [r["conversations"], r["messages"], r["handoffs"]]
        for r in rows(dbs)
    }
    assert got == totals
    assert verify.find_month_drift(dbs, date(2026, 10, 10), date(2026, 10, 20)) == []


def test_drill_a_customer_key_never_reads_another_organization(dbs: Databases) -> None:
    """Proves: a customer key trying every combination of parameters gets its own
    organization's data or a refusal, never another's; keys exist only as hashes; secrets
    appear in no response, no status output and no error message."""
    own, other, internal = str(ORG_A), str(ORG_B), "65e18830a0616000137bb8ff"
    dbs.settings = dbs.settings.model_copy(update={"internal_org_ids": [internal]})
    for org in (ORG_A, ORG_B, ObjectId(internal)):
        dbs.source.requests.insert_one(make_request(id_organization=org))
    now = datetime(2026, 10, 20, 2, 0)
    runner.run_backfill(dbs, date(2026, 10, 1), date(2026, 10, 19), now, lambda: now)
    _, secret = auth.create_key(dbs.rollup, "customer", own, now)
    headers = {"Authorization": f"Bearer {secret}"}
    choices: dict[str, list[str | None]] = {
        "scope": ["platform", "org", "agent", None],
        "org_id": [own, own.upper(), other, internal, "not-an-id", None],
        "agent_id": [BOT_1, BOT_2, "unattributed", None],
        "include_internal": ["true", "false", None],
    }
    outcomes: Counter[int] = Counter()
    with TestClient(create_app(dbs, clock=lambda: now)) as api:
        for values in itertools.product(*choices.values()):
            params = {k: v for k, v in zip(choices, values, strict=True) if v is not None}
            params.update({"start": "2026-10-01", "end": "2026-10-19"})
            for path in ("/api/aggregations/usage", "/api/aggregations/usage.csv"):
                response = api.get(path, params=params, headers=headers)
                outcomes[response.status_code] += 1
                assert response.status_code in (200, 403, 422), (params, response.text)
                assert secret not in response.text
                assert other not in response.text and internal not in response.text
                if response.status_code == 200 and path.endswith("usage"):
                    assert response.json()["org_id"] == own
        unknown = api.get("/api/aggregations/usage", headers={"Authorization": "Bearer usk_x"})
        assert "usk_x" not in unknown.text
    assert outcomes[200] > 0 and outcomes[403] > 0 and outcomes[422] > 0
    for name in dbs.rollup.list_collection_names():
        assert secret not in str(list(dbs.rollup[name].find()))
    password_uri = dbs.uri.replace("mongodb://", "mongodb://ops:hunter2-pw@")
    assert "hunter2-pw" not in mask_uri(password_uri)
    from etl.cli import status_report

    masked = Databases(dbs.client, dbs.source, dbs.rollup, password_uri, dbs.settings)
    assert "hunter2-pw" not in str(status_report(masked, dbs.settings, now, 5))


def test_drill_rebuild_killed_anywhere_serves_one_generation_and_finishes_when_rerun(
    dbs: Databases, make_dbs: Callable[..., Databases]
) -> None:
    """Proves: a rebuild killed with SIGKILL at seeded random points leaves the API answering
    the old generation's exact numbers; run again, it finishes and switches; readers polling
    during the switch see one generation or the other, never a mix; a nightly run started
    during a rebuild exits 3 without writing; `verify` is clean afterwards."""
    first, last = load(dbs, utcnow())
    runner.run_backfill(dbs, first, last, utcnow(), utcnow)
    scratch = make_dbs(source_db=dbs.settings.source_db, billable_min_depth=4)
    runner.run_backfill(scratch, first, last, utcnow(), utcnow)
    expected_new = rows(scratch)

    def served(settings_dbs: Databases) -> tuple[int, int]:
        from api.usage import UsageService

        query = staff_query(
            settings_dbs.settings,
            "platform",
            str(first),
            str(last),
            granularity="day",
            include_internal=True,
            today=last,
        )
        body = UsageService(settings_dbs, 0).report(query)
        return body["generation"], body["total"]["totals"]["messages"]

    old = served(dbs)
    new_messages = sum(row["messages"] for row in expected_new)
    assert old[1] != new_messages
    env = env_for(dbs, USAGE_BILLABLE_MIN_DEPTH="4", USAGE_LEASE_SECONDS="5")
    # Time a rebuild of the same source into the scratch rollup: to start, then to finish.
    started = time.monotonic()
    timing = env_for(scratch, USAGE_BILLABLE_MIN_DEPTH="5")
    with subprocess.Popen([*COMMAND, "rebuild"], env=clean_env(timing)) as proc:
        while scratch.rollup.etl_runs.find_one({"kind": "rebuild"}) is None:
            assert proc.poll() is None, "the timing rebuild ended before it was seen"
            time.sleep(0.01)
        startup = time.monotonic() - started
        assert proc.wait(timeout=120) == 0
    work = time.monotonic() - started - startup
    busy = make_dbs(
        source_db=dbs.settings.source_db,
        rollup_db=dbs.settings.rollup_db_name,
        billable_min_depth=4,
    )
    rng = random.Random(20261126)
    for attempt in range(5):
        if runs.current_lock(dbs.rollup) is not None:
            time.sleep(5.2)  # the killed holder's lease expires; the next run takes it over
        records = dbs.rollup.etl_runs.count_documents({"kind": "rebuild"})
        with subprocess.Popen([*COMMAND, "rebuild"], env=clean_env(env)) as proc:
            # Timed from this rebuild's record: start-up varies with the machine's load.
            while proc.poll() is None and (
                dbs.rollup.etl_runs.count_documents({"kind": "rebuild"}) == records
            ):
                time.sleep(0.005)
            if attempt == 0:  # a nightly run during a rebuild: refused, nothing written
                with pytest.raises(runs.LockBusy, match="another rollup is running"):
                    runner.run_nightly(busy, utcnow(), utcnow)
            else:
                time.sleep(rng.uniform(0.0, 1.0) * work)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        generation, messages = served(dbs)
        if generation == old[0]:
            assert messages == old[1]
        else:  # this one got to the switch: entirely the new generation
            assert messages == new_messages
    assert dbs.rollup.etl_runs.count_documents({"kind": "nightly"}) == 0
    seen: set[tuple[int, int]] = set()
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            seen.add(served(dbs))

    reader = threading.Thread(target=poll)
    reader.start()
    time.sleep(5.2)
    try:
        final = usage("rebuild", env={**env, "USAGE_LOCK_WAIT_SECONDS": "30"})
    finally:
        stop.set()
        reader.join()
    assert final.returncode == 0, final.stderr
    state = dbs.rollup.etl_state.find_one()
    assert state is not None and state["pending"] is None
    new_generation = state["generation"]
    assert seen <= {old, (new_generation, new_messages)} | {
        (g, new_messages) for g in range(old[0] + 1, new_generation)
    }
    assert served(dbs) == (new_generation, new_messages)
    killed = dbs.rollup.etl_runs.count_documents({"kind": "rebuild", "status": runs.ABANDONED})
    assert killed >= 3  # most kills landed inside a rebuild
    assert dbs.rollup.etl_runs.count_documents({"status": {"$in": ["running", "failed"]}}) == 0
    assert list(dbs.usage_daily(new_generation).find(sort=[("_id", 1)])) == expected_new
    check = usage("verify", "--start", str(first), "--end", str(last), env=env)
    assert check.returncode == 0, check.stdout
