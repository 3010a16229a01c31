"""PostgreSQL store on an asyncpg pool (the production store).

Each batch is one transaction: a ledger lookup by `action_id = ANY($1)`, the
boards' version counters taken (which locks their rows, so a season end and
a batch never interleave), the written records read `FOR UPDATE`, then
set-based upserts and inserts over `unnest` arrays. If another process
inserted one of the batch's action ids between the lookup and the insert,
the unique constraint aborts the transaction and the batch is planned again,
so nothing is credited twice even with two writers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import TypeVar

import asyncpg

from . import changes, queries
from .board import Entry, sort_key
from .catalog import BOARD_ID, BoardSpec
from .scripted import ScriptedStore
from .store import (
    Audit,
    BatchPlan,
    BatchResult,
    BoardState,
    Committed,
    CreditRow,
    DataRefused,
    Moderated,
    Outcome,
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

# (version, statements). Applied in order under an advisory lock; `{default}`
# is the board that receives a version-1 database's scores.
MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE users (
            id          text COLLATE "C" PRIMARY KEY,
            username    text,
            score       bigint NOT NULL,
            reached_at  bigint NOT NULL,
            updated_at  bigint NOT NULL
        );
        CREATE INDEX users_by_rank ON users (score DESC, reached_at, id);
        CREATE TABLE scores_log (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            action_id   text COLLATE "C" NOT NULL UNIQUE,
            user_id     text COLLATE "C" NOT NULL,
            delta       bigint NOT NULL CHECK (delta > 0),
            score_after bigint NOT NULL,
            source      text NOT NULL CHECK (source IN ('player', 'service')),
            created_at  bigint NOT NULL
        );
        CREATE INDEX scores_log_by_user ON scores_log (user_id, id);
        """,
    ),
    (
        2,
        """
        CREATE TABLE boards (
            id          text COLLATE "C" PRIMARY KEY,
            season      integer NOT NULL,
            version     bigint NOT NULL,
            started_at  bigint NOT NULL,
            ends_at     bigint,
            reset       text NOT NULL DEFAULT ''
        );
        CREATE TABLE seasons (
            board       text COLLATE "C" NOT NULL,
            season      integer NOT NULL,
            started_at  bigint NOT NULL,
            ended_at    bigint,
            PRIMARY KEY (board, season)
        );
        CREATE TABLE entries (
            board       text COLLATE "C" NOT NULL,
            season      integer NOT NULL,
            user_id     text COLLATE "C" NOT NULL,
            username    text,
            score       bigint NOT NULL,
            sort_key    bigint NOT NULL,
            reached_at  bigint NOT NULL,
            metadata    text,
            updated_at  bigint NOT NULL,
            PRIMARY KEY (board, season, user_id)
        );
        CREATE INDEX entries_by_rank ON entries (board, season, sort_key, reached_at, user_id);
        CREATE TABLE actions (
            action_id   text COLLATE "C" PRIMARY KEY,
            user_id     text COLLATE "C" NOT NULL,
            source      text NOT NULL CHECK (source IN ('player', 'service')),
            created_at  bigint NOT NULL
        );
        CREATE TABLE credits (
            action_id   text COLLATE "C" NOT NULL,
            board       text COLLATE "C" NOT NULL,
            season      integer NOT NULL,
            user_id     text COLLATE "C" NOT NULL,
            value       bigint NOT NULL,
            score_after bigint NOT NULL,
            improved    boolean NOT NULL,
            PRIMARY KEY (action_id, board)
        );
        CREATE INDEX credits_by_entry ON credits (board, season, user_id);
        INSERT INTO entries
            (board, season, user_id, username, score, sort_key, reached_at, metadata, updated_at)
            SELECT '{default}', 1, id, username, score, ~score, reached_at, NULL, updated_at FROM users;
        INSERT INTO actions (action_id, user_id, source, created_at)
            SELECT action_id, user_id, source, created_at FROM scores_log ORDER BY id;
        INSERT INTO credits (action_id, board, season, user_id, value, score_after, improved)
            SELECT action_id, '{default}', 1, user_id, delta, score_after, true FROM scores_log;
        DROP TABLE scores_log;
        DROP TABLE users;
        """,
    ),
    (
        3,
        # Moderation: what each action set (to rebuild a record without one),
        # voided credits (removed entries, reverted actions), blocks, the audit.
        """
        ALTER TABLE actions ADD COLUMN stamp bigint;
        ALTER TABLE actions ADD COLUMN username text;
        ALTER TABLE actions ADD COLUMN metadata text;
        ALTER TABLE actions ADD COLUMN reverted_at bigint;
        ALTER TABLE credits ADD COLUMN voided smallint NOT NULL DEFAULT 0;
        CREATE TABLE blocks (
            user_id     text COLLATE "C" PRIMARY KEY,
            blocked_at  bigint NOT NULL,
            actor       text NOT NULL,
            reason      text
        );
        CREATE TABLE audit (
            id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at          bigint NOT NULL,
            actor       text NOT NULL,
            operation   text NOT NULL,
            target      text NOT NULL,
            reason      text
        );
        """,
    ),
    (
        4,
        # Several processes: the board version each credit became visible at
        # (an update's `visibleAt`), and every committed value by version, so
        # a process that missed a bus message reads it back.
        """
        ALTER TABLE credits ADD COLUMN version bigint NOT NULL DEFAULT 0;
        CREATE TABLE changes (
            board       text COLLATE "C" NOT NULL,
            version     bigint NOT NULL,
            created_at  bigint NOT NULL DEFAULT extract(epoch FROM clock_timestamp())::bigint,
            body        bytea NOT NULL,
            PRIMARY KEY (board, version)
        );
        CREATE INDEX changes_by_age ON changes (created_at);
        """,
    ),
]
_MIGRATION_LOCK = 0x5C0EB0A4D

