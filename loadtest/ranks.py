"""Rank reads with 1,000,000 players, and what keeping every rank in memory costs.

For each store it seeds one database with `--users` players (default
1,000,000) on the default board `global`, with startup.py's own seeding
(the server's migrations, then one INSERT of the formula: distinct ids
`u0000001` ..., skewed scores, distinct `reached_at` stamps), and computes the
expected ranking from the same formula in Python. Then, per round, servers
started on it (`python -m server serve`, pinned to CPU 0; this script and its
load generator on CPU 1) in both rank modes, `SCOREBOARD_RANKS=memory` (every
rank in memory, the default) and `SCOREBOARD_RANKS=store` (the baseline:
database queries), one after the other:

1. Reads. After a check of a few answers of each read against the expected
   ranking, closed-loop load over `--connections` keep-alive connections for
   `--duration` seconds (memory), or `--store-connections` (default 2) for
   `--store-duration` seconds (store: a read there can take a second, and 16
   of them queued would leave a few seconds' window without an answer),
   after one second of warm-up, each read in turn: a player's rank
   (`GET /api/boards/global/users/{id}`), around-me (`.../users/{id}/around?count=5`),
   a page in the middle of the board (`/api/boards/global/scores?offset=N/2&limit=10`:
   offset 500,000 for 1M players) and a friends list of 20 ids
   (`/api/boards/global/users?ids=a,b,...`), every request with other
   random players of the seeded population. The generator is wrk, one
   thread, with a generated Lua script that picks the ids (`apt-get install
   wrk`), or, without wrk (or with `--client asyncio`), an aiohttp client
   working through a list of random paths. Between two loads the script
   waits until the server (and PostgreSQL) is idle again, so that a backlog
   of slow store queries does not spill into the next figure. Latency of a
   closed loop is about connections / throughput plus its spread: the p99
   target is met at `--connections` in flight (default 16).
2. Updates. `POST /scores/update` with http_updates.py's generator (closed
   loop, `--update-connections` connections, 1 s warm-up, `--duration`
   seconds), crediting random seeded players (deltas 1-9), on a fresh copy
   of the seeded database per run, memory and store alternated; checked
   against the ledger afterwards (every 200 is one action and one credit,
   the credits sum to the deltas answered 200, the scores grew by as much, no
   player added). Updates/s, latency, server CPU per update, and the ratio
   memory / store paired by round.
3. Start-up: time from just before the spawn until `GET /readyz` answers 200
   (top K served, updates accepted) and until its body says
   `"ranks": "memory"` (every rank served from memory), polled every 5 ms.
4. Memory: VmRSS of the server (/proc/<pid>/status) after start-up and a
   full `gc.collect()` (the server runs under a `python -c` prelude that
   installs a SIGUSR1 handler for it and logs `loadtest_gc`), memory minus
   store on the same database, divided by the players.

Run (from the repository root, in the venv):

    python -m loadtest.ranks                                   # SQLite, 1M players, 3 rounds
    python -m loadtest.ranks --stores sqlite,postgres --rounds 3
    python -m loadtest.ranks --users 20000 --rounds 1 --duration 3   # a quick look

Prints one line per start, read and update run, then a table of medians per
part: reads (requests/s and its range, p50/p99 ms, server CPU per request,
generator CPU), updates, start-up and memory. Exits 1, naming what failed,
if a read's answer was wrong, an update run's ledger check failed, a mode
could not be measured (e.g. a server without SCOREBOARD_RANKS), or a target
was missed: >= 5,000 requests/s and p99 < 10 ms for rank, around and page
from memory; updates with ranks in memory >= 0.9x those without; < 200
bytes of RSS per ranked player.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import resource
import shutil
import signal
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import uvloop

from loadtest.common import (
    CLIENT_CPU,
    DEFAULT_BOARD,
    SERVER_CPU,
    LedgerTotals,
    ServerProcess,
    clone_database,
    database_name,
    default_pg_url,
    discard_database,
    fmt,
    format_table,
    ledger_totals,
    median,
    percentile,
    pin_to_cpu,
    rss_bytes,
    write_catalog,
)
from loadtest.http_updates import Driver, Load, LoadShape
from loadtest.startup import BASE_US, MAX_USERS, prepare, seeded_user

BOARD = DEFAULT_BOARD
MODES = ("memory", "store")
READS = ("rank", "around", "page", "friends")
TARGETED_READS = ("rank", "around", "page")
AROUND_COUNT = 5
PAGE_LIMIT = 10
FRIENDS = 20
CHECK_SAMPLES = 5

TARGET_RPS = 5_000.0
TARGET_P99_MS = 10.0
TARGET_UPDATE_RATIO = 0.9
TARGET_BYTES_PER_PLAYER = 200.0

Echo = Callable[[str], None]


def player_id(i: int) -> str:
    """The id of seeded player i (startup.py's formula)."""
    return f"u{i:07d}"


# -- the server, with a way to ask it for a full collection ---------------------------

# `python -c` instead of `python -m server`: the same server, plus a SIGUSR1
# handler that runs `gc.collect()` and logs one JSON line, so memory is read
# after a collection without changing the server.
_GC_PRELUDE = """\
import gc, runpy, signal, sys
def _collect(signum, frame):
    found = gc.collect()
    sys.stderr.write('{"event": "loadtest_gc", "collected": %d}\\n' % found)
    sys.stderr.flush()
signal.signal(signal.SIGUSR1, _collect)
runpy.run_module("server", run_name="__main__", alter_sys=True)
"""


class RankServer(ServerProcess):
    """The server under the gc prelude (see `_GC_PRELUDE`)."""

    def command(self) -> list[str]:
        """`... python -c <prelude> serve ...` in place of `... python -m server serve ...`."""
        argv = super().command()
        at = argv.index("-m")
        return [*argv[:at], "-c", _GC_PRELUDE, *argv[at + 2 :]]

    async def collect_garbage(self, timeout_s: float = 10.0) -> bool:
        """Send SIGUSR1 and wait for the `loadtest_gc` line; False if it never came."""
        before = sum(1 for e in self.log_events() if e.get("event") == "loadtest_gc")
        if self.proc is None or self.proc.poll() is not None:
            return False
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
            if sum(1 for e in self.log_events() if e.get("event") == "loadtest_gc") > before:
                return True
        return False


@dataclass(slots=True)
class Start:
    """One server start: when /readyz said what."""

    store: str
    mode: str
    round: int
    ready_s: float = math.nan  # first 200
    mode_s: float = math.nan  # first body with "ranks" equal to the mode asked for
    ranks_seen: str | None = None  # the last "ranks" value /readyz showed
    rss: float = math.nan
    gc_ok: bool = False


async def watch_start(server: ServerProcess, start: Start, timeout_s: float, poll_s: float = 0.005) -> None:
    """Poll /readyz until it says `"ranks": start.mode` (or answers 200 without any "ranks")."""
    deadline = time.perf_counter() + timeout_s
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.perf_counter() < deadline:
            if server.proc is not None and server.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {server.proc.returncode}:\n{server.log_tail()}")
            try:
                async with session.get(server.url + "/readyz") as resp:
                    raw = await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, OSError, TimeoutError):
                await asyncio.sleep(poll_s)
                continue
            now = time.perf_counter() - server.started_at
            body: Any = None
            with contextlib.suppress(orjson.JSONDecodeError):
                body = orjson.loads(raw)
            ranks = body.get("ranks") if isinstance(body, dict) else None
            start.ranks_seen = ranks if isinstance(ranks, str) else None
            if status == 200 and math.isnan(start.ready_s):
                start.ready_s = now
            if ranks == start.mode:
                start.mode_s = now
                return
            if status == 200 and ranks is None:
                return  # a server that does not report its rank mode
            await asyncio.sleep(poll_s)
    raise RuntimeError(
        f"/readyz did not say ranks={start.mode!r} within {timeout_s:g} s "
        f"(last: {start.ranks_seen!r}):\n{server.log_tail()}"
    )


