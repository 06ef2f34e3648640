"""Run records (`etl_runs`), the lease lock (`etl_locks`) and the watermark derived from them."""

import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo import DESCENDING, MongoClient
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, PyMongoError

from etl.db import Doc

RUNS = "etl_runs"
LOCKS = "etl_locks"
ROLLUP_LOCK = "rollup"

OK = "ok"
FAILED = "failed"
RUNNING = "running"
ABANDONED = "abandoned"


def new_holder() -> str:
    """An id for this process's claim on the lock, readable in `status`."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LockBusy(Exception):
    """Another run holds the lock."""


@dataclass
class Lease:
    db: Database[Doc]
    holder: str
    seconds: float
    session_id: Doc | None = None

    def acquire(self, now: datetime) -> Doc | None:
        """Take the lock if free or expired; return the expired holder's lock doc, if any."""
        locks = self.db[LOCKS]
        previous = locks.find_one({"_id": ROLLUP_LOCK})
        claim = {
            "holder": self.holder,
            "acquired_at": now,
            "expires_at": now + timedelta(seconds=self.seconds),
            "session_id": self.session_id,
        }
        free = {"$or": [{"expires_at": {"$lt": now}}, {"holder": self.holder}]}
        try:
            locks.find_one_and_update({"_id": ROLLUP_LOCK, **free}, {"$set": claim}, upsert=True)
        except DuplicateKeyError:
            current = locks.find_one({"_id": ROLLUP_LOCK}) or {}
            raise LockBusy(
                f"another rollup is running (holder {current.get('holder')}, "
                f"lease until {current.get('expires_at')} UTC)"
            ) from None
        if previous and previous.get("holder") != self.holder:
            return previous
        return None

    def acquire_waiting(
        self, clock: Callable[[], datetime], wait_seconds: float, poll: float = 1.0
    ) -> Doc | None:
        """Retry `acquire` until `wait_seconds` have passed."""
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                return self.acquire(clock())
            except LockBusy:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(min(poll, max(0.0, deadline - time.monotonic())))

    def renew(self, now: datetime) -> None:
        result = self.db[LOCKS].update_one(
            {"_id": ROLLUP_LOCK, "holder": self.holder},
            {"$set": {"expires_at": now + timedelta(seconds=self.seconds)}},
        )
        if result.matched_count == 0:
            raise LockBusy("the lease was lost to another run; stopping")

    def release(self) -> None:
        self.db[LOCKS].delete_one({"_id": ROLLUP_LOCK, "holder": self.holder})


def end_session(client: MongoClient[Doc], session_id: Doc | None) -> None:
    """Kill a session, aborting its open transaction; best effort."""
    if session_id is None:
        return
    try:
        client.admin.command("killSessions", [session_id])
    except PyMongoError:
        pass  # without the privilege, the server's transaction timeout ends it instead


def current_lock(db: Database[Doc]) -> Doc | None:
    return db[LOCKS].find_one({"_id": ROLLUP_LOCK})


def start_run(db: Database[Doc], record: Doc) -> ObjectId:
    doc = {**record, "status": RUNNING}
    run_id = db[RUNS].insert_one(doc).inserted_id
    assert isinstance(run_id, ObjectId)
    return run_id


def update_run(db: Database[Doc], run_id: ObjectId, fields: Doc) -> None:
    db[RUNS].update_one({"_id": run_id}, {"$set": fields})


def mark_abandoned(db: Database[Doc], holder: str, now: datetime) -> int:
    """Mark the runs of a holder whose lease expired as abandoned."""
    result = db[RUNS].update_many(
        {"holder": holder, "status": RUNNING},
        {
            "$set": {
                "status": ABANDONED,
                "finished_at": now,
                "error": "the process stopped without finishing; its lease expired",
            }
        },
    )
    return int(result.modified_count)


def last_ok_run(db: Database[Doc], kind: str) -> Doc | None:
    return db[RUNS].find_one({"kind": kind, "status": OK}, sort=[("started_at", DESCENDING)])


def recent_runs(db: Database[Doc], limit: int) -> list[Doc]:
    return list(db[RUNS].find({}, sort=[("started_at", DESCENDING)], limit=limit))


def latest_finished_run(db: Database[Doc]) -> Doc | None:
    """The newest ok run; its id keys caches of rollup reads."""
    return db[RUNS].find_one(
        {"status": OK}, sort=[("finished_at", DESCENDING)], projection={"_id": 1, "finished_at": 1}
    )


def data_through(db: Database[Doc]) -> date | None:
    """The last day the rollup is complete for, by the newest ok nightly run."""
    run = last_ok_run(db, "nightly")
    if run is None or not run.get("complete_through"):
        return None
    return date.fromisoformat(run["complete_through"])


def ensure_indexes(db: Database[Doc]) -> None:
    db[RUNS].create_index([("kind", 1), ("status", 1), ("started_at", -1)])
    db[RUNS].create_index([("status", 1), ("finished_at", -1)])


def run_summary(run: Doc) -> dict[str, Any]:
    """A JSON-friendly view of a run record."""
    out: dict[str, Any] = {}
    for key, value in run.items():
        if isinstance(value, ObjectId):
            out["id" if key == "_id" else key] = str(value)
        elif isinstance(value, datetime):
            out[key] = value.isoformat() + "Z"
        else:
            out[key] = value
    return out
