"""The API description (`GET /openapi.json`) against the app, and schemathesis against a live server.

1. The document and the routes agree, for each setting that changes the
   routes: every route is an operation and every operation a route. HEAD:
   aiohttp answers HEAD beside every GET (`allow_head=True`: the same
   handler), and the document describes such a pair once, as the GET (RFC 9110:
   HEAD is GET without the body; a test checks they answer alike); a HEAD with
   a handler of its own (the event streams', which do not subscribe) is an
   operation.
2. The document is valid OpenAPI 3.1 (schemathesis's validator), its schemas
   valid JSON Schema 2020-12, and its errors the server's: every `Code` is
   documented, each under the status `http.STATUS` gives it.
   The contract's bounds are checked (pages, the players around one, friends
   lists, moderation), and each new route is called with real entries (a
   removal, a revert, a block: what fuzzing rarely reaches), every answer
   validated against the schema the document gives it.
3. schemathesis 4 (its engine, as `st run` drives it) tests every operation of
   the document the server serves, on SQLite and on PostgreSQL, the server in
   a thread with its own uvloop loop (schemathesis calls are synchronous):
   - phases: examples, coverage (boundaries, missing and unexpected members,
     undeclared methods), fuzzing, and stateful (the document's links: start an
     action, redeem its ticket, read the credited user on each board it wrote,
     the players around it and it as a friends list, revert the action;
     list the boards, read or end their current seasons, read the ended one;
     block a player, unblock it);
   - data: positive and negative (`mode = "all"`), EXAMPLES per operation;
   - checks: all of schemathesis's (not_a_server_error, status_code_,
     content_type_, response_headers_ and response_schema_conformance,
     negative_data_rejection, positive_data_acceptance, missing_required_header,
     unsupported_method, allow_header_conformance, use_after_free,
     ensure_resource_availability, ignored_auth, object_level_authorization)
     and two of ours: `server_logged_no_bug` and `credited_user_is_readable`;
   - boards: a catalog of three (an `incr` default board, a `best` one ranking
     lower first, a `latest` one with negative bounds and a schedule), whose ids
     the document lists, so generated requests reach real boards;
   - tokens: a player's for actions and ticket redemptions, an admin's to end
     seasons and moderate (every DELETE, `/api/admin/...`), a service's for the
     rest (`Tokens`, `pick_token`), so authenticated operations go past 401 and
     403. Moderation changes what later requests get: an entry removed (DELETE,
     a block, a revert that left no credit) is not found, a blocked player's
     credits are 403 `user_blocked`, an unknown user or action is 404; all of
     which the document allows, and `credited_user_is_readable` follows;
   - the event stream is read up to its first event; a plain GET /ws (requests
     cannot upgrade) is 426, which positive data may get there.
   What is not held against the server, and why: `documented_refusals`,
   `integer_literals`. use_after_free has nothing to do (no link leads to a
   DELETE: what a removal frees, `credited_user_is_readable` follows), and
   ensure_resource_availability only links paths that nest, so
   `credited_user_is_readable` checks the `standing` links instead.

The fuzzed server runs without the per-player limits (0: unlimited) and the
per-address connection cap (0), since the fuzzer is one player on one address.
`SCOREBOARD_FUZZ_EXAMPLES` sets the examples per operation (`make fuzz`).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import jsonschema_rs
import orjson
import pytest
import schemathesis
import uvloop
import yarl
from aiohttp import web
from hypothesis import strategies as st
from schemathesis.core.failures import AcceptedNegativeData
from schemathesis.core.parameters import ParameterLocation
from schemathesis.engine import Status, events
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from scoreboard.app import SERVICE
from scoreboard.errors import Code
from scoreboard.http import STATUS
from scoreboard.openapi import OPENAPI_PATH, TEXT_FORMAT
from scoreboard.text import text_problem
from scoreboard.tickets import MAX_BOARDS, MAX_METADATA_BYTES
from scoreboard.tokens import Role
from tests.conftest import PG_ENV, StartServer, create_database, drop_database
from tests.fuzz_support import EXAMPLES_ENV, LogCapture, capture_logs
from tests.helpers import ServerHandle, start_server, token

METHODS = ("get", "head", "post", "put", "patch", "delete", "options")
PLAYER = "fuzz-player"
UPDATE_PATHS = ("/scores/update", "/api/score/update")
RESET_PATH = "/api/boards/{board}/reset"
BOARD_USER_PATH = "/api/boards/{board}/users/{userId}"
AROUND_PATH = BOARD_USER_PATH + "/around"
FRIENDS_PATH = "/api/boards/{board}/users"
BLOCK_PATH = "/api/admin/users/{userId}/block"
REVERT_PATH = "/api/admin/actions/{actionId}/revert"
# Three boards: the default (incr), a best-lap board (lower first), and a
# `latest` one with negative bounds and a schedule that fires on leap days only.
CATALOG_TOML = """
[boards.global]
title = "All time"
default = true
archive = 2

[boards.laps]
title = "Fastest lap (ms)"
operator = "best"
order = "asc"
top_k = 5
min_value = 1
max_value = 600000
archive = 1

[boards.level]
title = "Level"
operator = "latest"
min_value = -100
max_value = 100
reset = "0 0 29 2 *"

[actions.default]
points = 1

[actions."quest.v2:boss-fight_3"]
points = 7

[actions.lap]
points = 42
boards = ["global", "laps"]
"""
DEFAULT_BOARD = "global"
# Per operation; `make fuzz` sets SCOREBOARD_FUZZ_EXAMPLES for a long run.
EXAMPLES = int(os.environ.get(EXAMPLES_ENV) or 0) or 25
# One worker: CPython 3.11's ast module is not thread-safe ("AST constructor
# recursion depth mismatch", gh-106905) and schemathesis compiles in its workers.
WORKERS = 1


@dataclass
class Served:
    """A running server and the document it served."""

    server: ServerHandle
    document: dict[str, Any]
    headers: dict[str, str]


# -- 1 and 2: the document against the app ---------------------------------------------


def _shape(path: str) -> str:
    """A path with its parameters unnamed (aiohttp says `{user_id}`, the document `{userId}`)."""
    return re.sub(r"\{[^}]*\}", "{}", path)


def _routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path shape) of every route, less aiohttp's automatic HEAD beside a GET."""
    handlers = {
        (r.method, r.resource.canonical): r.handler for r in app.router.routes() if r.resource is not None
    }
    return {
        (method.lower(), _shape(path))
        for (method, path), handler in handlers.items()
        if not (method == "HEAD" and handlers.get(("GET", path)) == handler)
    }


