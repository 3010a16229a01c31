"""The live page in a real headless Chromium: a credit over HTTP shows up on the page.

With several boards the page shows one tab per board, the selected board's
top K over its own stream, its season and a countdown to the season's end.
A "find me" box shows one player's rank and the players around them; the
player who moved is highlighted with an arrow and their gain; the page fits
a phone; it says whether it is loading, live, reconnecting or offline (and
when it retries), and how long ago the board changed.

Chromium comes from the system (`make test` installs Debian's `chromium`);
Playwright drives it through `executable_path`. If the browser is missing the
test fails: it never skips.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from playwright.async_api import Browser, Page, Request, async_playwright, expect

from scoreboard.app import SSE
from scoreboard.tokens import Role
from tests.conftest import StartServer
from tests.helpers import FakeClock, ServerHandle, eventually, token

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    path = (
        os.environ.get("SCOREBOARD_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )
    if path is None:
        pytest.fail("Chromium is not installed (make test installs Debian's chromium package)")
    return path


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


class Watched:
    """A page with its requests, script errors and console errors collected."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.requests: list[Request] = []
        self.script_errors: list[str] = []
        self.console_errors: list[str] = []
        page.on("request", self._on_request)  # Playwright cannot take a bound builtin
        page.on("pageerror", lambda exc: self.script_errors.append(str(exc)))
        page.on("console", lambda msg: self.console_errors.append(msg.text) if msg.type == "error" else None)

    def _on_request(self, request: Request) -> None:
        self.requests.append(request)

    @property
    def streams(self) -> list[Request]:
        """The event streams the page opened, in order."""
        return [r for r in self.requests if urlparse(r.url).path.endswith("/stream")]

    def paths(self, path: str) -> int:
        """How many requests the page made for `path`."""
        return sum(urlparse(r.url).path == path for r in self.requests)


async def open_page(browser: Browser, server: ServerHandle) -> Watched:
    watched = Watched(await browser.new_page())
    await watched.page.goto(server.url + "/")
    return watched


async def test_page_shows_live_updates(browser: Browser, start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url)
    await server.credit("alice", 30, username="Alice")
    watched = await open_page(browser, server)
    page = watched.page
    await expect(page.locator("#status")).to_have_text("live")
    rows = page.locator("#rows tr")
    await expect(rows).to_have_count(1)
    await expect(rows.nth(0)).to_contain_text("Alice")
    await expect(rows.nth(0)).to_contain_text("30")

    # A credit over HTTP moves the board on the page, and the row is highlighted.
    await server.credit("bob", 45, username="Bob")
    await expect(rows).to_have_count(2)
    await expect(rows.nth(0)).to_contain_text("Bob")
    await expect(rows.nth(0).locator(".score")).to_have_text("45")
    await expect(rows.nth(0)).to_have_class("changed")
    await expect(rows.nth(1)).to_contain_text("Alice")
    await server.credit("alice", 20)
    await expect(rows.nth(0)).to_contain_text("Alice")
    await expect(rows.nth(0).locator(".score")).to_have_text("50")
    assert watched.script_errors == watched.console_errors == []


async def test_page_reconnects_and_resumes(browser: Browser, start: StartServer, sqlite_url: str) -> None:
    server = await start(sqlite_url, sse_retry_ms=200)
    watched = await open_page(browser, server)
    page = watched.page
    await expect(page.locator("#status")).to_have_text("live")
    await expect(page.locator("#empty")).to_be_visible()
    await server.credit("dan", 3, username="Dan")
    await expect(page.locator("#rows tr").nth(0)).to_contain_text("Dan")
    # Cut every event stream from the server side; the page notices, reconnects and catches up.
    for sub in list(server.app[SSE]._streams):
        sub.abort(1001, "test")
    await server.credit("carol", 7, username="Carol")
    await expect(page.locator("#rows tr").nth(0)).to_contain_text("Carol", timeout=10_000)
    await expect(page.locator("#status")).to_have_text("live")
    await expect(page.locator("#rows tr")).to_have_count(2)
    # The reconnect resumed from the last event it had, by Last-Event-ID.
    epoch = server.broadcaster.feed.epoch
    assert len(watched.streams) == 2
    headers = await watched.streams[-1].all_headers()
    assert headers.get("last-event-id") == f"{epoch}:1", headers
    assert watched.script_errors == []
    # The only console error is the cut stream itself.
    assert all("ERR_INCOMPLETE_CHUNKED_ENCODING" in e for e in watched.console_errors), watched.console_errors


