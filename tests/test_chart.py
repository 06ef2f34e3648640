"""The dashboard's chart, table extras and request ordering in headless Chromium."""

from collections.abc import Iterator
from datetime import timedelta
from itertools import pairwise
from typing import Any

import pytest

from etl.db import Databases
from tests.live import Live
from tests.test_dashboard import ARGS, ARTIFACTS, CHROMIUM, api, sign_in

pytestmark = pytest.mark.browser
ORGS = 7


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium for the module; each test gets its own context."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15000)
    yield page
    context.close()


@pytest.fixture
def board(dbs: Databases) -> Iterator[Live]:
    """A real server over seven organizations with a varied day each for the last 70 days."""
    from bson import ObjectId

    from api import auth
    from api.server import make_server, start_in_thread
    from etl.jobs import utcnow
    from tests.conftest import free_port
    from tests.factories import BOT_1, BOT_2, make_row, store_rows

    today = utcnow().date()
    orgs = [str(ObjectId()) for _ in range(ORGS)]
    rows = []
    for back in range(70):
        day = (today - timedelta(days=back)).isoformat()
        for n, org in enumerate(orgs):
            conversations = (back * 7 + n * 3) % 5 + n + (back < 35) * (n % 3)
            if conversations:
                agent = BOT_1 if back % 2 else BOT_2
                rows.append(make_row(org, agent, day, conversations, conversations * 4, n % 2))
    store_rows(dbs, rows)
    dbs.source.organizations.insert_many(
        [{"_id": ObjectId(org), "name": f"Org {chr(65 + n)}"} for n, org in enumerate(orgs)]
    )
    key = auth.create_key(dbs.rollup, "staff", None, utcnow())[1]
    port = free_port()
    server = make_server(dbs, "127.0.0.1", port, log_level="warning")
    thread = start_in_thread(server)
    yield Live(f"http://127.0.0.1:{port}", dbs, key, orgs[0], key)
    server.should_exit = True
    thread.join(timeout=10)


def open_last_30_days(page: Any, live: Live) -> dict[str, Any]:
    """Sign in, show the last 30 days (weekly) and return the API's answer for that view."""
    sign_in(page, live, live.key)
    page.wait_for_selector("#table tbody tr.org")
    page.select_option("#preset", "30")
    page.wait_for_function("state.report && state.report.granularity === 'week'")
    start, end = page.evaluate("[state.report.start, state.report.end]")
    return api(live, start=start, end=end)


def tooltip(page: Any) -> dict[str, str]:
    tip = page.locator("#chart-tip")
    tip.wait_for(state="visible")
    names = tip.locator(".tip-name").all_inner_texts()
    values = tip.locator(".tip-value").all_inner_texts()
    return {"title": tip.locator("strong").inner_text(), **dict(zip(names, values, strict=True))}


def watch_errors(page: Any) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


def test_the_tooltip_shows_the_apis_values_for_the_bucket(page: Any, board: Live) -> None:
    body = open_last_30_days(page, board)
    bars = page.locator("#chart g.bucket")
    assert bars.count() == len(body["buckets"])
    i = 2
    bucket, total = body["buckets"][i], body["total"]["buckets"][i]
    bars.nth(i).hover()
    tip = tooltip(page)
    assert tip["title"].startswith(bucket["label"])
    assert tip["Total conversations"] == f"{total['conversations']:,}"
    for row in body["rows"][:5]:
        assert tip[row["name"]] == f"{row['buckets'][i]['conversations']:,}"
    page.check("input[name=metric][value=messages]")
    bars.nth(i).focus()  # keyboard focus shows it too
    assert tooltip(page)["Total messages"] == f"{total['messages']:,}"
    page.check("input[name=metric][value=avg_depth]")
    bars.nth(i).focus()
    depth = total.get("avg_depth")
    expected = "—" if depth is None else f"{depth:,.2f}"
    assert tooltip(page)["Total average depth"] == expected


def test_stacked_segments_sum_to_the_bucket_total(page: Any, board: Live) -> None:
    body = open_last_30_days(page, board)
    totals = [b["conversations"] for b in body["total"]["buckets"]]
    stacks = page.locator("#chart g.bucket").evaluate_all(
        """gs => gs.map(g => [...g.querySelectorAll('rect.seg')]
                  .map(r => [r.dataset.series, Number(r.dataset.value)]))"""
    )
    assert [sum(v for _, v in stack) for stack in stacks] == totals
    names = {name for stack in stacks for name, _ in stack}
    assert names == {row["name"] for row in body["rows"][:5]} | {"Other"}
    page.select_option("#chart-mode", "total")
    values = page.locator("#chart rect.seg").evaluate_all("rs => rs.map(r => +r.dataset.value)")
    assert values == [t for t in totals if t]
    ticks = page.locator("#chart text.tick").evaluate_all("ts => ts.map(t => t.textContent)")
    values = [int(t.replace(",", "")) for t in ticks]
    assert values[0] == 0 and values[-1] >= max(totals)
    steps = {b - a for a, b in pairwise(values)}
    assert len(steps) == 1 and str(steps.pop()).strip("0") in {"1", "2", "5"}


