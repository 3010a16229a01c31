"""WebSocket adapter: `GET /ws` for game clients that send updates and watch the board.

One reader loop per connection parses messages and hands updates to the
service; one reply task answers them in the order they were received. All
outgoing frames are written synchronously to the connection's transport:
replies and pongs directly, board events through the broadcaster, which
shares one encoded frame among all subscribers. Nothing here awaits a slow
peer: a connection whose unsent bytes exceed `max_buffer_bytes` (it is not
reading even its acks) is closed.

Flow control is TCP's: while `max_pending_updates` updates of a socket wait
for their acks, the reader stops reading from it (aiohttp then stops reading
the socket, and the peer's sends block), so a game backend can pipeline
thousands of updates on one socket and get every ack. Trusted backends
(service tokens) are not subject to the per-message rate limit meant for
players.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from .broadcast import limit_send_buffer
from .errors import Code, ScoreboardError, invalid
from .feed import Event, ws_text_frame
from .hub import Hub, Hubs
from .identity import Identity, Role
from .logs import request_id
from .ratelimit import RateLimiter
from .service import PendingCredit, ScoreService
from .text import text_problem
from .tokens import TokenVerifier, bearer_token

log = logging.getLogger("scoreboard.ws")

CHANNEL = "scoreboard"
BOARD_CHANNEL = "board:"
MAX_ID_CHARS = 128


@dataclass(frozen=True, slots=True)
class WsLimits:
    """Per-connection limits (each one a setting)."""

    max_message_bytes: int = 16 * 1024
    messages_per_s: int = 50
    max_violations: int = 20
    heartbeat_s: float = 20.0
    auth_timeout_s: float = 10.0
    max_buffer_bytes: int = 1024 * 1024
    max_pending_updates: int = 256
    close_timeout_s: float = 5.0
    sndbuf_bytes: int = 32 * 1024


def origin_allowed(origin: str | None, host: str | None, allowed: frozenset[str]) -> bool:
    """Whether a browser page from `origin` may open a socket to `host`.

    Clients that send no Origin are not browsers and cannot be hijacked. With
    an empty allow-list only the server's own host is allowed.
    """
    if origin is None:
        return True
    if "*" in allowed:
        return True
    if origin.rstrip("/").lower() in allowed:
        return True
    if allowed:
        return False
    parts = urlsplit(origin)
    return bool(parts.scheme in ("http", "https") and host and parts.netloc.lower() == host.lower())


@dataclass(slots=True)
class _PendingAck:
    ref: str | int
    # Set once the service took (or refused) the update: the ack's place in
    # the reply queue is taken before the rate limit is awaited.
    credit: asyncio.Future[PendingCredit | ScoreboardError]


def _error_frame(ref: str | int | None, err: ScoreboardError) -> bytes:
    return ws_text_frame(orjson.dumps({"type": "error", "id": ref, "error": err.as_dict()}))


class WsConnection:
    """One client's socket: a subscriber of the board and a source of updates."""

    def __init__(
        self,
        conn_id: str,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport,
        *,
        service: ScoreService,
        verifier: TokenVerifier,
        hubs: Hubs,
        identity: Identity | None,
        token: str | None,
        limits: WsLimits,
        clock: Callable[[], float],
        on_error: Callable[[Code], None] = lambda code: None,
    ) -> None:
        self._conn_id = conn_id
        self._on_error = on_error
        self._ws = ws
        self._transport = transport
        self._service = service
        self._verifier = verifier
        self._hubs = hubs
        self._subscribed: set[Hub] = set()
        self._identity = identity
        self._token = token
        self._limits = limits
        self._clock = clock
        self._opened = clock()
        self._messages = 0
        self._violations = 0
        self._limiter = RateLimiter(window_s=1.0, max_keys=1)
        self._replies: asyncio.Queue[bytes | _PendingAck | asyncio.Future[bytes]] = asyncio.Queue()
        self._pending = 0
        self._room = asyncio.Event()
        self._room.set()
        # An `auth` message being verified, and the future its reply waits on.
        self._verifying: (
            tuple[asyncio.Task[Identity], str, str | int | None, asyncio.Future[bytes]] | None
        ) = None
        self._closing = False
        self._close_task: asyncio.Task[None] | None = None

    # -- Subscriber -------------------------------------------------------

    @property
    def conn_id(self) -> str:
        """Identifies the connection in logs."""
        return self._conn_id

    def buffered(self) -> int:
        """Bytes not yet taken by the peer's socket."""
        return self._transport.get_write_buffer_size()

    def send_event(self, event: Event) -> None:
        """Write a board event (one frame shared by every subscriber)."""
        self._write(event.ws_frame())

    def abort(self, code: int, reason: str) -> None:
        """Close with `code`, without waiting for the peer."""
        if self._close_task is None:
            self._closing = True
            self.unsubscribe_all()
            self._close_task = asyncio.get_running_loop().create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self._ws.close(code=code, message=reason.encode()), self._limits.close_timeout_s
            )
        if not self._transport.is_closing():
            self._transport.abort()

    # -- writing ----------------------------------------------------------

    def _write(self, frame: bytes) -> None:
        if self._transport.is_closing():
            return
        self._transport.write(frame)
        if self._transport.get_write_buffer_size() > self._limits.max_buffer_bytes:
            log.warning(
                "ws_not_reading",
                extra={"fields": {"conn_id": self._conn_id, "buffered": self.buffered()}},
            )
            self.abort(WSCloseCode.POLICY_VIOLATION, "not reading")

    def _reply(self, item: bytes | _PendingAck | asyncio.Future[bytes]) -> None:
        self._replies.put_nowait(item)

    def _refuse(self, ref: str | int | None, err: ScoreboardError) -> None:
        self._reply(self._error(ref, err))

    def _error(self, ref: str | int | None, err: ScoreboardError) -> bytes:
        self._on_error(err.code)
        return _error_frame(ref, err)

    async def reply_loop(self) -> None:
        """Answer updates and refusals in the order their messages came in."""
        while True:
            item = await self._replies.get()
            try:
                if isinstance(item, bytes):
                    self._write(item)
                elif isinstance(item, _PendingAck):
                    self._write(await self._ack(item))
                else:
                    self._write(await item)
            finally:
                self._replies.task_done()

    async def _ack(self, pending: _PendingAck) -> bytes:
        try:
            credit = await pending.credit
            if isinstance(credit, ScoreboardError):
                return self._error(pending.ref, credit)
            answer = await credit.answer()
        except ScoreboardError as err:
            return self._error(pending.ref, err)
        finally:
            self._pending -= 1
            if self._pending < self._limits.max_pending_updates:
                self._room.set()
        return ws_text_frame(orjson.dumps({"type": "ack", "id": pending.ref} | answer.body))

    async def readable(self) -> None:
        """Wait until the next message may be read.

        Not while an `auth` is being verified (the next message must see its
        outcome), nor while `max_pending_updates` updates wait for their acks:
        the socket is then not read at all, so the peer feels TCP backpressure.
        """
        if self._verifying is not None:
            await self._settle_auth()
        while self._pending >= self._limits.max_pending_updates:
            self._room.clear()
            await self._room.wait()

    # -- reading ----------------------------------------------------------

    async def on_text(self, data: str) -> None:
        """Handle one text message (an update returns once the service has taken it)."""
        self._messages += 1
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            self._refuse(None, ScoreboardError(Code.INVALID_JSON, f"The message is not valid JSON: {exc}."))
            return
        ref = msg.get("id") if isinstance(msg, dict) else None
        if (
            not isinstance(ref, str | int)
            or isinstance(ref, bool)
            or (isinstance(ref, str) and (len(ref) > MAX_ID_CHARS or text_problem(ref) is not None))
        ):
            ref = None
        trusted = self._identity is not None and self._identity.role is Role.SERVICE
        if not trusted and self._limiter.acquire("", self._limits.messages_per_s, self._clock()) is not None:
            self._violations += 1
            if self._violations >= self._limits.max_violations:
                self.abort(WSCloseCode.POLICY_VIOLATION, "rate limit exceeded")
                return
            self._refuse(
                ref,
                ScoreboardError(
                    Code.RATE_LIMITED,
                    f"At most {self._limits.messages_per_s} messages per second.",
                    retry_after=1,
                ),
            )
            return
        self._violations = 0
        if self._closing:
            self._refuse(ref, ScoreboardError(Code.SHUTTING_DOWN, "The server is shutting down."))
            return
        try:
            if not isinstance(msg, dict):
                raise invalid("type", "A message must be a JSON object with a 'type'.")
            await self._dispatch(msg, ref)
        except ScoreboardError as err:
            self._refuse(ref, err)
        except Exception:
            # A bug must cost this message, not the connection or the server.
            log.exception("ws_message_failed", extra={"fields": {"conn_id": self._conn_id}})
            self._refuse(ref, ScoreboardError(Code.INTERNAL_ERROR, "Internal server error."))

    def on_binary(self) -> None:
        """Binary frames are refused: the protocol is JSON text."""
        self._messages += 1
        self._refuse(None, ScoreboardError(Code.INVALID_JSON, "Send JSON text frames, not binary ones."))

    async def _dispatch(self, msg: dict[str, Any], ref: str | int | None) -> None:
        kind = msg.get("type")
        if kind == "score.update":
            await self._update(msg, ref)
        elif kind == "subscribe":
            self._subscribe(msg)
        elif kind == "unsubscribe":
            hub = self._channel(msg)
            hub.broadcaster.unsubscribe(self)
            self._subscribed.discard(hub)
        elif kind == "ping":
            self._write(ws_text_frame(b'{"type":"pong"}'))
        elif kind == "auth":
            self._auth(msg, ref)
        else:
            raise invalid("type", "'type' must be subscribe, unsubscribe, score.update, ping or auth.")

    def _channel(self, msg: dict[str, Any]) -> Hub:
        """The hub of the message's channel: `scoreboard` (the default board) or `board:<id>`."""
        channel = msg.get("channel")
        if channel == CHANNEL:
            return self._hubs.default
        if not isinstance(channel, str) or not channel.startswith(BOARD_CHANNEL) or len(channel) > 128:
            raise invalid("channel", f"'channel' must be '{CHANNEL}' or '{BOARD_CHANNEL}<board id>'.")
        hub = self._hubs.find(channel[len(BOARD_CHANNEL) :])
        if hub is None:
            raise ScoreboardError(
                Code.UNKNOWN_BOARD, f"There is no board for channel '{channel}'.", field="channel"
            )
        return hub

    def _subscribe(self, msg: dict[str, Any]) -> None:
        hub = self._channel(msg)
        since = msg.get("since")
        if since is not None and not isinstance(since, str):
            raise invalid("since", "'since' must be the string '<epoch>:<seq>' of an earlier event.")
        # Any position the feed cannot resume from (malformed, too old,
        # another epoch) gets a snapshot, as over SSE.
        self._subscribed.add(hub)
        hub.broadcaster.subscribe(self, since)

    def unsubscribe_all(self) -> None:
        """Leave every board's channel (idempotent)."""
        subscribed, self._subscribed = self._subscribed, set()
        for hub in subscribed:
            hub.broadcaster.unsubscribe(self)

    def _auth(self, msg: dict[str, Any], ref: str | int | None) -> None:
        token = msg.get("token")
        if not isinstance(token, str) or not token:
            raise invalid("token", "'token' must be a non-empty string.")
        if self._identity is None and (
            self._messages > 1 or self._clock() - self._opened > self._limits.auth_timeout_s
        ):
            raise ScoreboardError(
                Code.UNAUTHORIZED,
                "Authenticate with the first message, "
                f"within {self._limits.auth_timeout_s:g} s of connecting.",
            )
        # Verified off the reader (a key set may be refreshed first); the
        # reader waits for the outcome before it reads the next message.
        task = asyncio.get_running_loop().create_task(self._verifier.authenticate(token))
        reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._verifying = (task, token, ref, reply)
        self._reply(reply)

    async def _settle_auth(self) -> None:
        if self._verifying is None:
            return
        task, token, ref, reply = self._verifying
        try:
            identity = await asyncio.shield(task)
        except ScoreboardError as refused:
            frame = self._error(ref, refused)
        else:
            if self._identity is not None and identity.user_id != self._identity.user_id:
                frame = self._error(
                    ref,
                    ScoreboardError(
                        Code.FORBIDDEN, "A connection cannot change its user; reconnect instead."
                    ),
                )
            else:
                self._identity, self._token = identity, token
                frame = ws_text_frame(
                    orjson.dumps({"type": "auth", "id": ref, "success": True, "userId": identity.user_id})
                )
        self._verifying = None
        if not reply.done():
            reply.set_result(frame)

    async def _update(self, msg: dict[str, Any], ref: str | int | None) -> None:
        if ref is None:
            raise invalid("id", f"'id' must be a string of at most {MAX_ID_CHARS} characters or an integer.")
        if self._identity is None or self._token is None:
            raise ScoreboardError(Code.UNAUTHORIZED, "Authenticate before sending updates.")
        identity = self._verifier.verify(self._token)  # cached; catches expiry
        body = {k: v for k, v in msg.items() if k not in ("type", "id")}
        # The ack is queued before the service is awaited (a shared rate
        # limit is a Redis round trip), so replies keep the messages' order
        # and a drain meanwhile still waits for this ack. The reader reads
        # the next message only after this one was taken: updates reach the
        # writer in the order they came.
        credit: asyncio.Future[PendingCredit | ScoreboardError] = asyncio.get_running_loop().create_future()
        self._pending += 1
        self._reply(_PendingAck(ref, credit))
        token = request_id.set(f"{self._conn_id}/{ref}")
        try:
            credit.set_result(await self._service.credit(identity, body))
        except ScoreboardError as err:
            credit.set_result(err)
        except Exception:
            # A bug must cost this message, not the connection or the server.
            log.exception("ws_message_failed", extra={"fields": {"conn_id": self._conn_id}})
            credit.set_result(ScoreboardError(Code.INTERNAL_ERROR, "Internal server error."))
        finally:
            request_id.reset(token)
            if not credit.done():  # cancelled: the connection is ending
                credit.cancel()

    def forget_auth(self) -> None:
        """Drop an `auth` still being verified when the socket ends (its outcome is moot)."""
        if self._verifying is not None:
            task = self._verifying[0]
            task.cancel()
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._verifying = None

    async def drain(self, timeout_s: float) -> None:
        """Stop taking messages and wait until every queued reply was written."""
        self._closing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._replies.join(), timeout_s)