def _operations_of(document: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (method, path) for path, item in document["paths"].items() for method in item if method in METHODS
    ]


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, _shape(path)): op
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method in METHODS
    }


# The settings that change which routes exist, and a catalog of several boards
# (which changes what the document says).
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "several boards": {"catalog": CATALOG_TOML},
    "service metrics, no CORS, other limits": {
        "metrics": "service",
        "cors_origins": "",
        "max_delta": 5000,
        "top_k": 3,
    },
    "no metrics, CORS for one origin": {"metrics": "off", "cors_origins": "https://game.example"},
}


@pytest.fixture(params=list(VARIANTS))
async def served(
    request: pytest.FixtureRequest, start: StartServer, sqlite_url: str, tmp_path: Path
) -> Served:
    """A server for one variant of the settings, and the document it serves, read as a client would."""
    overrides = dict(VARIANTS[request.param])
    catalog = overrides.pop("catalog", None)
    if catalog is not None:
        overrides["catalog_file"] = tmp_path / "catalog.toml"
        overrides["catalog_file"].write_text(catalog)
    server = await start(sqlite_url, **overrides)
    async with server.session.get(
        server.url + OPENAPI_PATH, headers={"Origin": "https://game.example"}
    ) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        document = await resp.json()
        headers = resp.headers
    return Served(server, document, dict(headers))


async def test_every_route_is_an_operation_and_every_operation_a_route(served: Served) -> None:
    routes = _routes(served.server.app)
    documented = set(_operations(served.document))
    assert routes - documented == set(), "routes the document does not describe"
    assert documented - routes == set(), "operations the app does not serve"


async def test_the_document_is_public(served: Served) -> None:
    # No token needed; shared with pages of other origins when CORS is on.
    cors = served.server.settings.cors
    assert ("Access-Control-Allow-Origin" in served.headers) == bool(cors)
    async with served.server.session.get(served.server.url + OPENAPI_PATH) as resp:
        assert await resp.read() == orjson.dumps(served.document)


async def test_every_get_answers_head_alike(served: Served) -> None:
    board = served.server.app[SERVICE].hubs.default.id
    for template, item in served.document["paths"].items():
        if "get" not in item or "head" in item or template == "/ws":
            continue
        path = template.replace("{userId}", "nobody").replace("{name}", "app.js").replace("{board}", board)
        async with served.server.session.get(served.server.url + path) as resp:
            expected = resp.status, resp.headers.get("Content-Type")
        async with served.server.session.head(served.server.url + path) as resp:
            assert (resp.status, resp.headers.get("Content-Type")) == expected, path
            assert "X-Request-ID" in resp.headers
            assert await resp.read() == b""


