"""Pure core: tickets, catalog, rate limiter, validation, and the no-I/O rule."""

from __future__ import annotations

import ast
import base64
import hashlib
import hmac
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scoreboard.catalog import ActionType, CatalogError, default_catalog, parse_catalog
from scoreboard.errors import Code, ScoreboardError
from scoreboard.identity import Role
from scoreboard.ratelimit import RateLimiter
from scoreboard.tickets import Ticket, check_window, parse_ticket, sign_ticket
from scoreboard.validation import parse_update

SECRET = b"t" * 32
# The pure core: no I/O, no clock, no event loop, no JWT library. Each module
# may import the standard library's pure parts, orjson, and other core modules.
CORE = [
    "board",
    "catalog",
    "changes",
    "errors",
    "fanout",
    "feed",
    "identity",
    "queries",
    "ranks",
    "ratelimit",
    "store",
    "text",
    "tickets",
    "validation",
]
ALLOWED = {
    "__future__",
    "base64",
    "bisect",
    "collections",
    "dataclasses",
    "enum",
    "hashlib",
    "hmac",
    "math",
    "re",
    "struct",
    "tomllib",
    "typing",
    "unicodedata",
    "orjson",
    # A pure-Python ordered list (no I/O): every player's rank in `ranks`.
    "sortedcontainers",
}


def _imports(module: str) -> tuple[set[str], set[str]]:
    """Absolute top-level imports and relative (same-package) imports of a server module."""
    source = (Path(__file__).parent.parent / "server" / f"{module}.py").read_text()
    absolute: set[str] = set()
    relative: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            absolute |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                absolute.add(node.module.split(".")[0])
            elif node.level == 1 and node.module:
                relative.add(node.module.split(".")[0])
            elif node.level == 1:
                relative |= {alias.name for alias in node.names}
            else:
                relative.add("<beyond the package>")
    return absolute, relative


@pytest.mark.parametrize("module", CORE)
def test_core_modules_import_only_the_allow_list(module: str) -> None:
    absolute, relative = _imports(module)
    assert absolute <= ALLOWED, f"server/{module}.py imports {sorted(absolute - ALLOWED)}"
    assert relative <= set(CORE), f"server/{module}.py imports the adapters {sorted(relative - set(CORE))}"


def test_the_allow_list_test_catches_an_adapter_import() -> None:
    # The guard itself: the adapters it must keep out are caught.
    absolute, relative = _imports("tokens")
    assert "jwt" in absolute and not absolute <= ALLOWED
    absolute, relative = _imports("hub")
    assert "broadcast" in relative


# -- tickets -------------------------------------------------------------


def sample(**kw: object) -> Ticket:
    values: dict[str, object] = {
        "action_id": "act-1",
        "user_id": "alice",
        "points": 50,
        "not_before": 1000,
        "expires_at": 2000,
        "action_type": "quest",
    }
    values.update(kw)
    return Ticket(**values)  # type: ignore[arg-type]


def test_ticket_round_trip() -> None:
    t = sample()
    assert parse_ticket(SECRET, sign_ticket(SECRET, t)) == t


def test_ticket_format_is_the_documented_one() -> None:
    # Minted by hand exactly as the README tells a game backend to.
    payload = (
        base64.urlsafe_b64encode(
            json.dumps(
                {"exp": 2000, "nbf": 1000, "points": 7, "userId": "u", "actionId": "a"}, indent=1
            ).encode()
        )
        .rstrip(b"=")
        .decode()
    )
    signed = f"v1.{payload}"
    sig = (
        base64.urlsafe_b64encode(hmac.new(SECRET, signed.encode(), hashlib.sha256).digest())
        .rstrip(b"=")
        .decode()
    )
    assert parse_ticket(SECRET, f"{signed}.{sig}") == Ticket("a", "u", 7, 1000, 2000)


def _code(text: str, secret: bytes = SECRET) -> Code:
    with pytest.raises(ScoreboardError) as info:
        parse_ticket(secret, text)
    return info.value.code


