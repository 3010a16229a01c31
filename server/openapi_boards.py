"""The API description's board paths: the public reads of the boards, and what admins do to them.

`board_paths(catalog, shared)` describes the default board's reads
(`/scores`, `/api/users/{userId}`), the catalog's boards (`/api/boards/...`:
pages, standings, the players around one, friends lists), season ends and
moderation (`/api/admin/...`: removing entries, blocking players, reverting
actions, the audit log). Links name each of the catalog's boards; `shared`
are the headers CORS adds to public reads.
"""

from __future__ import annotations

from .catalog import Catalog
from .errors import Code
from .http import DEFAULT_AROUND, DEFAULT_AUDIT, MAX_AUDIT
from .openapi_parts import (
    AUTH,
    BOARD_PARAMETER,
    BODY,
    SEASON_PARAMETER,
    STORE,
    USER_PARAMETER,
    Json,
    answer,
    integer,
    json_content,
    operation,
    ref,
    text,
)
from .standings import MAX_AROUND, MAX_IDS, MAX_OFFSET, MAX_PAGE

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
# An admin's change: `not_found` for an empty segment.
MODERATE = (*AUTH, *BODY, Code.FORBIDDEN, Code.NOT_FOUND, *STORE)
ADMIN = "An admin token (`role: admin`); others are 403 `forbidden`. "


def _query(name: str, schema: Json, about: str, *, required: bool = False) -> Json:
    return {"name": name, "in": "query", "required": required, "description": about, "schema": schema}


def _bounded(low: int, high: int, default: int | None) -> Json:
    schema = integer(low, high)
    if default is not None:
        schema["default"] = default
    return schema


_DIGITS = "in ASCII digits (else 422 `validation_failed` naming it)"
COUNT_PARAMETER = _query(
    "count", _bounded(0, MAX_AROUND, DEFAULT_AROUND), f"Entries shown above and below the player, {_DIGITS}."
)
OFFSET_PARAMETER = _query("offset", _bounded(0, MAX_OFFSET, 0), f"Ranks skipped, {_DIGITS}.")
IDS_PARAMETER: Json = {
    **_query(
        "ids",
        {"type": "array", "items": text("A user id."), "minItems": 1, "maxItems": MAX_IDS},
        f"Comma-separated user ids, URL-encoded: 1 to {MAX_IDS} distinct ones (duplicates count once), "
        "each following the id rule (so none holds a comma); else 422 `validation_failed` naming `ids`. "
        "The whole request line is at most 8190 bytes (else 431).",
        required=True,
    ),
    "style": "form",
    "explode": False,
}
ACTION_PARAMETER: Json = {
    "name": "actionId",
    "in": "path",
    "required": True,
    "description": "Percent-encoded, as a user id.",
    "schema": {**text("An action id."), "not": {"enum": [".", ".."]}},
}


def _limit(catalog: Catalog) -> Json:
    """`limit`: 1 to max(100, topK) of the board; here the bound every board allows."""
    boards = catalog.boards.values()
    most = min(max(MAX_PAGE, spec.top_k) for spec in boards)
    sizes = {spec.top_k for spec in boards}
    return _query(
        "limit",
        _bounded(1, most, sizes.pop() if len(sizes) == 1 else None),
        f"Rows at most: 1 to max({MAX_PAGE}, the board's `topK`), {_DIGITS}; default: the board's `topK`.",
    )


def _reads(shared: Json) -> Json:
    return {
        "/scores": {
            "get": operation(
                "getBoard",
                "The default board, best first",
                "board",
                {"200": answer(200, "At most the board's `topK` rows.", json_content(ref("Board")), shared)},
            )
        },
        "/api/users/{userId}": {
            "get": operation(
                "getUser",
                "One user's score and rank on the default board",
                "board",
                {"200": answer(200, "The user's standing.", json_content(ref("Standing")), shared)},
                (Code.VALIDATION_FAILED, Code.USER_NOT_FOUND, Code.NOT_FOUND, Code.STORAGE_UNAVAILABLE),
                about="404 `user_not_found` for a user with no score this season (`not_found` for an empty "
                "id); 422 `validation_failed` for an id breaking the text rule.",
                parameters=[USER_PARAMETER],
            )
        },
    }