# ---- several boards -------------------------------------------------------

# The default board is listed second on purpose: the page puts it first.
BOARDS = """
[boards.laps]
title = "Fastest lap"
operator = "best"
order = "asc"
min_value = 1
max_value = 600000

[boards.global]
title = "All time"
default = true

[boards.daily]
title = "Today"
reset = "daily"
archive = 3
"""
# The server's clock and the page's both start here: the daily season ends at
# the next midnight UTC, 12 hours later, whenever the tests run.
NOON = datetime(2026, 6, 1, 12, 0, tzinfo=UTC).timestamp()
MIDNIGHT = datetime(2026, 6, 2, tzinfo=UTC).timestamp()
COUNTDOWN = r"ends in (?:\d+d )?\d\d:\d\d:\d\d"


@pytest.fixture
def boards_file(tmp_path: Path) -> Path:
    """The catalog of three boards."""
    path = tmp_path / "boards.toml"
    path.write_text(BOARDS)
    return path


@pytest.fixture
def noon() -> FakeClock:
    """The server's clock, at noon UTC (it moves only when told to)."""
    return FakeClock(NOON)


async def open_boards_page(
    browser: Browser, server: ServerHandle, clock: FakeClock, *, behind_s: float = 0, **options: Any
) -> Watched:
    """The page, its clock starting `behind_s` before the server's (then running on by itself)."""
    watched = Watched(await browser.new_page(locale="en-US", timezone_id="UTC", **options))
    await watched.page.clock.install(time=clock.now - behind_s)
    await watched.page.goto(server.url + "/")
    return watched


async def credit_boards(
    server: ServerHandle, user: str, scores: dict[str, int], username: str | None = None
) -> None:
    """One service update crediting several boards at once."""
    body: dict[str, Any] = {"userId": user, "actionId": uuid.uuid4().hex, "scores": scores}
    if username is not None:
        body["username"] = username
    status, answer = await server.post("/scores/update", body, server.service_token)
    assert status == 200, answer


async def end_season(server: ServerHandle, clock: FakeClock, board: str, season: int) -> None:
    """An admin ends `board`'s season `season` now."""
    admin = token("ops", role=Role.ADMIN, now=clock.now)
    status, answer = await server.post(f"/api/boards/{board}/reset", {"season": season}, admin)
    assert (status, answer) == (200, {"board": board, "endedSeason": season, "season": season + 1})


def subscribers(server: ServerHandle) -> dict[str, int]:
    """Open streams per board."""
    return {board: len(server.hubs.get(board).broadcaster) for board in ("global", "laps", "daily")}


async def test_tabs_list_the_boards_default_first(
    browser: Browser, start: StartServer, sqlite_url: str, boards_file: Path, noon: FakeClock
) -> None:
    server = await start(sqlite_url, catalog_file=boards_file, clock=noon)
    await credit_boards(server, "ann", {"global": 5}, username="Ann")
    watched = await open_boards_page(browser, server, noon)
    page = watched.page
    tabs = page.get_by_role("tablist", name="Boards").get_by_role("tab")
    await expect(tabs).to_have_text(["All time", "Fastest lap", "Today"])
    await expect(tabs.nth(0)).to_have_attribute("aria-selected", "true")
    await expect(tabs.nth(1)).to_have_attribute("aria-selected", "false")
    await expect(tabs.nth(2)).to_have_attribute("aria-selected", "false")
    # Only the selected tab is a tab stop; the panel is named by it.
    await expect(tabs.nth(0)).to_have_attribute("tabindex", "0")
    await expect(tabs.nth(1)).to_have_attribute("tabindex", "-1")
    panel = page.get_by_role("tabpanel")
    await expect(panel).to_have_accessible_name("All time")
    await expect(panel.get_by_role("columnheader")).to_have_text(["#", "Player", "Score"])
    await expect(page.locator("#status")).to_have_text("live")
    await expect(panel.get_by_role("row")).to_have_count(2)  # the header and Ann
    await expect(page.locator("#rows tr").nth(0)).to_contain_text("Ann")
    await expect(page.locator("#season")).to_have_text("Season 1 · never resets")
    await expect(page).to_have_title("All time · Scoreboard")
    assert [urlparse(r.url).path for r in watched.streams] == ["/api/boards/global/stream"]
    assert watched.script_errors == watched.console_errors == []