@given(st.integers(min_value=0, max_value=10_000), st.characters(codec="ascii"))
def test_any_changed_character_breaks_the_ticket(pos: int, char: str) -> None:
    text = sign_ticket(SECRET, sample())
    i = pos % len(text)
    if text[i] == char:
        return
    assert _code(text[:i] + char + text[i + 1 :]) is Code.INVALID_TICKET


@pytest.mark.parametrize(
    "text",
    ["", "v1", "v1.a.b", "v2.e30.x", "v1.e30", "é.a.b", "v1." + "a" * 2000 + ".b", "a.b.c.d"],
)
def test_malformed_tickets(text: str) -> None:
    assert _code(text) is Code.INVALID_TICKET


def test_wrong_secret_and_bad_payloads() -> None:
    assert _code(sign_ticket(b"x" * 32, sample())) is Code.INVALID_TICKET

    def signed(claims: object) -> str:
        payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        sig = hmac.new(SECRET, f"v1.{payload}".encode(), hashlib.sha256).digest()
        return f"v1.{payload}." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()

    base = {"actionId": "a", "userId": "u", "points": 1, "nbf": 0, "exp": 10}
    for bad in (
        [1],
        {**base, "extra": 1},
        {k: v for k, v in base.items() if k != "points"},
        {**base, "points": 0},
        {**base, "points": True},
        {**base, "points": 1.5},
        {**base, "userId": ""},
        {**base, "type": 3},
    ):
        assert _code(signed(bad)) is Code.INVALID_TICKET, bad


def test_ticket_window() -> None:
    t = sample()
    early = check_window(t, 990.5)
    assert early is not None and early.code is Code.TICKET_NOT_YET_VALID and early.retry_after == 10
    assert check_window(t, 1000) is None
    assert check_window(t, 1999.9) is None
    late = check_window(t, 2000)
    assert late is not None and late.code is Code.TICKET_EXPIRED


# -- catalog -------------------------------------------------------------


