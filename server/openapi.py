"""The API description: `GET /openapi.json`, an OpenAPI 3.1 document of every HTTP endpoint.

`describe(settings, catalog)` builds the document once per application from
what this server accepts: the largest service delta, the catalog's boards
(their ids, bounds and sizes) and action types, whether `/metrics` exists and
needs a token, whether CORS preflights are answered. `OpenApiEndpoint` serves
it, encoded once.

Said once here rather than per response:
- every response carries `X-Request-ID`;
- every error is the shared `Error` object; each response lists the codes it
  can carry, under the status `http.STATUS` gives them (a test checks both);
- ids, names and action types follow the text rule of `text.py`: the string
  format `printable-text` (a JSON Schema pattern cannot say it portably);
- what JSON Schema cannot say is said in descriptions: `metadata` is at most
  512 bytes as compact JSON.

Automatic HEADs (aiohttp answers HEAD beside every GET) are not operations
of their own; the HEADs of the event streams are, since they do not subscribe.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_fileresponse import CONTENT_TYPES

from . import __version__
from .catalog import INT64_MAX, INT64_MIN, MAX_TOP_K, BoardSpec, Catalog, Operator, Order
from .config import Settings
from .cors import ALLOWED_HEADERS
from .errors import Code
from .http import PAGE_HEADERS, STATIC_FILES, STATUS
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .tickets import MAX_BOARDS, MAX_METADATA_BYTES, MAX_POINTS, MAX_TICKET_CHARS
from .validation import MAX_STRING_CHARS

OPENAPI_PATH = "/openapi.json"
TEXT_FORMAT = "printable-text"
Json = dict[str, Any]
MAX_SEASON = 2**31 - 1
MAX_REASON_CHARS = 512

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
    Code.UNKNOWN_BOARD,
    Code.OUT_OF_RANGE,
    Code.DELTA_MISMATCH,
    Code.SCORE_OVERFLOW,
)
# A board's reads: `not_found` for an empty segment (no route matches it).
BOARD_READ = (
    Code.VALIDATION_FAILED,
    Code.BOARD_NOT_FOUND,
    Code.SEASON_NOT_FOUND,
    Code.NOT_FOUND,
    Code.STORAGE_UNAVAILABLE,
)
RESET = (
    *AUTH,
    *BODY,
    Code.FORBIDDEN,
    Code.BOARD_NOT_FOUND,
    Code.NOT_FOUND,
    Code.SEASON_CONFLICT,
    Code.STORAGE_UNAVAILABLE,
    Code.SHUTTING_DOWN,
)
SECURITY: dict[str, list[Json]] = {
    "none": [],
    "required": [{"bearerAuth": []}],
    "optional": [{}, {"bearerAuth": []}],
}
# Statuses whose answers say when to try again (Retry-After).
RETRY_STATUSES = frozenset({425, 429, 503})

INFO = """\
Real-time top-K leaderboards ("boards"), each with seasons. Players redeem
server-signed tickets for the actions they start; trusted game backends
(service tokens) credit values on one or several boards; admins end seasons.
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


def _scores_of(specs: Iterable[BoardSpec]) -> Json:
    """The scores boards `specs` can hold: positive where every update adds at least 1, else any int64."""
    adds = all(s.operator is Operator.INCR and s.min_value >= 1 for s in specs)
    return _int(1 if adds else INT64_MIN, INT64_MAX)


