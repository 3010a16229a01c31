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
    points    integer, 1 to 1,000,000,000: credits the default board
    scores    instead of points: an object of 1-64 board ids to integers
              (-2^63 to 2^63-1): the value written on each board
    metadata  optional JSON object of at most 512 bytes, stored with the records
    nbf       integer, Unix seconds; not redeemable before
    exp       integer, Unix seconds; not redeemable from this second on
    type      optional string, the action type (for logs)
    kid       optional string, the id of the key that signed it (key rotation)

The signature covers the payload bytes exactly as sent, so members may come in
any order and with any JSON whitespace. Base64url is strict: no padding, no
characters outside the alphabet, and only the canonical encoding of the bytes.

Keys rotate without downtime: `TicketKeys` holds several keys, newest first.
New tickets are signed with the newest and carry its `kid`; a ticket with a
`kid` is verified with that key only, one without (minted before rotation, or
by a backend that does not send one) with each key in turn.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import Code, ScoreboardError
from .text import text_problem

MIN_SECRET_BYTES = 32

VERSION = "v1"
MAX_TICKET_CHARS = 1024
MAX_POINTS = 1_000_000_000
MAX_ID_CHARS = 128
MAX_METADATA_BYTES = 512
MAX_BOARDS = 64
_REQUIRED = {"actionId", "userId", "nbf", "exp"}
_ALLOWED = _REQUIRED | {"points", "scores", "metadata", "type", "kid"}
_BOARD_ID = re.compile(r"^[a-z0-9_-]{1,64}$")
_KID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_B64 = re.compile(r"^[A-Za-z0-9_-]*$")