async def settle(server: ServerProcess, url: str, pg_admin_url: str, timeout_s: float = 120.0) -> None:
    """Wait until the server uses no CPU and runs no PostgreSQL query (a backlog has drained)."""
    quiet = 0
    deadline = time.perf_counter() + timeout_s
    pg = None if url.startswith("sqlite:") else await asyncpg.connect(pg_admin_url, timeout=10)
    try:
        while quiet < 2 and time.perf_counter() < deadline:
            before = server.cpu_seconds()
            await asyncio.sleep(0.2)
            busy = server.cpu_seconds() - before > 0.02
            if pg is not None and not busy:
                active = await pg.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state = 'active'",
                    database_name(url),
                )
                busy = bool(active)
            quiet = 0 if busy else quiet + 1
    finally:
        if pg is not None:
            await pg.close()


# -- the expected answers ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ranking:
    """The seeded board in ranking order, from the formula."""

    users: int
    order: array[int]  # order[r - 1]: the seed number of rank r
    rank_of: array[int]  # rank_of[i]: the rank of seed number i (index 0 unused)


def expected_ranking(users: int) -> Ranking:
    """Sort the formula's players by the ranking rule (better score, earlier reached_at, id)."""
    # One int per player, (score descending, reached_at, i) in its bits: a
    # million tuples would take ~150 MB of this process.
    top_score, stamp_bits, index_bits = 1 << 21, 42, 24
    keys: list[int] = []
    for i in range(1, users + 1):
        u = seeded_user(i)
        stamp = u.reached_at - BASE_US
        if not (0 < u.score < top_score and 0 <= stamp < 1 << stamp_bits and i < 1 << index_bits):
            raise ValueError(f"player {i} does not fit the packed sort key")
        keys.append(((top_score - u.score) << (stamp_bits + index_bits)) | (stamp << index_bits) | i)
    keys.sort()
    mask = (1 << index_bits) - 1
    order = array("l", (k & mask for k in keys))
    rank_of = array("l", bytes(8 * (users + 1)))
    for rank, i in enumerate(order, start=1):
        rank_of[i] = rank
    return Ranking(users, order, rank_of)


def page_offset(users: int) -> int:
    """The offset of the page read: the middle of the board (500,000 for 1M players)."""
    return users // 2


