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
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from .board import Board
from .broadcast import Broadcaster
from .catalog import Catalog
from .config import Secrets, Settings, load_catalog, make_data_dir, resolve_secrets, schedules
from .connections import ConnectionGuard, GuardedSite, connection_middleware
from .cors import Cors
from .feed import Feed
from .http import RequestIds, Routes, error_middleware, request_id_header
from .hub import FanoutTotals, Hub, Hubs
from .jwks import jwks_keys
from .metrics import METRICS, Metrics, MetricsEndpoint
from .openapi import OPENAPI_PATH, OpenApiEndpoint, describe
from .rankload import RankLoader
from .seasons import Seasons
from .service import ScoreService, record_commit, resync
from .sse import SseEndpoint
from .stores import open_store
from .tokens import TokenVerifier
from .writer import Writer
from .ws import WsEndpoint, WsLimits

log = logging.getLogger("scoreboard.app")

SERVICE = web.AppKey("service", ScoreService)
HUBS = web.AppKey("hubs", Hubs)
WS = web.AppKey("ws", WsEndpoint)
SSE = web.AppKey("sse", SseEndpoint)


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
    try:
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

        plans = schedules(catalog)
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
        board_hubs = Hubs(hubs, catalog.default)
        seasons = Seasons(board_hubs, store, plans, clock=clock, max_sleep_s=settings.season_check_s)
        # Seasons that ended while the server was down end now, in order,
        # exactly as if it had been up; then each board loads its top K.
        await seasons.roll_due()
        for hub in board_hubs:
            hub.board.replace(await store.top(hub.id, hub.season, hub.spec.top_k))
        # Every rank comes after, in the background: the top K and updates
        # are served meanwhile, and rank reads go to the store until then.
        loader = RankLoader(board_hubs, store, chunk_rows=settings.rank_load_chunk)

        async def recover() -> None:
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
            player_updates_per_min=settings.player_updates_per_min,
            player_actions_per_min=settings.player_actions_per_min,
            seasons=seasons,
        )
        app[HUBS] = board_hubs
        app[METRICS].watch_storage(writer, app[SERVICE], FanoutTotals(board_hubs))
        app[SERVICE].rank_state = lambda: loader.state
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
            board_hubs.close()
            log.info(
                "writer_closed",
                extra={"fields": {"batches": writer.batches, "committed": writer.committed}},
            )
    finally:
        await store.close()


def _epoch() -> str:
    """A new board history per process: start time plus randomness, in hex."""
    return f"{int(time.time()):x}{secrets.token_hex(2)}"


async def start(app: web.Application, settings: Settings) -> tuple[web.AppRunner, int]:
    """Start serving `app` on the configured address; returns the runner and port."""
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
        )
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    port = runner.addresses[0][1]
    return runner, port


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    app = create_app(settings)
    runner, port = await start(app, settings)
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
