"""The tiledesk source profile: vanilla Tiledesk's documents counted right.

The fixture in tests/fixtures/tiledesk-2.19.16/ was written by Tiledesk server 2.19.16's own
code;
its expected numbers below were counted by hand from its JSON files, never by the code under
test.
"""

from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId, json_util

from api.usage import UsageService
from etl import indexes, runner, vanilla_sample
from etl.db import Databases
from etl.definition import DefinitionMismatch, of_settings
from etl.demo import demo_settings
from etl.sample import SampleSpec
from etl.settings import Settings
from tests.commands import one_line, usage
from tests.factories import (
    BOT_1,
    BOT_2,
    DROP,
    PROJECT_A,
    conversation,
    make_message,
    make_vanilla_request,
    staff_query,
)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "tiledesk-2.19.16"
COLLECTIONS = ("projects", "faq_kbs", "departments", "leads", "requests", "messages")

ROLLUP_PROJECT = "6b079bbb53eae449252262b9"  # "rollup-proj-1795660731248"
ROLLUP_BOT = "6b079bbb53eae449252262e4"  # "RollupBot"
REST_PROJECT = "6b079c296f6fae4c28133e91"  # "rest-proj-1795660840723"
REST_BOT = "6b079c296f6fae4c28133ec2"  # "RestBot"
FIXTURE_DAY = "2026-11-26"  # every fixture request was created on it (UTC)
AFTER_FIXTURE = datetime(2026, 11, 27, 2, 15)  # the night after


