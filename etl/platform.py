"""The platform level: each day's and each month's organization totals, in a few documents.

A platform view ranks every organization, so reading one stored row per organization and
period costs as many reads as there are organizations: at 10,000 that is tens of thousands
of documents for six months. Here a period is a handful of documents (chunks of at most
CHUNK organizations, in `org_id` order), each holding its organizations' rows of the
organization level as parallel arrays: ids, the measures, users and their sketches.

A document stores each column packed into one binary value (`pack`): ids as 12 bytes each,
figures as little-endian 64-bit integers, sketches end to end with their end offsets. A
server reads, and a driver decodes, one value per column instead of one per organization:
on the embedded server a period of 10,000 organizations reads in about half the time.
Documents written before the packing (lists) are read as they are.

The documents are derived from the organization level in the same write that derives it, and
are never moved by differences: a period is rewritten whole from the organization rows of
every organization, or, when a write re-derived only some organizations, those
organizations' entries are replaced by their new rows and the others' kept as they were
stored (they did not change).
"""

import sys
from array import array
from collections.abc import Container, Iterable
from dataclasses import dataclass

from bson import Binary
from pymongo.client_session import ClientSession
from pymongo.collection import Collection

from etl.db import Doc
from etl.lattice import MEASURES, USERS, USERS_HLL
from etl.settings import OBJECT_ID_HEX

# At most 2,088 bytes of sketch and some 80 of figures an organization: a chunk stays far
# below the 16 MB document limit whatever its organizations' sizes.
CHUNK = 2000


PACKED = "packed"  # the field that marks a packed document, holding its format's version
FORMAT = 1
HLL_ENDS = "users_hll_ends"
LONG = "q"  # 64-bit signed integers: a month's messages of one organization fit in any case


@dataclass(frozen=True)
class Period:
    kind: str  # "day" or "month"
    key: str  # "2026-09-05" or "2026-09"

    def chunk_id(self, n: int) -> str:
        return f"{self.kind}:{self.key}:{n:04d}"


def period_of(row: Doc) -> Period:
    """The period of an organization-level row (`day` or `month`)."""
    return Period("day", row["day"]) if "day" in row else Period("month", row["month"])


def chunks(period: Period, rows: Iterable[Doc]) -> list[Doc]:
    """The documents holding `rows` (organization rows of `period`), in `org_id` order,
    packed as stored."""
    ordered = sorted(rows, key=lambda row: row["org_id"])
    docs = []
    for n, start in enumerate(range(0, len(ordered), CHUNK)):
        part = ordered[start : start + CHUNK]
        doc: Doc = {"_id": period.chunk_id(n), "period": period.kind, "key": period.key}
        doc["orgs"] = [row["org_id"] for row in part]
        for name in MEASURES:
            doc[name] = [row[name] for row in part]
        doc[USERS] = [row.get(USERS, 0) for row in part]
        doc[USERS_HLL] = [row.get(USERS_HLL) for row in part]
        docs.append(pack(doc))
    return docs


def _longs(values: list[int]) -> Binary:
    packed = array(LONG, values)
    if sys.byteorder == "big":
        packed.byteswap()
    return Binary(packed.tobytes())


def _unlongs(data: bytes) -> list[int]:
    values = array(LONG)
    values.frombytes(data)
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()


def pack(doc: Doc) -> Doc:
    """`doc` (columns as lists) with each column packed into one binary value. Left as
    lists if an id is not an ObjectId's lowercase hex, which the source never yields."""
    if not all(isinstance(org, str) and OBJECT_ID_HEX.fullmatch(org) for org in doc["orgs"]):
        return doc
    blobs = [bytes(blob) if blob else b"" for blob in doc[USERS_HLL]]
    ends, end = [], 0
    for blob in blobs:
        end += len(blob)
        ends.append(end)
    return {
        **doc,
        PACKED: FORMAT,
        "orgs": Binary(bytes.fromhex("".join(doc["orgs"]))),
        **{name: _longs(doc[name]) for name in (*MEASURES, USERS)},
        USERS_HLL: Binary(b"".join(blobs)),
        HLL_ENDS: _longs(ends),
    }


# What mends a document this version cannot read but could have written.
REPAIR = "`usage verify --repair` over its month writes it again"


class UnreadableDocument(ValueError):
    """A platform document this version cannot read: a newer version's format, or columns
    that do not agree (a document damaged or written by hand)."""


