"""Random sequences of source changes and runs (nightly, backfill, repair, rebuild), some
runs dying part way: after every nightly run that finishes, every computed day served equals a
count made here from the documents themselves, every month's totals equal the sum of its days,
and every level's users are the distinct users of the documents it covers."""

import contextlib
import random
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId

from etl import ledger, platform, rollup, runner, runs
from etl.db import Databases, connect
from tests.factories import DROP, make_request
from tests.test_users import user_of

ORGS = [ObjectId("65e18830a0616000137bb854"), "65E18830A0616000137BB855"]
# More organizations over more days: fewer runs touch a given organization's month, so one
# that a dying run left underived stays so until its mark is honoured.
MORE_ORGS = [*ORGS, *(ObjectId(f"65e18830a0616000137bb86{n}") for n in range(4))]
BOTS = ["6601aa00aa00aa00aa00aa01", "6601AA00AA00AA00AA00AA02", ""]
# End users, some written two ways, some naming no one; few, so that they come back.
PERSON = ObjectId("6601bb00bb00bb00bb00bb01")
PEOPLE = [PERSON, str(PERSON).upper(), ObjectId("6601bb00bb00bb00bb00bb02"), "ann", " bob ", ""]
PEOPLE += [DROP, 7, *(f"visitor-{n}" for n in range(6))]
START = datetime(2026, 9, 20, 2, 0)


def billable(
    docs: list[dict[str, Any]], days: set[date]
) -> Iterator[tuple[tuple[str, str, str], dict[str, Any]]]:
    """The billable documents created on `days`, each with its (org, agent, day), by hand."""
    for doc in docs:
        if doc["status"] != 1000 or doc.get("isTestMode") is True or doc["depth"] <= 2:
            continue
        day = doc["createdAt"].date()
        if day not in days:
            continue
        org = str(doc["id_organization"]).lower()
        bot = doc["attributes"]["bot_id"].lower() or "unattributed"
        yield (org, bot, day.isoformat()), doc


def expected(docs: list[dict[str, Any]], days: set[date]) -> dict[tuple[str, str, str], tuple]:
    """Billable conversations per (org, agent, day), read from the documents by hand."""
    totals: dict[tuple[str, str, str], list[int]] = {}
    for key, doc in billable(docs, days):
        cell = totals.setdefault(key, [0, 0, 0])
        cell[0] += 1
        cell[1] += doc["depth"]
        cell[2] += 1 if doc["participantsAgents"] else 0
    return {key: tuple(cell) for key, cell in totals.items()}


def billable_users(docs: list[dict[str, Any]], days: set[date]) -> dict[tuple[str, str, str], set]:
    """The distinct end users per (org, agent, day), read from the documents by hand."""
    users: dict[tuple[str, str, str], set[str]] = {}
    for key, doc in billable(docs, days):
        user = user_of(doc)
        users.setdefault(key, set()).update([user] if user else [])
    return users


def served_users(dbs: Databases, generation: int) -> dict[str, dict[tuple, int]]:
    """Every level's users, as stored."""
    keys = {
        "usage_daily": ("org_id", "agent_id", "day"),
        "usage_monthly": ("org_id", "agent_id", "month"),
        "usage_org_daily": ("org_id", "day"),
        "usage_org_monthly": ("org_id", "month"),
    }
    return {
        base: {tuple(r[f] for f in fields): r["users"] for r in dbs.level(base, generation).find()}
        for base, fields in keys.items()
    }


def distinct(users: dict[tuple[str, str, str], set]) -> dict[str, dict[tuple, int]]:
    """Every level's users, as unions of the day rows' sets (exact at this size)."""
    keys: dict[str, Callable[[str, str, str], tuple]] = {
        "usage_daily": lambda o, a, d: (o, a, d),
        "usage_monthly": lambda o, a, d: (o, a, d[:7]),
        "usage_org_daily": lambda o, a, d: (o, d),
        "usage_org_monthly": lambda o, a, d: (o, d[:7]),
    }
    levels: dict[str, dict[tuple, int]] = {}
    for base, key in keys.items():
        unions: dict[tuple, set[str]] = {}
        for (org, agent, day), seen in users.items():
            unions.setdefault(key(org, agent, day), set()).update(seen)
        levels[base] = {k: len(seen) for k, seen in unions.items()}
    return levels


def served(dbs: Databases) -> tuple[int, dict[tuple[str, str, str], tuple], dict[str, tuple]]:
    state = ledger.read_state(dbs.rollup)
    assert state is not None
    generation = state.generation
    daily = {
        (r["org_id"], r["agent_id"], r["day"]): (r["conversations"], r["messages"], r["handoffs"])
        for r in dbs.usage_daily(generation).find()
    }
    months = {
        (r["org_id"], r["agent_id"], r["month"]): (r["conversations"], r["messages"], r["handoffs"])
        for r in dbs.usage_monthly(generation).find()
    }
    return generation, daily, months