async def test_switching_tabs_switches_board_and_stream(
    browser: Browser, start: StartServer, sqlite_url: str, boards_file: Path, noon: FakeClock
) -> None:
    server = await start(sqlite_url, catalog_file=boards_file, clock=noon)
    await credit_boards(server, "ann", {"global": 5, "laps": 81234}, username="Ann")
    watched = await open_boards_page(browser, server, noon)
    page = watched.page
    rows = page.locator("#rows tr")
    season = page.locator("#season")
    await expect(page.locator("#status")).to_have_text("live")
    await expect(rows.nth(0).locator(".score")).to_have_text("5")

    laps = page.get_by_role("tab", name="Fastest lap")
    await laps.click()
    await expect(laps).to_have_attribute("aria-selected", "true")
    await expect(page.get_by_role("tab", name="All time")).to_have_attribute("aria-selected", "false")
    await expect(page.get_by_role("tabpanel")).to_have_accessible_name("Fastest lap")
    await expect(rows).to_have_count(1)
    await expect(rows.nth(0).locator(".score")).to_have_text("81,234")
    await expect(page.locator("#caption")).to_contain_text("lower is better")
    await expect(season).to_have_text("Season 1 · never resets")
    # Only the shown board has a stream open.
    assert await eventually(lambda: subscribers(server) == {"global": 0, "laps": 1, "daily": 0}, 5)

    # Live on the lap board: a faster lap goes above, lower is better.
    await credit_boards(server, "bob", {"laps": 79000, "global": 1}, username="Bob")
    await expect(rows).to_have_count(2)
    await expect(rows.nth(0)).to_contain_text("Bob")
    await expect(rows.nth(0).locator(".score")).to_have_text("79,000")
    await expect(rows.nth(0)).to_have_class("changed")
    await expect(rows.nth(1)).to_contain_text("Ann")
    await credit_boards(server, "ann", {"laps": 78500})
    await expect(rows.nth(0)).to_contain_text("Ann")
    await expect(rows.nth(0).locator(".score")).to_have_text("78,500")
    await expect(rows.nth(1)).to_contain_text("Bob")

    # The arrow keys move along the tabs and select them.
    await laps.press("ArrowRight")
    today = page.get_by_role("tab", name="Today")
    await expect(today).to_be_focused()
    await expect(today).to_have_attribute("aria-selected", "true")
    await expect(page.locator("#empty")).to_be_visible()
    await expect(rows).to_have_count(0)
    await expect(season).to_have_text(re.compile(rf"^Season 1 · {COUNTDOWN}$"))
    await today.press("End")
    await expect(today).to_have_attribute("aria-selected", "true")
    await today.press("ArrowRight")  # wraps around
    await expect(page.get_by_role("tab", name="All time")).to_be_focused()

    # Back on the default board: what changed while it was hidden, then live again.
    await expect(rows).to_have_count(2)
    await expect(rows.nth(0)).to_contain_text("Ann")
    await expect(rows.nth(1)).to_contain_text("Bob")
    await expect(rows.nth(1).locator(".score")).to_have_text("1")
    await credit_boards(server, "bob", {"global": 10})
    await expect(rows.nth(0)).to_contain_text("Bob")
    await expect(rows.nth(0).locator(".score")).to_have_text("11")
    assert await eventually(lambda: subscribers(server) == {"global": 1, "laps": 0, "daily": 0}, 5)
    assert [urlparse(r.url).path for r in watched.streams] == [
        "/api/boards/global/stream",
        "/api/boards/laps/stream",
        "/api/boards/daily/stream",
        "/api/boards/global/stream",
    ]
    assert watched.script_errors == watched.console_errors == []


