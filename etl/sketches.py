"""Distinct end users as mergeable HyperLogLog sketches (Apache DataSketches HLL).

A day row keeps the exact count of its users and a sketch of them; every coarser figure (a
week, a month, an organization's total, the platform's) is the union of the sketches it
covers, never a sum of counts: a person who talks on two days is one user of the week.

LG_K = 12 (4,096 registers): a single sketch's relative standard error is about 1.3 % with the
estimator DataSketches uses for it, so its 95 % interval (two standard errors) is about ±2.6 %;
a union cannot use that estimator, and its interval is about ±3.3 %. Up to a few hundred
distinct users a sketch keeps the hashed ids themselves and is exact. A sketch is stored
compact as HLL_4: at most 2,088 bytes, and 4 bytes per user in the many small rows. LG_K = 11
would halve the largest row and widen the intervals by 40 %; 13 would double both the largest
row and the cost of a union to narrow them by 30 %. Adoption trends read at a couple of percent.
"""

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import datasketches

LG_K = 12
STORED_TYPE = datasketches.tgt_hll_type.HLL_4
# Standard deviations for the bounds: two gives the 95 % interval (95.4 %).
BOUND_STD_DEVS = 2

# The compact serialization (DataSketches' HLL format): an 8-byte preamble (preamble ints,
# serial version 1, family 7, lg k, lg of the array, flags, list count, mode), then the
# coupons of a list (mode 0) or a set (mode 1, its count at byte 8), or HLL_4 registers
# (mode 2): two to a byte from byte 40, a token 15 sending a register to the exception table
# after them, whose count is at byte 36.
_PREAMBLE = struct.Struct("<8B")
_INT = struct.Struct("<i")
_ESTIMATES = struct.Struct("<3d")  # HLL mode, from byte 8: the estimate and its two sums
_COMPACT = 8
_FLAGS = 4 | 8 | 16 | 32  # empty, compact, out of order, full size
# How every list this module writes begins: a few users' sketch, the most common by far.
_LIST_HEAD = bytes([2, 1, 7, LG_K, 3, _COMPACT])
_REGISTER_BYTES = 2 ** (LG_K - 1)
# How many of a byte's two registers hold the token 15.
_TOKENS = bytes((n >> 4 == 15) + (n & 15 == 15) for n in range(256))
# More distinct users than any platform has (a trillion): an estimate past it, or a stored one,
# comes of damaged bytes that kept their layout. Registers' floor (byte 6 in register mode)
# reaches about 28 at that many.
MOST_USERS = 2**40
_MOST_FLOOR = 28


class UnreadableSketch(ValueError):
    """Bytes stored as a users sketch that are not a sketch this version writes."""

    def __init__(
        self, blob: bytes | None, of: str = "a users sketch", day: str | None = None
    ) -> None:
        over = f"--start {day} --end {day}" if day else "over its days"
        size = f" ({len(blob)} bytes)" if blob is not None else ""
        super().__init__(
            f"{of}{size} is damaged or was not written by this version; "
            f"`usage verify --repair {over}` writes it again"
        )


# What the library raises for bytes it can tell are not a sketch.
_REFUSED = (ValueError, RuntimeError, IndexError)


def well_formed(blob: bytes) -> bool:
    """Whether `blob` is laid out as the compact HLL_4 sketch of LG_K that this module
    writes. The library trusts what it reads: damaged bytes can crash the process (a list
    claiming more than its 7 entries, a register token without its exception) or give it a
    figure that is no number, so `read` checks every sketch first."""
    if len(blob) < 8:
        return False
    ints, version, family, lg_k, lg_arr, flags, count, mode = _PREAMBLE.unpack_from(blob)
    if (version, family, lg_k) != (1, 7, LG_K) or flags & ~_FLAGS or not flags & _COMPACT:
        return False
    if mode == 0:  # a list of at most 7 coupons
        return bool(ints == 2 and count <= 7 and len(blob) == 8 + 4 * count)
    if mode == 1:  # a set, at most three quarters full, promoted to registers past 384
        if ints != 3 or len(blob) < 12 or not 5 <= lg_arr <= LG_K - 3:
            return False
        entries = _int_at(blob, 8)
        return 0 <= entries <= 3 * 2**lg_arr // 4 and len(blob) == 12 + 4 * entries
    if mode != 2 or ints != 10 or len(blob) < 40 or count > _MOST_FLOOR:
        return False  # count: the registers' floor
    estimate, *sums = _ESTIMATES.unpack_from(blob, 8)
    if not (0 <= estimate <= MOST_USERS and all(0 <= part <= 2**LG_K for part in sums)):
        return False  # NaN fails every comparison
    exceptions = _int_at(blob, 36)
    if len(blob) != 40 + _REGISTER_BYTES + 4 * exceptions:
        return False
    tokens = blob[40 : 40 + _REGISTER_BYTES].translate(_TOKENS)
    return tokens.count(1) + 2 * tokens.count(2) == exceptions


