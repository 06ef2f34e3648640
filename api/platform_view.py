"""Platform views from the platform level: every organization of a period in a few documents.

The platform level (`etl/platform.py`) holds, for each day and each month, the organization
rows of the period as parallel arrays. A platform view reads the documents of its buckets
(whole months from the month documents, any other bucket from its days') instead of one row
per organization and period.

Ranked by a measure, a page needs cells only for its own organizations: the rest are
summed bucket by bucket into the Other line, whose users are the union of their sketches,
and the total is Other and the page together. The figures are those of `api.usage.paginate`
over every line, which the tests check.
"""

import bisect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from itertools import repeat
from operator import add

from api.buckets import Bucket
from api.cells import MEASURES, Cell
from etl import platform, sketches
from etl.db import USAGE_PLATFORM, Databases, Doc
from etl.lattice import USERS, USERS_HLL

# A document of the level, with the index of the bucket it falls in.
Placed = tuple[int, Doc]


def read(
    dbs: Databases,
    buckets: list[Bucket],
    whole_months: bool,
    generation: int,
    stale: frozenset[str] = frozenset(),
) -> list[Placed]:
    """The documents covering `buckets` (contiguous, in order): a whole calendar month's from
    its month documents when `whole_months` (unless its levels by month are `stale`), every
    other bucket's from its days'."""
    stored = dbs.reader(USAGE_PLATFORM, generation)
    placed: list[Placed] = []
    months: dict[str, int] = {}
    days: dict[str, int] = {}
    runs: list[tuple[str, str]] = []  # contiguous day buckets, read with one query each
    after_day = False
    for index, bucket in enumerate(buckets):
        if whole_months and not bucket.partial and bucket.key not in stale:
            months[bucket.key] = index
            after_day = False
            continue
        first, last = bucket.start.isoformat(), bucket.end.isoformat()
        runs[-1:] = [(runs[-1][0], last)] if after_day else [*runs[-1:], (first, last)]
        after_day = True
        for offset in range((bucket.end - bucket.start).days + 1):
            days[(bucket.start + timedelta(days=offset)).isoformat()] = index
    if months:
        for doc in stored.find({"period": "month", "key": {"$in": sorted(months)}}):
            placed.append((months[doc["key"]], platform.unpack(doc)))
    for first, last in runs:
        for doc in stored.find({"period": "day", "key": {"$gte": first, "$lte": last}}):
            placed.append((days[doc["key"]], platform.unpack(doc)))
    # By bucket, then day and chunk: within a period, organizations come in id order.
    placed.sort(key=lambda item: (item[0], item[1]["_id"]))
    return placed


def groups(placed: list[Placed], buckets: list[Bucket], excluded: set[str]) -> list[Doc]:
    """The documents as the usage pipelines group rows: one group per organization and
    bucket (organizations in `excluded` left out)."""
    merged: dict[tuple[str, int], Doc] = {}
    for index, doc in placed:
        key = buckets[index].key
        blobs = doc[USERS_HLL]
        for n, org in enumerate(doc["orgs"]):
            if org in excluded:
                continue
            group = merged.get((org, index))
            if group is None:
                group = merged[(org, index)] = {
                    "_id": {"id": org, "b": key},
                    **dict.fromkeys(MEASURES, 0),
                    "rows": 0,
                    USERS: 0,
                    USERS_HLL: [],
                    "derived": True,
                }
            for name in MEASURES:
                group[name] += doc[name][n]
            group["rows"] += 1
            group[USERS] += doc[USERS][n]
            if blobs[n] is not None:
                group[USERS_HLL].append(bytes(blobs[n]))
    return list(merged.values())


def values(placed: list[Placed], measure: str, excluded: set[str]) -> dict[str, int]:
    """Each organization's sum of `measure` over the documents."""
    summed: dict[str, int] = {}
    for _, doc in placed:
        orgs = doc["orgs"]
        # An organization is in a document once: each sum read before it is written. (All
        # in C: a Python loop costs more than the rest of a cold page's figures.)
        before = map(summed.get, orgs, repeat(0))
        summed.update(zip(orgs, map(add, before, doc[measure]), strict=True))
    for org in excluded:
        summed.pop(org, None)
    return summed