def _entry_problem(entry: Any, rank: int, ranking: Ranking) -> str | None:
    i = ranking.order[rank - 1]
    u = seeded_user(i)
    want = {"rank": rank, "userId": u.user_id, "username": u.username, "score": u.score}
    got = {k: entry.get(k) for k in want} if isinstance(entry, dict) else entry
    return None if got == want else f"rank {rank}: want {want}, got {got}"


async def check_reads(
    session: aiohttp.ClientSession, base: str, ranking: Ranking, rnd: random.Random
) -> list[str]:
    """A few answers of each read compared with the expected ranking; the problems found."""
    users = ranking.users
    board = f"{base}/api/boards/{BOARD}"
    problems: list[str] = []

    async def get(path: str) -> Any:
        async with session.get(board + path) as resp:
            body = await resp.read()
            if resp.status != 200:
                problems.append(f"GET {path[:80]}: {resp.status} {body[:200]!r}")
                return None
            doc = orjson.loads(body)
            if doc.get("total") != users:
                problems.append(f"GET {path[:80]}: total {doc.get('total')}, want {users}")
            return doc

    def entries(path: str, doc: Any, ranks: Sequence[int]) -> None:
        got = doc.get("entries") if isinstance(doc, dict) else None
        if not isinstance(got, list) or len(got) != len(ranks):
            problems.append(f"GET {path[:80]}: want ranks {ranks[0]}..{ranks[-1]}, got {str(got)[:200]}")
            return
        for entry, rank in zip(got, ranks, strict=True):
            problem = _entry_problem(entry, rank, ranking)
            if problem:
                problems.append(f"GET {path[:80]}: {problem}")
                return

    for _ in range(CHECK_SAMPLES):
        i = rnd.randint(1, users)
        rank = ranking.rank_of[i]
        path = f"/users/{player_id(i)}"
        doc = await get(path)
        if doc is not None:
            problem = _entry_problem(doc, rank, ranking)
            if problem:
                problems.append(f"GET {path}: {problem}")
        path = f"/users/{player_id(i)}/around?count={AROUND_COUNT}"
        size = min(users, 2 * AROUND_COUNT + 1)
        first = max(0, min(rank - 1 - AROUND_COUNT, users - size))
        doc = await get(path)
        if doc is not None:
            entries(path, doc, range(first + 1, first + size + 1))
        ids = [rnd.randint(1, users) for _ in range(FRIENDS)]
        path = "/users?ids=" + ",".join(player_id(j) for j in ids)
        doc = await get(path)
        if doc is not None:
            entries(path, doc, sorted({ranking.rank_of[j] for j in ids}))
    offset = page_offset(users)
    path = f"/scores?offset={offset}&limit={PAGE_LIMIT}"
    doc = await get(path)
    if doc is not None:
        entries(path, doc, range(offset + 1, min(users, offset + PAGE_LIMIT) + 1))
    return problems


# -- read load -------------------------------------------------------------------------------

# Placeholders @USERS@, @OFFSET@, @SEED@ and @READ@ are filled in per run.
_WRK_SCRIPT = """\
-- Written by loadtest/ranks.py: GET one read of the global board, random seeded players.
local users, offset = @USERS@, @OFFSET@
math.randomseed(@SEED@)
local random, format, concat = math.random, string.format, table.concat
local board = "/api/boards/@BOARD@"
local function player() return format("u%07d", random(1, users)) end
local paths = {
  rank = function() return board .. "/users/" .. player() end,
  around = function() return board .. "/users/" .. player() .. "/around?count=@AROUND@" end,
  page = function() return board .. "/scores?offset=" .. offset .. "&limit=@LIMIT@" end,
  friends = function()
    local ids = {}
    for n = 1, @FRIENDS@ do ids[n] = player() end
    return board .. "/users?ids=" .. concat(ids, ",")
  end,
}
local path = paths["@READ@"]
request = function() return wrk.format("GET", path()) end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(format(
    'RESULT {"requests": %d, "duration_us": %d, "status": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "timeout": %d, "p50_us": %.0f, "p99_us": %.0f}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_script(read: str, users: int, seed: int) -> str:
    """The Lua script that makes wrk send `read` requests for random seeded players."""
    values = {
        "@USERS@": str(users),
        "@OFFSET@": str(page_offset(users)),
        "@SEED@": str(seed),
        "@BOARD@": BOARD,
        "@AROUND@": str(AROUND_COUNT),
        "@LIMIT@": str(PAGE_LIMIT),
        "@FRIENDS@": str(FRIENDS),
        "@READ@": read,
    }
    text = _WRK_SCRIPT
    for key, value in values.items():
        text = text.replace(key, value)
    return text


def read_paths(read: str, users: int, rnd: random.Random, count: int) -> list[str]:
    """`count` request paths of `read` for random seeded players (the asyncio generator's list)."""
    board = f"/api/boards/{BOARD}"
    if read == "page":
        return [f"{board}/scores?offset={page_offset(users)}&limit={PAGE_LIMIT}"]
    out = []
    for _ in range(count):
        if read == "friends":
            ids = ",".join(player_id(rnd.randint(1, users)) for _ in range(FRIENDS))
            out.append(f"{board}/users?ids={ids}")
        else:
            tail = f"/around?count={AROUND_COUNT}" if read == "around" else ""
            out.append(f"{board}/users/{player_id(rnd.randint(1, users))}{tail}")
    return out


@dataclass(slots=True)
class Reads:
    """One read load on one server."""

    store: str
    mode: str
    read: str
    round: int
    seconds: float = math.nan
    requests: int = 0
    rps: float = math.nan
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    errors: dict[str, int] = field(default_factory=dict)
    server_cpu_s: float = math.nan
    client_cpu_s: float = math.nan

    @property
    def server_us(self) -> float:
        """Server CPU microseconds per request."""
        return 1e6 * self.server_cpu_s / self.requests if self.requests else math.nan

    @property
    def client_pct(self) -> float:
        """The generator's CPU, % of one core."""
        return 100 * self.client_cpu_s / self.seconds if self.seconds > 0 else math.nan


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def _wrk(argv: list[str], bound_s: float) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), bound_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"wrk did not finish within {bound_s:g} s") from None
    for line in out.decode(errors="replace").splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = orjson.loads(line[len("RESULT ") :])
            return result
    raise RuntimeError(f"wrk printed no result (exit {proc.returncode}):\n{out.decode(errors='replace')}")


