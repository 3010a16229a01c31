"""`make bench`: throughput, start-up and WebSocket fan-out benchmarks, modest defaults.

1. `loadtest.http_updates`: POST /scores/update with ACK=commit on SQLite and
   PostgreSQL, default group commit vs one commit per update (batch-1) vs
   flush intervals of 0 and 5 ms (the default is 2); 3 alternated rounds of 6 s (+1 s warm-up),
   64 connections, server on CPU 0 and generator on CPU 1, 200s checked
   against the ledger after every run.
2. `loadtest.startup`: start-up with 1,000,000 users vs an empty database,
   3 alternated starts per store.
3. `loadtest.fanout`: 2,000 WebSocket subscribers of the baseline (plain
   aiohttp, 20 Hz, `await ws.send_str` per subscriber) vs the real server
   with 40 updates/s at the default 50 ms broadcast tick and at 20 ms;
   2 alternated rounds of 5 s (+1 s warm-up).

About 5 minutes on a 2-core machine. Run (repository root, venv active):

    python -m loadtest.run_all                    # what `make bench` runs
    python -m loadtest.run_all --stores sqlite    # without PostgreSQL
    python -m loadtest.run_all --rounds 5 --duration 8 --users 1000000 --runs 5
    python -m loadtest.run_all --fanout-variants ''          # without the fan-out part

PostgreSQL scratch databases are created on SCOREBOARD_BENCH_DATABASE_URL
(or SCOREBOARD_TEST_DATABASE_URL, default postgresql://postgres@127.0.0.1:5432/test)
and dropped afterwards. Prints each part's progress, then one summary with
all tables. Exits 1 if a ledger check failed, a board was wrong, the
seeded start-up missed 2 s, or a fan-out run failed (server died, updates
refused, subscribers not connected, an update never delivered).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import uvloop

from loadtest import fanout, http_updates, startup
from loadtest.common import CLIENT_CPU, SERVER_CPU, default_pg_url, median, pin_to_cpu

VARIANTS = "default,batch-1,interval-0,interval-5"
FANOUT_VARIANTS = "baseline,server,server+tick-20"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stores", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    p.add_argument("--variants", default=VARIANTS, help=f"throughput variants (default {VARIANTS})")
    p.add_argument("--rounds", type=int, default=3, help="throughput rounds (default 3)")
    p.add_argument("--duration", type=float, default=6.0, help="measured seconds per run (default 6)")
    p.add_argument("--connections", type=int, default=64, help="concurrent connections (default 64)")
    p.add_argument("--users", type=int, default=1_000_000, help="users seeded for start-up (default 1M)")
    p.add_argument("--runs", type=int, default=3, help="start-up runs per database (default 3)")
    p.add_argument("--pg-url", default=default_pg_url(), help="admin URL to create scratch databases with")
    p.add_argument(
        "--fanout-variants",
        default=FANOUT_VARIANTS,
        help=f"fan-out variants (default {FANOUT_VARIANTS}; empty: skip the fan-out part)",
    )
    p.add_argument("--fanout-subscribers", default="2000", help="fan-out subscriber counts (default 2000)")
    p.add_argument("--fanout-rounds", type=int, default=2, help="fan-out rounds (default 2)")
    args = p.parse_args(argv)
    pin_to_cpu(CLIENT_CPU)
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sb-bench-") as tmp:
        workdir = Path(tmp)
        m = http_updates.Matrix(
            stores=stores,
            variants=[http_updates.parse_variant(v) for v in args.variants.split(",") if v.strip()],
            rounds=args.rounds,
            shape=http_updates.LoadShape(
                duration_s=args.duration, warmup_s=1.0, connections=args.connections, users=10_000, rate=None
            ),
            pg_admin_url=args.pg_url,
            workdir=workdir,
            server_cpu=SERVER_CPU,
        )
        print(
            f"== 1/3 throughput: {args.connections} connections, {args.duration:g} s x {args.rounds} rounds"
        )
        for v in m.variants:
            print(f"  {v.name:12} {v.describe()}")
        results = uvloop.run(http_updates.run_matrix(m))
        cfg = startup.StartupConfig(
            stores=stores, users=args.users, runs=args.runs, pg_admin_url=args.pg_url, workdir=workdir
        )
        print(f"\n== 2/3 start-up: empty vs {args.users:,} users, {args.runs} runs per store")
        starts, seed_s = uvloop.run(startup.compare(cfg))
        fan_cfg: fanout.Config | None = None
        fan_results: list[fanout.RunResult] = []
        if args.fanout_variants.strip():
            fan_args = fanout.parse_args(
                [
                    "--variants",
                    args.fanout_variants,
                    "--subscribers",
                    args.fanout_subscribers,
                    "--rounds",
                    str(args.fanout_rounds),
                    "--duration",
                    "5",
                    "--warmup",
                    "1",
                    "--calibrate",
                    "2",
                ]
            )
            fan_cfg = fanout.config_from_args(fan_args, workdir)
            fanout.raise_nofile(max(fan_cfg.sizes) + 1024)
            print(
                f"\n== 3/3 fan-out: {args.fanout_subscribers} WebSocket subscribers, "
                f"5 s x {args.fanout_rounds} rounds"
            )
            for fv in fan_cfg.variants:
                print(f"  {fv.name:16} {fv.describe()}")
            fan_results = uvloop.run(fanout.run_matrix(fan_cfg))
    print("\n== summary (medians)\n")
    print("POST /scores/update, ACK=commit, updates/s and latency:\n")
    print(http_updates.summary(results, m.variants, stores))
    print("\nstart-up (process start until /readyz is 200 and GET /scores is correct):\n")
    print(startup.summary(starts, seed_s, cfg))
    if fan_cfg is not None:
        print("\nWebSocket fan-out (messages/s, server CPU per message, update-to-subscriber latency):\n")
        print(fanout.summary(fan_results, fan_cfg.variants, fan_cfg.sizes))
    print(f"\ntotal {time.perf_counter() - began:.0f} s")
    checks = all(r.check for r in results) and all(s.board_ok for s in starts)
    checks = checks and all(r.ok for r in fan_results)
    met = all(
        median([s.board_s for s in starts if s.store == store and s.users]) < cfg.target_s for store in stores
    )
    return 0 if checks and met else 1


if __name__ == "__main__":
    raise SystemExit(main())