def _int_at(blob: bytes, offset: int) -> int:
    value: int = _INT.unpack_from(blob, offset)[0]
    return value


def read(blob: bytes) -> datasketches.hll_sketch:
    """The sketch stored as `blob`; UnreadableSketch if it is not one."""
    if not well_formed(blob):
        raise UnreadableSketch(blob)
    try:
        return datasketches.hll_sketch.deserialize(blob)
    except _REFUSED:
        raise UnreadableSketch(blob) from None


def of_ids(ids: Iterable[str]) -> bytes:
    """The compact sketch of the distinct `ids`."""
    sketch = datasketches.hll_sketch(LG_K, STORED_TYPE)
    for user in ids:
        sketch.update(user)
    return bytes(sketch.serialize_compact())


@dataclass(frozen=True)
class Estimate:
    """A distinct count read from a sketch: the estimate and its 95 % bounds."""

    value: int
    low: int
    high: int

    def as_doc(self) -> dict[str, int]:
        return {"value": self.value, "low": self.low, "high": self.high}


class Union:
    """The union of sketches, added one at a time; never holds the sketches themselves."""

    def __init__(self) -> None:
        self._union = datasketches.hll_union(LG_K)
        self.empty = True

    def add(self, blob: bytes | None) -> None:
        if blob:
            sketch = read(bytes(blob))
            try:
                self._union.update(sketch)
            except _REFUSED:
                raise UnreadableSketch(bytes(blob)) from None
            self.empty = False

    def merge(self, other: "Union") -> None:
        if not other.empty:
            self._union.update(other._union.get_result(STORED_TYPE))
            self.empty = False

    def sketch(self) -> bytes:
        return bytes(self._union.get_result(STORED_TYPE).serialize_compact())

    def estimate(self) -> Estimate:
        result = self._union.get_result(STORED_TYPE)
        value = result.get_estimate()
        low = result.get_lower_bound(BOUND_STD_DEVS)
        high = result.get_upper_bound(BOUND_STD_DEVS)
        if not all(0 <= figure <= MOST_USERS for figure in (value, low, high)):  # NaN fails
            raise UnreadableSketch(None, "a union of users sketches, one of them")
        # Rounded to whole users, never narrower than the estimate itself (an exact sketch,
        # in list mode, has bounds a hair either side of a whole number).
        return Estimate(round(value), min(round(value), round(low)), max(round(value), round(high)))


def union_and_part(runs: Iterable[tuple[Sequence[bytes | None], bool]]) -> tuple[Union, Union]:
    """The union of every blob of `runs`, and the union of those in runs flagged true, each
    blob read once: in the order given, both give what `union` gives of the same blobs.
    A run is a sequence of blobs (None or empty: no users) and its flag."""
    every, part = Union(), Union()
    deserialize = datasketches.hll_sketch.deserialize
    into_every, into_part = every._union.update, part._union.update
    blob: bytes | None = b""
    try:
        for blobs, flagged in runs:
            for blob in blobs:
                if blob:
                    # `read`, inline: this loop unites the platform's every sketch, and
                    # most are short lists, checked here without a call.
                    listed = blob.startswith(_LIST_HEAD) and blob[7] == 0 and blob[6] <= 7
                    if not (listed and len(blob) == 8 + 4 * blob[6]) and not well_formed(blob):
                        raise UnreadableSketch(blob)
                    sketch = deserialize(blob)
                    into_every(sketch)
                    every.empty = False
                    if flagged:
                        into_part(sketch)
                        part.empty = False
    except _REFUSED as exc:
        if isinstance(exc, UnreadableSketch):
            raise
        raise UnreadableSketch(bytes(blob or b"")) from None
    return every, part


def union(blobs: Iterable[bytes | None]) -> Union:
    into = Union()
    for blob in blobs:
        into.add(blob)
    return into
