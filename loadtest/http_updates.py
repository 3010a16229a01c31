"""Throughput of `POST /scores/update` (ACK=commit) per store and writer setting.

Starts the server as a subprocess pinned to CPU 0 (`taskset -c 0`), on a fresh
database for every run (a SQLite file in a temp dir, or a new PostgreSQL
database that is dropped afterwards), pins itself to CPU 1, and drives
`--duration` seconds of service-token updates over `--connections` keep-alive
connections (aiohttp client on uvloop). Tokens are minted once and bodies are
formatted bytes with unique action ids, so the generator stays cheap.

Variants are compared side by side and alternated (A B C A B C ...), a fresh
server and database per run; the summary quotes medians over the rounds. A
variant is `default` or `+`-joined parts: `batch-N` (--flush-max-batch N),
`interval-X` (--flush-interval-ms X), `normal` (--sqlite-synchronous NORMAL),
`quiet` (--log-level warning), `pool-N` (--pg-pool-max N), `boards-N` (a
catalog of N incr boards, `global` the default plus `board2` ... `boardN`,
and every update writes all N in one action: `"scores": {"global": d,
"board2": d, ...}` with the same delta d on each; `boards-1` uses the same
form with `global` only), `tree=DIR` (run the `server` package of another
checkout, e.g. a patched copy, against this one). Without `boards-N` an
update is the plain `{"userId", "scoreDelta", "actionId"}` on the default
board, which an older checkout (before boards) also takes.

Every run is checked after the server stopped: the number of 200s must equal
the actions in the ledger; on every board written, the credits must equal
the 200s, their values must sum to the deltas acknowledged with 200, and the
board's scores must sum to the same (no lost or extra credits); no other
board may hold anything; and the writer's `committed` count (one per
credited action, whatever the boards it wrote) must equal the actions. A checkout made before
boards is read from its `scores_log` and `users` as the one board `global`.

Run (from the repository root, in the venv):

    python -m loadtest.http_updates                       # both stores, default variants
    python -m loadtest.http_updates --stores sqlite --duration 5 --rounds 3 \\
        --variants default,batch-1,interval-2,interval-5
    python -m loadtest.http_updates --rate 1000 ...       # open loop: fixed arrival rate
    python -m loadtest.http_updates --variants boards-1,boards-3   # one action on 1 vs 3 boards
    python -m loadtest.http_updates --profile /tmp/prof   # py-spy record of the server per run

Prints one line per run, then per store a table of medians: updates/s (and
its min-max over rounds), the ratio to the first variant, latency p50/p99 in
ms, mean updates per transaction (actions / distinct commit stamps),
CPU of the server process (% of one core, and CPU microseconds per
acknowledged update: the steadier figure on a noisy machine), CPU of this
generator (near 100% means the client, not the server, is the limit), and the
check. Per-core busy % from /proc/stat is kept in the JSON only: in this VM it
does not always agree with the processes' own accounting.
`--json PATH` also writes every run's raw figures.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import orjson
import uvloop

from loadtest.common import (
    CLIENT_CPU,
    JWT_SECRET,
    SERVER_CPU,
    BoardTotals,
    LedgerTotals,
    ServerProcess,
    board_ids,
    core_busy,
    core_ticks,
    default_pg_url,
    fmt,
    format_table,
    fresh_database,
    ledger_totals,
    median,
    percentile,
    pin_to_cpu,
    write_catalog,
)
from scoreboard.identity import Role
from scoreboard.tokens import mint_token

DEFAULT_VARIANTS = "default,batch-1,interval-0,interval-5"
_PART = re.compile(r"^(batch|interval|pool|boards)-(\d+(?:\.\d+)?)$")
MAX_BOARDS = 64  # boards one update may write (the server's limit)


# -- variants ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Variant:
    """A named set of `scoreboard serve` flags, and the boards each update writes."""

    name: str
    flags: dict[str, str]
    tree: Path | None = None
    # None: the plain `scoreDelta` form on the built-in catalog's one board;
    # N: a generated catalog of N boards, all written by every update.
    boards: int | None = None

    def board_ids(self) -> list[str]:
        """The boards every update writes (the default board alone without `boards-N`)."""
        return board_ids(self.boards or 1)

    def describe(self) -> str:
        """The flags as they would be typed (and the checkout, if not this one)."""
        text = " ".join(f"--{k} {v}" for k, v in self.flags.items()) or "(server defaults)"
        if self.boards is not None:
            text += f" --catalog-file <{self.boards} boards>, each update writes all {self.boards}"
        return text + (f" [server from {self.tree}]" if self.tree else "")


def parse_variant(spec: str) -> Variant:
    """`default`, or parts like `batch-1+interval-2` (see the module docstring)."""
    flags: dict[str, str] = {}
    tree: Path | None = None
    boards: int | None = None
    for part in spec.split("+"):
        if part == "default":
            continue
        if part.startswith("tree="):
            tree = Path(part[len("tree=") :]).resolve()
            continue
        if part == "normal":
            flags["sqlite-synchronous"] = "NORMAL"
            continue
        if part == "quiet":
            flags["log-level"] = "warning"
            continue
        m = _PART.match(part)
        if m is None:
            raise argparse.ArgumentTypeError(f"unknown variant part {part!r}")
        kind, value = m.groups()
        if kind == "batch":
            flags["flush-max-batch"] = str(int(float(value)))
        elif kind == "pool":
            flags["pg-pool-max"] = str(int(float(value)))
        elif kind == "boards":
            boards = int(float(value))
            if not 1 <= boards <= MAX_BOARDS:
                raise argparse.ArgumentTypeError(f"{part}: an update writes 1 to {MAX_BOARDS} boards")
        else:
            flags["flush-interval-ms"] = value
    return Variant(spec, flags, tree, boards)


# -- the load ------------------------------------------------------------------------


@dataclass(slots=True)
class Load:
    """What one run's client saw."""

    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    ok_delta_sum: int = 0
    sent: int = 0
    window_ok: int = 0
    latencies: list[float] = field(default_factory=list)
    window_s: float = math.nan
    server_cpu_s: float = math.nan
    client_cpu_s: float = math.nan
    core_busy: dict[int, float] = field(default_factory=dict)

    def record(
        self, status: int, delta: int, started: float, ended: float, window: tuple[float, float]
    ) -> None:
        """Count one answered request; latency counts if it ended inside the window."""
        self.statuses[status] += 1
        if status == 200:
            self.ok_delta_sum += delta
        if window[0] <= ended <= window[1]:
            self.latencies.append(ended - started)
            if status == 200:
                self.window_ok += 1