class WsEndpoint:
    """`GET /ws`: checks, upgrade, and the life of each connection."""

    def __init__(
        self,
        service: Callable[[], ScoreService],
        hubs: Callable[[], Hubs],
        verifier: TokenVerifier,
        *,
        allowed_origins: frozenset[str],
        limits: WsLimits,
        clock: Callable[[], float] = time.monotonic,
        on_error: Callable[[Code], None] = lambda code: None,
    ) -> None:
        self._on_error = on_error
        self._service = service
        self._hubs = hubs
        self._verifier = verifier
        self._allowed = allowed_origins
        self._limits = limits
        self._clock = clock
        self._connections: set[WsConnection] = set()
        self._ids = 0

    def __len__(self) -> int:
        return len(self._connections)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Upgrade to a WebSocket after the Origin, token and per-address checks."""
        if not origin_allowed(request.headers.get("Origin"), request.host, self._allowed):
            raise ScoreboardError(Code.FORBIDDEN, "This Origin may not open a WebSocket here.")
        if "token" in request.query or "access_token" in request.query:
            raise ScoreboardError(
                Code.UNAUTHORIZED,
                "Tokens in the URL are not accepted; send an Authorization header or an auth message.",
            )
        if not web.WebSocketResponse().can_prepare(request).ok:
            raise ScoreboardError(
                Code.UPGRADE_REQUIRED,
                "GET /ws is a WebSocket endpoint: send a WebSocket upgrade request.",
            )
        identity = token = None
        if "Authorization" in request.headers:
            token = bearer_token(request.headers["Authorization"])
            identity = await self._verifier.authenticate(token)
        return await self._run(request, identity, token)

    async def _run(
        self, request: web.Request, identity: Identity | None, token: str | None
    ) -> web.StreamResponse:
        limits = self._limits
        ws = web.WebSocketResponse(
            heartbeat=limits.heartbeat_s, max_msg_size=limits.max_message_bytes, compress=False
        )
        await ws.prepare(request)
        transport = request.transport
        if transport is None:
            return ws
        limit_send_buffer(transport, limits.sndbuf_bytes)
        self._ids += 1
        conn = WsConnection(
            f"ws-{self._ids}",
            ws,
            transport,
            service=self._service(),
            verifier=self._verifier,
            hubs=self._hubs(),
            identity=identity,
            token=token,
            limits=limits,
            clock=self._clock,
            on_error=self._on_error,
        )
        self._connections.add(conn)
        replies = asyncio.get_running_loop().create_task(conn.reply_loop())
        log.debug("ws_open", extra={"fields": {"conn_id": conn.conn_id, "peer": request.remote}})
        try:
            while True:
                await conn.readable()
                msg = await ws.receive()
                if msg.type is WSMsgType.TEXT:
                    await conn.on_text(msg.data)
                elif msg.type is WSMsgType.BINARY:
                    conn.on_binary()
                else:
                    break
        except Exception:
            # The upgrade is done: an HTTP error answer would corrupt the
            # stream. Log the bug and close this socket alone.
            log.exception("ws_connection_failed", extra={"fields": {"conn_id": conn.conn_id}})
            conn.abort(WSCloseCode.INTERNAL_ERROR, "internal error")
        finally:
            conn.forget_auth()
            conn.unsubscribe_all()
            self._connections.discard(conn)
            replies.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replies
            log.debug("ws_closed", extra={"fields": {"conn_id": conn.conn_id, "code": ws.close_code}})
        return ws

    async def shutdown(self) -> None:
        """Close every socket with 1001 once its queued replies are written."""
        conns = list(self._connections)
        await asyncio.gather(*(c.drain(self._limits.close_timeout_s) for c in conns))
        for c in conns:
            c.abort(WSCloseCode.GOING_AWAY, "server shutting down")
