"""The catalog: which leaderboards exist, how each keeps a score, and which
actions players may start and what each is worth.

Pure: parses TOML text handed to it. Example:

    [boards.global]        # id: 1-64 characters of [a-z0-9_-]
    title = "All time"
    operator = "incr"      # incr: add the value; best: keep the best; latest: keep the last
    order = "desc"         # desc: higher is better; asc: lower is better (lap times)
    top_k = 10
    reset = ""             # "", "daily", "weekly", "monthly" or a 5-field cron expression (UTC)
    archive = 12           # finished seasons kept readable
    min_value = 1          # what one update may submit (anti-cheat bounds)
    max_value = 1000
    default = true         # /scores, /scores/stream and the "scoreboard" channel

    [actions.quest_complete]
    points = 50            # positive integer, required
    boards = ["global"]    # boards credited (default: the default board)
    min_duration_s = 30    # a ticket is redeemable this long after issue (default 0)
    ttl_s = 600            # ticket lifetime in seconds (default 600)
    max_per_minute = 5     # tickets a user may start per minute (default: unlimited)

Without `[boards.*]` there is one board, `global` (incr, desc, never resets),
and without `[actions.*]` one action, `default`, worth 1 point on it. The
reset expression is checked by the caller (`schedule.parse_reset`): cron
parsing is a library's job, and the core imports none.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from .tickets import MAX_POINTS

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
DEFAULT_BOARD = "global"
BOARD_ID = re.compile(r"^[a-z0-9_-]{1,64}$")
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_ACTION_KEYS = {"points", "boards", "min_duration_s", "ttl_s", "max_per_minute"}
_BOARD_KEYS = {
    "title",
    "operator",
    "order",
    "top_k",
    "reset",
    "archive",
    "min_value",
    "max_value",
    "default",
}
DEFAULT_TTL_S = 600
MAX_TOP_K = 1000
MAX_ARCHIVE = 1000


class CatalogError(ValueError):
    """The catalog file is not valid."""


class Operator(StrEnum):
    """How a board keeps a player's score from what updates submit."""

    INCR = "incr"
    BEST = "best"
    LATEST = "latest"


class Order(StrEnum):
    """Which scores rank first."""

    DESC = "desc"
    ASC = "asc"


@dataclass(frozen=True, slots=True)
class BoardSpec:
    """One leaderboard as the operator defined it."""

    id: str
    title: str
    operator: Operator = Operator.INCR
    order: Order = Order.DESC
    top_k: int = 10
    reset: str = ""
    archive: int = 0
    min_value: int = 1
    max_value: int = 1000
    default: bool = False

    @property
    def desc(self) -> bool:
        """Higher scores rank first."""
        return self.order is Order.DESC

    @property
    def monotonic(self) -> bool:
        """Whether a player's place can only improve, so the top K never needs a refill.

        True for `best`, and for `incr` boards ranking higher first that only
        accept positive deltas. Otherwise a player in the top K may fall out
        of it and the next one in must be read from the store.
        """
        if self.operator is Operator.BEST:
            return True
        return self.operator is Operator.INCR and self.desc and self.min_value >= 1


@dataclass(frozen=True, slots=True)
class ActionType:
    """One kind of action a player can start, and the boards it credits."""

    name: str
    points: int
    min_duration_s: int = 0
    ttl_s: int = DEFAULT_TTL_S
    max_per_minute: int | None = None
    boards: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Catalog:
    """Boards and actions; `default` names the default board."""

    boards: Mapping[str, BoardSpec]
    actions: Mapping[str, ActionType]
    default: str = DEFAULT_BOARD

    @property
    def default_board(self) -> BoardSpec:
        """The board of /scores, /scores/stream and the `scoreboard` channel."""
        return self.boards[self.default]


def default_catalog(*, top_k: int = 10, max_delta: int = 1000) -> Catalog:
    """One board, `global`, and the action `default` worth 1 point on it."""
    board = BoardSpec(DEFAULT_BOARD, "All time", top_k=top_k, max_value=max_delta, default=True)
    action = ActionType("default", points=1, boards=(DEFAULT_BOARD,))
    return Catalog({DEFAULT_BOARD: board}, {"default": action})


def _int(  # noqa: PLR0917
    table: Mapping[str, Any], where: str, key: str, low: int, high: int, default: int | None
) -> int | None:
    value = table.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CatalogError(f"{where}.{key} must be an integer from {low} to {high}")
    return value


def _str(table: Mapping[str, Any], where: str, key: str, default: str, limit: int = 128) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or len(value) > limit or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise CatalogError(f"{where}.{key} must be a string of at most {limit} printable characters")
    return value


def _choice(table: Mapping[str, Any], where: str, key: str, kind: type[StrEnum], default: StrEnum) -> Any:
    value = table.get(key, default.value)
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in kind)
        raise CatalogError(f"{where}.{key} must be one of {allowed}") from None


def _table(  # noqa: PLR0917
    where: str, name: str, table: object, pattern: re.Pattern[str], rule: str, keys: set[str]
) -> dict[str, Any]:
    """A `[boards.<id>]` or `[actions.<name>]` table: a valid name, a table, only known keys."""
    if not pattern.match(name):
        raise CatalogError(f"{where}: {rule}")
    if not isinstance(table, dict):
        raise CatalogError(f"{where} must be a table")
    extra = table.keys() - keys
    if extra:
        raise CatalogError(f"{where}: unknown keys {', '.join(sorted(extra))}")
    return table


