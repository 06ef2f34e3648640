"""The dashboard in headless Chromium against the real server and the embedded database."""

import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlencode

import pytest

from etl.db import Databases
from tests.live import Live, serving

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def page(live: Live, browser_page: object) -> object:
    """A browser page, with the server over the sample data running."""
    return browser_page


@pytest.fixture
def browser_page() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is not installed: apt-get install chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        context = browser.new_context(
            accept_downloads=True, viewport={"width": 1400, "height": 900}
        )
        page = context.new_page()
        page.set_default_timeout(15000)
        yield page
        context.close()
        browser.close()


def sign_in(page: object, live: Live, key: str) -> None:
    page.goto(live.base + "/")
    page.fill("#key-input", key)
    page.click("#key-form button[type=submit]")


def api(live: Live, key: str | None = None, **params: str) -> dict[str, object]:
    status, body = live.get("/api/aggregations/usage?" + urlencode(params), key)
    assert status == 200
    return body


def numbers(texts: list[str]) -> list[int]:
    return [int(t.replace(",", "")) for t in texts]


def shown_rows(page: object) -> list[list[str]]:
    rows = page.locator("#table tbody tr.org")
    return [rows.nth(i).locator("td:not(.spark)").all_inner_texts() for i in range(rows.count())]


def test_the_platform_view_shows_the_apis_numbers(page: object, live: Live) -> None:
    sign_in(page, live, live.key)
    page.wait_for_selector("#table tbody tr.org")
    start = page.evaluate("presetRange('6m', new Date())")
    body = api(live, start=start[0], end=start[1], granularity="auto")
    rows = shown_rows(page)
    # Months that end before the first computed day show "no data", not a zero.
    never = [b["end"] < body["data_from"] for b in body["buckets"]]
    assert any(never) and not all(never)
    expected = [
        [
            row["name"],
            *[
                "no data" if gone else f"{c['conversations']:,}"
                for c, gone in zip(row["buckets"], never, strict=True)
            ],
            f"{row['totals']['conversations']:,}",
        ]
        for row in body["rows"]
    ]
    assert rows == expected
    headers = page.locator("#table thead th:not(.spark)").all_inner_texts()
    assert headers[1].startswith(body["buckets"][0]["label"])
    assert "Excludes test mode and internal organizations" in page.inner_text("#subtitle")
    assert page.locator("#key-form").is_hidden()
    internal = set(live.dbs.settings.internal_org_ids)
    shown_ids = page.locator("#table tbody tr.org").evaluate_all("rs => rs.map(r => r.dataset.id)")
    assert internal and not internal & set(shown_ids)
    assert page.inner_text("#freshness").startswith("Data from ")
    bars = page.locator("#chart g.bucket")
    assert bars.count() == len(body["buckets"])
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)


def test_an_organization_expands_into_its_agents_and_collapses(page: object, live: Live) -> None:
    sign_in(page, live, live.key)
    button = page.locator("#table tbody tr.org button.expand").first
    button.wait_for()
    org_id = page.locator("#table tbody tr.org").first.get_attribute("data-id")
    report = page.evaluate("[state.report.start, state.report.end]")
    agents = api(live, scope="org", org_id=org_id, start=report[0], end=report[1])
    button.click()
    assert button.get_attribute("aria-expanded") == "true"
    page.wait_for_selector("tr.agent:not(.loading-row)")
    names = page.locator("tr.agent td:first-child").all_inner_texts()
    assert names == [row["name"] for row in agents["rows"]]
    page.check("input[name=metric][value=messages]")  # a redraw keeps the agents, in messages
    totals = page.locator("tr.agent td.total").all_inner_texts()
    assert numbers(totals) == [row["totals"]["messages"] for row in agents["rows"]]
    button.press("Enter")  # keyboard-operable
    assert button.get_attribute("aria-expanded") == "false"
    assert page.locator("tr.agent").count() == 0


def test_range_and_metric_changes_redraw_the_view(page: object, live: Live) -> None:
    sign_in(page, live, live.key)
    page.wait_for_selector("#table tbody tr.org")
    page.select_option("#preset", "30")
    page.wait_for_function("state.report && state.report.granularity === 'week'")
    page.check("input[name=metric][value=messages]")
    start, end = page.evaluate("[state.report.start, state.report.end]")
    body = api(live, start=start, end=end)
    total = page.locator("#table tfoot td.total").inner_text()
    assert numbers([total]) == [body["total"]["totals"]["messages"]]
    page.select_option("#granularity", "day")
    page.wait_for_function("state.report.granularity === 'day'")
    assert page.locator("#chart g.bucket").count() == 30