async def test_the_document_is_valid_openapi_3_1(served: Served) -> None:
    document = served.document
    assert document["openapi"].startswith("3.1.")
    assert [str(e) for e in OPENAPI_31_VALIDATOR.iter_errors(document)] == []
    for name, schema in document["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), name
    text = json.dumps(document)
    for kind, name in set(re.findall(r'"#/components/(\w+)/([\w-]+)"', text)):
        assert name in document["components"][kind], f"unresolved #/components/{kind}/{name}"


async def test_every_error_code_is_documented_under_its_status(served: Served) -> None:
    document = served.document
    error = document["components"]["schemas"]["Error"]
    assert error["properties"]["error"]["properties"]["code"]["enum"] == [c.value for c in Code]
    seen: set[str] = set()
    for (method, path), op in _operations(document).items():
        for status, response in op["responses"].items():
            assert "X-Request-ID" in response["headers"], f"{method} {path} {status}"
            schema = response.get("content", {}).get("application/json", {}).get("schema", {})
            if "allOf" not in schema:
                assert int(status) < 400, f"{method} {path} {status}: not the Error schema"
                continue
            assert schema["allOf"][0] == {"$ref": "#/components/schemas/Error"}
            codes = schema["allOf"][1]["properties"]["error"]["properties"]["code"]["enum"]
            for code in codes:
                assert STATUS[Code(code)] == int(status), f"{method} {path}: {code} under {status}"
            for required, statuses in (("Retry-After", (425, 429, 503)), ("WWW-Authenticate", (401,))):
                if int(status) in statuses:
                    assert required in response["headers"], f"{method} {path} {status}: {required}"
            seen.update(codes)
    # 405 answers the operations that do not exist, so no operation lists it.
    assert {c.value for c in Code} - seen == {Code.METHOD_NOT_ALLOWED.value}


async def test_the_update_bodies_carry_the_validation_rules(served: Served) -> None:
    schemas = served.document["components"]["schemas"]
    delta, several, player = schemas["ServiceDelta"], schemas["ServiceScores"], schemas["PlayerUpdate"]
    hubs = served.server.app[SERVICE].hubs
    delta_range = delta["properties"]["scoreDelta"]
    assert delta_range["maximum"] == min(served.server.settings.max_delta, hubs.default.spec.max_value)
    assert "SCOREBOARD_MAX_DELTA" in delta_range["description"]
    assert "default 1000" in delta_range["description"]
    assert schemas["TopUsers"]["maxItems"] == hubs.default.spec.top_k
    for body in (delta, several, player):
        assert body["additionalProperties"] is False
        for name in ("userId", "actionId"):
            prop = body["properties"][name]
            assert (prop["minLength"], prop["maxLength"], prop["format"]) == (1, 128, TEXT_FORMAT)
    # Exactly one of scoreDelta and scores: the other may only be null (read as left out).
    assert set(delta["required"]) == {"userId", "scoreDelta", "actionId"}
    assert delta["properties"]["scores"] == {"type": "null"}
    assert set(several["required"]) == {"userId", "scores", "actionId"}
    assert several["properties"]["scoreDelta"] == {"type": "null"}
    assert set(player["required"]) == {"actionId", "ticket"}
    # Each board of the catalog, within its bounds, and no other.
    scores = several["properties"]["scores"]
    assert scores["additionalProperties"] is False
    assert (scores["minProperties"], scores["maxProperties"]) == (1, MAX_BOARDS)
    assert {board: (value["minimum"], value["maximum"]) for board, value in scores["properties"].items()} == {
        hub.id: (hub.spec.min_value, hub.spec.max_value) for hub in hubs
    }
    update = served.document["paths"]["/scores/update"]["post"]
    assert update["security"] == [{"bearerAuth": []}]
    assert update["requestBody"]["content"]["application/json"]["schema"]["oneOf"] == [
        {"$ref": "#/components/schemas/PlayerUpdate"},
        {"$ref": "#/components/schemas/ServiceDelta"},
        {"$ref": "#/components/schemas/ServiceScores"},
    ]


async def test_the_board_paths_name_the_catalog_boards(served: Served) -> None:
    """Board ids in paths are this server's boards, as GET /api/boards lists them (others: 404)."""
    document = served.document
    status, listed = await served.server.get("/api/boards")
    assert status == 200
    ids = [board["id"] for board in listed["boards"]]
    assert document["components"]["schemas"]["BoardId"]["enum"] == ids
    for path, item in document["paths"].items():
        if "{board}" in path:
            # (A CORS preflight answers for any id; the request it clears then gets the 404.)
            for op in (op for method, op in item.items() if method != "options"):
                [board] = [p for p in op["parameters"] if p.get("name") == "board"]
                assert board["schema"] == {"$ref": "#/components/schemas/BoardId"}, path
                assert "404" in op["responses"], path
    reset = document["paths"]["/api/boards/{board}/reset"]["post"]
    assert reset["security"] == [{"bearerAuth": []}]
    assert reset["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SeasonEnd"
    }


def _parameters(document: dict[str, Any], method: str, path: str) -> dict[str, dict[str, Any]]:
    op = document["paths"][path][method]
    return {p["name"]: p for p in op["parameters"] if "name" in p}


def _codes(document: dict[str, Any], method: str, path: str, status: int) -> list[str]:
    response = document["paths"][path][method]["responses"][str(status)]
    schema = response["content"]["application/json"]["schema"]
    codes: list[str] = schema["allOf"][1]["properties"]["error"]["properties"]["code"]["enum"]
    return codes


async def test_the_rank_reads_carry_their_bounds(served: Served) -> None:
    """Pages, the players around one and friends lists: the contract's parameters and bounds."""
    document = served.document
    top_ks = {hub.spec.top_k for hub in served.server.app[SERVICE].hubs}
    page = _parameters(document, "get", "/api/boards/{board}/scores")
    assert set(page) == {"board", "season", "offset", "limit"}
    assert page["offset"]["schema"] == {"type": "integer", "minimum": 0, "maximum": 10**9, "default": 0}
    limit = page["limit"]["schema"]
    # 1 to max(100, topK): where boards differ, the bound every board allows.
    most = min(max(100, k) for k in top_ks)
    assert (limit["type"], limit["minimum"], limit["maximum"]) == ("integer", 1, most)
    assert limit.get("default") == (next(iter(top_ks)) if len(top_ks) == 1 else None)
    around = _parameters(document, "get", AROUND_PATH)
    assert set(around) == {"board", "userId", "season", "count"}
    assert around["count"]["schema"] == {"type": "integer", "minimum": 0, "maximum": 50, "default": 5}
    friends = _parameters(document, "get", FRIENDS_PATH)
    assert set(friends) == {"board", "ids", "season"}
    ids = friends["ids"]
    assert (ids["in"], ids["required"], ids["style"], ids["explode"]) == ("query", True, "form", False)
    assert (ids["schema"]["type"], ids["schema"]["minItems"], ids["schema"]["maxItems"]) == ("array", 1, 100)
    item = ids["schema"]["items"]
    assert (item["minLength"], item["maxLength"], item["format"]) == (1, 128, TEXT_FORMAT)
    for params in (page, around, friends):
        assert params["season"] == _parameters(document, "get", BOARD_USER_PATH)["season"]
    # The friends list and one player's standing are two paths, two operations.
    assert document["paths"][FRIENDS_PATH]["get"]["operationId"] == "getBoardUsers"
    assert document["paths"][BOARD_USER_PATH]["get"]["operationId"] == "getBoardUser"
    schemas = document["components"]["schemas"]
    rows = {"BoardScores": max(max(100, k) for k in top_ks), "BoardAround": 101, "BoardUsers": 100}
    for name, most in rows.items():
        entries = schemas[name]["properties"]["entries"]
        assert schemas[name]["required"] == ["board", "season", "version", "total", "entries"], name
        assert (entries["items"], entries["maxItems"]) == ({"$ref": "#/components/schemas/RankedEntry"}, most)
    assert "maximum" not in schemas["RankedEntry"]["properties"]["rank"]  # pages go past the top K
    assert "total" in schemas["BoardStanding"]["required"]
    for path in (AROUND_PATH, BOARD_USER_PATH):
        assert "user_not_found" in _codes(document, "get", path, 404)
    for path in ("/api/boards/{board}/scores", AROUND_PATH, FRIENDS_PATH):
        assert {"board_not_found", "season_not_found"} <= set(_codes(document, "get", path, 404))
        assert "validation_failed" in _codes(document, "get", path, 422)


async def test_readiness_says_where_ranks_come_from(served: Served) -> None:
    ready = served.document["components"]["schemas"]["Ready"]
    assert ready["properties"]["ranks"]["enum"] == ["memory", "loading", "store"]
    assert "ranks" in ready["required"]


ADMIN_OPERATIONS = (
    ("delete", BOARD_USER_PATH, "EntryRemoved"),
    ("post", BLOCK_PATH, "UserBlocked"),
    ("delete", BLOCK_PATH, "UserUnblocked"),
    ("post", REVERT_PATH, "ActionReverted"),
)


async def test_moderation_needs_an_admin_and_a_reason(served: Served) -> None:
    document = served.document
    schemas = document["components"]["schemas"]
    for method, path, answer in ADMIN_OPERATIONS:
        op = document["paths"][path][method]
        assert op["security"] == [{"bearerAuth": []}], (method, path)
        assert op["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Reason"
        }
        assert op["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{answer}"
        }
        assert {"200", "401", "403", "404", "415", "422"} <= set(op["responses"]), (method, path)
        assert "forbidden" in _codes(document, method, path, 403)
        assert "validation_failed" in _codes(document, method, path, 422)
        assert "unsupported_media_type" in _codes(document, method, path, 415)
    reason = schemas["Reason"]
    assert (reason["required"], reason["additionalProperties"]) == (["reason"], False)
    text = reason["properties"]["reason"]
    assert (text["type"], text["minLength"], text["maxLength"]) == ("string", 1, 512)
    assert "user_not_found" in _codes(document, "delete", BOARD_USER_PATH, 404)
    audit = document["paths"]["/api/admin/audit"]["get"]
    assert audit["security"] == [{"bearerAuth": []}]
    assert {"200", "401", "403", "422"} <= set(audit["responses"])
    limit = _parameters(document, "get", "/api/admin/audit")["limit"]
    assert limit["schema"] == {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}
    assert schemas["AuditEntry"]["properties"]["operation"]["enum"] == [
        "remove_entry",
        "block",
        "unblock",
        "revert",
        "reset",
    ]


async def test_the_moderation_codes_are_documented(served: Served) -> None:
    """`user_blocked` (403) wherever a blocked player is refused, `action_not_found` (404) on a revert."""
    document = served.document
    for method, path in (("post", "/scores/update"), ("post", "/api/score/update"), ("post", "/api/actions")):
        assert "user_blocked" in _codes(document, method, path, 403), path
    assert "action_not_found" in _codes(document, "post", REVERT_PATH, 404)


class Answers:
    """Requests to a server, each answer checked against the schema the document gives it."""

    def __init__(self, server: ServerHandle, document: dict[str, Any]) -> None:
        self.server = server
        self.document = document
        self.admin = token("doc-admin", role=Role.ADMIN)

    async def call(
        self, method: str, template: str, path: str, body: Any = None, tok: str | None = None
    ) -> tuple[int, Any]:
        """`method path` (an instance of `template`); the answer, once it matched the document."""
        headers = {"Authorization": f"Bearer {tok}"} if tok else {}
        url = yarl.URL(self.server.url + path, encoded=True)
        async with self.server.session.request(method, url, json=body, headers=headers) as resp:
            status, answer = resp.status, await resp.json()
        responses = self.document["paths"][template][method.lower()]["responses"]
        assert str(status) in responses, (method, path, status, answer)
        schema = responses[str(status)]["content"]["application/json"]["schema"]
        root = {**schema, "components": self.document["components"]}
        errors = [e.message for e in jsonschema_rs.validator_for(root).iter_errors(answer)]
        assert errors == [], (method, path, status, answer)
        return status, answer


async def test_the_rank_reads_and_moderation_answer_as_documented(
    start: StartServer, database_url: str, tmp_path: Path
) -> None:
    """Every new route with real entries, not only refusals: what fuzzing rarely reaches (a removal
    needs an entry, a revert a credited action)."""
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG_TOML)
    server = await start(database_url, catalog_file=catalog)
    status, document = await server.get(OPENAPI_PATH)
    assert status == 200
    api = Answers(server, document)
    for user, points in (("ann", 10), ("bob", 20), ("cy", 5)):
        await server.credit(user, points)
    both = {"userId": "ann", "actionId": "lap-1", "scores": {"global": 3, "laps": 900}}
    await api.call("POST", "/scores/update", "/scores/update", both, server.service_token)

    _, standing = await api.call("GET", BOARD_USER_PATH, "/api/boards/global/users/ann")
    assert (standing["rank"], standing["score"], standing["total"]) == (2, 13, 3)
    _, around = await api.call("GET", AROUND_PATH, "/api/boards/global/users/bob/around?count=1")
    assert [e["userId"] for e in around["entries"]] == ["bob", "ann", "cy"]  # filled from below
    _, friends = await api.call("GET", FRIENDS_PATH, "/api/boards/global/users?ids=cy,nobody,ann,cy")
    assert [(e["userId"], e["rank"]) for e in friends["entries"]] == [("ann", 2), ("cy", 3)]
    _, page = await api.call(
        "GET", "/api/boards/{board}/scores", "/api/boards/global/scores?offset=1&limit=1"
    )
    assert ([e["rank"] for e in page["entries"]], page["total"]) == ([2], 3)
    _, ready = await api.call("GET", "/readyz", "/readyz")
    assert ready["ranks"] in ("memory", "loading")

    why = {"reason": "Checked by the document test."}
    _, reverted = await api.call("POST", REVERT_PATH, "/api/admin/actions/lap-1/revert", why, api.admin)
    assert reverted["reverted"] is True
    assert {b: v["score"] for b, v in reverted["boards"].items()} == {"global": 10, "laps": None}
    _, again = await api.call("POST", REVERT_PATH, "/api/admin/actions/lap-1/revert", why, api.admin)
    assert (again["reverted"], again["boards"]) == (False, {})
    status, unknown = await api.call("POST", REVERT_PATH, "/api/admin/actions/nope/revert", why, api.admin)
    assert (status, unknown["error"]["code"]) == (404, "action_not_found")
    _, removed = await api.call("DELETE", BOARD_USER_PATH, "/api/boards/global/users/cy", why, api.admin)
    assert (removed["userId"], removed["removed"]["rank"]) == ("cy", 3)
    _, blocked = await api.call("POST", BLOCK_PATH, "/api/admin/users/bob/block", why, api.admin)
    assert (blocked["changed"], [r["board"] for r in blocked["removed"]]) == (True, ["global"])
    refused = {"userId": "bob", "actionId": "after-block", "scoreDelta": 1}
    status, answer = await api.call("POST", "/scores/update", "/scores/update", refused, server.service_token)
    assert (status, answer["error"]["code"]) == (403, "user_blocked")
    _, unblocked = await api.call("DELETE", BLOCK_PATH, "/api/admin/users/bob/block", why, api.admin)
    assert (unblocked["blocked"], unblocked["changed"]) == (False, True)
    _, audit = await api.call("GET", "/api/admin/audit", "/api/admin/audit?limit=10", tok=api.admin)
    assert [e["operation"] for e in audit["entries"]] == ["unblock", "block", "remove_entry", "revert"]
    assert audit["entries"][2]["target"] == "boards/global/users/cy"
    # An admin's body is `{"reason"}` and nothing else; anyone else is refused.
    for body, code in (({}, "validation_failed"), ({**why, "x": 1}, "validation_failed")):
        status, answer = await api.call("POST", BLOCK_PATH, "/api/admin/users/ann/block", body, api.admin)
        assert (status, answer["error"]["code"]) == (422, code)
    status, answer = await api.call(
        "POST", BLOCK_PATH, "/api/admin/users/ann/block", why, server.service_token
    )
    assert (status, answer["error"]["code"]) == (403, "forbidden")
    status, answer = await api.call("POST", BLOCK_PATH, "/api/admin/users/ann/block", why)
    assert (status, answer["error"]["code"]) == (401, "unauthorized")