async def load_wrk(
    wrk: str,
    server: ServerProcess,
    result: Reads,
    *,
    script: Path,
    cfg: Config,
    connections: int,
    duration_s: int,
) -> None:
    """A warm-up second and `duration_s` measured seconds of wrk (one thread, this CPU)."""
    base = [wrk, "-t1", f"-c{connections}", "--timeout", f"{cfg.read_timeout_s:g}s", "-s", str(script)]
    await _wrk([*base, "-d1s", server.url], 1 + cfg.read_timeout_s + 30)
    await settle(server, server.database_url, cfg.pg_admin_url)
    cpu0, client0 = server.cpu_seconds(), _children_cpu()
    got = await _wrk([*base, f"-d{duration_s}s", server.url], duration_s + cfg.read_timeout_s + 30)
    result.server_cpu_s = server.cpu_seconds() - cpu0
    result.client_cpu_s = _children_cpu() - client0
    result.seconds = got["duration_us"] / 1e6
    errors = {k: int(got[k]) for k in ("status", "connect", "read", "write", "timeout") if got[k]}
    result.errors = {("non-200" if k == "status" else k): v for k, v in errors.items()}
    result.requests = int(got["requests"]) - errors.get("status", 0)
    result.rps = result.requests / result.seconds if result.seconds > 0 else math.nan
    if result.requests:  # wrk's percentiles include the non-200 answers
        result.p50_ms = got["p50_us"] / 1000
        result.p99_ms = got["p99_us"] / 1000


async def load_asyncio(
    server: ServerProcess,
    result: Reads,
    paths: Sequence[str],
    *,
    cfg: Config,
    connections: int,
    duration_s: int,
) -> None:
    """The same load from an aiohttp client: `connections` workers going through `paths`."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    ok = 0
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=cfg.read_timeout_s)
    async with aiohttp.ClientSession(server.url, connector=connector, timeout=timeout) as session:
        t_measure = time.perf_counter() + 1.0
        t_end = t_measure + duration_s

        async def worker(w: int) -> None:
            nonlocal ok
            n = w
            while (started := time.perf_counter()) < t_end:
                try:
                    async with session.get(paths[n % len(paths)]) as resp:
                        await resp.read()
                        status = resp.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors[type(exc).__name__] += 1
                    continue
                finally:
                    n += connections
                ended = time.perf_counter()
                if started >= t_measure and ended <= t_end:
                    if status == 200:
                        ok += 1
                        latencies.append(ended - started)
                    else:
                        errors["non-200"] += 1

        async def sample() -> tuple[float, float, float]:
            await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
            cpu0, client0, t0 = server.cpu_seconds(), time.process_time(), time.perf_counter()
            await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
            t1 = time.perf_counter()
            return server.cpu_seconds() - cpu0, time.process_time() - client0, t1 - t0

        sampler = asyncio.create_task(sample())
        await asyncio.gather(*(worker(w) for w in range(connections)))
        result.server_cpu_s, result.client_cpu_s, result.seconds = await sampler
    latencies.sort()
    result.requests = ok
    result.errors = dict(errors)
    result.rps = ok / result.seconds
    result.p50_ms = percentile(latencies, 50) * 1000
    result.p99_ms = percentile(latencies, 99) * 1000


# -- updates -----------------------------------------------------------------------------------


class SeededUpdates(Driver):
    """http_updates.py's generator, crediting random seeded players (`u0000001` ...)."""

    def body(self, rnd: random.Random, worker: int, seq: int) -> tuple[bytes, int]:
        """A plain update of one seeded player, with a unique action id, and its delta."""
        delta = rnd.randint(1, self.shape.max_delta)
        user = rnd.randint(1, self.shape.users)
        action = b"%s-%d-%d" % (self.tag, worker, seq)
        return b'{"userId":"u%07d","scoreDelta":%d,"actionId":"%s"}' % (user, delta, action), delta


@dataclass(slots=True)
class Updates:
    """One update run."""

    store: str
    mode: str
    round: int
    rate: float = math.nan
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    server_us: float = math.nan
    server_pct: float = math.nan
    client_pct: float = math.nan
    check: bool = False
    detail: str = ""


