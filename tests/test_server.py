"""The API through a real uvicorn server on loopback, over the embedded database server."""

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from api import auth
from api.server import make_server, start_in_thread
from etl import rollup, sample
from etl.db import Databases
from etl.jobs import utcnow
from tests.conftest import free_port

SPEC = sample.SampleSpec(organizations=4, internal=1, agents_per_org=2, per_day=12, days=40)


class Live:
    def __init__(self, base: str, dbs: Databases, key: str) -> None:
        self.base, self.dbs, self.key = base, dbs, key

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
    today = rollup.local_today(now, dbs.settings)
    rollup.run_backfill(dbs, today - timedelta(days=SPEC.days), today, now, utcnow)
    rollup.run_nightly(dbs, utcnow(), utcnow)
    key = auth.create_key(dbs.rollup, "staff", None, now)[1]
    port = free_port()
    server = make_server(dbs, "127.0.0.1", port, log_level="warning")
    thread = start_in_thread(server)
    yield Live(f"http://127.0.0.1:{port}", dbs, key)
    server.should_exit = True
    thread.join(timeout=10)


def test_the_platform_view_matches_an_independent_count(live: Live) -> None:
    today = rollup.local_today(utcnow(), live.dbs.settings)
    start = today - timedelta(days=20)
    status, body = live.get(f"/api/aggregations/usage?start={start}&end={today}&granularity=day")
    assert status == 200
    # Count billable conversations straight from the source, by a plain Python filter.
    internal = set(live.dbs.settings.internal_org_ids)
    expected = 0
    for doc in live.dbs.source.requests.find():
        created, org = doc.get("createdAt"), doc.get("id_organization")
        if not isinstance(created, datetime) or not created.date() >= start:
            continue
        if doc.get("status") != 1000 or doc.get("isTestMode") is True:
            continue
        if not isinstance(doc.get("depth"), int) or doc["depth"] <= 2:
            continue
        if org is None or len(str(org)) != 24 or str(org).lower() in internal:
            continue
        expected += 1
    assert body["total"]["totals"]["conversations"] == expected  # type: ignore[index]
    assert body["data_through"] == (today - timedelta(days=1)).isoformat()


def test_the_dashboard_and_openapi_are_served(live: Live) -> None:
    with urllib.request.urlopen(live.base + "/", timeout=10) as response:
        assert b"Conversation Volume" in response.read()
    with urllib.request.urlopen(live.base + "/openapi.json", timeout=10) as response:
        spec = json.loads(response.read())
    assert "/api/aggregations/usage" in spec["paths"]


def test_fuzzing_the_openapi_contract_never_yields_a_5xx(live: Live) -> None:
    import schemathesis

    schema = schemathesis.openapi.from_url(live.base + "/openapi.json")
    headers = {"Authorization": f"Bearer {live.key}"}
    seen: list[int] = []
    server_errors: list[str] = []

    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
        def call(case: Any) -> None:
            response = case.call(base_url=live.base, headers=headers)
            seen.append(response.status_code)
            if response.status_code >= 500:
                server_errors.append(f"{case.path} {case.query}: {response.status_code}")

        call()
    assert server_errors == []
    assert 200 in seen and 422 in seen  # the fuzzer reached both valid and invalid input