# -- 3: schemathesis against a live server ------------------------------------------------


class ThreadedLoop:
    """An event loop in a thread, where the real server runs for synchronous clients."""

    def __init__(self) -> None:
        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="scoreboard", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        """Run `coro` in the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def close(self) -> None:
        """Stop the loop (the server in it stopped first)."""
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


# The log of the server being fuzzed, for the `server_logged_no_bug` check.
SERVER_LOG: list[LogCapture] = []


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a server on a fresh database of each kind, its log captured in SERVER_LOG."""
    admin = os.environ.get(PG_ENV) or None
    if request.param == "postgres" and admin is None:
        pytest.skip(f"{PG_ENV} is not set")
    tmp_path = tmp_path_factory.mktemp(f"openapi-{request.param}")
    catalog = tmp_path / "actions.toml"
    catalog.write_text(CATALOG_TOML)
    loop = ThreadedLoop()
    database_url = f"sqlite:///{tmp_path / 'scoreboard.db'}"
    if admin is not None and request.param == "postgres":
        database_url = loop.run(create_database(admin))
    try:
        with capture_logs() as logs:
            handle: ServerHandle = loop.run(
                start_server(
                    tmp_path,
                    database_url,
                    actions_file=catalog,
                    # One fuzzing player on one address: no per-player limits, no connection cap.
                    player_updates_per_min=0,
                    player_actions_per_min=0,
                    max_connections_per_ip=0,
                )
            )
            SERVER_LOG.append(logs)
            try:
                yield handle.url
            finally:
                SERVER_LOG.remove(logs)
                loop.run(handle.stop())
    finally:
        if admin is not None and request.param == "postgres":
            loop.run(drop_database(admin, database_url))
        loop.close()


