"""Embedded SQLite store (the zero-setup default).

WAL mode, one connection per thread: a writer thread that runs the batch
transactions and a reader thread for rank and top-K queries, so reads never
wait behind a commit's fsync. `synchronous=FULL` (the default) makes a
committed batch survive power loss; `NORMAL` survives a process crash only.

URL: `sqlite:///relative/path.db` or `sqlite:////absolute/path.db`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from .board import Entry
from .store import (
    BatchResult,
    DataRefused,
    LedgerRow,
    StorageError,
    Update,
    UserStanding,
    finish_batch,
    plan_batch,
)

T = TypeVar("T")

# One entry per schema version; PRAGMA user_version records how many ran.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE users (
        id          TEXT PRIMARY KEY,
        username    TEXT,
        score       INTEGER NOT NULL,
        reached_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX users_by_rank ON users (score DESC, reached_at, id);
    CREATE TABLE scores_log (
        id          INTEGER PRIMARY KEY,
        action_id   TEXT NOT NULL UNIQUE,
        user_id     TEXT NOT NULL,
        delta       INTEGER NOT NULL CHECK (delta > 0),
        score_after INTEGER NOT NULL,
        source      TEXT NOT NULL CHECK (source IN ('player', 'service')),
        created_at  INTEGER NOT NULL
    );
    CREATE INDEX scores_log_by_user ON scores_log (user_id, id);
    """,
]

_UPSERT_USER = """
INSERT INTO users (id, username, score, reached_at, updated_at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    score = users.score + excluded.score,
    username = COALESCE(excluded.username, users.username),
    reached_at = excluded.reached_at,
    updated_at = excluded.updated_at
RETURNING id, COALESCE(username, id), score, reached_at
"""
_INSERT_LEDGER = """
INSERT INTO scores_log (action_id, user_id, delta, score_after, source, created_at)
VALUES (?, ?, ?, ?, ?, ?)
"""
_TOP = """
SELECT id, COALESCE(username, id), score, reached_at FROM users
ORDER BY score DESC, reached_at, id LIMIT ?
"""
_USER = "SELECT id, COALESCE(username, id), score, reached_at FROM users WHERE id = ?"
_RANK = """
SELECT (SELECT count(*) FROM users WHERE score > ?1)
     + (SELECT count(*) FROM users WHERE score = ?1 AND (reached_at < ?2 OR (reached_at = ?2 AND id < ?3)))
     + 1
"""
_CHUNK = 500


def sqlite_path(url: str) -> Path:
    """The file path of a `sqlite:///...` URL."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ValueError("SQLite URLs look like sqlite:///relative.db or sqlite:////absolute.db")
    path = url[len(prefix) :].split("?", 1)[0]
    if path == ":memory:":
        raise ValueError("an in-memory SQLite database cannot be shared by the writer and readers")
    return Path(path)


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@contextlib.contextmanager
def _write_transaction(con: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back if anything in between fails."""
    con.execute("BEGIN IMMEDIATE")
    try:
        yield
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
        raise


def _entry(row: tuple[str, str, int, int]) -> Entry:
    return Entry(user_id=row[0], username=row[1], score=row[2], reached_at=row[3])


