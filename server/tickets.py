"""Action tickets: HMAC-SHA256 signed proofs of what an action is worth.

Pure: no clock reads, no I/O. A ticket binds an action id, a user, the points
the action is worth, and the window in which it may be redeemed. Players get
tickets from `POST /api/actions`; trusted game backends may mint their own
with the ticket secret.

Format (exact, so any language can mint one):

    ticket  = "v1." + payload + "." + signature
    payload = base64url(JSON object), no padding
    signature = base64url(HMAC-SHA256(key=secret, msg="v1." + payload)), no padding

The JSON object has exactly these members:

    actionId  string, 1-128 characters
    userId    string, 1-128 characters
    points    integer, 1 to 1,000,000,000
    nbf       integer, Unix seconds; not redeemable before
    exp       integer, Unix seconds; not redeemable from this second on
    type      optional string, the action type (for logs)

The signature covers the payload bytes exactly as sent, so members may come in
any order and with any JSON whitespace.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import Code, ScoreboardError

VERSION = "v1"
MAX_TICKET_CHARS = 1024
MAX_POINTS = 1_000_000_000
MAX_ID_CHARS = 128
_REQUIRED = {"actionId", "userId", "points", "nbf", "exp"}
_ALLOWED = _REQUIRED | {"type"}


@dataclass(frozen=True, slots=True)
class Ticket:
    """What a ticket proves."""

    action_id: str
    user_id: str
    points: int
    not_before: int
    expires_at: int
    action_type: str | None = None


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: bytes, signed: str) -> bytes:
    return hmac.new(secret, signed.encode("ascii"), hashlib.sha256).digest()


def sign_ticket(secret: bytes, ticket: Ticket) -> str:
    """The opaque ticket string for `ticket`."""
    claims: dict[str, Any] = {
        "actionId": ticket.action_id,
        "userId": ticket.user_id,
        "points": ticket.points,
        "nbf": ticket.not_before,
        "exp": ticket.expires_at,
    }
    if ticket.action_type is not None:
        claims["type"] = ticket.action_type
    signed = f"{VERSION}.{_b64encode(orjson.dumps(claims))}"
    return f"{signed}.{_b64encode(_signature(secret, signed))}"


def _invalid(message: str) -> ScoreboardError:
    return ScoreboardError(Code.INVALID_TICKET, message)


def _id(claims: dict[str, Any], name: str) -> str:
    value = claims[name]
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_CHARS:
        raise _invalid(f"The ticket's '{name}' must be a string of 1 to {MAX_ID_CHARS} characters.")
    return value


def _int(claims: dict[str, Any], name: str, low: int, high: int) -> int:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _invalid(f"The ticket's '{name}' must be an integer from {low} to {high}.")
    return value


def parse_ticket(secret: bytes, text: str) -> Ticket:
    """Verify the signature and shape of a ticket; raises invalid_ticket."""
    if len(text) > MAX_TICKET_CHARS:
        raise _invalid(f"The ticket is longer than {MAX_TICKET_CHARS} characters.")
    parts = text.split(".")
    if not text.isascii() or len(parts) != 3 or parts[0] != VERSION:
        raise _invalid("The ticket is not a v1 ticket.")
    signed = f"{parts[0]}.{parts[1]}"
    try:
        given = _b64decode(parts[2])
    except (binascii.Error, ValueError):
        raise _invalid("The ticket is malformed.") from None
    if not hmac.compare_digest(given, _signature(secret, signed)):
        raise _invalid("The ticket's signature does not verify.")
    try:
        claims = orjson.loads(_b64decode(parts[1]))
    except (binascii.Error, ValueError):
        raise _invalid("The ticket is malformed.") from None
    if not isinstance(claims, dict) or not _REQUIRED <= claims.keys() <= _ALLOWED:
        raise _invalid("The ticket's payload has missing or unknown members.")
    action_type = claims.get("type")
    if action_type is not None and not isinstance(action_type, str):
        raise _invalid("The ticket's 'type' must be a string.")
    limit = 2**53
    return Ticket(
        action_id=_id(claims, "actionId"),
        user_id=_id(claims, "userId"),
        points=_int(claims, "points", 1, MAX_POINTS),
        not_before=_int(claims, "nbf", 0, limit),
        expires_at=_int(claims, "exp", 0, limit),
        action_type=action_type,
    )


def check_window(ticket: Ticket, now: float) -> ScoreboardError | None:
    """Whether `ticket` may be redeemed at `now`: None, or the refusal.

    Expiry is returned rather than raised because an expired ticket whose
    action was already credited still gets the original answer (a retry).
    """
    if now < ticket.not_before:
        wait = max(1, math.ceil(ticket.not_before - now))
        return ScoreboardError(
            Code.TICKET_NOT_YET_VALID,
            f"The ticket cannot be redeemed for another {wait} s.",
            retry_after=wait,
        )
    if now >= ticket.expires_at:
        return ScoreboardError(Code.TICKET_EXPIRED, "The ticket has expired.")
    return None