# Every query is a constant: no value is ever formatted into SQL text.
_ACTIONS = "SELECT action_id, user_id FROM actions WHERE action_id = ANY($1::text[])"
_CREDITS = """
SELECT action_id, board, season, user_id, value, score_after, improved, version FROM credits
WHERE action_id = ANY($1::text[])
"""
_BLOCKED = "SELECT user_id FROM blocks WHERE user_id = ANY($1::text[])"
# Moderation serialises with every batch: all board rows, in id order (the
# order batches lock their subsets in, so no deadlock).
_LOCK_BOARDS = "SELECT id FROM boards ORDER BY id FOR UPDATE"
_INSERT_CHANGES = """
INSERT INTO changes (board, version, body) SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[])
"""
_CHANGES_SINCE = """
SELECT body FROM changes WHERE board = $1 AND version > $2 ORDER BY version LIMIT $3
"""
_VERSIONS = "SELECT id, season, version FROM boards"
_TAKE_VERSIONS = """
UPDATE boards SET version = version + 1 WHERE id = ANY($1::text[]) RETURNING id, season, version
"""
_CURRENT = """
SELECT e.user_id, e.username, e.score, e.reached_at, e.metadata, e.board
FROM unnest($1::text[], $2::integer[], $3::text[]) AS k(board, season, user_id)
JOIN entries e ON e.board = k.board AND e.season = k.season AND e.user_id = k.user_id
ORDER BY e.board, e.user_id
FOR UPDATE OF e
"""
_UPSERT_ENTRIES = """
INSERT INTO entries AS t (board, season, user_id, username, score, sort_key, reached_at, metadata, updated_at)
SELECT u.*, $9 FROM unnest(
    $1::text[], $2::integer[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[], $8::text[]
) AS u(board, season, user_id, username, score, sort_key, reached_at, metadata)
ON CONFLICT (board, season, user_id) DO UPDATE SET
    username = EXCLUDED.username,
    score = EXCLUDED.score,
    sort_key = EXCLUDED.sort_key,
    reached_at = EXCLUDED.reached_at,
    metadata = EXCLUDED.metadata,
    updated_at = EXCLUDED.updated_at
"""
# Claims the batch's new action ids. Another writer's uncommitted claim of
# the same id makes this wait for it; if that commits, the id is skipped and
# the update answered from the ledger (a race is a duplicate, not an error).
_CLAIM_ACTIONS = """
INSERT INTO actions (action_id, user_id, source, stamp, username, metadata, created_at)
SELECT *, $7 FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[])
ON CONFLICT (action_id) DO NOTHING
RETURNING action_id
"""
_SCAN = """
SELECT user_id, username, score, reached_at, metadata FROM entries WHERE board = $1 AND season = $2
ORDER BY sort_key, reached_at, user_id
"""
_INSERT_CREDITS = """
INSERT INTO credits (action_id, board, season, user_id, value, score_after, improved, version)
SELECT * FROM unnest(
    $1::text[], $2::text[], $3::integer[], $4::text[], $5::bigint[], $6::bigint[], $7::boolean[],
    $8::bigint[]
)
"""
_TOP = """
SELECT user_id, username, score, reached_at, metadata FROM entries WHERE board = $1 AND season = $2
ORDER BY sort_key, reached_at, user_id LIMIT $3
"""
_STANDING = """
SELECT user_id, username, score, reached_at, metadata,
       (SELECT count(*) FROM entries o
        WHERE o.board = e.board AND o.season = e.season AND o.sort_key < e.sort_key)
     + (SELECT count(*) FROM entries o
        WHERE o.board = e.board AND o.season = e.season AND o.sort_key = e.sort_key
          AND (o.reached_at < e.reached_at OR (o.reached_at = e.reached_at AND o.user_id < e.user_id)))
     + 1 AS rank
FROM entries e WHERE e.board = $1 AND e.season = $2 AND e.user_id = $3
"""
_BOARD = "SELECT id, season, version, started_at, ends_at, reset FROM boards WHERE id = $1"
# A deadlock or serialization failure aborts the transaction; it is retried.
_CONFLICT_RETRIES = 5
log = logging.getLogger("scoreboard.postgres")
T = TypeVar("T")
_Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