def test_resizing_to_a_phone_redraws_the_chart_inside_the_viewport(page: Any, board: Live) -> None:
    open_last_30_days(page, board)
    page.select_option("#granularity", "day")
    page.wait_for_function("state.report.granularity === 'day'")
    wide = page.evaluate("document.getElementById('chart').viewBox.baseVal.width")
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_function(f"document.getElementById('chart').viewBox.baseVal.width < {wide}")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    right = page.locator("#chart g.bucket").evaluate_all(
        "gs => Math.max(...gs.map(g => g.getBoundingClientRect().right))"
    )
    assert right <= 390
    assert page.evaluate("document.getElementById('chart').getBoundingClientRect().right") <= 390
    assert page.locator("#chart g.bucket").count() == 30
    page.locator("#chart g.bucket").nth(20).hover()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-390.png"), full_page=True)


def test_keyboard_focus_reaches_bars_and_accordion_rows(page: Any, board: Live) -> None:
    open_last_30_days(page, board)
    page.focus("#chart-mode")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.classList.contains('bucket')")
    first = page.evaluate("document.activeElement.dataset.index")
    page.keyboard.press("ArrowRight")
    assert page.evaluate("document.activeElement.dataset.index") == str(int(first) + 1)
    assert page.locator("#chart-tip").is_visible()
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('expand')"):
            break
    assert page.evaluate("document.activeElement.classList.contains('expand')")
    page.keyboard.press("Enter")
    page.wait_for_selector("tr.agent:not(.loading-row)")
    assert page.locator("button.expand").first.get_attribute("aria-expanded") == "true"


def test_expanded_agents_are_remembered_per_organization_and_range(page: Any, board: Live) -> None:
    open_last_30_days(page, board)
    first = page.locator("#table tbody tr.org button.expand").first
    first.click()
    page.wait_for_selector("tr.agent:not(.loading-row)")
    agents = page.locator("tr.agent").count()
    page.select_option("#preset", "90")
    page.wait_for_function("state.report.granularity === 'month'")
    assert page.locator("tr.agent").count() == 0
    page.select_option("#preset", "30")
    page.wait_for_function("state.report.granularity === 'week'")
    page.wait_for_selector("tr.agent:not(.loading-row)")
    assert page.locator("tr.agent").count() == agents
    assert first.get_attribute("aria-expanded") == "true"


def test_a_slow_older_response_does_not_overwrite_a_newer_one(page: Any, board: Live) -> None:
    open_last_30_days(page, board)
    held: list[Any] = []

    def hold_the_first(route: Any) -> None:
        if held:
            route.continue_()
        else:
            held.append(route)

    page.route("**/api/aggregations/usage?*", hold_the_first)
    page.select_option("#preset", "90")  # asked first, answered last
    page.wait_for_function("document.getElementById('loading').hidden === false")
    page.select_option("#preset", "7")
    page.wait_for_function("state.report.granularity === 'day'")
    assert len(held) == 1
    with page.expect_response(lambda r: r.url == held[0].request.url):
        held[0].continue_()
    page.evaluate("new Promise(r => setTimeout(r, 200))")
    assert page.evaluate("state.report.granularity") == "day"
    assert page.locator("#chart g.bucket").count() == 7
    assert page.locator("#loading").is_hidden()


def test_nothing_is_logged_as_an_error_while_using_the_dashboard(page: Any, board: Live) -> None:
    errors = watch_errors(page)
    open_last_30_days(page, board)
    for metric in ("messages", "handoffs", "users", "avg_depth", "conversations"):
        page.check(f"input[name=metric][value={metric}]")
        page.locator("#chart g.bucket").nth(1).hover()
    page.select_option("#chart-mode", "total")
    page.check("#compare")
    page.wait_for_function("state.seq > 2 && document.getElementById('loading').hidden")
    page.locator("#table tbody tr.org button.expand").first.click()
    page.wait_for_selector("tr.agent:not(.loading-row)")
    page.set_viewport_size({"width": 390, "height": 844})
    page.evaluate("new Promise(r => requestAnimationFrame(() => setTimeout(r, 100)))")
    assert errors == []
    icon = page.evaluate("document.querySelector('link[rel=icon]').href")
    assert icon.startswith("data:image/svg+xml")