async def test_season_end_shows_the_new_empty_season(
    browser: Browser, start: StartServer, sqlite_url: str, boards_file: Path, noon: FakeClock
) -> None:
    server = await start(sqlite_url, catalog_file=boards_file, clock=noon)
    await credit_boards(server, "ann", {"daily": 4, "global": 4}, username="Ann")
    watched = await open_boards_page(browser, server, noon)
    page = watched.page
    rows = page.locator("#rows tr")
    season = page.locator("#season")
    await page.get_by_role("tab", name="Today").click()
    await expect(rows).to_have_count(1)
    await expect(season).to_have_text(re.compile(rf"^Season 1 · {COUNTDOWN}$"))
    assert watched.paths("/api/boards") == 1

    await end_season(server, noon, "daily", 1)
    # The new number, an empty board, and the season's end read again from the list.
    await expect(season).to_have_text(re.compile(rf"^Season 2 · {COUNTDOWN}$"))
    await expect(rows).to_have_count(0)
    await expect(page.locator("#empty")).to_be_visible()
    assert watched.paths("/api/boards") == 2
    # The new season goes on live.
    await credit_boards(server, "bob", {"daily": 2}, username="Bob")
    await expect(rows).to_have_count(1)
    await expect(rows.nth(0)).to_contain_text("Bob")
    await expect(rows.nth(0).locator(".score")).to_have_text("2")

    # A season that ended while its board was hidden shows when its tab is chosen.
    await end_season(server, noon, "global", 1)
    await page.get_by_role("tab", name="All time").click()
    await expect(season).to_have_text("Season 2 · never resets")
    await expect(page.locator("#empty")).to_be_visible()
    await expect(rows).to_have_count(0)
    await expect(page.locator("#status")).to_have_text("live")
    assert watched.script_errors == watched.console_errors == []


async def test_countdown_to_the_season_end(
    browser: Browser, start: StartServer, sqlite_url: str, boards_file: Path, noon: FakeClock
) -> None:
    server = await start(sqlite_url, catalog_file=boards_file, clock=noon)
    _, listing = await server.get("/api/boards")
    assert {b["id"]: b["season"]["endsAt"] for b in listing["boards"]} == {
        "laps": None,
        "global": None,
        "daily": MIDNIGHT,
    }
    # The page's clock starts two days early, so it can be moved forward by hand.
    watched = await open_boards_page(browser, server, noon, behind_s=2 * 86400)
    page = watched.page
    season = page.locator("#season")
    await expect(season).to_have_text("Season 1 · never resets")
    await page.get_by_role("tab", name="Fastest lap").click()
    await expect(season).to_have_text("Season 1 · never resets")
    await page.get_by_role("tab", name="Today").click()
    await expect(season).to_have_text(re.compile(rf"^Season 1 · {COUNTDOWN}$"))
    await expect(page.locator("#season time")).to_have_attribute("datetime", "2026-06-02T00:00:00.000Z")

    # The page's clock, stopped and moved by hand: the countdown follows it every second.
    await page.clock.pause_at(MIDNIGHT - (86400 + 4 * 3600 + 5 * 60 + 6))
    await expect(season).to_have_text("Season 1 · ends in 1d 04:05:06")
    await page.clock.run_for(1100)
    await expect(season).to_have_text("Season 1 · ends in 1d 04:05:05")
    await page.clock.run_for(1000)
    await expect(season).to_have_text("Season 1 · ends in 1d 04:05:04")
    await page.clock.pause_at(MIDNIGHT - 3)
    await expect(season).to_have_text("Season 1 · ends in 00:00:03")
    await page.clock.run_for(1100)
    await expect(season).to_have_text("Season 1 · ends in 00:00:02")
    await page.clock.run_for(2000)
    await expect(season).to_have_text("Season 1 · ending now")
    assert watched.script_errors == watched.console_errors == []


async def test_names_are_text_and_the_page_fits_a_phone(
    browser: Browser, start: StartServer, sqlite_url: str, boards_file: Path, noon: FakeClock
) -> None:
    server = await start(sqlite_url, catalog_file=boards_file, clock=noon)
    html = '<img src="/static/x.png" onerror="document.title=1">'
    long = "Maximilian-Alexander-Konstantin-von-Hohenzollern-Sigmaringen"
    await credit_boards(server, "eve", {"global": 9}, username=html)
    await credit_boards(server, "max", {"global": 8}, username=long)
    watched = await open_boards_page(browser, server, noon, viewport={"width": 360, "height": 740})
    page = watched.page
    rows = page.locator("#rows tr")
    await expect(rows).to_have_count(2)
    await expect(rows.nth(0).locator(".name")).to_have_text(html)
    await expect(rows.nth(1).locator(".name")).to_have_text(long)
    assert await page.locator("#rows img").count() == 0
    await expect(page).to_have_title("All time · Scoreboard")
    await expect(page.get_by_role("tab", name="Today")).to_be_visible()
    # Nothing wider than the screen: the page never scrolls sideways.
    width = await page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert width[0] <= width[1] == 360, width
    assert watched.script_errors == watched.console_errors == []


