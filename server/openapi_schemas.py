"""The API description's component schemas: every body this server reads or writes.

`schemas(settings, catalog)` builds `#/components/schemas` from what this
server accepts: the largest service delta, the catalog's boards (their ids,
bounds and sizes) and action types.

What JSON Schema cannot say is said in descriptions: `metadata` is at most
512 bytes as compact JSON; ids, names and action types follow the text rule
of `text.py`, the string format `printable-text` (a pattern cannot say it
portably).
"""

from __future__ import annotations

from collections.abc import Iterable

from .catalog import INT64_MAX, INT64_MIN, MAX_TOP_K, BoardSpec, Catalog, Operator, Order
from .config import Settings
from .errors import Code
from .http import MAX_AUDIT
from .openapi_parts import MAX_SEASON, Json, integer, members, nullable, ref, text
from .standings import MAX_AROUND, MAX_IDS, MAX_PAGE
from .tickets import MAX_BOARDS, MAX_METADATA_BYTES, MAX_POINTS, MAX_TICKET_CHARS
from .validation import MAX_REASON_CHARS, MAX_STRING_CHARS

AUDIT_TARGETS = {
    "remove_entry": "^boards/[a-z0-9_-]{1,64}/users/.+$",
    "block": "^users/.+$",
    "unblock": "^users/.+$",
    "revert": "^actions/.+$",
    "reset": "^boards/[a-z0-9_-]{1,64}/seasons/[1-9][0-9]*$",
}


def _scores_of(specs: Iterable[BoardSpec]) -> Json:
    """The scores boards `specs` can hold: positive where every update adds at least 1, else any int64."""
    adds = all(s.operator is Operator.INCR and s.min_value >= 1 for s in specs)
    return integer(1 if adds else INT64_MIN, INT64_MAX)


def _update_schemas(settings: Settings, catalog: Catalog, user_id: Json, action_id: Json) -> Json:
    default = catalog.default_board
    username = nullable(text("The display name to show on the boards."))
    metadata = {
        "type": ["object", "null"],
        "description": f"Any JSON object of at most {MAX_METADATA_BYTES} bytes as compact UTF-8 JSON, "
        "stored with the records it writes and shown with them.",
    }
    per_board = {
        spec.id: integer(spec.min_value, spec.max_value, f"Board '{spec.id}' ({spec.operator.value}).")
        for spec in catalog.boards.values()
    }
    return {
        "PlayerUpdate": members(
            {"actionId": action_id, "ticket": ref("Ticket")},
            {
                "userId": nullable(text("If given, the token's `sub`.")),
                "scoreDelta": nullable(
                    integer(1, 2**53, "If given, the ticket's points (a ticket with `scores`: leave it out).")
                ),
            },
            "A player (a token with `role: player`) redeems the ticket of its action.",
        ),
        "ServiceDelta": members(
            {
                "userId": user_id,
                "actionId": action_id,
                "scoreDelta": integer(
                    max(1, default.min_value),
                    min(settings.max_delta, default.max_value),
                    f"Points for the default board ('{default.id}'): 1 to SCOREBOARD_MAX_DELTA "
                    f"(configurable; default 1000, {settings.max_delta} on this server), within its bounds.",
                ),
            },
            {"username": username, "metadata": metadata, "scores": {"type": "null"}},
            "A trusted backend (a token with `role: service`) credits the default board.",
        ),
        "ServiceScores": members(
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
            **members(
                {
                    "success": {"const": True},
                    "userId": user_id,
                    "duplicate": {"type": "boolean", "description": "A retry: the original answer."},
                    "boards": {
                        "type": "object",
                        "propertyNames": {"pattern": "^[a-z0-9_-]{1,64}$"},
                        "additionalProperties": ref("BoardCredit"),
                        "minProperties": 1,
                        "maxProperties": MAX_BOARDS,
                        "description": "Each board written, by id.",
                    },
                },
                {
                    "newScore": {**ref("Score"), "description": "The default board's score."},
                    "topUsers": ref("TopUsers"),
                    "visibleAt": {
                        **ref("VisibleAt"),
                        "description": "The default board's version that includes the update.",
                    },
                },
                "`newScore`, `topUsers` and `visibleAt` only when the update wrote the default board.",
            ),
            "dependentRequired": {"newScore": ["topUsers"], "topUsers": ["newScore"]},
        },
        "BoardCredit": members(
            {
                "season": integer(1, MAX_SEASON, "The season written."),
                "score": _scores_of(catalog.boards.values()),
                "improved": {
                    "type": "boolean",
                    "description": "Whether the record was written: always on `incr` and `latest` boards, "
                    "on `best` ones when the value beat the best.",
                },
                "visibleAt": ref("VisibleAt"),
            }
        ),
        "VisibleAt": {
            "type": "integer",
            "minimum": 0,
            "description": "The board version that includes the update (read your writes): a read or "
            "event with `version` at least this shows it, on any process. 0: credited before versions "
            "were recorded.",
        },
        "Accepted": members(
            {
                "success": {"const": True},
                "accepted": {"const": True},
                "userId": user_id,
                "actionId": action_id,
            },
            {"topUsers": ref("TopUsers")},
            "`topUsers` only when the update writes the default board.",
        ),
        "ActionStart": members({"type": {"enum": sorted(catalog.actions), "description": "An action type."}}),
        "ActionStarted": members(
            {
                "actionId": action_id,
                "ticket": ref("Ticket"),
                "reward": integer(1, MAX_POINTS, "The points credited on each of the action's boards."),
                "notBefore": integer(about="Unix seconds: redeemable from then."),
                "expiresAt": integer(about="Unix seconds: redeemable until then."),
            }
        ),
    }


