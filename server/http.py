"""HTTP adapter: routes, request parsing, and the one error-to-status map.

Handlers stay thin: authenticate, read JSON, call the service, encode.
Every refusal, including unknown routes and oversized bodies, leaves as
`{"success": false, "error": {"code", "message"}}` with the status below.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp.web_protocol import RequestPayloadError

from .errors import Code, ScoreboardError, retry_after_seconds
from .feed import entry_json
from .identity import Identity, Role
from .logs import request_id
from .metrics import METRICS
from .moderation import require_admin
from .service import ScoreService
from .standings import MAX_AROUND, MAX_IDS, MAX_OFFSET, MAX_PAGE, Listing
from .store import StorageError
from .tokens import TokenVerifier, bearer_token
from .validation import (
    MAX_REASON_CHARS,
    check_members,
    id_list,
    integer,
    path_id,
    query_int,
    reason,
    season_param,
    text,
)

log = logging.getLogger("scoreboard.http")

STATUS: dict[Code, int] = {
    Code.BAD_REQUEST: 400,
    Code.INVALID_JSON: 400,
    Code.UNAUTHORIZED: 401,
    Code.INVALID_TOKEN: 401,
    Code.TOKEN_EXPIRED: 401,
    Code.FORBIDDEN: 403,
    Code.USER_BLOCKED: 403,
    Code.INVALID_TICKET: 403,
    Code.TICKET_MISMATCH: 403,
    Code.TICKET_EXPIRED: 403,
    Code.NOT_FOUND: 404,
    Code.USER_NOT_FOUND: 404,
    Code.BOARD_NOT_FOUND: 404,
    Code.SEASON_NOT_FOUND: 404,
    Code.ACTION_NOT_FOUND: 404,
    Code.METHOD_NOT_ALLOWED: 405,
    Code.REQUEST_TIMEOUT: 408,
    Code.ACTION_CONFLICT: 409,
    Code.SEASON_CONFLICT: 409,
    Code.EXPECTATION_FAILED: 417,
    Code.PAYLOAD_TOO_LARGE: 413,
    Code.UNSUPPORTED_MEDIA_TYPE: 415,
    Code.VALIDATION_FAILED: 422,
    Code.UNKNOWN_ACTION_TYPE: 422,
    Code.UNKNOWN_BOARD: 422,
    Code.OUT_OF_RANGE: 422,
    Code.DELTA_MISMATCH: 422,
    Code.SCORE_OVERFLOW: 422,
    Code.TICKET_NOT_YET_VALID: 425,
    Code.UPGRADE_REQUIRED: 426,
    Code.RATE_LIMITED: 429,
    Code.HEADERS_TOO_LARGE: 431,
    Code.INTERNAL_ERROR: 500,
    Code.STORAGE_UNAVAILABLE: 503,
    Code.OVERLOADED: 503,
    Code.SHUTTING_DOWN: 503,
}

STATIC_DIR = Path(__file__).parent / "static"
# Served by name from a fixed list: no path is ever resolved from a request.
STATIC_FILES = {p.name: p for p in STATIC_DIR.iterdir() if p.is_file() and p.name != "index.html"}
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
USER_PATH = "/api/users/{user_id:[^/]+}"
BOARD_PATH = "/api/boards/{board:[^/]+}"
ADMIN_USER_PATH = "/api/admin/users/{user_id:[^/]+}"
BODY_CODINGS = frozenset({"identity", "gzip", "deflate"})
DEFAULT_AROUND = 5
MAX_AUDIT = 100
DEFAULT_AUDIT = 20
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _listing(found: Listing) -> web.Response:
    return json_response(
        {
            "board": found.hub.id,
            "season": found.season,
            "version": found.version,
            "total": found.total,
            "entries": [entry_json(r.rank, r.entry) for r in found.entries],
        }
    )


def _required_reason(body: object) -> str:
    why = reason(body)
    if why is None:
        raise AssertionError("reason() refused a missing reason")
    return why


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
        headers["Retry-After"] = str(retry_after_seconds(err.retry_after))
    if err.code is Code.UPGRADE_REQUIRED:
        headers["Upgrade"] = "websocket"
        headers["Connection"] = "Upgrade"
    if err.code in (Code.REQUEST_TIMEOUT, Code.BAD_REQUEST):
        headers["Connection"] = "close"
    if status == 401:
        headers["WWW-Authenticate"] = (
            'Bearer realm="scoreboard"'
            if err.code is Code.UNAUTHORIZED
            else f'Bearer realm="scoreboard", error="invalid_token", error_description="{err.message}"'
        )
    return json_response({"success": False, "error": err.as_dict()}, status, headers)


_HTTP_CODES: dict[int, tuple[Code, str]] = {
    400: (Code.BAD_REQUEST, "The request is malformed."),
    403: (Code.FORBIDDEN, "This resource is not available."),
    404: (Code.NOT_FOUND, "No such resource."),
    405: (Code.METHOD_NOT_ALLOWED, "This method is not allowed on this resource."),
    408: (Code.REQUEST_TIMEOUT, "The request did not arrive in time."),
    413: (Code.PAYLOAD_TOO_LARGE, "The request body is too large."),
    415: (Code.UNSUPPORTED_MEDIA_TYPE, "This media type is not supported."),
    431: (Code.HEADERS_TOO_LARGE, "The request headers are too large."),
}


def _http_exception_error(exc: web.HTTPException) -> ScoreboardError:
    """Our error for an exception aiohttp raised itself (static files, routing)."""
    known = _HTTP_CODES.get(exc.status)
    if known is not None:
        return ScoreboardError(*known)
    if 400 <= exc.status < 500:
        return ScoreboardError(Code.BAD_REQUEST, exc.reason)
    return ScoreboardError(Code.INTERNAL_ERROR, "Internal server error.")


class RequestIds:
    """Request ids: a random per-process prefix and a counter (uuid4 per request cost ~3% CPU)."""

    __slots__ = ("_counter", "_prefix")

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(4)
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter) % 2**32:08x}"


async def request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: the request id on responses whose headers leave early (streams, 101)."""
    rid = request_id.get()
    if rid is not None and "X-Request-ID" not in response.headers:
        response.headers["X-Request-ID"] = rid