# ---- a screen worth showing: find me, movement, fit, freshness, states -----

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
VIEWPORTS = [pytest.param(DESKTOP, id="desktop"), pytest.param(PHONE, id="phone")]
AROUND = 3  # the page asks for this many players on each side of the one found

# Every element that reaches past the left or right edge of the viewport.
OVERFLOW_JS = """() => {
  const width = window.innerWidth;
  const outside = [...document.querySelectorAll("body *")].filter((el) => {
    const r = el.getBoundingClientRect();
    return r.width > 0 && (r.left < -0.5 || r.right > width + 0.5);
  }).map((el) => `${el.tagName.toLowerCase()}#${el.id}.${el.className}`);
  return { scrollWidth: document.documentElement.scrollWidth, width, outside };
}"""

# Records the rows that start sliding (a CSS transform transition).
RECORD_SLIDES_JS = """() => {
  window.slid = [];
  document.getElementById("rows").addEventListener("transitionrun", (e) => {
    if (e.propertyName === "transform") window.slid.push(e.target.dataset.userId);
  });
}"""


async def slides(page: Page, expected: set[str], timeout_s: float = 5.0) -> list[str]:
    """The rows whose slide started, once `expected` all have (a loaded machine renders late).

    Polled from here in real time: the page's own timers are faked by its clock.
    """
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        slid: list[str] = await page.evaluate("window.slid")
        if expected <= set(slid) or asyncio.get_running_loop().time() > deadline:
            return slid
        await asyncio.sleep(0.05)


# Records every text the connection state shows, with the page's time.
RECORD_STATES_JS = """() => {
  const status = document.getElementById("status");
  window.states = [[performance.now(), status.textContent]];
  new MutationObserver(() => window.states.push([performance.now(), status.textContent]))
    .observe(status, { childList: true, characterData: true, subtree: true });
}"""


def not_http_errors(watched: Watched) -> list[str]:
    """Console errors other than the browser's note of an HTTP error answer or a cut stream."""
    expected = ("the server responded with a status of", "ERR_CONNECTION_REFUSED", "ERR_INCOMPLETE_CHUNKED")
    return [e for e in watched.console_errors if not any(x in e for x in expected)]


def standings(scores: dict[str, int]) -> list[str]:
    """User ids best first (distinct scores: no tie-break needed)."""
    assert len(set(scores.values())) == len(scores)
    return sorted(scores, key=lambda user: -scores[user])


def around_window(order: list[str], user: str, count: int = AROUND) -> list[tuple[int, str]]:
    """(rank, userId) of the around-me window, as the contract defines it."""
    rank = order.index(user) + 1
    start = max(0, min(rank - 1 - count, len(order) - (2 * count + 1)))
    return [(i + 1, order[i]) for i in range(start, min(len(order), start + 2 * count + 1))]


async def shown_rows(page: Page, tbody: str) -> list[tuple[int, str]]:
    """(rank, userId) of the rows of `tbody`, as shown."""
    found = await page.locator(f"#{tbody} tr").evaluate_all(
        "(rows) => rows.map((r) => [Number(r.cells[0].textContent), r.dataset.userId])"
    )
    return [(rank, user) for rank, user in found]


async def rows_become(page: Page, tbody: str, expected: list[tuple[int, str]]) -> None:
    """Wait until `tbody` shows exactly `expected`."""
    deadline = time.monotonic() + 5
    while (got := await shown_rows(page, tbody)) != expected:
        assert time.monotonic() < deadline, (got, expected)
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("viewport", VIEWPORTS)
async def test_long_names_are_cut_and_nothing_overflows(
    browser: Browser, start: StartServer, sqlite_url: str, viewport: dict[str, int]
) -> None:
    server = await start(sqlite_url)
    long = "W" * 128  # the longest username there is, with nowhere to break
    await server.credit("long", 900, username=long)
    await server.credit("spaced", 800, username="Jean-Baptiste " * 9)
    await server.credit("ann", 5, username="Ann")
    watched = Watched(await browser.new_page(viewport=viewport))
    page = watched.page
    await page.goto(server.url + "/")
    await expect(page.locator("#status")).to_have_text("live")
    await expect(page.locator("#rows tr")).to_have_count(3)
    name = page.locator("#rows tr").nth(0).locator(".name")
    await expect(name).to_have_text(long)  # all of it is there, for screen readers and the tooltip
    await expect(name).to_have_attribute("title", f"{long} (long)")
    # ... but cut with an ellipsis where it does not fit.
    cut = await name.evaluate("(el) => [el.scrollWidth > el.clientWidth, getComputedStyle(el).textOverflow]")
    assert cut == [True, "ellipsis"], cut
    # The around-me table of the long-named player fits as well.
    await page.get_by_label("Find me").fill("long")
    await page.get_by_role("button", name="Find", exact=True).click()
    await expect(page.locator("#around-rows tr.me .name")).to_have_text(long)
    # The board is a real table, named by its caption.
    await expect(page.get_by_role("table", name="Top 10").get_by_role("row")).to_have_count(4)
    layout = await page.evaluate(OVERFLOW_JS)
    assert layout["scrollWidth"] <= layout["width"] == viewport["width"], layout
    assert layout["outside"] == [], layout
    assert watched.script_errors == watched.console_errors == []