def _board_schemas(catalog: Catalog, ids: Json, user_id: Json) -> Json:
    default = catalog.default_board
    boards = list(catalog.boards.values())
    top_k = max(spec.top_k for spec in boards)
    name = {"type": "string", "minLength": 1, "maxLength": MAX_STRING_CHARS, "description": "Display name."}
    metadata = {"type": "object", "description": "The metadata of the update that wrote the record."}
    season = integer(1, MAX_SEASON, "A season number: 1, then one more per season end.")
    total = integer(0, about="How many players are ranked on that board in that season.")
    # A page holds up to max(100, topK) rows of its board.
    page = max(max(MAX_PAGE, spec.top_k) for spec in boards)

    def ranked(most: int) -> Json:
        return {"type": "array", "items": ref("RankedEntry"), "maxItems": most}

    def row(rank_max: int | None, score: Json, about: str) -> Json:
        return members(
            {"rank": integer(1, rank_max), "userId": user_id, "username": name, "score": score},
            {"metadata": metadata},
            about + " `username` is the user id when no name was ever given.",
        )

    return {
        "BoardId": {**ids, "description": "A board of this server (GET /api/boards)."},
        "Score": _scores_of([default]),
        "BoardEntry": row(default.top_k, ref("Score"), "A row of the default board."),
        "TopUsers": {"type": "array", "items": ref("BoardEntry"), "maxItems": default.top_k},
        "Version": {
            "type": "integer",
            "minimum": 0,
            "description": "The highest commit version of the board this includes: an update whose "
            "`visibleAt` is at most this is in it.",
        },
        "Board": members(
            {"topUsers": ref("TopUsers"), "version": ref("Version")}, about="The default board, best first."
        ),
        "Standing": members(
            {
                "userId": user_id,
                "username": name,
                "score": ref("Score"),
                "rank": integer(1),
                "version": ref("Version"),
            }
        ),
        "Entry": row(top_k, _scores_of(boards), "A row of any board."),
        "RankedEntry": row(None, _scores_of(boards), "A row of any board, at any rank."),
        "BoardInfo": members(
            {
                "id": ref("BoardId"),
                "title": {"type": "string", "maxLength": 128},
                "operator": {"enum": [o.value for o in Operator], "description": "How updates count."},
                "order": {"enum": [o.value for o in Order], "description": "desc: higher ranks first."},
                "topK": integer(1, MAX_TOP_K),
                "reset": {
                    "type": ["string", "null"],
                    "minLength": 1,
                    "description": "When seasons end: daily, weekly, monthly or a cron expression (UTC); "
                    "null: only when an admin ends one.",
                },
                "default": {"type": "boolean"},
                "season": members(
                    {
                        "id": season,
                        "startedAt": integer(about="Unix seconds."),
                        "endsAt": {
                            **integer(about="Unix seconds; null: no scheduled end."),
                            "type": ["integer", "null"],
                        },
                    },
                    about="The current season.",
                ),
            }
        ),
        "Boards": members(
            {
                "boards": {
                    "type": "array",
                    "items": ref("BoardInfo"),
                    "minItems": len(boards),
                    "maxItems": len(boards),
                }
            },
            about="Every board, in the catalog's order.",
        ),
        "BoardScores": members(
            {
                "board": ref("BoardId"),
                "season": season,
                "version": ref("Version"),
                "total": total,
                "entries": ranked(page),
            },
            about="A page of a season's ranking, best first: ranks `offset + 1` to `offset + limit` "
            "(fewer or none past the end); by default the top K (the board's `topK`).",
        ),
        "BoardStanding": members(
            {
                "board": ref("BoardId"),
                "season": season,
                "userId": user_id,
                "username": name,
                "score": _scores_of(boards),
                "rank": integer(1),
                "total": integer(1, about=total["description"]),
                "version": ref("Version"),
            },
            {"metadata": metadata},
        ),
        "BoardAround": members(
            {
                "board": ref("BoardId"),
                "season": season,
                "version": ref("Version"),
                "total": total,
                "entries": {**ranked(2 * MAX_AROUND + 1), "minItems": 1},
            },
            about="A player's entry and up to `count` entries above and below, best first, ranks "
            "consecutive; at the top or bottom the window is filled from the other side, so it holds "
            "min(total, 2 * count + 1) entries.",
        ),
        "BoardUsers": members(
            {
                "board": ref("BoardId"),
                "season": season,
                "version": ref("Version"),
                "total": total,
                "entries": ranked(MAX_IDS),
            },
            about="The listed players' entries with their ranks on the whole board, best first "
            "(unknown ids left out).",
        ),
        "SeasonEnd": members(
            {"season": integer(1, MAX_SEASON, "The current season: the one to end.")},
            {"reason": nullable(text("Why (logged with the season end).", MAX_REASON_CHARS))},
        ),
        "SeasonEnded": members(
            {"board": ref("BoardId"), "endedSeason": season, "season": integer(2, about="The new season.")}
        ),
    }