@dataclass(frozen=True, slots=True)
class LoadShape:
    """How hard and how long to push."""

    duration_s: float
    warmup_s: float
    connections: int
    users: int
    rate: float | None
    max_delta: int = 9
    timeout_s: float = 30.0


def service_headers(count: int) -> list[dict[str, str]]:
    """Pre-minted service-role tokens (one per simulated game backend)."""
    now = time.time()
    return [
        {
            "Authorization": "Bearer "
            + mint_token(
                JWT_SECRET.encode(), sub=f"game-backend-{i}", now=now, ttl_s=3600, role=Role.SERVICE
            ),
            "Content-Type": "application/json",
        }
        for i in range(count)
    ]


class Driver:
    """Sends updates to one server for one run and accounts for every answer."""

    def __init__(
        self,
        base_url: str,
        shape: LoadShape,
        tag: str,
        server_cpu: Callable[[], float],
        *,
        boards: Sequence[str] | None = None,
    ) -> None:
        self.url = base_url + "/scores/update"
        self.shape = shape
        self.tag = tag.encode()
        # `"global":%d,"board2":%d,...`: every board gets the update's delta.
        self.scores = b",".join(b'"%s":%%d' % b.encode() for b in boards) if boards else None
        self.board_count = len(boards) if boards else 0
        self.server_cpu = server_cpu
        self.headers = service_headers(4)
        self.load = Load()
        self.t_measure = 0.0
        self.t_end = 0.0

    def body(self, rnd: random.Random, worker: int, seq: int) -> tuple[bytes, int]:
        """A service update body with a unique action id, and its delta (on each board written)."""
        delta = rnd.randint(1, self.shape.max_delta)
        user = rnd.randrange(self.shape.users)
        action = b"%s-%d-%d" % (self.tag, worker, seq)
        if self.scores is None:
            return b'{"userId":"u%d","scoreDelta":%d,"actionId":"%s"}' % (user, delta, action), delta
        scores = self.scores % ((delta,) * self.board_count)
        return b'{"userId":"u%d","scores":{%s},"actionId":"%s"}' % (user, scores, action), delta

    async def _one(
        self, session: aiohttp.ClientSession, body: bytes, delta: int, started: float, wid: int
    ) -> None:
        self.load.sent += 1
        try:
            async with session.post(
                self.url, data=body, headers=self.headers[wid % len(self.headers)]
            ) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.load.errors[type(exc).__name__] += 1
            return
        self.load.record(status, delta, started, time.perf_counter(), (self.t_measure, self.t_end))

    async def _closed_worker(self, session: aiohttp.ClientSession, wid: int) -> None:
        rnd = random.Random(wid)
        seq = 0
        while time.perf_counter() < self.t_end:
            body, delta = self.body(rnd, wid, seq)
            seq += 1
            await self._one(session, body, delta, time.perf_counter(), wid)

    async def _open_loop(self, session: aiohttp.ClientSession, rate: float, t_start: float) -> None:
        # Latency is measured from each request's scheduled time, so a slow
        # server cannot hide its queueing (no coordinated omission).
        rnd = random.Random(0)
        tasks: set[asyncio.Task[None]] = set()
        n = 0
        due = t_start
        while due < self.t_end:
            now = time.perf_counter()
            while due <= now and due < self.t_end:
                body, delta = self.body(rnd, 0, n)
                task = asyncio.create_task(self._one(session, body, delta, due, n))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
                due = t_start + n / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
        if tasks:
            await asyncio.gather(*tasks)

    async def _sample(self) -> None:
        await asyncio.sleep(max(0.0, self.t_measure - time.perf_counter()))
        cpu0, ticks0, client0, t0 = self.server_cpu(), core_ticks(), time.process_time(), time.perf_counter()
        await asyncio.sleep(max(0.0, self.t_end - time.perf_counter()))
        cpu1, ticks1, client1, t1 = self.server_cpu(), core_ticks(), time.process_time(), time.perf_counter()
        self.load.window_s = t1 - t0
        self.load.server_cpu_s = cpu1 - cpu0
        self.load.client_cpu_s = client1 - client0
        self.load.core_busy = core_busy(ticks0, ticks1)

    async def run(self) -> Load:
        """Warm up, measure, then wait for every request still in flight."""
        shape = self.shape
        connector = aiohttp.TCPConnector(limit=shape.connections, force_close=False)
        timeout = aiohttp.ClientTimeout(total=shape.timeout_s)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            t_start = time.perf_counter()
            self.t_measure = t_start + shape.warmup_s
            self.t_end = self.t_measure + shape.duration_s
            sampler = asyncio.create_task(self._sample())
            if shape.rate:
                jobs = [self._open_loop(session, shape.rate, t_start)]
            else:
                jobs = [self._closed_worker(session, w) for w in range(shape.connections)]
            bound = shape.warmup_s + shape.duration_s + shape.timeout_s + 10
            try:
                await asyncio.wait_for(asyncio.gather(*jobs), bound)
            except TimeoutError:
                self.load.errors["gave_up_waiting"] += 1
            await sampler
        self.load.latencies.sort()
        return self.load