def _printable(ch: str) -> bool:
    return text_problem(ch) is None


def _texts(lengths: tuple[int, ...] = (1, 2, 127, 128, 129)) -> st.SearchStrategy[str]:
    """Strings of format `printable-text`: what the text rule (`text_problem`) accepts.

    Only a strategy: schemathesis takes no check for a custom format, so its negative data counts
    every string as breaking one (`documented_refusals` says what follows).
    Often of the lengths the coverage phase asks for (the limits, one past them):
    it can only filter a format's strategy, never steer it to a length.
    """
    chars = st.characters(codec="utf-8").filter(_printable)
    sized = st.sampled_from(lengths).flatmap(lambda n: st.text(chars, min_size=n, max_size=n))
    return st.one_of(sized, st.text(chars, min_size=1, max_size=130))


schemathesis.openapi.format(TEXT_FORMAT, _texts())


@schemathesis.check
class server_logged_no_bug:  # checks are named like functions
    """The server logged no bug and no outage (`unhandled_error`, `batch_failed`...) for the request."""

    def after_response(
        self, ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Any
    ) -> None:
        logs = SERVER_LOG[-1] if SERVER_LOG else None
        request_id = (response.headers.get("x-request-id") or [""])[0]
        if logs is not None and request_id:
            mine = [line for line in logs.bad if f'"{request_id}"' in line]
            if mine:
                raise AssertionError("The server logged:\n" + "\n".join(mine))

    def after_run(self, ctx: schemathesis.CheckContext) -> None:
        if SERVER_LOG and SERVER_LOG[-1].bad:
            raise AssertionError("The server logged:\n" + "\n".join(SERVER_LOG[-1].bad))


# The ids of one friends list, and the request line the server reads (aiohttp's default).
MAX_IDS = 100
MAX_REQUEST_LINE = 8190


def _ids_sent(case: schemathesis.Case) -> list[str] | None:
    """The `ids` of a friends list as the server reads them: the query value split at commas.

    schemathesis joins an array with literal commas and percent-encodes each item, so an item
    holding a comma arrives as two ids once decoded.
    """
    value = (case.query or {}).get("ids")
    if value is None:
        return None
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)
    return str(value).split(",")


def _ids_valid(ids: list[str] | None) -> bool:
    """Whether a friends list keeps the id rule: 1 to 100 distinct ids of 1-128 printable characters."""
    if ids is None or not 1 <= len(set(ids)) <= MAX_IDS:
        return False
    return all(1 <= len(i) <= 128 and text_problem(i) is None for i in ids)