@functools.lru_cache(maxsize=64)
def _numbered(sql: str) -> str:
    return queries.numbered(sql)


async def _drive(con: _Connection, script: queries.Script[T]) -> T:
    """Run a script on one connection, inside the caller's transaction."""
    try:
        sql, args = next(script)
        while True:
            rows = await con.fetch(_numbered(sql), *args)
            sql, args = script.send([tuple(r) for r in rows])
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def _record(row: asyncpg.Record) -> Record:
    metadata = row[4]
    return Record(row[0], row[1], row[2], row[3], None if metadata is None else metadata.encode())


async def _record_changes(con: _Connection, values: Sequence[Committed | SeasonChange]) -> None:
    """Keep committed values by version, in the transaction that made them."""
    if values:
        await con.execute(
            _INSERT_CHANGES,
            [v.board for v in values],
            [v.version for v in values],
            [changes.encode(v) for v in values],
        )


def _text(metadata: bytes | None) -> str | None:
    return None if metadata is None else metadata.decode()


def _state_missing(board: str) -> BoardState:
    raise StorageError(f"postgresql: the row of board {board!r} vanished")


def _state(row: asyncpg.Record) -> BoardState:
    return BoardState(row[0], row[1], row[2], row[3], row[4], row[5])


class PostgresStore(ScriptedStore):
    """The Store interface on a PostgreSQL database."""

    def __init__(
        self, pool: asyncpg.Pool, *, boards: Mapping[str, BoardSpec], default_board: str, timeout_s: float
    ) -> None:
        self._pool = pool
        self._specs = dict(boards)
        self._default_board = default_board
        self._timeout_s = timeout_s
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
        pool_min: int = 1,
        pool_max: int = 4,
    ) -> PostgresStore:
        """Create the pool and apply migrations."""
        if not BOARD_ID.match(default_board):
            raise ValueError(f"invalid board id {default_board!r}")
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=pool_min,
                max_size=pool_max,
                timeout=timeout_s,
                command_timeout=timeout_s,
                server_settings={
                    "application_name": "scoreboard",
                    # A prepared statement's generic plan, chosen while the
                    # ledger was new and tiny, is a sequential scan that
                    # PostgreSQL keeps for the connection's life; planning
                    # each execution keeps the action-id lookup on its index
                    # as the table grows (tests/test_store.py reads the scan
                    # counters). Planning costs tens of microseconds a batch.
                    "plan_cache_mode": "force_custom_plan",
                },
            )
        except _DRIVER_ERRORS as exc:
            raise StorageError(f"postgresql: {exc}") from exc
        store = cls(pool, boards=boards or {}, default_board=default_board, timeout_s=timeout_s)
        try:
            await store._migrate()
            store._blocked = {r[0] for r in await pool.fetch("SELECT user_id FROM blocks")}
        except BaseException:
            await store.close()
            raise
        return store

    async def _migrate(self) -> None:
        try:
            async with self._pool.acquire() as con, con.transaction():
                await con.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
                await con.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations "
                    "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                done = {r[0] for r in await con.fetch("SELECT version FROM schema_migrations")}
                for version, script in MIGRATIONS:
                    if version in done:
                        continue
                    # The board id is checked against BOARD_ID ([a-z0-9_-]) above.
                    await con.execute(script.replace("{default}", self._default_board))
                    await con.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)
        except _DRIVER_ERRORS as exc:
            raise StorageError(f"postgresql: {exc}") from exc

    async def apply_batch(self, batch: Sequence[Update], stamps: Sequence[int], now_us: int) -> BatchResult:
        """Credit a batch in one transaction; DataRefused if PostgreSQL refused its data."""
        for attempt in range(_CONFLICT_RETRIES):
            try:
                return await self._apply(batch, stamps, now_us)
            except (
                asyncpg.UniqueViolationError,
                asyncpg.DeadlockDetectedError,
                asyncpg.SerializationError,
            ) as exc:
                # Writers racing on the same rows: the transaction rolled
                # back whole, so planning it again is safe.
                log.info("batch_retried", extra={"fields": {"attempt": attempt + 1, "error": repr(exc)}})
                if attempt == _CONFLICT_RETRIES - 1:
                    raise StorageError(f"postgresql: {exc}") from None
            except asyncpg.NumericValueOutOfRangeError as exc:  # a value past bigint
                raise DataRefused(f"postgresql: {exc}", overflow=True) from exc
            except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
                # Class 22 (NUL in text, a value asyncpg cannot encode: lone
                # surrogates, ints past int64) and 23 (CHECK, NOT NULL).
                raise DataRefused(f"postgresql: {exc}", overflow="int64" in str(exc)) from exc
            except _DRIVER_ERRORS as exc:
                raise StorageError(f"postgresql: {exc}") from exc
        raise AssertionError("unreachable")

    async def _existing(self, con: _Connection, action_ids: list[str]) -> dict[str, StoredAction]:
        users = {r[0]: r[1] for r in await con.fetch(_ACTIONS, action_ids)}
        if not users:
            return {}
        credits: dict[str, dict[str, CreditRow]] = {}
        for r in await con.fetch(_CREDITS, list(users)):
            credits.setdefault(r[0], {})[r[1]] = CreditRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7])
        return {a: StoredAction(u, credits.get(a, {})) for a, u in users.items()}

    async def _plan(
        self, con: _Connection, batch: Sequence[Update], stamps: Sequence[int], now_us: int
    ) -> tuple[BatchPlan, dict[str, int], dict[str, int]]:
        """Plan the batch against the ledger, take its boards' versions and claim its action ids.

        Order matters with several writers: board rows are locked first (in
        id order), then blocks are read (a block locks every board row, so
        one that committed first is seen), then the new action ids are
        claimed; an id another writer claimed first makes its update a
        duplicate of that writer's credit.
        """
        existing = await self._existing(con, [u.action_id for u in batch])
        # The blocks this process knows keep their updates off the board
        # versions; the table, read under the locks, has the last word.
        plan = plan_batch(batch, existing, self._blocked)
        seasons: dict[str, int] = {}
        versions: dict[str, int] = {}
        boards = plan.boards()
        if not boards:
            return plan, seasons, versions
        for row in await con.fetch(_TAKE_VERSIONS, boards):
            seasons[row[0]], versions[row[0]] = row[1], row[2]
        missing = [b for b in boards if b not in versions or b not in self._specs]
        if missing:
            raise DataRefused(f"there is no board {missing[0]!r}")
        asked = sorted(
            {
                u.user_id
                for u, r in zip(batch, plan.results, strict=True)
                if r is None or r.outcome is Outcome.BLOCKED
            }
        )
        blocked = {r[0] for r in await con.fetch(_BLOCKED, asked)}
        if blocked != self._blocked.intersection(asked):
            self._blocked.difference_update(asked)
            self._blocked.update(blocked)
            plan = plan_batch(batch, existing, blocked)
            # A player unblocked by another process may write boards not
            # locked yet (rare: out of id order, so a deadlock is retried).
            extra = [b for b in plan.boards() if b not in versions]
            for row in await con.fetch(_TAKE_VERSIONS, extra) if extra else []:
                seasons[row[0]], versions[row[0]] = row[1], row[2]
        fresh = sorted(plan.fresh, key=lambda i: batch[i].action_id)
        if not fresh:
            return plan, seasons, versions
        claimed = {
            r[0]
            for r in await con.fetch(
                _CLAIM_ACTIONS,
                [batch[i].action_id for i in fresh],
                [batch[i].user_id for i in fresh],
                [batch[i].source.value for i in fresh],
                [stamps[i] for i in fresh],
                [batch[i].username for i in fresh],
                [_text(batch[i].metadata) for i in fresh],
                now_us,
            )
        }
        lost = [batch[i].action_id for i in fresh if batch[i].action_id not in claimed]
        if lost:
            existing.update(await self._existing(con, lost))
            plan = plan_batch(batch, existing, blocked)
        return plan, seasons, versions

    async def _apply(self, batch: Sequence[Update], stamps: Sequence[int], now_us: int) -> BatchResult:
        async with self._pool.acquire() as con, con.transaction():
            plan, seasons, versions = await self._plan(con, batch, stamps, now_us)
            keys = plan.keys(seasons)
            current: dict[tuple[str, str], Record] = {}
            if keys:
                rows = await con.fetch(
                    _CURRENT, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]
                )
                current = {(r[5], r[0]): _record(r) for r in rows}
            applied = apply_plan(plan, stamps, self._specs, seasons, current, versions=versions)
            if applied.records:
                items = sorted(applied.records.items())
                await con.execute(
                    _UPSERT_ENTRIES,
                    [b for (b, _), _r in items],
                    [seasons[b] for (b, _), _r in items],
                    [r.user_id for _, r in items],
                    [r.username for _, r in items],
                    [r.score for _, r in items],
                    [sort_key(r.score, self._specs[b].desc) for (b, _), r in items],
                    [r.reached_at for _, r in items],
                    [None if r.metadata is None else r.metadata.decode() for _, r in items],
                    now_us,
                )
            ledger = applied.ledger
            if ledger:
                await con.execute(
                    _INSERT_CREDITS,
                    [c.action_id for c in ledger],
                    [c.board for c in ledger],
                    [c.season for c in ledger],
                    [c.user_id for c in ledger],
                    [c.value for c in ledger],
                    [c.score_after for c in ledger],
                    [c.improved for c in ledger],
                    [c.version for c in ledger],
                )
            tops: dict[str, list[Entry]] = {}
            for board in versions:
                spec = self._specs[board]
                if not spec.monotonic:
                    tops[board] = [
                        _record(r).entry() for r in await con.fetch(_TOP, board, seasons[board], spec.top_k)
                    ]
            committed = committed_values(applied, seasons, versions, tops)
            await _record_changes(con, committed)
        return BatchResult(applied.results, committed, applied.ledger)

    async def ensure_board(self, spec: BoardSpec, now_s: int, ends_at: int | None) -> BoardState:
        """The board's row, created at season 1 if new (see `Store.ensure_board`)."""
        try:
            async with self._pool.acquire() as con, con.transaction():
                await con.execute(
                    "INSERT INTO boards (id, season, version, started_at, ends_at, reset) "
                    "VALUES ($1, 1, 0, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
                    spec.id,
                    now_s,
                    ends_at,
                    spec.reset,
                )
                await con.execute(
                    "INSERT INTO seasons (board, season, started_at) VALUES ($1, 1, $2) "
                    "ON CONFLICT DO NOTHING",
                    spec.id,
                    now_s,
                )
                row = await con.fetchrow(_BOARD + " FOR UPDATE", spec.id)
                if row is None:
                    raise StorageError(f"postgresql: the row of board {spec.id!r} vanished")
                if row[5] != spec.reset:
                    await con.execute(
                        "UPDATE boards SET reset = $1, ends_at = $2 WHERE id = $3",
                        spec.reset,
                        ends_at,
                        spec.id,
                    )
                    row = await con.fetchrow(_BOARD, spec.id)
                return _state(row) if row is not None else _state_missing(spec.id)
        except _DRIVER_ERRORS as exc:
            raise StorageError(f"postgresql: {exc}") from exc

    async def end_season(
        self, spec: BoardSpec, season: int, ended_at: int, ends_at: int | None, audit: Audit | None = None
    ) -> SeasonChange | None:
        """End `season` and start the next; None if it is not current (see `Store.end_season`)."""
        try:
            async with self._pool.acquire() as con, con.transaction():
                row = await con.fetchrow(
                    "UPDATE boards SET season = season + 1, version = version + 1, started_at = $1, "
                    "ends_at = $2 WHERE id = $3 AND season = $4 RETURNING season, version",
                    ended_at,
                    ends_at,
                    spec.id,
                    season,
                )
                if row is None:
                    return None
                await con.execute(
                    "UPDATE seasons SET ended_at = $1 WHERE board = $2 AND season = $3",
                    ended_at,
                    spec.id,
                    season,
                )
                await con.execute(
                    "INSERT INTO seasons (board, season, started_at) VALUES ($1, $2, $3)",
                    spec.id,
                    row[0],
                    ended_at,
                )
                # Keep `archive` finished seasons; the ledger keeps every credit.
                oldest_kept = season - spec.archive + 1
                await con.execute(
                    "DELETE FROM entries WHERE board = $1 AND season < $2", spec.id, oldest_kept
                )
                await con.execute(
                    "DELETE FROM seasons WHERE board = $1 AND season < $2", spec.id, oldest_kept
                )
                if audit is not None:
                    await _drive(con, queries.audit(audit))
                change = SeasonChange(spec.id, season, row[0], row[1], ended_at, ends_at)
                await _record_changes(con, [change])
                return change
        except _DRIVER_ERRORS as exc:
            raise StorageError(f"postgresql: {exc}") from exc

    async def season_started(self, board: str, season: int) -> int | None:
        """When a kept season started, or None."""
        try:
            value = await self._pool.fetchval(
                "SELECT started_at FROM seasons WHERE board = $1 AND season = $2", board, season
            )
        except _DRIVER_ERRORS as exc:
            raise StorageError(f"postgresql: {exc}") from exc
        return None if value is None else int(value)

    async def top(self, board: str, season: int, k: int) -> list[Entry]:
        """The best `k` entries of a board's season."""
        try:
            return [_record(r).entry() for r in await self._pool.fetch(_TOP, board, season, k)]
        except _DRIVER_ERRORS as exc:
            raise StorageError(f"postgresql: {exc}") from exc

    async def standing(self, board: str, season: int, user_id: str) -> UserStanding | None:
        """A user's entry and rank."""
        try:
            row = await self._pool.fetchrow(_STANDING, board, season, user_id)
        except _DRIVER_ERRORS as exc:
            raise StorageError(f"postgresql: {exc}") from exc
        return None if row is None else UserStanding(_record(row).entry(), row[5])

    async def _read(self, script: queries.Script[T]) -> T:
        """Run a read script in one read-only snapshot."""
        try:
            async with (
                self._pool.acquire() as con,
                con.transaction(isolation="repeatable_read", readonly=True),
            ):
                return await _drive(con, script)
        except _DRIVER_ERRORS as exc:
            raise StorageError(f"postgresql: {exc}") from exc

    async def _write(self, script: queries.Script[T]) -> T:
        """Run a moderation script in one transaction, serialised with every batch of every process."""
        try:
            async with self._pool.acquire() as con, con.transaction():
                await con.execute(_LOCK_BOARDS)
                done = await _drive(con, script)
                if isinstance(done, Moderated):
                    await _record_changes(con, done.committed)
                return done
        except _DRIVER_ERRORS as exc:
            raise StorageError(f"postgresql: {exc}") from exc

    async def changes_since(self, board: str, version: int, limit: int) -> list[bytes]:
        """Up to `limit` encoded values of `board` after `version`, in version order."""
        try:
            return [bytes(r[0]) for r in await self._pool.fetch(_CHANGES_SINCE, board, version, limit)]
        except _DRIVER_ERRORS as exc:
            raise StorageError(f"postgresql: {exc}") from exc

    async def versions(self) -> dict[str, tuple[int, int]]:
        """Every board's current `(season, version)`."""
        try:
            return {r[0]: (r[1], r[2]) for r in await self._pool.fetch(_VERSIONS)}
        except _DRIVER_ERRORS as exc:
            raise StorageError(f"postgresql: {exc}") from exc

    async def load_board(self, board: str, k: int) -> tuple[BoardState, list[Entry]]:
        """A board's row and its current season's top `k`, from one snapshot."""
        try:
            async with (
                self._pool.acquire() as con,
                con.transaction(isolation="repeatable_read", readonly=True),
            ):
                row = await con.fetchrow(_BOARD, board)
                if row is None:
                    return _state_missing(board), []
                state = _state(row)
                return state, [_record(r).entry() for r in await con.fetch(_TOP, board, state.season, k)]
        except _DRIVER_ERRORS as exc:
            raise StorageError(f"postgresql: {exc}") from exc

    async def refresh_blocks(self) -> None:
        """Reload the blocked players: blocks other processes made (batches check the table anyway)."""
        try:
            self._blocked = {r[0] for r in await self._pool.fetch("SELECT user_id FROM blocks")}
        except _DRIVER_ERRORS as exc:
            raise StorageError(f"postgresql: {exc}") from exc

    async def prune_changes(self, older_than_s: int) -> int:
        """Forget kept values older than `older_than_s` (Unix seconds); how many went."""
        try:
            done = await self._pool.execute("DELETE FROM changes WHERE created_at < $1", older_than_s)
        except _DRIVER_ERRORS as exc:
            raise StorageError(f"postgresql: {exc}") from exc
        return int(done.split()[-1])

    async def scan(self, board: str, season: int, chunk: int) -> AsyncGenerator[ScanChunk, None]:
        """Every entry of a board's season in ranking order, from one snapshot (see `Store.scan`)."""
        try:
            async with (
                self._pool.acquire() as con,
                con.transaction(isolation="repeatable_read", readonly=True),
            ):
                row = await con.fetchrow("SELECT season, version FROM boards WHERE id = $1", board)
                if row is None or row[0] != season:
                    return
                cursor = await con.cursor(_SCAN, board, season)
                while True:  # the first chunk comes even if empty: it carries the version
                    rows = await cursor.fetch(chunk)
                    yield ScanChunk(
                        row[1],
                        [(r[0], r[1], r[2], r[3], None if r[4] is None else r[4].encode()) for r in rows],
                    )
                    if len(rows) < chunk:
                        break
        except _DRIVER_ERRORS as exc:
            raise StorageError(f"postgresql: {exc}") from exc

    async def ping(self) -> None:
        """Check that a pooled connection answers."""
        try:
            await self._pool.fetchval("SELECT 1")
        except _DRIVER_ERRORS as exc:
            raise StorageError(f"postgresql: {exc}") from exc

    async def close(self) -> None:
        """Close the pool, terminating it if a graceful close fails; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.wait_for(self._pool.close(), self._timeout_s)
        except asyncio.CancelledError:
            self._pool.terminate()
            raise
        except (*_DRIVER_ERRORS, asyncpg.exceptions.InterfaceError):
            # A database that stopped answering (an idle connection's
            # goodbye never acknowledged): closing must still end.
            log.warning("pool_terminated", extra={"fields": {"timeout_s": self._timeout_s}})
            self._pool.terminate()