@pytest.mark.parametrize("viewport", VIEWPORTS)
async def test_find_me_shows_rank_and_neighbours(
    browser: Browser,
    start: StartServer,
    sqlite_url: str,
    boards_file: Path,
    noon: FakeClock,
    *,
    viewport: dict[str, int],
) -> None:
    server = await start(sqlite_url, catalog_file=boards_file, clock=noon)
    # 30 players with distinct scores, not in id order; the one looked for (rank 15)
    # has an id that must be encoded in a URL.
    plain = {f"p{i:02d}": (i * 17) % 30 * 10 + 5 for i in range(30)}
    me = "zoë #15?&x=1 %"
    scores = {me if user == standings(plain)[14] else user: score for user, score in plain.items()}
    names = {user: "Zoë" if user == me else f"Player {user}" for user in scores}
    await asyncio.gather(
        *(credit_boards(server, user, {"global": scores[user]}, username=names[user]) for user in scores)
    )
    order = standings(scores)
    assert order.index(me) == 14
    watched = await open_boards_page(browser, server, noon, viewport=viewport)
    page = watched.page
    await expect(page.locator("#status")).to_have_text("live")
    await page.get_by_label("Find me").fill(me)
    await page.get_by_role("button", name="Find", exact=True).click()
    summary = page.locator("#me-summary")
    await expect(summary).to_have_text(f"{names[me]} is #15 of 30 on All time")
    await rows_become(page, "around-rows", around_window(order, me))
    mine = page.locator("#around-rows tr.me")
    await expect(mine).to_have_count(1)
    await expect(mine).to_have_attribute("aria-current", "true")
    await expect(mine).to_have_attribute("data-user-id", me)
    await expect(page.get_by_role("table", name=re.compile("is #15 of 30"))).to_be_visible()
    arounds = [r for r in watched.requests if r.url.endswith(f"/around?count={AROUND}")]
    assert urlparse(arounds[0].url).path.startswith("/api/boards/global/users/")

    # A player from below passes them into the top 10: the board changes, the view follows.
    climber = order[19]
    await credit_boards(server, climber, {"global": 500})
    scores[climber] += 500
    order = standings(scores)
    assert order.index(me) == 15
    await expect(summary).to_have_text(f"{names[me]} is #16 of 30 on All time")
    await rows_become(page, "around-rows", around_window(order, me))

    # A burst of changes is read at a bounded rate, not once per change.
    def around_reads() -> int:
        return sum(urlparse(r.url).path.endswith("/around") for r in watched.requests)

    before, began = around_reads(), time.monotonic()
    top = order[:4]
    for i in range(12):
        await credit_boards(server, top[i % 4], {"global": 1 + i})
        scores[top[i % 4]] += 1 + i
    await asyncio.sleep(1.2)
    reads = around_reads() - before
    assert 1 <= reads <= math.ceil(time.monotonic() - began) + 1 < 12, reads
    await rows_become(page, "around-rows", around_window(standings(scores), me))

    # Another tab: not ranked there, said clearly; back again, found again.
    await page.get_by_role("tab", name="Fastest lap").click()
    await expect(summary).to_have_text(f"“{me}” is not ranked on Fastest lap.")
    await expect(page.locator("#around")).to_be_hidden()
    await page.get_by_role("tab", name="All time").click()
    await expect(summary).to_have_text(f"{names[me]} is #16 of 30 on All time")
    # The found player's row is highlighted in the top K too.
    await page.get_by_label("Find me").fill(order[2])
    await page.get_by_role("button", name="Find", exact=True).click()
    await expect(page.locator("#rows tr.me")).to_have_attribute("data-user-id", order[2])
    await expect(summary).to_have_text(f"{names[order[2]]} is #3 of 30 on All time")
    # Nobody by that id.
    await page.get_by_label("Find me").fill("nobody")
    await page.get_by_label("Find me").press("Enter")
    await expect(summary).to_have_text("“nobody” is not ranked on All time.")
    await expect(page.locator("#rows tr.me")).to_have_count(0)
    await page.get_by_role("button", name="Clear").click()
    await expect(page.locator("#me")).to_be_hidden()
    assert watched.script_errors == []
    assert not_http_errors(watched) == []


