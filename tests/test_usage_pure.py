"""Pure parts of the usage API: resolving a query's parameters, folding rows, paging."""

import random
from dataclasses import replace
from datetime import date
from typing import Any

import pytest

from api.auth import Principal
from api.buckets import make_buckets
from api.cells import change_of
from api.usage import (
    Forbidden,
    Page,
    ParamError,
    UsageQuery,
    fold,
    make_lines,
    paginate,
    resolve_query,
)
from etl import sketches
from etl.settings import Settings

A, B = "65e18830a0616000137bb854", "65e18830a0616000137bb855"
BOT = "6601aa00aa00aa00aa00aa01"
TODAY = date(2026, 11, 25)
STAFF = Principal("k1", "staff", None)
CUSTOMER = Principal("k2", "GIC", A)
SETTINGS = Settings(_env_file=None, mongodb_uri="mongodb://unused", max_range_days=366)


def resolve(principal: Principal = STAFF, **given: Any) -> UsageQuery:
    params: dict[str, Any] = {
        "scope": "platform",
        "org_id": None,
        "agent_id": None,
        "start": None,
        "end": None,
        "granularity": "auto",
        "include_internal": False,
    }
    params.update(given)
    return resolve_query(**params, principal=principal, today=TODAY, settings=SETTINGS)


@pytest.mark.parametrize(
    ("principal", "given", "expected"),
    [
        # Staff, platform default: six whole months, monthly.
        (STAFF, {}, ("platform", None, None, "2026-05-01", "2026-10-31", "month")),
        # Org default: the last 30 days, weekly; ids lowercased.
        (
            STAFF,
            {"scope": "org", "org_id": A.upper()},
            ("org", A, None, "2026-10-27", "2026-11-25", "week"),
        ),
        # An agent id in capitals is the same agent.
        (
            STAFF,
            {"scope": "agent", "org_id": A, "agent_id": BOT.upper(), "start": "2026-11-20"},
            ("agent", A, BOT, "2026-11-20", "2026-12-19", "week"),
        ),
        # A customer's platform request becomes its own organization's.
        (CUSTOMER, {}, ("org", A, None, "2026-10-27", "2026-11-25", "week")),
        # Only an end: the default length before it; seven days or fewer: daily.
        (
            STAFF,
            {"scope": "org", "org_id": A, "end": "2026-11-07", "start": "2026-11-01"},
            ("org", A, None, "2026-11-01", "2026-11-07", "day"),
        ),
        # One date near the ends of the calendar: the worked-out one stays within it.
        (
            STAFF,
            {"start": "9998-12-31"},
            ("platform", None, None, "9998-12-31", "9998-12-31", "day"),
        ),
        (
            STAFF,
            {"end": "0002-01-05"},
            ("platform", None, None, "0002-01-01", "0002-01-05", "day"),
        ),
    ],
)
def test_resolving_a_query(principal: Principal, given: dict[str, Any], expected: tuple) -> None:
    query = resolve(principal, **given)
    got = (
        query.scope,
        query.org_id,
        query.agent_id,
        query.first.isoformat(),
        query.last.isoformat(),
        query.granularity,
    )
    assert got == expected


@pytest.mark.parametrize(
    ("principal", "given", "error", "parameter"),
    [
        (STAFF, {"scope": "org"}, ParamError, "org_id"),
        (STAFF, {"scope": "org", "org_id": "nope"}, ParamError, "org_id"),
        (STAFF, {"scope": "agent", "org_id": A}, ParamError, "agent_id"),
        (STAFF, {"scope": "agent", "org_id": A, "agent_id": "x" * 1025}, ParamError, "agent_id"),
        (STAFF, {"start": "2026-11-02", "end": "2026-11-01"}, ParamError, "start"),
        (STAFF, {"start": "2026/11/01"}, ParamError, "start"),
        (STAFF, {"start": "2024-01-01", "end": "2026-01-01"}, ParamError, "end"),
        (CUSTOMER, {"scope": "org", "org_id": B}, Forbidden, None),
        (CUSTOMER, {"include_internal": True}, Forbidden, None),
    ],
)
def test_bad_or_forbidden_queries_are_refused(
    principal: Principal, given: dict[str, Any], error: type[Exception], parameter: str | None
) -> None:
    with pytest.raises(error) as raised:
        resolve(principal, **given)
    if parameter is not None:
        assert isinstance(raised.value, ParamError) and raised.value.param == parameter


BUCKETS = make_buckets(date(2026, 10, 1), date(2026, 11, 30), "month", 0)


def group(row_id: str, month: str, conversations: int) -> dict[str, Any]:
    return {
        "_id": {"id": row_id, "b": month},
        "conversations": conversations,
        "messages": 10 * conversations,
        "handoffs": 0,
    }


def page_of(
    groups: list[dict[str, Any]], query: UsageQuery, names: dict[str, str], always: tuple = ()
) -> Page:
    lines = make_lines(fold(groups, BUCKETS, always), None, len(BUCKETS))
    return paginate(lines, len(BUCKETS), query, names)


def test_fold_puts_every_bucket_in_every_row_and_sorts_by_conversations() -> None:
    groups = [group(A, "2026-10", 2), group(B, "2026-11", 5), group(A, "2026-11", 1)]
    got = page_of(groups, resolve(), {A: "GIC"}, always=(BOT,))
    assert [(r.id, r.total().sums["conversations"]) for r in got.rows] == [
        (B, 5),
        (A, 3),
        (BOT, 0),  # asked for, no activity: a row of zeros
    ]
    assert [cell.sums["conversations"] for cell in got.rows[1].cells] == [2, 1]
    assert got.total.total().sums == {"conversations": 8, "messages": 80, "handoffs": 0}
    assert [cell.sums["messages"] for cell in got.total.cells] == [20, 60]