def sums(daily: dict[tuple[str, str, str], tuple], key: Callable[..., tuple]) -> dict:
    totals: dict[tuple, list[int]] = {}
    for (org, agent, day), values in daily.items():
        cell = totals.setdefault(key(org, agent, day), [0, 0, 0])
        for n, value in enumerate(values):
            cell[n] += value
    return {k: tuple(cell) for k, cell in totals.items()}


def stored(dbs: Databases, base: str, generation: int, *fields: str) -> dict:
    return {
        tuple(r[f] for f in fields): (r["conversations"], r["messages"], r["handoffs"])
        for r in dbs.level(base, generation).find()
    }


def platform_stored(dbs: Databases, generation: int, period: str) -> dict:
    """(organization, day or month) -> measures, as the platform level's documents hold them."""
    found = {}
    for doc in map(
        platform.unpack, dbs.level("usage_platform", generation).find({"period": period})
    ):
        for n, org in enumerate(doc["orgs"]):
            found[(org, doc["key"])] = tuple(
                doc[m][n] for m in ("conversations", "messages", "handoffs")
            )
    return found


class World:
    """The source documents as this test knows them, and the clock."""

    def __init__(
        self, dbs: Databases, rng: random.Random, orgs: list[Any] = ORGS, back: int = 25
    ) -> None:
        self.dbs, self.rng, self.now = dbs, rng, START
        self.orgs, self.back = orgs, back
        self.docs: list[dict[str, Any]] = []

    def tick(self) -> None:
        self.now += timedelta(hours=self.rng.randint(1, 30))

    def insert(self) -> None:
        ago = timedelta(days=self.rng.randint(0, self.back), hours=self.rng.randint(0, 23))
        created = self.now - ago
        doc = make_request(
            _id=ObjectId(),
            createdAt=created.replace(microsecond=0),
            updatedAt=self.now,
            status=self.rng.choice([200, 1000]),
            depth=self.rng.randint(1, 6),
            isTestMode=self.rng.random() < 0.1,
            id_organization=self.rng.choice(self.orgs),
            attributes={"bot_id": self.rng.choice(BOTS)},
            participantsAgents=["a1"] if self.rng.random() < 0.3 else [],
            lead=self.rng.choice(PEOPLE),
            requester=self.rng.choice(PEOPLE),
        )
        self.dbs.source.requests.insert_one(dict(doc))
        self.docs.append(doc)

    def change(self) -> None:
        if not self.docs:
            return
        doc = self.rng.choice(self.docs)
        field, value = self.rng.choice(
            [
                ("status", 1000),
                ("status", 200),
                ("isTestMode", True),
                ("depth", doc["depth"] + 2),
                ("lead", self.rng.choice(PEOPLE[:6])),
            ]
        )
        doc[field] = value
        doc["updatedAt"] = self.now
        self.dbs.source.requests.update_one(
            {"_id": doc["_id"]}, {"$set": {field: value, "updatedAt": self.now}}
        )

    def at(self) -> Callable[[], datetime]:
        now = self.now
        return lambda: now


class Killed(BaseException):
    """A run dying (not an Exception: nothing in the code under test catches it)."""


# Where a run may die: before a write of days, of a level, of a mark or of the ledger, and
# before it derives months.
KILL_POINTS = [
    (rollup, "save_days"),
    (rollup, "replace_rows"),
    (rollup, "mark_stale"),
    (rollup, "derive_months"),
    (rollup, "derive_marked"),
    (rollup, "clear_stale"),
    (platform, "write_levels"),
    (ledger, "stamp_days"),
    (ledger, "mark_dirty"),
    (ledger, "clear_dirty"),
    (ledger, "nightly_done"),
    (ledger, "switch"),
]


class Fate:
    killed = False


