"""API keys and the principals they authenticate; keys are stored only as hashes."""

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson import ObjectId
from pymongo.database import Database

Doc = dict[str, Any]
KEYS = "api_keys"
PREFIX = "usk_"
OBJECT_ID = re.compile(r"[0-9a-fA-F]{24}")
# token_urlsafe(32): 43 characters of the URL-safe alphabet.
KEY_SHAPE = re.compile(PREFIX + r"[A-Za-z0-9_-]{43}")


def is_object_id(value: str) -> bool:
    return OBJECT_ID.fullmatch(value) is not None


def looks_like_key(secret: str) -> bool:
    """Whether `secret` has the shape of a key this project creates (checked before any
    lookup, so that junk tokens cost nothing)."""
    return KEY_SHAPE.fullmatch(secret) is not None


@dataclass(frozen=True)
class Principal:
    key_id: str
    name: str
    org_id: str | None  # None: platform staff

    @property
    def is_staff(self) -> bool:
        return self.org_id is None


def hash_key(secret: str) -> str:
    # The secret carries 256 random bits, so a fast hash cannot be brute-forced.
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(db: Database[Doc], name: str, org_id: str | None, now: datetime) -> tuple[str, str]:
    """Store a new key's hash; return (key id, secret). The secret is not kept."""
    db[KEYS].create_index("hash", unique=True)
    secret = PREFIX + secrets.token_urlsafe(32)
    key_id = "k_" + secrets.token_hex(4)
    db[KEYS].insert_one(
        {
            "_id": key_id,
            "hash": hash_key(secret),
            "name": name,
            "org_id": org_id,
            "created_at": now,
            "revoked_at": None,
        }
    )
    return key_id, secret


def org_exists(db: Database[Doc], collection: str, org_id: str) -> bool:
    """Whether the source holds the organization (its _id an ObjectId or, in old data, a string)."""
    ids: list[Any] = [ObjectId(org_id), org_id]
    return db[collection].find_one({"_id": {"$in": ids}}, {"_id": 1}) is not None


def list_keys(db: Database[Doc]) -> list[Doc]:
    docs = db[KEYS].find({}, {"hash": 0}, sort=[("created_at", 1)])
    return [{"key_id": doc.pop("_id"), **doc} for doc in docs]


def revoke_key(db: Database[Doc], key_id: str, now: datetime) -> bool:
    result = db[KEYS].update_one({"_id": key_id, "revoked_at": None}, {"$set": {"revoked_at": now}})
    return result.modified_count == 1


def authenticate(db: Database[Doc], secret: str) -> Principal | None:
    """The principal of an active key, or None."""
    if not looks_like_key(secret):
        return None
    doc = db[KEYS].find_one({"hash": hash_key(secret), "revoked_at": None})
    if doc is None:
        return None
    return Principal(key_id=doc["_id"], name=doc["name"], org_id=doc["org_id"])
