"""Start-up time with large boards: process start until the server is useful.

For each store it prepares two databases, migrated by the server's own code
with the rows of `--boards` boards (default 3: `global`, the default, then
`board2`, `board3`; incr, never reset): an empty one (the baseline) and one
with `--users` users (default 1,000,000) on every board, each board with its
own variation of one formula: distinct ids, skewed scores (many ties at the
bottom, few at the top; another hash offset per board, so every board has its
own top 10) and distinct `reached_at` stamps spread over 30 days. Seeding is
done in the database, into `entries` (`sort_key = ~score`): a recursive CTE
on SQLite, generate_series on PostgreSQL, one INSERT per board (the rank
index `entries_by_rank` is dropped during the load and rebuilt from its own
definition afterwards), then ANALYZE.

Each run starts `python -m server serve` with the matching catalog
(`--catalog-file`), pinned to CPU 0, and from CPU 1 measures the time from
just before the spawn until `GET /readyz` answers 200 (polled every 2 ms) and
until `GET /api/boards/{board}/scores` has returned the expected top 10 for
every board, one after the other (the expected boards are computed in Python
from the same formula, not read from the database; `GET /scores` must also
show the default board's). It also reads the server's own `storage_ready`
figure (store open, migrations check and board loads) and times
`GET /api/boards/{board}/users/{id}` (median of 5 per board) for users ranked
mid-table (a rank query over the board). The variants alternate: empty,
seeded, empty, seeded, ...

The seeding uses this checkout's migrations, so `--tree` must name a checkout
with the same (boards) schema.

Run (from the repository root, in the venv):

    python -m loadtest.startup                            # both stores, 3 boards of 1M users, 5 runs each
    python -m loadtest.startup --stores sqlite --users 200000 --boards 1 --runs 3

Prints the seeding time per store, one line per run, and a table of medians
(ready, every board correct, storage_ready, mid-table rank lookup), marking
whether the seeded start-up meets `--target` seconds (default 2). Exits 1 if
a board was wrong or the target was missed.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import math
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import uvloop

from loadtest.common import (
    CLIENT_CPU,
    SERVER_CPU,
    ServerProcess,
    board_ids,
    catalog_toml,
    create_pg_database,
    default_pg_url,
    drop_pg_database,
    fmt,
    format_table,
    median,
    pin_to_cpu,
    remove_sqlite,
    sqlite_file,
    write_catalog,
)
from scoreboard.catalog import parse_catalog
from scoreboard.stores import open_store

BASE_US = 1_700_000_000_000_000
STEP_US = 2_592_000  # 1,000,003 steps of 2.592 s: 30 days
TOP_K = 10
MAX_USERS = 9_999_999  # ids are u0000001 ... u9999999
# Board number j (0 for the default) adds j * BOARD_SHIFT to the hash, so each
# board has the same score distribution but its own order of users.
BOARD_SHIFT = 97_531

# The seed formula, once per dialect and once in Python (for the expected boards).
# h is a multiplicative hash of i, shifted per board; score = 1 + a^2 / 10^6 with
# a = h mod 10^6 is skewed towards low scores; reached_at is a permutation of i
# (1,000,003 is prime), so distinct for up to 1,000,002 users.
_SQLITE_SEED = f"""
INSERT INTO entries (board, season, user_id, username, score, sort_key, reached_at, metadata, updated_at)
WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < :users),
h(i, a) AS (SELECT i, ((i * 2654435761 + :shift) % 4294967296) % 1000000 FROM s),
v(i, score, reached) AS (
    SELECT i, 1 + (a * a) / 1000000, {BASE_US} + ((i * 40503) % 1000003) * {STEP_US} FROM h
)
SELECT :board, :season, printf('u%07d', i), 'Player ' || i, score, ~score, reached, NULL, reached
FROM v
"""
_PG_SEED = f"""
INSERT INTO entries (board, season, user_id, username, score, sort_key, reached_at, metadata, updated_at)
SELECT $1::text, $2::integer, 'u' || lpad(i::text, 7, '0'), 'Player ' || i, score, ~score, reached,
       NULL, reached
FROM (SELECT i, 1 + (a * a) / 1000000 AS score, {BASE_US} + ((i * 40503) % 1000003) * {STEP_US} AS reached
      FROM (SELECT i, ((i * 2654435761 + $4::bigint) % 4294967296) % 1000000 AS a
            FROM generate_series(1::bigint, $3::bigint) AS i) AS h) AS v