def _audit_rule(operation: str, target: str) -> Json:
    """What an audit entry of `operation` holds: its target, and a reason unless it ended a season."""
    rule: Json = {"target": {"pattern": target}}
    if operation != "reset":
        rule["reason"] = {"type": "string"}
    return rule


def _admin_schemas(catalog: Catalog, user_id: Json, action_id: Json) -> Json:
    boards = list(catalog.boards.values())
    season = integer(1, MAX_SEASON, "A season number.")
    score = _scores_of(boards)
    changed = {"type": "boolean", "description": "false: nothing to do, the player was so already."}
    reason = text("Why: kept in the audit log (GET /api/admin/audit).", MAX_REASON_CHARS)
    audited = [
        {
            "if": {"properties": {"operation": {"const": operation}}},
            "then": {"properties": _audit_rule(operation, target)},
        }
        for operation, target in AUDIT_TARGETS.items()
    ]
    return {
        "Reason": members({"reason": reason}, about="Every admin action says why."),
        "EntryRemoved": members(
            {
                "board": ref("BoardId"),
                "season": {**season, "description": "The board's current season."},
                "userId": user_id,
                "removed": {**ref("RankedEntry"), "description": "The entry as it was, with its rank."},
            },
            about="The entry is gone with every credit before it: a new credit starts from nothing.",
        ),
        "UserBlocked": members(
            {
                "userId": user_id,
                "blocked": {"const": True},
                "changed": changed,
                "removed": {
                    "type": "array",
                    "items": members(
                        {"board": ref("BoardId"), "season": season, "rank": integer(1), "score": score}
                    ),
                    "maxItems": len(boards),
                    "description": "The player's entries removed from the boards' current seasons.",
                },
            },
            about="From now on the player's credits are refused with 403 `user_blocked` (a retry of an "
            "action credited before still gets its original answer), and so are its action starts.",
        ),
        "UserUnblocked": members(
            {"userId": user_id, "blocked": {"const": False}, "changed": changed},
            about="The player may earn again; the removed entries stay removed.",
        ),
        "ActionReverted": {
            **members(
                {
                    "actionId": action_id,
                    "userId": user_id,
                    "reverted": {
                        "type": "boolean",
                        "description": "false: reverted already, nothing changed.",
                    },
                    "boards": {
                        "type": "object",
                        "propertyNames": ref("BoardId"),
                        "additionalProperties": members({"season": season, "score": nullable(score)}),
                        "maxProperties": MAX_BOARDS,
                        "description": "Each board the action credited: the season written and the "
                        "entry's score now (null: the entry is gone).",
                    },
                },
                about="The action's credits no longer count; its id stays taken (a retry gets its "
                "original answer).",
            ),
            "if": {"properties": {"reverted": {"const": False}}},
            "then": {"properties": {"boards": {"maxProperties": 0}}},
        },
        "AuditEntry": {
            **members(
                {
                    "id": integer(1, about="Later entries have larger ids."),
                    "at": integer(about="Unix seconds."),
                    "actor": {**user_id, "description": "The admin token's `sub`."},
                    "operation": {"enum": list(AUDIT_TARGETS)},
                    "target": {
                        "type": "string",
                        "description": "`boards/{board}/users/{userId}` (remove_entry), `users/{userId}` "
                        "(block, unblock), `actions/{actionId}` (revert) or `boards/{board}/seasons/{n}` "
                        "(reset).",
                    },
                    "reason": nullable({**reason, "description": "null: a season end without one."}),
                }
            ),
            "allOf": audited,
        },
        "AuditLog": members(
            {"entries": {"type": "array", "items": ref("AuditEntry"), "maxItems": MAX_AUDIT}},
            about="Admin actions that changed something, latest first.",
        ),
    }


