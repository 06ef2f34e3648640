"""Plain factory functions for source documents and rollup rows."""

from datetime import date, datetime, timedelta
from typing import Any

from bson import ObjectId

from etl import platform, sketches

ORG_A = ObjectId("65e18830a0616000137bb854")
ORG_B = ObjectId("65e18830a0616000137bb855")
BOT_1 = "6601aa00aa00aa00aa00aa01"
BOT_2 = "6601aa00aa00aa00aa00aa02"


def make_request(**overrides: Any) -> dict[str, Any]:
    """A billable, bot-attributed, closed web-chat conversation; override any field."""
    created = overrides.pop("createdAt", datetime(2026, 10, 14, 10, 0))
    touched = created if isinstance(created, datetime) else datetime(2026, 10, 14, 10, 0)
    doc: dict[str, Any] = {
        "id_organization": ORG_A,
        "id_project": "proj1",
        "status": 1000,
        "depth": 5,
        "attributes": {"bot_id": BOT_1},
        "participantsBots": [f"bot_{BOT_1}"],
        "participantsAgents": [],
        "channel": {"name": "chat21"},
        "createdAt": created,
        "updatedAt": touched + timedelta(hours=2),
        "closed_at": touched + timedelta(hours=2),
    }
    doc.update(overrides)
    return {key: value for key, value in doc.items() if value is not DROP}


DROP = object()


def make_row(
    org: str,
    agent: str,
    day: str,
    conversations: int,
    messages: int = 0,
    handoffs: int = 0,
    user_ids: list[str] | None = None,
) -> dict[str, Any]:
    """A usage_daily row, as the rollup stores it; with `user_ids`, its users and their
    sketch (omitted when there are none), as a rollup with users stores them."""
    row: dict[str, Any] = {
        "_id": f"{org}:{agent}:{day}",
        "org_id": org,
        "agent_id": agent,
        "day": day,
        "conversations": conversations,
        "messages": messages,
        "handoffs": handoffs,
    }
    if user_ids is not None:
        row["users"] = len(set(user_ids))
        if user_ids:
            row["users_hll"] = sketches.of_ids(user_ids)
    return row


