"""The live page in a real headless Chromium: a credit over HTTP shows up on the page.

Chromium comes from the system (`make test` installs Debian's `chromium`);
Playwright drives it through `executable_path`. If the browser is missing the
test fails: it never skips.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page, Request, async_playwright, expect

from scoreboard.app import SSE
from tests.conftest import StartServer
from tests.helpers import ServerHandle

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
    """A page with its script errors and console errors collected."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.script_errors: list[str] = []
        self.console_errors: list[str] = []
        page.on("pageerror", lambda exc: self.script_errors.append(str(exc)))
        page.on("console", lambda msg: self.console_errors.append(msg.text) if msg.type == "error" else None)


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
    streams: list[Request] = []
    page.on("request", lambda r: streams.append(r) if r.url.endswith("/scores/stream") else None)
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
    headers = await streams[-1].all_headers()
    assert headers.get("last-event-id") == f"{epoch}:1", headers
    assert watched.script_errors == []
    # The only console error is the cut stream itself.
    assert all("ERR_INCOMPLETE_CHUNKED_ENCODING" in e for e in watched.console_errors), watched.console_errors
