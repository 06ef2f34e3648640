"""The billable filter and the aggregation pipelines over `requests` (pure: builds dicts)."""

from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from etl.profiles import INFO_SUBTYPE, SYSTEM_SENDER, Profile
from etl.settings import Settings

UNATTRIBUTED = "unattributed"
DAY_FORMAT = "%Y-%m-%d"
# No real conversation has a million messages; such a depth is corrupt and would distort sums.
MAX_DEPTH = 1_000_000

OBJECT_ID_PATTERN = "^[0-9a-fA-F]{24}$"


def day_start_utc(day: date, zone: ZoneInfo) -> datetime:
    """The instant (naive UTC, as BSON dates are) at which `day` begins in `zone`."""
    local = datetime.combine(day, time(0), tzinfo=zone)
    return local.astimezone(ZoneInfo("UTC")).replace(tzinfo=None)


def utc_range(first: date, last: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """Half-open UTC interval covering the local days first..last inclusive."""
    return day_start_utc(first, zone), day_start_utc(last + timedelta(days=1), zone)


def billable_match(settings: Settings) -> dict[str, Any]:
    """The deployment profile's billable filter, all on the request's own fields."""
    match: dict[str, Any] = {
        "status": settings.billable_status,
        "depth": {"$gt": settings.billable_min_depth},
    }
    if settings.exclude_test_mode:
        match["isTestMode"] = {"$ne": True}
    return match


def message_count_stages() -> list[dict[str, Any]]:
    """Set `depth` to the number of the request's messages that count (tiledesk profile).

    A message counts unless the system wrote it (see `etl.profiles`). The equality of
    `request_id` and `recipient` uses an index on `messages.recipient` (the concise form of
    `$lookup`, MongoDB 5.0 or later; the `let`/`$expr` form is far slower on the embedded
    server). A request without a `request_id` would match messages without a `recipient`:
    only string recipients count.
    """
    real = {
        "recipient": {"$type": "string"},
        "sender": {"$ne": SYSTEM_SENDER},
        "attributes.subtype": {"$not": {"$regex": INFO_SUBTYPE}},
    }
    return [
        {
            "$lookup": {
                "from": "messages",
                "localField": "request_id",
                "foreignField": "recipient",
                "pipeline": [{"$match": real}, {"$project": {"_id": 1}}],
                "as": "counted",
            }
        },
        {"$addFields": {"depth": {"$size": "$counted"}}},
        {"$project": {"counted": 0}},
    ]


def billable_stages(
    settings: Settings, where: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The stages keeping billable conversations (and `where`), leaving their length in `depth`.

    For the tiledesk profile the cheap conditions come first, so that messages are counted
    only for closed conversations that are not tests.
    """
    where = where or {}
    if settings.profile.length == "depth":
        return [{"$match": {**billable_match(settings), **where}}]
    match: dict[str, Any] = {"status": settings.billable_status}
    if settings.exclude_test_mode:
        match[settings.profile.test_flag] = {"$ne": True}
    return [
        {"$match": {**match, **where}},
        *message_count_stages(),
        {"$match": {"depth": {"$gt": settings.billable_min_depth}}},
    ]


def _organization_expr(field: str) -> dict[str, Any]:
    org = f"${field}"
    return {
        "$switch": {
            "branches": [
                {"case": {"$eq": [{"$type": org}, "objectId"]}, "then": {"$toString": org}},
                {
                    "case": {
                        "$and": [
                            {"$eq": [{"$type": org}, "string"]},
                            # The length check, as `$` also matches before a final newline.
                            {"$eq": [{"$strLenCP": org}, 24]},
                            {"$regexMatch": {"input": org, "regex": OBJECT_ID_PATTERN}},
                        ]
                    },
                    "then": {"$toLower": org},
                },
            ],
            "default": None,
        }
    }


def _id_expr(value: Any, absent: str | None) -> dict[str, Any]:
    """`value` as an agent's or end user's id: an ObjectId or hex string lowercased, another
    string trimmed; `absent` when it names none (a blank string, any other type)."""
    return {
        "$let": {
            "vars": {"value": value},
            "in": {
                "$switch": {
                    "branches": [
                        {
                            "case": {"$eq": [{"$type": "$$value"}, "objectId"]},
                            "then": {"$toString": "$$value"},
                        },
                        {
                            "case": {"$eq": [{"$type": "$$value"}, "string"]},
                            "then": {
                                "$let": {
                                    "vars": {"id": {"$trim": {"input": "$$value"}}},
                                    "in": {
                                        "$switch": {
                                            "branches": [
                                                {
                                                    "case": {"$eq": ["$$id", ""]},
                                                    "then": absent,
                                                },
                                                # An ObjectId in hex names one agent
                                                # (or user) whatever its letter case;
                                                # trimmed, it ends in no newline for `$`.
                                                {
                                                    "case": {
                                                        "$regexMatch": {
                                                            "input": "$$id",
                                                            "regex": OBJECT_ID_PATTERN,
                                                        }
                                                    },
                                                    "then": {"$toLower": "$$id"},
                                                },
                                            ],
                                            "default": "$$id",
                                        }
                                    },
                                }
                            },
                        },
                    ],
                    "default": absent,
                }
            },
        }
    }


def _first_bot() -> dict[str, Any]:
    """The first of `participantsBots`, without the `bot_` prefix that `participants` and
    message senders carry (vanilla stores the list without it; a prefixed id is the same bot)."""
    bots = "$participantsBots"
    first = {"$arrayElemAt": [{"$cond": [{"$isArray": bots}, bots, []]}, 0]}
    prefix = "bot_"
    return {
        "$let": {
            "vars": {"bot": first},
            "in": {
                # Nested, not `$and`: string operators fail on other types.
                "$cond": [
                    {"$ne": [{"$type": "$$bot"}, "string"]},
                    "$$bot",
                    {
                        "$cond": [
                            {"$eq": [{"$indexOfCP": ["$$bot", prefix]}, 0]},
                            {"$substrCP": ["$$bot", len(prefix), {"$strLenCP": "$$bot"}]},
                            "$$bot",
                        ]
                    },
                ]
            },
        }
    }


def _agent_expr(profile: Profile) -> dict[str, Any]:
    if profile.name == "tiledesk":
        # The department snapshot keeps the bot after a handoff empties participantsBots.
        department_bot = _id_expr("$snapshot.department.id_bot", None)
        return {
            "$ifNull": [department_bot, {"$ifNull": [_id_expr(_first_bot(), None), UNATTRIBUTED]}]
        }
    # `attributes` may be absent, a string or an array; only an object's bot_id is an agent.
    bot = {"$cond": [{"$eq": [{"$type": "$attributes"}, "object"]}, "$attributes.bot_id", None]}
    return _id_expr(bot, UNATTRIBUTED)


def user_expr(fields: list[str]) -> dict[str, Any]:
    """A conversation's end user: the first of `fields` that names one, else removed (so
    `$addToSet` leaves it out: the conversation counts, but adds no user)."""
    expr: Any = "$$REMOVE"
    for name in reversed(fields):
        expr = {"$ifNull": [_id_expr(f"${name}", None), expr]}
    return dict(expr)


def _handoff_expr() -> dict[str, Any]:
    agents = "$participantsAgents"
    joined = {"$size": {"$cond": [{"$isArray": agents}, agents, []]}}
    return {"$cond": [{"$gt": [joined, 0]}, 1, 0]}


def _depth_skips() -> list[dict[str, Any]]:
    """Why a stored `depth` cannot be a message count; a counted one always is."""
    return [
        # `depth: {$gt: 2}` also matches an array holding such a number.
        {"case": {"$not": [{"$isNumber": "$depth"}]}, "then": "bad_depth"},
        {"case": {"$gt": ["$depth", MAX_DEPTH]}, "then": "depth_out_of_range"},
        # A message count is whole; 2.5 would pass the filter and then
        # add a truncated 2 to messages.
        {
            "case": {"$ne": ["$depth", {"$floor": "$depth"}]},
            "then": "bad_depth",
        },
    ]


def rollup_pipeline(first: date, last: date, settings: Settings) -> list[dict[str, Any]]:
    """Group billable conversations created on local days first..last by (day, org, agent).

    Each output document is
    `{_id: {day, org, agent, skip}, conversations, messages, handoffs, users}`, `users` being
    the group's distinct end users (see `user_expr`); `skip` names why a group cannot be
    counted (None when it can).
    """
    start, end = utc_range(first, last, settings.zone)
    profile = settings.profile
    return [
        # The createdAt range alone comes first so that every planner can use its index.
        {"$match": {"createdAt": {"$gte": start, "$lt": end}}},
        *billable_stages(settings),
        {
            "$project": {
                "_id": 0,
                # A range $match also matches an array holding a date; only a date has a day.
                "day": {
                    "$cond": [
                        {"$eq": [{"$type": "$createdAt"}, "date"]},
                        {
                            "$dateToString": {
                                "date": "$createdAt",
                                "format": DAY_FORMAT,
                                "timezone": settings.timezone,
                            }
                        },
                        None,
                    ]
                },
                "org": _organization_expr(profile.organization),
                "agent": _agent_expr(profile),
                "handoff": _handoff_expr(),
                "user": user_expr(settings.user_fields),
                "depth": 1,
            }
        },
        {
            "$addFields": {
                "skip": {
                    "$switch": {
                        "branches": [
                            {"case": {"$eq": ["$day", None]}, "then": "bad_created_at"},
                            {"case": {"$eq": ["$org", None]}, "then": "no_organization"},
                            *(_depth_skips() if profile.length == "depth" else []),
                        ],
                        "default": None,
                    }
                }
            }
        },
        {
            "$group": {
                "_id": {"day": "$day", "org": "$org", "agent": "$agent", "skip": "$skip"},
                "conversations": {"$sum": 1},
                "messages": {
                    "$sum": {"$cond": [{"$eq": ["$skip", None]}, {"$toLong": "$depth"}, 0]}
                },
                "handoffs": {"$sum": "$handoff"},
                "users": {"$addToSet": "$user"},
            }
        },
    ]


def bad_created_at_pipeline(
    settings: Settings, changed_since: datetime | None
) -> list[dict[str, Any]]:
    """Count billable-looking documents whose createdAt cannot place them on any day.

    With `changed_since`, only those updated since then: the updatedAt range comes first,
    alone, so that the count reads recent documents only, however long the history.
    """
    stages: list[dict[str, Any]] = []
    if changed_since is not None:
        stages.append({"$match": {"updatedAt": {"$gte": changed_since}}})
    unplaceable = {"createdAt": {"$not": {"$type": "date"}}}
    return [*stages, *billable_stages(settings, unplaceable), {"$count": "n"}]


def changed_days_pipeline(
    changed_since: datetime, before: date, settings: Settings
) -> list[dict[str, Any]]:
    """Local days before `before` holding documents updated at or after `changed_since`,
    each with the latest such update."""
    return [
        {"$match": {"updatedAt": {"$gte": changed_since}}},
        {"$match": {"createdAt": {"$type": "date", "$lt": day_start_utc(before, settings.zone)}}},
        {
            "$group": {
                "_id": {
                    "$dateToString": {
                        "date": "$createdAt",
                        "format": DAY_FORMAT,
                        "timezone": settings.timezone,
                    }
                },
                "updated": {"$max": "$updatedAt"},
            }
        },
    ]