def given_request_id(request: web.BaseRequest) -> str | None:
    """The client's X-Request-ID if it is a sane one (1-64 of A-Z a-z 0-9 . _ : -)."""
    given = request.headers.get("X-Request-ID", "")
    return given if _REQUEST_ID.match(given) else None


def log_request(request: web.BaseRequest, status: int, seconds: float) -> None:
    """The one line per request: info for refusals (status >= 400), debug otherwise."""
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
                    "ms": round(seconds * 1000, 2),
                    "peer": request.remote,
                }
            },
        )


def error_middleware(new_id: Callable[[], str]) -> Middleware:
    """The middleware: request ids, JSON errors for everything, one log line per request."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await _handle(request, handler, given_request_id(request) or new_id())

    return middleware


async def _handle(request: web.Request, handler: Handler, rid: str) -> web.StreamResponse:
    token = request_id.set(rid)
    started = time.perf_counter()
    code: Code | None = None  # the error answered, for the metrics
    try:
        try:
            response = await handler(request)
        except ScoreboardError as err:
            code = err.code
            response = error_response(err)
        except web.HTTPException as exc:
            if exc.status < 400:  # a redirect (static directories): pass it on
                raise
            mapped = _http_exception_error(exc)
            code = mapped.code
            response = error_response(mapped)
            if STATUS[mapped.code] != exc.status and mapped.code is Code.BAD_REQUEST:
                response.set_status(exc.status)
            if isinstance(exc, web.HTTPMethodNotAllowed):
                response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
        except ConnectionError:
            # The client went away (mid-body, say): nothing to answer, not a bug.
            log.debug("client_gone", extra={"fields": {"path": request.path, "peer": request.remote}})
            raise
        except Exception:
            log.exception("unhandled_error", extra={"fields": {"path": request.path}})
            code = Code.INTERNAL_ERROR
            response = error_response(ScoreboardError(code, "Internal server error."))
        response.headers["X-Request-ID"] = rid
        status = response.status
        elapsed = time.perf_counter() - started
        metrics = request.app.get(METRICS)
        if metrics is not None:
            metrics.request_done(request, status, code, elapsed)
        log_request(request, status, elapsed)
        return response
    finally:
        request_id.reset(token)


class Routes:
    """The HTTP endpoints, bound to the service and the token verifier."""

    def __init__(
        self,
        service: Callable[[], ScoreService],
        verifier: TokenVerifier,
        *,
        max_body_bytes: int,
        readiness_timeout_s: float,
        request_timeout_s: float = 10.0,
    ) -> None:
        self._service = service
        self._verifier = verifier
        self._max_body = max_body_bytes
        self._readiness_timeout = readiness_timeout_s
        self._request_timeout = request_timeout_s

    def add_to(self, app: web.Application) -> None:
        """Register the routes on `app`."""
        app.router.add_get("/scores", self.top, allow_head=True)
        app.router.add_post("/scores/update", self.update)
        app.router.add_post("/api/score/update", self.update)
        app.router.add_post("/api/actions", self.start_action)
        # Any id but "/" (aiohttp's default pattern also refuses "{" and "}").
        app.router.add_get(USER_PATH, self.user)
        app.router.add_get("/api/boards", self.boards)
        app.router.add_get(BOARD_PATH + "/scores", self.board_top)
        app.router.add_get(BOARD_PATH + "/users", self.board_friends)
        app.router.add_get(BOARD_PATH + "/users/{user_id:[^/]+}", self.board_user)
        app.router.add_delete(BOARD_PATH + "/users/{user_id:[^/]+}", self.remove_entry)
        app.router.add_get(BOARD_PATH + "/users/{user_id:[^/]+}/around", self.board_around)
        app.router.add_post(BOARD_PATH + "/reset", self.reset)
        app.router.add_post(ADMIN_USER_PATH + "/block", self.block)
        app.router.add_delete(ADMIN_USER_PATH + "/block", self.unblock)
        app.router.add_post("/api/admin/actions/{action_id:[^/]+}/revert", self.revert)
        app.router.add_get("/api/admin/audit", self.audit)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/", self.page)
        app.router.add_get("/static/{name}", self.static)

    async def _authenticate(self, request: web.Request) -> Identity:
        return await self._verifier.authenticate(bearer_token(request.headers.get("Authorization")))

    async def _json(self, request: web.Request) -> object:
        if request.content_length is not None and request.content_length > self._max_body:
            raise ScoreboardError(Code.PAYLOAD_TOO_LARGE, f"The body exceeds {self._max_body} bytes.")
        if request.content_type != "application/json":
            raise ScoreboardError(
                Code.UNSUPPORTED_MEDIA_TYPE, "Send the body as Content-Type: application/json."
            )
        # aiohttp passes a coding it does not know through as it is.
        if request.headers.get("Content-Encoding", "identity").strip().lower() not in BODY_CODINGS:
            raise ScoreboardError(
                Code.UNSUPPORTED_MEDIA_TYPE, "Send the body plain, or with Content-Encoding gzip or deflate."
            )
        try:
            if request.content.is_eof():  # the usual case: the body came with the head
                raw = await request.read()
            else:
                async with asyncio.timeout(self._request_timeout):
                    raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ScoreboardError(
                Code.PAYLOAD_TOO_LARGE, f"The body exceeds {self._max_body} bytes."
            ) from None
        except TimeoutError:
            raise ScoreboardError(
                Code.REQUEST_TIMEOUT, f"The body did not arrive within {self._request_timeout:g} s."
            ) from None
        except RequestPayloadError:  # a body that does not match its Content-Encoding
            # The rest of the body cannot be read either: end it here rather
            # than let aiohttp try to drain it, and close the connection.
            request.content.feed_eof()
            raise ScoreboardError(
                Code.BAD_REQUEST, "The body could not be read (does it match its Content-Encoding?)."
            ) from None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ScoreboardError(Code.INVALID_JSON, f"The body is not valid JSON: {exc}.") from None

    async def update(self, request: web.Request) -> web.Response:
        """POST /scores/update and /api/score/update: credit one action."""
        identity = await self._authenticate(request)
        body = await self._json(request)
        service = self._service()
        pending = await service.credit(identity, body)
        answer = await pending.answer()
        if not answer.default_board:
            return json_response(answer.body, status=answer.status)
        return json_response(
            answer.body | {"topUsers": service.hubs.default.top_users()}, status=answer.status
        )

    async def start_action(self, request: web.Request) -> web.Response:
        """POST /api/actions: issue a ticket for an action the player starts."""
        identity = await self._authenticate(request)
        started = await self._service().start_action(identity, await self._json(request))
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
        """GET /scores: the default board, best first."""
        hub = self._service().hubs.default
        return json_response({"topUsers": hub.top_users(), "version": hub.version})

    async def user(self, request: web.Request) -> web.Response:
        """GET /api/users/{userId}: one user's score and rank on the default board."""
        user_id = path_id(request.match_info["user_id"], "userId")
        found = await self._service().standings.standing(user_id)
        ranked = found.entries[0]
        e = ranked.entry
        return json_response(
            {
                "userId": e.user_id,
                "username": e.username,
                "score": e.score,
                "rank": ranked.rank,
                "version": found.version,
            }
        )

    async def boards(self, request: web.Request) -> web.Response:
        """GET /api/boards: every board, with its current season."""
        return json_response({"boards": [hub.describe() for hub in self._service().hubs]})

    async def board_top(self, request: web.Request) -> web.Response:
        """GET /api/boards/{board}/scores[?offset=O&limit=L&season=N]: a page of a season (the top K)."""
        service = self._service()
        hub = service.hubs.get(request.match_info["board"])
        query = request.query
        season = season_param(query.get("season"))
        top_k = hub.spec.top_k
        offset = query_int(query.get("offset"), "offset", 0, MAX_OFFSET, 0)
        limit = query_int(query.get("limit"), "limit", 1, max(MAX_PAGE, top_k), top_k)
        if offset == 0 and limit == top_k and (season is None or season == hub.season):
            ranks = hub.ranks
            if ranks is not None:  # the common read: the top K encoded once per change
                return json_response(
                    {
                        "board": hub.id,
                        "season": hub.season,
                        "version": hub.version,
                        "total": len(ranks),
                        "entries": hub.top_users(),
                    }
                )
        return _listing(await service.standings.page(offset, limit, hub.id, season))

    async def board_user(self, request: web.Request) -> web.Response:
        """GET /api/boards/{board}/users/{userId}[?season=N]: one player's entry, rank and the total."""
        board = request.match_info["board"]
        user_id = path_id(request.match_info["user_id"], "userId")
        season = season_param(request.query.get("season"))
        found = await self._service().standings.standing(user_id, board, season)
        ranked = found.entries[0]
        e = ranked.entry
        body: dict[str, Any] = {
            "board": found.hub.id,
            "season": found.season,
            "userId": e.user_id,
            "username": e.username,
            "score": e.score,
            "rank": ranked.rank,
            "total": found.total,
            "version": found.version,
        }
        if e.metadata is not None:
            body["metadata"] = orjson.Fragment(e.metadata)
        return json_response(body)

    async def board_around(self, request: web.Request) -> web.Response:
        """GET /api/boards/{board}/users/{userId}/around[?count=5&season=N]: a player and their neighbours."""
        board = request.match_info["board"]
        user_id = path_id(request.match_info["user_id"], "userId")
        query = request.query
        count = query_int(query.get("count"), "count", 0, MAX_AROUND, DEFAULT_AROUND)
        season = season_param(query.get("season"))
        return _listing(await self._service().standings.around(user_id, count, board, season))

    async def board_friends(self, request: web.Request) -> web.Response:
        """GET /api/boards/{board}/users?ids=a,b,c[&season=N]: these players' places, best first."""
        board = request.match_info["board"]
        ids = id_list(request.query.get("ids"), "ids", MAX_IDS)
        season = season_param(request.query.get("season"))
        return _listing(await self._service().standings.many(ids, board, season))

    async def _admin(self, request: web.Request) -> Identity:
        identity = await self._authenticate(request)
        require_admin(identity)
        return identity

    async def remove_entry(self, request: web.Request) -> web.Response:
        """DELETE /api/boards/{board}/users/{userId}: an admin removes a player's entry."""
        identity = await self._admin(request)
        user_id = path_id(request.match_info["user_id"], "userId")
        why = _required_reason(await self._json(request))
        service = self._service()
        hub = service.hubs.get(request.match_info["board"])
        done = await service.moderation.remove_entry(identity, hub.id, user_id, why)
        removed = done.removed[0]
        return json_response(
            {
                "board": removed.board,
                "season": removed.season,
                "userId": user_id,
                "removed": entry_json(removed.rank, removed.entry),
            }
        )

    async def block(self, request: web.Request) -> web.Response:
        """POST /api/admin/users/{userId}/block: refuse a player's credits, remove their entries."""
        identity = await self._admin(request)
        user_id = path_id(request.match_info["user_id"], "userId")
        why = _required_reason(await self._json(request))
        done = await self._service().moderation.block(identity, user_id, why)
        return json_response(
            {
                "userId": user_id,
                "blocked": True,
                "changed": done.changed,
                "removed": [
                    {"board": r.board, "season": r.season, "rank": r.rank, "score": r.entry.score}
                    for r in done.removed
                ],
            }
        )

    async def unblock(self, request: web.Request) -> web.Response:
        """DELETE /api/admin/users/{userId}/block: lift a block."""
        identity = await self._admin(request)
        user_id = path_id(request.match_info["user_id"], "userId")
        why = _required_reason(await self._json(request))
        changed = await self._service().moderation.unblock(identity, user_id, why)
        return json_response({"userId": user_id, "blocked": False, "changed": changed})

    async def revert(self, request: web.Request) -> web.Response:
        """POST /api/admin/actions/{actionId}/revert: undo an action on every board it wrote."""
        identity = await self._admin(request)
        action_id = path_id(request.match_info["action_id"], "actionId")
        why = _required_reason(await self._json(request))
        done = await self._service().moderation.revert(identity, action_id, why)
        return json_response(
            {
                "actionId": action_id,
                "userId": done.user_id,
                "reverted": done.changed,
                "boards": {
                    board: {"season": season, "score": score}
                    for board, (season, score) in done.boards.items()
                },
            }
        )

    async def audit(self, request: web.Request) -> web.Response:
        """GET /api/admin/audit[?limit=N]: the latest admin operations, latest first."""
        identity = await self._admin(request)
        limit = query_int(request.query.get("limit"), "limit", 1, MAX_AUDIT, DEFAULT_AUDIT)
        rows = await self._service().moderation.audit(identity, limit)
        return json_response(
            {
                "entries": [
                    {
                        "id": r.id,
                        "at": r.audit.at,
                        "actor": r.audit.actor,
                        "operation": r.audit.operation,
                        "target": r.audit.target,
                        "reason": r.audit.reason,
                    }
                    for r in rows
                ]
            }
        )

    async def reset(self, request: web.Request) -> web.Response:
        """POST /api/boards/{board}/reset: an admin ends the current season now."""
        identity = await self._authenticate(request)
        if identity.role is not Role.ADMIN:
            raise ScoreboardError(Code.FORBIDDEN, "Only an admin token may end a season.")
        service = self._service()
        hub = service.hubs.get(request.match_info["board"])
        b = check_members(await self._json(request), ("season",), frozenset({"season", "reason"}))
        season = integer(b, "season", 1, 2**31 - 1)
        why = text(b, "reason", MAX_REASON_CHARS)  # optional here
        if season is None:
            raise AssertionError("check_members refused a missing season")
        audit = service.moderation.audit_entry(identity, "reset", f"boards/{hub.id}/seasons/{season}", why)
        change = await service.end_season(hub.id, season, audit)
        return json_response({"board": change.board, "endedSeason": change.ended, "season": change.season})

    async def page(self, request: web.Request) -> web.FileResponse:
        """GET /: the live board page."""
        return web.FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    async def static(self, request: web.Request) -> web.FileResponse:
        """GET /static/{name}: the live page's own files, and nothing else."""
        path = STATIC_FILES.get(request.match_info["name"])
        if path is None:
            raise ScoreboardError(Code.NOT_FOUND, "No such resource.")
        return web.FileResponse(path, headers={"X-Content-Type-Options": "nosniff"})

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
        return json_response(
            {
                "status": "ready",
                "queued": service.writer.queued,
                "ranks": service.rank_state(),
                "bus": service.bus_state(),
            }
        )
