"""HTTP adapter: routes, request parsing, and the one error-to-status map.

Handlers stay thin: authenticate, read JSON, call the service, encode.
Every refusal, including unknown routes and oversized bodies, leaves as
`{"success": false, "error": {"code", "message"}}` with the status below.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from .board import Board
from .errors import Code, ScoreboardError, invalid
from .feed import entry_json
from .logs import request_id
from .service import ScoreService
from .store import Outcome, Result, StorageError
from .tokens import Identity, TokenVerifier, bearer_token
from .validation import MAX_STRING_CHARS

log = logging.getLogger("scoreboard.http")

STATUS: dict[Code, int] = {
    Code.INVALID_JSON: 400,
    Code.UNAUTHORIZED: 401,
    Code.INVALID_TOKEN: 401,
    Code.TOKEN_EXPIRED: 401,
    Code.FORBIDDEN: 403,
    Code.INVALID_TICKET: 403,
    Code.TICKET_MISMATCH: 403,
    Code.TICKET_EXPIRED: 403,
    Code.NOT_FOUND: 404,
    Code.USER_NOT_FOUND: 404,
    Code.METHOD_NOT_ALLOWED: 405,
    Code.ACTION_CONFLICT: 409,
    Code.PAYLOAD_TOO_LARGE: 413,
    Code.UNSUPPORTED_MEDIA_TYPE: 415,
    Code.VALIDATION_FAILED: 422,
    Code.UNKNOWN_ACTION_TYPE: 422,
    Code.DELTA_MISMATCH: 422,
    Code.TICKET_NOT_YET_VALID: 425,
    Code.RATE_LIMITED: 429,
    Code.INTERNAL_ERROR: 500,
    Code.STORAGE_UNAVAILABLE: 503,
    Code.OVERLOADED: 503,
    Code.SHUTTING_DOWN: 503,
}

STATIC_DIR = Path(__file__).parent / "static"
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A response with an orjson-encoded body."""
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def error_response(err: ScoreboardError) -> web.Response:
    """The JSON error response for `err`, with Retry-After / WWW-Authenticate."""
    status = STATUS[err.code]
    headers: dict[str, str] = {}
    if err.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(err.retry_after)))
    if status == 401:
        headers["WWW-Authenticate"] = (
            'Bearer realm="scoreboard"'
            if err.code is Code.UNAUTHORIZED
            else f'Bearer realm="scoreboard", error="invalid_token", error_description="{err.message}"'
        )
    return json_response({"success": False, "error": err.as_dict()}, status, headers)


_HTTP_CODES: dict[int, tuple[Code, str]] = {
    404: (Code.NOT_FOUND, "No such resource."),
    405: (Code.METHOD_NOT_ALLOWED, "This method is not allowed on this resource."),
    413: (Code.PAYLOAD_TOO_LARGE, "The request body is too large."),
}


class RequestIds:
    """Request ids: a random per-process prefix and a counter (uuid4 per request cost ~3% CPU)."""

    __slots__ = ("_counter", "_prefix")

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(4)
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter) % 2**32:08x}"