def _season_valid(value: object) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value < 2**31)


def _request_line_too_long(response: schemathesis.Response) -> bool:
    request = response.request
    url = urlsplit(str(request.url))
    target = url.path + (f"?{url.query}" if url.query else "")
    return len(f"{request.method} {target} HTTP/1.1".encode()) > MAX_REQUEST_LINE


@schemathesis.check
class credited_user_is_readable:
    """A user credited with a 200 is then found on each board it wrote, in that season (the `standing` links).

    GET /api/users/{userId} reads the default board's current season, GET
    /api/boards/{board}/users/{userId} (and `/around`) the `season` asked for or
    the current one, and a friends list (`?ids=`) naming the user lists it.
    The current seasons are followed from the answers (credits, season ends, the
    board list); a season no longer kept is 404 `season_not_found`, not a failure.
    What moderation removes is followed from its answers too: an entry removed
    (DELETE), the entries of a blocked player, an entry a revert left without
    credits (`score: null`). A retry (`duplicate`) writes nothing: the entry it
    names may be gone since.
    """

    def __init__(self) -> None:
        self.credited: set[tuple[str, int, str]] = set()  # (board, season, userId)
        self.current: dict[str, int] = {}

    def after_response(
        self, ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Any
    ) -> None:
        status, path = response.status_code, case.path
        if status == 200 and case.method in ("POST", "DELETE"):
            self._changed(case.method, path, response.json())
        elif case.method == "GET" and path == "/api/boards" and status == 200:
            self.current.update({b["id"]: b["season"]["id"] for b in response.json()["boards"]})
        elif case.method == "GET" and path == FRIENDS_PATH and status == 200:
            self._friends(case, response.json())
        elif case.method == "GET" and path in ("/api/users/{userId}", BOARD_USER_PATH, AROUND_PATH):
            self._read(case, response)

    def _changed(self, method: str, path: str, answer: dict[str, Any]) -> None:
        if method == "POST" and path in UPDATE_PATHS and not answer["duplicate"]:
            for board, credit in answer["boards"].items():
                self.credited.add((board, credit["season"], answer["userId"]))
                self.current[board] = max(self.current.get(board, 0), credit["season"])
        elif method == "POST" and path == RESET_PATH:
            self.current[answer["board"]] = answer["season"]
        elif method == "DELETE" and path == BOARD_USER_PATH:
            self.credited.discard((answer["board"], answer["season"], answer["userId"]))
        elif method == "POST" and path == BLOCK_PATH:
            for removed in answer["removed"]:
                self.credited.discard((removed["board"], removed["season"], answer["userId"]))
        elif method == "POST" and path == REVERT_PATH:
            for board, now in answer["boards"].items():
                if now["score"] is None:
                    self.credited.discard((board, now["season"], answer["userId"]))

    def _season(self, case: Any, board: str) -> Any:
        season = (case.query or {}).get("season") if case.path != "/api/users/{userId}" else None
        return self.current.get(board) if season is None else season

    def _friends(self, case: Any, answer: dict[str, Any]) -> None:
        board = (case.path_parameters or {}).get("board")
        season = self._season(case, board) if isinstance(board, str) else None
        listed = {entry["userId"] for entry in answer["entries"]}
        missing = {i for i in _ids_sent(case) or [] if (board, season, i) in self.credited} - listed
        if missing:
            raise AssertionError(
                f"The friends list on {board!r} (season {season}) left out {sorted(missing)}."
            )

    def _read(self, case: Any, response: schemathesis.Response) -> None:
        status = response.status_code
        params = case.path_parameters or {}
        board = params.get("board", DEFAULT_BOARD)
        season = self._season(case, board) if isinstance(board, str) else None
        user_id = params.get("userId")
        # Negative data may put anything there; requests removes `.` and `..` segments before
        # sending (the document says: send %2E).
        if status == 200 or not isinstance(season, int) or user_id in (".", ".."):
            return
        if not (isinstance(board, str) and isinstance(user_id, str)):
            return
        if (board, season, user_id) not in self.credited:
            return
        count = (case.query or {}).get("count", 0)
        if case.path == AROUND_PATH and not (isinstance(count, int) and 0 <= count <= 50):
            return  # a bad `count` is refused whoever asks
        if status != 404 or response.json()["error"]["code"] != "season_not_found":
            raise AssertionError(
                f"The user {user_id!r} credited on board {board!r} in season {season} was answered "
                f"{status}: {response.content[:200]!r}."
            )


def integer_literals(ctx: schemathesis.HookContext, body: Any) -> Any:
    """Whole floats as integers: JSON Schema's `integer` admits 610.0, which the server refuses by design
    (README: floats are not integers) and JSON Schema cannot tell from 610. Refusing them is tested in
    test_fuzz_inputs.py."""
    if isinstance(body, float) and body.is_integer():
        return int(body)
    if isinstance(body, dict):
        return {k: integer_literals(ctx, v) for k, v in body.items()}
    if isinstance(body, list):
        return [integer_literals(ctx, v) for v in body]
    return body


class Tokens:
    """A player's token to start actions and redeem tickets, an admin's to end seasons and moderate,
    a service's for everything else."""

    player = f"Bearer {token(PLAYER, name='Fuzz Player', ttl=24 * 3600)}"
    service = f"Bearer {token('fuzz-backend', role=Role.SERVICE, ttl=24 * 3600)}"
    admin = f"Bearer {token('fuzz-admin', role=Role.ADMIN, ttl=24 * 3600)}"

    @classmethod
    def for_case(cls, case: schemathesis.Case) -> str:
        path = case.operation.path
        if path == RESET_PATH or path.startswith("/api/admin/") or case.method == "DELETE":
            return cls.admin
        redeems = isinstance(case.body, dict) and "ticket" in case.body
        return cls.player if case.operation.path == "/api/actions" or redeems else cls.service

    def get(self, case: schemathesis.Case, ctx: schemathesis.AuthContext) -> str:
        return self.for_case(case)

    def set(self, case: schemathesis.Case, data: str, ctx: schemathesis.AuthContext) -> None:
        case.headers["Authorization"] = data