def verify_updates(
    load: Load, before: LedgerTotals, after: LedgerTotals, committed: int | None, users: int
) -> tuple[bool, str]:
    """Did the store credit exactly what was answered 200, to seeded players only?"""
    ok = load.statuses.get(200, 0)
    b0, b1 = before.boards[BOARD], after.boards[BOARD]
    problems = []
    if after.actions - before.actions != ok:
        problems.append(f"200s={ok} but {after.actions - before.actions} new actions")
    if b1.credits - b0.credits != ok:
        problems.append(f"200s={ok} but {b1.credits - b0.credits} new credits")
    if b1.value_sum - b0.value_sum != load.ok_delta_sum:
        problems.append(
            f"200s credited {load.ok_delta_sum}, the new credits sum to {b1.value_sum - b0.value_sum}"
        )
    if b1.score_sum - b0.score_sum != b1.value_sum - b0.value_sum:
        problems.append(
            f"scores grew by {b1.score_sum - b0.score_sum}, credits by {b1.value_sum - b0.value_sum}"
        )
    if b1.entries != users:
        problems.append(f"{b1.entries} players, want {users}")
    if committed is not None and committed != ok:
        problems.append(f"writer committed {committed}, 200s={ok}")
    others = {k: v for k, v in load.statuses.items() if k != 200}
    if others or load.errors:
        problems.append(f"other answers {others} {dict(load.errors)}")
    return not problems, "; ".join(problems) or f"{ok} x 200 == {after.actions - before.actions} actions"


# -- the run -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Config:
    """What to measure."""

    stores: Sequence[str]
    users: int
    rounds: int
    duration_s: int
    store_duration_s: int
    connections: int
    store_connections: int
    update_connections: int
    pg_admin_url: str
    workdir: Path
    client: str  # wrk or asyncio
    wrk: str | None
    tree: Path | None = None
    read_timeout_s: float = 30.0
    load_timeout_s: float = 300.0


@dataclass(slots=True)
class Results:
    """Everything measured, and what went wrong."""

    starts: list[Start] = field(default_factory=list)
    reads: list[Reads] = field(default_factory=list)
    updates: list[Updates] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seed_s: dict[str, float] = field(default_factory=dict)


async def read_server(
    cfg: Config,
    *,
    store: str,
    mode: str,
    round_no: int,
    url: str,
    ranking: Ranking,
    out: Results,
    echo: Echo,
) -> None:
    """Start a server in `mode` on the seeded database: start-up, memory, checks, the read loads."""
    catalog = write_catalog(cfg.workdir, [BOARD])
    server = RankServer(
        database_url=url,
        workdir=cfg.workdir,
        flags={"catalog-file": str(catalog)},
        cpu=SERVER_CPU,
        env={"SCOREBOARD_RANKS": mode},
        tree=cfg.tree,
    )
    start = Start(store, mode, round_no)
    out.starts.append(start)
    server.start()
    try:
        await watch_start(server, start, cfg.load_timeout_s)
        start.gc_ok = await server.collect_garbage()
        await asyncio.sleep(0.2)
        start.rss = rss_bytes(server.pid)
        echo(
            f"[round {round_no}] {store:8} {mode:6} start: ready {fmt(start.ready_s * 1000, 0)} ms, "
            f'"ranks": "{mode}" at {fmt(start.mode_s * 1000, 0)} ms (last seen {start.ranks_seen!r}), '
            f"RSS {fmt(start.rss / 2**20, 1)} MiB{'' if start.gc_ok else ' (no gc: prelude not answering)'}"
        )
        if start.ranks_seen != mode:
            out.problems.append(
                f"{store}: /readyz never said ranks={mode!r} (saw {start.ranks_seen!r}): "
                "the server has no SCOREBOARD_RANKS yet?"
            )
        timeout = aiohttp.ClientTimeout(total=cfg.read_timeout_s * 4)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            wrong = await check_reads(session, server.url, ranking, random.Random(round_no))
        if wrong:
            out.problems.append(f"{store} {mode}, round {round_no}: {len(wrong)} wrong answers, first:")
            out.problems += [f"  {problem}" for problem in wrong[:3]]
        echo(
            f"[round {round_no}] {store:8} {mode:6} reads checked: "
            + (f"{len(wrong)} WRONG" if wrong else "ok")
        )
        duration = cfg.duration_s if mode == "memory" else cfg.store_duration_s
        connections = cfg.connections if mode == "memory" else cfg.store_connections
        for n, read in enumerate(READS):
            result = Reads(store, mode, read, round_no)
            await settle(server, url, cfg.pg_admin_url)
            seed = round_no * 100 + n
            if cfg.client == "wrk" and cfg.wrk is not None:
                script = cfg.workdir / f"{read}.lua"
                script.write_text(wrk_script(read, ranking.users, seed), encoding="utf-8")
                await load_wrk(
                    cfg.wrk,
                    server,
                    result,
                    script=script,
                    cfg=cfg,
                    connections=connections,
                    duration_s=duration,
                )
            else:
                paths = read_paths(read, ranking.users, random.Random(seed), 20_000)
                await load_asyncio(
                    server, result, paths, cfg=cfg, connections=connections, duration_s=duration
                )
            out.reads.append(result)
            if result.errors:
                out.problems.append(f"{store} {mode} {read} reads, round {round_no}: errors {result.errors}")
            echo(
                f"[round {round_no}] {store:8} {mode:6} {read:8} {_rate(result.rps):>8} req/s  "
                f"p50 {fmt(result.p50_ms, 2):>8} ms  p99 {fmt(result.p99_ms, 2):>8} ms  "
                f"server {fmt(result.server_us, 0)} us/req  client {fmt(result.client_pct, 0)}%"
                + (f"  errors {result.errors}" if result.errors else "")
            )
    finally:
        await server.stop()


