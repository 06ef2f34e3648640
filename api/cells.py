"""A report's cells: summed measures and distinct users, and the figures derived from them.

A cell is what one row has in one bucket (or in all of them). The measures are sums; the
users are exact only when the cell is one stored day row (its own count), and otherwise the
union of the sketches it covers, never a sum of counts. Sketches stay on the server: a cell's
document holds the figures only.
"""

from collections.abc import Iterable
from typing import Any

from etl import sketches
from etl.db import Doc

# The measures stored as plain sums (users are sketches; the average depth is derived).
MEASURES = ("conversations", "messages", "handoffs")
METRICS = [*MEASURES, "users", "avg_depth"]
Number = int | float


class Cell:
    """Measures of one or more stored rows, their sketches, and whether users are exact.

    A cell made from stored groups (a leaf) keeps their sketches as stored; a cell combining
    others keeps those cells, and unites each leaf's sketches or each combined cell's union,
    once: a total over 10,000 organizations decodes each sketch once, not once per level of
    totals above it.
    """

    __slots__ = (
        "sums",
        "blobs",
        "parts",
        "rows",
        "derived",
        "exact",
        "pooled",
        "_union",
        "_users",
    )

    def __init__(self) -> None:
        self.sums = {"conversations": 0, "messages": 0, "handoffs": 0}  # MEASURES
        self.blobs: list[bytes] = []
        self.parts: list[Cell] | None = None
        # How many stored rows the cell covers, whether any is from a derived level, and the
        # sum of their stored users (meaningful only for a single day row).
        self.rows = 0
        self.derived = False
        self.exact = 0
        # A leaf whose union was made when it was built (the rest of a platform's rows):
        # cells combining it merge that union rather than unite its sketches again.
        self.pooled = False
        self._union: sketches.Union | None = None
        self._users: tuple[sketches.Estimate, bool] | None = None

    def add_group(self, group: Doc) -> None:
        """Add a group of stored rows, as the usage pipelines return it."""
        for name in MEASURES:
            self.sums[name] += int(group[name])
        self.rows += int(group.get("rows", 1))
        self.derived = self.derived or bool(group.get("derived"))
        self.exact += int(group.get("users") or 0)
        self.blobs += [blob for blob in group.get("users_hll") or () if blob]
        self._union = self._users = None

    def pool(self, union: sketches.Union) -> None:
        """Make the cell a pooled leaf of `union`."""
        self.blobs = []
        self.pooled = True
        self._union = union
        self._users = None

    def union(self) -> sketches.Union:
        """The union of every sketch the cell covers."""
        if self._union is None:
            into = sketches.Union()
            if self.parts is None:
                for blob in self.blobs:
                    into.add(blob)
            elif len(self.parts) == 1:
                into = self.parts[0].union()
            else:
                for part in self.parts:
                    if part.parts is None and not part.pooled:
                        for blob in part.blobs:
                            into.add(blob)
                    else:
                        into.merge(part.union())
            self._union = into
        return self._union

    def users(self) -> tuple[sketches.Estimate, bool]:
        """Distinct users and whether the figure is an estimate."""
        if self._users is None:
            if self.rows == 0:
                self._users = sketches.Estimate(0, 0, 0), False
            elif self.rows == 1 and not self.derived:
                self._users = sketches.Estimate(self.exact, self.exact, self.exact), False
            else:
                self._users = self.union().estimate(), True
        return self._users

    def value(self, metric: str, with_users: bool) -> Number | None:
        """One metric's figure; None for users when the rollup has none, and for the average
        depth of no conversations."""
        if metric in MEASURES:
            return self.sums[metric]
        if metric == "users":
            return self.users()[0].value if with_users else None
        # Unrounded, so that changes and ranks are of the exact average.
        conversations = self.sums["conversations"]
        return self.sums["messages"] / conversations if conversations else None

    def doc(self, with_users: bool) -> Doc:
        users: dict[str, Any] = {
            "users": None,
            "users_estimate": False,
            "users_low": None,
            "users_high": None,
        }
        if with_users:
            estimate, flagged = self.users()
            users = {
                "users": estimate.value,
                "users_estimate": flagged,
                "users_low": estimate.low,
                "users_high": estimate.high,
            }
        return {
            **self.sums,
            **users,
            "avg_depth": avg_depth(self.sums["messages"], self.sums["conversations"]),
        }


def combined(cells: Iterable[Cell]) -> Cell:
    """A cell covering every one of `cells` (which must not change afterwards)."""
    into = Cell()
    # A union of sketches depends a little on what it unites: a cell combining one other
    # stands for that cell's parts, so that the only row, its Other and the total, which
    # cover the same stored rows, unite the same sketches the same way.
    into.parts = [only(cell) for cell in cells if cell.rows]
    sums = into.sums
    for cell in into.parts:
        for name in MEASURES:
            sums[name] += cell.sums[name]
        into.rows += cell.rows
        into.derived = into.derived or cell.derived
        into.exact += cell.exact
    return into


def only(cell: Cell) -> Cell:
    """The cell that `cell` combines alone, or `cell` itself."""
    while cell.parts is not None and len(cell.parts) == 1:
        cell = cell.parts[0]
    return cell


def avg_depth(messages: int, conversations: int) -> float | None:
    return round(messages / conversations, 2) if conversations else None


def change_of(metric: str, now: Number | None, before: Number | None) -> dict[str, Any]:
    """Absolute change and change in percent of the previous figure (None when it is 0)."""
    if now is None or before is None:
        return {"abs": None, "pct": None}
    diff = now - before
    return {
        "abs": round(diff, 2) if isinstance(diff, float) else diff,
        "pct": round(diff / before * 100, 1) if before else None,
    }


def changes(current: Cell, previous: Cell, with_users: bool) -> Doc:
    """The change of every metric between two cells."""
    return {
        metric: change_of(
            metric, current.value(metric, with_users), previous.value(metric, with_users)
        )
        for metric in METRICS
    }
