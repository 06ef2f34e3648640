"""A deterministic, realistic sample of Tiledesk data: requests, organizations and bots."""

import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from bson import ObjectId

from etl.db import Databases, Doc

ORG_NAMES = [
    "GIC",
    "Northwind Retail",
    "Acme Insurance",
    "Bluewave Telecom",
    "Cityline Transit",
    "Helios Energy",
    "Meridian Bank",
    "Orchid Health",
    "Pinnacle Travel",
    "Quantum Logistics",
    "Riverside University",
    "Summit Realty",
]
INTERNAL_NAMES = ["Tiledesk Staff", "Demo Sandbox"]
AGENT_KINDS = ["Support Bot", "Sales Assistant", "FAQ Bot", "Booking Agent", "Onboarding Guide"]


@dataclass(frozen=True)
class SampleSpec:
    organizations: int = 10
    internal: int = 2
    agents_per_org: int = 3
    per_day: int = 60
    days: int = 183
    seed: int = 7


SMALL = SampleSpec(organizations=50, internal=2, agents_per_org=4, per_day=110, days=183)
STANDARD = SampleSpec(organizations=50, internal=2, agents_per_org=4, per_day=1100, days=183)


def oid(rng: random.Random) -> ObjectId:
    return ObjectId(bytes(rng.getrandbits(8) for _ in range(12)))


