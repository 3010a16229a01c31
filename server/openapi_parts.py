"""The API description's building blocks: schemas, responses, errors, operations, shared parameters.

`openapi_schemas.py` writes the component schemas with the schema builders
here, `openapi_boards.py` and `openapi.py` the paths with the operation
builders. Said once here rather than per response:
- every response carries `X-Request-ID`; 401s carry `WWW-Authenticate`,
  425, 429 and 503 `Retry-After`;
- every error is the shared `Error` object; each operation lists the codes it
  can carry (and `COMMON`, which any request may get), under the status
  `http.STATUS` gives them (a test checks both).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .errors import Code
from .http import STATUS
from .validation import MAX_STRING_CHARS

TEXT_FORMAT = "printable-text"
Json = dict[str, Any]
MAX_SEASON = 2**31 - 1

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
SECURITY: dict[str, list[Json]] = {
    "none": [],
    "required": [{"bearerAuth": []}],
    "optional": [{}, {"bearerAuth": []}],
}
# Statuses whose answers say when to try again (Retry-After).
RETRY_STATUSES = frozenset({425, 429, 503})


# -- schemas -----------------------------------------------------------------------


def ref(name: str) -> Json:
    """A reference to the component schema `name`."""
    return {"$ref": f"#/components/schemas/{name}"}


def text(about: str, max_length: int = MAX_STRING_CHARS) -> Json:
    """A string of 1 to `max_length` characters following the text rule."""
    return {
        "type": "string",
        "format": TEXT_FORMAT,
        "minLength": 1,
        "maxLength": max_length,
        "description": about,
    }


def integer(low: int | None = None, high: int | None = None, about: str | None = None) -> Json:
    """An integer, within [low, high] where given."""
    schema: Json = {"type": "integer"}
    if low is not None:
        schema["minimum"] = low
    if high is not None:
        schema["maximum"] = high
    if about:
        schema["description"] = about
    return schema


def nullable(schema: Json) -> Json:
    """`schema` or null."""
    # The server reads an optional member sent as null as if it were left out.
    return {**schema, "type": [schema["type"], "null"]}


def members(required: Json, optional: Json | None = None, about: str = "") -> Json:
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


# -- responses and operations ----------------------------------------------------


def json_content(schema: Json) -> Json:
    """A JSON body of `schema`."""
    return {"application/json": {"schema": schema}}


def fixed(value: str) -> Json:
    """A response header always sent with this value."""
    return {"required": True, "schema": {"const": value}}


def maybe(about: str) -> Json:
    """A response header sent in some cases."""
    return {"required": False, "description": about, "schema": {"type": "string"}}


def request_header(name: str, about: str) -> Json:
    """An optional request header."""
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": about,
        "schema": {"type": "string"},
    }


def answer(
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
        all_headers["Upgrade"] = fixed("websocket")
    response: Json = {"description": about, "headers": all_headers | (headers or {})}
    if content is not None:
        response["content"] = content
    if links:
        response["links"] = links
    return response


def errors(codes: Iterable[Code]) -> Json:
    """The error responses for `codes` and `COMMON`: one per status, naming its codes."""
    by_status: dict[int, list[str]] = {}
    for code in (*codes, *COMMON):
        names = by_status.setdefault(STATUS[code], [])
        if code.value not in names:
            names.append(code.value)
    return {
        str(status): answer(
            status,
            "Refused: " + ", ".join(f"`{n}`" for n in names) + ".",
            json_content(
                {
                    "allOf": [
                        ref("Error"),
                        {"properties": {"error": {"properties": {"code": {"enum": names}}}}},
                    ]
                }
            ),
        )
        for status, names in sorted(by_status.items())
    }


def operation(
    operation_id: str,
    summary: str,
    tag: str,
    answers: Json,
    refusals: Iterable[Code] = (),
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
        op["requestBody"] = {"required": True, "content": json_content(body)}
    op["security"] = SECURITY[auth]
    op["responses"] = answers | errors(refusals)
    return op


# -- parameters several paths share -----------------------------------------------

USER_PARAMETER: Json = {
    "name": "userId",
    "in": "path",
    "required": True,
    "description": "Percent-encoded; `.` and `..` as %2E and %2E%2E (clients remove dot segments).",
    "schema": {**text("A user id."), "not": {"enum": [".", ".."]}},
}
BOARD_PARAMETER: Json = {
    "name": "board",
    "in": "path",
    "required": True,
    "description": "A board id (1-64 of `[a-z0-9_-]`); any other segment is 404 `board_not_found`.",
    "schema": ref("BoardId"),
}
SEASON_PARAMETER: Json = {
    "name": "season",
    "in": "query",
    "required": False,
    "description": "A season still kept (the current one and the board's last `archive` ones); "
    "default: the current one. Others are 404 `season_not_found`.",
    "schema": integer(1, MAX_SEASON),
}
