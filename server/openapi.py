"""The API description: `GET /openapi.json`, an OpenAPI 3.1 document of every HTTP endpoint.

`describe(settings, catalog)` builds the document once per application from
what this server accepts: the largest service delta, the catalog's boards
(their ids, bounds and sizes) and action types, whether `/metrics` exists and
needs a token, whether CORS preflights are answered. `OpenApiEndpoint` serves
it, encoded once.

The document is written in four modules, each using the ones before it: the
building blocks (`openapi_parts.py`: schema and operation builders, errors,
shared parameters), the component schemas (`openapi_schemas.py`), the board
paths (`openapi_boards.py`: reads and moderation), and here the other paths
(crediting, following a board, operations, CORS preflights) and the document.

Automatic HEADs (aiohttp answers HEAD beside every GET) are not operations
of their own; the HEADs of the event streams are, since they do not subscribe.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import orjson
from aiohttp import web
from aiohttp.web_fileresponse import CONTENT_TYPES

from . import __version__
from .catalog import Catalog
from .config import Settings
from .cors import ALLOWED_HEADERS, PUBLIC_PATHS
from .errors import Code
from .http import PAGE_HEADERS, STATIC_FILES
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .openapi_boards import board_paths
from .openapi_parts import (
    AUTH,
    BOARD_PARAMETER,
    BODY,
    STORE,
    TEXT_FORMAT,
    TICKET,
    Json,
    answer,
    fixed,
    integer,
    json_content,
    maybe,
    operation,
    ref,
    request_header,
)
from .openapi_schemas import schemas

__all__ = ["OPENAPI_PATH", "TEXT_FORMAT", "OpenApiEndpoint", "describe"]

OPENAPI_PATH = "/openapi.json"
# The preflights of the public reads (`cors.PUBLIC_PATHS`), by path; another is
# named after its GET.
PREFLIGHTS = {
    "/scores": "preflightBoard",
    "/api/users/{userId}": "preflightUser",
    "/scores/stream": "preflightStream",
    OPENAPI_PATH: "preflightOpenapi",
    "/api/boards": "preflightBoards",
    "/api/boards/{board}/scores": "preflightBoardScores",
    "/api/boards/{board}/users/{userId}": "preflightBoardUser",
    "/api/boards/{board}/stream": "preflightBoardStream",
}
UPDATE = (
    *AUTH,
    *BODY,
    *TICKET,
    *STORE,
    Code.FORBIDDEN,
    Code.ACTION_CONFLICT,
    Code.UNKNOWN_BOARD,
    Code.OUT_OF_RANGE,
    Code.DELTA_MISMATCH,
    Code.SCORE_OVERFLOW,
    Code.USER_BLOCKED,
)

INFO = """\
Real-time top-K leaderboards ("boards"), each with seasons. Players redeem
server-signed tickets for the actions they start; trusted game backends
(service tokens) credit values on one or several boards; admins end seasons,
remove entries, block players and revert actions.
An `actionId` is credited at most once, ever. `/scores`, `/scores/stream` and
`/api/users/{userId}` are the default board's current season.

Every response carries `X-Request-ID` (the request's own if it matches
`^[A-Za-z0-9._:-]{1,64}$`). Every error is `{"success": false, "error":
{"code", "message", "field"?, "retryAfter"?}}`; codes are stable, and each
response lists the codes it can carry. Any request may also be refused 429
`rate_limited` (too many open connections from one address), 431
`headers_too_large` or 500 `internal_error`; an unknown path is 404
`not_found`, another method on a known path 405 `method_not_allowed`.

Strings of format `printable-text` are Unicode scalar values without control
characters (Cc), format characters (Cf) other than the zero-width joiner and
non-joiner, or line and paragraph separators (Zl, Zp). Integers are JSON
integers: `5.0` and `true` are refused. Board ids are 1-64 characters of
`[a-z0-9_-]`; the paths list this server's boards.