# -- one run and the matrix -----------------------------------------------------------


@dataclass(slots=True)
class RunResult:
    """One run: a store, a variant, a round."""

    store: str
    variant: str
    flags: str
    round: int
    updates_per_s: float
    p50_ms: float
    p99_ms: float
    ok: int
    statuses: dict[int, int]
    errors: dict[str, int]
    ledger_rows: int  # actions in the ledger
    boards: int  # boards each update wrote
    credits: int  # ledger rows over all boards
    check: bool
    check_detail: str
    batches: int
    mean_batch: float
    server_cpu_pct: float
    server_cpu_us_per_update: float
    client_cpu_pct: float
    core_busy: dict[int, float]
    ready_s: float
    warnings: list[str]


def verify(
    load: Load, totals: LedgerTotals, committed: int | None, boards: Sequence[str]
) -> tuple[bool, str]:
    """Did the store credit exactly what the client was told (200) was credited, on every board?"""
    ok = load.statuses.get(200, 0)
    problems = []
    if totals.actions != ok:
        problems.append(f"200s={ok} but the ledger has {totals.actions} actions")
    for board in boards:
        t = totals.boards.get(board, BoardTotals(0, 0, 0, 0))
        if t.credits != ok:
            problems.append(f"{board}: 200s={ok} but {t.credits} credits")
        if t.value_sum != load.ok_delta_sum:
            problems.append(
                f"{board}: 200s credited {load.ok_delta_sum} but the ledger sums to {t.value_sum}"
            )
        if t.score_sum != t.value_sum:
            problems.append(f"{board}: scores sum to {t.score_sum}, its credits to {t.value_sum}")
    stray = sorted(b for b, t in totals.boards.items() if b not in boards and (t.credits or t.entries))
    if stray:
        problems.append(f"boards never written hold credits or entries: {', '.join(stray)}")
    if committed is not None and committed != totals.actions:
        problems.append(f"writer committed {committed}, the ledger has {totals.actions} actions")
    if load.errors:
        problems.append(f"client errors {dict(load.errors)} (outcome unknown)")
    on = f" on each of {len(boards)} boards" if len(boards) > 1 else ""
    return not problems, "; ".join(problems) or f"{ok} x 200 == {totals.actions} actions{on}"


