"""Scale-out on one host: 1 server process vs `--workers 2` over one PostgreSQL and one Redis.

Every run starts the server on a fresh PostgreSQL database (created on
`--pg-url`, dropped afterwards) with `SCOREBOARD_REDIS_URL` pointing at a
throwaway `redis-server` started for the whole session
(`tests/redisserver.py`; never the shared one on 6379), a Redis key prefix
of its own, explicit JWT and ticket secrets, and
`SCOREBOARD_MAX_CONNECTIONS_PER_IP=0`. Layouts (`--fanout-processes`,
`--processes`, comma-separated):

- `N`: `python -m server serve --workers N` (N = 1: one process, no supervisor);
- `Nx` (throughput only): N separate `serve` processes on N ports, one
  cluster (same database, Redis and prefix), each fed updates of its own
  board only, the generator splitting its connections: boards partitioned
  over processes inside one PostgreSQL, so no two processes ever take the
  same board's version row lock;
- `solo`: one process without Redis (the single-process server), a
  baseline for what the shared machinery costs.

A single process is pinned to CPU 0 and this generator to CPU 1, as in the
other scripts; several processes are not pinned: **the server uses both
cores and shares CPU 1 with the generator**, so those rows say what a second
process buys on this 2-core box, not what a second machine would.
PostgreSQL and Redis are never pinned. Layouts are alternated within each
round (1 2 1 2 ...); the tables quote medians over the rounds and ratios
paired by round, against layout `1` (one process with Redis) and against
the first layout. `--keep-logs DIR` keeps the servers' JSON logs.

Part `fanout` reuses `loadtest/fanout.py` whole (its subscribers, update
driver, latency and checks; see its docstring): `--subscribers` (10,000)
WebSocket subscribers connect to a quiet server, then the driver posts
`--rate` (20) updates/s with a service token, each lifting the player at a
random rank in `--lift-ranks` (3-7) to a new unique top score, so every
update changes the top 10. That score is the update's stamp: its latency
ends at the first frame at a sampled subscriber that shows the player at
that score or higher. With several workers the POST reaches one of them,
the commit reaches the others on the Redis bus, and every worker relays the
board's sequenced steps (one sequencer per board) to its own subscribers.
Reported: subscribers held, delivered messages/s, Hz per subscriber
against the target, update-to-subscriber p50/p99, POST p50/p99 while
publishing, CPU of the server (all processes, % of one core, and its split
over the workers), of PostgreSQL (this run's backends plus its background
processes) and of Redis, each core's busy %, what else kept the cores busy
(`other`: the kernel's softirq network work, other people's processes), and
this generator's CPU.

Part `throughput` reuses `loadtest/http_updates.py`'s closed-loop driver:
`--connections` (64) keep-alive connections send `POST /scores/update`
(ACK=commit, service tokens, `--users` distinct players) on the default
board, or on one random board of `--boards N` each. Reported: updates/s,
p50/p99, mean updates per transaction, PostgreSQL transactions/s
(`pg_stat_database.xact_commit`: batches, plus the pool's reset after each
and the bus's reads), CPU of the server, of PostgreSQL (also per update)
and of Redis, Redis commands per update and PUBLISHes per batch over the
whole run (`INFO commandstats`), each core's busy %, and the ledger check of
`http_updates.py` (every 200 is one action in the ledger, the credits sum
to the deltas answered 200 and the scores to the credits, the writers'
`committed` summed over the processes).

Run (from the repository root, in the venv):

    python -m loadtest.scaleout --quick             # smoke: 500 subscribers, 5 s runs, 1 round
    python -m loadtest.scaleout                     # 10,000 subscribers; 1 vs 2; 3 rounds
    python -m loadtest.scaleout --part throughput --processes solo,1,2,2x,3
    python -m loadtest.scaleout --json runs.json    # every run's raw figures
    python -m loadtest.scaleout --summarize runs.json ...   # its tables again (same layout flags)

Exits 1 if a run failed (a server died, an update was refused, subscribers
did not connect, an update never reached a sampled subscriber, the final
board or the ledger is wrong).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import random
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import redis.asyncio as aioredis
import uvloop

from loadtest import fanout, http_updates
from loadtest.cluster import (
    ClusterServer,
    Layout,
    Meters,
    Reading,
    Usage,
    catalog_flags,
    cores,
    median_busy,
    median_each,
    new_prefix,
    other_pct,
    ratio_text,
    split,
    usage,
    wait_leads,
)
from loadtest.common import (
    CLIENT_CPU,
    SERVER_CPU,
    LedgerTotals,
    board_ids,
    create_pg_database,
    default_pg_url,
    drop_pg_database,
    fmt,
    format_table,
    ledger_totals,
    median,
    percentile,
    pin_to_cpu,
)
from tests.redisserver import RedisServer

PARTS = ("fanout", "throughput")


@dataclass(frozen=True, slots=True)
class Pins:
    """Where a single server process and this generator run."""

    server_cpu: int | None
    client_cpu: int | None

    def server_cpu_for(self, layout: Layout) -> int | None:
        """One process is pinned to the server's CPU; several get every core."""
        return self.server_cpu if layout.processes == 1 else None

    def cores_text(self, layout: Layout) -> str:
        """Where the server runs, for the tables."""
        if layout.processes == 1:
            return f"CPU {self.server_cpu}" if self.server_cpu is not None else "any"
        return f"all, gen shares CPU {self.client_cpu}" if self.client_cpu is not None else "all"


