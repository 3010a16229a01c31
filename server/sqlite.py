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
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from . import queries
from .board import Entry, sort_key
from .catalog import BoardSpec
from .scripted import ScriptedStore
from .store import (
    Audit,
    BatchPlan,
    BatchResult,
    BoardState,
    CreditRow,
    DataRefused,
    Record,
    ScanChunk,
    SeasonChange,
    StorageError,
    StoredAction,
    Update,
    UserStanding,
    apply_plan,
    committed_values,
    plan_batch,
)

T = TypeVar("T")

# One entry per schema version; PRAGMA user_version records how many ran.
# `{default}` is the board that receives a version-1 database's scores.
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
    # Several boards and seasons: users become the default board's entries
    # in season 1, and the ledger splits into actions and per-board credits.
    """
    CREATE TABLE boards (
        id          TEXT PRIMARY KEY,
        season      INTEGER NOT NULL,
        version     INTEGER NOT NULL,
        started_at  INTEGER NOT NULL,
        ends_at     INTEGER,
        reset       TEXT NOT NULL DEFAULT ''
    ) WITHOUT ROWID;
    CREATE TABLE seasons (
        board       TEXT NOT NULL,
        season      INTEGER NOT NULL,
        started_at  INTEGER NOT NULL,
        ended_at    INTEGER,
        PRIMARY KEY (board, season)
    ) WITHOUT ROWID;
    CREATE TABLE entries (
        board       TEXT NOT NULL,
        season      INTEGER NOT NULL,
        user_id     TEXT NOT NULL,
        username    TEXT,
        score       INTEGER NOT NULL,
        sort_key    INTEGER NOT NULL,
        reached_at  INTEGER NOT NULL,
        metadata    TEXT,
        updated_at  INTEGER NOT NULL,
        PRIMARY KEY (board, season, user_id)
    ) WITHOUT ROWID;
    CREATE INDEX entries_by_rank ON entries (board, season, sort_key, reached_at, user_id);
    CREATE TABLE actions (
        action_id   TEXT PRIMARY KEY,
        user_id     TEXT NOT NULL,
        source      TEXT NOT NULL CHECK (source IN ('player', 'service')),
        created_at  INTEGER NOT NULL
    );
    CREATE TABLE credits (
        action_id   TEXT NOT NULL,
        board       TEXT NOT NULL,
        season      INTEGER NOT NULL,
        user_id     TEXT NOT NULL,
        value       INTEGER NOT NULL,
        score_after INTEGER NOT NULL,
        improved    INTEGER NOT NULL,
        PRIMARY KEY (action_id, board)
    ) WITHOUT ROWID;
    CREATE INDEX credits_by_entry ON credits (board, season, user_id);
    INSERT INTO entries (board, season, user_id, username, score, sort_key, reached_at, metadata, updated_at)
        SELECT :default, 1, id, username, score, ~score, reached_at, NULL, updated_at FROM users;
    INSERT INTO actions (action_id, user_id, source, created_at)
        SELECT action_id, user_id, source, created_at FROM scores_log ORDER BY id;
    INSERT INTO credits (action_id, board, season, user_id, value, score_after, improved)
        SELECT action_id, :default, 1, user_id, delta, score_after, 1 FROM scores_log;
    DROP TABLE scores_log;
    DROP TABLE users
    """,
    # Moderation: what each action set (to rebuild a record without one),
    # voided credits (removed entries, reverted actions), blocks, the audit.
    """
    ALTER TABLE actions ADD COLUMN stamp INTEGER;
    ALTER TABLE actions ADD COLUMN username TEXT;
    ALTER TABLE actions ADD COLUMN metadata TEXT;
    ALTER TABLE actions ADD COLUMN reverted_at INTEGER;
    ALTER TABLE credits ADD COLUMN voided INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE blocks (
        user_id     TEXT PRIMARY KEY,
        blocked_at  INTEGER NOT NULL,
        actor       TEXT NOT NULL,
        reason      TEXT
    ) WITHOUT ROWID;
    CREATE TABLE audit (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        at          INTEGER NOT NULL,
        actor       TEXT NOT NULL,
        operation   TEXT NOT NULL,
        target      TEXT NOT NULL,
        reason      TEXT
    )
    """,
    # The board version each credit became visible at (an update's `visibleAt`).
    """
    ALTER TABLE credits ADD COLUMN version INTEGER NOT NULL DEFAULT 0
    """,
]