"""


@dataclass(frozen=True, slots=True)
class Seeded:
    """What the formula gives user i on board number j."""

    user_id: str
    username: str
    score: int
    reached_at: int


def seeded_user(i: int, board_no: int = 0) -> Seeded:
    """User i of board number `board_no` (the same formula as the SQL)."""
    a = ((i * 2654435761 + board_no * BOARD_SHIFT) % 4294967296) % 1000000
    reached = BASE_US + ((i * 40503) % 1000003) * STEP_US
    return Seeded(f"u{i:07d}", f"Player {i}", 1 + (a * a) // 1000000, reached)


def _rank_keys(users: int, board_no: int) -> Iterator[tuple[int, int, int]]:
    # (-score, reached_at, i) per user: the ranking rule (score, then reached_at,
    # then user id; ids sort as i does, all being 7 digits), without building
    # a Seeded and its strings for each of a million users.
    shift = board_no * BOARD_SHIFT
    for i in range(1, users + 1):
        a = ((i * 2654435761 + shift) % 4294967296) % 1000000
        yield -(1 + (a * a) // 1000000), BASE_US + ((i * 40503) % 1000003) * STEP_US, i


def expected_board(users: int, board_no: int = 0, k: int = TOP_K) -> list[dict[str, Any]]:
    """The top k of a board's seed by the ranking rule, as the server lists it."""
    best = [seeded_user(i, board_no) for _, _, i in heapq.nsmallest(k, _rank_keys(users, board_no))]
    return [
        {"rank": n, "userId": u.user_id, "username": u.username, "score": u.score}
        for n, u in enumerate(best, start=1)
    ]