Every GET also answers HEAD (the same status and headers, no body), except
`/ws` and the event streams, whose HEAD is its own operation."""


# -- building blocks ---------------------------------------------------------------


def _update(operation_id: str, summary: str, boards: Sequence[str]) -> Json:
    links = {
        "standing": {
            "operationId": "getUser",
            "parameters": {"userId": "$response.body#/userId"},
            "description": "The credited user's standing on the default board (when `newScore` is given).",
        }
    }
    for board in boards:
        links[f"standing.{board}"] = {
            "operationId": "getBoardUser",
            "parameters": {
                "board": board,
                "userId": "$response.body#/userId",
                "season": f"$response.body#/boards/{board}/season",
            },
            "description": f"The credited user's entry on board '{board}' (when the update wrote it).",
        }
    links["revert"] = {
        "operationId": "revertAction",
        "parameters": {"actionId": "$request.body#/actionId"},
        "requestBody": {"reason": "Credited by mistake."},
        "description": "Revert the credited action (an admin).",
    }
    body = [ref("PlayerUpdate"), ref("ServiceScores")]
    return operation(
        operation_id,
        summary,
        "scores",
        {
            "200": answer(
                200,
                "Credited (committed), or a retry's original answer.",
                json_content(ref("Credited")),
                links=links,
            ),
            "202": answer(
                202, "Queued (SCOREBOARD_ACK=memory), not yet committed.", json_content(ref("Accepted"))
            ),
        },
        UPDATE,
        about="The token decides the body: a player's redeems a ticket, a service token's credits "
        "`scoreDelta` on the default board or `scores` on several boards; an admin's is 403 `forbidden`. "
        "An `actionId` sent again with the same user and values is answered 200 with `duplicate: true` "
        "and the original answer; with another user, other boards or other values, 409 "
        "`action_conflict`. A player over SCOREBOARD_PLAYER_UPDATES_PER_MIN is 429 `rate_limited`. A "
        "blocked player's credits are 403 `user_blocked` (a retry of an action credited before the block "
        "gets its original answer).",
        body={"oneOf": [body[0], ref("ServiceDelta"), body[1]]},
        auth="required",
    )


def _start_action() -> Json:
    redeem = {
        "actionId": "$response.body#/actionId",
        "ticket": "$response.body#/ticket",
        "scoreDelta": "$response.body#/reward",
    }
    links = {
        name: {
            "operationId": target,
            "requestBody": redeem,
            "description": "Redeem the ticket (as the same player).",
        }
        for name, target in (("redeem", "creditScore"), ("redeemApi", "creditScoreApi"))
    }
    return operation(
        "startAction",
        "Start an action: a ticket to redeem once it is done",
        "scores",
        {
            "201": answer(
                201,
                "The ticket, worth the catalog's points.",
                json_content(ref("ActionStarted")),
                links=links,
            )
        },
        (*AUTH, *BODY, Code.UNKNOWN_ACTION_TYPE, Code.USER_BLOCKED),
        about="Any valid token. Over the type's `max_per_minute` or SCOREBOARD_PLAYER_ACTIONS_PER_MIN: "
        "429 `rate_limited`; a player an admin blocked: 403 `user_blocked`.",
        body=ref("ActionStart"),
        auth="required",
    )


def _stream(
    operation_id: str, board: str, parameters: list[Json], errors: tuple[Code, ...], headers: Json
) -> Json:
    """A board's event stream (GET) and its headers (HEAD)."""
    return {
        "get": operation(
            operation_id,
            f"{board}'s events, as Server-Sent Events",
            "live",
            {
                "200": answer(
                    200,
                    "Endless: `retry:`, a snapshot (or the missed events), then a diff per change and "
                    "`board:season` plus a snapshot per season end; `: heartbeat` comments while idle.",
                    {"text/event-stream": {"schema": ref("StreamEvent")}},
                    headers,
                )
            },
            errors,
            parameters=[
                *parameters,
                request_header(
                    "Last-Event-ID",
                    "Resume after this `<epoch>:<seq>`: the missed events while held, nothing if up "
                    "to date, else a snapshot.",
                ),
            ],
        ),
        "head": operation(
            operation_id + "Head",
            "The stream's headers, without subscribing",
            "live",
            {"200": answer(200, "`Content-Type: text/event-stream`, no body.", headers=headers)},
            errors,
            parameters=parameters,
        ),
    }