@dataclass(frozen=True, slots=True)
class TicketKeys:
    """The keys that sign and verify tickets: `keys[0]` signs, every one verifies.

    Each key is `(kid, secret)`; `kid` is None only for a lone key (tickets
    then carry no `kid`, as before rotation was configured).
    """

    keys: tuple[tuple[str | None, bytes], ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("at least one ticket key is needed")
        kids = [kid for kid, _ in self.keys]
        if len(self.keys) > 1 and any(kid is None for kid in kids):
            raise ValueError("every ticket key needs a kid when there are several")
        if len(set(kids)) != len(kids):
            raise ValueError("ticket key ids must be unique")
        for kid, secret in self.keys:
            if kid is not None and not _KID.match(kid):
                raise ValueError(f"ticket key id {kid!r} must be 1-64 of A-Z a-z 0-9 . _ -")
            if len(secret) < MIN_SECRET_BYTES:
                raise ValueError(f"ticket key {kid or ''!r} must be at least {MIN_SECRET_BYTES} bytes")

    @classmethod
    def single(cls, secret: bytes) -> TicketKeys:
        """One key without a kid."""
        return cls(((None, secret),))

    @classmethod
    def parse(cls, text: str) -> TicketKeys:
        """Keys from `kid:secret,kid:secret`, newest first; raises ValueError."""
        keys: list[tuple[str | None, bytes]] = []
        for item in text.split(","):
            kid, sep, secret = item.strip().partition(":")
            if not sep:
                raise ValueError("ticket keys look like kid:secret,kid:secret (newest first)")
            keys.append((kid, secret.encode()))
        return cls(tuple(keys))

    def candidates(self, kid: str | None) -> list[bytes]:
        """The secrets a ticket with `kid` may be signed with."""
        if kid is None:
            return [secret for _, secret in self.keys]
        return [secret for k, secret in self.keys if k == kid]


@dataclass(frozen=True, slots=True)
class Ticket:
    """What a ticket proves."""

    action_id: str
    user_id: str
    points: int | None
    not_before: int
    expires_at: int
    action_type: str | None = None
    # Instead of points: (board, value) pairs sorted by board.
    scores: tuple[tuple[str, int], ...] | None = None
    metadata: bytes | None = None


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    """Strict unpadded base64url: the alphabet only, and the canonical encoding."""
    if not _B64.match(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64encode(raw) != text:
        raise ValueError("not the canonical encoding")
    return raw


def _signature(secret: bytes, signed: str) -> bytes:
    return hmac.new(secret, signed.encode("ascii"), hashlib.sha256).digest()


def sign_ticket(secret: bytes | TicketKeys, ticket: Ticket) -> str:
    """The opaque ticket string for `ticket`, signed with the (newest) key."""
    kid: str | None = None
    if isinstance(secret, TicketKeys):
        kid, secret = secret.keys[0]
    claims: dict[str, Any] = {"actionId": ticket.action_id, "userId": ticket.user_id}
    if ticket.scores is not None:
        claims["scores"] = dict(ticket.scores)
    else:
        claims["points"] = ticket.points
    claims["nbf"] = ticket.not_before
    claims["exp"] = ticket.expires_at
    if ticket.metadata is not None:
        claims["metadata"] = orjson.Fragment(ticket.metadata)
    if ticket.action_type is not None:
        claims["type"] = ticket.action_type
    if kid is not None:
        claims["kid"] = kid
    signed = f"{VERSION}.{_b64encode(orjson.dumps(claims))}"
    return f"{signed}.{_b64encode(_signature(secret, signed))}"


def _invalid(message: str) -> ScoreboardError:
    return ScoreboardError(Code.INVALID_TICKET, message)


def _id(claims: dict[str, Any], name: str) -> str:
    value = claims[name]
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_CHARS or text_problem(value):
        raise _invalid(f"The ticket's '{name}' must be a string of 1 to {MAX_ID_CHARS} printable characters.")
    return value


def _int(claims: dict[str, Any], name: str, low: int, high: int) -> int:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _invalid(f"The ticket's '{name}' must be an integer from {low} to {high}.")
    return value


def parse_ticket(keys: bytes | TicketKeys, text: str) -> Ticket:
    """Verify the signature and shape of a ticket; raises invalid_ticket."""
    if isinstance(keys, bytes):
        keys = TicketKeys.single(keys)
    if len(text) > MAX_TICKET_CHARS:
        raise _invalid(f"The ticket is longer than {MAX_TICKET_CHARS} characters.")
    parts = text.split(".")
    if not text.isascii() or len(parts) != 3 or parts[0] != VERSION:
        raise _invalid("The ticket is not a v1 ticket.")
    signed = f"{parts[0]}.{parts[1]}"
    try:
        given = _b64decode(parts[2])
        # Read before the signature is checked only to pick the key.
        claims = orjson.loads(_b64decode(parts[1]))
    except ValueError:  # binascii.Error and orjson.JSONDecodeError are ValueErrors
        raise _invalid("The ticket is malformed.") from None
    if not isinstance(claims, dict) or not _REQUIRED <= claims.keys() <= _ALLOWED:
        raise _invalid("The ticket's payload has missing or unknown members.")
    kid = claims.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise _invalid("The ticket's 'kid' must be a string.")
    secrets = keys.candidates(kid)
    if not secrets:
        raise _invalid("The ticket was signed with a key this server does not know.")
    if not any(hmac.compare_digest(given, _signature(secret, signed)) for secret in secrets):
        raise _invalid("The ticket's signature does not verify.")
    action_type = claims.get("type")
    if action_type is not None and (not isinstance(action_type, str) or text_problem(action_type)):
        raise _invalid("The ticket's 'type' must be a string of printable characters.")
    if ("points" in claims) == ("scores" in claims):
        raise _invalid("The ticket must carry exactly one of 'points' and 'scores'.")
    metadata = claims.get("metadata")
    limit = 2**53
    return Ticket(
        action_id=_id(claims, "actionId"),
        user_id=_id(claims, "userId"),
        points=_int(claims, "points", 1, MAX_POINTS) if "points" in claims else None,
        not_before=_int(claims, "nbf", 0, limit),
        expires_at=_int(claims, "exp", 0, limit),
        action_type=action_type,
        scores=_scores(claims["scores"]) if "scores" in claims else None,
        metadata=None if metadata is None else _metadata(metadata),
    )


def _scores(value: object) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, dict) or not 1 <= len(value) <= MAX_BOARDS:
        raise _invalid(f"The ticket's 'scores' must be an object of 1 to {MAX_BOARDS} boards.")
    for board, score in value.items():
        if not _BOARD_ID.match(board):
            raise _invalid("The ticket's 'scores' must be keyed by board ids (1-64 of a-z 0-9 _ -).")
        if isinstance(score, bool) or not isinstance(score, int) or not -(2**63) <= score < 2**63:
            raise _invalid("The ticket's 'scores' values must be 64-bit integers.")
    return tuple(sorted(value.items()))


def _metadata(value: object) -> bytes:
    if not isinstance(value, dict):
        raise _invalid("The ticket's 'metadata' must be a JSON object.")
    encoded = orjson.dumps(value)
    if len(encoded) > MAX_METADATA_BYTES:
        raise _invalid(f"The ticket's 'metadata' exceeds {MAX_METADATA_BYTES} bytes.")
    return encoded


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