@pytest.mark.parametrize("viewport", VIEWPORTS)
async def test_the_mover_is_highlighted_with_its_gain(
    browser: Browser, start: StartServer, sqlite_url: str, viewport: dict[str, int]
) -> None:
    server = await start(sqlite_url)
    for user, score in (("amy", 300), ("ben", 200), ("cat", 100)):
        await server.credit(user, score, username=user.title())
    watched = Watched(await browser.new_page(viewport=viewport, locale="en-US"))
    page = watched.page
    await page.clock.install()
    await page.goto(server.url + "/")
    rows = page.locator("#rows tr")
    await expect(page.locator("#status")).to_have_text("live")
    await expect(rows).to_have_count(3)
    await expect(page.locator("#rows tr.changed")).to_have_count(0)  # nothing moved yet
    await page.evaluate(RECORD_SLIDES_JS)

    # Cat gains 250 and goes from third to first: Cat is highlighted, not the rank.
    await server.credit("cat", 250)
    cat = rows.nth(0)
    await expect(cat).to_have_attribute("data-user-id", "cat")
    await expect(cat).to_have_class("changed")
    await expect(cat.locator(".move")).to_have_class("move up")
    await expect(cat.locator(".move .arrow")).to_have_text("▲")
    await expect(cat.locator(".gain")).to_have_text("+250")
    await expect(cat.locator(".score")).to_have_text("350")
    # Those pushed down are not the mover.
    await expect(page.locator("#rows tr.changed")).to_have_count(1)
    await expect(page.locator("#rows .move")).to_have_count(1)
    await expect(rows.nth(2)).to_have_attribute("data-user-id", "ben")
    # Every row that changed place slid there.
    slid = await slides(page, {"amy", "ben", "cat"})
    assert set(slid) == {"amy", "ben", "cat"}, slid

    # A gain without a change of place is still shown, on the player.
    await server.credit("amy", 20)
    amy = page.locator('#rows tr[data-user-id="amy"]')
    await expect(amy).to_have_class("changed")
    await expect(amy.locator(".gain")).to_have_text("+20")
    await expect(rows.nth(1)).to_have_attribute("data-user-id", "amy")
    # The highlight fades after a few seconds.
    await page.clock.run_for(7000)
    await expect(page.locator("#rows tr.changed")).to_have_count(0)
    await expect(page.locator("#rows .move")).to_have_count(0)
    assert watched.script_errors == watched.console_errors == []


async def test_reduced_motion_highlights_without_sliding(
    browser: Browser, start: StartServer, sqlite_url: str
) -> None:
    server = await start(sqlite_url)
    await server.credit("amy", 300, username="Amy")
    await server.credit("ben", 200, username="Ben")
    watched = Watched(await browser.new_page(reduced_motion="reduce"))
    page = watched.page
    await page.goto(server.url + "/")
    rows = page.locator("#rows tr")
    await expect(rows).to_have_count(2)
    await page.evaluate(RECORD_SLIDES_JS)
    await server.credit("ben", 150)
    await expect(rows.nth(0)).to_have_attribute("data-user-id", "ben")
    await expect(rows.nth(0)).to_have_class("changed")
    await expect(rows.nth(0).locator(".gain")).to_have_text("+150")
    await page.wait_for_timeout(600)  # longer than a slide would take
    assert await page.evaluate("window.slid") == []
    assert watched.script_errors == watched.console_errors == []