def with_users(into: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A derived row's users: the union of its day rows' sketches, when they have users."""
    if any("users" in row for row in rows):
        union = sketches.union(row.get("users_hll") for row in rows)
        into["users"] = union.estimate().value
        if not union.empty:
            into["users_hll"] = union.sketch()
    return into


def summed(rows: list[dict[str, Any]], by_agent: bool, period: str) -> list[dict[str, Any]]:
    """Rows summed by (org[, agent], day or month), as a coarser level stores them."""
    out: dict[str, dict[str, Any]] = {}
    members: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        when = row["day"] if period == "day" else row["day"][:7]
        parts = [row["org_id"], row["agent_id"], when] if by_agent else [row["org_id"], when]
        key = ":".join(parts)
        into = out.setdefault(
            key,
            {
                "_id": key,
                "org_id": row["org_id"],
                period: when,
                "conversations": 0,
                "messages": 0,
                "handoffs": 0,
            },
        )
        members.setdefault(key, []).append(row)
        if by_agent:
            into["agent_id"] = row["agent_id"]
        for name in ("conversations", "messages", "handoffs"):
            into[name] += row[name]
    return [with_users(into, members[key]) for key, into in out.items()]


def monthly_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The usage_monthly rows that daily rows sum to."""
    return summed(rows, True, "month")


def store_rows(dbs: Any, rows: list[dict[str, Any]]) -> None:
    """Write day rows and every coarser level they sum to, as the rollup would."""
    dbs.usage_daily().insert_many([dict(row) for row in rows])
    dbs.usage_monthly().insert_many(monthly_rows(rows))
    by_day, by_month = summed(rows, False, "day"), summed(rows, False, "month")
    dbs.level("usage_org_daily").insert_many(by_day)
    dbs.level("usage_org_monthly").insert_many(by_month)
    periods: dict[platform.Period, list[dict[str, Any]]] = {}
    for row in by_day + by_month:
        periods.setdefault(platform.period_of(row), []).append(row)
    for period, members in periods.items():
        dbs.level("usage_platform").insert_many(platform.chunks(period, members))


def set_platform_figure(stored: Any, query: dict[str, Any], name: str, n: int, value: int) -> None:
    """Set the `n`th organization's `name` in the platform level's document matching
    `query` (a drift no run made)."""
    doc = platform.unpack(stored.find_one(query))
    doc[name][n] = value
    stored.replace_one({"_id": doc["_id"]}, platform.pack(doc))


def clear_rows(dbs: Any) -> None:
    levels = ("usage_daily", "usage_monthly", "usage_org_daily", "usage_org_monthly")
    for name in (*levels, "usage_platform"):
        dbs.level(name).delete_many({})


PROJECT_A = "6b079bbb53eae449252262b9"
PROJECT_B = "6b079c296f6fae4c28133e91"


def make_vanilla_request(request_id: str, **overrides: Any) -> dict[str, Any]:
    """A closed conversation as vanilla Tiledesk stores it (see the shared fixture)."""
    created = overrides.pop("createdAt", datetime(2026, 10, 14, 10, 0))
    touched = created if isinstance(created, datetime) else datetime(2026, 10, 14, 10, 0)
    doc: dict[str, Any] = {
        "request_id": request_id,
        "id_project": PROJECT_A,
        "status": 1000,
        "snapshot": {"department": {"name": "Default Department", "id_bot": BOT_1}},
        "participantsBots": [BOT_1],
        "participantsAgents": [],
        "channel": {"name": "chat21"},
        "createdAt": created,
        "updatedAt": touched + timedelta(hours=2),
        "closed_at": touched + timedelta(hours=2),
    }
    doc.update(overrides)
    return {key: value for key, value in doc.items() if value is not DROP}


def make_message(request_id: str, **overrides: Any) -> dict[str, Any]:
    """A visitor's message of a vanilla conversation; override `sender`, `attributes`, …"""
    doc: dict[str, Any] = {
        "recipient": request_id,
        "sender": "99191728-bb6d-48e0-bb75-47e06232ec68",
        "senderFullname": "Visitor 0",
        "text": "hello",
        "type": "text",
        "channel_type": "group",
        "id_project": PROJECT_A,
        "createdAt": datetime(2026, 10, 14, 10, 1),
    }
    doc.update(overrides)
    return {key: value for key, value in doc.items() if value is not DROP}


def conversation(request_id: str, messages: int, **overrides: Any) -> list[dict[str, Any]]:
    """`messages` messages of one vanilla conversation."""
    return [make_message(request_id, text=f"m{n}", **overrides) for n in range(messages)]


def staff_query(
    settings: Any,
    scope: str,
    start: str,
    end: str,
    *,
    org_id: str | None = None,
    granularity: str = "month",
    include_internal: bool = False,
    today: date = date(2026, 11, 1),
) -> Any:
    """A usage query as platform staff ask it, through the API's own parameter rules."""
    from api.auth import Principal
    from api.usage import resolve_query

    return resolve_query(
        scope=scope,  # type: ignore[arg-type]
        org_id=org_id,
        agent_id=None,
        start=start,
        end=end,
        granularity=granularity,  # type: ignore[arg-type]
        include_internal=include_internal,
        principal=Principal("k", "staff", None),
        today=today,
        settings=settings,
    )


# A definition as version 2 stored it, before users were counted, with its fingerprint then.
STORED_V2 = {
    "timezone": "UTC",
    "billable_status": 1000,
    "billable_min_depth": 2,
    "exclude_test_mode": True,
    "profile": "deployment",
    "attribution": "attributes.bot_id, else unattributed",
    "skip_rules": "no_organization, bad_created_at, bad_depth, depth_out_of_range",
    "version": 2,
    "fingerprint": "ad3bc926ccda",
}