@dataclass(frozen=True, slots=True)
class Matrix:
    """Everything a comparison needs."""

    stores: Sequence[str]
    variants: Sequence[Variant]
    rounds: int
    shape: LoadShape
    pg_admin_url: str
    workdir: Path
    server_cpu: int | None = SERVER_CPU
    log_level: str = "info"
    profile_dir: Path | None = None
    profile_args: Sequence[str] = ("--rate", "200", "--nonblocking")
    client_cpu: int | None = CLIENT_CPU
    tree: Path | None = None


def _profile(
    server: ServerProcess, out: Path, seconds: float, extra: Sequence[str], cpu: int | None
) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists() and shutil.which(spy) is None:
        print("  (py-spy not installed: pip install py-spy)", file=sys.stderr)
        return None
    argv = [spy, "record", "--pid", str(server.pid), "--duration", str(max(1, round(seconds)))]
    argv += [*extra, "--format", "raw", "--output", str(out)]
    taskset = shutil.which("taskset")
    if taskset is not None and cpu is not None:
        argv = [taskset, "-c", str(cpu), *argv]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def run_once(m: Matrix, store: str, variant: Variant, round_no: int) -> RunResult:
    """A fresh database and server, one load, the check."""
    boards = variant.board_ids()
    flags = dict(variant.flags)
    if variant.boards is not None:
        flags["catalog-file"] = str(write_catalog(m.workdir, boards))
    async with fresh_database(store, workdir=m.workdir, pg_admin_url=m.pg_admin_url) as url:
        server = ServerProcess(
            database_url=url,
            workdir=m.workdir,
            flags=flags,
            cpu=m.server_cpu,
            log_level=m.log_level,
            tree=variant.tree or m.tree,
        )
        server.start()
        spy: subprocess.Popen[bytes] | None = None
        try:
            ready_s = await server.wait_ready()
            tag = f"r{round_no}v{m.variants.index(variant)}{store}"
            driver = Driver(
                server.url,
                m.shape,
                tag,
                server.cpu_seconds,
                boards=boards if variant.boards is not None else None,
            )
            if m.profile_dir is not None:
                m.profile_dir.mkdir(parents=True, exist_ok=True)
                safe = re.sub(r"[^A-Za-z0-9_.=+-]", "_", variant.name)
                out = m.profile_dir / f"{store}-{safe}-r{round_no}.txt"
                spy = _profile(
                    server, out, m.shape.warmup_s + m.shape.duration_s, m.profile_args, m.client_cpu
                )
            load = await driver.run()
        finally:
            await server.stop()
            if spy is not None:
                await asyncio.to_thread(spy.wait, 30)
        closed = server.event("writer_closed")  # logged at info level only
        committed = int(closed["committed"]) if closed else None
        totals = await ledger_totals(url)
        batches = totals.transactions
    check, detail = verify(load, totals, committed, boards)
    window = load.window_s
    return RunResult(
        store=store,
        variant=variant.name,
        flags=variant.describe(),
        round=round_no,
        updates_per_s=load.window_ok / window if window > 0 else math.nan,
        p50_ms=percentile(load.latencies, 50) * 1000,
        p99_ms=percentile(load.latencies, 99) * 1000,
        ok=load.statuses.get(200, 0),
        statuses=dict(load.statuses),
        errors=dict(load.errors),
        ledger_rows=totals.actions,
        boards=len(boards),
        credits=totals.credits,
        check=check,
        check_detail=detail,
        batches=batches,
        mean_batch=totals.actions / batches if batches else math.nan,
        server_cpu_pct=100 * load.server_cpu_s / window if window > 0 else math.nan,
        server_cpu_us_per_update=1e6 * load.server_cpu_s / load.window_ok if load.window_ok else math.nan,
        client_cpu_pct=100 * load.client_cpu_s / window if window > 0 else math.nan,
        core_busy=load.core_busy,
        ready_s=ready_s,
        warnings=[str(w.get("event")) for w in server.warnings()],
    )