@dataclass(frozen=True, slots=True)
class Session:
    """What every run shares: where databases are made, the Redis, the pins."""

    pg_admin_url: str
    redis: RedisServer
    workdir: Path
    pins: Pins
    log_level: str

    def server(
        self, layout: Layout, url: str, prefix: str, *, boards: int = 1, port: int | None = None
    ) -> ClusterServer:
        """The one server (`--workers N` or solo) of a layout that is not `separate`."""
        return ClusterServer(
            database_url=url,
            redis_url=self.redis.url if layout.redis else None,
            prefix=prefix,
            workers=layout.processes,
            workdir=self.workdir,
            cpu=self.pins.server_cpu_for(layout),
            boards=boards,
            port=port,
            log_level=self.log_level,
            flags=catalog_flags(self.workdir, boards),
        )


# -- part 1: fan-out (loadtest/fanout.py's run, on a cluster) ----------------------------


class FanoutRun(fanout.Run):
    """`fanout.Run` (subscribers, driver, latency, checks) against a `ClusterServer`."""

    def __init__(
        self, cfg: fanout.Config, n: int, round_no: int, *, layout: Layout, session: Session
    ) -> None:
        variant = fanout.Variant(str(layout), "server", {"max-connections-per-ip": "0"})
        super().__init__(cfg, variant, n, round_no)
        self.layout = layout
        self.session = session
        self.readings: list[Reading] = []
        self.meters: Meters | None = None

    async def execute(self) -> fanout.RunResult:
        """A fresh database and server on the port `fanout.Run` chose, then its run."""
        s = self.session
        url = await create_pg_database(s.pg_admin_url, prefix="sb_scale")
        # The same port: the subscribers and the driver fanout.Run made point at it.
        server = s.server(self.layout, url, new_prefix(), port=self.proc.port)
        self.proc = server
        self.meters = Meters([server], s.redis)
        try:
            return await super().execute()
        finally:
            await drop_pg_database(s.pg_admin_url, url)

    def _sample(self) -> fanout.Sample:
        sample = super()._sample()
        if self.meters is not None:
            self.readings.append(self.meters.read())
        return sample


@dataclass(slots=True)
class FanoutResult:
    """One fan-out run: `fanout.RunResult` plus the cluster's CPU."""

    layout: str
    round: int
    run: fanout.RunResult
    use: Usage


def fanout_line(r: FanoutResult) -> str:
    """One line per run."""
    x, u = r.run, r.use
    status = "ok" if x.ok else "FAILED: " + "; ".join(x.problems)
    return (
        f"[round {r.round}] fanout {r.layout:>4}  N={x.subscribers:,} held {x.held:,}  "
        f"{fmt(x.delivered_per_s, 0)} msg/s  {fmt(x.per_sub_hz, 1)}/{x.target_hz:.3g} Hz  "
        f"p50 {fmt(x.p50_ms, 1)} p99 {fmt(x.p99_ms, 1)} ms  POST p50 {fmt(x.ack_p50_ms, 1)} "
        f"p99 {fmt(x.ack_p99_ms, 1)} ms  server {fmt(u.server_pct, 0)}% ({split(u.worker_pct)})  "
        f"pg {fmt(u.pg_pct, 0)}%  redis {fmt(u.redis_pct, 0)}%  cores {cores(u.core_busy)} "
        f"(other {fmt(other_pct(u, x.client_cpu_pct), 0)}%)  "
        f"gen {fmt(x.client_cpu_pct, 0)}%  "
        f"snaps {x.snapshots}  connect {fmt(x.connect_s, 1)} s  {status}"
        + (f"  warnings: {sorted(set(x.warnings))}" if x.warnings else "")
    )


async def fanout_part(
    session: Session,
    shape: fanout.Shape,
    n: int,
    *,
    layouts: Sequence[Layout],
    rounds: int,
    echo: Callable[[str], None] = print,
) -> list[FanoutResult]:
    """Every round runs every layout in order (alternation)."""
    cfg = fanout.Config(
        variants=[],
        sizes=[n],
        rounds=rounds,
        shape=shape,
        workdir=session.workdir,
        server_cpu=session.pins.server_cpu,
        client_cpu=session.pins.client_cpu,
        log_level=session.log_level,
    )
    results = []
    for round_no in range(1, rounds + 1):
        for layout in layouts:
            run = FanoutRun(cfg, n, round_no, layout=layout, session=session)
            result = await run.execute()
            use = usage(run.readings[0], run.readings[-1]) if len(run.readings) >= 2 else Usage()
            results.append(FanoutResult(str(layout), round_no, result, use))
            echo(fanout_line(results[-1]))
    return results