async def update_run(
    cfg: Config, *, store: str, mode: str, round_no: int, seeded: str, before: LedgerTotals, echo: Echo
) -> Updates:
    """Updates on a fresh copy of the seeded database, ranks in `mode` (in memory before the load)."""
    url = await clone_database(seeded, cfg.pg_admin_url)
    result = Updates(store, mode, round_no)
    try:
        server = ServerProcess(
            database_url=url,
            workdir=cfg.workdir,
            flags={"catalog-file": str(write_catalog(cfg.workdir, [BOARD]))},
            cpu=SERVER_CPU,
            env={"SCOREBOARD_RANKS": mode},
            tree=cfg.tree,
        )
        server.start()
        try:
            await watch_start(server, Start(store, mode, round_no), cfg.load_timeout_s)
            shape = LoadShape(
                duration_s=cfg.duration_s,
                warmup_s=1.0,
                connections=cfg.update_connections,
                users=cfg.users,
                rate=None,
            )
            driver = SeededUpdates(server.url, shape, f"r{round_no}{mode}{store}", server.cpu_seconds)
            load = await driver.run()
        finally:
            await server.stop()
        closed = server.event("writer_closed")
        after = await ledger_totals(url)
    finally:
        await discard_database(url, cfg.pg_admin_url)
    result.check, result.detail = verify_updates(
        load, before, after, int(closed["committed"]) if closed else None, cfg.users
    )
    window = load.window_s
    result.rate = load.window_ok / window if window > 0 else math.nan
    result.p50_ms = percentile(load.latencies, 50) * 1000
    result.p99_ms = percentile(load.latencies, 99) * 1000
    result.server_us = 1e6 * load.server_cpu_s / load.window_ok if load.window_ok else math.nan
    result.server_pct = 100 * load.server_cpu_s / window if window > 0 else math.nan
    result.client_pct = 100 * load.client_cpu_s / window if window > 0 else math.nan
    echo(
        f"[round {round_no}] {store:8} {mode:6} updates {fmt(result.rate, 0):>8} upd/s  "
        f"p50 {fmt(result.p50_ms, 2):>7} ms  p99 {fmt(result.p99_ms, 2):>7} ms  "
        f"server {fmt(result.server_pct, 0)}% {fmt(result.server_us, 0)} us/upd  "
        f"client {fmt(result.client_pct, 0)}%  "
        + ("ok" if result.check else f"CHECK FAILED: {result.detail}")
    )
    return result


async def run_all(cfg: Config, ranking: Ranking, echo: Echo = print) -> Results:
    """Per store: seed, then rounds of (reads: memory, store; updates: memory, store)."""
    out = Results()
    for store in cfg.stores:
        url, _, took = await prepare(store, cfg.users, [BOARD], cfg.workdir, cfg.pg_admin_url)
        try:
            out.seed_s[store] = took
            echo(f"{store}: seeded {cfg.users:,} players in {took:.1f} s")
            before = await ledger_totals(url)
            for round_no in range(1, cfg.rounds + 1):
                for mode in MODES:
                    try:
                        await read_server(
                            cfg,
                            store=store,
                            mode=mode,
                            round_no=round_no,
                            url=url,
                            ranking=ranking,
                            out=out,
                            echo=echo,
                        )
                    except RuntimeError as exc:
                        out.problems.append(f"{store} {mode} reads, round {round_no}: {exc}")
                        echo(f"[round {round_no}] {store:8} {mode:6} FAILED: {exc}")
                for mode in MODES:
                    try:
                        result = await update_run(
                            cfg,
                            store=store,
                            mode=mode,
                            round_no=round_no,
                            seeded=url,
                            before=before,
                            echo=echo,
                        )
                    except RuntimeError as exc:
                        out.problems.append(f"{store} {mode} updates, round {round_no}: {exc}")
                        echo(f"[round {round_no}] {store:8} {mode:6} updates FAILED: {exc}")
                        continue
                    out.updates.append(result)
                    if not result.check:
                        out.problems.append(f"{store} {mode} updates, round {round_no}: {result.detail}")
        finally:
            await discard_database(url, cfg.pg_admin_url)
    return out


# -- the summary --------------------------------------------------------------------------------


def _range(values: Sequence[float], digits: int = 0) -> str:
    clean = [v for v in values if not math.isnan(v)]
    return f"{fmt(min(clean), digits)}-{fmt(max(clean), digits)}" if clean else "-"


def _rate_range(values: Sequence[float]) -> str:
    clean = [v for v in values if not math.isnan(v)]
    return f"{_rate(min(clean))}-{_rate(max(clean))}" if clean else "-"


