"""The indexes the rollup's source queries need, and a report of which exist."""

from dataclasses import dataclass
from typing import Any

from etl.db import Databases
from etl.profiles import ProfileName


@dataclass(frozen=True)
class Index:
    collection: str
    name: str
    keys: list[tuple[str, int]]


# The createdAt index serves the leading createdAt range, which is the only shape some
# planners can use; the updatedAt index finds days changed since the last run without a
# collection scan.
CREATED_AT = Index("requests", "idx_created_at", [("createdAt", 1)])
UPDATED_AT = Index("requests", "idx_updated_at", [("updatedAt", 1)])

RECOMMENDED: dict[ProfileName, list[Index]] = {
    # The billing index serves the filtered range on MongoDB.
    "deployment": [
        Index(
            "requests",
            "idx_billing_usage",
            [
                ("status", 1),
                ("isTestMode", 1),
                ("createdAt", 1),
                ("id_organization", 1),
                ("depth", 1),
            ],
        ),
        CREATED_AT,
        UPDATED_AT,
    ],
    # Counting a conversation's messages looks them up by recipient, once per closed
    # conversation of the range. Vanilla Tiledesk's own `recipient_1` has the same keys.
    "tiledesk": [
        CREATED_AT,
        UPDATED_AT,
        Index("messages", "idx_recipient", [("recipient", 1)]),
    ],
}


def recommended(dbs: Databases) -> list[Index]:
    return RECOMMENDED[dbs.settings.source_profile]


def missing(dbs: Databases) -> list[Index]:
    existing: dict[str, list[Any]] = {}
    lacking = []
    for index in recommended(dbs):
        if index.collection not in existing:
            infos = dbs.source[index.collection].list_indexes()
            existing[index.collection] = [list(info["key"].items()) for info in infos]
        if index.keys not in existing[index.collection]:
            lacking.append(index)
    return lacking


def report(dbs: Databases, apply: bool) -> list[str]:
    """One line per recommended index: present, missing, or created."""
    lacking = missing(dbs)
    lines = []
    for index in recommended(dbs):
        spec = ", ".join(f"{field}: {order}" for field, order in index.keys)
        where = f"{index.name} on {index.collection} {{{spec}}}"
        if index not in lacking:
            lines.append(f"present  {where}")
        elif apply:
            dbs.source[index.collection].create_index(index.keys, name=index.name, background=True)
            lines.append(f"created  {where}")
        else:
            lines.append(f"missing  {where}  (create with: usage indexes --apply)")
    return lines