def test_csv_download_of_the_current_view(page: object, live: Live) -> None:
    sign_in(page, live, live.key)
    page.wait_for_selector("#table tbody tr.org")
    page.check("input[name=metric][value=handoffs]")
    with page.expect_download() as info:
        page.click("#download")
    download = info.value
    assert download.suggested_filename.startswith("usage-platform-")
    assert download.suggested_filename.endswith("-month-handoffs.csv")
    lines = Path(download.path()).read_text().splitlines()
    assert lines[0].startswith("id,name,")
    assert lines[-1].startswith(",Total,")


def test_a_customer_key_sees_its_own_agents(page: object, live: Live) -> None:
    sign_in(page, live, live.org_key)
    page.wait_for_selector("#table tbody tr.org")
    assert "by agent" in page.inner_text("#subtitle")
    assert page.locator("button.expand").count() == 0
    start, end = page.evaluate("[state.report.start, state.report.end]")
    body = api(live, live.org_key, start=start, end=end)
    assert body["org_id"] == live.org_id
    assert [r[0] for r in shown_rows(page)] == [r["name"] for r in body["rows"]]


def test_a_wrong_key_brings_back_the_prompt(page: object, live: Live) -> None:
    sign_in(page, live, "usk_not-a-real-key")
    page.wait_for_selector("#key-form:not([hidden])")
    assert "not accepted" in page.inner_text("#key-message")
    assert page.evaluate("sessionStorage.getItem('usage.apiKey')") is None


def test_the_api_docs_render_with_nothing_from_elsewhere(page: object, live: Live) -> None:
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(live.base + "/docs")
    page.wait_for_selector(".swagger-ui .info .title")
    assert "Usage analytics" in page.inner_text(".swagger-ui .info .title")
    assert page.locator(".opblock").count() >= 3
    assert requested and all(url.startswith(live.base + "/") for url in requested), requested


@pytest.fixture
def crowd(dbs: Databases) -> Iterator[Live]:
    """A real server over 260 organizations, one agent each, in the last six months."""
    from bson import ObjectId

    from api import auth
    from etl.jobs import utcnow
    from tests.factories import BOT_1, make_row, store_rows

    today = utcnow().date()
    day = (today.replace(day=1) - timedelta(days=20)).isoformat()  # last month
    orgs = [str(ObjectId()) for _ in range(260)]
    store_rows(dbs, [make_row(org, BOT_1, day, 1 + n % 7) for n, org in enumerate(orgs)])
    dbs.source.organizations.insert_many(
        [{"_id": ObjectId(org), "name": f"Org {n:03d}"} for n, org in enumerate(orgs)]
    )
    key = auth.create_key(dbs.rollup, "staff", None, utcnow())[1]
    with serving(dbs, key, orgs[0], key) as served:
        yield served


def test_many_organizations_show_a_page_other_an_exact_total_search_and_more(
    browser_page: object, crowd: Live
) -> None:
    page = browser_page
    expected_total = sum(1 + n % 7 for n in range(260))
    sign_in(page, crowd, crowd.key)
    page.wait_for_selector("#table tbody tr.other")
    assert page.locator("#table tbody tr.org").count() == 50
    foot = page.locator("#table tfoot td").all_inner_texts()
    assert numbers(foot[-1:]) == [expected_total]
    other = page.locator("#table tbody tr.other td").all_inner_texts()
    shown = sum(numbers([r[-1]])[0] for r in shown_rows(page))
    assert other[0] == "Other (210)" and numbers(other[-1:]) == [expected_total - shown]
    assert "Showing 50 of 260 organizations" in page.inner_text("#shown")
    page.click("#more")
    page.wait_for_function("document.querySelectorAll('#table tbody tr.org').length === 100")
    page.fill("#search", "org 12")
    page.wait_for_function("document.querySelectorAll('#table tbody tr.org').length === 10")
    names = sorted(r[0] for r in shown_rows(page))
    assert names == [f"Org {n}" for n in range(120, 130)]
    assert page.locator("#table tbody tr.other").count() == 0
    foot = page.locator("#table tfoot td").all_inner_texts()
    assert numbers(foot[-1:]) == [sum(1 + n % 7 for n in range(120, 130))]