def fanout_summary(results: Sequence[FanoutResult], layouts: Sequence[Layout], pins: Pins) -> str:
    """Medians per layout, then each layout against the first, paired by round."""
    by = {str(lay): [r for r in results if r.layout == str(lay)] for lay in layouts}
    rows: list[list[object]] = []
    for lay in layouts:
        runs = by[str(lay)]
        if not runs:
            continue

        def med(get: Callable[[FanoutResult], float], runs: list[FanoutResult] = runs) -> float:
            return median([get(r) for r in runs])

        rates = [r.run.delivered_per_s for r in runs]
        rows.append(
            [
                str(lay),
                pins.cores_text(lay),
                fmt(med(lambda r: float(r.run.held)), 0),
                fmt(median(rates), 0),
                f"{fmt(min(rates), 0)}-{fmt(max(rates), 0)}",
                f"{fmt(med(lambda r: r.run.per_sub_hz), 1)} / {runs[0].run.target_hz:.3g}",
                fmt(med(lambda r: r.run.p50_ms), 1),
                fmt(med(lambda r: r.run.p99_ms), 1),
                fmt(med(lambda r: r.run.ack_p50_ms), 1),
                fmt(med(lambda r: r.run.ack_p99_ms), 1),
                fmt(med(lambda r: r.use.server_pct), 0),
                split(median_each([r.use.worker_pct for r in runs])),
                fmt(med(lambda r: r.use.pg_pct), 0),
                fmt(med(lambda r: r.use.redis_pct), 0),
                cores(median_busy([r.use for r in runs])),
                fmt(med(lambda r: other_pct(r.use, r.run.client_cpu_pct)), 0),
                fmt(med(lambda r: r.run.client_cpu_pct), 0),
                fmt(med(lambda r: float(r.run.snapshots)), 0),
                f"{sum(r.run.ok for r in runs)}/{len(runs)}",
            ]
        )
    headers = ["layout", "server cores", "held", "msg/s", "range", "Hz per sub / target"]
    headers += ["p50 ms", "p99 ms", "POST p50 ms", "POST p99 ms", "server CPU %", "per worker %"]
    headers += ["PG CPU %", "Redis CPU %", "cores busy %", "other %", "gen CPU %"]
    headers += ["snapshots", "ok"]
    table = format_table(headers, rows)
    names = [str(lay) for lay in layouts]
    # Every layout against the first, and against `1` (one process with Redis) when that is not first.
    bases = [names[0]] + (["1"] if "1" in names[1:] else [])
    ratio_rows = []
    for base in bases:
        for name in names[names.index(base) + 1 :]:

            def pairs(
                get: Callable[[FanoutResult], float], base: str = base, name: str = name
            ) -> list[tuple[float, float]]:
                first = {r.round: get(r) for r in by[base]}
                return [(first[r.round], get(r)) for r in by[name] if r.round in first]

            ratio_rows.append(
                [
                    f"{name} vs {base}",
                    ratio_text(pairs(lambda r: r.run.delivered_per_s)),
                    ratio_text(pairs(lambda r: r.run.p50_ms)),
                    ratio_text(pairs(lambda r: r.run.p99_ms)),
                    ratio_text(pairs(lambda r: r.run.ack_p50_ms)),
                    ratio_text(pairs(lambda r: r.run.ack_p99_ms)),
                    ratio_text(pairs(lambda r: r.use.server_pct)),
                ]
            )
    if ratio_rows:
        heads = ["paired by round", "msg/s", "p50", "p99", "POST p50", "POST p99", "server CPU"]
        table += "\n\n" + format_table(heads, ratio_rows)
    return table


# -- part 2: update throughput (loadtest/http_updates.py's driver, on a cluster) ---------


@dataclass(frozen=True, slots=True)
class Point:
    """One throughput configuration: a layout, and the boards the updates spread over."""

    layout: Layout
    boards: int = 1

    def __str__(self) -> str:
        return str(self.layout) + (f", {self.boards} boards" if self.boards > 1 else "")