def _rate(value: float) -> str:
    """A rate for a table: tenths below 100 (a store read can be 1.4/s)."""
    return fmt(value, 1 if value < 100 else 0)


def _times(ratio: float) -> str:
    return f"{ratio:,.0f}x" if ratio >= 10 else f"{ratio:.2f}x"


def _paired(a: Sequence[Any], b: Sequence[Any], value: Callable[[Any, Any], float]) -> list[float]:
    by_round = {x.round: x for x in b}
    return [value(x, by_round[x.round]) for x in a if x.round in by_round]


def reads_table(out: Results, cfg: Config, missed: list[str]) -> str:
    """Reads: medians per store, read and mode; appends the targets missed to `missed`."""
    rows: list[list[object]] = []
    for store in cfg.stores:
        for read in READS:
            base = [r.rps for r in out.reads if (r.store, r.mode, r.read) == (store, "store", read)]
            store_rps = median(base)
            for mode in MODES:
                runs = [r for r in out.reads if (r.store, r.mode, r.read) == (store, mode, read)]
                if not runs:
                    continue
                rps, p99 = median([r.rps for r in runs]), median([r.p99_ms for r in runs])
                verdict = "-"
                if mode == "memory" and read in TARGETED_READS:
                    verdict = "yes" if rps >= TARGET_RPS and p99 < TARGET_P99_MS else "NO"
                    if not rps >= TARGET_RPS:
                        missed.append(f"{store}: {read} {fmt(rps, 0)} req/s, target >= {TARGET_RPS:,.0f}")
                    if not p99 < TARGET_P99_MS:
                        missed.append(f"{store}: {read} p99 {fmt(p99, 2)} ms, target < {TARGET_P99_MS:g}")
                rows.append(
                    [
                        store,
                        read,
                        mode,
                        _rate(rps),
                        _rate_range([r.rps for r in runs]),
                        _times(rps / store_rps) if mode == "memory" and store_rps > 0 else "-",
                        fmt(median([r.p50_ms for r in runs]), 2),
                        fmt(p99, 2),
                        fmt(median([r.server_us for r in runs]), 0),
                        fmt(median([r.client_pct for r in runs]), 0),
                        sum(sum(r.errors.values()) for r in runs),
                        verdict,
                    ]
                )
    headers = ["store", "read", "ranks", "req/s", "range", "vs store", "p50 ms", "p99 ms"]
    headers += [
        "server CPU us/req",
        "client CPU %",
        "errors",
        f">= {TARGET_RPS:,.0f}/s, p99 < {TARGET_P99_MS:g}",
    ]
    title = f"Reads ({cfg.client}; connections: memory {cfg.connections}, store {cfg.store_connections})"
    return f"{title}:\n" + format_table(headers, rows)


def updates_table(out: Results, cfg: Config, missed: list[str]) -> str:
    """Updates: medians per store and mode, the paired ratio; appends the targets missed."""
    rows: list[list[object]] = []
    for store in cfg.stores:
        mem = [u for u in out.updates if (u.store, u.mode) == (store, "memory")]
        base = [u for u in out.updates if (u.store, u.mode) == (store, "store")]
        ratio = median(_paired(mem, base, lambda m, s: m.rate / s.rate if s.rate else math.nan))
        for mode, runs in (("memory", mem), ("store", base)):
            if not runs:
                continue
            verdict = "-"
            if mode == "memory":
                verdict = "yes" if ratio >= TARGET_UPDATE_RATIO else "NO"
                if not ratio >= TARGET_UPDATE_RATIO:
                    missed.append(
                        f"{store}: updates with ranks in memory {fmt(ratio, 2)}x those with store ranks, "
                        f"target >= {TARGET_UPDATE_RATIO:g}x"
                    )
            rows.append(
                [
                    store,
                    mode,
                    fmt(median([u.rate for u in runs]), 0),
                    _range([u.rate for u in runs]),
                    f"{fmt(ratio, 2)}x" if mode == "memory" else "-",
                    fmt(median([u.p50_ms for u in runs]), 2),
                    fmt(median([u.p99_ms for u in runs]), 2),
                    fmt(median([u.server_us for u in runs]), 0),
                    fmt(median([u.server_pct for u in runs]), 0),
                    fmt(median([u.client_pct for u in runs]), 0),
                    f"{sum(u.check for u in runs)}/{len(runs)} ok",
                    verdict,
                ]
            )
    headers = ["store", "ranks", "upd/s", "range", "vs store (paired)", "p50 ms", "p99 ms"]
    headers += ["server CPU us/upd", "server CPU %", "client CPU %", "ledger check"]
    headers.append(f">= {TARGET_UPDATE_RATIO:g}x")
    return f"Updates ({cfg.update_connections} connections):\n" + format_table(headers, rows)


