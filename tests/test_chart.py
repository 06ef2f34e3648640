"""The dashboard's chart, table extras and request ordering in headless Chromium."""

from collections.abc import Iterator
from datetime import timedelta
from itertools import pairwise
from typing import Any
from urllib.parse import urlencode

import pytest

from etl.db import Databases
from tests.live import Live, serving
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
    """A real server over seven organizations with a varied day each for the last 70 days,
    complete through yesterday, with users (who come back on other days)."""
    from dataclasses import replace

    from bson import ObjectId

    from api import auth
    from etl import ledger
    from etl.definition import USERS_VERSION, of_settings
    from etl.jobs import utcnow
    from tests.factories import BOT_1, BOT_2, make_row, store_rows

    now = utcnow()
    today = now.date()
    orgs = [str(ObjectId()) for _ in range(ORGS)]
    rows = []
    for back in range(70):
        day = (today - timedelta(days=back)).isoformat()
        for n, org in enumerate(orgs):
            conversations = (back * 7 + n * 3) % 5 + n + (back < 35) * (n % 3)
            if conversations:
                agent = BOT_1 if back % 2 else BOT_2
                users = [f"user-{n}-{(back + k) % 9}" for k in range(conversations)]
                if n == 0 and back in (3, 10, 17, 24):
                    # A crowd past what a sketch holds exactly: its unions are estimates.
                    users += [f"crowd-{back}-{k}" for k in range(1500)]
                    conversations += 1500
                row = make_row(org, agent, day, conversations, conversations * 4, n % 2, users)
                rows.append(row)
    ledger.adopt(dbs, replace(of_settings(dbs.settings), version=USERS_VERSION))
    store_rows(dbs, rows)
    yesterday = (today - timedelta(days=1)).isoformat()
    dbs.rollup.etl_runs.insert_one(
        {"kind": "nightly", "status": "ok", "started_at": now, "finished_at": now}
        | {"complete_through": yesterday}
    )
    dbs.source.organizations.insert_many(
        [{"_id": ObjectId(org), "name": f"Org {chr(65 + n)}"} for n, org in enumerate(orgs)]
    )
    key = auth.create_key(dbs.rollup, "staff", None, now)[1]
    with serving(dbs, key, orgs[0], key) as served:
        yield served


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
    # The table scrolls sideways under its names, which stay in view.
    page.evaluate("document.querySelector('.table-wrap').scrollLeft = 10000")
    name = page.locator("#table tbody tr.org td").first.bounding_box()
    assert name is not None and 0 <= name["x"] and name["x"] + name["width"] <= 390
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
    page.wait_for_selector("#movers li")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert errors == []
    icon = page.evaluate("document.querySelector('link[rel=icon]').href")
    assert icon.startswith("data:image/svg+xml")


def change_text(change: dict[str, Any] | None, decimals: int = 0) -> str:
    """The change column's text, as the dashboard writes it: arrow, amount and percentage."""
    if change is None or change["abs"] is None:
        return "—"
    amount, pct = change["abs"], change["pct"]
    if amount == 0:
        return "0" if pct is None else "0 (0.0%)"
    arrow = "▲" if amount > 0 else "▼"
    share = "new" if pct is None else ("+" if pct > 0 else "−") + f"{abs(pct):.1f}%"
    return f"{arrow} {abs(amount):,.{decimals}f} ({share})"