class MeteredDriver(http_updates.Driver):
    """`http_updates.Driver` that can spread boards, and read `Meters` at the ends of its window.

    With `boards`, each update credits one of them picked at random
    (`{"scores": {board: delta}}`) instead of the default board
    (`scoreDelta`).
    """

    def __init__(
        self,
        base_url: str,
        shape: http_updates.LoadShape,
        tag: str,
        server_cpu: Callable[[], float],
        *,
        boards: Sequence[str] | None = None,
        meters: Meters | None = None,
    ) -> None:
        super().__init__(base_url, shape, tag, server_cpu)
        self.meters = meters
        self.spread = [b.encode() for b in boards] if boards else []
        self.readings: list[Reading] = []
        self.xacts: list[int] = []

    def body(self, rnd: random.Random, worker: int, seq: int) -> tuple[bytes, int]:
        """One update: the default board's form, or one random board of `boards`."""
        if not self.spread:
            return super().body(rnd, worker, seq)
        delta = rnd.randint(1, self.shape.max_delta)
        user = rnd.randrange(self.shape.users)
        board = rnd.choice(self.spread)
        body = b'{"userId":"u%d","scores":{"%s":%d},"actionId":"%s-%d-%d"}' % (
            user,
            board,
            delta,
            self.tag,
            worker,
            seq,
        )
        return body, delta

    async def _sample(self) -> None:
        if self.meters is None:
            await super()._sample()
            return
        await asyncio.sleep(max(0.0, self.t_measure - time.perf_counter()))
        self.xacts.append(await self.meters.xact_commit())
        self.readings.append(self.meters.read())
        await super()._sample()  # t_measure has passed: its window starts at once
        self.readings.append(self.meters.read())
        self.xacts.append(await self.meters.xact_commit())


def merge_loads(loads: Sequence[http_updates.Load]) -> http_updates.Load:
    """Drivers run side by side in this process: their answers add up, the window and CPU are one."""
    out = http_updates.Load()
    for load in loads:
        out.statuses.update(load.statuses)
        out.errors.update(load.errors)
        out.ok_delta_sum += load.ok_delta_sum
        out.sent += load.sent
        out.window_ok += load.window_ok
        out.latencies.extend(load.latencies)
    out.latencies.sort()
    first = loads[0]
    out.window_s, out.server_cpu_s, out.client_cpu_s = first.window_s, first.server_cpu_s, first.client_cpu_s
    out.core_busy = first.core_busy
    return out


def verify_spread(load: http_updates.Load, totals: LedgerTotals, committed: int | None) -> tuple[bool, str]:
    """`http_updates.verify` for updates spread one per board: the sums over all boards."""
    ok = load.statuses.get(200, 0)
    boards = totals.boards.values()
    credits = sum(b.credits for b in boards)
    problems = []
    if totals.actions != ok or credits != ok:
        problems.append(f"200s={ok}, the ledger has {totals.actions} actions and {credits} credits")
    if (credited := sum(b.value_sum for b in boards)) != load.ok_delta_sum:
        problems.append(f"200s credited {load.ok_delta_sum}, the ledger {credited}")
    for name, b in totals.boards.items():
        if b.score_sum != b.value_sum:
            problems.append(f"{name}: scores sum to {b.score_sum}, its credits to {b.value_sum}")
    if committed is not None and committed != totals.actions:
        problems.append(f"writers committed {committed}, the ledger has {totals.actions} actions")
    if load.errors:
        problems.append(f"client errors {dict(load.errors)} (outcome unknown)")
    return not problems, "; ".join(
        problems
    ) or f"{ok} x 200 == {totals.actions} actions, {len(boards)} boards"


@dataclass(slots=True)
class ThroughputResult:
    """One throughput run."""

    layout: str
    boards: int
    round: int
    updates_per_s: float
    p50_ms: float
    p99_ms: float
    mean_batch: float
    xact_per_s: float
    server_cpu_us_per_update: float
    pg_cpu_us_per_update: float
    redis_calls_per_update: float
    publish_per_batch: float
    client_cpu_pct: float
    use: Usage
    check: bool
    check_detail: str
    warnings: list[str]

    @property
    def name(self) -> str:
        """The configuration, as `Point` prints it."""
        return self.layout + (f", {self.boards} boards" if self.boards > 1 else "")


def throughput_servers(
    session: Session, point: Point, url: str
) -> tuple[list[ClusterServer], list[list[str] | None]]:
    """The processes of a point, and the boards each one's updates go to (None: the default form)."""
    layout, prefix = point.layout, new_prefix()
    boards = board_ids(point.boards)
    if not layout.separate:
        server = session.server(layout, url, prefix, boards=point.boards)
        return [server], [boards if point.boards > 1 else None]
    flags = catalog_flags(session.workdir, point.boards)
    servers = [
        ClusterServer(
            database_url=url,
            redis_url=session.redis.url,
            prefix=prefix,
            workers=1,
            workdir=session.workdir,
            cpu=None,
            boards=point.boards,
            leads=0,  # the leases are split between the processes: see wait_leads
            log_level=session.log_level,
            flags=flags,
        )
        for _ in range(layout.processes)
    ]
    return servers, [[b] for b in boards]