def progress_line(r: RunResult) -> str:
    """One line per run."""
    status = "ok" if r.check else f"CHECK FAILED: {r.check_detail}"
    return (
        f"[round {r.round}] {r.store:8} {r.variant:18} {fmt(r.updates_per_s, 0):>8} upd/s "
        f"p50 {fmt(r.p50_ms, 2):>7} ms  p99 {fmt(r.p99_ms, 2):>7} ms  batch {fmt(r.mean_batch, 1):>6}  "
        f"server {fmt(r.server_cpu_pct, 0)}% {fmt(r.server_cpu_us_per_update, 0)} us/upd  "
        f"client {fmt(r.client_cpu_pct, 0)}%  {status}"
        + (f"  warnings: {sorted(set(r.warnings))}" if r.warnings else "")
    )


async def run_matrix(m: Matrix, echo: Callable[[str], None] = print) -> list[RunResult]:
    """Every round runs every store and, within it, every variant in order (alternation)."""
    results: list[RunResult] = []
    for round_no in range(1, m.rounds + 1):
        for store in m.stores:
            for variant in m.variants:
                result = await run_once(m, store, variant, round_no)
                results.append(result)
                echo(progress_line(result))
    return results


def summary(results: Sequence[RunResult], variants: Sequence[Variant], stores: Sequence[str]) -> str:
    """Per store, the medians over rounds of every variant, side by side."""
    blocks = []
    for store in stores:
        rows: list[list[object]] = []
        base = math.nan
        for v in variants:
            runs = [r for r in results if r.store == store and r.variant == v.name]
            if not runs:
                continue
            rate = median([r.updates_per_s for r in runs])
            if math.isnan(base):
                base = rate
            rates = [r.updates_per_s for r in runs]
            rows.append(
                [
                    v.name,
                    fmt(rate, 0),
                    f"{fmt(min(rates), 0)}-{fmt(max(rates), 0)}",
                    f"{rate / base:.2f}x" if base else "-",
                    fmt(median([r.p50_ms for r in runs]), 2),
                    fmt(median([r.p99_ms for r in runs]), 2),
                    fmt(median([r.mean_batch for r in runs]), 1),
                    fmt(median([r.server_cpu_pct for r in runs]), 0),
                    fmt(median([r.server_cpu_us_per_update for r in runs]), 0),
                    fmt(median([r.client_cpu_pct for r in runs]), 0),
                    f"{sum(r.check for r in runs)}/{len(runs)} ok",
                ]
            )
        headers = ["variant", "upd/s", "range", "vs first", "p50 ms", "p99 ms", "batch"]
        headers += ["server CPU %", "server CPU us/upd", "client CPU %", "200s == rows"]
        blocks.append(f"{store}:\n" + format_table(headers, rows))
    return "\n\n".join(blocks)


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stores", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    p.add_argument(
        "--variants", default=DEFAULT_VARIANTS, help=f"comma-separated (default {DEFAULT_VARIANTS})"
    )
    p.add_argument("--rounds", type=int, default=3, help="alternation rounds (default 3)")
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds per run (default 8)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first (default 1)")
    p.add_argument("--connections", type=int, default=64, help="concurrent connections (default 64)")
    p.add_argument("--users", type=int, default=10_000, help="distinct user ids updated (default 10000)")
    p.add_argument("--rate", type=float, help="open loop: updates/s to offer (default: closed loop)")
    p.add_argument("--pg-url", default=default_pg_url(), help="admin URL to create scratch databases with")
    p.add_argument("--server-cpu", type=int, default=SERVER_CPU, help="CPU for the server (default 0)")
    p.add_argument("--client-cpu", type=int, default=CLIENT_CPU, help="CPU for this generator (default 1)")
    p.add_argument("--log-level", default="info", help="server log level (default info, as shipped)")
    p.add_argument("--profile", type=Path, help="write a py-spy raw profile of the server per run here")
    p.add_argument(
        "--profile-args",
        default="--rate 200 --nonblocking",
        help="extra py-spy record flags, e.g. '--native' or '--gil' (default: --rate 200 --nonblocking)",
    )
    p.add_argument("--tree", type=Path, help="checkout whose server package runs (default: this one)")
    p.add_argument("--json", type=Path, help="write every run's figures as JSON here")
    return p.parse_args(argv)


