"""The large benchmark's dataset: many organizations with a long tail, twelve months.

Most organizations have one to three agents and a few conversations a month; some hundreds
have tens a month; a few heavy ones hundreds a month, as many as the standard sample's. Every
conversation has a `lead` (the end user) drawn from a pool of its organization, so distinct
users exist and repeat. Deterministic for a given `now`; generated in a stream and inserted in
large batches while the next batch is generated, indexes after the load.
"""

import random
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

from bson import ObjectId

from etl import sample
from etl.db import Databases, Doc


@dataclass(frozen=True)
class LargeSpec:
    organizations: int = 10_000
    internal: int = 2
    heavy: int = 20
    mid: int = 500
    days: int = 365
    seed: int = 17


LARGE = LargeSpec()


@dataclass(frozen=True)
class Tier:
    agents: tuple[int, ...]  # how many agents an organization of the tier may have
    agent_weights: tuple[int, ...]
    per_month: tuple[float, float]  # conversations a month, drawn uniformly in this range
    # Visitors per conversation: a small shop's few customers come back more often.
    leads_per_conversation: float


HEAVY = Tier((4, 5), (1, 1), (300.0, 900.0), 0.5)
MID = Tier((2, 3, 4), (2, 2, 1), (10.0, 50.0), 0.4)
TAIL = Tier((1, 2, 3), (5, 3, 2), (1.0, 5.0), 0.3)


@dataclass
class Profile:
    """An organization of the large sample: its agents, its rate and its visitors."""

    org: Doc
    rate: float  # conversations a day, before growth and weekends
    leads: int  # size of its pool of visitors


def tier_of(n: int, spec: LargeSpec) -> Tier:
    """Heavy organizations first (the dashboard mix reads the first), then mid, then the tail."""
    if n < spec.heavy:
        return HEAVY
    if n < spec.heavy + spec.mid:
        return MID
    return TAIL


def make_large(spec: LargeSpec) -> tuple[sample.Sample, list[Profile]]:
    """Organizations (internal ones first), their bots, and each one's profile."""
    rng = random.Random(spec.seed)
    orgs: list[Doc] = []
    bots: list[Doc] = []
    profiles: list[Profile] = []
    for n in range(spec.internal + spec.organizations):
        org_id = sample.oid(rng)
        if n < spec.internal:
            name, tier = sample.INTERNAL_NAMES[n % len(sample.INTERNAL_NAMES)], TAIL
        else:
            k = n - spec.internal
            base = sample.ORG_NAMES[k % len(sample.ORG_NAMES)]
            name = base if k < len(sample.ORG_NAMES) else f"{base} {k // len(sample.ORG_NAMES) + 1}"
            tier = tier_of(k, spec)
        org = {"_id": org_id, "name": name}
        orgs.append(org)
        for a in range(rng.choices(tier.agents, tier.agent_weights)[0]):
            kind = sample.AGENT_KINDS[a % len(sample.AGENT_KINDS)]
            bots.append({"_id": sample.oid(rng), "name": kind, "id_organization": org_id})
        per_month = rng.uniform(*tier.per_month)
        leads = max(1, round(per_month * 12 * tier.leads_per_conversation))
        profiles.append(Profile(org, per_month * 12 / 365, leads))
    internal = [str(org["_id"]) for org in orgs[: spec.internal]]
    return sample.Sample(orgs, bots, internal), profiles


def lead_id(org_id: ObjectId, n: int) -> ObjectId:
    """The n-th visitor of an organization: unique across organizations, with no table."""
    return ObjectId(org_id.binary[:8] + n.to_bytes(4, "big"))


def generate(spec: LargeSpec, now: datetime) -> Iterator[Doc]:
    """Conversations over `spec.days` days up to `now` (naive UTC), in creation order."""
    made, profiles = make_large(spec)
    rng = random.Random(spec.seed * 7919)
    cumulative: list[float] = []
    running = 0.0
    for profile in profiles:
        running += profile.rate
        cumulative.append(running)
    start = (now - timedelta(days=spec.days)).replace(hour=0, minute=0, second=0, microsecond=0)
    for day_index in range(spec.days + 1):
        day = start + timedelta(days=day_index)
        growth = 0.6 + 0.8 * day_index / spec.days
        weekday = 0.55 if day.weekday() >= 5 else 1.0
        count = int(running * growth * weekday * rng.uniform(0.85, 1.15))
        chosen = rng.choices(profiles, cum_weights=cumulative, k=count)
        created = sorted(day + timedelta(seconds=rng.randrange(86400)) for _ in chosen)
        for at, profile in zip(created, chosen, strict=True):
            if at >= now:
                continue
            doc = sample.make_conversation(rng, made, profile.org, at, now)
            # Skewed: a few visitors of each organization come back often.
            doc["lead"] = lead_id(profile.org["_id"], int(profile.leads * rng.random() ** 2))
            yield doc
    yield from sample.malformed(rng, made, start, now)


def load(dbs: Databases, spec: LargeSpec, now: datetime, batch: int = 10_000) -> int:
    """Insert the sample into the source database; return the number of requests.

    Generating is the client's work and inserting the server's: a batch is inserted by a
    worker while the next is generated, two at a time at most.
    """
    made, _ = make_large(spec)
    dbs.source[dbs.settings.org_names].insert_many(made.organizations)
    dbs.source[dbs.settings.agent_names_collection].insert_many(made.bots)
    requests = dbs.source["requests"]
    total = 0
    pending: list[Future[object]] = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        chunk: list[Doc] = []
        for doc in generate(spec, now):
            chunk.append(doc)
            if len(chunk) >= batch:
                pending.append(pool.submit(requests.insert_many, chunk, ordered=False))
                total += len(chunk)
                chunk = []
                if len(pending) >= 2:
                    pending.pop(0).result()
        if chunk:
            pending.append(pool.submit(requests.insert_many, chunk, ordered=False))
            total += len(chunk)
        for future in pending:
            future.result()
    return total
