"""Wiring: `create_app(settings)` builds the application, and `serve` runs it.

This is the only place where components meet. Lifecycle (aiohttp
`cleanup_ctx`): open and migrate the store, create new boards, end every
season whose end passed while the server was down, load each board's top K
with one indexed query, start the writer and the season timer. Shutdown
order: stop accepting, let in-flight requests finish, flush the last batch,
close the pool.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import secrets
import signal
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import cast

from aiohttp import web
from redis.asyncio import Redis

from .board import Board
from .broadcast import Broadcaster
from .bus import Bus, ChangeLog
from .bus import redis_client as bus_redis
from .catalog import Catalog
from .config import Secrets, Settings, load_catalog, make_data_dir, resolve_secrets, schedules
from .connections import ConnectionGuard, GuardedSite, connection_middleware
from .cors import Cors
from .feed import Feed
from .http import RequestIds, Routes, error_middleware, request_id_header
from .hub import FanoutTotals, Hub, Hubs
from .jwks import jwks_keys
from .limits import LocalLimiter, RedisLimiter
from .metrics import METRICS, Metrics, MetricsEndpoint
from .openapi import OPENAPI_PATH, OpenApiEndpoint, describe
from .rankload import RankLoader
from .schedule import Schedule
from .seasons import Seasons
from .sequencer import Sequencer
from .service import ScoreService, record_commit, resync
from .sse import SseEndpoint
from .store import StorageError, Store
from .stores import open_store
from .tokens import TokenVerifier
from .writer import Writer
from .ws import WsEndpoint, WsLimits

log = logging.getLogger("scoreboard.app")

SERVICE = web.AppKey("service", ScoreService)
HUBS = web.AppKey("hubs", Hubs)
WS = web.AppKey("ws", WsEndpoint)
SSE = web.AppKey("sse", SseEndpoint)
SEQUENCER = web.AppKey("sequencer", Sequencer)


def create_app(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.time,
    secrets: Secrets | None = None,
    catalog: Catalog | None = None,
) -> web.Application:
    """The application for `settings`; storage opens when the app starts."""
    secrets = secrets or resolve_secrets(settings)
    catalog = catalog if catalog is not None else load_catalog(settings)
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[connection_middleware, error_middleware(RequestIds())],
    )
    app.on_response_prepare.append(request_id_header)
    metrics = app[METRICS] = Metrics()
    # A JWKS (file or URL) is a key source refreshed in the background; its
    # first load runs before storage opens, so bad keys fail the start early.
    jwks = jwks_keys(settings, secrets.jwt_keys)
    verifier = TokenVerifier(
        secrets.jwt_keys if jwks is None else jwks,
        clock=clock,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        leeway_s=settings.jwt_leeway_s,
        max_bytes=settings.jwt_max_bytes,
        cache_size=settings.token_cache_size,
    )
    if jwks is not None:
        app.cleanup_ctx.append(jwks.context)
    app.cleanup_ctx.append(functools.partial(_storage, settings, clock, secrets, catalog))
    app[WS] = WsEndpoint(
        lambda: app[SERVICE],
        lambda: app[HUBS],
        verifier,
        allowed_origins=settings.origins,
        limits=WsLimits(
            max_message_bytes=settings.ws_max_message_bytes,
            messages_per_s=settings.ws_messages_per_s,
            max_violations=settings.ws_max_violations,
            heartbeat_s=settings.ws_heartbeat_s,
            auth_timeout_s=settings.ws_auth_timeout_s,
            max_buffer_bytes=settings.ws_max_buffer_bytes,
            max_pending_updates=settings.ws_max_pending_updates,
            close_timeout_s=min(5.0, settings.shutdown_timeout_s / 2),
            sndbuf_bytes=settings.subscriber_sndbuf_bytes,
        ),
        on_error=functools.partial(metrics.error, transport="ws"),
    )
    app[SSE] = SseEndpoint(
        lambda: app[HUBS],
        heartbeat_s=settings.sse_heartbeat_s,
        retry_ms=settings.sse_retry_ms,
        sndbuf_bytes=settings.subscriber_sndbuf_bytes,
    )
    app.on_shutdown.append(_close_streams)
    Routes(
        lambda: app[SERVICE],
        verifier,
        max_body_bytes=settings.max_body_bytes,
        readiness_timeout_s=settings.store_timeout_s,
        request_timeout_s=settings.request_timeout_s,
    ).add_to(app)
    app.router.add_get("/ws", app[WS].handle, allow_head=False)
    for path in ("/scores/stream", "/api/boards/{board:[^/]+}/stream"):
        app.router.add_get(path, app[SSE].handle, allow_head=False)
        app.router.add_route("HEAD", path, app[SSE].head)
    metrics.watch_streams(app[WS], app[SSE])
    if settings.metrics != "off":
        app.router.add_get("/metrics", MetricsEndpoint(metrics, verifier, access=settings.metrics).handle)
    app.router.add_get(OPENAPI_PATH, OpenApiEndpoint(describe(settings, catalog)).handle)
    Cors(settings.cors).install(app)
    return app


async def _close_streams(app: web.Application) -> None:
    # Runs after the listener stopped and before the last flush: sockets get
    # their pending acks, then 1001; event streams end.
    app[SSE].shutdown()
    await app[WS].shutdown()


async def _storage(
    settings: Settings,
    clock: Callable[[], float],
    secrets: Secrets,
    catalog: Catalog,
    app: web.Application,
) -> AsyncIterator[None]:
    started = time.perf_counter()
    if settings.database_url is None:
        # The embedded default lives in the data dir, created private (0700);
        # an explicit sqlite: URL must name an existing directory.
        make_data_dir(settings.data_dir)
    store = await open_store(
        settings.store_url,
        boards=catalog.boards,
        default_board=catalog.default,
        timeout_s=settings.store_timeout_s,
        pool_min=settings.pg_pool_min,
        pool_max=settings.pg_pool_max,
        sqlite_synchronous=settings.sqlite_synchronous,
    )
    # With several processes: Redis carries committed values (the bus), the
    # event history and the sequencer leases; rate limits are shared there.
    redis_client = None if settings.redis_url is None else bus_redis(settings.redis_url, timeout_s=1.0)
    try:
        plans = schedules(catalog)
        board_hubs = await _board_hubs(settings, store, catalog, plans, clock)
        loader = RankLoader(board_hubs, store, chunk_rows=settings.rank_load_chunk)
        follower = _follower(
            settings, store=store, hubs=board_hubs, loader=loader, redis_client=redis_client, clock=clock
        )
        bus = follower if isinstance(follower, Bus) else None
        seasons = Seasons(
            board_hubs,
            store,
            plans,
            clock=clock,
            max_sleep_s=settings.season_check_s,
            sync=None if bus is None else bus.catch_up,
        )
        # Seasons that ended while the server was down end now, in order,
        # exactly as if it had been up; then each board loads its top K.
        await seasons.roll_due()
        for hub in board_hubs:
            # State and top K from one snapshot: other processes may commit meanwhile.
            state, top = await store.load_board(hub.id, hub.spec.top_k)
            hub.reload(state, top)
        # Several processes: every board's events are one sequence in Redis.
        sequencer = _sequencer(app, settings, board_hubs, redis_client)
        # Every rank comes after, in the background: the top K and updates
        # are served meanwhile, and rank reads go to the store until then.

        async def recover() -> None:
            if bus is not None:
                # A batch whose answer was lost may have committed: its values
                # are in the database, in version order.
                await bus.catch_up_all()
            else:
                await resync(board_hubs, store, math.floor(clock()))
            loader.start()

        writer = Writer(
            store,
            clock_us=lambda: int(clock() * 1_000_000),
            on_commit=functools.partial(record_commit, board_hubs),
            on_recover=recover,
            on_batch=app[METRICS].batch_committed,
            before_batch=seasons.roll_due,
            flush_interval_s=settings.flush_interval_ms / 1000,
            max_batch=settings.flush_max_batch,
            max_queue=settings.queue_max,
            timeout_s=settings.store_timeout_s,
            retry_after_s=settings.retry_after_s,
            probe_interval_s=settings.probe_interval_s,
        )
        app[SERVICE] = ScoreService(
            hubs=board_hubs,
            writer=writer,
            store=store,
            catalog=catalog,
            ticket_keys=secrets.ticket_keys,
            clock=clock,
            max_delta=settings.max_delta,
            ack_commit=settings.ack == "commit",
            retry_after_s=settings.retry_after_s,
            rate_limit_keys=settings.rate_limit_keys,
            limiter=None
            if redis_client is None
            else RedisLimiter(
                redis_client,
                prefix=settings.redis_prefix,
                fallback=LocalLimiter(max_keys=settings.rate_limit_keys),
            ),
            player_updates_per_min=settings.player_updates_per_min,
            player_actions_per_min=settings.player_actions_per_min,
            seasons=seasons,
        )
        app[HUBS] = board_hubs
        app[METRICS].watch_storage(writer, app[SERVICE], FanoutTotals(board_hubs))
        app[SERVICE].rank_state = lambda: loader.state
        app[SERVICE].bus_state = (lambda: "off") if bus is None else (lambda: bus.state)
        writer.start()
        seasons.start(writer)
        loader.start()
        log.info(
            "storage_ready",
            extra={
                "fields": {
                    "store": settings.store_url.split(":", 1)[0],
                    "database": settings.store_display,
                    "boards": {
                        hub.id: {"season": hub.season, "entries": len(hub.board.entries())}
                        for hub in board_hubs
                    },
                    "ms": round((time.perf_counter() - started) * 1000, 1),
                }
            },
        )
        try:
            yield
        finally:
            await loader.close()
            await seasons.close()
            await writer.close(settings.shutdown_timeout_s)
            if sequencer is not None:
                await sequencer.close()
            await follower.close()
            board_hubs.close()
            log.info(
                "writer_closed",
                extra={"fields": {"batches": writer.batches, "committed": writer.committed}},
            )
    finally:
        if redis_client is not None:
            await redis_client.aclose()
        await store.close()


async def _board_hubs(
    settings: Settings,
    store: Store,
    catalog: Catalog,
    plans: Mapping[str, Schedule | None],
    clock: Callable[[], float],
) -> Hubs:
    """A hub per board of the catalog, each board created in the store if new."""
    epoch = _epoch()

    def broadcaster(feed: Feed, board: Board) -> Broadcaster:
        return Broadcaster(
            feed,
            board,
            clock=time.monotonic,
            tick_s=settings.broadcast_tick_ms / 1000,
            high_water=settings.subscriber_buffer_bytes,
            hard_limit=settings.ws_max_buffer_bytes,
            stuck_timeout_s=settings.subscriber_stuck_s,
        )

    now = math.floor(clock())
    hubs: dict[str, Hub] = {}
    for spec in catalog.boards.values():
        plan = plans[spec.id]
        state = await store.ensure_board(spec, now, None if plan is None else plan.next_after(now))
        hubs[spec.id] = Hub(
            spec,
            state,
            (),
            epoch=epoch,
            broadcaster=broadcaster,
            history=settings.broadcast_history,
            ranks=settings.ranks == "memory",
        )
    return Hubs(hubs, catalog.default)


def _follower(
    settings: Settings,
    *,
    store: Store,
    hubs: Hubs,
    loader: RankLoader,
    redis_client: Redis | None,
    clock: Callable[[], float],
) -> Bus | GapResync:
    """What keeps the hubs in step with the database: the bus (several processes) or gap resyncs."""
    if redis_client is None:
        resync_gaps = GapResync(store, loader, clock)
        hubs.on_gap = resync_gaps
        return resync_gaps
    bus = Bus(
        hubs,
        # Settings refuse a shared server on anything but PostgreSQL, the
        # store that keeps committed values by version.
        cast(ChangeLog, store),
        redis_client,
        prefix=settings.redis_prefix,
        on_reload=lambda hub: loader.start(hub.id),
        poll_s=settings.bus_poll_s,
    )
    # Listening starts before the boards load, so nothing committed meanwhile
    # is missed: what is older than the load is ignored.
    bus.start()
    return bus


def _sequencer(
    app: web.Application, settings: Settings, hubs: Hubs, redis_client: Redis | None
) -> Sequencer | None:
    """Each board's shared event sequence, started (after the boards loaded); None for one process."""
    if redis_client is None:
        return None
    sequencer = app[SEQUENCER] = Sequencer(
        hubs,
        redis_client,
        prefix=settings.redis_prefix,
        new_epoch=_epoch,
        lease_s=settings.sequencer_lease_s,
        tick_s=settings.broadcast_tick_ms / 1000,
        history=settings.broadcast_history,
    )
    sequencer.start()
    return sequencer