def _update_schemas(settings: Settings, catalog: Catalog, user_id: Json, action_id: Json) -> Json:
    default = catalog.default_board
    username = _nullable(_text("The display name to show on the boards."))
    metadata = {
        "type": ["object", "null"],
        "description": f"Any JSON object of at most {MAX_METADATA_BYTES} bytes as compact UTF-8 JSON, "
        "stored with the records it writes and shown with them.",
    }
    per_board = {
        spec.id: _int(spec.min_value, spec.max_value, f"Board '{spec.id}' ({spec.operator.value}).")
        for spec in catalog.boards.values()
    }
    return {
        "PlayerUpdate": _object(
            {"actionId": action_id, "ticket": _ref("Ticket")},
            {
                "userId": _nullable(_text("If given, the token's `sub`.")),
                "scoreDelta": _nullable(
                    _int(1, 2**53, "If given, the ticket's points (a ticket with `scores`: leave it out).")
                ),
            },
            "A player (a token with `role: player`) redeems the ticket of its action.",
        ),
        "ServiceDelta": _object(
            {
                "userId": user_id,
                "actionId": action_id,
                "scoreDelta": _int(
                    max(1, default.min_value),
                    min(settings.max_delta, default.max_value),
                    f"Points for the default board ('{default.id}'): 1 to SCOREBOARD_MAX_DELTA "
                    f"(configurable; default 1000, {settings.max_delta} on this server), within its bounds.",
                ),
            },
            {"username": username, "metadata": metadata, "scores": {"type": "null"}},
            "A trusted backend (a token with `role: service`) credits the default board.",
        ),
        "ServiceScores": _object(
            {
                "userId": user_id,
                "actionId": action_id,
                "scores": {
                    "type": "object",
                    "properties": per_board,
                    "additionalProperties": False,
                    "minProperties": 1,
                    "maxProperties": MAX_BOARDS,
                    "description": "The value for each board, within its bounds: added (`incr`), kept "
                    "if better (`best`) or replacing the last (`latest`). An unknown board is 422 "
                    "`unknown_board`, a value outside its board's bounds 422 `out_of_range`.",
                },
            },
            {"username": username, "metadata": metadata, "scoreDelta": {"type": "null"}},
            "A trusted backend (a token with `role: service`) credits several boards at once.",
        ),
        "Credited": {
            **_object(
                {
                    "success": {"const": True},
                    "userId": user_id,
                    "duplicate": {"type": "boolean", "description": "A retry: the original answer."},
                    "boards": {
                        "type": "object",
                        "propertyNames": {"pattern": "^[a-z0-9_-]{1,64}$"},
                        "additionalProperties": _ref("BoardCredit"),
                        "minProperties": 1,
                        "maxProperties": MAX_BOARDS,
                        "description": "Each board written, by id.",
                    },
                },
                {
                    "newScore": {**_ref("Score"), "description": "The default board's score."},
                    "topUsers": _ref("TopUsers"),
                },
                "`newScore` and `topUsers` only when the update wrote the default board.",
            ),
            "dependentRequired": {"newScore": ["topUsers"], "topUsers": ["newScore"]},
        },
        "BoardCredit": _object(
            {
                "season": _int(1, MAX_SEASON, "The season written."),
                "score": _scores_of(catalog.boards.values()),
                "improved": {
                    "type": "boolean",
                    "description": "Whether the record was written: always on `incr` and `latest` boards, "
                    "on `best` ones when the value beat the best.",
                },
            }
        ),
        "Accepted": _object(
            {
                "success": {"const": True},
                "accepted": {"const": True},
                "userId": user_id,
                "actionId": action_id,
            },
            {"topUsers": _ref("TopUsers")},
            "`topUsers` only when the update writes the default board.",
        ),
        "ActionStart": _object({"type": {"enum": sorted(catalog.actions), "description": "An action type."}}),
        "ActionStarted": _object(
            {
                "actionId": action_id,
                "ticket": _ref("Ticket"),
                "reward": _int(1, MAX_POINTS, "The points credited on each of the action's boards."),
                "notBefore": _int(about="Unix seconds: redeemable from then."),
                "expiresAt": _int(about="Unix seconds: redeemable until then."),
            }
        ),
    }