async def throughput_run(
    session: Session, shape: http_updates.LoadShape, point: Point, round_no: int
) -> ThroughputResult:
    """A fresh database and cluster, one closed-loop load, the ledger check."""
    url = await create_pg_database(session.pg_admin_url, prefix="sb_scale")
    admin = await asyncpg.connect(session.pg_admin_url, timeout=10)
    redis_client = aioredis.Redis(host="127.0.0.1", port=session.redis.port)
    servers, feeds = throughput_servers(session, point, url)
    meters = Meters(servers, session.redis, redis_client, admin)
    try:
        try:
            for s in servers:
                s.start()
            await asyncio.gather(*(s.wait_ready() for s in servers))
            await wait_leads(servers, point.boards if point.layout.redis else 0)
            calls0 = await meters.redis_calls()
            each = dataclasses.replace(shape, connections=max(1, shape.connections // len(servers)))
            drivers = [
                MeteredDriver(
                    s.url,
                    each,
                    f"r{round_no}-{point.layout}-{point.boards}-{i}",
                    meters.server_cpu,
                    boards=feed,
                    meters=meters if i == 0 else None,
                )
                for i, (s, feed) in enumerate(zip(servers, feeds, strict=True))
            ]
            load = merge_loads(await asyncio.gather(*(d.run() for d in drivers)))
        finally:
            await asyncio.gather(*(s.stop() for s in servers))
        calls1 = await meters.redis_calls()
        totals = await ledger_totals(url)
    finally:
        await redis_client.aclose()
        await admin.close()
        await drop_pg_database(session.pg_admin_url, url)
    done = [s.committed() for s in servers]
    committed = None if None in done else sum(c or 0 for c in done)
    if point.boards > 1:
        check, detail = verify_spread(load, totals, committed)
    else:
        check, detail = http_updates.verify(load, totals, committed, board_ids(1))
    metered = drivers[0]
    use = usage(metered.readings[0], metered.readings[-1])
    window = metered.readings[-1].t - metered.readings[0].t
    rate = load.window_ok / load.window_s if load.window_s > 0 else math.nan
    calls = {k: n - calls0.get(k, 0) for k, n in calls1.items()}
    return ThroughputResult(
        layout=str(point.layout),
        boards=point.boards,
        round=round_no,
        updates_per_s=rate,
        p50_ms=percentile(load.latencies, 50) * 1000,
        p99_ms=percentile(load.latencies, 99) * 1000,
        mean_batch=totals.actions / totals.transactions if totals.transactions else math.nan,
        xact_per_s=(metered.xacts[-1] - metered.xacts[0]) / window if window > 0 else math.nan,
        server_cpu_us_per_update=1e4 * use.server_pct / rate if rate else math.nan,
        pg_cpu_us_per_update=1e4 * use.pg_pct / rate if rate else math.nan,
        redis_calls_per_update=calls.get("total", 0) / totals.actions if totals.actions else math.nan,
        publish_per_batch=calls.get("publish", 0) / totals.transactions if totals.transactions else math.nan,
        client_cpu_pct=100 * load.client_cpu_s / load.window_s if load.window_s > 0 else math.nan,
        use=use,
        check=check,
        check_detail=detail,
        warnings=sorted({str(w.get("event")) for s in servers for w in s.warnings()}),
    )


def throughput_line(r: ThroughputResult) -> str:
    """One line per run."""
    status = "ok" if r.check else f"CHECK FAILED: {r.check_detail}"
    u = r.use
    return (
        f"[round {r.round}] throughput {r.name}  {fmt(r.updates_per_s, 0)} upd/s  "
        f"p50 {fmt(r.p50_ms, 1)} p99 {fmt(r.p99_ms, 1)} ms  batch {fmt(r.mean_batch, 1)}  "
        f"xact {fmt(r.xact_per_s, 0)}/s  server {fmt(u.server_pct, 0)}% ({split(u.worker_pct)}) "
        f"{fmt(r.server_cpu_us_per_update, 0)} us/upd  pg {fmt(u.pg_pct, 0)}% "
        f"{fmt(r.pg_cpu_us_per_update, 0)} us/upd  redis {fmt(u.redis_pct, 0)}% "
        f"{fmt(r.redis_calls_per_update, 2)} cmds/upd {fmt(r.publish_per_batch, 2)} pub/batch  "
        f"cores {cores(u.core_busy)} (other {fmt(other_pct(u, r.client_cpu_pct), 0)}%)  "
        f"gen {fmt(r.client_cpu_pct, 0)}%  {status}" + (f"  warnings: {r.warnings}" if r.warnings else "")
    )


async def throughput_part(
    session: Session,
    shape: http_updates.LoadShape,
    *,
    points: Sequence[Point],
    rounds: int,
    echo: Callable[[str], None] = print,
) -> list[ThroughputResult]:
    """Every round runs every configuration in order (alternation); a failed run is reported, not raised."""
    results = []
    for round_no in range(1, rounds + 1):
        for point in points:
            try:
                result = await throughput_run(session, shape, point, round_no)
            except Exception as exc:  # a server that died or never became ready
                traceback.print_exc()
                result = failed_throughput(point, round_no, f"{type(exc).__name__}: {exc}")
            results.append(result)
            echo(throughput_line(result))
    return results


def failed_throughput(point: Point, round_no: int, problem: str) -> ThroughputResult:
    """A run that produced no figures."""
    nan = math.nan
    return ThroughputResult(
        layout=str(point.layout), boards=point.boards, round=round_no, updates_per_s=nan, p50_ms=nan,
        p99_ms=nan, mean_batch=nan, xact_per_s=nan, server_cpu_us_per_update=nan,
        pg_cpu_us_per_update=nan, redis_calls_per_update=nan, publish_per_batch=nan,
        client_cpu_pct=nan, use=Usage(), check=False, check_detail=problem, warnings=[],
    )  # fmt: skip


def throughput_summary(results: Sequence[ThroughputResult], points: Sequence[Point], pins: Pins) -> str:
    """Medians per configuration, and updates/s paired by round against a reference.

    The reference is layout `1` (one process with Redis) on the same number
    of boards when the run has it, else on one board, else the first
    configuration.
    """
    by = {str(p): [r for r in results if r.name == str(p)] for p in points}
    has_one = any(str(p.layout) == "1" for p in points)

    def reference(p: Point) -> Point:
        for one in (Point(Layout(1), p.boards), Point(Layout(1))):
            if has_one and one in points:
                return one
        return points[0]

    rows: list[list[object]] = []
    for p in points:
        runs = by[str(p)]
        if not runs:
            continue

        def med(get: Callable[[ThroughputResult], float], runs: list[ThroughputResult] = runs) -> float:
            return median([get(r) for r in runs])

        rates = [r.updates_per_s for r in runs]
        ref = reference(p)
        first = {r.round: r.updates_per_s for r in by[str(ref)]}
        pairs = [(first[r.round], r.updates_per_s) for r in runs if r.round in first]
        rows.append(
            [
                str(p.layout),
                p.boards,
                pins.cores_text(p.layout),
                fmt(median(rates), 0),
                f"{fmt(min(rates), 0)}-{fmt(max(rates), 0)}",
                ratio_text(pairs) if p != ref else "1",
                fmt(med(lambda r: r.p50_ms), 1),
                fmt(med(lambda r: r.p99_ms), 1),
                fmt(med(lambda r: r.mean_batch), 1),
                fmt(med(lambda r: r.xact_per_s), 0),
                fmt(med(lambda r: r.use.server_pct), 0),
                split(median_each([r.use.worker_pct for r in runs])),
                fmt(med(lambda r: r.server_cpu_us_per_update), 0),
                fmt(med(lambda r: r.use.pg_pct), 0),
                fmt(med(lambda r: r.pg_cpu_us_per_update), 0),
                fmt(med(lambda r: r.use.redis_pct), 0),
                fmt(med(lambda r: r.redis_calls_per_update), 2),
                fmt(med(lambda r: r.publish_per_batch), 2),
                cores(median_busy([r.use for r in runs])),
                fmt(med(lambda r: other_pct(r.use, r.client_cpu_pct)), 0),
                fmt(med(lambda r: r.client_cpu_pct), 0),
                f"{sum(r.check for r in runs)}/{len(runs)}",
            ]
        )
    headers = ["layout", "boards", "server cores", "upd/s", "range", "vs 1" if has_one else "vs first"]
    headers += ["p50 ms", "p99 ms"]
    headers += ["batch", "PG xact/s", "server CPU %", "per worker %", "server us/upd", "PG CPU %"]
    headers += ["PG us/upd", "Redis CPU %", "Redis cmds/upd", "PUBLISH/batch", "cores busy %"]
    headers += ["other %", "gen CPU %", "ledger ok"]
    return format_table(headers, rows)


# -- command line ----------------------------------------------------------------------


def _layouts(text: str) -> list[Layout]:
    return [Layout.parse(t) for t in text.split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (every limit a flag; `--quick` shrinks the defaults for a smoke run)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--part", default=",".join(PARTS), help="comma-separated: fanout, throughput (default both)"
    )
    p.add_argument("--rounds", type=int, help="alternation rounds (default 3; --quick 1)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 500 subscribers, 5 s windows, 1 s warm-up, 1 round (explicit flags still win)",
    )
    f = p.add_argument_group("fan-out")
    f.add_argument("--fanout-processes", default="1,2", help="layouts: N or solo (default 1,2)")
    f.add_argument("--subscribers", type=int, help="WebSocket subscribers (default 10000; --quick 500)")
    f.add_argument("--rate", type=float, default=20.0, help="updates/s posted while publishing (default 20)")
    f.add_argument("--lift-ranks", default="3-7", help="ranks lifted to the top per update (default 3-7)")
    f.add_argument("--sample", type=int, default=50, help="subscribers that decode every frame (default 50)")
    f.add_argument("--fanout-duration", type=float, help="measured seconds (default 8; --quick 5)")
    f.add_argument(
        "--fanout-warmup", type=float, help="seconds after connecting, not measured (default 2; --quick 1)"
    )
    f.add_argument(
        "--calibrate", type=float, help="seconds of updates before anyone subscribes (default 3; --quick 1)"
    )
    f.add_argument("--connect-concurrency", type=int, default=128, help="upgrades in flight (default 128)")
    f.add_argument("--connect-budget", type=float, default=120.0, help="seconds to open them (default 120)")
    f.add_argument(
        "--read-batch-ms",
        type=float,
        default=250.0,
        help="counting subscribers read every this many ms (default 250)",
    )
    t = p.add_argument_group("update throughput")
    t.add_argument("--processes", default="1,2", help="layouts: N, Nx or solo (default 1,2)")
    t.add_argument(
        "--boards",
        default="1",
        help="boards the updates spread over (one random board each), comma-separated; every "
        "N and solo layout runs with each (default 1: all on the default board; Nx always uses N)",
    )
    t.add_argument("--connections", type=int, default=64, help="client connections (default 64)")
    t.add_argument("--users", type=int, default=10_000, help="distinct players updated (default 10000)")
    t.add_argument("--duration", type=float, help="measured seconds (default 8; --quick 5)")
    t.add_argument("--warmup", type=float, help="seconds not measured first (default 2; --quick 1)")
    g = p.add_argument_group("where things run")
    g.add_argument("--pg-url", default=default_pg_url(), help="admin URL to create scratch databases with")
    g.add_argument("--server-cpu", type=int, default=SERVER_CPU, help="CPU of a single process (default 0)")
    g.add_argument("--client-cpu", type=int, default=CLIENT_CPU, help="CPU of this generator (default 1)")
    g.add_argument("--log-level", default="info", help="server log level (default info, as shipped)")
    g.add_argument("--json", type=Path, help="write every run's figures as JSON here")
    g.add_argument(
        "--summarize",
        type=Path,
        help="print the tables of a --json file instead of running (give the same layout, --boards "
        "and size flags as the run)",
    )
    g.add_argument(
        "--keep-logs",
        type=Path,
        help="directory for the servers' logs, kept afterwards (default: a temp dir, removed)",
    )
    args = p.parse_args(argv)
    for name, full, small in (
        ("rounds", 3, 1),
        ("subscribers", 10_000, 500),
        ("fanout_duration", 8.0, 5.0),
        ("fanout_warmup", 2.0, 1.0),
        ("calibrate", 3.0, 1.0),
        ("duration", 8.0, 5.0),
        ("warmup", 2.0, 1.0),
    ):
        if getattr(args, name) is None:
            setattr(args, name, small if args.quick else full)
    args.parts = [x.strip() for x in args.part.split(",") if x.strip()]
    if unknown := set(args.parts) - set(PARTS):
        p.error(f"unknown part(s) {sorted(unknown)}; use {', '.join(PARTS)}")
    try:
        args.fanout_layouts = _layouts(args.fanout_processes)
        args.points = throughput_points(_layouts(args.processes), _ints(args.boards))
    except ValueError as exc:
        p.error(str(exc))
    if any(lay.separate for lay in args.fanout_layouts):
        p.error("--fanout-processes takes N or solo (subscribers connect to one port)")
    return args


def throughput_points(layouts: Sequence[Layout], boards: Sequence[int]) -> list[Point]:
    """Every layout with every board count (`Nx`: N boards, one per process)."""
    points: list[Point] = []
    for layout in layouts:
        counts = [layout.processes] if layout.separate else boards
        points += [Point(layout, b) for b in counts if Point(layout, b) not in points]
    return points


def fanout_shape(args: argparse.Namespace) -> fanout.Shape:
    """`fanout.py`'s shape from this command line."""
    lo, _, hi = args.lift_ranks.partition("-")
    lift = (int(lo), int(hi or lo))
    if not 1 <= lift[0] <= lift[1] <= fanout.BOARD_USERS:
        raise SystemExit(f"--lift-ranks must be within 1-{fanout.BOARD_USERS}")
    return fanout.Shape(
        duration_s=args.fanout_duration,
        warmup_s=args.fanout_warmup,
        sample=args.sample,
        rate=args.rate,
        lift=lift,
        connect_concurrency=args.connect_concurrency,
        connect_budget_s=args.connect_budget,
        busy_connect=False,
        read_batch_s=args.read_batch_ms / 1000,
        changes=5,  # the baseline's, unused
        calibrate_s=args.calibrate,
    )


async def run_parts(
    args: argparse.Namespace, session: Session
) -> tuple[list[FanoutResult], list[ThroughputResult]]:
    """The parts asked for, fan-out first."""
    fan: list[FanoutResult] = []
    thr: list[ThroughputResult] = []
    if "fanout" in args.parts:
        fan = await fanout_part(
            session, fanout_shape(args), args.subscribers, layouts=args.fanout_layouts, rounds=args.rounds
        )
    if "throughput" in args.parts:
        shape = http_updates.LoadShape(
            duration_s=args.duration,
            warmup_s=args.warmup,
            connections=args.connections,
            users=args.users,
            rate=None,
        )
        thr = await throughput_part(session, shape, points=args.points, rounds=args.rounds)
    return fan, thr


def print_tables(
    args: argparse.Namespace, fan: Sequence[FanoutResult], thr: Sequence[ThroughputResult]
) -> None:
    """The summary tables."""
    pins = Pins(args.server_cpu, args.client_cpu)
    if fan:
        print(f"\nFan-out, {args.subscribers:,} subscribers, {args.rate:g} updates/s (medians):")
        print(fanout_summary(fan, args.fanout_layouts, pins))
    if thr:
        print(f"\nUpdate throughput, {args.connections} connections, ACK=commit, PostgreSQL (medians):")
        print(throughput_summary(thr, args.points, pins))


def _int_keys(d: Mapping[str, Any]) -> dict[int, Any]:
    return {int(k): v for k, v in d.items()}


def _usage(d: Mapping[str, Any]) -> Usage:
    return Usage(**{**d, "core_busy": _int_keys(d["core_busy"])})


def load_json(path: Path) -> tuple[list[FanoutResult], list[ThroughputResult]]:
    """The runs a `--json` file holds."""
    doc = orjson.loads(path.read_bytes())
    fan = [
        FanoutResult(
            layout=r["layout"],
            round=r["round"],
            run=fanout.RunResult(**{**r["run"], "core_busy": _int_keys(r["run"]["core_busy"])}),
            use=_usage(r["use"]),
        )
        for r in doc.get("fanout", [])
    ]
    thr = [ThroughputResult(**{**r, "use": _usage(r["use"])}) for r in doc.get("throughput", [])]
    return fan, thr


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exits 1 if any run failed."""
    args = parse_args(argv)
    if args.summarize:
        fan, thr = load_json(args.summarize)
        print_tables(args, fan, thr)
        return 0
    nofile = fanout.raise_nofile(args.subscribers + 1024)
    started = time.monotonic()
    # Redis is started before this process pins itself, so it runs on any core.
    with tempfile.TemporaryDirectory(prefix="sb-scale-") as tmp, RedisServer() as redis:
        pin_to_cpu(args.client_cpu)
        workdir = args.keep_logs or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        session = Session(
            pg_admin_url=args.pg_url,
            redis=redis,
            workdir=workdir,
            pins=Pins(args.server_cpu, args.client_cpu),
            log_level=args.log_level,
        )
        print(
            f"Scale-out over one PostgreSQL and one Redis (a throwaway redis-server on port {redis.port}), "
            f"{args.rounds} round(s), layouts alternated. One process runs on CPU {args.server_cpu}, "
            f"several on every core; this generator runs on CPU {args.client_cpu}, so with several "
            f"processes it shares that core with them. RLIMIT_NOFILE {nofile}."
        )
        if "fanout" in args.parts:
            print(
                f"  fanout: {args.subscribers:,} WebSocket subscribers ({args.sample} sampled), "
                f"{args.rate:g} updates/s lifting ranks {args.lift_ranks}, {args.fanout_duration:g} s "
                f"(+{args.fanout_warmup:g} s warm-up)"
            )
            for lay in args.fanout_layouts:
                print(f"    {lay!s:>5}: {lay.describe()}")
            if args.subscribers + 64 > nofile:
                print(f"  warning: RLIMIT_NOFILE {nofile} is too low for {args.subscribers:,} subscribers")
        if "throughput" in args.parts:
            print(
                f"  throughput: POST /scores/update, ACK=commit, closed loop, {args.connections} "
                f"connections, {args.users:,} players, {args.duration:g} s (+{args.warmup:g} s warm-up)"
            )
            for pt in args.points:
                print(f"    {pt!s:>12}: {pt.layout.describe()}")
        fan, thr = uvloop.run(run_parts(args, session))
        print(f"\n(total {time.monotonic() - started:.0f} s)")
        print_tables(args, fan, thr)
    if args.json:
        doc = {"fanout": [asdict(r) for r in fan], "throughput": [asdict(r) for r in thr]}
        args.json.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    return 0 if all(r.run.ok for r in fan) and all(r.check for r in thr) else 1


if __name__ == "__main__":
    raise SystemExit(main())