_UPSERT_ENTRY = """
INSERT INTO entries (board, season, user_id, username, score, sort_key, reached_at, metadata, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (board, season, user_id) DO UPDATE SET
    username = excluded.username,
    score = excluded.score,
    sort_key = excluded.sort_key,
    reached_at = excluded.reached_at,
    metadata = excluded.metadata,
    updated_at = excluded.updated_at
"""
_INSERT_ACTION = """
INSERT INTO actions (action_id, user_id, source, created_at, stamp, username, metadata)
VALUES (?, ?, ?, ?, ?, ?, ?)
"""
_INSERT_CREDIT = """
INSERT INTO credits (action_id, board, season, user_id, value, score_after, improved, version)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""
_TOP = """
SELECT user_id, username, score, reached_at, metadata FROM entries WHERE board = ? AND season = ?
ORDER BY sort_key, reached_at, user_id LIMIT ?
"""
_USER = """
SELECT user_id, username, score, reached_at, metadata, sort_key FROM entries
WHERE board = ? AND season = ? AND user_id = ?
"""
_RANK = """
SELECT (SELECT count(*) FROM entries WHERE board = ?1 AND season = ?2 AND sort_key < ?3)
     + (SELECT count(*) FROM entries WHERE board = ?1 AND season = ?2 AND sort_key = ?3
        AND (reached_at < ?4 OR (reached_at = ?4 AND user_id < ?5)))
     + 1
"""
_BOARD = "SELECT id, season, version, started_at, ends_at, reset FROM boards WHERE id = ?"
_SCAN = """
SELECT user_id, username, score, reached_at, metadata FROM entries WHERE board = ? AND season = ?
ORDER BY sort_key, reached_at, user_id
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


def _record(row: tuple[str, str | None, int, int, str | None]) -> Record:
    return Record(row[0], row[1], row[2], row[3], None if row[4] is None else row[4].encode())