@pytest.mark.parametrize(
    ("limit", "offset", "q", "page", "other", "total", "count"),
    [
        (None, 0, None, ["r4", "r3", "r2", "r1"], None, 10, 4),
        (2, 0, None, ["r4", "r3"], 3, 10, 4),
        (2, 2, None, ["r2", "r1"], 7, 10, 4),
        (2, 3, None, ["r1"], 9, 10, 4),
        (5, 10, None, [], 10, 10, 4),
        (None, 0, "row 2", ["r2"], None, 2, 1),
        (1, 0, "ROW", ["r4"], 6, 10, 4),
    ],
)
def test_a_page_and_other_always_add_up_to_the_total(
    limit: int | None,
    offset: int,
    q: str | None,
    page: list[str],
    other: int | None,
    total: int,
    count: int,
) -> None:
    groups = [group(f"r{n}", "2026-10", n) for n in (1, 2, 3, 4)]
    names = {f"r{n}": f"Row {n}" for n in (1, 2, 3, 4)}
    query = replace(resolve(), limit=limit, offset=offset, q=q.casefold() if q else None)
    got = page_of(groups, query, names)
    assert [row.id for row in got.rows] == page
    assert (got.other.total().sums["conversations"] if got.other else None) == other
    assert got.total.total().sums["conversations"] == total
    assert got.total_rows == count


@pytest.mark.parametrize(
    ("metric", "now", "before", "expected"),
    [
        ("conversations", 6, 3, {"abs": 3, "pct": 100.0}),
        ("conversations", 1, 4, {"abs": -3, "pct": -75.0}),
        ("conversations", 5, 0, {"abs": 5, "pct": None}),  # no previous: no percentage
        ("users", 2, 3, {"abs": -1, "pct": -33.3}),
        ("users", None, 3, {"abs": None, "pct": None}),  # a rollup without users
        ("avg_depth", 44 / 6, 13 / 3, {"abs": 3.0, "pct": 69.2}),
        ("avg_depth", 5.0, None, {"abs": None, "pct": None}),  # no previous conversations
    ],
)
def test_a_change_is_absolute_and_in_percent_of_the_previous_figure(
    metric: str, now: float | None, before: float | None, expected: dict[str, Any]
) -> None:
    assert change_of(metric, now, before) == expected


@pytest.mark.parametrize(
    ("given", "parameter"),
    [
        ({"sort": "change"}, "sort"),
        ({"start": "0002-01-01", "end": "0002-01-31", "compare": "previous"}, "compare"),
    ],
)
def test_comparisons_that_cannot_be_made_are_refused(given: dict[str, Any], parameter: str) -> None:
    with pytest.raises(ParamError) as raised:
        resolve(**given)
    assert raised.value.param == parameter


def test_order_defaults_to_descending_and_to_ascending_for_names() -> None:
    assert resolve().order == "desc"
    assert resolve(sort="name").order == "asc"
    assert resolve(sort="name", order="desc").order == "desc"


def sketched_group(row_id: str, month: str, rng: random.Random) -> dict[str, Any]:
    """A group of stored rows with sketches of a few, some hundreds or thousands of users."""
    ids = [f"user{rng.randrange(6000)}" for _ in range(rng.choice([1, 3, 50, 400, 3000]))]
    return {
        **group(row_id, month, rng.randrange(1, 50)),
        "rows": rng.choice([1, 2, 5]),
        "derived": rng.random() < 0.3,
        "users": len(set(ids)),
        "users_hll": [sketches.of_ids(ids)],
    }


@pytest.mark.parametrize("seed", [0, 1, 2, 19, 149])
def test_a_figure_over_the_same_stored_rows_is_the_same_whatever_line_it_is_on(seed: int) -> None:
    # The only row, the total and an Other of that one row cover the same sketches: their
    # users must agree to the user, though a union of sketches depends on what it unites.
    rng = random.Random(seed)
    buckets = make_buckets(date(2026, 11, 1), date(2026, 11, 6), "day", 0)
    groups = [
        sketched_group(A, bucket.key, rng)
        for bucket in buckets
        for _ in range(rng.choice([0, 1, 1, 3]))
    ]
    lines = make_lines(fold(groups, buckets), None, len(buckets))
    alone = paginate(lines, len(buckets), resolve(), {}, with_users=True)
    paged = paginate(lines, len(buckets), replace(resolve(), limit=0), {}, with_users=True)
    row = alone.rows[0].total().doc(with_users=True)
    assert alone.total.total().doc(with_users=True) == row
    assert paged.other is not None and paged.other.total().doc(with_users=True) == row


def test_positions_of_a_few_ids_are_found_as_a_scan_finds_them() -> None:
    """A few ids are looked up by bisection in a document's sorted ids, many by a scan: both
    give the positions a plain scan gives, ids absent from the document ignored."""
    from api.platform_view import positions

    rng = random.Random(5)
    for _ in range(200):
        orgs = sorted({f"{rng.randrange(16**6):024x}" for _ in range(rng.randrange(0, 400))})
        wanted = set(rng.sample(orgs, min(len(orgs), rng.randrange(0, 8))))
        wanted |= {f"{rng.randrange(16**6):024x}" for _ in range(rng.randrange(0, 4))}
        expected = [n for n, org in enumerate(orgs) if org in wanted]
        assert positions(orgs, wanted) == expected