def _live(shared: Json) -> Json:
    stream_headers = {"Cache-Control": fixed("no-cache"), **shared}
    return {
        "/scores/stream": _stream("streamBoard", "The default board", [], (), stream_headers),
        "/api/boards/{board}/stream": _stream(
            "streamBoardOf",
            "A board",
            [BOARD_PARAMETER],
            (Code.BOARD_NOT_FOUND, Code.NOT_FOUND),
            {"Cache-Control": fixed("no-cache")},
        ),
        "/ws": {
            "get": operation(
                "openWebSocket",
                "The WebSocket for game clients (README: WebSocket)",
                "live",
                {
                    "101": answer(
                        101,
                        "Switched to WebSocket: JSON text messages (subscribe, score.update, auth, ping).",
                        headers={"Upgrade": fixed("websocket"), "Sec-WebSocket-Accept": maybe("RFC 6455.")},
                    )
                },
                (*AUTH, Code.FORBIDDEN, Code.UPGRADE_REQUIRED),
                about="Send a WebSocket upgrade (`Connection: Upgrade`, `Upgrade: websocket`, "
                "`Sec-WebSocket-Key`, `Sec-WebSocket-Version: 13`); a plain request is 426 "
                "`upgrade_required`. The token is optional here (or comes in an `auth` message); a token "
                "in the URL is 401. A page whose `Origin` SCOREBOARD_ALLOWED_ORIGINS does not allow is 403.",
                parameters=[request_header("Origin", "Sent by browsers; checked against the allow-list.")],
                auth="optional",
            )
        },
    }


def _operations(settings: Settings, shared: Json) -> Json:
    static_types = {CONTENT_TYPES.guess_type(name)[0] or "application/octet-stream" for name in STATIC_FILES}
    paths = {
        "/healthz": {
            "get": operation(
                "healthz",
                "The process is alive",
                "operations",
                {"200": answer(200, "Alive.", json_content(ref("Health")))},
            )
        },
        "/readyz": {
            "get": operation(
                "readyz",
                "The store answers and updates are accepted",
                "operations",
                {"200": answer(200, "Ready.", json_content(ref("Ready")))},
                (Code.STORAGE_UNAVAILABLE,),
            )
        },
        "/": {
            "get": operation(
                "page",
                "The live board page",
                "page",
                {
                    "200": answer(
                        200,
                        "HTML that loads /static/ files and follows /scores/stream.",
                        {"text/html": {}},
                        {header: fixed(value) for header, value in PAGE_HEADERS.items()},
                    )
                },
            )
        },
        "/static/{name}": {
            "get": operation(
                "staticFile",
                "A file of the live page",
                "page",
                {
                    "200": answer(
                        200,
                        "The file.",
                        {media: {} for media in sorted(static_types)},
                        {"X-Content-Type-Options": fixed("nosniff")},
                    )
                },
                (Code.NOT_FOUND,),
                parameters=[
                    {"name": "name", "in": "path", "required": True, "schema": {"enum": sorted(STATIC_FILES)}}
                ],
            )
        },
        OPENAPI_PATH: {
            "get": operation(
                "openapi",
                "This document",
                "operations",
                {
                    "200": answer(
                        200,
                        "OpenAPI 3.1.",
                        json_content({"type": "object", "required": ["openapi", "paths"]}),
                        shared,
                    )
                },
            )
        },
    }
    if settings.metrics != "off":
        service_only = settings.metrics == "service"
        paths["/metrics"] = {
            "get": operation(
                "metrics",
                "Metrics, in the Prometheus text format",
                "operations",
                {"200": answer(200, "The exposition.", {METRICS_CONTENT_TYPE: {}})},
                (*AUTH, Code.FORBIDDEN) if service_only else (),
                about="SCOREBOARD_METRICS=public: for anyone; `service`: for service tokens (401 without a "
                "valid token, 403 with a player's); `off`: no such path.",
                auth="required" if service_only else "none",
            )
        }
    return paths


def _template(route: str) -> str:
    """An aiohttp route as the document writes it: `{user_id:[^/]+}` is `{userId}`."""
    return re.sub(r"\{(\w+)(?::[^}]*)?\}", lambda m: "{" + _camel(m[1]) + "}", route)


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(word.title() for word in rest)