def _stream_schemas(epoch: Json, top_k: int) -> Json:
    position = {"board": ref("BoardId"), "epoch": epoch, "version": ref("Version")}
    return {
        "Snapshot": members(
            {
                "type": {"const": "scoreboard:update"},
                **position,
                "season": integer(1),
                "seq": integer(0),
                "topUsers": {"type": "array", "items": ref("Entry"), "maxItems": top_k},
            },
            about="The whole board as of `seq`.",
        ),
        "Diff": members(
            {
                "type": {"const": "scoreboard:diff"},
                **position,
                "season": integer(1),
                "seq": integer(1),
                "changes": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "oneOf": [
                            ref("Entry"),
                            members({"rank": integer(1, top_k), "removed": {"const": True}}),
                        ]
                    },
                },
            },
            about="The rows that changed since `seq - 1`; an emptied rank is `removed`.",
        ),
        "SeasonStarted": members(
            {
                "type": {"const": "board:season"},
                **position,
                "endedSeason": integer(1),
                "season": integer(2),
                "seq": integer(1),
            },
            about="A season ended; the new (empty) season's snapshot follows at the same `seq`.",
        ),
        "StreamEvent": members(
            {
                "event": {"enum": ["scoreboard:update", "scoreboard:diff", "board:season"]},
                "id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,32}:[0-9]{1,18}$"},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"oneOf": [ref("Snapshot"), ref("Diff"), ref("SeasonStarted")]},
                },
            },
            {"retry": integer(0)},
            "One server-sent event: `event:`, `id: <epoch>:<seq>`, `data:`.",
        ),
    }


def schemas(settings: Settings, catalog: Catalog) -> Json:
    """`#/components/schemas` for a server with `settings` and `catalog`."""
    ids = {"type": "string", "enum": list(catalog.boards)}
    user_id = text("A user id (a token's `sub`).")
    action_id = text("The action's id: its exactly-once key.")
    epoch = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,32}$", "description": "The board's history."}
    return {
        "Error": members(
            {
                "success": {"const": False},
                "error": members(
                    {
                        "code": {"type": "string", "enum": [c.value for c in Code]},
                        "message": {"type": "string"},
                    },
                    {
                        "field": {"type": "string", "description": "The offending member."},
                        "retryAfter": integer(1, about="Seconds, as Retry-After."),
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
        **_admin_schemas(catalog, user_id, action_id),
        **_stream_schemas(epoch, max(spec.top_k for spec in catalog.boards.values())),
        "Health": members({"status": {"const": "ok"}}),
        "Ready": members(
            {
                "status": {"const": "ready"},
                "queued": integer(0, about="Updates waiting for storage."),
                "ranks": {
                    "enum": ["memory", "loading", "store"],
                    "description": "Where ranks come from: `memory` (every rank), `loading` (after a start, "
                    "read from the database until loaded) or `store` (SCOREBOARD_RANKS=store: always "
                    "database queries).",
                },
                "bus": {
                    "enum": ["up", "down", "off"],
                    "description": "Committed values from other processes: `up` (through Redis), `down` "
                    "(Redis unreachable: read from the database every SCOREBOARD_BUS_POLL_S) or `off` "
                    "(one process, no SCOREBOARD_REDIS_URL).",
                },
            }
        ),
    }