def _boards(catalog: Catalog) -> Json:
    boards = list(catalog.boards)
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
    standing = {"board": "$response.body#/board", "season": "$response.body#/season"}
    nearby = {
        "around": {
            "operationId": "getBoardUserAround",
            "parameters": {**standing, "userId": "$response.body#/userId"},
            "description": "The players around this one.",
        },
        "friends": {
            "operationId": "getBoardUsers",
            "parameters": {**standing, "ids": "$response.body#/userId"},
            "description": "This player as a friends list of one.",
        },
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
            "get": operation(
                "listBoards",
                "Every board, with its current season",
                "board",
                {"200": answer(200, "The catalog's boards.", json_content(ref("Boards")), links=listed)},
            )
        },
        "/api/boards/{board}/scores": {
            "get": operation(
                "getBoardScores",
                "A page of a board's ranking for a season (by default its top K)",
                "board",
                {
                    "200": answer(
                        200,
                        "Ranks `offset + 1` to `offset + limit`: fewer or none past the end.",
                        json_content(ref("BoardScores")),
                        links={"first": first},
                    )
                },
                BOARD_READ,
                about="422 `validation_failed` for a `season` that is not 1 to 2147483647 in ASCII digits, "
                "or an `offset` or `limit` out of its bounds. Without `offset` and `limit`: the top K.",
                parameters=[BOARD_PARAMETER, SEASON_PARAMETER, OFFSET_PARAMETER, _limit(catalog)],
            )
        },
        "/api/boards/{board}/users/{userId}": {
            "get": operation(
                "getBoardUser",
                "One user's entry and rank on a board, for a season",
                "board",
                {
                    "200": answer(
                        200, "The user's standing.", json_content(ref("BoardStanding")), links=nearby
                    )
                },
                (*BOARD_READ, Code.USER_NOT_FOUND),
                about="404 `user_not_found` for a user with no score that season; 422 `validation_failed` "
                "for an id breaking the text rule or a bad `season`.",
                parameters=[BOARD_PARAMETER, USER_PARAMETER, SEASON_PARAMETER],
            ),
            "delete": operation(
                "removeBoardUser",
                "Remove a player's entry from a board's current season (admins)",
                "moderation",
                {"200": answer(200, "Removed.", json_content(ref("EntryRemoved")))},
                (*MODERATE, Code.BOARD_NOT_FOUND, Code.USER_NOT_FOUND),
                about=ADMIN + "404 `user_not_found` if the player has no entry in the current season. "
                "The entry's credits no longer count; the player may earn again, from nothing.",
                parameters=[BOARD_PARAMETER, USER_PARAMETER],
                body=ref("Reason"),
                auth="required",
            ),
        },
        "/api/boards/{board}/users/{userId}/around": {
            "get": operation(
                "getBoardUserAround",
                "A player's entry and the players around it, for a season",
                "board",
                {"200": answer(200, "The window, best first.", json_content(ref("BoardAround")))},
                (*BOARD_READ, Code.USER_NOT_FOUND),
                about="404 `user_not_found` for a player with no entry that season; 422 "
                "`validation_failed` for an id breaking the text rule, a bad `season` or `count`.",
                parameters=[BOARD_PARAMETER, USER_PARAMETER, SEASON_PARAMETER, COUNT_PARAMETER],
            )
        },
        "/api/boards/{board}/users": {
            "get": operation(
                "getBoardUsers",
                "Some players' entries and ranks on a board (a friends list), for a season",
                "board",
                {"200": answer(200, "Their entries, best first.", json_content(ref("BoardUsers")))},
                BOARD_READ,
                about="Unknown ids are left out; 422 `validation_failed` for bad `ids` or `season`.",
                parameters=[BOARD_PARAMETER, IDS_PARAMETER, SEASON_PARAMETER],
            )
        },
        "/api/boards/{board}/reset": {
            "post": operation(
                "resetBoard",
                "End a board's current season now (admins)",
                "seasons",
                {
                    "200": answer(
                        200, "Ended; the new season is empty.", json_content(ref("SeasonEnded")), links=ended
                    )
                },
                RESET,
                about="An admin token (`role: admin`); others are 403 `forbidden`. `season` must be the "
                "current one (GET /api/boards), else 409 `season_conflict`: two admins cannot end two "
                "seasons by mistake. A scheduled board keeps its schedule.",
                parameters=[BOARD_PARAMETER],
                body=ref("SeasonEnd"),
                auth="required",
            )
        },
    }


def _moderation() -> Json:
    user = "/api/admin/users/{userId}/block"
    blocked = {
        "unblock": {
            "operationId": "unblockUser",
            "parameters": {"userId": "$response.body#/userId"},
            "requestBody": {"reason": "Blocked by mistake."},
            "description": "Undo the block (the removed entries stay removed).",
        }
    }
    return {
        user: {
            "post": operation(
                "blockUser",
                "Block a player: remove their entries, refuse their credits (admins)",
                "moderation",
                {"200": answer(200, "Blocked.", json_content(ref("UserBlocked")), links=blocked)},
                MODERATE,
                about=ADMIN + "Removes the player from every board's current season; from then on their "
                "credits (on every transport) and action starts are 403 `user_blocked`.",
                parameters=[USER_PARAMETER],
                body=ref("Reason"),
                auth="required",
            ),
            "delete": operation(
                "unblockUser",
                "Unblock a player (admins)",
                "moderation",
                {"200": answer(200, "Unblocked.", json_content(ref("UserUnblocked")))},
                MODERATE,
                about=ADMIN + "Removed entries do not come back.",
                parameters=[USER_PARAMETER],
                body=ref("Reason"),
                auth="required",
            ),
        },
        "/api/admin/actions/{actionId}/revert": {
            "post": operation(
                "revertAction",
                "Revert a credited action on every board it wrote (admins)",
                "moderation",
                {"200": answer(200, "Reverted, or reverted already.", json_content(ref("ActionReverted")))},
                (*MODERATE, Code.ACTION_NOT_FOUND),
                about=ADMIN + "The entries it wrote are folded again from their other credits (in an "
                "archived season too). A second revert changes nothing (`reverted: false`); an action never "
                "credited is 404 `action_not_found`.",
                parameters=[ACTION_PARAMETER],
                body=ref("Reason"),
                auth="required",
            )
        },
        "/api/admin/audit": {
            "get": operation(
                "getAuditLog",
                "The latest admin actions that changed something (admins)",
                "moderation",
                {"200": answer(200, "Latest first.", json_content(ref("AuditLog")))},
                (*AUTH, Code.FORBIDDEN, Code.VALIDATION_FAILED, Code.STORAGE_UNAVAILABLE),
                about=ADMIN + "422 `validation_failed` for a bad `limit`.",
                parameters=[
                    _query("limit", _bounded(1, MAX_AUDIT, DEFAULT_AUDIT), f"Entries at most, {_DIGITS}.")
                ],
                auth="required",
            )
        },
    }


def board_paths(catalog: Catalog, shared: Json) -> Json:
    """The paths of the boards' reads, season ends and moderation."""
    return {**_reads(shared), **_boards(catalog), **_moderation()}