def test_the_change_column_equals_the_apis_change(page: Any, board: Live) -> None:
    view = open_last_30_days(page, board)
    page.check("#compare")
    page.wait_for_selector("#table thead th.change")
    body = api(board, start=view["start"], end=view["end"], compare="previous")
    shown = page.locator("#table tbody tr.org td.change").all_inner_texts()
    assert shown == [change_text(row["change"]["conversations"]) for row in body["rows"]]
    assert any(text.startswith(("▲", "▼")) for text in shown)
    total = page.locator("#table tfoot td.change").inner_text()
    assert total == change_text(body["total"]["change"]["conversations"])
    classes = page.locator("#table tbody tr.org td.change").evaluate_all(
        "tds => tds.map(td => td.classList.contains('up') - td.classList.contains('down'))"
    )
    amounts = [row["change"]["conversations"]["abs"] or 0 for row in body["rows"]]
    signs = [(a > 0) - (a < 0) for a in amounts]
    assert classes == signs
    page.check("input[name=metric][value=avg_depth]")
    shown = page.locator("#table tbody tr.org td.change").all_inner_texts()
    assert shown == [change_text(row["change"]["avg_depth"], 2) for row in body["rows"]]


def test_the_previous_period_is_a_faint_overlay_with_its_values(page: Any, board: Live) -> None:
    view = open_last_30_days(page, board)
    page.check("#compare")
    page.wait_for_selector("#chart rect.previous")
    body = api(board, start=view["start"], end=view["end"], compare="previous")
    previous = [b["conversations"] for b in body["total"]["previous"]["buckets"]]
    overlay = page.locator("#chart g.bucket").evaluate_all(
        "gs => gs.map(g => +g.querySelector('rect.previous').dataset.value)"
    )
    assert overlay == previous
    page.locator("#chart g.bucket").nth(1).focus()
    tip = tooltip(page)
    before = body["previous"]["buckets"][1]
    label = next(name for name in tip if name.startswith("Previous ("))
    assert tip[label] == f"{previous[1]:,}"
    assert before["start"][:4] in label
    current = body["total"]["buckets"][1]["conversations"]
    amount = current - previous[1]
    pct = round(amount / previous[1] * 100, 1) if previous[1] else None
    assert tip["Change"] == change_text({"abs": amount, "pct": pct})


def test_the_platform_view_shows_the_apis_movers(page: Any, board: Live) -> None:
    view = open_last_30_days(page, board)
    page.wait_for_selector("#movers:not([hidden]) li")
    status, movers = board.get(
        "/api/aggregations/movers?"
        + urlencode({"start": view["start"], "end": view["end"], "n": 5})
    )
    assert status == 200
    up = page.locator("#movers .movers-list.up li")
    assert up.locator(".mover-name").all_inner_texts() == [m["name"] for m in movers["up"]]
    assert up.locator(".change").all_inner_texts() == [
        change_text({"abs": m["change"], "pct": m["pct"]}) for m in movers["up"]
    ]
    down = page.locator("#movers .movers-list.down li .mover-name").all_inner_texts()
    assert down == [m["name"] for m in movers["down"]]
    page.check("input[name=metric][value=messages]")
    page.wait_for_function(
        "document.getElementById('movers-title').textContent.includes('messages')"
    )


def test_estimated_users_show_as_approximate_with_bounds(page: Any, board: Live) -> None:
    body = open_last_30_days(page, board)
    page.check("input[name=metric][value=users]")
    buckets = body["total"]["buckets"]
    spread = [i for i, b in enumerate(buckets) if b["users_low"] < b["users_high"]]
    exact = [i for i, b in enumerate(buckets) if b["users_low"] == b["users_high"] and b["users"]]
    assert spread and exact  # a crowd's weeks estimate; the others hold every user
    for i in (spread[0], exact[0]):
        total = buckets[i]
        assert total["users_estimate"] is True  # unions, all of them
        page.locator("#chart g.bucket").nth(i).hover()
        if i in spread:
            expected = f"≈ {total['users']:,} ({total['users_low']:,}–{total['users_high']:,})"
        else:
            expected = f"{total['users']:,}"  # bounds equal to the figure: shown as exact
        assert tooltip(page)["Total users"] == expected
    # Users do not add up across rows: the chart is the total, whatever the mode says.
    assert page.locator("#chart-mode").is_disabled()
    values = page.locator("#chart rect.seg").evaluate_all("rs => rs.map(r => +r.dataset.value)")
    assert values == [b["users"] for b in body["total"]["buckets"] if b["users"]]