def documented_refusals(
    ctx: schemathesis.HookContext, failure: Any, case: schemathesis.Case, response: schemathesis.Response
) -> bool:
    """Keep every failure but those where the server does what the document says and JSON Schema cannot.

    A 200 to a body schemathesis took for invalid and the document allows: schemathesis cannot check a
    custom format, so to negate `printable-text` it drops the keyword and counts whatever string it then
    draws as breaking the format (4.32: `_always_invalid` in `get_validator`). Many such strings keep
    the text rule (U+F3E6D, a private-use character, is text) and are rightly accepted
    (`_negated_in_vain`).

    422s to requests schemathesis takes for valid and the document does not:
    - a member of format `printable-text` that breaks the text rule: schemathesis cannot check a
      custom format, and its stateful phase reuses values from earlier (negative) requests;
    - `metadata` over 512 bytes as compact JSON, which the document says and JSON Schema cannot;
    - `delta_mismatch`: a real ticket from the `redeem` link travels with generated members, and a
      `scoreDelta` other than the ticket's points (or any, for a ticket of several boards) is
      rightly refused;
    - `ids` that, split at commas as the server reads them, break the id rule (an item holding a
      comma, which is two ids, or an empty one) or name more than 100 distinct ids.
    And two answers to friends lists:
    - 431 to a request line over 8190 bytes (100 long ids), valid or not: any request may get it;
    - 200 to a list schemathesis made invalid and the server's reading makes valid again (over
      100 ids, at most 100 of them distinct).
    """
    if response.status_code == 431 and _request_line_too_long(response):
        return False
    if isinstance(failure, AcceptedNegativeData) and _negated_in_vain(case, response):
        return False
    if isinstance(failure, AcceptedNegativeData) and case.operation.path == FRIENDS_PATH:
        return not (_ids_valid(_ids_sent(case)) and _season_valid((case.query or {}).get("season")))
    if not (isinstance(failure, RejectedPositiveData) and response.status_code == 422):
        return True
    return not _rightly_refused(case, response.json()["error"])


def _negated_in_vain(case: schemathesis.Case, response: schemathesis.Response) -> bool:
    """Whether a request made negative in its body (and maybe its headers) reached the server as one
    the document allows.

    schemathesis's own check lets headers that arrive valid pass only when the body is positive; a
    negated `Authorization` our auth provider filled in, or an `X-Request-ID` (any string), arrives valid.
    """
    meta = case.meta
    body, headers = ParameterLocation.BODY, ParameterLocation.HEADER
    negative = {loc for loc in ParameterLocation if meta is not None and meta.is_negative_at(loc)}
    if body not in negative or negative - {body, headers}:
        return False
    if headers in negative and not _headers_allowed(case, response):
        return False
    return _body_allowed(case)


def _headers_allowed(case: schemathesis.Case, response: schemathesis.Response) -> bool:
    """Whether the request carried one of our tokens and the document's header parameters as it allows."""
    sent = response.request.headers
    if sent.get("Authorization") not in (Tokens.player, Tokens.service, Tokens.admin):
        return False
    components = case.operation.schema.raw_schema["components"]
    for declared in case.operation.definition.raw.get("parameters", []):
        name = declared.get("$ref", "").rsplit("/", 1)[-1]
        parameter = components["parameters"][name] if "$ref" in declared else declared
        if parameter["in"] != "header":
            continue
        value = sent.get(parameter["name"])
        if value is None and parameter.get("required"):
            return False
        if value is not None and not jsonschema_rs.validator_for(parameter["schema"]).is_valid(value):
            return False
    return True


def _body_allowed(case: schemathesis.Case) -> bool:
    """Whether the body, as the server reads it, is one the document allows, `printable-text` checked
    by the server's own text rule."""
    content = case.operation.definition.raw.get("requestBody", {}).get("content", {})
    schema = content.get(case.media_type, {}).get("schema")
    if schema is None:
        return False
    try:
        # What requests sends (json.dumps: U+F3E6D as the pair \udbcf\ude6d), read as the server does.
        sent = orjson.loads(json.dumps(case.body, allow_nan=False))
    except (TypeError, ValueError):
        return False
    root = {**schema, "components": case.operation.schema.raw_schema["components"]}
    formats = {TEXT_FORMAT: lambda value: text_problem(value) is None}
    return jsonschema_rs.Draft202012Validator(root, formats=formats, validate_formats=True).is_valid(sent)


def _rightly_refused(case: schemathesis.Case, error: dict[str, Any]) -> bool:
    """Whether a 422 to a request schemathesis takes for valid is one the document foresees."""
    if error["code"] == "delta_mismatch":
        return True
    name = error.get("field")
    if name == "ids":
        return not _ids_valid(_ids_sent(case))
    body = case.body if isinstance(case.body, dict) else {}
    if name == "metadata" and isinstance(body.get(name), dict):
        # As the server measures it: what requests sends, decoded and encoded again by orjson.
        return len(orjson.dumps(orjson.loads(json.dumps(body[name])))) > MAX_METADATA_BYTES
    value = body.get(name, (case.path_parameters or {}).get(name))
    # A value the stateful phase carried over from a response may already be percent-encoded.
    return isinstance(value, str) and text_problem(unquote(value)) is not None


def pick_token(ctx: schemathesis.HookContext, case: schemathesis.Case, kwargs: dict[str, Any]) -> None:
    """Choose our token again once the body is final: a link fills in a ticket after auth was set.
    A request sent without a token or with another one (the auth checks) is left alone."""
    if case.headers.get("Authorization") in (Tokens.player, Tokens.service, Tokens.admin):
        case.headers["Authorization"] = Tokens.for_case(case)