def error_middleware(new_id: Callable[[], str]) -> Middleware:
    """The middleware: request ids, JSON errors for everything, one log line per request."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("X-Request-ID", "")
        return await _handle(request, handler, given if _REQUEST_ID.match(given) else new_id())

    return middleware


async def _handle(request: web.Request, handler: Handler, rid: str) -> web.StreamResponse:
    token = request_id.set(rid)
    started = time.perf_counter()
    try:
        try:
            response = await handler(request)
        except ScoreboardError as err:
            response = error_response(err)
        except web.HTTPException as exc:
            code, message = _HTTP_CODES.get(exc.status, (Code.INTERNAL_ERROR, exc.reason))
            response = error_response(ScoreboardError(code, message))
            if code is Code.INTERNAL_ERROR:
                response.set_status(exc.status)
        except Exception:
            log.exception("unhandled_error", extra={"fields": {"path": request.path}})
            response = error_response(ScoreboardError(Code.INTERNAL_ERROR, "Internal server error."))
        response.headers["X-Request-ID"] = rid
        status = response.status
        level = logging.INFO if status >= 400 else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(
                level,
                "request",
                extra={
                    "fields": {
                        "method": request.method,
                        "path": request.path,
                        "status": status,
                        "ms": round((time.perf_counter() - started) * 1000, 2),
                        "peer": request.remote,
                    }
                },
            )
        return response
    finally:
        request_id.reset(token)


class BoardEncoder:
    """Encodes the board once per change; every reader reuses the bytes."""

    __slots__ = ("_board", "_fragment", "_version")

    def __init__(self, board: Board) -> None:
        self._board = board
        self._version = -1
        self._fragment = orjson.Fragment(b"[]")

    def top_users(self) -> orjson.Fragment:
        """The `topUsers` array as pre-encoded JSON."""
        if self._version != self._board.version:
            self._fragment = orjson.Fragment(
                orjson.dumps([entry_json(r.rank, r.entry) for r in self._board.ranked()])
            )
            self._version = self._board.version
        return self._fragment


class Routes:
    """The HTTP endpoints, bound to the service and the token verifier."""

    def __init__(
        self,
        service: Callable[[], ScoreService],
        encoder: Callable[[], BoardEncoder],
        verifier: TokenVerifier,
        *,
        max_body_bytes: int,
        readiness_timeout_s: float,
    ) -> None:
        self._service = service
        self._encoder = encoder
        self._verifier = verifier
        self._max_body = max_body_bytes
        self._readiness_timeout = readiness_timeout_s

    def add_to(self, app: web.Application) -> None:
        """Register the routes on `app`."""
        app.router.add_get("/scores", self.top, allow_head=True)
        app.router.add_post("/scores/update", self.update)
        app.router.add_post("/api/score/update", self.update)
        app.router.add_post("/api/actions", self.start_action)
        app.router.add_get("/api/users/{user_id}", self.user)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/", self.page)
        app.router.add_static("/static/", STATIC_DIR)

    def _authenticate(self, request: web.Request) -> Identity:
        return self._verifier.verify(bearer_token(request.headers.get("Authorization")))

    async def _json(self, request: web.Request) -> object:
        if request.content_length is not None and request.content_length > self._max_body:
            raise ScoreboardError(Code.PAYLOAD_TOO_LARGE, f"The body exceeds {self._max_body} bytes.")
        if request.content_type != "application/json":
            raise ScoreboardError(
                Code.UNSUPPORTED_MEDIA_TYPE, "Send the body as Content-Type: application/json."
            )
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ScoreboardError(
                Code.PAYLOAD_TOO_LARGE, f"The body exceeds {self._max_body} bytes."
            ) from None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ScoreboardError(Code.INVALID_JSON, f"The body is not valid JSON: {exc}.") from None

    async def update(self, request: web.Request) -> web.Response:
        """POST /scores/update and /api/score/update: credit one action."""
        identity = self._authenticate(request)
        body = await self._json(request)
        service = self._service()
        prepared = service.prepare_update(identity, body)
        if not service.ack_commit:
            # Without waiting for the store the server cannot tell a retry
            # from a new action, so an expired ticket is refused outright.
            if prepared.if_new is not None:
                raise prepared.if_new
            service.submit(prepared).add_done_callback(_consume)
            return json_response(
                {
                    "success": True,
                    "accepted": True,
                    "userId": prepared.update.user_id,
                    "actionId": prepared.update.action_id,
                    "topUsers": self._encoder().top_users(),
                },
                status=202,
            )
        result = service.answer(prepared, await service.submit(prepared))
        return json_response(self._credit_body(result))

    def _credit_body(self, result: Result) -> dict[str, Any]:
        return {
            "success": True,
            "userId": result.user_id,
            "newScore": result.new_score,
            "duplicate": result.outcome is Outcome.DUPLICATE,
            "topUsers": self._encoder().top_users(),
        }

    async def start_action(self, request: web.Request) -> web.Response:
        """POST /api/actions: issue a ticket for an action the player starts."""
        identity = self._authenticate(request)
        started = self._service().start_action(identity, await self._json(request))
        return json_response(
            {
                "actionId": started.action_id,
                "ticket": started.ticket,
                "reward": started.reward,
                "notBefore": started.not_before,
                "expiresAt": started.expires_at,
            },
            status=201,
        )

    async def top(self, request: web.Request) -> web.Response:
        """GET /scores: the board, best first."""
        return json_response({"topUsers": self._encoder().top_users()})

    async def user(self, request: web.Request) -> web.Response:
        """GET /api/users/{userId}: one user's score and rank."""
        user_id = request.match_info["user_id"]
        if len(user_id) > MAX_STRING_CHARS:
            raise invalid("userId", f"'userId' must be 1 to {MAX_STRING_CHARS} characters long.")
        standing = await self._service().standing(user_id)
        e = standing.entry
        return json_response(
            {"userId": e.user_id, "username": e.username, "score": e.score, "rank": standing.rank}
        )

    async def page(self, request: web.Request) -> web.FileResponse:
        """GET /: the live board page."""
        return web.FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    async def healthz(self, request: web.Request) -> web.Response:
        """GET /healthz: the process is alive."""
        return json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """GET /readyz: 200 if storage answers and the writer accepts updates."""
        service = self._service()
        try:
            async with asyncio.timeout(self._readiness_timeout):
                await service.store.ping()
        except (StorageError, TimeoutError):
            ready = False
        else:
            ready = service.writer.healthy
        if not ready:
            raise ScoreboardError(
                Code.STORAGE_UNAVAILABLE,
                "Storage is unavailable.",
                retry_after=service.retry_after_s,
            )
        return json_response({"status": "ready", "queued": service.writer.queued})


def _consume(future: asyncio.Future[Result]) -> None:
    # ACK=memory: the client already has its 202, so a failure can only be
    # logged (conflicts are logged as events when their batch commits).
    if not future.cancelled() and future.exception() is not None:
        log.warning("unacknowledged_update_failed", extra={"fields": {"error": repr(future.exception())}})