class GapResync:
    """One process: a version went missing (a commit whose answer was lost); reload that board."""

    def __init__(self, store: Store, loader: RankLoader, clock: Callable[[], float]) -> None:
        self._store = store
        self._loader = loader
        self._clock = clock
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def __call__(self, hub: Hub) -> None:
        if hub.id not in self._tasks:
            task = asyncio.get_running_loop().create_task(
                self._resync(hub), name=f"scoreboard-resync-{hub.id}"
            )
            self._tasks[hub.id] = task
            task.add_done_callback(lambda _: self._tasks.pop(hub.id, None))

    async def _resync(self, hub: Hub) -> None:
        log.warning("version_gap", extra={"fields": {"board": hub.id, "missing": hub.missing}})
        try:
            state = await self._store.ensure_board(hub.spec, math.floor(self._clock()), hub.ends_at)
            hub.reload(state, await self._store.top(hub.id, state.season, hub.spec.top_k))
        except StorageError as exc:
            log.warning("version_gap_resync_failed", extra={"fields": {"board": hub.id, "error": repr(exc)}})
            return
        self._loader.start(hub.id)

    async def close(self) -> None:
        """Stop resyncs in progress; idempotent."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _epoch() -> str:
    """A new board history per process: start time plus randomness, in hex."""
    return f"{int(time.time()):x}{secrets.token_hex(2)}"


async def start(
    app: web.Application, settings: Settings, *, reuse_port: bool = False
) -> tuple[web.AppRunner, int]:
    """Start serving `app` on the configured address; returns the runner and port.

    `reuse_port` sets SO_REUSEPORT so the worker processes of one supervisor
    (workers.py) listen on the same port and the kernel spreads connections.
    """
    guard = ConnectionGuard(
        request_timeout_s=settings.request_timeout_s,
        keepalive_timeout_s=settings.keepalive_timeout_s,
        max_connections_per_ip=settings.max_connections_per_ip,
    )
    if (metrics := app.get(METRICS)) is not None:
        metrics.watch_connections(guard)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.shutdown_timeout_s)
    await runner.setup()
    try:
        site = GuardedSite(
            runner,
            settings.host,
            settings.port,
            guard=guard,
            backlog=1024,
            # Room for a token of jwt_max_bytes plus "Bearer " so an oversized
            # token is refused by us with a JSON 401, not by the HTTP parser.
            max_field_size=max(8190, settings.jwt_max_bytes * 2),
            reuse_port=reuse_port,
        )
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    port = runner.addresses[0][1]
    return runner, port


async def serve(settings: Settings, *, reuse_port: bool = False) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully (`reuse_port`: see `start`)."""
    app = create_app(settings)
    runner, port = await start(app, settings, reuse_port=reuse_port)
    shown = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host  # noqa: S104
    if ":" in shown:
        shown = f"[{shown}]"
    log.info(
        "listening",
        extra={
            "fields": {
                "url": f"http://{shown}:{port}/",
                "host": settings.host,
                "port": port,
                "database": settings.store_display,
                "ack": settings.ack,
            }
        },
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("shutting_down")
    finally:
        await runner.cleanup()
        log.info("stopped")