def _config() -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            # Positive and negative data, in every phase: examples, coverage, fuzzing, stateful.
            "generation": {"max-examples": EXAMPLES, "mode": "all"},
            "continue-on-failure": True,
            # A preflight's path parameters (the id rule's pattern) make Hypothesis discard
            # many draws on a loaded machine; that is the generator's limit, not a finding.
            "suppress-health-check": ["filter_too_much"],
            "workers": WORKERS,
            "request-timeout": 5,
            # Read an event stream until its first event (the snapshot), then hang up.
            "max-stream-events": 1,
            # Only the document's links: an inferred POST /api/actions -> /api/score/update fills the
            # body's other members at random, and a random scoreDelta beside a real ticket is rightly
            # 422 delta_mismatch.
            "phases": {"stateful": {"inference": {"algorithms": []}}},
            "operations": [
                {
                    # requests cannot upgrade to a WebSocket: a plain GET /ws is 426 upgrade_required.
                    "include-path": "/ws",
                    "checks": {
                        "positive_data_acceptance": {"expected-statuses": ["101", "401", "403", "426"]}
                    },
                }
            ],
        }
    )


@dataclass
class Findings:
    """Failed checks grouped by kind: how often, where, and the first one in full."""

    kinds: dict[tuple[str, str], tuple[int, set[str], str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, event: events.ScenarioFinished) -> None:
        label = event.recorder.label
        if event.status is Status.ERROR:
            self.errors.append(f"[{label}] errored")
        for case_id, checks in event.recorder.checks.items():
            for check in checks:
                info = check.failure_info
                if check.status is not Status.FAILURE or info is None:
                    continue
                key = (check.name, info.failure.title)
                count, where, first = self.kinds.get(key, (0, set(), ""))
                if not first:
                    response = event.recorder.find_response(case_id=case_id)
                    answer = f"{response.status_code} {response.content[:300]!r}" if response else "no answer"
                    first = f"[{label}] {info.failure.message}\nanswered: {answer}\n{info.code_sample}"
                self.kinds[key] = (count + 1, where | {label}, first)

    def report(self) -> str:
        parts = [
            f"{name}: {title} ({count}x in {', '.join(sorted(where))})\n{first}"
            for (name, title), (count, where, first) in sorted(self.kinds.items())
        ]
        return "\n\n".join(parts + self.errors)


def test_schemathesis(live: str) -> None:
    api = schemathesis.openapi.from_url(live + OPENAPI_PATH, config=_config())
    # Global, not `api.auth`: the stateful phase (4.32) applies only global auth providers.
    schemathesis.auth(refresh_interval=None)(Tokens)
    schemathesis.hook("map_body")(integer_literals)
    schemathesis.hook("before_call")(pick_token)
    schemathesis.hook("filter_failure")(documented_refusals)
    findings = Findings()
    tested: set[str] = set()
    try:
        for event in schemathesis.engine.from_schema(api).execute():
            if isinstance(event, events.ScenarioFinished):
                tested.add(event.recorder.label)
                findings.add(event)
            elif isinstance(event, events.NonFatalError | events.FatalError):
                findings.errors.append(f"{type(event).__name__}: {event!r}")
    finally:
        schemathesis.auths.unregister()
        schemathesis.hooks.unregister(integer_literals)
        schemathesis.hooks.unregister(pick_token)
        schemathesis.hooks.unregister(documented_refusals)
    if findings.kinds or findings.errors:
        pytest.fail(findings.report(), pytrace=False)
    documented = {f"{method.upper()} {path}" for method, path in _operations_of(api.raw_schema)}
    # schemathesis never calls the URL it loaded the document from (4.32,
    # `_schema_document_path`); that GET is what loaded the schema above.
    skipped_by_design = {f"GET {OPENAPI_PATH}"}
    assert documented - tested == skipped_by_design, f"operations schemathesis did not test: {sorted(tested)}"


# -- found by schemathesis, pinned ----------------------------------------------------------


@pytest.mark.parametrize("user_id", ["{", "a{b}c", "}", ".", ".."])
async def test_a_credited_user_is_readable_at_its_url(server: ServerHandle, user_id: str) -> None:
    """The `standing` link (`credited_user_is_readable`): an id the server credits can be read back.

    Ids with `{` or `}` are credited, but GET /api/users/%7B is 404 `not_found`: aiohttp's
    `{user_id}` matches `[^{}/]+` only. (`.` and `..` are readable when sent as %2E, which is
    how the document says to send them: many clients remove dot segments.)
    """
    await server.credit(user_id, 3)
    encoded = "".join(f"%{b:02X}" for b in user_id.encode())
    async with server.session.get(yarl.URL(f"{server.url}/api/users/{encoded}", encoded=True)) as resp:
        assert (resp.status, (await resp.json()).get("userId")) == (200, user_id)


# U+F3E6D and other supplementary private-use characters: what schemathesis sent once as a
# "format-violating" actionId and userId (JSON-escaped as the pair \udbcf\ude6d).
PRIVATE_USE_BODY = {
    "scores": None,
    "username": None,
    "scoreDelta": 542,
    "actionId": "\U000f3e6d\U00100001\U000f0000",
    "userId": "\U000f3e6d",
}


async def test_a_negated_text_format_is_refused_only_when_it_breaks_the_text_rule(
    server: ServerHandle,
) -> None:
    """`negative_data_rejection`: schemathesis counts any string as breaking `printable-text`.

    Private-use characters are text (`text.py`), so the body it sent is accepted, and
    `documented_refusals` lets that 200 pass; a string that breaks the rule still fails the check.
    """
    status, answer = await server.post("/api/score/update", PRIVATE_USE_BODY, server.service_token)
    assert (status, answer["userId"]) == (200, "\U000f3e6d")
    _, document = await server.get(OPENAPI_PATH)
    operation = schemathesis.openapi.from_dict(document)["/api/score/update"]["POST"]
    for body, allowed in (
        (PRIVATE_USE_BODY, True),
        ({**PRIVATE_USE_BODY, "userId": "a\u202eb"}, False),  # a bidi override: Cf
        ({**PRIVATE_USE_BODY, "actionId": "x\x00"}, False),
    ):
        case = operation.Case(body=body, media_type="application/json")
        assert _body_allowed(case) is allowed, body