def mid_table_users(users: int, board_no: int = 0, count: int = 5) -> list[str]:
    """Users ranked near the middle of a board (for the rank-query timing)."""
    sample = range(1, users + 1, max(1, users // 2000))
    scores = sorted((seeded_user(i, board_no).score, i) for i in sample)
    mid = len(scores) // 2
    return [seeded_user(i, board_no).user_id for _, i in scores[mid : mid + count]]


# -- seeding ------------------------------------------------------------------------------


async def migrate(url: str, catalog_text: str) -> dict[str, int]:
    """Create the schema with the server's own migrations and the catalog's board rows.

    Returns each board's current season (1 in a new database).
    """
    catalog = parse_catalog(catalog_text)
    store = await open_store(url, boards=catalog.boards, default_board=catalog.default)
    try:
        now = math.floor(time.time())
        return {
            spec.id: (await store.ensure_board(spec, now, None)).season for spec in catalog.boards.values()
        }
    finally:
        await store.close()


def seed_sqlite(url: str, users: int, boards: Sequence[tuple[str, int]]) -> None:
    """Insert `users` entries on each (board, season), one recursive-CTE INSERT each, rank index
    rebuilt after; board number j is the j-th pair."""
    con = sqlite3.connect(sqlite_file(url), isolation_level=None)
    try:
        con.execute("PRAGMA synchronous = OFF")
        con.execute("PRAGMA cache_size = -262144")
        (index_sql,) = con.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'entries_by_rank'"
        ).fetchone()
        con.execute("BEGIN")
        con.execute("DROP INDEX entries_by_rank")
        for board_no, (board, season) in enumerate(boards):
            params = {"users": users, "shift": board_no * BOARD_SHIFT, "board": board, "season": season}
            con.execute(_SQLITE_SEED, params)
        con.execute(index_sql)
        con.execute("COMMIT")
        con.execute("ANALYZE")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()


async def seed_postgres(url: str, users: int, boards: Sequence[tuple[str, int]]) -> None:
    """Insert `users` entries on each (board, season) from generate_series, rank index rebuilt after,
    then VACUUM ANALYZE; board number j is the j-th pair."""
    con = await asyncpg.connect(url, timeout=10)
    try:
        index_sql = await con.fetchval("SELECT pg_get_indexdef('entries_by_rank'::regclass)")
        async with con.transaction():
            await con.execute("DROP INDEX entries_by_rank")
            for board_no, (board, season) in enumerate(boards):
                await con.execute(_PG_SEED, board, season, users, board_no * BOARD_SHIFT)
            await con.execute(index_sql)
        await con.execute("VACUUM (ANALYZE) entries")
    finally:
        await con.close()


async def prepare(
    store: str, users: int, boards: Sequence[str], workdir: Path, pg_admin_url: str
) -> tuple[str, dict[str, int], float]:
    """A migrated database with the rows of `boards` (the first the default) and `users`
    users on each; board number j is `boards[j]`.

    Returns its URL, each board's season, and the seconds it took.
    """
    started = time.perf_counter()
    if store == "sqlite":
        url = f"sqlite:///{workdir / f'startup-{users}.db'}"
    else:
        url = await create_pg_database(pg_admin_url, prefix="sb_bench_startup")
    seasons = await migrate(url, catalog_toml(boards))
    pairs = [(board, seasons[board]) for board in boards]
    if users:
        if store == "sqlite":
            await asyncio.to_thread(seed_sqlite, url, users, pairs)
        else:
            await seed_postgres(url, users, pairs)
    return url, seasons, time.perf_counter() - started


async def discard(url: str, pg_admin_url: str) -> None:
    """Remove a database made by `prepare`."""
    if url.startswith("sqlite:"):
        remove_sqlite(sqlite_file(url))
    else:
        await drop_pg_database(pg_admin_url, url)


# -- one start -----------------------------------------------------------------------------


@dataclass(slots=True)
class Start:
    """One measured start."""

    store: str
    users: int
    run: int
    ready_s: float
    board_s: float
    board_ok: bool
    storage_ready_ms: float
    lookup_ms: float
    boards: int = 1
    wrong: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Expected:
    """What a database holds, computed from the formula: per board, its season and top 10,
    and users ranked mid-table."""

    seasons: Mapping[str, int]
    top: Mapping[str, list[dict[str, Any]]]
    probes: Mapping[str, list[str]]


def expected_for(users: int, boards: Sequence[str], seasons: Mapping[str, int]) -> Expected:
    """Every board's expected top 10 and mid-table users (board number j is `boards[j]`)."""
    return Expected(
        seasons=dict(seasons),
        top={b: expected_board(users, j) if users else [] for j, b in enumerate(boards)},
        probes={b: mid_table_users(users, j) if users else [] for j, b in enumerate(boards)},
    )


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as resp:
        body = await resp.json() if resp.status == 200 else None
        return resp.status, body


async def measure_start(
    *,
    store: str,
    url: str,
    users: int,
    run: int,
    expected: Expected,
    catalog: Path,
    workdir: Path,
    tree: Path | None = None,
) -> Start:
    """Start the server, time readiness and correct boards, time rank lookups, stop."""
    boards = list(expected.top)
    server = ServerProcess(
        database_url=url,
        workdir=workdir,
        flags={"catalog-file": str(catalog)},
        cpu=SERVER_CPU,
        tree=tree,
    )
    server.start()
    wrong: list[str] = []
    try:
        ready_s = await server.wait_ready(timeout_s=60, poll_s=0.002)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            for board in boards:
                status, body = await _get(session, f"{server.url}/api/boards/{board}/scores")
                shown = (
                    (body.get("board"), body.get("season"), body.get("entries")) if status == 200 else None
                )
                if shown != (board, expected.seasons[board], expected.top[board]):
                    wrong.append(board)
            board_s = time.perf_counter() - server.started_at
            # The default board is also the one of GET /scores (not timed).
            status, body = await _get(session, server.url + "/scores")
            if status != 200 or body.get("topUsers") != expected.top[boards[0]]:
                wrong.append("/scores")
            lookups: list[float] = []
            for board, probes in expected.probes.items():
                for user in probes:
                    t0 = time.perf_counter()
                    async with session.get(f"{server.url}/api/boards/{board}/users/{user}") as resp:
                        await resp.read()
                        if resp.status == 200:
                            lookups.append((time.perf_counter() - t0) * 1000)
            lookup_ms = median(lookups)
    finally:
        await server.stop()
    event = server.event("storage_ready")
    storage_ms = float(event["ms"]) if event else math.nan
    return Start(store, users, run, ready_s, board_s, not wrong, storage_ms, lookup_ms, len(boards), wrong)


# -- the comparison -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartupConfig:
    """What to compare."""

    stores: Sequence[str]
    users: int
    runs: int
    pg_admin_url: str
    workdir: Path
    target_s: float = 2.0
    tree: Path | None = None
    boards: int = 3


async def compare(
    cfg: StartupConfig, echo: Callable[[str], None] = print
) -> tuple[list[Start], dict[str, float]]:
    """Seed, then alternate empty and seeded starts per store; returns the starts and seed times."""
    starts: list[Start] = []
    seed_s: dict[str, float] = {}
    boards = board_ids(cfg.boards)
    catalog = write_catalog(cfg.workdir, boards)
    expected: dict[int, Expected] = {}
    for store in cfg.stores:
        urls: dict[int, str] = {}
        try:
            for users in (0, cfg.users):
                urls[users], seasons, took = await prepare(
                    store, users, boards, cfg.workdir, cfg.pg_admin_url
                )
                if users:
                    seed_s[store] = took
                    echo(f"{store}: seeded {users:,} users on each of {len(boards)} boards in {took:.1f} s")
                if users not in expected:
                    expected[users] = expected_for(users, boards, seasons)
            for run in range(1, cfg.runs + 1):
                for users in (0, cfg.users):
                    s = await measure_start(
                        store=store,
                        url=urls[users],
                        users=users,
                        run=run,
                        expected=expected[users],
                        catalog=catalog,
                        workdir=cfg.workdir,
                        tree=cfg.tree,
                    )
                    starts.append(s)
                    verdict = "correct" if s.board_ok else f"WRONG ({', '.join(s.wrong)})"
                    echo(
                        f"[run {run}] {store:8} {users:>9,} users x {s.boards}: "
                        f"ready {s.ready_s * 1000:7.0f} ms, boards {verdict} at {s.board_s * 1000:7.0f} ms, "
                        f"storage_ready {fmt(s.storage_ready_ms, 1)} ms, rank lookup {fmt(s.lookup_ms, 1)} ms"
                    )
        finally:
            for url in urls.values():
                await discard(url, cfg.pg_admin_url)
    return starts, seed_s


def summary(starts: Sequence[Start], seed_s: dict[str, float], cfg: StartupConfig) -> str:
    """Medians per store and database size."""
    rows: list[list[object]] = []
    for store in cfg.stores:
        for users in (0, cfg.users):
            runs = [s for s in starts if s.store == store and s.users == users]
            if not runs:
                continue
            ready = median([s.ready_s for s in runs])
            low, high = min(s.ready_s for s in runs), max(s.ready_s for s in runs)
            board = median([s.board_s for s in runs])
            verdict = "-" if not users else ("yes" if board < cfg.target_s else "NO")
            rows.append(
                [
                    store,
                    f"{users:,}",
                    cfg.boards,
                    fmt(ready * 1000, 0),
                    f"{fmt(low * 1000, 0)}-{fmt(high * 1000, 0)}",
                    fmt(board * 1000, 0),
                    f"{sum(s.board_ok for s in runs)}/{len(runs)}",
                    fmt(median([s.storage_ready_ms for s in runs]), 1),
                    fmt(median([s.lookup_ms for s in runs]), 1),
                    fmt(seed_s.get(store, math.nan), 1) if users else "-",
                    verdict,
                ]
            )
    headers = ["store", "users", "boards", "ready ms", "range", "boards ok ms", "boards correct"]
    headers += ["storage_ready ms", "mid-rank lookup ms", "seed s", f"< {cfg.target_s:g} s"]
    return format_table(headers, rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stores", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    p.add_argument(
        "--users", type=int, default=1_000_000, help="users seeded on each board (default 1000000)"
    )
    p.add_argument("--boards", type=int, default=3, help="boards in the catalog, all seeded (default 3)")
    p.add_argument("--runs", type=int, default=5, help="starts per database (default 5)")
    p.add_argument("--target", type=float, default=2.0, help="seconds the seeded start must beat (default 2)")
    p.add_argument("--pg-url", default=default_pg_url(), help="admin URL to create scratch databases with")
    p.add_argument("--tree", type=Path, help="checkout whose server package runs (default: this one)")
    p.add_argument("--client-cpu", type=int, default=CLIENT_CPU, help="CPU for this process (default 1)")
    args = p.parse_args(argv)
    if not 1 <= args.users <= MAX_USERS:
        p.error(f"--users must be from 1 to {MAX_USERS:,}")
    if args.boards < 1:
        p.error("--boards must be at least 1")
    pin_to_cpu(args.client_cpu)
    with tempfile.TemporaryDirectory(prefix="sb-startup-") as tmp:
        cfg = StartupConfig(
            stores=[s.strip() for s in args.stores.split(",") if s.strip()],
            users=args.users,
            runs=args.runs,
            pg_admin_url=args.pg_url,
            workdir=Path(tmp),
            target_s=args.target,
            tree=args.tree.resolve() if args.tree else None,
            boards=args.boards,
        )
        print(
            f"start-up: empty vs {cfg.users:,} users on each of {cfg.boards} boards, {cfg.runs} alternated "
            "runs per store, server on CPU 0"
        )
        starts, seed_s = uvloop.run(compare(cfg))
    print()
    print(summary(starts, seed_s, cfg))
    ok = all(s.board_ok for s in starts)
    seeded = [s for s in starts if s.users]
    met = all(median([s.board_s for s in seeded if s.store == store]) < cfg.target_s for store in cfg.stores)
    return 0 if ok and met else 1


if __name__ == "__main__":
    raise SystemExit(main())