def _board_schemas(catalog: Catalog, ids: Json, user_id: Json) -> Json:
    default = catalog.default_board
    boards = list(catalog.boards.values())
    top_k = max(spec.top_k for spec in boards)
    name = {"type": "string", "minLength": 1, "maxLength": MAX_STRING_CHARS, "description": "Display name."}
    metadata = {"type": "object", "description": "The metadata of the update that wrote the record."}
    season = _int(1, MAX_SEASON, "A season number: 1, then one more per season end.")

    def row(rank_max: int, score: Json, about: str) -> Json:
        return _object(
            {"rank": _int(1, rank_max), "userId": user_id, "username": name, "score": score},
            {"metadata": metadata},
            about + " `username` is the user id when no name was ever given.",
        )

    return {
        "BoardId": {**ids, "description": "A board of this server (GET /api/boards)."},
        "Score": _scores_of([default]),
        "BoardEntry": row(default.top_k, _ref("Score"), "A row of the default board."),
        "TopUsers": {"type": "array", "items": _ref("BoardEntry"), "maxItems": default.top_k},
        "Board": _object({"topUsers": _ref("TopUsers")}, about="The default board, best first."),
        "Standing": _object({"userId": user_id, "username": name, "score": _ref("Score"), "rank": _int(1)}),
        "Entry": row(top_k, _scores_of(boards), "A row of any board."),
        "BoardInfo": _object(
            {
                "id": _ref("BoardId"),
                "title": {"type": "string", "maxLength": 128},
                "operator": {"enum": [o.value for o in Operator], "description": "How updates count."},
                "order": {"enum": [o.value for o in Order], "description": "desc: higher ranks first."},
                "topK": _int(1, MAX_TOP_K),
                "reset": {
                    "type": ["string", "null"],
                    "minLength": 1,
                    "description": "When seasons end: daily, weekly, monthly or a cron expression (UTC); "
                    "null: only when an admin ends one.",
                },
                "default": {"type": "boolean"},
                "season": _object(
                    {
                        "id": season,
                        "startedAt": _int(about="Unix seconds."),
                        "endsAt": {
                            **_int(about="Unix seconds; null: no scheduled end."),
                            "type": ["integer", "null"],
                        },
                    },
                    about="The current season.",
                ),
            }
        ),
        "Boards": _object(
            {
                "boards": {
                    "type": "array",
                    "items": _ref("BoardInfo"),
                    "minItems": len(boards),
                    "maxItems": len(boards),
                }
            },
            about="Every board, in the catalog's order.",
        ),
        "BoardScores": _object(
            {
                "board": _ref("BoardId"),
                "season": season,
                "entries": {"type": "array", "items": _ref("Entry"), "maxItems": top_k},
            },
            about="A season's top K (the board's `topK`), best first.",
        ),
        "BoardStanding": _object(
            {
                "board": _ref("BoardId"),
                "season": season,
                "userId": user_id,
                "username": name,
                "score": _scores_of(boards),
                "rank": _int(1),
            },
            {"metadata": metadata},
        ),
        "SeasonEnd": _object(
            {"season": _int(1, MAX_SEASON, "The current season: the one to end.")},
            {"reason": _nullable(_text("Why (logged with the season end).", MAX_REASON_CHARS))},
        ),
        "SeasonEnded": _object(
            {"board": _ref("BoardId"), "endedSeason": season, "season": _int(2, about="The new season.")}
        ),
    }


