"""The real consumers: Debian's Prometheus scrapes the API, its Pushgateway receives a run.

Both are started here on loopback ports; `make test` installs them (`.ci/need`).
"""

import contextlib
import json
import re
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from etl import runner
from etl.db import Databases
from etl.jobs import utcnow
from etl.runner import RunContext, Work
from tests.conftest import free_port
from tests.factories import make_request
from tests.live import Live

pytestmark = pytest.mark.prometheus

TOKEN = "scraped-by-prometheus-0123456789"
README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture
def dbs(make_dbs: Callable[..., Databases]) -> Databases:
    """The live server's databases, with a metrics token for Prometheus."""
    return make_dbs(metrics_token=TOKEN)


def get(url: str, timeout: float = 5) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
        return body


@contextlib.contextmanager
def running(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A server process for the test's length; its log goes to a file, never a full pipe."""
    with log.open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until(
    what: str, check: Callable[[], Any], process: subprocess.Popen[bytes], log: Path
) -> Any:
    """Poll `check` until it returns something true, for at most a minute."""
    deadline = time.monotonic() + 60
    while True:
        try:
            found = check()
        except OSError:
            found = None
        if found:
            return found
        if process.poll() is not None:
            raise AssertionError(f"{what}: the process ended: {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within a minute: {log.read_text()[-2000:]}")
        time.sleep(0.25)


def readme_alert_rules() -> str:
    """The rule file the README shows, as a reader would copy it."""
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.DOTALL)
    rules = [block for block in blocks if block.startswith("groups:")]
    assert len(rules) == 1, "the README shows one Prometheus rule file"
    return rules[0]


def query(base: str, promql: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    body = json.loads(get(url))
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def test_prometheus_scrapes_the_api_and_its_query_api_returns_the_series(
    live: Live, tmp_path: Path
) -> None:
    assert live.get("/api/aggregations/usage")[0] == 200
    assert live.get("/api/aggregations/usage", key="not a key")[0] == 401
    api = urllib.parse.urlsplit(live.base)
    rules = tmp_path / "usage-rules.yml"
    rules.write_text(readme_alert_rules())
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{json.dumps(str(rules))}]\n"
        "scrape_configs:\n"
        "  - job_name: usage_api\n"
        f"    authorization: {{credentials: {json.dumps(TOKEN)}}}\n"
        f"    static_configs: [{{targets: ['{api.hostname}:{api.port}']}}]\n"
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "prometheus.log"
    args = [
        "prometheus",
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with running(args, log) as prometheus:
        usage = 'usage_http_requests_total{job="usage_api",route="/api/aggregations/usage"}'
        found = wait_until("the usage series", lambda: query(base, usage), prometheus, log)
        assert {series["metric"]["status"] for series in found} >= {"200", "401"}
        assert query(base, 'up{job="usage_api"}')[0]["value"][1] == "1"
        for promql in [
            "usage_http_request_duration_seconds_bucket",
            "usage_http_auth_failures_total",
            "usage_api_cache_misses_total",
            "usage_data_through_timestamp_seconds",
            "usage_last_run_finished_timestamp_seconds",
            "usage_served_info",
        ]:
            assert query(base, promql), promql
        assert query(base, "usage_fresh")[0]["value"][1] == "1"
        # The README's alert rules load and are evaluated.
        loaded = wait_until(
            "the README's rules",
            lambda: [
                rule
                for group in json.loads(get(f"{base}/api/v1/rules"))["data"]["groups"]
                for rule in group["rules"]
                if rule.get("lastEvaluation", "").startswith("20")
            ],
            prometheus,
            log,
        )
        assert all(rule["health"] == "ok" for rule in loaded), loaded


def pushed(base: str, name: str, kind: str) -> float | None:
    for family in text_string_to_metric_families(get(f"{base}/metrics").decode()):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == name and labels.get("job") == "usage_etl" and labels["kind"] == kind:
                return sample.value
    return None


def broken_plan(ctx: RunContext) -> Work:
    raise RuntimeError("the plan broke")


def test_a_run_pushes_its_metrics_to_the_pushgateway_and_a_failure_keeps_the_last_success(
    make_dbs: Callable[..., Databases], tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "pushgateway.log"
    args = ["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{port}"]
    with running(args, log) as gateway:
        wait_until("the Pushgateway", lambda: get(f"{base}/-/ready"), gateway, log)
        dbs = make_dbs(pushgateway_url=base)
        dbs.source.requests.insert_one(make_request(createdAt=datetime(2026, 10, 14, 10, 0)))
        runner.run_backfill(dbs, date(2026, 10, 13), date(2026, 10, 15), utcnow(), utcnow)
        success = pushed(base, "usage_run_last_success_timestamp_seconds", "backfill")
        assert success is not None and success > 0
        assert pushed(base, "usage_run_succeeded", "backfill") == 1
        assert pushed(base, "usage_run_days", "backfill") == 3
        assert pushed(base, "usage_run_conversations", "backfill") == 1
        with pytest.raises(RuntimeError):
            runner.execute(dbs, "backfill", utcnow(), utcnow, broken_plan)
        assert pushed(base, "usage_run_succeeded", "backfill") == 0
        assert pushed(base, "usage_run_last_success_timestamp_seconds", "backfill") == success
        assert pushed(base, "usage_run_days", "backfill") == 3
