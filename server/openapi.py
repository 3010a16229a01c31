"""The API description: `GET /openapi.json`, an OpenAPI 3.1 document of every HTTP endpoint.

`describe(settings, catalog)` builds the document once per application from
what this server accepts: the largest service delta, the board size, the
catalog's action types, whether `/metrics` exists and needs a token, whether
CORS preflights are answered. `OpenApiEndpoint` serves it, encoded once.

Said once here rather than per response:
- every response carries `X-Request-ID`;
- every error is the shared `Error` object; each response lists the codes it
  can carry, under the status `http.STATUS` gives them (a test checks both);
- ids, names and action types follow the text rule of `text.py`: the string
  format `printable-text` (a JSON Schema pattern cannot say it portably).

Automatic HEADs (aiohttp answers HEAD beside every GET) are not operations
of their own; `HEAD /scores/stream` is, since it does not subscribe.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_fileresponse import CONTENT_TYPES

from . import __version__
from .catalog import ActionType
from .config import Settings
from .cors import ALLOWED_HEADERS
from .errors import Code
from .http import PAGE_HEADERS, STATIC_FILES, STATUS
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .tickets import MAX_POINTS, MAX_TICKET_CHARS
from .validation import MAX_STRING_CHARS

OPENAPI_PATH = "/openapi.json"
TEXT_FORMAT = "printable-text"
Json = dict[str, Any]

# Refusals any request may get: the per-address connection cap, an oversized
# header, an `Expect` other than 100-continue, a bug.
COMMON = (Code.RATE_LIMITED, Code.HEADERS_TOO_LARGE, Code.EXPECTATION_FAILED, Code.INTERNAL_ERROR)
AUTH = (Code.UNAUTHORIZED, Code.INVALID_TOKEN, Code.TOKEN_EXPIRED)
BODY = (
    Code.BAD_REQUEST,
    Code.INVALID_JSON,
    Code.REQUEST_TIMEOUT,
    Code.PAYLOAD_TOO_LARGE,
    Code.UNSUPPORTED_MEDIA_TYPE,
    Code.VALIDATION_FAILED,
)
TICKET = (Code.INVALID_TICKET, Code.TICKET_MISMATCH, Code.TICKET_EXPIRED, Code.TICKET_NOT_YET_VALID)
STORE = (Code.STORAGE_UNAVAILABLE, Code.OVERLOADED, Code.SHUTTING_DOWN)
UPDATE = (
    *AUTH,
    *BODY,
    *TICKET,
    *STORE,
    Code.FORBIDDEN,
    Code.ACTION_CONFLICT,
    Code.DELTA_MISMATCH,
    Code.SCORE_OVERFLOW,
)
SECURITY: dict[str, list[Json]] = {
    "none": [],
    "required": [{"bearerAuth": []}],
    "optional": [{}, {"bearerAuth": []}],
}
# Statuses whose answers say when to try again (Retry-After).
RETRY_STATUSES = frozenset({425, 429, 503})

INFO = """\
A real-time top-K leaderboard. Players redeem server-signed tickets for the
actions they start; trusted game backends (service tokens) credit bounded
deltas. An `actionId` is credited at most once, ever.

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
integers: `5.0` and `true` are refused.