def _metadata(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def _state(row: tuple[str, int, int, int, int | None, str]) -> BoardState:
    return BoardState(row[0], row[1], row[2], row[3], row[4], row[5])


class SqliteStore(ScriptedStore):
    """The Store interface on one SQLite file."""

    def __init__(
        self,
        path: Path,
        *,
        boards: Mapping[str, BoardSpec],
        default_board: str,
        timeout_s: float,
        synchronous: str,
    ) -> None:
        self._path = path
        self._specs = dict(boards)
        self._default_board = default_board
        self._timeout_s = timeout_s
        self._synchronous = synchronous
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="sqlite-reader")
        self._wcon: sqlite3.Connection | None = None
        self._rcon: sqlite3.Connection | None = None
        self._closed = False
        self._blocked: set[str] = set()

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        boards: Mapping[str, BoardSpec] | None = None,
        default_board: str = "global",
        timeout_s: float = 5.0,
        synchronous: str = "FULL",
    ) -> SqliteStore:
        """Open the file (creating it, mode 0600, in an existing directory), apply migrations."""
        if synchronous.upper() not in {"FULL", "NORMAL", "EXTRA"}:
            raise ValueError("sqlite synchronous must be FULL, NORMAL or EXTRA")
        store = cls(
            sqlite_path(url),
            boards=boards or {},
            default_board=default_board,
            timeout_s=timeout_s,
            synchronous=synchronous.upper(),
        )
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
        self._blocked = {row[0] for row in con.execute("SELECT user_id FROM blocks")}

    def _open_reader(self) -> None:
        self._rcon = self._connect()

    def _migrate(self, con: sqlite3.Connection) -> None:
        with _write_transaction(con):
            version: int = con.execute("PRAGMA user_version").fetchone()[0]
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    params = {"default": self._default_board} if ":default" in statement else {}
                    con.execute(statement, params)
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

    def _existing(self, con: sqlite3.Connection, action_ids: list[str]) -> dict[str, StoredAction]:
        users: dict[str, str] = {}
        credits: dict[str, dict[str, CreditRow]] = {}
        for chunk in _chunks(action_ids, _CHUNK):
            marks = ",".join("?" * len(chunk))
            for action_id, user_id in con.execute(
                f"SELECT action_id, user_id FROM actions WHERE action_id IN ({marks})",  # noqa: S608
                chunk,
            ):
                users[action_id] = user_id
        found = list(users)
        for chunk in _chunks(found, _CHUNK):
            marks = ",".join("?" * len(chunk))
            for row in con.execute(
                "SELECT action_id, board, season, user_id, value, score_after, improved, version "  # noqa: S608
                f"FROM credits WHERE action_id IN ({marks})",
                chunk,
            ):
                credits.setdefault(row[0], {})[row[1]] = CreditRow(
                    row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]), row[7]
                )
        return {a: StoredAction(u, credits.get(a, {})) for a, u in users.items()}

    def _apply(self, batch: Sequence[Update], stamps: Sequence[int], now_us: int) -> BatchResult:
        con = self._require(self._wcon)
        with _write_transaction(con):
            plan: BatchPlan = plan_batch(
                batch, self._existing(con, sorted({u.action_id for u in batch})), self._blocked
            )
            seasons: dict[str, int] = {}
            versions: dict[str, int] = {}
            for board in plan.boards():
                row = con.execute(
                    "UPDATE boards SET version = version + 1 WHERE id = ? RETURNING season, version", (board,)
                ).fetchone()
                if row is None or board not in self._specs:
                    raise DataRefused(f"there is no board {board!r}")
                seasons[board], versions[board] = row
            current: dict[tuple[str, str], Record] = {}
            for board, season, user_id in plan.keys(seasons):
                found = con.execute(_USER, (board, season, user_id)).fetchone()
                if found is not None:
                    current[(board, user_id)] = _record(found[:5])
            applied = apply_plan(plan, stamps, self._specs, seasons, current, versions=versions)
            updated_at = now_us
            con.executemany(
                _UPSERT_ENTRY,
                [
                    (
                        board,
                        seasons[board],
                        r.user_id,
                        r.username,
                        r.score,
                        sort_key(r.score, self._specs[board].desc),
                        r.reached_at,
                        _metadata(r.metadata),
                        updated_at,
                    )
                    for (board, _), r in sorted(applied.records.items())
                ],
            )
            con.executemany(
                _INSERT_ACTION,
                [
                    (
                        (u := batch[i]).action_id,
                        u.user_id,
                        u.source.value,
                        now_us,
                        stamps[i],
                        u.username,
                        _metadata(u.metadata),
                    )
                    for i in plan.fresh
                ],
            )
            con.executemany(
                _INSERT_CREDIT,
                [
                    (
                        c.action_id,
                        c.board,
                        c.season,
                        c.user_id,
                        c.value,
                        c.score_after,
                        int(c.improved),
                        c.version,
                    )
                    for c in applied.ledger
                ],
            )
            tops = {
                board: [_record(r).entry() for r in con.execute(_TOP, (board, seasons[board], spec.top_k))]
                for board in versions
                if not (spec := self._specs[board]).monotonic
            }
        return BatchResult(
            applied.results, committed_values(applied, seasons, versions, tops), applied.ledger
        )

    async def ensure_board(self, spec: BoardSpec, now_s: int, ends_at: int | None) -> BoardState:
        """The board's row, created at season 1 if new (see `Store.ensure_board`)."""
        con = self._require(self._wcon)

        def ensure() -> BoardState:
            with _write_transaction(con):
                con.execute(
                    "INSERT INTO boards (id, season, version, started_at, ends_at, reset) "
                    "VALUES (?, 1, 0, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                    (spec.id, now_s, ends_at, spec.reset),
                )
                con.execute(
                    "INSERT INTO seasons (board, season, started_at) VALUES (?, 1, ?) ON CONFLICT DO NOTHING",
                    (spec.id, now_s),
                )
                state = _state(con.execute(_BOARD, (spec.id,)).fetchone())
                if state.reset != spec.reset:
                    con.execute(
                        "UPDATE boards SET reset = ?, ends_at = ? WHERE id = ?",
                        (spec.reset, ends_at, spec.id),
                    )
                    state = _state(con.execute(_BOARD, (spec.id,)).fetchone())
                return state

        return await self._on(self._writer, ensure)

    async def end_season(
        self, spec: BoardSpec, season: int, ended_at: int, ends_at: int | None, audit: Audit | None = None
    ) -> SeasonChange | None:
        """End `season` and start the next; None if it is not current (see `Store.end_season`)."""
        con = self._require(self._wcon)

        def end() -> SeasonChange | None:
            with _write_transaction(con):
                row = con.execute(
                    "UPDATE boards SET season = season + 1, version = version + 1, started_at = ?, "
                    "ends_at = ? WHERE id = ? AND season = ? RETURNING season, version",
                    (ended_at, ends_at, spec.id, season),
                ).fetchone()
                if row is None:
                    return None
                con.execute(
                    "UPDATE seasons SET ended_at = ? WHERE board = ? AND season = ?",
                    (ended_at, spec.id, season),
                )
                con.execute(
                    "INSERT INTO seasons (board, season, started_at) VALUES (?, ?, ?)",
                    (spec.id, row[0], ended_at),
                )
                # Keep `archive` finished seasons; the ledger keeps every credit.
                oldest_kept = season - spec.archive + 1
                con.execute("DELETE FROM entries WHERE board = ? AND season < ?", (spec.id, oldest_kept))
                con.execute("DELETE FROM seasons WHERE board = ? AND season < ?", (spec.id, oldest_kept))
                if audit is not None:
                    self._run(con, queries.audit(audit))
                return SeasonChange(spec.id, season, row[0], row[1], ended_at, ends_at)

        return await self._on(self._writer, end)

    async def season_started(self, board: str, season: int) -> int | None:
        """When a kept season started, or None."""
        con = self._require(self._rcon)

        def read() -> int | None:
            row = con.execute(
                "SELECT started_at FROM seasons WHERE board = ? AND season = ?", (board, season)
            ).fetchone()
            return None if row is None else int(row[0])

        return await self._on(self._reader, read)

    async def top(self, board: str, season: int, k: int) -> list[Entry]:
        """The best `k` entries of a board's season."""
        con = self._require(self._rcon)
        return await self._on(
            self._reader, lambda: [_record(r).entry() for r in con.execute(_TOP, (board, season, k))]
        )

    async def load_board(self, board: str, k: int) -> tuple[BoardState, list[Entry]]:
        """A board's row and its current season's top `k`, from one snapshot."""
        con = self._require(self._rcon)

        def read() -> tuple[BoardState, list[Entry]]:
            con.execute("BEGIN")
            try:
                state = _state(con.execute(_BOARD, (board,)).fetchone())
                return state, [_record(r).entry() for r in con.execute(_TOP, (board, state.season, k))]
            finally:
                con.execute("COMMIT")

        return await self._on(self._reader, read)

    async def standing(self, board: str, season: int, user_id: str) -> UserStanding | None:
        """A user's entry and rank."""
        con = self._require(self._rcon)

        def read() -> UserStanding | None:
            con.execute("BEGIN")
            try:
                row = con.execute(_USER, (board, season, user_id)).fetchone()
                if row is None:
                    return None
                rank: int = con.execute(_RANK, (board, season, row[5], row[3], row[0])).fetchone()[0]
                return UserStanding(_record(row[:5]).entry(), rank)
            finally:
                con.execute("COMMIT")

        return await self._on(self._reader, read)

    @staticmethod
    def _run(con: sqlite3.Connection, script: queries.Script[T]) -> T:
        return queries.run_sync(script, lambda sql, args: con.execute(sql, args).fetchall())

    async def _read(self, script: queries.Script[T]) -> T:
        """Run a read script in one read transaction (one snapshot) on the reader thread."""
        con = self._require(self._rcon)

        def read() -> T:
            con.execute("BEGIN")
            try:
                return self._run(con, script)
            finally:
                con.execute("COMMIT")

        return await self._on(self._reader, read)

    async def _write(self, script: queries.Script[T]) -> T:
        """Run a moderation script in one write transaction on the writer thread."""
        con = self._require(self._wcon)

        def write() -> T:
            with _write_transaction(con):
                return self._run(con, script)

        return await self._on(self._writer, write)

    async def scan(self, board: str, season: int, chunk: int) -> AsyncGenerator[ScanChunk, None]:
        """Every entry of a board's season in ranking order, from one snapshot (see `Store.scan`).

        On its own connection and thread, so rank reads and batches go on meanwhile.
        """
        executor = ThreadPoolExecutor(1, thread_name_prefix="sqlite-scan")
        con: sqlite3.Connection | None = None
        try:
            con = await self._on(executor, self._connect)
            scan = con

            def begin() -> tuple[int | None, sqlite3.Cursor]:
                scan.execute("BEGIN")
                row = scan.execute("SELECT season, version FROM boards WHERE id = ?", (board,)).fetchone()
                version = None if row is None or row[0] != season else int(row[1])
                return version, scan.execute(_SCAN, (board, season))

            version, cursor = await self._on(executor, begin)
            if version is None:
                return

            def fetch() -> list[tuple[str, str | None, int, int, bytes | None]]:
                return [
                    (r[0], r[1], r[2], r[3], None if r[4] is None else r[4].encode())
                    for r in cursor.fetchmany(chunk)
                ]

            while True:  # the first chunk comes even if empty: it carries the version
                rows = await self._on(executor, fetch)
                yield ScanChunk(version, rows)
                if len(rows) < chunk:
                    break
        finally:
            if con is not None:
                with contextlib.suppress(Exception):
                    await asyncio.get_running_loop().run_in_executor(executor, con.close)
            executor.shutdown(wait=False)

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