@contextlib.contextmanager
def dying(rng: random.Random, kills: bool) -> Iterator[Fate]:
    """With `kills`, two runs in three are to die at the n-th passage through any kill
    point, n drawn from `rng` (a run that passes fewer times finishes: about two runs in
    five die). A run that dies writes nothing more: its record stays running and its lease
    held, as after a crash; the next run finds the lease expired."""
    fate = Fate()
    if not kills or rng.random() < 1 / 3:
        yield fate
        return
    left = [rng.randint(1, 12)]

    def mortal(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            left[0] -= 1
            if left[0] == 0:
                fate.killed = True
                raise Killed(name)
            return real(*args, **kwargs)

        return call

    def unless_dead(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            return None if fate.killed else real(*args, **kwargs)

        return call

    patched = [
        *((module, name, mortal(name, getattr(module, name))) for module, name in KILL_POINTS),
        (runs, "update_run", unless_dead(runs.update_run)),
        (runs.Lease, "release", unless_dead(runs.Lease.release)),
    ]
    reals = [(owner, name, getattr(owner, name)) for owner, name, _ in patched]
    for owner, name, fake in patched:
        setattr(owner, name, fake)
    try:
        yield fate
    except Killed:
        pass
    finally:
        for owner, name, real in reals:
            setattr(owner, name, real)


# (transactions, rows bound of a transaction, LONG_IN, MARKED_ORGS)
CONFIGS = [
    (True, 20_000, 200, rollup.MARKED_ORGS),
    (True, 20_000, 200, rollup.MARKED_ORGS),
    (True, 2, 200, rollup.MARKED_ORGS),
    (False, 20_000, 200, rollup.MARKED_ORGS),
    (False, 2, 200, rollup.MARKED_ORGS),
    # As with many organizations: months derived after their days, for the organizations
    # that changed (in sets of at most two day rows), or whole.
    (True, 20_000, 1, 1),
    (True, 2, 1, rollup.MARKED_ORGS),
]


# Each setting played once with every run finishing, and with six seeds where runs die.
GAMES = [(n + 1, False, *config) for n, config in enumerate(CONFIGS)]
GAMES += [(10 + n, True, *CONFIGS[n % len(CONFIGS)]) for n in range(6 * len(CONFIGS))]


@pytest.mark.parametrize(("seed", "kills", "transactions", "rows", "long_in", "marked"), GAMES)
def test_random_sequences_of_runs_leave_every_computed_day_exact(
    make_dbs: Callable[..., Databases],
    monkeypatch: pytest.MonkeyPatch,
    seed: int,
    kills: bool,
    transactions: bool,
    rows: int,
    long_in: int,
    marked: int,
) -> None:
    monkeypatch.setattr(rollup, "LONG_IN", long_in)
    monkeypatch.setattr(rollup, "MARKED_ORGS", marked)
    dbs = make_dbs(transaction_rows=rows)
    if transactions:
        play(dbs, seed, kills)
        return
    plain = connect(dbs.settings, dbs.uri, transactions=False)  # as on a standalone server
    try:
        play(plain, seed, kills)
    finally:
        plain.close()


def play(dbs: Databases, seed: int, kills: bool = False) -> None:
    rng = random.Random(seed)
    world = World(dbs, rng, MORE_ORGS, 70) if kills else World(dbs, rng)
    for _ in range(8):
        world.insert()
    runner.run_nightly(dbs, world.now, world.at())
    checked = 0
    for step in range(14):
        world.tick()
        for _ in range(rng.randint(0, 4)):
            rng.choice([world.insert, world.change, world.change])()
        world.tick()
        kind = rng.choice(["nightly", "nightly", "nightly", "backfill", "repair", "rebuild"])
        today = world.now.date()
        with dying(rng, kills) as fate:
            if kind == "backfill":
                first = today - timedelta(days=rng.randint(5, world.back + 15))
                last = first + timedelta(days=rng.randint(0, 10))
                runner.run_backfill(dbs, first, last, world.now, world.at())
            elif kind == "repair":
                first, last = today - timedelta(days=40), today
                if kills:  # a part of the range, as an engineer mends one
                    first = today - timedelta(days=rng.randint(5, world.back + 15))
                    last = first + timedelta(days=rng.randint(0, 20))
                runner.verify_range(dbs, first, last, world.now, world.at(), repair=True)
            elif kind == "rebuild":
                runner.run_rebuild(dbs, world.now, world.at())
            else:
                runner.run_nightly(dbs, world.now, world.at())
        if kind == "nightly" and not fate.killed:
            check(dbs, world, (seed, step))
            checked += 1
    assert kills or checked >= 5
    world.tick()
    runner.run_nightly(dbs, world.now, world.at())
    check(dbs, world, (seed, "last"))
    # Nothing a dying run left behind outlives the run that finished after it.
    generation = served(dbs)[0]
    assert rollup.stale_months(dbs, generation) == []
    assert ledger.dirty_days(dbs, generation) == []
    assert dbs.rollup[runs.RUNS].count_documents({"status": runs.RUNNING}) == 0


def check(dbs: Databases, world: World, where: tuple[int, int | str]) -> None:
    generation, daily, months = served(dbs)
    covered = set(ledger.covered_days(dbs, generation))
    assert daily == expected(world.docs, covered), where
    assert months == sums(daily, lambda o, a, d: (o, a, d[:7])), where
    org_days = stored(dbs, "usage_org_daily", generation, "org_id", "day")
    assert org_days == sums(daily, lambda o, a, d: (o, d)), where
    org_months = stored(dbs, "usage_org_monthly", generation, "org_id", "month")
    assert org_months == sums(daily, lambda o, a, d: (o, d[:7])), where
    assert platform_stored(dbs, generation, "day") == org_days, where
    assert platform_stored(dbs, generation, "month") == org_months, where
    users = billable_users(world.docs, covered)
    assert served_users(dbs, generation) == distinct(users), where
