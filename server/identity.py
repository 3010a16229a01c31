"""Who a request acts as: the verified claims of a token, and the roles.

Pure: verifying a token is the JWT adapter's job (tokens.py); everything
else only reads an `Identity`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    """What a token's holder may do."""

    PLAYER = "player"
    SERVICE = "service"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Identity:
    """The verified claims a request acts with."""

    user_id: str
    name: str | None
    role: Role
    expires_at: float
