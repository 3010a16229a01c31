"""Strict validation of request bodies, shared by every transport.

Pure. Unknown members, wrong types (booleans and floats are not integers),
empty strings, strings over the limit or breaking the text rule (`text.py`),
integers out of range and missing members are refused with a
`validation_failed` error naming the member.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import invalid
from .identity import Role
from .text import text_problem
from .tickets import MAX_BOARDS, MAX_METADATA_BYTES, MAX_TICKET_CHARS

MAX_STRING_CHARS = 128
MAX_REASON_CHARS = 512
INT64 = 2**63


@dataclass(frozen=True, slots=True)
class UpdateBody:
    """A validated score update request (player or service shape)."""

    action_id: str
    ticket: str | None = None
    user_id: str | None = None
    score_delta: int | None = None
    username: str | None = None
    # (board, value) pairs sorted by board, for the several-board form.
    scores: tuple[tuple[str, int], ...] | None = None
    metadata: bytes | None = None


_PLAYER_REQUIRED = ("actionId", "ticket")
_PLAYER_ALLOWED = frozenset({"actionId", "ticket", "userId", "scoreDelta"})
_SERVICE_REQUIRED = ("userId", "actionId")
_SERVICE_ALLOWED = frozenset({"userId", "scoreDelta", "scores", "actionId", "username", "metadata"})


def text(body: Mapping[str, Any], name: str, limit: int = MAX_STRING_CHARS) -> str | None:
    """An optional non-empty string member of at most `limit` characters."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(name, f"'{name}' must be a string.")
    if not value or len(value) > limit:
        raise invalid(name, f"'{name}' must be 1 to {limit} characters long.")
    problem = text_problem(value)
    if problem is not None:
        raise invalid(name, f"'{name}' must not contain {problem}.")
    return value


def path_id(value: str, name: str) -> str:
    """An id taken from a URL path: the same rule as an id in a body."""
    checked = text({name: value}, name)
    if checked is None:
        raise invalid(name, f"'{name}' is required.")
    return checked


def integer(body: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    """An optional integer member in [low, high]; booleans and floats are refused."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(name, f"'{name}' must be an integer.")
    if not low <= value <= high:
        raise invalid(name, f"'{name}' must be from {low} to {high}.")
    return value


def check_members(body: object, required: tuple[str, ...], allowed: frozenset[str]) -> Mapping[str, Any]:
    """`body` as an object with every required member and nothing unknown."""
    if not isinstance(body, dict):
        raise invalid("body", "The body must be a JSON object.")
    for name in sorted(body.keys() - allowed):
        raise invalid(name, f"Unknown member '{name}'.")
    for name in required:
        if body.get(name) is None:
            raise invalid(name, f"'{name}' is required.")
    return body


def parse_update(body: object, role: Role, *, max_delta: int) -> UpdateBody:
    """Validate an update body for a player (ticket) or a service (delta)."""
    if role is Role.SERVICE:
        b = check_members(body, _SERVICE_REQUIRED, _SERVICE_ALLOWED)
        if (b.get("scoreDelta") is None) == (b.get("scores") is None):
            field = "scores" if b.get("scores") is not None else "scoreDelta"
            raise invalid(field, "Send exactly one of 'scoreDelta' and 'scores'.")
        return UpdateBody(
            action_id=_required(text(b, "actionId")),
            user_id=_required(text(b, "userId")),
            score_delta=integer(b, "scoreDelta", 1, max_delta),
            username=text(b, "username"),
            scores=scores(b, "scores"),
            metadata=metadata(b, "metadata"),
        )
    b = check_members(body, _PLAYER_REQUIRED, _PLAYER_ALLOWED)
    return UpdateBody(
        action_id=_required(text(b, "actionId")),
        ticket=text(b, "ticket", MAX_TICKET_CHARS),
        user_id=text(b, "userId"),
        # Range is checked against the ticket's points, not max_delta.
        score_delta=integer(b, "scoreDelta", 1, 2**53),
    )


def scores(body: Mapping[str, Any], name: str) -> tuple[tuple[str, int], ...] | None:
    """An optional object of board ids to 64-bit integers, as sorted pairs."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, dict) or not 1 <= len(value) <= MAX_BOARDS:
        raise invalid(name, f"'{name}' must be an object of 1 to {MAX_BOARDS} boards and values.")
    for board, score in value.items():
        if isinstance(score, bool) or not isinstance(score, int) or not -INT64 <= score < INT64:
            raise invalid(name, f"'{name}.{board}' must be a 64-bit integer.")
    return tuple(sorted(value.items()))


def metadata(body: Mapping[str, Any], name: str) -> bytes | None:
    """An optional JSON object of at most MAX_METADATA_BYTES bytes (compact UTF-8), encoded."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid(name, f"'{name}' must be a JSON object.")
    try:
        encoded = orjson.dumps(value)
    except orjson.JSONEncodeError:  # lone surrogates in a string
        raise invalid(name, f"'{name}' must hold valid Unicode text.") from None
    if len(encoded) > MAX_METADATA_BYTES:
        raise invalid(name, f"'{name}' must be at most {MAX_METADATA_BYTES} bytes as compact JSON.")
    return encoded


def season_param(value: str | None) -> int | None:
    """`?season=N`: None when absent, else 1 to 2^31-1 in ASCII digits."""
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 10 or not 1 <= int(value) < 2**31:
        raise invalid("season", "'season' must be a season number from 1 to 2147483647.")
    return int(value)


def query_int(value: str | None, name: str, low: int, high: int, default: int) -> int:
    """An integer query parameter in [low, high] in ASCII digits; `default` when absent."""
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or len(value) > 12 or not low <= int(value) <= high:
        raise invalid(name, f"'{name}' must be an integer from {low} to {high}.")
    return int(value)


def id_list(value: str | None, name: str, limit: int) -> list[str]:
    """A comma-separated list of 1 to `limit` distinct ids (duplicates count once), in order."""
    if value is None or not value:
        raise invalid(name, f"'{name}' must list 1 to {limit} comma-separated ids.")
    ids = list(dict.fromkeys(value.split(",")))
    if len(ids) > limit:
        raise invalid(name, f"'{name}' must list 1 to {limit} comma-separated ids.")
    for user_id in ids:
        problem = text_problem(user_id) if user_id else "nothing"
        if problem is not None or len(user_id) > MAX_STRING_CHARS:
            raise invalid(
                name,
                f"Each id in '{name}' must be 1 to {MAX_STRING_CHARS} characters without "
                "control or format characters.",
            )
    return ids


def reason(body: object, *, required: bool = True) -> str | None:
    """An admin body `{"reason"}`: 1 to 512 characters (required unless told otherwise)."""
    b = check_members(body, ("reason",) if required else (), frozenset({"reason"}))
    return text(b, "reason", MAX_REASON_CHARS)


def _required(value: str | None) -> str:
    if value is None:  # check_members already refused missing members
        raise AssertionError("required member missing after check")
    return value


def parse_action_start(body: object) -> str:
    """The action type of a `POST /api/actions` body."""
    b = check_members(body, ("type",), frozenset({"type"}))
    return _required(text(b, "type", 64))