def _stream_schemas(epoch: Json, top_k: int) -> Json:
    position = {"board": _ref("BoardId"), "epoch": epoch}
    return {
        "Snapshot": _object(
            {
                "type": {"const": "scoreboard:update"},
                **position,
                "season": _int(1),
                "seq": _int(0),
                "topUsers": {"type": "array", "items": _ref("Entry"), "maxItems": top_k},
            },
            about="The whole board as of `seq`.",
        ),
        "Diff": _object(
            {
                "type": {"const": "scoreboard:diff"},
                **position,
                "season": _int(1),
                "seq": _int(1),
                "changes": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "oneOf": [
                            _ref("Entry"),
                            _object({"rank": _int(1, top_k), "removed": {"const": True}}),
                        ]
                    },
                },
            },
            about="The rows that changed since `seq - 1`; an emptied rank is `removed`.",
        ),
        "SeasonStarted": _object(
            {
                "type": {"const": "board:season"},
                **position,
                "endedSeason": _int(1),
                "season": _int(2),
                "seq": _int(1),
            },
            about="A season ended; the new (empty) season's snapshot follows at the same `seq`.",
        ),
        "StreamEvent": _object(
            {
                "event": {"enum": ["scoreboard:update", "scoreboard:diff", "board:season"]},
                "id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,32}:[0-9]{1,18}$"},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"oneOf": [_ref("Snapshot"), _ref("Diff"), _ref("SeasonStarted")]},
                },
            },
            {"retry": _int(0)},
            "One server-sent event: `event:`, `id: <epoch>:<seq>`, `data:`.",
        ),
    }


def _schemas(settings: Settings, catalog: Catalog) -> Json:
    ids = {"type": "string", "enum": list(catalog.boards)}
    user_id = _text("A user id (a token's `sub`).")
    action_id = _text("The action's id: its exactly-once key.")
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
        "Ticket": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_TICKET_CHARS,
            "pattern": r"^v1\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*$",
            "description": "From `POST /api/actions`, or minted by a backend (README: Tickets).",
        },
        **_update_schemas(settings, catalog, user_id, action_id),
        **_board_schemas(catalog, ids, user_id),
        **_stream_schemas(epoch, max(spec.top_k for spec in catalog.boards.values())),
        "Health": _object({"status": {"const": "ok"}}),
        "Ready": _object(
            {"status": {"const": "ready"}, "queued": _int(0, about="Updates waiting for storage.")}
        ),
    }


# -- the operations ------------------------------------------------------------------

