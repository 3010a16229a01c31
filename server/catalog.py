"""The action catalog: which actions exist and what each is worth.

Pure: parses TOML text handed to it. Example:

    [actions.quest_complete]
    points = 50            # positive integer, required
    min_duration_s = 30    # a ticket is redeemable this long after issue (default 0)
    ttl_s = 600            # ticket lifetime in seconds (default 600)
    max_per_minute = 5     # tickets a user may start per minute (default: unlimited)
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .tickets import MAX_POINTS

_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_KEYS = {"points", "min_duration_s", "ttl_s", "max_per_minute"}
DEFAULT_TTL_S = 600


class CatalogError(ValueError):
    """The catalog file is not valid."""


@dataclass(frozen=True, slots=True)
class ActionType:
    """One kind of action a player can start."""

    name: str
    points: int
    min_duration_s: int = 0
    ttl_s: int = DEFAULT_TTL_S
    max_per_minute: int | None = None


DEFAULT_CATALOG: Mapping[str, ActionType] = {"default": ActionType("default", points=1)}


def _int(table: Mapping[str, Any], where: str, key: str, low: int, default: int | None) -> int | None:
    value = table.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_POINTS:
        raise CatalogError(f"{where}.{key} must be an integer from {low} to {MAX_POINTS}")
    return value


def parse_catalog(text: str) -> dict[str, ActionType]:
    """Action types from TOML text; raises CatalogError with the offending key."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"not valid TOML: {exc}") from None
    unknown = doc.keys() - {"actions"}
    if unknown:
        raise CatalogError(f"unknown top-level keys: {', '.join(sorted(unknown))}")
    actions = doc.get("actions")
    if not isinstance(actions, dict) or not actions:
        raise CatalogError("the catalog needs at least one [actions.<name>] table")
    catalog: dict[str, ActionType] = {}
    for name, table in actions.items():
        where = f"actions.{name}"
        if not _NAME.match(name):
            raise CatalogError(f"{where}: names are 1-64 letters, digits, or _ . : -")
        if not isinstance(table, dict):
            raise CatalogError(f"{where} must be a table")
        extra = table.keys() - _KEYS
        if extra:
            raise CatalogError(f"{where}: unknown keys {', '.join(sorted(extra))}")
        points = _int(table, where, "points", 1, None)
        if points is None:
            raise CatalogError(f"{where}.points is required")
        min_duration = _int(table, where, "min_duration_s", 0, 0) or 0
        ttl = _int(table, where, "ttl_s", 1, DEFAULT_TTL_S) or DEFAULT_TTL_S
        if ttl <= min_duration:
            raise CatalogError(f"{where}: ttl_s must be longer than min_duration_s")
        catalog[name] = ActionType(
            name=name,
            points=points,
            min_duration_s=min_duration,
            ttl_s=ttl,
            max_per_minute=_int(table, where, "max_per_minute", 1, None),
        )
    return catalog