def unpack(doc: Doc) -> Doc:
    """A stored document with its columns as lists, whether stored packed or not; a
    missing sketch is None."""
    packed = doc.get(PACKED)
    if PACKED not in doc and isinstance(doc.get("orgs"), list):
        return _listed(doc)
    if packed != FORMAT or isinstance(packed, bool):
        newer = isinstance(packed, int) and not isinstance(packed, bool) and packed > FORMAT
        raise UnreadableDocument(
            f"platform document {doc.get('_id')} is in format {packed!r}, which this version "
            f"(format {FORMAT}) cannot read"
            + (
                "; a newer version wrote it: upgrade, or run `usage rebuild` with this one"
                if newer
                else f"; {REPAIR}"
            )
        )
    try:
        return _unpacked(doc)
    except (KeyError, TypeError, ValueError) as exc:
        raise UnreadableDocument(
            f"platform document {doc.get('_id')} is damaged ({exc}); {REPAIR}"
        ) from None


def _listed(doc: Doc) -> Doc:
    """A document an earlier version wrote as lists, its columns checked."""
    count = len(doc["orgs"])
    columns = [doc.get(name) for name in (*MEASURES, USERS, USERS_HLL)]
    if any(not isinstance(column, list) or len(column) != count for column in columns):
        raise UnreadableDocument(
            f"platform document {doc.get('_id')} is damaged (columns that do not hold one "
            f"entry for each of its {count} organizations); {REPAIR}"
        )
    return doc


def _unpacked(doc: Doc) -> Doc:
    ids = bytes(doc["orgs"])
    count, odd = divmod(len(ids), 12)
    columns = {name: _unlongs(bytes(doc[name])) for name in (*MEASURES, USERS, HLL_ENDS)}
    blobs = bytes(doc[USERS_HLL])
    ends = columns.pop(HLL_ENDS)
    if odd or any(len(column) != count for column in (*columns.values(), ends)):
        raise ValueError(
            f"columns of {count} organizations and {sorted(map(len, columns.values()))} figures"
        )
    if ends != sorted(ends) or (ends and (ends[0] < 0 or ends[-1] != len(blobs))):
        raise ValueError("sketch offsets out of order")
    starts = [0, *ends[:-1]] if ends else []
    unpacked = {key: value for key, value in doc.items() if key not in (PACKED, HLL_ENDS)}
    hexed = ids.hex()
    unpacked["orgs"] = [hexed[n : n + 24] for n in range(0, len(hexed), 24)]
    unpacked.update(columns)
    unpacked[USERS_HLL] = [
        blobs[start:end] or None for start, end in zip(starts, ends, strict=True)
    ]
    return unpacked


def rows_of(docs: Iterable[Doc]) -> list[Doc]:
    """The organization rows that `docs` hold, as the organization level stores them (no
    `_id`), in the order stored."""
    rows = []
    for doc in map(unpack, docs):
        field = doc["period"]
        for n, org in enumerate(doc["orgs"]):
            row: Doc = {"org_id": org, field: doc["key"]}
            for name in (*MEASURES, USERS):
                row[name] = doc[name][n]
            blob = doc[USERS_HLL][n]
            if blob is not None:
                row[USERS_HLL] = Binary(bytes(blob))
            rows.append(row)
    return rows


def of_period(period: Period) -> Doc:
    return {"period": period.kind, "key": period.key}


def write(
    stored: Collection[Doc],
    period: Period,
    rows: list[Doc],
    session: ClientSession | None,
    orgs: Container[str] | None = None,
    drop_unreadable: bool = False,
) -> None:
    """Rewrite `period` from `rows`: the organization rows of every organization, or, given
    `orgs` (a set, or a range of ids), those of `orgs` alone (an organization of `orgs`
    without a row has none now).

    A stored document this version cannot read fails the write, unless `drop_unreadable`:
    for a period derived whole in ranges of organizations, every one of which writes its
    own before the period is read again, its entries are dropped rather than kept."""
    if orgs is not None:
        kept = []
        for doc in stored.find(of_period(period), session=session):
            try:
                found = rows_of([doc])
            except UnreadableDocument:
                if not drop_unreadable:
                    raise
                continue
            kept += [row for row in found if row["org_id"] not in orgs]
        rows = kept + rows
    stored.delete_many(of_period(period), session=session)
    docs = chunks(period, rows)
    if docs:
        stored.insert_many(docs, session=session)


def write_levels(
    stored: Collection[Doc],
    by_day: dict[str, list[Doc]],
    by_month: dict[str, list[Doc]],
    session: ClientSession | None,
    orgs: Container[str] | None = None,
    drop_unreadable: bool = False,
) -> None:
    """Rewrite the given days and months from their organization rows (an empty list: the
    period has no rows now)."""
    for day, rows in sorted(by_day.items()):
        write(stored, Period("day", day), rows, session, orgs, drop_unreadable)
    for month, rows in sorted(by_month.items()):
        write(stored, Period("month", month), rows, session, orgs, drop_unreadable)
