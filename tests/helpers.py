"""Test helpers: start the real server in-process, mint credentials, talk HTTP."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from scoreboard.app import HUBS, SERVICE, WS, create_app, start
from scoreboard.broadcast import Broadcaster
from scoreboard.config import Settings
from scoreboard.hub import Hubs
from scoreboard.service import ScoreService
from scoreboard.tickets import Ticket, sign_ticket
from scoreboard.tokens import Role, mint_token
from scoreboard.ws import WsEndpoint

JWT_SECRET = "test-jwt-secret-0123456789abcdef-0123456789"
TICKET_SECRET = "test-ticket-secret-0123456789abcdef-01234567"


async def eventually(condition: Callable[[], bool], timeout_s: float = 2.0) -> bool:
    """Poll `condition` until it holds or `timeout_s` passes; returns its last value."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self.now += seconds


def token(
    sub: str,
    *,
    role: Role = Role.PLAYER,
    name: str | None = None,
    ttl: float = 3600,
    now: float | None = None,
    secret: str = JWT_SECRET,
    **extra: Any,
) -> str:
    """A token signed with the test secret."""
    return mint_token(
        secret.encode(),
        sub=sub,
        now=time.time() if now is None else now,
        ttl_s=ttl,
        name=name,
        role=role,
        extra=extra or None,
    )


def ticket(
    user: str,
    points: int | None,
    *,
    scores: dict[str, int] | None = None,
    metadata: dict[str, Any] | None = None,
    action_id: str | None = None,
    now: float | None = None,
    ttl: int = 600,
    not_before: int = 0,
    secret: str = TICKET_SECRET,
) -> dict[str, str]:
    """A player update body with a ticket signed with the test secret."""
    issued = int(time.time() if now is None else now)
    t = Ticket(
        action_id=action_id or uuid.uuid4().hex,
        user_id=user,
        points=points,
        not_before=issued + not_before,
        expires_at=issued + ttl,
        scores=None if scores is None else tuple(sorted(scores.items())),
        metadata=None if metadata is None else orjson.dumps(metadata),
    )
    return {"actionId": t.action_id, "ticket": sign_ticket(secret.encode(), t)}


def bearer(tok: str) -> dict[str, str]:
    """Authorization header for `tok`."""
    return {"Authorization": f"Bearer {tok}"}


def service_update(user: str, delta: int, action_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """A service update body."""
    return {"userId": user, "scoreDelta": delta, "actionId": action_id or uuid.uuid4().hex, **extra}


@dataclass
class ServerHandle:
    """A running server, its settings, and an HTTP session to it."""

    app: web.Application
    runner: web.AppRunner
    settings: Settings
    url: str
    session: aiohttp.ClientSession
    service_token: str = field(default="")
    stopped: bool = False

    @property
    def service(self) -> ScoreService:
        """The in-process service (for assertions only)."""
        return self.app[SERVICE]

    @property
    def hubs(self) -> Hubs:
        """The in-process board hubs (for assertions only)."""
        return self.app[HUBS]

    @property
    def broadcaster(self) -> Broadcaster:
        """The default board's in-process broadcaster (for assertions only)."""
        return self.app[HUBS].default.broadcaster

    @property
    def ws_endpoint(self) -> WsEndpoint:
        """The in-process WebSocket endpoint (for assertions only)."""
        return self.app[WS]

    @property
    def ws_url(self) -> str:
        """ws://host:port/ws"""
        return self.url.replace("http://", "ws://") + "/ws"

    async def post(self, path: str, body: Any, tok: str | None = None, **kw: Any) -> tuple[int, Any]:
        """POST JSON; returns status and decoded JSON."""
        headers = bearer(tok) if tok else {}
        headers.update(kw.pop("headers", {}))
        async with self.session.post(self.url + path, json=body, headers=headers, **kw) as resp:
            return resp.status, await resp.json()

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        """GET; returns status and decoded JSON."""
        async with self.session.get(self.url + path, **kw) as resp:
            return resp.status, await resp.json()

    async def credit(
        self, user: str, delta: int, action_id: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        """Credit with the service token; asserts success."""
        status, body = await self.post(
            "/scores/update", service_update(user, delta, action_id, **extra), self.service_token
        )
        assert status == 200, body
        return dict(body)

    async def top(self) -> list[dict[str, Any]]:
        """GET /scores' topUsers."""
        status, body = await self.get("/scores")
        assert status == 200
        return list(body["topUsers"])

    async def stop(self) -> None:
        """Graceful shutdown, as on SIGTERM."""
        if self.stopped:
            return
        self.stopped = True
        await self.session.close()
        await self.runner.cleanup()


def make_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Settings:
    """Settings for a test server on a free port."""
    values: dict[str, Any] = {
        "port": 0,
        "data_dir": tmp_path / "data",
        "database_url": database_url,
        "jwt_secret": JWT_SECRET,
        "ticket_secret": TICKET_SECRET,
        "shutdown_timeout_s": 5.0,
        "probe_interval_s": 0.1,
    }
    values.update(overrides)
    settings = Settings(**values)
    settings.validate()
    return settings


async def start_server(
    tmp_path: Path, database_url: str, *, clock: Any = None, **overrides: Any
) -> ServerHandle:
    """Start a server in this event loop (stop it with `handle.stop()`)."""
    settings = make_settings(tmp_path, database_url, **overrides)
    app = create_app(settings, clock=clock or time.time)
    runner, port = await start(app, settings)
    url = f"http://127.0.0.1:{port}"
    # A realistic client: at most 100 connections, under the per-address cap.
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
    now = clock() if clock else None
    return ServerHandle(app, runner, settings, url, session, token("backend", role=Role.SERVICE, now=now))


async def send(
    server: ServerHandle, method: str, path: str, body: Any = None, tok: str | None = None, **kw: Any
) -> tuple[int, Any]:
    """Any method with an optional JSON body (DELETE with a body, say); returns status and JSON."""
    headers = bearer(tok) if tok else {}
    headers.update(kw.pop("headers", {}))
    if body is not None:
        kw["json"] = body
    async with server.session.request(method, server.url + path, headers=headers, **kw) as resp:
        return resp.status, await resp.json(content_type=None)