def page_cells(placed: list[Placed], ids: set[str], buckets: int) -> dict[str, list[Cell]]:
    """The cells of the organizations `ids`, one per bucket (a shared empty cell where an
    organization has no row)."""
    empty = Cell()
    cells = {org: [empty] * buckets for org in ids}
    for index, doc in placed:
        blobs, orgs = doc[USERS_HLL], doc["orgs"]
        for n in positions(orgs, ids):
            org = orgs[n]
            cell = cells[org][index]
            if cell is empty:
                cell = cells[org][index] = Cell()
                cell.derived = True
            for name in MEASURES:
                cell.sums[name] += doc[name][n]
            cell.rows += 1
            cell.exact += doc[USERS][n]
            if blobs[n] is not None:
                cell.blobs.append(bytes(blobs[n]))
    return cells


@dataclass(frozen=True)
class Split:
    """A period's cells for a page: the page's organizations', per bucket, and per bucket
    those of the rest and of every organization (the total), pooled."""

    page: dict[str, list[Cell]]
    rest: list[Cell]
    total: list[Cell]


def split(placed: list[Placed], chosen: set[str], excluded: set[str], buckets: int) -> Split:
    """Cells for the organizations `chosen`, Other (all but them and `excluded`) and the
    total (all but `excluded`), in one pass over the documents.

    The sketches of Other and the total are united by organization id, then day, as
    `api.usage.paginate` unites its rows': a union's estimate depends a little on its order,
    so the same organizations give the same figure either way, whatever the page."""
    total = Pool(buckets)
    rest = Pool(buckets)
    for index, doc in placed:
        orgs = doc["orgs"]
        left_out = positions(orgs, excluded)
        skipped = set(left_out)
        on_page = [n for n in positions(orgs, chosen) if n not in skipped]
        kept = len(orgs) - len(left_out)
        total.rows[index] += kept
        rest.rows[index] += kept - len(on_page)
        for name in MEASURES:
            column = doc[name]
            everyone = sum(column) - sum(column[n] for n in left_out)
            total.sums[index][name] += everyone
            rest.sums[index][name] += everyone - sum(column[n] for n in on_page)
        total.docs[index].append((doc, skipped, set(on_page)))
        total.keys[index].add(doc["key"])
    # Other's sketches are the total's but the page's: both united in one pass, each sketch
    # read once.
    rest_cells, total_cells = [], []
    for n, docs in enumerate(total.docs):
        every, others = sketches.union_and_part(flagged_blobs(docs, len(total.keys[n]) > 1))
        total_cells.append(pooled(total.sums[n], total.rows[n], every))
        rest_cells.append(pooled(rest.sums[n], rest.rows[n], others))
    return Split(page_cells(placed, chosen, buckets), rest_cells, total_cells)


def positions(orgs: list[str], wanted: set[str]) -> list[int]:
    """The positions in `orgs` (a document's ids, in ascending order) of those `wanted`."""
    if len(wanted) * 16 > len(orgs):
        return [n for n, org in enumerate(orgs) if org in wanted]
    found = []
    for org in wanted:
        n = bisect.bisect_left(orgs, org)
        if n < len(orgs) and orgs[n] == org:
            found.append(n)
    return sorted(found)


Pooled = tuple[Doc, set[int], set[int]]  # a document, its positions left out and on the page


def flagged_blobs(
    docs: list[Pooled], several_periods: bool
) -> Iterator[tuple[Sequence[bytes | None], bool]]:
    """The sketches of a bucket's organizations but those left out, by organization id then
    period, in runs flagged true unless on the page. One period's documents are in
    organization order already; several periods' are not."""
    if not several_periods:
        for doc, skipped, on_page in docs:
            blobs = doc[USERS_HLL]
            start = 0
            for n in sorted(skipped | on_page):
                yield blobs[start:n], True
                if n in on_page:
                    yield blobs[n : n + 1], False
                start = n + 1
            yield blobs[start:], True
        return
    entries = [
        (doc["orgs"][n], doc["key"], blob, n not in on_page)
        for doc, skipped, on_page in docs
        for n, blob in enumerate(doc[USERS_HLL])
        if blob and n not in skipped
    ]
    entries.sort(key=lambda entry: entry[:3])
    for _, _, blob, flag in entries:
        yield (blob,), flag


class Pool:
    """Per bucket, the measures and rows of a set of organizations, and their documents."""

    def __init__(self, buckets: int) -> None:
        self.sums = [dict.fromkeys(MEASURES, 0) for _ in range(buckets)]
        self.rows = [0] * buckets
        self.docs: list[list[Pooled]] = [[] for _ in range(buckets)]
        self.keys: list[set[str]] = [set() for _ in range(buckets)]


def pooled(sums: dict[str, int], rows: int, union: sketches.Union) -> Cell:
    cell = Cell()
    cell.sums = sums
    cell.rows = rows
    cell.derived = True
    cell.pool(union)
    return cell
