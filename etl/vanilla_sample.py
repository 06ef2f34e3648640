"""A deterministic sample in vanilla Tiledesk's shape: projects, departments, bots, requests
and their messages, as Tiledesk server 2.19 writes them (for the tiledesk profile's demo)."""

import random
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

from etl.db import Databases, Doc
from etl.sample import EndUsers, Sample, SampleSpec, arrivals, first_day, make_sample, oid

CHAT_CLOSED = {
    "subtype": "info/support",
    "messagelabel": {"key": "CHAT_CLOSED"},
    "updateconversation": False,
}
TOUCHING_OPERATOR = {
    "subtype": "info",
    "messagelabel": {"key": "TOUCHING_OPERATOR"},
    "updateconversation": True,
    "forcenotification": True,
}


def projects_and_bots(sample: Sample, seed: int) -> tuple[list[Doc], list[Doc], list[Doc]]:
    """The sample's organizations as projects, their bots in `faq_kbs`, a department per bot."""
    rng = random.Random(seed)
    projects = [
        {**org, "status": 100, "channels": [{"name": "chat21"}]} for org in sample.organizations
    ]
    bots: list[Doc] = []
    departments: list[Doc] = []
    for bot in sample.bots:
        project = str(bot["id_organization"])
        bots.append(
            {"_id": bot["_id"], "name": bot["name"], "id_project": project, "type": "tilebot"}
        )
        first = not departments or departments[-1]["id_project"] != project
        departments.append(
            {
                "_id": oid(rng),
                "name": "Default Department" if first else f"{bot['name']} desk",
                "default": first,
                "routing": "assigned",
                "id_project": project,
                "id_bot": str(bot["_id"]),
            }
        )
    return projects, bots, departments


def generate(
    sample: Sample, departments: list[Doc], spec: SampleSpec, now: datetime
) -> Iterator[tuple[Doc, list[Doc]]]:
    """(request, its messages) over `spec.days` days up to `now` (naive UTC)."""
    rng = random.Random(spec.seed * 7919)
    people = EndUsers(spec)
    for created, org in arrivals(rng, sample, spec, now):
        desks = [desk for desk in departments if desk["id_project"] == str(org["_id"])]
        desk = rng.choices(desks, [4, 2, 1, 1, 1][: len(desks)])[0]
        request, messages = conversation(rng, desk, created, now)
        # A returning visitor is the same lead of the project (and the same project user).
        lead, requester = people.who(org["_id"])
        for name, value in (("lead", lead), ("requester", requester)):
            if value is None:
                del request[name]
            else:
                request[name] = value
        yield request, messages
    yield from malformed(rng, departments[-1], first_day(spec, now), now)


