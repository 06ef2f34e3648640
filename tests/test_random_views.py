"""Random sequences of source changes (late data, test mode, depth, deletions, conversations
moved between organizations and agents) and runs (nightly, backfill, repair, rebuild, runs
dying part-way), with and without transactions, with small bounds and in several time zones.
After each, every level and the API's views (platform pages, searches, organization views)
are checked against counts made here from the documents."""

import random
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from bson import ObjectId

from etl import ledger, platform, rollup, runner
from etl.db import Databases, connect
from tests.factories import make_request
from tests.test_sequences import platform_stored, stored, sums

ORGS: list[Any] = [ObjectId(f"65e18830a0616000137bc{n:03x}") for n in range(7)]
ORGS[3] = str(ORGS[3]).upper()  # a string id in upper case
INTERNAL = str(ORGS[6]).lower()
BOTS = ["6601aa00aa00aa00aa00aa01", "6601AA00AA00AA00AA00AA02", "", "bot-x"]
START = datetime(2026, 8, 24, 2, 0)


class Killed(Exception):
    """A run dying at a write (an exception, as a dead process leaves a transaction)."""


class World:
    def __init__(self, dbs: Databases, rng: random.Random, tz: str) -> None:
        self.dbs, self.rng, self.now, self.zone = dbs, rng, START, ZoneInfo(tz)
        self.docs: dict[Any, dict[str, Any]] = {}
        self.dirty_unknown = False  # a change nightly cannot see (deletion, moved day)

    def local_day(self, when: datetime) -> date:
        return when.replace(tzinfo=ZoneInfo("UTC")).astimezone(self.zone).date()

    def tick(self) -> None:
        self.now += timedelta(hours=self.rng.randint(3, 40))

    def insert(self) -> None:
        age = self.rng.choice([0, 1, 2, 5, 12, 30, 45])
        created = self.now - timedelta(days=age, hours=self.rng.randint(0, 23))
        doc = make_request(
            _id=ObjectId(),
            createdAt=created.replace(microsecond=0),
            updatedAt=self.now,
            status=self.rng.choice([200, 1000, 1000]),
            depth=self.rng.randint(1, 7),
            isTestMode=self.rng.random() < 0.1,
            id_organization=self.rng.choice(ORGS),
            attributes={"bot_id": self.rng.choice(BOTS)},
            participantsAgents=["a1"] if self.rng.random() < 0.3 else [],
        )
        self.dbs.source.requests.insert_one(dict(doc))
        self.docs[doc["_id"]] = doc

    def change(self) -> None:
        if not self.docs:
            return
        doc = self.docs[self.rng.choice(sorted(self.docs))]
        field, value = self.rng.choice(
            [
                ("status", 1000),
                ("status", 200),
                ("isTestMode", True),
                ("isTestMode", False),
                ("depth", doc["depth"] + 2),
                ("depth", 1),
                ("id_organization", self.rng.choice(ORGS)),
                ("attributes", {"bot_id": self.rng.choice(BOTS)}),
                ("participantsAgents", ["a2"]),
            ]
        )
        doc[field] = value
        doc["updatedAt"] = self.now
        self.dbs.source.requests.update_one(
            {"_id": doc["_id"]}, {"$set": {field: value, "updatedAt": self.now}}
        )

    def delete(self) -> None:
        if not self.docs:
            return
        key = self.rng.choice(sorted(self.docs))
        self.dbs.source.requests.delete_one({"_id": key})
        del self.docs[key]
        self.dirty_unknown = True

    def at(self) -> Callable[[], datetime]:
        now = self.now
        return lambda: now

    def expected(self, days: set[date]) -> dict[tuple[str, str, str], tuple[int, int, int]]:
        out: dict[tuple[str, str, str], list[int]] = {}
        for doc in self.docs.values():
            if doc["status"] != 1000 or doc.get("isTestMode") is True or doc["depth"] <= 2:
                continue
            day = self.local_day(doc["createdAt"])
            if day not in days:
                continue
            bot = doc["attributes"]["bot_id"].lower() or "unattributed"
            key = (str(doc["id_organization"]).lower(), bot, day.isoformat())
            cell = out.setdefault(key, [0, 0, 0])
            cell[0] += 1
            cell[1] += doc["depth"]
            cell[2] += 1 if doc["participantsAgents"] else 0
        return {k: tuple(v) for k, v in out.items()}