Every GET also answers HEAD (the same status and headers, no body), except
`/ws` and `/scores/stream`, whose HEAD is its own operation."""


# -- building blocks ---------------------------------------------------------------


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _text(about: str, max_length: int = MAX_STRING_CHARS) -> Json:
    return {
        "type": "string",
        "format": TEXT_FORMAT,
        "minLength": 1,
        "maxLength": max_length,
        "description": about,
    }


def _int(low: int | None = None, high: int | None = None, about: str | None = None) -> Json:
    schema: Json = {"type": "integer"}
    if low is not None:
        schema["minimum"] = low
    if high is not None:
        schema["maximum"] = high
    if about:
        schema["description"] = about
    return schema


def _nullable(schema: Json) -> Json:
    # The server reads an optional member sent as null as if it were left out.
    return {**schema, "type": [schema["type"], "null"]}


def _object(required: Json, optional: Json | None = None, about: str = "") -> Json:
    """An object with exactly these members: all of `required`, any of `optional`."""
    schema: Json = {
        "type": "object",
        "properties": {**required, **(optional or {})},
        "required": list(required),
        "additionalProperties": False,
    }
    if about:
        schema["description"] = about
    return schema


def _json(schema: Json) -> Json:
    return {"application/json": {"schema": schema}}


def _fixed(value: str) -> Json:
    """A response header always sent with this value."""
    return {"required": True, "schema": {"const": value}}


def _maybe(about: str) -> Json:
    """A response header sent in some cases."""
    return {"required": False, "description": about, "schema": {"type": "string"}}


def _request_header(name: str, about: str) -> Json:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": about,
        "schema": {"type": "string"},
    }


def _answer(
    status: int,
    about: str,
    content: Json | None = None,
    headers: Json | None = None,
    links: Json | None = None,
) -> Json:
    """A response with the headers every answer with `status` carries, and `headers`."""
    all_headers: Json = {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}}
    if status in RETRY_STATUSES:
        all_headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
    if status == 401:
        all_headers["WWW-Authenticate"] = {"$ref": "#/components/headers/WWW-Authenticate"}
    if status == 426:
        all_headers["Upgrade"] = _fixed("websocket")
    response: Json = {"description": about, "headers": all_headers | (headers or {})}
    if content is not None:
        response["content"] = content
    if links:
        response["links"] = links
    return response


def _errors(codes: Iterable[Code]) -> Json:
    """The error responses for `codes` and `COMMON`: one per status, naming its codes."""
    by_status: dict[int, list[str]] = {}
    for code in (*codes, *COMMON):
        names = by_status.setdefault(STATUS[code], [])
        if code.value not in names:
            names.append(code.value)
    return {
        str(status): _answer(
            status,
            "Refused: " + ", ".join(f"`{n}`" for n in names) + ".",
            _json(
                {
                    "allOf": [
                        _ref("Error"),
                        {"properties": {"error": {"properties": {"code": {"enum": names}}}}},
                    ]
                }
            ),
        )
        for status, names in sorted(by_status.items())
    }


def _op(
    operation_id: str,
    summary: str,
    tag: str,
    answers: Json,
    errors: Iterable[Code] = (),
    *,
    about: str = "",
    parameters: Iterable[Json] = (),
    body: Json | None = None,
    auth: str = "none",
) -> Json:
    """One operation; `auth`: a bearer JWT is "none", "required" or "optional"."""
    op: Json = {"operationId": operation_id, "summary": summary, "tags": [tag]}
    if about:
        op["description"] = about
    op["parameters"] = [*parameters, {"$ref": "#/components/parameters/RequestId"}]
    if body is not None:
        op["requestBody"] = {"required": True, "content": _json(body)}
    op["security"] = SECURITY[auth]
    op["responses"] = answers | _errors(errors)
    return op


# -- the schemas -------------------------------------------------------------------


def _schemas(settings: Settings, catalog: Mapping[str, ActionType]) -> Json:
    top_k = settings.top_k
    user_id = _text("A user id (a token's `sub`).")
    action_id = _text("The action's id: its exactly-once key.")
    name = {"type": "string", "minLength": 1, "maxLength": MAX_STRING_CHARS, "description": "Display name."}
    ticket = {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_TICKET_CHARS,
        "pattern": r"^v1\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*$",
        "description": "From `POST /api/actions`, or minted by a backend (README: Tickets).",
    }
    score = _int(1, 2**63 - 1)
    top_users = {"type": "array", "items": _ref("BoardEntry"), "maxItems": top_k}
    epoch = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,32}$", "description": "The board's history."}
    return {
        "Error": _object(
            {
                "success": {"const": False},
                "error": _object(
                    {
                        "code": {"type": "string", "enum": [c.value for c in Code]},
                        "message": {"type": "string"},
                    },
                    {
                        "field": {"type": "string", "description": "The offending member."},
                        "retryAfter": _int(1, about="Seconds, as Retry-After."),
                    },
                ),
            }
        ),
        "PlayerUpdate": _object(
            {"actionId": action_id, "ticket": ticket},
            {
                "userId": _nullable(_text("If given, the token's `sub`.")),
                "scoreDelta": _nullable(_int(1, 2**53, "If given, the ticket's points.")),
            },
            "A player (a token without `role: service`) redeems the ticket of its action.",
        ),
        "ServiceUpdate": _object(
            {
                "userId": user_id,
                "scoreDelta": _int(
                    1,
                    settings.max_delta,
                    "Points to credit: 1 to SCOREBOARD_MAX_DELTA (configurable; default 1000, "
                    f"{settings.max_delta} on this server).",
                ),
                "actionId": action_id,
            },
            {"username": _nullable(_text("The display name to show on the board."))},
            "A trusted backend (a token with `role: service`) credits a delta.",
        ),
        "Credited": _object(
            {
                "success": {"const": True},
                "userId": user_id,
                "newScore": score,
                "duplicate": {"type": "boolean", "description": "A retry: the original answer."},
                "topUsers": top_users,
            }
        ),
        "Accepted": _object(
            {
                "success": {"const": True},
                "accepted": {"const": True},
                "userId": user_id,
                "actionId": action_id,
                "topUsers": top_users,
            }
        ),
        "ActionStart": _object({"type": {"enum": sorted(catalog), "description": "An action type."}}),
        "ActionStarted": _object(
            {
                "actionId": action_id,
                "ticket": ticket,
                "reward": _int(1, MAX_POINTS),
                "notBefore": _int(about="Unix seconds: redeemable from then."),
                "expiresAt": _int(about="Unix seconds: redeemable until then."),
            }
        ),
        "BoardEntry": _object(
            {"rank": _int(1, top_k), "userId": user_id, "username": name, "score": score},
            about="A board row; `username` is the user id when no name was ever given.",
        ),
        "Board": _object({"topUsers": top_users}, about="The board, best first."),
        "Standing": _object({"userId": user_id, "username": name, "score": score, "rank": _int(1)}),
        "Snapshot": _object(
            {"type": {"const": "scoreboard:update"}, "epoch": epoch, "seq": _int(0), "topUsers": top_users},
            about="The whole board as of `seq`.",
        ),
        "Diff": _object(
            {
                "type": {"const": "scoreboard:diff"},
                "epoch": epoch,
                "seq": _int(1),
                "changes": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "oneOf": [
                            _ref("BoardEntry"),
                            _object({"rank": _int(1, top_k), "removed": {"const": True}}),
                        ]
                    },
                },
            },
            about="The rows that changed since `seq - 1`; an emptied rank is `removed`.",
        ),
        "StreamEvent": _object(
            {
                "event": {"enum": ["scoreboard:update", "scoreboard:diff"]},
                "id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,32}:[0-9]{1,18}$"},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"oneOf": [_ref("Snapshot"), _ref("Diff")]},
                },
            },
            {"retry": _int(0)},
            "One server-sent event: `event:`, `id: <epoch>:<seq>`, `data:`.",
        ),
        "Health": _object({"status": {"const": "ok"}}),
        "Ready": _object(
            {"status": {"const": "ready"}, "queued": _int(0, about="Updates waiting for storage.")}
        ),
    }


# -- the operations ------------------------------------------------------------------


def _update(operation_id: str, summary: str) -> Json:
    standing = {
        "operationId": "getUser",
        "parameters": {"userId": "$response.body#/userId"},
        "description": "The credited user's score and rank.",
    }
    return _op(
        operation_id,
        summary,
        "scores",
        {
            "200": _answer(
                200,
                "Credited (committed), or a retry's original answer.",
                _json(_ref("Credited")),
                links={"standing": standing},
            ),
            "202": _answer(
                202, "Queued (SCOREBOARD_ACK=memory), not yet committed.", _json(_ref("Accepted"))
            ),
        },
        UPDATE,
        about="The token decides the body: a player's redeems a ticket, a service token's credits a delta. "
        "An `actionId` sent again with the same user and delta is answered 200 with `duplicate: true` and "
        "the original `newScore`; with another user or delta, 409 `action_conflict`. A player over "
        "SCOREBOARD_PLAYER_UPDATES_PER_MIN is 429 `rate_limited`.",
        body={"oneOf": [_ref("PlayerUpdate"), _ref("ServiceUpdate")]},
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
    return _op(
        "startAction",
        "Start an action: a ticket to redeem once it is done",
        "scores",
        {
            "201": _answer(
                201, "The ticket, worth the catalog's points.", _json(_ref("ActionStarted")), links=links
            )
        },
        (*AUTH, *BODY, Code.UNKNOWN_ACTION_TYPE),
        about="Any valid token. Over the type's `max_per_minute` or SCOREBOARD_PLAYER_ACTIONS_PER_MIN: "
        "429 `rate_limited`.",
        body=_ref("ActionStart"),
        auth="required",
    )


def _reads(shared: Json) -> Json:
    user = {
        "name": "userId",
        "in": "path",
        "required": True,
        "description": "Percent-encoded; `.` and `..` as %2E and %2E%2E (clients remove dot segments).",
        "schema": {**_text("A user id."), "not": {"enum": [".", ".."]}},
    }
    return {
        "/scores": {
            "get": _op(
                "getBoard",
                "The board, best first",
                "board",
                {"200": _answer(200, "At most SCOREBOARD_TOP_K rows.", _json(_ref("Board")), shared)},
            )
        },
        "/api/users/{userId}": {
            "get": _op(
                "getUser",
                "One user's score and rank",
                "board",
                {"200": _answer(200, "The user's standing.", _json(_ref("Standing")), shared)},
                (Code.VALIDATION_FAILED, Code.USER_NOT_FOUND, Code.NOT_FOUND, Code.STORAGE_UNAVAILABLE),
                about="404 `user_not_found` for a user with no score (`not_found` for an empty id); 422 "
                "`validation_failed` for an id breaking the text rule.",
                parameters=[user],
            )
        },
    }


def _live(shared: Json) -> Json:
    stream_headers = {"Cache-Control": _fixed("no-cache"), **shared}
    return {
        "/scores/stream": {
            "get": _op(
                "streamBoard",
                "The board's events, as Server-Sent Events",
                "live",
                {
                    "200": _answer(
                        200,
                        "Endless: `retry:`, a snapshot (or the missed diffs), then a diff per change; "
                        "`: heartbeat` comments while idle.",
                        {"text/event-stream": {"schema": _ref("StreamEvent")}},
                        stream_headers,
                    )
                },
                parameters=[
                    _request_header(
                        "Last-Event-ID",
                        "Resume after this `<epoch>:<seq>`: the missed diffs while held, nothing if up "
                        "to date, else a snapshot.",
                    )
                ],
            ),
            "head": _op(
                "streamBoardHead",
                "The stream's headers, without subscribing",
                "live",
                {"200": _answer(200, "`Content-Type: text/event-stream`, no body.", headers=stream_headers)},
            ),
        },
        "/ws": {
            "get": _op(
                "openWebSocket",
                "The WebSocket for game clients (README: WebSocket)",
                "live",
                {
                    "101": _answer(
                        101,
                        "Switched to WebSocket: JSON text messages (subscribe, score.update, auth, ping).",
                        headers={"Upgrade": _fixed("websocket"), "Sec-WebSocket-Accept": _maybe("RFC 6455.")},
                    )
                },
                (*AUTH, Code.FORBIDDEN, Code.UPGRADE_REQUIRED),
                about="Send a WebSocket upgrade (`Connection: Upgrade`, `Upgrade: websocket`, "
                "`Sec-WebSocket-Key`, `Sec-WebSocket-Version: 13`); a plain request is 426 "
                "`upgrade_required`. The token is optional here (or comes in an `auth` message); a token "
                "in the URL is 401. A page whose `Origin` SCOREBOARD_ALLOWED_ORIGINS does not allow is 403.",
                parameters=[_request_header("Origin", "Sent by browsers; checked against the allow-list.")],
                auth="optional",
            )
        },
    }


def _operations(settings: Settings, shared: Json) -> Json:
    static_types = {CONTENT_TYPES.guess_type(name)[0] or "application/octet-stream" for name in STATIC_FILES}
    paths = {
        "/healthz": {
            "get": _op(
                "healthz",
                "The process is alive",
                "operations",
                {"200": _answer(200, "Alive.", _json(_ref("Health")))},
            )
        },
        "/readyz": {
            "get": _op(
                "readyz",
                "The store answers and updates are accepted",
                "operations",
                {"200": _answer(200, "Ready.", _json(_ref("Ready")))},
                (Code.STORAGE_UNAVAILABLE,),
            )
        },
        "/": {
            "get": _op(
                "page",
                "The live board page",
                "page",
                {
                    "200": _answer(
                        200,
                        "HTML that loads /static/ files and follows /scores/stream.",
                        {"text/html": {}},
                        {header: _fixed(value) for header, value in PAGE_HEADERS.items()},
                    )
                },
            )
        },
        "/static/{name}": {
            "get": _op(
                "staticFile",
                "A file of the live page",
                "page",
                {
                    "200": _answer(
                        200,
                        "The file.",
                        {media: {} for media in sorted(static_types)},
                        {"X-Content-Type-Options": _fixed("nosniff")},
                    )
                },
                (Code.NOT_FOUND,),
                parameters=[
                    {"name": "name", "in": "path", "required": True, "schema": {"enum": sorted(STATIC_FILES)}}
                ],
            )
        },
        OPENAPI_PATH: {
            "get": _op(
                "openapi",
                "This document",
                "operations",
                {
                    "200": _answer(
                        200,
                        "OpenAPI 3.1.",
                        _json({"type": "object", "required": ["openapi", "paths"]}),
                        shared,
                    )
                },
            )
        },
    }
    if settings.metrics != "off":
        service_only = settings.metrics == "service"
        paths["/metrics"] = {
            "get": _op(
                "metrics",
                "Metrics, in the Prometheus text format",
                "operations",
                {"200": _answer(200, "The exposition.", {METRICS_CONTENT_TYPE: {}})},
                (*AUTH, Code.FORBIDDEN) if service_only else (),
                about="SCOREBOARD_METRICS=public: for anyone; `service`: for service tokens (401 without a "
                "valid token, 403 with a player's); `off`: no such path.",
                auth="required" if service_only else "none",
            )
        }
    return paths


def _preflight(operation_id: str, *, user: bool) -> Json:
    allowed = ", ".join(sorted(ALLOWED_HEADERS))
    # The preflight of a standing answers for any id the path can carry.
    parameters = (
        [{"name": "userId", "in": "path", "required": True, "schema": {"type": "string"}}] if user else []
    )
    return _op(
        operation_id,
        "CORS preflight: what a page from `Origin` may do",
        "cors",
        {
            "204": _answer(
                204,
                "Allowed; without `Origin` and `Access-Control-Request-Method` not a preflight, and `Allow` "
                "lists the methods.",
                headers={
                    header: _maybe("See CORS.")
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
            _request_header("Origin", "The page's origin."),
            _request_header("Access-Control-Request-Method", "GET or HEAD."),
            _request_header("Access-Control-Request-Headers", f"Comma-separated, among {allowed}."),
        ],
    )


def describe(settings: Settings, catalog: Mapping[str, ActionType]) -> Json:
    """The OpenAPI 3.1 document for a server with `settings` and `catalog`."""
    cors = bool(settings.cors)
    shared = (
        {
            name: _maybe("With an allowed `Origin`.")
            for name in ("Access-Control-Allow-Origin", "Access-Control-Expose-Headers")
        }
        if cors
        else {}
    )
    paths: Json = {
        "/scores/update": {"post": _update("creditScore", "Credit one action, at most once")},
        "/api/score/update": {
            "post": _update("creditScoreApi", "Credit one action (as POST /scores/update)")
        },
        "/api/actions": {"post": _start_action()},
        **_reads(shared),
        **_live(shared),
        **_operations(settings, shared),
    }
    if cors:
        paths["/scores"]["options"] = _preflight("preflightBoard", user=False)
        paths["/api/users/{userId}"]["options"] = _preflight("preflightUser", user=True)
        paths["/scores/stream"]["options"] = _preflight("preflightStream", user=False)
        paths[OPENAPI_PATH]["options"] = _preflight("preflightOpenapi", user=False)
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
            {"name": "board", "description": "Reading the board (public)."},
            {"name": "live", "description": "Following the board as it changes."},
            {"name": "page", "description": "The live page."},
            {"name": "operations", "description": "Health, readiness, metrics, this document."},
            {"name": "cors", "description": "Cross-origin preflights of the public reads."},
        ],
        "paths": paths,
        "components": {
            "schemas": _schemas(settings, catalog),
            "parameters": {
                "RequestId": _request_header(
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
                "Retry-After": {"required": True, "description": "Seconds to wait.", "schema": _int(1)},
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
                    "description": "Claims: `sub` (the user id), `role` (`player`, the default, or "
                    "`service`), `name` or `preferred_username` (the display name), `exp`. HS256 with the "
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