async def test_updated_ago_instead_of_sequence_numbers(
    browser: Browser, start: StartServer, sqlite_url: str, boards_file: Path, noon: FakeClock
) -> None:
    server = await start(sqlite_url, catalog_file=boards_file, clock=noon)
    await credit_boards(server, "ann", {"global": 5}, username="Ann")
    watched = await open_boards_page(browser, server, noon)
    page = watched.page
    updated = page.locator("#updated")
    await expect(page.locator("#status")).to_have_text("live")
    await expect(updated).to_have_text(re.compile(r"^updated (just now|\d s ago)$"))
    # It ticks on by itself.
    await page.clock.run_for(4000)
    await expect(updated).to_have_text(re.compile(r"^updated [4-9] s ago$"))
    await page.clock.run_for(120_000)
    await expect(updated).to_have_text("updated 2 min ago")
    # A change: just now again.
    await credit_boards(server, "bob", {"global": 9}, username="Bob")
    await expect(page.locator("#rows tr")).to_have_count(2)
    await expect(updated).to_have_text("updated just now")
    # No sequence numbers or stream positions for viewers.
    text = await page.locator("body").inner_text()
    epoch = server.hubs.get("global").broadcaster.feed.epoch
    assert not re.search(r"\bseq\b", text, re.IGNORECASE), text
    assert epoch not in text and epoch not in await page.content()
    # The connection state is announced: a live region.
    status = page.locator("#status")
    await expect(status).to_have_attribute("role", "status")
    await expect(status).to_have_attribute("aria-live", "polite")
    assert watched.script_errors == watched.console_errors == []


async def test_lost_server_goes_offline_then_live_again(
    browser: Browser, start: StartServer, sqlite_url: str
) -> None:
    server = await start(sqlite_url, sse_retry_ms=200)
    await server.credit("amy", 10, username="Amy")
    watched = await open_page(browser, server)
    page = watched.page
    status = page.locator("#status")
    await expect(status).to_have_text("live")
    await page.evaluate(RECORD_STATES_JS)

    # The server goes away: the browser's own retries get a few seconds, then
    # the page says so, with the time of its next try.
    port = urlparse(server.url).port
    await server.stop()
    await expect(status).to_have_text("reconnecting…")
    await expect(status).to_have_text(re.compile(r"^offline, retrying in \d+ s$"), timeout=8000)
    # A new server on the same port and database: the page is live again.
    server = await start(sqlite_url, port=port, sse_retry_ms=200)
    await expect(status).to_have_text("live", timeout=15_000)
    await expect(page.locator("#rows tr")).to_have_count(1)
    await server.credit("bob", 20, username="Bob")
    await expect(page.locator("#rows tr").nth(0)).to_contain_text("Bob")

    # It never said "reconnecting" for long.
    states: list[tuple[float, str]] = await page.evaluate("window.states")
    texts = [text for _, text in states]
    assert "reconnecting…" in texts and texts[-1] == "live", texts
    assert any(t.startswith("offline, retrying in") for t in texts), texts
    for (at, text), (until, _) in itertools.pairwise(states):
        if text == "reconnecting…":
            assert until - at < 6000, states
    assert watched.script_errors == []
    assert not_http_errors(watched) == []


async def test_refused_stream_backs_off_and_recovers(
    browser: Browser, start: StartServer, sqlite_url: str
) -> None:
    server = await start(sqlite_url)
    await server.credit("amy", 10, username="Amy")
    page = await browser.new_page()
    watched = Watched(page)
    refused: list[float] = []

    async def refuse(route: Any) -> None:
        refused.append(time.monotonic())
        await route.fulfill(status=503, content_type="application/json", body="{}")

    await page.route("**/stream", refuse)
    await page.goto(server.url + "/")
    status = page.locator("#status")
    # Refused: offline, and tried again later, each time after a longer wait.
    await expect(status).to_have_text(re.compile(r"^offline, retrying in \d+ s$"))
    assert await eventually(lambda: len(refused) >= 3, 6), refused
    gaps = [b - a for a, b in itertools.pairwise(refused)]
    assert 0.4 < gaps[0] < gaps[1] + 0.3, gaps  # 0.5-1 s, then 1-2 s (with jitter)
    await expect(page.locator("#rows tr")).to_have_count(0)
    # The server takes streams again: live.
    await page.unroute("**/stream")
    await expect(status).to_have_text("live", timeout=10_000)
    await expect(page.locator("#rows tr")).to_have_count(1)
    assert watched.script_errors == []