def check_levels(dbs: Databases, world: World, label: Any) -> tuple[int, set[date], dict]:
    state = ledger.read_state(dbs.rollup)
    assert state is not None
    gen = state.generation
    assert rollup.stale_months(dbs, gen) == [], label
    covered = set(ledger.covered_days(dbs, gen))
    want = world.expected(covered)
    daily = stored(dbs, "usage_daily", gen, "org_id", "agent_id", "day")
    assert daily == want, label
    assert stored(dbs, "usage_monthly", gen, "org_id", "agent_id", "month") == sums(
        want, lambda o, a, d: (o, a, d[:7])
    ), label
    org_days = sums(want, lambda o, a, d: (o, d))
    org_months = sums(want, lambda o, a, d: (o, d[:7]))
    assert stored(dbs, "usage_org_daily", gen, "org_id", "day") == org_days, label
    assert stored(dbs, "usage_org_monthly", gen, "org_id", "month") == org_months, label
    assert platform_stored(dbs, gen, "day") == org_days, label
    assert platform_stored(dbs, gen, "month") == org_months, label
    return gen, covered, want


def figures(line: dict[str, Any]) -> tuple[int, ...]:
    """A row's or the total's measures, in the order the counts here keep them."""
    return tuple(line["totals"][m] for m in ("conversations", "messages", "handoffs"))


def check_api(dbs: Databases, world: World, want: dict, label: Any) -> None:
    from api.auth import Principal
    from api.usage import UsageService, resolve_query

    service = UsageService(dbs, 0)
    days = sorted({d for (_, _, d) in want})
    if not days:
        return
    today = world.local_day(world.now)
    first = date.fromisoformat(days[0]).replace(day=1)
    last = today
    spans = [(first, last, "month"), (first, last, "week"), (last - timedelta(days=6), last, "day")]
    for start, end, gran in spans:
        in_span = {
            k: v
            for k, v in want.items()
            if start.isoformat() <= k[2] <= end.isoformat() and k[0] != INTERNAL
        }
        orgs = sums(in_span, lambda o, a, d: (o,))
        total = [sum(v[n] for v in orgs.values()) for n in range(3)]
        for limit, offset, q in [
            (None, 0, None),
            (2, 0, None),
            (2, 2, None),
            (3, 1, "65e1"),
            (2, 0, "bc00"),
        ]:
            query = resolve_query(
                scope="platform",
                org_id=None,
                agent_id=None,
                start=start.isoformat(),
                end=end.isoformat(),
                granularity=gran,
                include_internal=False,
                principal=Principal("k", "staff", None),
                today=today,
                settings=dbs.settings,
                q=q,
                limit=limit,
                offset=offset,
            )
            body = service.report(query)
            where = (label, gran, limit, offset, q)
            names = {k[0]: v for k, v in orgs.items() if q is None or q.lower() in k[0]}
            tot = [sum(v[n] for v in names.values()) for n in range(3)]
            got_total = list(figures(body["total"]))
            assert got_total == (tot if q else total), where
            for row in body["rows"]:
                assert figures(row) == names[row["id"]], where
                assert sum(b["conversations"] for b in row["buckets"]) == names[row["id"]][0]
            page = sum(r["totals"]["conversations"] for r in body["rows"])
            other = body["other"]["totals"]["conversations"] if body["other"] else 0
            assert page + other == got_total[0], where
            assert body["total_rows"] == len(names), where
        # one org view per org
        for org in sorted({k[0] for k in want}):
            query = resolve_query(
                scope="org",
                org_id=org,
                agent_id=None,
                start=start.isoformat(),
                end=end.isoformat(),
                granularity=gran,
                include_internal=True,
                principal=Principal("k", "staff", None),
                today=today,
                settings=dbs.settings,
            )
            body = service.report(query)
            agents = sums(
                {
                    k: v
                    for k, v in want.items()
                    if k[0] == org and start.isoformat() <= k[2] <= end.isoformat()
                },
                lambda o, a, d: (a,),
            )
            got = {r["id"]: figures(r) for r in body["rows"]}
            got = {k: v for k, v in got.items() if v != (0, 0, 0)}
            assert got == {k[0]: v for k, v in agents.items()}, (label, org, gran)


