"""Errors as values: every refusal carries a stable snake_case code.

Transports map codes to their own vocabulary in one place each
(`server.http.STATUS` for HTTP). The codes are part of the public API and are
listed in the README; never rename one.
"""

from __future__ import annotations

import math
from enum import StrEnum


class Code(StrEnum):
    """Stable error codes returned to clients."""

    BAD_REQUEST = "bad_request"
    HEADERS_TOO_LARGE = "headers_too_large"
    REQUEST_TIMEOUT = "request_timeout"
    UPGRADE_REQUIRED = "upgrade_required"
    EXPECTATION_FAILED = "expectation_failed"
    INVALID_JSON = "invalid_json"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    VALIDATION_FAILED = "validation_failed"
    UNKNOWN_ACTION_TYPE = "unknown_action_type"
    UNKNOWN_BOARD = "unknown_board"
    OUT_OF_RANGE = "out_of_range"
    DELTA_MISMATCH = "delta_mismatch"
    SCORE_OVERFLOW = "score_overflow"
    UNAUTHORIZED = "unauthorized"
    INVALID_TOKEN = "invalid_token"
    TOKEN_EXPIRED = "token_expired"
    FORBIDDEN = "forbidden"
    INVALID_TICKET = "invalid_ticket"
    TICKET_MISMATCH = "ticket_mismatch"
    TICKET_EXPIRED = "ticket_expired"
    TICKET_NOT_YET_VALID = "ticket_not_yet_valid"
    ACTION_CONFLICT = "action_conflict"
    RATE_LIMITED = "rate_limited"
    USER_NOT_FOUND = "user_not_found"
    BOARD_NOT_FOUND = "board_not_found"
    SEASON_NOT_FOUND = "season_not_found"
    SEASON_CONFLICT = "season_conflict"
    USER_BLOCKED = "user_blocked"
    ACTION_NOT_FOUND = "action_not_found"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    OVERLOADED = "overloaded"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL_ERROR = "internal_error"


class ScoreboardError(Exception):
    """A refusal with a stable code, a human sentence and optional hints.

    `field` names the offending request field for validation errors;
    `retry_after` (seconds) tells the client when trying again makes sense.
    """

    def __init__(
        self,
        code: Code,
        message: str,
        *,
        field: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"ScoreboardError({self.code.value!r}, {self.message!r})"

    def as_dict(self) -> dict[str, object]:
        """The `error` object sent to clients (`retryAfter` in whole seconds, as in Retry-After)."""
        body: dict[str, object] = {"code": self.code.value, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        if self.retry_after is not None:
            body["retryAfter"] = retry_after_seconds(self.retry_after)
        return body


def retry_after_seconds(seconds: float) -> int:
    """A wait as whole seconds, at least 1 (the unit of the Retry-After header)."""
    return max(1, math.ceil(seconds))


def invalid(field: str, message: str) -> ScoreboardError:
    """A 422 validation error naming `field`."""
    return ScoreboardError(Code.VALIDATION_FAILED, message, field=field)
