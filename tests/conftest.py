"""Fixtures: real servers on 127.0.0.1 over real SQLite files and PostgreSQL databases.

PostgreSQL tests use SCOREBOARD_TEST_DATABASE_URL (each test gets a fresh
database created from it and dropped afterwards). When the variable is set
but the server cannot be reached, the whole run fails; when it is unset the
PostgreSQL variants are reported as skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.helpers import FakeClock, ServerHandle, start_server

PG_ENV = "SCOREBOARD_TEST_DATABASE_URL"


def _pg_admin_url() -> str | None:
    return os.environ.get(PG_ENV) or None


@pytest.fixture(scope="session")
def pg_admin_url() -> str | None:
    """The configured PostgreSQL URL, checked to be reachable once per run."""
    return _pg_admin_url()


def pytest_sessionstart(session: pytest.Session) -> None:
    """Fail the run at once if PostgreSQL is configured but unreachable."""
    url = _pg_admin_url()
    if url is None:
        return
    import asyncio

    async def check() -> None:
        con = await asyncpg.connect(url, timeout=5)
        await con.close()

    try:
        asyncio.run(check())
    except Exception as exc:
        raise pytest.UsageError(f"{PG_ENV}={url} is set but unreachable: {exc!r}") from exc


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name`."""
    base, _, query = url.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{name}" + (f"?{query}" if query else "")


async def create_database(admin_url: str) -> str:
    """A fresh, empty PostgreSQL database; returns its URL."""
    name = f"sb_test_{uuid.uuid4().hex[:12]}"
    con = await asyncpg.connect(admin_url)
    try:
        await con.execute(f'CREATE DATABASE "{name}"')
    finally:
        await con.close()
    return with_database(admin_url, name)


async def drop_database(admin_url: str, url: str) -> None:
    """Drop a database made by `create_database`."""
    name = url.partition("?")[0].rpartition("/")[2]
    con = await asyncpg.connect(admin_url)
    try:
        await con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await con.close()


@pytest.fixture
async def pg_url(pg_admin_url: str | None) -> AsyncIterator[str]:
    """A fresh PostgreSQL database (PostgreSQL-only tests)."""
    if pg_admin_url is None:
        pytest.skip(f"{PG_ENV} is not set")
    url = await create_database(pg_admin_url)
    try:
        yield url
    finally:
        await drop_database(pg_admin_url, url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite database file."""
    return f"sqlite:///{tmp_path / 'scoreboard.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """A fresh database of each kind."""
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


@pytest.fixture
def clock() -> FakeClock:
    """A clock the test moves by hand, starting at the real time."""
    return FakeClock()


StartServer = Callable[..., Awaitable[ServerHandle]]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[StartServer]:
    """Start servers in this event loop; all are stopped at the end of the test."""
    handles: list[ServerHandle] = []

    async def _start(database_url: str, **overrides: Any) -> ServerHandle:
        handle = await start_server(tmp_path, database_url, **overrides)
        handles.append(handle)
        return handle

    yield _start
    for handle in reversed(handles):
        await handle.stop()


@pytest.fixture
async def server(start: StartServer, database_url: str) -> ServerHandle:
    """A running server on a fresh database of each kind."""
    return await start(database_url)


@pytest.fixture
def catalog_file(tmp_path: Path) -> Path:
    """A catalog with a timed quest and a rate-limited action."""
    path = tmp_path / "actions.toml"
    path.write_text(
        """
[actions.default]
points = 1

[actions.quest_complete]
points = 50
min_duration_s = 30
ttl_s = 600

[actions.coin]
points = 2
max_per_minute = 3
"""
    )
    return path