class SqliteStore:
    """The Store interface on one SQLite file."""

    def __init__(self, path: Path, *, timeout_s: float, synchronous: str) -> None:
        self._path = path
        self._timeout_s = timeout_s
        self._synchronous = synchronous
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="sqlite-reader")
        self._wcon: sqlite3.Connection | None = None
        self._rcon: sqlite3.Connection | None = None
        self._closed = False

    @classmethod
    async def open(cls, url: str, *, timeout_s: float = 5.0, synchronous: str = "FULL") -> SqliteStore:
        """Open the file (creating it, mode 0600, in an existing directory), apply migrations."""
        if synchronous.upper() not in {"FULL", "NORMAL", "EXTRA"}:
            raise ValueError("sqlite synchronous must be FULL, NORMAL or EXTRA")
        store = cls(sqlite_path(url), timeout_s=timeout_s, synchronous=synchronous.upper())
        try:
            await store._on(store._writer, store._open_writer)
            await store._on(store._reader, store._open_reader)
        except BaseException:
            await store.close()
            raise
        return store

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self._path, timeout=self._timeout_s, isolation_level=None)
        con.execute(f"PRAGMA busy_timeout = {int(self._timeout_s * 1000)}")
        return con

    def _open_writer(self) -> None:
        if not self._path.parent.is_dir():
            # Creating it would silently serve an empty board from a typo'd path.
            raise StorageError(
                f"sqlite: the directory {self._path.parent} does not exist; "
                "create it or correct SCOREBOARD_DATABASE_URL"
            )
        with contextlib.suppress(FileExistsError):
            # A new database is private to the server's user (0600); SQLite
            # gives its -wal and -shm files the same mode.
            os.close(os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        con = self._connect()
        con.execute("PRAGMA journal_mode = WAL")
        con.execute(f"PRAGMA synchronous = {self._synchronous}")
        self._wcon = con
        self._migrate(con)

    def _open_reader(self) -> None:
        self._rcon = self._connect()

    @staticmethod
    def _migrate(con: sqlite3.Connection) -> None:
        with _write_transaction(con):
            version: int = con.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    con.execute(statement)
                con.execute(f"PRAGMA user_version = {number}")

    async def _on(self, executor: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        if self._closed:
            raise StorageError("the store is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn)
        except sqlite3.Error as exc:
            raise StorageError(f"sqlite: {exc}") from exc
        except RuntimeError as exc:  # executor shut down under us
            raise StorageError(str(exc)) from exc

    def _require(self, con: sqlite3.Connection | None) -> sqlite3.Connection:
        if con is None:
            raise StorageError("the store is not open")
        return con

    async def apply_batch(self, batch: Sequence[Update], stamps: Sequence[int], now_us: int) -> BatchResult:
        """Credit a batch in one transaction; DataRefused if SQLite refused its data."""
        return await self._on(self._writer, lambda: self._apply_checked(batch, stamps, now_us))

    def _apply_checked(self, batch: Sequence[Update], stamps: Sequence[int], now_us: int) -> BatchResult:
        # Data errors are told apart from outages (OperationalError: disk
        # full, I/O error, locked), which _on turns into StorageError.
        try:
            return self._apply(batch, stamps, now_us)
        except OverflowError as exc:  # a Python int beyond SQLite's 64-bit INTEGER
            raise DataRefused(f"sqlite: {exc}", overflow=True) from exc
        except (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.ProgrammingError) as exc:
            raise DataRefused(f"sqlite: {exc}") from exc
        except UnicodeEncodeError as exc:  # lone surrogates cannot be encoded as UTF-8
            raise DataRefused(f"sqlite: {exc.reason}") from exc

    def _apply(self, batch: Sequence[Update], stamps: Sequence[int], now_us: int) -> BatchResult:
        con = self._require(self._wcon)
        with _write_transaction(con):
            existing: dict[str, LedgerRow] = {}
            for chunk in _chunks([u.action_id for u in batch], _CHUNK):
                marks = ",".join("?" * len(chunk))
                query = (
                    "SELECT action_id, user_id, delta, score_after FROM scores_log "  # noqa: S608
                    f"WHERE action_id IN ({marks})"
                )
                for row in con.execute(query, chunk):
                    existing[row[0]] = LedgerRow(row[0], row[1], row[2], row[3])
            plan = plan_batch(batch, stamps, existing)
            standings: dict[str, Entry] = {}
            for d in plan.users:
                row = con.execute(
                    _UPSERT_USER, (d.user_id, d.username, d.delta, d.reached_at, now_us)
                ).fetchone()
                if not isinstance(row[2], int):
                    # SQLite turns an INTEGER sum past 2^63-1 into a REAL
                    # instead of failing; the transaction is rolled back.
                    raise DataRefused(f"the score of {d.user_id!r} would exceed 2^63-1", overflow=True)
                standings[row[0]] = _entry(row)
            result = finish_batch(plan, standings, now_us)
            con.executemany(
                _INSERT_LEDGER,
                [
                    (r.action_id, r.user_id, r.delta, r.score_after, r.source, r.created_at)
                    for r in result.ledger
                ],
            )
        return result

    async def top(self, k: int) -> list[Entry]:
        """The best `k` users."""
        con = self._require(self._rcon)
        return await self._on(self._reader, lambda: [_entry(r) for r in con.execute(_TOP, (k,))])

    async def standing(self, user_id: str) -> UserStanding | None:
        """A user's entry and rank."""
        con = self._require(self._rcon)

        def read() -> UserStanding | None:
            con.execute("BEGIN")
            try:
                row = con.execute(_USER, (user_id,)).fetchone()
                if row is None:
                    return None
                rank: int = con.execute(_RANK, (row[2], row[3], row[0])).fetchone()[0]
                return UserStanding(_entry(row), rank)
            finally:
                con.execute("COMMIT")

        return await self._on(self._reader, read)

    async def ping(self) -> None:
        """Check that a transaction can be written, as a batch must be.

        A read alone succeeds on a full (or read-only) disk; rewriting the
        header's user_version appends a WAL frame just as a batch commit does.
        """
        con = self._require(self._wcon)

        def probe() -> None:
            with _write_transaction(con):
                version = int(con.execute("PRAGMA user_version").fetchone()[0])
                con.execute(f"PRAGMA user_version = {version}")

        await self._on(self._writer, probe)

    async def close(self) -> None:
        """Close both connections and their threads; idempotent."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            for executor, con in ((self._writer, self._wcon), (self._reader, self._rcon)):
                if con is not None:
                    # A transaction still running in the thread is waited
                    # for, but no longer than one store timeout.
                    await asyncio.wait_for(loop.run_in_executor(executor, con.close), self._timeout_s)
        finally:
            for executor in (self._writer, self._reader):
                executor.shutdown(wait=False)
            self._wcon = self._rcon = None
