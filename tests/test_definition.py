"""Pure parts of the rollup's integrity: the definition, nightly planning, coverage."""

from dataclasses import replace
from datetime import date, datetime

import pytest

from etl.definition import Definition, DefinitionMismatch, differences, of_settings
from etl.ledger import coverage_of
from etl.runner import plan_nightly
from etl.settings import Settings
from tests.factories import STORED_V2

BASE = Definition(
    timezone="UTC", billable_status=1000, billable_min_depth=2, exclude_test_mode=True
)


@pytest.mark.parametrize(
    ("change", "line"),
    [
        ({"timezone": "America/New_York"}, "timezone: UTC -> America/New_York"),
        ({"billable_status": 300}, "billable status: 1000 -> 300"),
        ({"billable_min_depth": 5}, "minimum depth: 2 -> 5"),
        ({"exclude_test_mode": False}, "exclude test mode: True -> False"),
        ({"profile": "tiledesk"}, "source profile: deployment -> tiledesk"),
        ({"version": 1}, "pipeline version: 3 -> 1"),
        ({"users_from": ("lead",)}, "user fields: none -> lead"),
    ],
)
def test_every_field_of_the_definition_changes_the_fingerprint_and_is_named(
    change: dict[str, object], line: str
) -> None:
    other = replace(BASE, **change)
    assert other.fingerprint != BASE.fingerprint
    assert differences(BASE, other) == [line]
    assert line in str(DefinitionMismatch(BASE, other))


def test_the_fingerprint_is_stable_and_survives_storage() -> None:
    again = Definition.from_doc(BASE.as_doc())
    assert again == BASE and again.fingerprint == BASE.fingerprint
    assert len(BASE.fingerprint) == 12
    assert differences(BASE, again) == []


def test_the_user_fields_are_part_of_the_definition_in_order() -> None:
    first = replace(BASE, users_from=("lead", "requester"))
    other = replace(BASE, users_from=("requester", "lead"))
    assert first.fingerprint != other.fingerprint
    assert differences(first, other) == ["user fields: lead, requester -> requester, lead"]
    again = Definition.from_doc(first.as_doc())
    assert again == first and again.fingerprint == first.fingerprint
    assert first.as_doc()["users_from"] == ["lead", "requester"]


def test_a_definition_stored_before_users_keeps_its_fingerprint() -> None:
    old = Definition.from_doc(STORED_V2)
    assert old.users_from is None
    assert old.fingerprint == STORED_V2["fingerprint"]
    assert old.as_doc() == STORED_V2


def test_the_current_settings_differ_from_a_version_2_rollup_by_version_and_users() -> None:
    wanted = of_settings(Settings(_env_file=None))
    assert wanted.users_from == ("lead", "requester")
    assert differences(Definition.from_doc(STORED_V2), wanted) == [
        "pipeline version: 2 -> 3",
        "user fields: none -> lead, requester",
    ]
    assert "usage rebuild" in str(DefinitionMismatch(Definition.from_doc(STORED_V2), wanted))


def test_a_mismatch_names_each_difference_and_the_fix() -> None:
    other = replace(BASE, timezone="Europe/Rome", billable_min_depth=3)
    message = str(DefinitionMismatch(BASE, other))
    assert "timezone: UTC -> Europe/Rome; minimum depth: 2 -> 3" in message
    assert "usage rebuild" in message
    assert "\n" not in message


D = date.fromisoformat


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.mark.parametrize(
    ("last_today", "changes", "computed", "dirty", "days", "uncovered"),
    [
        # First run ever: the lookback window and today.
        (None, {}, {}, [], ["2026-10-17", "2026-10-18", "2026-10-19", "2026-10-20"], []),
        # Missed nights: back to the last nightly run's own day.
        ("2026-10-15", {}, {}, [], [f"2026-10-{d}" for d in range(15, 21)], []),
        # A change after its day was computed: recomputed.
        (
            "2026-10-19",
            {D("2026-10-01"): at("2026-10-19T05:00")},
            {D("2026-10-01"): at("2026-10-19T02:00")},
            [],
            ["2026-10-01", "2026-10-17", "2026-10-18", "2026-10-19", "2026-10-20"],
            [],
        ),
        # A change older than the day's computation (a backfill ran since): not again.
        (
            "2026-10-19",
            {D("2026-10-01"): at("2026-10-18T05:00")},
            {D("2026-10-01"): at("2026-10-19T02:00")},
            [],
            ["2026-10-17", "2026-10-18", "2026-10-19", "2026-10-20"],
            [],
        ),
        # Within the clock-skew margin: recomputed, to be safe.
        (
            "2026-10-19",
            {D("2026-10-01"): at("2026-10-19T01:55")},
            {D("2026-10-01"): at("2026-10-19T02:00")},
            [],
            ["2026-10-01", "2026-10-17", "2026-10-18", "2026-10-19", "2026-10-20"],
            [],
        ),
        # A change on a day never computed: reported, not computed.
        (
            "2026-10-19",
            {D("2026-03-01"): at("2026-10-19T05:00")},
            {},
            [],
            ["2026-10-17", "2026-10-18", "2026-10-19", "2026-10-20"],
            ["2026-03-01"],
        ),
        # A day a writer left dirty: recomputed whatever its age.
        (
            "2026-10-19",
            {},
            {},
            [D("2026-07-04")],
            ["2026-07-04", "2026-10-17", "2026-10-18", "2026-10-19", "2026-10-20"],
            [],
        ),
    ],
)
def test_nightly_planning(
    last_today: str | None,
    changes: dict[date, datetime],
    computed: dict[date, datetime],
    dirty: list[date],
    days: list[str],
    uncovered: list[str],
) -> None:
    plan = plan_nightly(
        D("2026-10-20"), 3, D(last_today) if last_today else None, changes, computed, dirty
    )
    assert [day.isoformat() for day in plan.days] == days
    assert [day.isoformat() for day in plan.uncovered] == uncovered


@pytest.mark.parametrize(
    ("days", "first", "last", "gaps"),
    [
        ([], None, None, []),
        (["2026-10-01"], "2026-10-01", "2026-10-01", []),
        (["2026-10-01", "2026-10-02", "2026-10-03"], "2026-10-01", "2026-10-03", []),
        (
            ["2026-10-01", "2026-10-04", "2026-10-05", "2026-10-09"],
            "2026-10-01",
            "2026-10-09",
            [("2026-10-02", "2026-10-03"), ("2026-10-06", "2026-10-08")],
        ),
    ],
)
def test_coverage_names_first_last_and_gaps(
    days: list[str], first: str | None, last: str | None, gaps: list[tuple[str, str]]
) -> None:
    cover = coverage_of([D(day) for day in days])
    assert (cover.first, cover.last) == (D(first) if first else None, D(last) if last else None)
    assert [(a.isoformat(), b.isoformat()) for a, b in cover.gaps] == gaps
    assert cover.days == len(days)