@dataclass
class Sample:
    organizations: list[Doc]
    bots: list[Doc]
    internal_ids: list[str]
    # Built on first use: a scan of every bot per conversation is quadratic in organizations.
    _by_org: dict[ObjectId, list[Doc]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def bots_of(self, org_id: ObjectId) -> list[Doc]:
        if not self._by_org:
            for bot in self.bots:
                self._by_org.setdefault(bot["id_organization"], []).append(bot)
        return self._by_org.get(org_id, [])


def make_sample(spec: SampleSpec) -> Sample:
    rng = random.Random(spec.seed)
    orgs: list[Doc] = []
    for n in range(spec.organizations + spec.internal):
        if n < spec.internal:
            name = INTERNAL_NAMES[n % len(INTERNAL_NAMES)]
        else:
            k = n - spec.internal
            base = ORG_NAMES[k % len(ORG_NAMES)]
            name = base if k < len(ORG_NAMES) else f"{base} {k // len(ORG_NAMES) + 1}"
        orgs.append({"_id": oid(rng), "name": name})
    bots: list[Doc] = []
    for org in orgs:
        for k in range(spec.agents_per_org):
            kind = AGENT_KINDS[k % len(AGENT_KINDS)]
            bots.append({"_id": oid(rng), "name": kind, "id_organization": org["_id"]})
    internal = [str(org["_id"]) for org in orgs[: spec.internal]]
    return Sample(orgs, bots, internal)


class EndUsers:
    """Who starts the conversations: a pool of end users per organization (leads, as Tiledesk
    calls them), drawn with a skew so that regulars come back on many days and to several
    agents, and a few people who talk to more than one organization.

    A person's ids are made from their number and the organization's id rather than drawn,
    so the pool costs nothing to hold and the sample stays deterministic and fast.
    """

    # Of conversations: the person is one of the few known to several organizations; the
    # conversation has no lead but a requester; it has neither (an anonymous widget).
    SHARED = 0.01
    REQUESTER_ONLY = 0.03
    ANONYMOUS = 0.02
    SHARED_PEOPLE = 25
    # The skew: the chance of a person's number falls with it, so low numbers are regulars.
    SKEW = 2.5

    def __init__(self, spec: SampleSpec) -> None:
        self.rng = random.Random(spec.seed * 104729)
        conversations = spec.per_day * spec.days
        # Three to four conversations per person on average over the whole sample.
        self.pool = max(40, conversations // max(spec.organizations, 1) // 4)

    @staticmethod
    def ids(number: int, tail: bytes) -> tuple[ObjectId, ObjectId]:
        """The person's lead and requester (project user) ids."""
        return (
            ObjectId(struct.pack(">I", 0x64000000 + number) + tail),
            ObjectId(struct.pack(">I", 0x65000000 + number) + tail),
        )

    def who(self, org_id: ObjectId) -> tuple[ObjectId | None, ObjectId | None]:
        """The lead and the requester of a new conversation of `org_id` (either may be None)."""
        draw = self.rng.random()
        if draw < self.SHARED:
            lead, requester = self.ids(self.rng.randrange(self.SHARED_PEOPLE), bytes(8))
        else:
            number = int(self.pool * self.rng.random() ** self.SKEW)
            lead, requester = self.ids(number, org_id.binary[4:])
        if draw > 1 - self.ANONYMOUS:
            return None, None
        if draw > 1 - self.ANONYMOUS - self.REQUESTER_ONLY:
            return None, requester
        return lead, requester


def first_day(spec: SampleSpec, now: datetime) -> datetime:
    return (now - timedelta(days=spec.days)).replace(hour=0, minute=0, second=0, microsecond=0)


def arrivals(
    rng: random.Random, sample: Sample, spec: SampleSpec, now: datetime
) -> Iterator[tuple[datetime, Doc]]:
    """When conversations start, and in which organization, over `spec.days` days up to
    `now` (naive UTC), in order. Organizations differ in size and grow over time, as
    adoption does; weekends are quieter."""
    weights = [rng.uniform(0.2, 3.0) for _ in sample.organizations]
    start = first_day(spec, now)
    for day_index in range(spec.days + 1):
        day = start + timedelta(days=day_index)
        growth = 0.6 + 0.8 * day_index / max(spec.days, 1)
        weekday_factor = 0.55 if day.weekday() >= 5 else 1.0
        count = int(spec.per_day * growth * weekday_factor * rng.uniform(0.85, 1.15))
        for _ in range(count):
            created = day + timedelta(seconds=rng.randrange(86400))
            if created >= now:
                continue
            yield created, rng.choices(sample.organizations, weights)[0]


def generate_requests(sample: Sample, spec: SampleSpec, now: datetime) -> Iterator[Doc]:
    """Conversations over `spec.days` days up to `now` (naive UTC), in creation order."""
    rng = random.Random(spec.seed * 7919)
    people = EndUsers(spec)
    for created, org in arrivals(rng, sample, spec, now):
        doc = make_conversation(rng, sample, org, created, now)
        lead, requester = people.who(org["_id"])
        if lead is not None:
            doc["lead"] = lead
        if requester is not None:
            doc["requester"] = requester
        yield doc
    yield from malformed(rng, sample, first_day(spec, now), now)


def make_conversation(
    rng: random.Random, sample: Sample, org: Doc, created: datetime, now: datetime
) -> Doc:
    bots = sample.bots_of(org["_id"])
    bot = rng.choices(bots, [4, 2, 1, 1, 1][: len(bots)])[0]
    depth = max(1, int(rng.lognormvariate(2.0, 0.7)))
    handoff = rng.random() < 0.12
    test_mode = rng.random() < 0.04
    # Bots auto-close after about two days of silence; human-handled ones can stay open longer.
    close_after = timedelta(hours=rng.uniform(1, 50 if not handoff else 120))
    closed_at = created + close_after
    is_closed = closed_at <= now and rng.random() > 0.01
    doc: Doc = {
        "id_organization": org["_id"],
        "id_project": str(org["_id"])[-8:],
        "status": 1000 if is_closed else rng.choice([100, 200, 200, 300]),
        "depth": depth,
        "attributes": {"bot_id": str(bot["_id"]), "departmentId": "default"},
        "participantsBots": [] if handoff else [f"bot_{bot['_id']}"],
        "participantsAgents": [f"agent_{rng.randrange(40)}"] if handoff else [],
        "channel": {"name": "chat21"},
        "createdAt": created,
        "updatedAt": closed_at if is_closed else created + timedelta(minutes=depth),
    }
    if is_closed:
        doc["closed_at"] = closed_at
    if test_mode:
        doc["isTestMode"] = True
    elif rng.random() < 0.5:
        doc["isTestMode"] = False
    if rng.random() < 0.03:
        doc["attributes"] = {"departmentId": "default"}  # started without a bot
    if rng.random() < 0.02:
        doc["id_organization"] = str(org["_id"])  # some writers stored the id as a string
    return doc


def malformed(rng: random.Random, sample: Sample, start: datetime, now: datetime) -> Iterator[Doc]:
    """A few documents of the kinds real data holds: they must be skipped, never crash a run."""
    org = sample.organizations[-1]
    span = int((now - start).total_seconds()) - 86400 * 3
    for n in range(12):
        created = start + timedelta(seconds=rng.randrange(max(span, 1)))
        base: Doc = {
            "status": 1000,
            "depth": 5,
            "createdAt": created,
            "updatedAt": created + timedelta(hours=3),
            "id_organization": org["_id"],
        }
        kind = n % 6
        if kind == 0:
            del base["id_organization"]
        elif kind == 1:
            base["createdAt"] = created.isoformat()
        elif kind == 2:
            del base["createdAt"]
        elif kind == 3:
            base["attributes"] = "not-an-object"
        elif kind == 4:
            base["attributes"] = {"bot_id": ""}
        else:
            base["id_organization"] = "not-an-id"
        yield base


def load_sample(dbs: Databases, spec: SampleSpec, now: datetime, batch: int = 5000) -> int:
    """Insert the sample into the source database; return the number of requests."""
    sample = make_sample(spec)
    dbs.source[dbs.settings.org_names].insert_many(sample.organizations)
    dbs.source[dbs.settings.agent_names_collection].insert_many(sample.bots)
    requests = dbs.source["requests"]
    total = 0
    chunk: list[Doc] = []
    for doc in generate_requests(sample, spec, now):
        chunk.append(doc)
        if len(chunk) >= batch:
            requests.insert_many(chunk, ordered=False)
            total += len(chunk)
            chunk = []
    if chunk:
        requests.insert_many(chunk, ordered=False)
        total += len(chunk)
    return total