def test_catalog_parses_defaults() -> None:
    catalog = parse_catalog("[actions.quest_complete]\npoints = 50\nmin_duration_s = 30\n")
    assert catalog.actions == {"quest_complete": ActionType("quest_complete", 50, 30, 600, None, ("global",))}
    assert catalog.default == "global" and set(catalog.boards) == {"global"}
    assert default_catalog().actions["default"].points == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nope", "not valid TOML"),
        ("", "at least one"),
        ("[other]\n", "unknown top-level"),
        ("[boards.a]\n", "exactly one board must have default"),
        ("[boards.a]\ndefault = true\n[boards.b]\ndefault = true\n", "exactly one board"),
        ("[boards.A]\ndefault = true\n", "board ids are"),
        ('[boards.a]\ndefault = true\noperator = "max"\n', "boards.a.operator must be one of"),
        ('[boards.a]\ndefault = true\norder = "up"\n', "boards.a.order must be one of"),
        ("[boards.a]\ndefault = true\ntop_k = 0\n", "boards.a.top_k must be"),
        ("[boards.a]\ndefault = true\narchive = -1\n", "boards.a.archive must be"),
        ("[boards.a]\ndefault = true\nmin_value = 5\nmax_value = 4\n", "min_value must not be above"),
        ("[boards.a]\ndefault = true\ncolour = 1\n", "boards.a: unknown keys colour"),
        ('[boards.a]\ndefault = true\n[actions.x]\npoints = 1\nboards = ["b"]\n', "there is no board 'b'"),
        ("[boards.a]\ndefault = true\nmax_value = 10\n[actions.x]\npoints = 50\n", "outside board 'a'"),
        ("[actions.a]\n", "points is required"),
        ("[actions.a]\npoints = 0\n", "points must be"),
        ("[actions.a]\npoints = 1.5\n", "points must be"),
        ("[actions.a]\npoints = true\n", "points must be"),
        ("[actions.a]\npoints = 1\ncolour = 2\n", "unknown keys"),
        ("[actions.a]\npoints = 1\nttl_s = 5\nmin_duration_s = 5\n", "ttl_s must be longer"),
        ("[actions.a]\npoints = 1\nmax_per_minute = 0\n", "max_per_minute must be"),
        ('[actions."a b"]\npoints = 1\n', "names are"),
    ],
)
def test_catalog_errors_name_the_key(text: str, message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        parse_catalog(text)


# -- rate limiter --------------------------------------------------------


def test_rate_limiter_allows_the_burst_then_spaces_events() -> None:
    limiter = RateLimiter(window_s=60)
    assert [limiter.acquire("k", 3, 0.0) for _ in range(3)] == [None, None, None]
    assert limiter.acquire("k", 3, 0.0) == 20  # one slot frees every 60/3 s
    assert limiter.acquire("other", 3, 0.0) is None
    assert limiter.acquire("k", 3, 19.0) == 1
    assert limiter.acquire("k", 3, 20.0) is None
    assert limiter.acquire("k", 3, 20.0) == 20


def test_rate_limiter_memory_is_bounded() -> None:
    limiter = RateLimiter(window_s=60, max_keys=100)
    for i in range(1000):
        limiter.acquire(f"user{i}", 5, 0.0)
        assert len(limiter) <= 100
    # Keys whose allowance recovered are dropped before live ones.
    limiter.acquire("late", 5, 1000.0)
    assert len(limiter) == 1


# -- validation ----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({"userId": "u", "scoreDelta": 1}, "actionId"),
        ({"userId": "u", "actionId": "a"}, "scoreDelta"),
        ({"scoreDelta": 1, "actionId": "a"}, "userId"),
        ({"userId": "u", "scoreDelta": 1, "actionId": "a", "bonus": 1}, "bonus"),
        ({"userId": "u", "scoreDelta": True, "actionId": "a"}, "scoreDelta"),
        ({"userId": "u", "scoreDelta": 1.0, "actionId": "a"}, "scoreDelta"),
        ({"userId": "u", "scoreDelta": "1", "actionId": "a"}, "scoreDelta"),
        ({"userId": "u", "scoreDelta": 0, "actionId": "a"}, "scoreDelta"),
        ({"userId": "u", "scoreDelta": -5, "actionId": "a"}, "scoreDelta"),
        ({"userId": "u", "scoreDelta": 1001, "actionId": "a"}, "scoreDelta"),
        ({"userId": "u" * 129, "scoreDelta": 1, "actionId": "a"}, "userId"),
        ({"userId": "", "scoreDelta": 1, "actionId": "a"}, "userId"),
        ({"userId": 5, "scoreDelta": 1, "actionId": "a"}, "userId"),
        ({"userId": "u\n", "scoreDelta": 1, "actionId": "a"}, "userId"),
        ({"userId": "u", "scoreDelta": 1, "actionId": "a", "username": "x" * 129}, "username"),
        ({"userId": "u", "scoreDelta": 1, "actionId": ["a"]}, "actionId"),
    ],
)
def test_service_body_validation_names_the_field(body: object, field: str) -> None:
    with pytest.raises(ScoreboardError) as info:
        parse_update(body, Role.SERVICE, max_delta=1000)
    assert (info.value.code, info.value.field) == (Code.VALIDATION_FAILED, field)


def test_player_body_may_not_carry_a_username_or_skip_the_ticket() -> None:
    for body, field in (
        ({"actionId": "a", "ticket": "t", "username": "x"}, "username"),
        ({"actionId": "a"}, "ticket"),
        ({"actionId": "a", "ticket": "t", "scoreDelta": False}, "scoreDelta"),
    ):
        with pytest.raises(ScoreboardError) as info:
            parse_update(body, Role.PLAYER, max_delta=1000)
        assert info.value.field == field