def conversation(
    rng: random.Random, desk: Doc, created: datetime, now: datetime
) -> tuple[Doc, list[Doc]]:
    project, bot = desk["id_project"], desk["id_bot"]
    visitor = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    agent = str(oid(rng))
    request_id = f"support-group-{project}-{uuid.UUID(int=rng.getrandbits(128), version=4).hex}"
    handoff = rng.random() < 0.12
    # The visitor and the bot take turns; a handed-over conversation goes on with an agent.
    turns = max(1, int(rng.lognormvariate(1.3, 0.6)))
    said: list[tuple[str, str, dict[str, object] | None]] = []
    for n in range(turns):
        said.append((visitor, f"Visitor {visitor[:4]}", None))
        if n < turns - 1 or rng.random() < 0.7:
            said.append((f"bot_{bot}", "Bot", None))
    if handoff:
        said.append(("system", "Bot", TOUCHING_OPERATOR))
        for _ in range(rng.randint(1, 4)):
            said.append((agent, "Agent", None))
            said.append((visitor, f"Visitor {visitor[:4]}", None))
    moment = created
    messages: list[Doc] = []
    for sender, name, attributes in said:
        moment += timedelta(seconds=rng.randint(2, 90))
        messages.append(message(request_id, project, sender, name, moment, attributes))
    close_after = timedelta(hours=rng.uniform(1, 50 if not handoff else 120))
    closed_at = moment + close_after
    is_closed = closed_at <= now and rng.random() > 0.01
    if is_closed and rng.random() < 0.5:
        messages.append(message(request_id, project, "system", "Bot", closed_at, CHAT_CLOSED))
    messages = [msg for msg in messages if msg["createdAt"] < now]
    last = messages[-1] if messages else None
    draft = rng.random() < 0.04
    page = "https://example.com/widget" + ("?td_draft=true" if draft else "")
    request: Doc = {
        "request_id": request_id,
        "id_project": project,
        "status": 1000 if is_closed else rng.choice([100, 200, 200, 300]),
        "participants": [agent] if handoff else [f"bot_{bot}"],
        "participantsAgents": [agent] if handoff else [],
        # Vanilla empties the bots on a handoff; the department snapshot keeps the bot.
        "participantsBots": [] if handoff else [bot],
        "hasBot": not handoff,
        "department": desk["_id"],
        "snapshot": {"department": {**desk}, "lead": {"lead_id": visitor}},
        "lead": oid(rng),
        "requester": oid(rng),
        "first_text": "hello",
        "attributes": {"sourcePage": page, **({"last_message": {**last}} if last else {})},
        "channel": {"name": "chat21"},
        "createdBy": visitor,
        "createdAt": created,
        "updatedAt": closed_at if is_closed else (last["createdAt"] if last else created),
    }
    if is_closed:
        request["closed_at"] = closed_at
        request["closed_by"] = agent if handoff else "_bot_unresponsive"
    if draft:
        request["draft"] = True
    return request, messages


def message(
    request_id: str,
    project: str,
    sender: str,
    name: str,
    at: datetime,
    attributes: dict[str, object] | None,
) -> Doc:
    doc: Doc = {
        "recipient": request_id,
        "sender": sender,
        "senderFullname": name,
        "text": "…",
        "type": "text",
        "channel_type": "group",
        "status": 200,
        "id_project": project,
        "createdBy": sender,
        "channel": {"name": "chat21"},
        "createdAt": at,
        "updatedAt": at,
    }
    if attributes is not None:
        doc["attributes"] = attributes
    return doc


def malformed(
    rng: random.Random, desk: Doc, start: datetime, now: datetime
) -> Iterator[tuple[Doc, list[Doc]]]:
    """A few closed conversations no project or day can hold: skipped by reason."""
    span = int((now - start).total_seconds()) - 86400 * 3
    for n in range(6):
        created = start + timedelta(seconds=rng.randrange(max(span, 1)))
        request, messages = conversation(rng, desk, created, created + timedelta(days=30))
        request["status"] = 1000
        kind = n % 3
        if kind == 0:
            del request["id_project"]
        elif kind == 1:
            request["id_project"] = "not-an-id"
        else:
            request["createdAt"] = created.isoformat()
        yield request, messages


def load(dbs: Databases, spec: SampleSpec, now: datetime, batch: int = 2000) -> int:
    """Insert the vanilla sample into the source database; return the number of requests."""
    sample = make_sample(spec)
    projects, bots, departments = projects_and_bots(sample, spec.seed)
    dbs.source[dbs.settings.org_names].insert_many(projects)
    dbs.source[dbs.settings.agent_names_collection].insert_many(bots)
    dbs.source["departments"].insert_many(departments)
    total = 0
    requests: list[Doc] = []
    messages: list[Doc] = []
    for request, said in generate(sample, departments, spec, now):
        requests.append(request)
        messages.extend(said)
        if len(requests) >= batch:
            total += flush(dbs, requests, messages)
    return total + flush(dbs, requests, messages)


def flush(dbs: Databases, requests: list[Doc], messages: list[Doc]) -> int:
    count = len(requests)
    if requests:
        dbs.source["requests"].insert_many(requests, ordered=False)
    if messages:
        dbs.source["messages"].insert_many(messages, ordered=False)
    requests.clear()
    messages.clear()
    return count