def startup_table(out: Results, cfg: Config, missed: list[str]) -> str:
    """Start-up and memory: medians per store and mode; appends the targets missed."""
    rows: list[list[object]] = []
    for store in cfg.stores:
        mem = [s for s in out.starts if (s.store, s.mode) == (store, "memory")]
        base = [s for s in out.starts if (s.store, s.mode) == (store, "store")]
        per_player = _paired(mem, base, lambda m, s: (m.rss - s.rss) / cfg.users)
        per = median(per_player)
        for mode, runs in (("memory", mem), ("store", base)):
            if not runs:
                continue
            verdict = "-"
            if mode == "memory":
                verdict = "yes" if per < TARGET_BYTES_PER_PLAYER else "NO"
                if not per < TARGET_BYTES_PER_PLAYER:
                    missed.append(
                        f"{store}: {fmt(per, 0)} bytes of RSS per ranked player, "
                        f"target < {TARGET_BYTES_PER_PLAYER:g}"
                    )
            rows.append(
                [
                    store,
                    mode,
                    fmt(median([s.ready_s * 1000 for s in runs]), 0),
                    _range([s.ready_s * 1000 for s in runs]),
                    fmt(median([s.mode_s * 1000 for s in runs]), 0),
                    _range([s.mode_s * 1000 for s in runs]),
                    fmt(median([s.rss / 2**20 for s in runs]), 1),
                    fmt(per, 0) if mode == "memory" else "-",
                    _range(per_player) if mode == "memory" else "-",
                    verdict,
                ]
            )
    headers = ["store", "ranks", "ready ms", "range", '"ranks": mode ms', "range", "RSS MiB"]
    headers += ["bytes/player", "range", f"< {TARGET_BYTES_PER_PLAYER:g} B"]
    seeded = ", ".join(f"{store} {took:.1f} s" for store, took in out.seed_s.items())
    return f"Start-up and memory ({cfg.users:,} players; seeded: {seeded}):\n" + format_table(headers, rows)


def summary(out: Results, cfg: Config) -> tuple[str, list[str]]:
    """The tables of medians, and the targets missed."""
    missed: list[str] = []
    tables = [reads_table(out, cfg, missed), updates_table(out, cfg, missed), startup_table(out, cfg, missed)]
    return "\n\n".join(tables), missed


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stores", default="sqlite", help="comma-separated: sqlite, postgres (default sqlite)")
    p.add_argument("--users", type=int, default=1_000_000, help="players seeded (default 1000000)")
    p.add_argument("--rounds", type=int, default=3, help="alternation rounds (default 3)")
    p.add_argument(
        "--duration", type=int, default=8, help="measured seconds per memory read and update run (default 8)"
    )
    p.add_argument(
        "--store-duration", type=int, default=6, help="measured seconds per store read (default 6)"
    )
    p.add_argument("--connections", type=int, default=16, help="read connections (default 16)")
    p.add_argument(
        "--store-connections",
        type=int,
        default=2,
        help="read connections in store mode, where a read can take seconds (default 2)",
    )
    p.add_argument("--update-connections", type=int, default=64, help="update connections (default 64)")
    p.add_argument(
        "--client",
        choices=("auto", "wrk", "asyncio"),
        default="auto",
        help="read generator (default: wrk if found)",
    )
    p.add_argument("--pg-url", default=default_pg_url(), help="admin URL to create scratch databases with")
    p.add_argument("--tree", type=Path, help="checkout whose server package runs (default: this one)")
    p.add_argument("--client-cpu", type=int, default=CLIENT_CPU, help="CPU for this process (default 1)")
    args = p.parse_args(argv)
    if not 1 <= args.users <= MAX_USERS:
        p.error(f"--users must be from 1 to {MAX_USERS:,}")
    if args.duration < 1 or args.store_duration < 1 or args.rounds < 1:
        p.error("--duration, --store-duration and --rounds must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exits 1 if a check failed, a part could not be measured or a target was missed."""
    args = _args(argv)
    pin_to_cpu(args.client_cpu)
    wrk = shutil.which("wrk")
    client = args.client if args.client != "auto" else ("wrk" if wrk else "asyncio")
    if client == "wrk" and wrk is None:
        print("wrk not found (apt-get install wrk): using the asyncio generator")
        client = "asyncio"
    with tempfile.TemporaryDirectory(prefix="sb-ranks-") as tmp:
        cfg = Config(
            stores=[s.strip() for s in args.stores.split(",") if s.strip()],
            users=args.users,
            rounds=args.rounds,
            duration_s=args.duration,
            store_duration_s=args.store_duration,
            connections=args.connections,
            store_connections=args.store_connections,
            update_connections=args.update_connections,
            pg_admin_url=args.pg_url,
            workdir=Path(tmp),
            client=client,
            wrk=wrk,
            tree=args.tree.resolve() if args.tree else None,
        )
        print(
            f"ranks: {cfg.users:,} players, SCOREBOARD_RANKS memory vs store, {cfg.rounds} rounds; "
            f"reads {cfg.duration_s} s x {cfg.connections} conns (store {cfg.store_duration_s} s x "
            f"{cfg.store_connections}) with "
            f"{client}, updates {cfg.duration_s} s x {cfg.update_connections} conns; server on CPU "
            f"{SERVER_CPU}, client on CPU {args.client_cpu}"
        )
        started = time.perf_counter()
        ranking = expected_ranking(cfg.users)
        print(f"expected ranking computed in {time.perf_counter() - started:.1f} s")
        out = uvloop.run(run_all(cfg, ranking))
    table, missed = summary(out, cfg)
    print()
    print(table)
    failed = out.problems + missed
    if failed:
        print("\nFAILED:")
        for line in failed:
            print(line if line.startswith(" ") else f"- {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