def with_kill(monkeypatch: pytest.MonkeyPatch, rng: random.Random, run: Callable[[], Any]) -> bool:
    """Run `run` with a random write function raising after a random number of calls."""
    targets = [
        (rollup, "replace_rows"),
        (platform, "write_levels"),
        (ledger, "stamp_days"),
        (rollup, "clear_stale"),
        (rollup, "derive_months"),
        (ledger, "clear_dirty"),
    ]
    module, name = rng.choice(targets)
    original = getattr(module, name)
    calls = {"n": 0, "at": rng.randint(1, 6)}

    def dying(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == calls["at"]:
            raise Killed(name)
        result = original(*args, **kwargs)
        return result

    with monkeypatch.context() as m:
        m.setattr(module, name, dying)
        try:
            run()
        except Killed:
            return True
    return False


def play(dbs: Databases, seed: int, tz: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    world = World(dbs, rng, tz)
    for _ in range(12):
        world.insert()
    runner.run_nightly(dbs, world.now, world.at())
    checked = 0
    for step in range(18):
        world.tick()
        for _ in range(rng.randint(0, 5)):
            rng.choice([world.insert, world.insert, world.change, world.change, world.delete])()
        kind = rng.choice(
            ["nightly", "nightly", "nightly", "backfill", "repair", "rebuild", "killed", "killed"]
        )
        today = world.local_day(world.now)
        label = (seed, step, kind)
        if kind == "backfill":
            first = today - timedelta(days=rng.randint(3, 50))
            runner.run_backfill(
                dbs, first, first + timedelta(days=rng.randint(0, 20)), world.now, world.at()
            )
        elif kind == "repair":
            runner.verify_range(
                dbs, today - timedelta(days=70), today, world.now, world.at(), repair=True
            )
        elif kind == "rebuild":
            runner.run_rebuild(dbs, world.now, world.at())
        elif kind == "killed":
            which = rng.choice(["nightly", "backfill", "repair"])

            def go(which: str = which, today: date = today) -> None:
                if which == "nightly":
                    runner.run_nightly(dbs, world.now, world.at())
                elif which == "backfill":
                    runner.run_backfill(
                        dbs, today - timedelta(days=40), today, world.now, world.at()
                    )
                else:
                    runner.verify_range(
                        dbs, today - timedelta(days=70), today, world.now, world.at(), repair=True
                    )

            with_kill(monkeypatch, rng, go)
            # the run's lease: released by the runner's `finally` (in process)
        else:
            runner.run_nightly(dbs, world.now, world.at())
            if not world.dirty_unknown:
                gen, covered, want = check_levels(dbs, world, label)
                check_api(dbs, world, want, label)
                checked += 1
        # a full verify and repair makes every day exact, deletions included
        if kind != "killed" and rng.random() < 0.35:
            runner.run_nightly(dbs, world.now, world.at())
            runner.verify_range(dbs, date(2026, 6, 1), today, world.now, world.at(), repair=True)
            again = runner.verify_range(dbs, date(2026, 6, 1), today, world.now, world.at())
            assert (again.drift, again.months) == ([], []), label
            world.dirty_unknown = False
            gen, covered, want = check_levels(dbs, world, (*label, "after repair"))
            check_api(dbs, world, want, (*label, "after repair"))
            checked += 1
    runner.run_nightly(dbs, world.now, world.at())
    runner.verify_range(
        dbs, date(2026, 6, 1), world.local_day(world.now), world.now, world.at(), repair=True
    )
    gen, covered, want = check_levels(dbs, world, (seed, "final"))
    check_api(dbs, world, want, (seed, "final"))
    assert checked >= 1


CASES = [
    # seed, transactions, transaction_rows, LONG_IN, MARKED_ORGS, timezone
    (11, True, 20_000, 200, 3000, "UTC"),
    (12, True, 1, 1, 3000, "UTC"),
    (13, True, 2, 1, 1, "America/New_York"),
    (14, False, 20_000, 200, 3000, "UTC"),
    (15, False, 1, 1, 1, "Pacific/Kiritimati"),
    (16, True, 2, 2, 2, "Europe/Rome"),
    (17, False, 2, 2, 3000, "America/New_York"),
    (18, True, 3, 1, 2, "UTC"),
]


@pytest.mark.parametrize(("seed", "transactions", "rows", "long_in", "marked", "tz"), CASES)
def test_random_runs_leave_every_level_and_view_equal_to_the_documents(
    make_dbs: Callable[..., Databases],
    monkeypatch: pytest.MonkeyPatch,
    seed: int,
    transactions: bool,
    rows: int,
    long_in: int,
    marked: int,
    tz: str,
) -> None:
    monkeypatch.setattr(rollup, "LONG_IN", long_in)
    monkeypatch.setattr(rollup, "MARKED_ORGS", marked)
    dbs = make_dbs(transaction_rows=rows, timezone=tz, internal_org_ids=[INTERNAL])
    if transactions:
        play(dbs, seed, tz, monkeypatch)
        return
    plain = connect(dbs.settings, dbs.uri, transactions=False)
    try:
        play(plain, seed, tz, monkeypatch)
    finally:
        plain.close()
