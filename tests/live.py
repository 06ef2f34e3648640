"""A real uvicorn server on loopback over sample data on the embedded database server."""

import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta

import pytest

from api import auth
from api.server import make_server, start_in_thread
from etl import rollup, runner, sample
from etl.db import Databases
from etl.jobs import utcnow
from tests.conftest import free_port

SPEC = sample.SampleSpec(organizations=4, internal=1, agents_per_org=2, per_day=12, days=40)


class Live:
    def __init__(self, base: str, dbs: Databases, key: str, org_id: str, org_key: str) -> None:
        self.base, self.dbs, self.key = base, dbs, key
        self.org_id, self.org_key = org_id, org_key

    def get(self, path: str, key: str | None = None) -> tuple[int, dict[str, object]]:
        request = urllib.request.Request(
            self.base + path, headers={"Authorization": f"Bearer {key or self.key}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, json.loads(exc.read())


@pytest.fixture
def live(dbs: Databases) -> Iterator[Live]:
    now = utcnow()
    sample.load_sample(dbs, SPEC, now)
    internal = sample.make_sample(SPEC).internal_ids
    dbs.settings = dbs.settings.model_copy(update={"internal_org_ids": internal})
    today = rollup.local_today(now, dbs.settings)
    runner.run_backfill(dbs, today - timedelta(days=SPEC.days), today, now, utcnow)
    runner.run_nightly(dbs, utcnow(), utcnow)
    key = auth.create_key(dbs.rollup, "staff", None, now)[1]
    org_id = str(dbs.source.organizations.find_one({"name": "GIC"})["_id"])
    org_key = auth.create_key(dbs.rollup, "GIC", org_id, now)[1]
    with serving(dbs, key, org_id, org_key) as served:
        yield served


@contextlib.contextmanager
def serving(dbs: Databases, key: str, org_id: str, org_key: str) -> Iterator[Live]:
    """The API and dashboard over `dbs` on a free loopback port, for as long as the block."""
    port = free_port()
    server = make_server(dbs, "127.0.0.1", port, log_level="warning")
    thread = start_in_thread(server)
    try:
        yield Live(f"http://127.0.0.1:{port}", dbs, key, org_id, org_key)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