def _board(board_id: str, table: object, *, top_k: int, max_delta: int) -> BoardSpec:
    where = f"boards.{board_id}"
    table = _table(
        where, board_id, table, BOARD_ID, "board ids are 1-64 characters of a-z 0-9 _ -", _BOARD_KEYS
    )
    operator: Operator = _choice(table, where, "operator", Operator, Operator.INCR)
    order: Order = _choice(table, where, "order", Order, Order.DESC)
    # An incr board bounds the delta (1 to SCOREBOARD_MAX_DELTA by default);
    # best and latest boards bound the submitted value (all of int64).
    low, high = (1, max_delta) if operator is Operator.INCR else (INT64_MIN, INT64_MAX)
    min_value = _int(table, where, "min_value", INT64_MIN, INT64_MAX, low)
    max_value = _int(table, where, "max_value", INT64_MIN, INT64_MAX, high)
    if min_value is None or max_value is None or min_value > max_value:
        raise CatalogError(f"{where}: min_value must not be above max_value")
    default = table.get("default", False)
    if not isinstance(default, bool):
        raise CatalogError(f"{where}.default must be true or false")
    return BoardSpec(
        id=board_id,
        title=_str(table, where, "title", board_id),
        operator=operator,
        order=order,
        top_k=_int(table, where, "top_k", 1, MAX_TOP_K, top_k) or top_k,
        reset=_str(table, where, "reset", "").strip(),
        archive=_int(table, where, "archive", 0, MAX_ARCHIVE, 0) or 0,
        min_value=min_value,
        max_value=max_value,
        default=default,
    )


def _action(name: str, table: object, boards: Mapping[str, BoardSpec], default: str) -> ActionType:
    where = f"actions.{name}"
    table = _table(where, name, table, _NAME, "names are 1-64 letters, digits, or _ . : -", _ACTION_KEYS)
    points = _int(table, where, "points", 1, MAX_POINTS, None)
    if points is None:
        raise CatalogError(f"{where}.points is required")
    min_duration = _int(table, where, "min_duration_s", 0, MAX_POINTS, 0) or 0
    ttl = _int(table, where, "ttl_s", 1, MAX_POINTS, DEFAULT_TTL_S) or DEFAULT_TTL_S
    if ttl <= min_duration:
        raise CatalogError(f"{where}: ttl_s must be longer than min_duration_s")
    credited = table.get("boards", [default])
    if (
        not isinstance(credited, list)
        or not credited
        or not all(isinstance(b, str) for b in credited)
        or len(set(credited)) != len(credited)
    ):
        raise CatalogError(f"{where}.boards must be a non-empty list of distinct board ids")
    for board_id in credited:
        spec = boards.get(board_id)
        if spec is None:
            raise CatalogError(f"{where}.boards: there is no board {board_id!r}")
        if not spec.min_value <= points <= spec.max_value:
            raise CatalogError(
                f"{where}.points: {points} is outside board {board_id!r}'s bounds "
                f"[{spec.min_value}, {spec.max_value}]"
            )
    return ActionType(
        name=name,
        points=points,
        min_duration_s=min_duration,
        ttl_s=ttl,
        max_per_minute=_int(table, where, "max_per_minute", 1, MAX_POINTS, None),
        boards=tuple(credited),
    )


def parse_catalog(text: str, *, top_k: int = 10, max_delta: int = 1000) -> Catalog:
    """Boards and actions from TOML text; raises CatalogError naming the offending key.

    `top_k` and `max_delta` are the defaults of a board's `top_k` and of an
    incr board's `max_value` (SCOREBOARD_TOP_K and SCOREBOARD_MAX_DELTA).
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"not valid TOML: {exc}") from None
    unknown = doc.keys() - {"actions", "boards"}
    if unknown:
        raise CatalogError(f"unknown top-level keys: {', '.join(sorted(unknown))}")
    fallback = default_catalog(top_k=top_k, max_delta=max_delta)
    tables = doc.get("boards")
    if tables is None:
        boards = dict(fallback.boards)
    else:
        if not isinstance(tables, dict) or not tables:
            raise CatalogError("boards needs at least one [boards.<id>] table")
        boards = {
            board_id: _board(board_id, table, top_k=top_k, max_delta=max_delta)
            for board_id, table in tables.items()
        }
    actions_table = doc.get("actions")
    if tables is None and isinstance(actions_table, dict):
        # An actions-only catalog (made before boards existed) keeps working:
        # its points may exceed SCOREBOARD_MAX_DELTA, as tickets always could.
        points = [t.get("points") for t in actions_table.values() if isinstance(t, dict)]
        largest = max([p for p in points if isinstance(p, int) and not isinstance(p, bool)], default=0)
        implicit = boards[DEFAULT_BOARD]
        boards[DEFAULT_BOARD] = replace(implicit, max_value=max(implicit.max_value, min(largest, MAX_POINTS)))
    defaults = [b.id for b in boards.values() if b.default]
    if len(defaults) != 1:
        raise CatalogError(
            f"exactly one board must have default = true (found {len(defaults)}: {', '.join(defaults)})"
        )
    if actions_table is None:
        if tables is None:
            raise CatalogError("the catalog needs at least one [boards.<id>] or [actions.<name>] table")
        actions = {"default": ActionType("default", points=1, boards=(defaults[0],))}
    else:
        if not isinstance(actions_table, dict) or not actions_table:
            raise CatalogError("actions needs at least one [actions.<name>] table")
        actions = {name: _action(name, table, boards, defaults[0]) for name, table in actions_table.items()}
    return Catalog(boards, actions, defaults[0])