USER_PARAMETER: Json = {
    "name": "userId",
    "in": "path",
    "required": True,
    "description": "Percent-encoded; `.` and `..` as %2E and %2E%2E (clients remove dot segments).",
    "schema": {**_text("A user id."), "not": {"enum": [".", ".."]}},
}
BOARD_PARAMETER: Json = {
    "name": "board",
    "in": "path",
    "required": True,
    "description": "A board id (1-64 of `[a-z0-9_-]`); any other segment is 404 `board_not_found`.",
    "schema": _ref("BoardId"),
}
SEASON_PARAMETER: Json = {
    "name": "season",
    "in": "query",
    "required": False,
    "description": "A season still kept (the current one and the board's last `archive` ones); "
    "default: the current one. Others are 404 `season_not_found`.",
    "schema": _int(1, MAX_SEASON),
}


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
    body = [_ref("PlayerUpdate"), _ref("ServiceScores")]
    return _op(
        operation_id,
        summary,
        "scores",
        {
            "200": _answer(
                200,
                "Credited (committed), or a retry's original answer.",
                _json(_ref("Credited")),
                links=links,
            ),
            "202": _answer(
                202, "Queued (SCOREBOARD_ACK=memory), not yet committed.", _json(_ref("Accepted"))
            ),
        },
        UPDATE,
        about="The token decides the body: a player's redeems a ticket, a service token's credits "
        "`scoreDelta` on the default board or `scores` on several boards; an admin's is 403 `forbidden`. "
        "An `actionId` sent again with the same user and values is answered 200 with `duplicate: true` "
        "and the original answer; with another user, other boards or other values, 409 "
        "`action_conflict`. A player over SCOREBOARD_PLAYER_UPDATES_PER_MIN is 429 `rate_limited`.",
        body={"oneOf": [body[0], _ref("ServiceDelta"), body[1]]},
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
    return {
        "/scores": {
            "get": _op(
                "getBoard",
                "The default board, best first",
                "board",
                {"200": _answer(200, "At most the board's `topK` rows.", _json(_ref("Board")), shared)},
            )
        },
        "/api/users/{userId}": {
            "get": _op(
                "getUser",
                "One user's score and rank on the default board",
                "board",
                {"200": _answer(200, "The user's standing.", _json(_ref("Standing")), shared)},
                (Code.VALIDATION_FAILED, Code.USER_NOT_FOUND, Code.NOT_FOUND, Code.STORAGE_UNAVAILABLE),
                about="404 `user_not_found` for a user with no score this season (`not_found` for an empty "
                "id); 422 `validation_failed` for an id breaking the text rule.",
                parameters=[USER_PARAMETER],
            )
        },
    }


def _boards(boards: Sequence[str]) -> Json:
    listed = {
        f"{kind}.{board}": {
            "operationId": target,
            "parameters": {"board": f"$response.body#/boards/{i}/id", **extra},
            **body,
            "description": about,
        }
        for i, board in enumerate(boards)
        for kind, target, extra, body, about in (
            (
                "scores",
                "getBoardScores",
                {"season": f"$response.body#/boards/{i}/season/id"},
                {},
                f"The current season of board '{board}'.",
            ),
            (
                "reset",
                "resetBoard",
                {},
                {"requestBody": {"season": f"$response.body#/boards/{i}/season/id"}},
                f"End the current season of board '{board}' (an admin).",
            ),
        )
    }
    first = {
        "operationId": "getBoardUser",
        "parameters": {
            "board": "$response.body#/board",
            "season": "$response.body#/season",
            "userId": "$response.body#/entries/0/userId",
        },
        "description": "The first entry's standing.",
    }
    ended = {
        "archive": {
            "operationId": "getBoardScores",
            "parameters": {"board": "$response.body#/board", "season": "$response.body#/endedSeason"},
            "description": "The season just ended (404 `season_not_found` unless the board keeps some).",
        },
        "next": {
            "operationId": "resetBoard",
            "parameters": {"board": "$response.body#/board"},
            "requestBody": {"season": "$response.body#/season"},
            "description": "End the new season too.",
        },
    }
    return {
        "/api/boards": {
            "get": _op(
                "listBoards",
                "Every board, with its current season",
                "board",
                {"200": _answer(200, "The catalog's boards.", _json(_ref("Boards")), links=listed)},
            )
        },
        "/api/boards/{board}/scores": {
            "get": _op(
                "getBoardScores",
                "A board's top K for a season",
                "board",
                {
                    "200": _answer(
                        200,
                        "At most the board's `topK` rows.",
                        _json(_ref("BoardScores")),
                        links={"first": first},
                    )
                },
                BOARD_READ,
                about="422 `validation_failed` for a `season` that is not 1 to 2147483647 in ASCII digits.",
                parameters=[BOARD_PARAMETER, SEASON_PARAMETER],
            )
        },
        "/api/boards/{board}/users/{userId}": {
            "get": _op(
                "getBoardUser",
                "One user's entry and rank on a board, for a season",
                "board",
                {"200": _answer(200, "The user's standing.", _json(_ref("BoardStanding")))},
                (*BOARD_READ, Code.USER_NOT_FOUND),
                about="404 `user_not_found` for a user with no score that season; 422 `validation_failed` "
                "for an id breaking the text rule or a bad `season`.",
                parameters=[BOARD_PARAMETER, USER_PARAMETER, SEASON_PARAMETER],
            )
        },
        "/api/boards/{board}/reset": {
            "post": _op(
                "resetBoard",
                "End a board's current season now (admins)",
                "seasons",
                {
                    "200": _answer(
                        200, "Ended; the new season is empty.", _json(_ref("SeasonEnded")), links=ended
                    )
                },
                RESET,
                about="An admin token (`role: admin`); others are 403 `forbidden`. `season` must be the "
                "current one (GET /api/boards), else 409 `season_conflict`: two admins cannot end two "
                "seasons by mistake. A scheduled board keeps its schedule.",
                parameters=[BOARD_PARAMETER],
                body=_ref("SeasonEnd"),
                auth="required",
            )
        },
    }


def _stream(
    operation_id: str, board: str, parameters: list[Json], errors: tuple[Code, ...], headers: Json
) -> Json:
    """A board's event stream (GET) and its headers (HEAD)."""
    return {
        "get": _op(
            operation_id,
            f"{board}'s events, as Server-Sent Events",
            "live",
            {
                "200": _answer(
                    200,
                    "Endless: `retry:`, a snapshot (or the missed events), then a diff per change and "
                    "`board:season` plus a snapshot per season end; `: heartbeat` comments while idle.",
                    {"text/event-stream": {"schema": _ref("StreamEvent")}},
                    headers,
                )
            },
            errors,
            parameters=[
                *parameters,
                _request_header(
                    "Last-Event-ID",
                    "Resume after this `<epoch>:<seq>`: the missed events while held, nothing if up "
                    "to date, else a snapshot.",
                ),
            ],
        ),
        "head": _op(
            operation_id + "Head",
            "The stream's headers, without subscribing",
            "live",
            {"200": _answer(200, "`Content-Type: text/event-stream`, no body.", headers=headers)},
            errors,
            parameters=parameters,
        ),
    }


def _live(shared: Json) -> Json:
    stream_headers = {"Cache-Control": _fixed("no-cache"), **shared}
    return {
        "/scores/stream": _stream("streamBoard", "The default board", [], (), stream_headers),
        "/api/boards/{board}/stream": _stream(
            "streamBoardOf",
            "A board",
            [BOARD_PARAMETER],
            (Code.BOARD_NOT_FOUND, Code.NOT_FOUND),
            {"Cache-Control": _fixed("no-cache")},
        ),
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


def _preflight(operation_id: str, *, user: bool, board: bool = False) -> Json:
    allowed = ", ".join(sorted(ALLOWED_HEADERS))
    # The preflight of a path with ids answers for any id the path can carry.
    parameters: list[Json] = []
    if board:  # a preflight answers for any board id: the GET then says 404
        parameters.append({"name": "board", "in": "path", "required": True, "schema": {"type": "string"}})
    if user:
        parameters.append({"name": "userId", "in": "path", "required": True, "schema": {"type": "string"}})
    user = user or board
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


def describe(settings: Settings, catalog: Catalog) -> Json:
    """The OpenAPI 3.1 document for a server with `settings` and `catalog` (its boards and actions)."""
    boards = list(catalog.boards)
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
        "/scores/update": {"post": _update("creditScore", "Credit one action, at most once", boards)},
        "/api/score/update": {
            "post": _update("creditScoreApi", "Credit one action (as POST /scores/update)", boards)
        },
        "/api/actions": {"post": _start_action()},
        **_reads(shared),
        **_boards(boards),
        **_live(shared),
        **_operations(settings, shared),
    }
    if cors:
        paths["/scores"]["options"] = _preflight("preflightBoard", user=False)
        paths["/api/users/{userId}"]["options"] = _preflight("preflightUser", user=True)
        paths["/scores/stream"]["options"] = _preflight("preflightStream", user=False)
        paths[OPENAPI_PATH]["options"] = _preflight("preflightOpenapi", user=False)
        paths["/api/boards"]["options"] = _preflight("preflightBoards", user=False)
        paths["/api/boards/{board}/scores"]["options"] = _preflight(
            "preflightBoardScores", user=False, board=True
        )
        paths["/api/boards/{board}/users/{userId}"]["options"] = _preflight(
            "preflightBoardUser", user=True, board=True
        )
        paths["/api/boards/{board}/stream"]["options"] = _preflight(
            "preflightBoardStream", user=False, board=True
        )
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
            {"name": "live", "description": "Following a board as it changes."},
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