def matrix_from_args(args: argparse.Namespace, workdir: Path) -> Matrix:
    """The comparison the command line asks for."""
    return Matrix(
        stores=[s.strip() for s in args.stores.split(",") if s.strip()],
        variants=[parse_variant(v.strip()) for v in args.variants.split(",") if v.strip()],
        rounds=args.rounds,
        shape=LoadShape(
            duration_s=args.duration,
            warmup_s=args.warmup,
            connections=args.connections,
            users=args.users,
            rate=args.rate,
        ),
        pg_admin_url=args.pg_url,
        workdir=workdir,
        server_cpu=args.server_cpu,
        log_level=args.log_level,
        profile_dir=args.profile,
        profile_args=args.profile_args.split(),
        client_cpu=args.client_cpu,
        tree=args.tree.resolve() if args.tree else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exits 1 if any run's check failed."""
    args = _args(argv)
    pin_to_cpu(args.client_cpu)
    with tempfile.TemporaryDirectory(prefix="sb-http-") as tmp:
        m = matrix_from_args(args, Path(tmp))
        mode = (
            f"open loop {m.shape.rate:g}/s" if m.shape.rate else f"closed loop, {m.shape.connections} conns"
        )
        print(
            f"POST /scores/update, ACK=commit, {mode}, {m.shape.users} users, {m.shape.duration_s:g}s "
            f"(+{m.shape.warmup_s:g}s warm-up) x {m.rounds} rounds; server on CPU {m.server_cpu}, "
            f"client on CPU {args.client_cpu}"
        )
        if m.tree:
            print(f"  server package from {m.tree}")
        for v in m.variants:
            print(f"  {v.name:18} {v.describe()}")
        results = uvloop.run(run_matrix(m))
    print()
    print(summary(results, m.variants, m.stores))
    if args.json:
        args.json.write_bytes(
            orjson.dumps([asdict(r) for r in results], option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
        )
    return 0 if all(r.check for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
