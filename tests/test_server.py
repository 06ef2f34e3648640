"""The API through a real uvicorn server on loopback, over the embedded database server."""

import json
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings

from etl import rollup
from etl.jobs import utcnow
from tests.live import Live


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
    assert body["total"]["totals"]["conversations"] == expected
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
