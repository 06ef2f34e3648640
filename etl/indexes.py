"""The indexes the rollup's source queries need, and a report of which exist."""

from typing import Any

from etl.db import Databases

# name -> keys. The billing index serves the filtered range on MongoDB; the createdAt index
# serves the leading createdAt range, which is the only shape some planners can use; the
# updatedAt index finds days changed since the last run without a collection scan.
RECOMMENDED: dict[str, list[tuple[str, int]]] = {
    "idx_billing_usage": [
        ("status", 1),
        ("isTestMode", 1),
        ("createdAt", 1),
        ("id_organization", 1),
        ("depth", 1),
    ],
    "idx_created_at": [("createdAt", 1)],
    "idx_updated_at": [("updatedAt", 1)],
}


def missing(dbs: Databases) -> dict[str, list[tuple[str, int]]]:
    existing: list[Any] = [list(info["key"].items()) for info in dbs.source.requests.list_indexes()]
    return {name: keys for name, keys in RECOMMENDED.items() if keys not in existing}


def report(dbs: Databases, apply: bool) -> list[str]:
    """One line per recommended index: present, missing, or created."""
    lacking = missing(dbs)
    lines = []
    for name, keys in RECOMMENDED.items():
        spec = ", ".join(f"{field}: {order}" for field, order in keys)
        if name not in lacking:
            lines.append(f"present  {name} {{{spec}}}")
        elif apply:
            dbs.source.requests.create_index(keys, name=name, background=True)
            lines.append(f"created  {name} {{{spec}}}")
        else:
            lines.append(f"missing  {name} {{{spec}}}  (create with: usage indexes --apply)")
    return lines