def at(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


def load_fixture(dbs: Databases) -> None:
    for name in COLLECTIONS:
        docs = json_util.loads((FIXTURE / f"{name}.json").read_text())
        dbs.source[name].insert_many(docs)


def backfill(dbs: Databases, first: str, last: str, now: datetime) -> runner.RunResult:
    return runner.run_backfill(
        dbs, date.fromisoformat(first), date.fromisoformat(last), now, at(now)
    )


def measures(dbs: Databases) -> dict[tuple[str, str, str], tuple[int, int, int]]:
    """(org, agent, day) -> (conversations, messages, handoffs), as stored."""
    return {
        (row["org_id"], row["agent_id"], row["day"]): (
            row["conversations"],
            row["messages"],
            row["handoffs"],
        )
        for row in dbs.usage_daily().find()
    }


def names(dbs: Databases, scope: str, org_id: str | None = None) -> dict[str, str]:
    query = staff_query(
        dbs.settings,
        scope,
        FIXTURE_DAY,
        FIXTURE_DAY,
        org_id=org_id,
        granularity="day",
        today=date(2026, 11, 27),
    )
    report = UsageService(dbs, 0).report(query)
    return {row["id"]: row["name"] for row in report["rows"]}


def test_the_vanilla_fixture_is_counted_per_project_and_bot(
    make_dbs: Callable[..., Databases],
) -> None:
    dbs = make_dbs(source_profile="tiledesk")
    load_fixture(dbs)
    backfill(dbs, "2026-11-20", FIXTURE_DAY, AFTER_FIXTURE)
    nightly = runner.run_nightly(dbs, AFTER_FIXTURE, at(AFTER_FIXTURE))
    # Counted by hand from requests.json and messages.json.
    # rollup-proj: 20 requests "hello 0".."hello 19" created through the services, department
    # bot RollupBot. Open (status 200): p4, p9, p14, p19; the other 16 are closed (1000).
    # The even ones were handed to Ann Agent (participantsAgents [Ann], participantsBots []):
    # visitor "hello", RollupBot "Hi, I am a bot", visitor "question", Ann "agent here" =
    # 4 messages; closed even: p0 2 6 8 10 12 16 18 = 8 conversations, 32 messages,
    # 8 handoffs. The odd ones stayed with the bot (3 messages, no agent); closed odd:
    # p1 3 5 7 11 13 15 17 = 8 conversations, 24 messages. None is a draft; 3 and 4 > 2.
    # rest-proj: 6 requests made over REST ("hello via REST n", "follow-up n" by Rita Rest,
    # then only system notices "Chat closed" / "A new support request has been assigned"):
    # 2 messages each, so none is billable with more than 2.
    assert measures(dbs) == {(ROLLUP_PROJECT, ROLLUP_BOT, FIXTURE_DAY): (16, 56, 8)}
    assert nightly.stats.skipped == {}
    # The 8 handed-over conversations have no participantsBots left and still count for
    # RollupBot: no unattributed row.
    assert names(dbs, "platform") == {ROLLUP_PROJECT: "rollup-proj-1795660731248"}
    assert names(dbs, "org", ROLLUP_PROJECT) == {ROLLUP_BOT: "RollupBot"}


def test_the_vanilla_fixture_with_more_than_one_message(
    make_dbs: Callable[..., Databases],
) -> None:
    dbs = make_dbs(source_profile="tiledesk", billable_min_depth=1)
    load_fixture(dbs)
    backfill(dbs, FIXTURE_DAY, FIXTURE_DAY, AFTER_FIXTURE)
    runner.run_nightly(dbs, AFTER_FIXTURE, at(AFTER_FIXTURE))
    # rollup-proj as above. rest-proj (bot RestBot, from snapshot.department.id_bot): closed
    # r0 r1 r3 r4 (r2 and r5 are status 200), 2 counted messages each = 4 conversations,
    # 8 messages; r0 and r4 went to an agent (participantsAgents [Rita], participantsBots
    # []) = 2 handoffs. Counting the system notices would have given r0 4, r1 3, r3 3, r4 4.
    assert measures(dbs) == {
        (ROLLUP_PROJECT, ROLLUP_BOT, FIXTURE_DAY): (16, 56, 8),
        (REST_PROJECT, REST_BOT, FIXTURE_DAY): (4, 8, 2),
    }
    assert names(dbs, "org", REST_PROJECT) == {REST_BOT: "RestBot"}
    # Users, from `lead` (an ObjectId of `leads`): each rollup-proj request has a lead of its
    # own; the rest-proj ones were all made by Rita Rest, one lead.
    users = {(row["org_id"], row["agent_id"]): row["users"] for row in dbs.usage_daily().find()}
    assert users == {(ROLLUP_PROJECT, ROLLUP_BOT): 16, (REST_PROJECT, REST_BOT): 1}


DAY = "2026-10-14"
NOW = datetime(2026, 10, 20, 12, 0)


def test_system_notices_are_not_messages(make_dbs: Callable[..., Databases]) -> None:
    dbs = make_dbs(source_profile="tiledesk")
    closed = {"attributes": {"subtype": "info/support", "messagelabel": {"key": "CHAT_CLOSED"}}}
    assigned = {"attributes": {"subtype": "info", "messagelabel": {"key": "TOUCHING_OPERATOR"}}}
    dbs.source.requests.insert_many(
        [make_vanilla_request("three"), make_vanilla_request("two"), make_vanilla_request("odd")]
    )
    dbs.source.messages.insert_many(
        [
            *conversation("three", 2),
            make_message("three", sender=f"bot_{BOT_1}", senderFullname="Bot"),
            make_message("three", sender="system", text="Chat closed", **closed),
            make_message("three", sender="system", text="assigned", **assigned),
            *conversation("two", 2),
            make_message("two", sender="system", text="Chat closed", **closed),
            # Neither the system's nor an info subtype: an odd message still counts.
            *conversation("odd", 2),
            make_message("odd", attributes="not-an-object"),
            make_message("odd", attributes={"subtype": "text"}),
            make_message("elsewhere"),  # another conversation's
            make_message("odd", recipient=DROP),
        ]
    )
    backfill(dbs, DAY, DAY, NOW)
    # three: 2 visitor + 1 bot = 3; two: 2; odd: 2 + 2 = 4.
    assert measures(dbs) == {(PROJECT_A, BOT_1, DAY): (2, 7, 0)}


def test_attribution_and_organization_in_vanilla_shape(
    make_dbs: Callable[..., Databases],
) -> None:
    dbs = make_dbs(source_profile="tiledesk")
    handed_over = {"participantsBots": [], "participantsAgents": ["6b079bbb53eae4492522629e"]}
    no_department = {"snapshot": {"agents": []}}
    requests: dict[str, dict[str, Any]] = {
        "handed-over": handed_over,
        "upper-bot": {"snapshot": {"department": {"id_bot": BOT_2.upper()}}},
        "oid-bot": {"snapshot": {"department": {"id_bot": ObjectId(BOT_2)}}},
        "participant": {**no_department, "participantsBots": [BOT_2]},
        "prefixed": {**no_department, "participantsBots": [f"bot_{BOT_2}"]},
        "blank-bot": {"snapshot": {"department": {"id_bot": " "}}, "participantsBots": []},
        "junk-snapshot": {"snapshot": "x", "participantsBots": "x"},
        "number-bot": {**no_department, "participantsBots": [7]},
        "oid-project": {"id_project": ObjectId(PROJECT_A)},
        "upper-project": {"id_project": PROJECT_A.upper()},
        "not-an-id": {"id_project": "proj1"},
        "no-project": {"id_project": DROP},
        "draft": {"draft": True},
        "not-draft": {"draft": False},
        "open": {"status": 200},
    }
    dbs.source.requests.insert_many(
        [make_vanilla_request(rid, **fields) for rid, fields in requests.items()]
    )
    dbs.source.messages.insert_many(
        [message for rid in requests for message in conversation(rid, 3)]
    )
    result = backfill(dbs, DAY, DAY, NOW)
    # BOT_1: handed-over, oid-project, upper-project, not-draft = 4, one handoff;
    # BOT_2: upper-bot, oid-bot, participant, prefixed = 4; unattributed: blank-bot,
    # junk-snapshot, number-bot = 3. Skipped: not-an-id, no-project. Not counted: draft, open.
    assert measures(dbs) == {
        (PROJECT_A, BOT_1, DAY): (4, 12, 1),
        (PROJECT_A, BOT_2, DAY): (4, 12, 0),
        (PROJECT_A, "unattributed", DAY): (3, 9, 0),
    }
    assert result.stats.skipped == {"no_organization": 2}


def test_a_message_added_to_an_old_conversation_is_counted_by_the_next_nightly_run(
    make_dbs: Callable[..., Databases],
) -> None:
    dbs = make_dbs(source_profile="tiledesk")
    created = datetime(2026, 10, 1, 9, 0)
    dbs.source.requests.insert_one(make_vanilla_request("late", createdAt=created))
    dbs.source.messages.insert_many(conversation("late", 3))
    first_night = datetime(2026, 10, 12, 2, 0)
    backfill(dbs, "2026-10-01", "2026-10-11", first_night)
    runner.run_nightly(dbs, first_night, at(first_night))
    assert measures(dbs) == {(PROJECT_A, BOT_1, "2026-10-01"): (1, 3, 0)}
    # Vanilla writes the message and then the request's attributes.last_message, which moves
    # its updatedAt; the day is far outside the lookback window.
    arrived = datetime(2026, 10, 20, 15, 0)
    message = make_message("late", text="one more thing", createdAt=arrived)
    dbs.source.messages.insert_one(message)
    dbs.source.requests.update_one(
        {"request_id": "late"},
        {"$set": {"attributes.last_message": message, "updatedAt": arrived}},
    )
    next_night = datetime(2026, 10, 21, 2, 0)
    runner.run_nightly(dbs, next_night, at(next_night))
    assert measures(dbs) == {(PROJECT_A, BOT_1, "2026-10-01"): (1, 4, 0)}


def test_the_profile_is_part_of_the_definition(make_dbs: Callable[..., Databases]) -> None:
    vanilla = of_settings(Settings(_env_file=None, source_profile="tiledesk"))
    deployment = of_settings(Settings(_env_file=None))
    assert vanilla.profile == "tiledesk" and deployment.profile == "deployment"
    assert vanilla.attribution != deployment.attribution
    assert vanilla.fingerprint != deployment.fingerprint
    dbs = make_dbs()
    backfill(dbs, DAY, DAY, NOW)
    dbs.settings = dbs.settings.model_copy(update={"source_profile": "tiledesk"})
    with pytest.raises(DefinitionMismatch, match="source profile: deployment -> tiledesk"):
        backfill(dbs, DAY, DAY, NOW)


def test_vanilla_names_come_from_projects() -> None:
    assert Settings(_env_file=None, source_profile="tiledesk").org_names == "projects"
    assert Settings(_env_file=None).org_names == "organizations"
    custom = Settings(_env_file=None, source_profile="tiledesk", org_names_collection="orgs")
    assert custom.org_names == "orgs"


def test_indexes_for_vanilla_include_messages_by_recipient(
    make_dbs: Callable[..., Databases],
) -> None:
    dbs = make_dbs(source_profile="tiledesk")
    shown = indexes.report(dbs, apply=False)
    assert [line.split()[:3] for line in shown] == [
        ["missing", "idx_created_at", "on"],
        ["missing", "idx_updated_at", "on"],
        ["missing", "idx_recipient", "on"],
    ]
    indexes.report(dbs, apply=True)
    keys = [list(info["key"].items()) for info in dbs.source.messages.list_indexes()]
    assert [("recipient", 1)] in keys
    assert all(line.startswith("present") for line in indexes.report(dbs, apply=False))


def test_vanilla_tiledesks_own_recipient_index_is_enough(
    make_dbs: Callable[..., Databases],
) -> None:
    dbs = make_dbs(source_profile="tiledesk")
    dbs.source.messages.create_index([("recipient", 1)], name="recipient_1")
    assert indexes.report(dbs, apply=False)[-1].startswith("present  idx_recipient")


def test_unplaceable_vanilla_conversations_are_skipped_by_reason(
    make_dbs: Callable[..., Databases],
) -> None:
    dbs = make_dbs(source_profile="tiledesk")
    first_night = datetime(2026, 10, 15, 2, 0)
    backfill(dbs, DAY, DAY, first_night)
    runner.run_nightly(dbs, first_night, at(first_night))
    touched = first_night + timedelta(hours=5)
    dbs.source.requests.insert_many(
        [
            make_vanilla_request("string-date", createdAt="2026-10-14", updatedAt=touched),
            make_vanilla_request("short", createdAt="2026-10-14", updatedAt=touched),
        ]
    )
    dbs.source.messages.insert_many([*conversation("string-date", 3), *conversation("short", 1)])
    night = datetime(2026, 10, 16, 2, 0)
    result = runner.run_nightly(dbs, night, at(night))
    # Only the one with more than 2 messages would have been billable.
    assert result.stats.skipped == {"bad_created_at": 1}


def test_the_tiledesk_demo_keeps_to_databases_of_its_own() -> None:
    base = Settings(_env_file=None)
    vanilla = demo_settings(base, "tiledesk")
    assert (vanilla.source_profile, vanilla.source_db, vanilla.rollup_db_name) == (
        "tiledesk",
        "tiledesk_vanilla",
        "tiledesk_vanilla",
    )
    assert demo_settings(base, None) == base
    configured = Settings(_env_file=None, source_profile="tiledesk", rollup_db="usage")
    assert demo_settings(configured, None).rollup_db_name == "usage_vanilla"


def test_the_vanilla_sample_has_the_fixtures_shape_and_is_counted(
    make_dbs: Callable[..., Databases],
) -> None:
    dbs = make_dbs(source_profile="tiledesk")
    spec = SampleSpec(organizations=2, internal=0, agents_per_org=2, per_day=12, days=6)
    now = datetime(2026, 10, 20, 12, 0)
    loaded = vanilla_sample.load(dbs, spec, now)
    requests = list(dbs.source.requests.find())
    assert len(requests) == loaded
    handed_over = [r for r in requests if r["participantsAgents"]]
    assert handed_over and all(r["participantsBots"] == [] for r in handed_over)
    assert all(r["snapshot"]["department"]["id_bot"] for r in handed_over)
    assert dbs.source.messages.count_documents({"sender": "system"}) > 0
    assert dbs.source.messages.count_documents({"sender": {"$regex": "^bot_"}}) > 0
    assert {p["name"] for p in dbs.source.projects.find()} == {"GIC", "Northwind Retail"}
    result = backfill(dbs, "2026-10-14", "2026-10-19", now)
    assert result.stats.conversations > 0
    agents = {row["agent_id"] for row in dbs.usage_daily().find()}
    bots = {str(bot["_id"]) for bot in dbs.source.faq_kbs.find()}
    assert agents and agents <= bots  # every conversation keeps its department's bot
    day_rows = list(dbs.usage_daily().find())
    assert all(row["users"] <= row["conversations"] for row in day_rows)
    # Visitors come back: fewer users than conversations over the rows, yet some.
    assert 0 < sum(row["users"] for row in day_rows) < sum(row["conversations"] for row in day_rows)


def test_an_unknown_profile_stops_start_up_in_one_line() -> None:
    result = usage("status", env={"USAGE_SOURCE_PROFILE": "vanilla"})
    assert result.returncode == 2
    assert "USAGE_SOURCE_PROFILE" in one_line(result.stderr)