def _preflight(operation_id: str, *, user: bool, board: bool = False) -> Json:
    allowed = ", ".join(sorted(ALLOWED_HEADERS))
    # The preflight of a path with ids answers for any id the path can carry.
    parameters: list[Json] = []
    if board:  # a preflight answers for any board id: the GET then says 404
        parameters.append({"name": "board", "in": "path", "required": True, "schema": {"type": "string"}})
    if user:
        parameters.append({"name": "userId", "in": "path", "required": True, "schema": {"type": "string"}})
    user = user or board
    return operation(
        operation_id,
        "CORS preflight: what a page from `Origin` may do",
        "cors",
        {
            "204": answer(
                204,
                "Allowed; without `Origin` and `Access-Control-Request-Method` not a preflight, and `Allow` "
                "lists the methods.",
                headers={
                    header: maybe("See CORS.")
                    for header in (
                        "Allow",
                        "Access-Control-Allow-Origin",
                        "Access-Control-Allow-Methods",
                        "Access-Control-Allow-Headers",
                        "Access-Control-Max-Age",
                    )
                },
            )
        },
        (Code.FORBIDDEN, Code.NOT_FOUND) if user else (Code.FORBIDDEN,),
        about="403 `forbidden` for an origin SCOREBOARD_CORS_ORIGINS does not list, a method other than GET "
        f"or HEAD, or request headers other than {allowed}.",
        parameters=[
            *parameters,
            request_header("Origin", "The page's origin."),
            request_header("Access-Control-Request-Method", "GET or HEAD."),
            request_header("Access-Control-Request-Headers", f"Comma-separated, among {allowed}."),
        ],
    )


def describe(settings: Settings, catalog: Catalog) -> Json:
    """The OpenAPI 3.1 document for a server with `settings` and `catalog` (its boards and actions)."""
    boards = list(catalog.boards)
    cors = bool(settings.cors)
    shared = (
        {
            name: maybe("With an allowed `Origin`.")
            for name in ("Access-Control-Allow-Origin", "Access-Control-Expose-Headers")
        }
        if cors
        else {}
    )
    paths: Json = {
        "/scores/update": {"post": _update("creditScore", "Credit one action, at most once", boards)},
        "/api/score/update": {
            "post": _update("creditScoreApi", "Credit one action (as POST /scores/update)", boards)
        },
        "/api/actions": {"post": _start_action()},
        **board_paths(catalog, shared),
        **_live(shared),
        **_operations(settings, shared),
    }
    if cors:
        for route in PUBLIC_PATHS:
            template = _template(route)
            item = paths.get(template)
            if item is None:  # (a test checks every route is documented)
                continue
            name = PREFLIGHTS.get(template) or "preflight" + item["get"]["operationId"].removeprefix("get")
            item["options"] = _preflight(name, user="{userId}" in template, board="{board}" in template)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Scoreboard",
            "version": __version__,
            "description": INFO,
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": [
            {"name": "scores", "description": "Crediting scores (with a token)."},
            {"name": "board", "description": "Reading the boards (public)."},
            {"name": "seasons", "description": "Ending seasons (admins)."},
            {
                "name": "moderation",
                "description": "Removing entries, blocking players, reverting actions, the audit log "
                "(admins).",
            },
            {"name": "live", "description": "Following a board as it changes."},
            {"name": "page", "description": "The live page."},
            {"name": "operations", "description": "Health, readiness, metrics, this document."},
            {"name": "cors", "description": "Cross-origin preflights of the public reads."},
        ],
        "paths": paths,
        "components": {
            "schemas": schemas(settings, catalog),
            "parameters": {
                "RequestId": request_header(
                    "X-Request-ID",
                    "Echoed in the response if it matches `^[A-Za-z0-9._:-]{1,64}$`, else replaced.",
                )
            },
            "headers": {
                "X-Request-ID": {
                    "required": True,
                    "description": "Names the request in the server's logs.",
                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,64}$"},
                },
                "Retry-After": {"required": True, "description": "Seconds to wait.", "schema": integer(1)},
                "WWW-Authenticate": {
                    "required": True,
                    "description": 'Bearer realm="scoreboard", with error="invalid_token" for a bad token.',
                    "schema": {"type": "string", "pattern": '^Bearer realm="scoreboard"'},
                },
            },
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "Claims: `sub` (the user id), `role` (`player`, the default, `service` "
                    "or `admin`), `name` or `preferred_username` (the display name), `exp`. HS256 with the "
                    "server's secret, or the keys of the configured identity provider.",
                }
            },
        },
    }


class OpenApiEndpoint:
    """`GET /openapi.json`: the document, encoded once."""

    def __init__(self, document: Json) -> None:
        self._body = orjson.dumps(document)

    async def handle(self, request: web.Request) -> web.Response:
        """The document, as JSON (public; CORS shares it with any allowed page)."""
        return web.Response(body=self._body, content_type="application/json")
