"""Regressions for inputs that used to harm other clients, on both stores.

Each test names the defect it pins down: bad text in token claims, scores
past 2^63-1, malformed resume positions, HEAD on the event stream, and the
smaller refusals that used to be 500s or 503s.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import stat
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from scoreboard.app import SSE
from scoreboard.errors import Code, ScoreboardError
from scoreboard.store import Source, StorageError, Update
from scoreboard.tokens import Role
from tests.conftest import StartServer
from tests.helpers import JWT_SECRET, ServerHandle, bearer, eventually, service_update, ticket, token

INT64_MAX = 2**63 - 1


def signed(claims: dict[str, Any]) -> str:
    """An HS256 token with exactly these claims (an expiry added if missing)."""
    claims.setdefault("exp", 4_000_000_000)
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


async def honest_credits(server: ServerHandle, n: int, base: int = 10) -> list[Any]:
    """`n` service credits to fresh users, as coroutines to run alongside a bad request."""
    users = [f"honest-{uuid.uuid4().hex[:8]}" for _ in range(n)]
    return [
        server.post("/scores/update", service_update(u, base + i), server.service_token)
        for i, u in enumerate(users)
    ]


def assert_honest(answers: list[tuple[int, Any]], base: int = 10) -> None:
    for i, (status, body) in enumerate(answers):
        assert (status, body.get("newScore")) == (200, base + i), body


async def assert_healthy(server: ServerHandle) -> None:
    assert server.service.writer.healthy
    status, body = await server.get("/readyz")
    assert status == 200, body


# -- 1. one bad update never fails its batch ---------------------------------------------


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("\ud800", None),  # a lone surrogate: nothing storable is left
        ("a\x00b", "ab"),
        ("\x1b[31mred", "[31mred"),
        ("\u202eevil", "evil"),
        ("zero\u200bwidth", "zerowidth"),
        (
            "family \U0001f468\u200d\U0001f469\u200d\U0001f467",
            "family \U0001f468\u200d\U0001f469\u200d\U0001f467",
        ),
    ],
)
async def test_token_display_names_are_cleaned_and_harm_nobody(
    start: StartServer, database_url: str, name: str, shown: str | None
) -> None:
    server = await start(database_url, flush_interval_ms=50)
    odd = f"odd-{uuid.uuid4().hex[:6]}"
    bad = server.post("/scores/update", ticket(odd, 7), signed({"sub": odd, "name": name}))
    *answers, (status, body) = await asyncio.gather(*await honest_credits(server, 5), bad)
    assert_honest(answers)
    assert status == 200, body
    status, user = await server.get(f"/api/users/{odd}")
    assert (status, user["username"], user["score"]) == (200, shown or odd, 7)
    await assert_healthy(server)


@pytest.mark.parametrize("sub", ["a\x00b", "\ud800", "x\u202e", "tab\there", ""])
async def test_a_token_subject_that_breaks_the_text_rule_is_refused(server: ServerHandle, sub: str) -> None:
    bad = signed({"sub": sub})
    for path, body in (("/scores/update", ticket("x", 1)), ("/api/actions", {"type": "default"})):
        status, answer = await server.post(path, body, bad)
        assert (status, answer["error"]["code"]) == (401, "invalid_token"), (path, answer)
    # On the upgrade, and as an in-band auth message that leaves the socket usable.
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await server.session.ws_connect(server.ws_url, headers=bearer(bad))
    assert info.value.status == 401
    async with server.session.ws_connect(server.ws_url) as ws:
        await ws.send_json({"type": "auth", "id": 1, "token": bad})
        reply = await ws.receive_json(timeout=5)
        assert (reply["id"], reply["error"]["code"]) == (1, "invalid_token")
        await ws.send_json({"type": "ping"})
        assert (await ws.receive_json(timeout=5)) == {"type": "pong"}


async def test_ack_memory_keeps_every_acknowledged_update_despite_a_bad_one(
    start: StartServer, database_url: str
) -> None:
    server = await start(database_url, ack="memory", flush_interval_ms=50)
    users = [f"m{i}-{uuid.uuid4().hex[:6]}" for i in range(5)]
    honest = [
        server.post("/scores/update", service_update(u, 10 + i), server.service_token)
        for i, u in enumerate(users)
    ]
    bad = server.post("/scores/update", ticket("nul", 3), signed({"sub": "nul", "name": "n\x00\ud800"}))
    answers = await asyncio.gather(*honest, bad)
    assert [status for status, _ in answers] == [202] * 6
    for i, u in enumerate(users):
        assert await eventually(
            lambda u=u: u in {e.user_id for e in server.service.hubs.default.board.entries()}
        )
        status, body = await server.get(f"/api/users/{u}")
        assert (status, body["score"]) == (200, 10 + i)
    await assert_healthy(server)


async def test_identity_provider_tokens_follow_the_same_text_rule(start: StartServer, tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "idp.pem"
    key_file.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    server = await start(f"sqlite:///{tmp_path / 'idp.db'}", jwt_secret=None, jwt_public_key_file=key_file)

    def rs256(claims: dict[str, Any]) -> str:
        return jwt.encode({"exp": 4_000_000_000, **claims}, private, algorithm="RS256")

    status, body = await server.post(
        "/scores/update", ticket("idp", 4), rs256({"sub": "idp", "name": "I\x00\ud800D"})
    )
    assert status == 200, body
    assert (await server.get("/api/users/idp"))[1]["username"] == "ID"
    status, body = await server.post("/api/actions", {"type": "default"}, rs256({"sub": "b\x00d"}))
    assert (status, body["error"]["code"]) == (401, "invalid_token")


async def test_a_batch_the_database_refuses_is_split_until_only_the_bad_update_fails(
    start: StartServer, database_url: str
) -> None:
    # Validation keeps such updates out; this is the writer's defence in depth:
    # an update that reaches the store and is refused for its data (a lone
    # surrogate neither database can hold), queued in one batch with honest ones.
    server = await start(database_url, flush_interval_ms=20)
    writer = server.service.writer
    batches = writer.batches
    honest = [
        Update.single(f"h-{i}-{uuid.uuid4().hex}", f"h{i}", None, 10 + i, Source.SERVICE) for i in range(7)
    ]
    queued = [writer.submit(u) for u in honest[:3]]
    bad = writer.submit(Update.single(f"bad-{uuid.uuid4().hex}", "bad\ud800", None, 5, Source.SERVICE))
    queued += [writer.submit(u) for u in honest[3:]]
    results = await asyncio.gather(*queued)
    assert [r.boards["global"].score for r in results] == [10 + i for i in range(7)]
    with pytest.raises(ScoreboardError) as info:
        await bad
    assert info.value.code is Code.VALIDATION_FAILED
    assert writer.refused == 1
    assert writer.batches - batches >= 2  # the batch of eight was split
    await assert_healthy(server)
    assert await server.credit("after", 1)


# -- 2. scores stay within 64 bits -------------------------------------------------------


async def test_a_credit_past_int64_is_refused_alone(start: StartServer, database_url: str) -> None:
    server = await start(database_url, max_delta=INT64_MAX, flush_interval_ms=50)
    half = 2**62
    assert (await server.credit("whale", half))["newScore"] == half
    overflow = server.post("/scores/update", service_update("whale", half), server.service_token)
    *answers, (status, body) = await asyncio.gather(*await honest_credits(server, 4), overflow)
    assert_honest(answers)
    assert (status, body["error"]["code"]) == (422, "score_overflow"), body
    status, user = await server.get("/api/users/whale")
    assert (status, user["score"]) == (200, half)
    assert type(user["score"]) is int
    assert (await server.credit("whale", half - 1))["newScore"] == INT64_MAX
    status, body = await server.post("/scores/update", service_update("whale", 1), server.service_token)
    assert (status, body["error"]["code"]) == (422, "score_overflow")
    # Later credits are stored, and the board agrees with the database.
    assert (await server.credit("minnow", 5))["newScore"] == 5
    stored = await server.service.store.top("global", 1, 10)
    assert [(e.user_id, e.score) for e in stored] == [
        (row["userId"], row["score"]) for row in await server.top()
    ]
    assert stored[0].score == INT64_MAX
    await assert_healthy(server)


async def test_credits_of_one_user_overflowing_within_a_batch(start: StartServer, database_url: str) -> None:
    server = await start(database_url, max_delta=INT64_MAX, flush_interval_ms=20)
    writer = server.service.writer
    big = 2**62 + 1
    first = writer.submit(Update.single("twin-1", "twin", None, big, Source.SERVICE))
    second = writer.submit(Update.single("twin-2", "twin", None, big, Source.SERVICE))
    other = writer.submit(Update.single("twin-3", "other", None, 3, Source.SERVICE))
    assert (await first).boards["global"].score == big
    with pytest.raises(ScoreboardError) as info:
        await second
    assert info.value.code is Code.SCORE_OVERFLOW
    assert (await other).boards["global"].score == 3
    await assert_healthy(server)


# -- 3. resume positions are parsed strictly, streams always released ----------------------


@pytest.mark.parametrize(
    "position", ["x:\u00b2", "x:\u2460", "garbage", ":", "x:-1", "x:1_0", "x: 1", "9" * 80]
)
async def test_sse_any_malformed_position_gets_a_snapshot_and_releases_the_stream(
    server: ServerHandle, position: str
) -> None:
    await server.credit("alice", 5)
    epoch = server.broadcaster.feed.epoch
    for last_id in (position, f"{epoch}:{position.rpartition(':')[2]}"):
        async with server.session.get(
            server.url + "/scores/stream", headers={"Last-Event-ID": last_id}
        ) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/event-stream"
            data = b""
            while b"data: " not in data or not data.endswith(b"\n\n"):
                data += await asyncio.wait_for(resp.content.readany(), 5)
            assert b"event: scoreboard:update" in data
    assert await eventually(lambda: len(server.broadcaster) == 0 and len(server.app[SSE]) == 0)


async def test_many_bad_resume_positions_leave_no_subscriber_behind(server: ServerHandle) -> None:
    for _ in range(100):
        async with server.session.get(
            server.url + "/scores/stream", headers={"Last-Event-ID": "x:\u2460"}
        ) as resp:
            assert resp.status == 200
            await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
    assert await eventually(lambda: len(server.broadcaster) == 0 and len(server.app[SSE]) == 0)


async def test_websocket_since_malformed_gets_a_snapshot_and_a_wrong_type_is_refused(
    server: ServerHandle,
) -> None:
    await server.credit("alice", 5)
    async with server.session.ws_connect(server.ws_url) as ws:
        for since in ("x:\u2460", "x:\u00b2", "garbage", ""):
            await ws.send_json({"type": "subscribe", "channel": "scoreboard", "since": since})
            event = await ws.receive_json(timeout=5)
            assert event["type"] == "scoreboard:update", since
            assert event["topUsers"][0]["userId"] == "alice"
        await ws.send_json({"type": "subscribe", "channel": "scoreboard", "since": 7, "id": "s"})
        reply = await ws.receive_json(timeout=5)
        assert (reply["id"], reply["error"]["code"], reply["error"]["field"]) == (
            "s",
            "validation_failed",
            "since",
        )
        await ws.send_json({"type": "ping"})
        assert (await ws.receive_json(timeout=5)) == {"type": "pong"}


# -- 5. HEAD on the event stream -----------------------------------------------------------


async def test_head_on_the_stream_has_no_body_and_a_pipelined_request_is_answered(
    server: ServerHandle,
) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"HEAD /scores/stream HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"text/event-stream" in head
    # The next bytes are the second response, not an event stream body.
    assert rest.startswith(b"HTTP/1.1 200"), rest[:80]
    assert rest.endswith(b'{"status":"ok"}')
    assert len(server.broadcaster) == 0


# -- 7. smaller refusals that used to be 500s and 503s -------------------------------------


async def test_path_ids_follow_the_text_rule(server: ServerHandle) -> None:
    for raw in ("%00", "a%00b", "%1B", "%E2%80%AE"):
        async with server.session.get(server.url + f"/api/users/{raw}") as resp:
            body = await resp.json()
            assert (resp.status, body["error"]["code"], body["error"]["field"]) == (
                422,
                "validation_failed",
                "userId",
            ), raw
    async with server.session.get(server.url + "/api/users/%ED%A0%80") as resp:  # a surrogate, as UTF-8
        assert resp.status in (400, 404, 422)


async def test_a_body_that_does_not_match_its_content_encoding_is_400(server: ServerHandle) -> None:
    body = json.dumps(service_update("gz", 1)).encode()
    headers = {**bearer(server.service_token), "Content-Type": "application/json"}
    async with server.session.post(
        server.url + "/scores/update", data=body, headers={**headers, "Content-Encoding": "gzip"}
    ) as resp:
        answer = await resp.json()
        assert (resp.status, answer["error"]["code"]) == (400, "bad_request")
    async with server.session.post(
        server.url + "/scores/update",
        data=gzip.compress(body),
        headers={**headers, "Content-Encoding": "gzip"},
    ) as resp:
        assert resp.status == 200, await resp.text()


async def test_static_directory_and_plain_get_on_the_socket_are_not_internal_errors(
    server: ServerHandle,
) -> None:
    for path in ("/static/", "/static/../README.md", "/static/nope.js"):
        async with server.session.get(server.url + path) as resp:
            body = await resp.json()
            assert resp.status in (403, 404), path
            assert body["error"]["code"] in ("forbidden", "not_found"), path
    async with server.session.get(server.url + "/ws") as resp:
        body = await resp.json()
        assert (resp.status, body["error"]["code"]) == (426, "upgrade_required")
        assert resp.headers["Upgrade"] == "websocket"
    async with server.session.head(server.url + "/ws") as resp:
        assert resp.status == 405


@pytest.mark.parametrize("username", ["a\x00b", "\x1b[2J", "\u202eevil", "line\u2028break"])
async def test_body_usernames_follow_the_same_rule_as_token_names(
    server: ServerHandle, username: str
) -> None:
    status, body = await server.post(
        "/scores/update", service_update("u", 1, username=username), server.service_token
    )
    assert (status, body["error"]["code"], body["error"]["field"]) == (422, "validation_failed", "username")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def test_tickets_must_be_canonical_unpadded_base64url(server: ServerHandle) -> None:
    player = token("canon")
    good = ticket("canon", 3)
    version, payload, signature = good["ticket"].split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # The last character of 32 bytes in base64 carries 2 bits and 4 ignored ones.
    twin = alphabet[alphabet.index(signature[-1]) ^ 1]
    forms = {
        "padded signature": f"{version}.{payload}.{signature}=",
        "non-canonical signature": f"{version}.{payload}.{signature[:-1]}{twin}",
        "standard alphabet": f"{version}.{payload.replace('-', '+').replace('_', '/')}.{signature}",
        "whitespace": f"{version}.{payload}.{signature[:10]} {signature[10:]}",
    }
    for what, text in forms.items():
        if text == good["ticket"]:
            continue
        status, body = await server.post(
            "/scores/update", {"actionId": good["actionId"], "ticket": text}, player
        )
        assert (status, body["error"]["code"]) == (403, "invalid_ticket"), what
    status, body = await server.post("/scores/update", good, player)
    assert (status, body["newScore"]) == (200, 3)


async def test_data_dir_and_database_are_private(start: StartServer, tmp_path: Path) -> None:
    server = await start(None, data_dir=tmp_path / "fresh" / "data")  # the embedded default
    await server.credit("p", 1)
    data = tmp_path / "fresh" / "data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for name in ("scoreboard.db", "scoreboard.db-wal", "scoreboard.db-shm"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name


async def test_an_sqlite_url_in_a_missing_directory_is_refused(start: StartServer, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        await start(f"sqlite:///{tmp_path / 'typo' / 'scoreboard.db'}")
    assert not (tmp_path / "typo").exists()


# -- limits: per player, per socket, and error frames -----------------------------------


async def test_players_are_limited_per_minute_on_every_transport(
    start: StartServer, database_url: str
) -> None:
    server = await start(database_url, player_updates_per_min=3, player_actions_per_min=2)
    player = token("busy")
    for i in range(2):
        status, _ = await server.post("/api/actions", {"type": "default"}, player)
        assert status == 201, i
    status, body = await server.post("/api/actions", {"type": "default"}, player)
    assert (status, body["error"]["code"], body["error"]["retryAfter"]) == (429, "rate_limited", 30)
    for _ in range(2):
        status, body = await server.post("/scores/update", ticket("busy", 1), player)
        assert status == 200, body
    async with server.session.ws_connect(server.ws_url, headers=bearer(player)) as ws:
        await ws.send_json({"type": "score.update", "id": "w1", **ticket("busy", 1)})
        assert (await ws.receive_json(timeout=5))["type"] == "ack"
        await ws.send_json({"type": "score.update", "id": "w2", **ticket("busy", 1)})
        refused = await ws.receive_json(timeout=5)
        assert (refused["id"], refused["error"]["code"]) == ("w2", "rate_limited")
        assert refused["error"]["retryAfter"] >= 1
    async with server.session.post(
        server.url + "/scores/update", json=ticket("busy", 1), headers=bearer(player)
    ) as resp:
        assert resp.status == 429
        assert int(resp.headers["Retry-After"]) >= 1
    # Another player, and a trusted backend, are not affected.
    assert (await server.post("/scores/update", ticket("calm", 1), token("calm")))[0] == 200
    for i in range(10):
        await server.credit("busy", 1, f"svc-{i}")


async def test_a_backend_pipelines_thousands_of_updates_on_one_socket(
    start: StartServer, sqlite_url: str
) -> None:
    # Few acks may be pending per socket: the server stops reading instead of
    # refusing, and the per-message rate limit does not apply to service tokens.
    server = await start(sqlite_url, ws_max_pending_updates=8, ws_messages_per_s=5, flush_interval_ms=2)
    batches = server.service.writer.batches
    n = 2000
    async with server.session.ws_connect(server.ws_url, headers=bearer(server.service_token)) as ws:
        for i in range(n):
            await ws.send_str(
                orjson.dumps({"type": "score.update", "id": i, **service_update(f"p{i % 50}", 1)}).decode()
            )
        replies = [await ws.receive_json(timeout=30) for _ in range(n)]
    assert [r["id"] for r in replies] == list(range(n))
    assert all(r["type"] == "ack" and r["success"] for r in replies), [
        r for r in replies if r["type"] != "ack"
    ][:3]
    # At most 8 of this socket's updates were ever waiting, so they took many commits.
    assert server.service.writer.batches - batches >= n // 8
    assert sum(r["newScore"] for r in replies if r["userId"] == "p0") == sum(range(1, n // 50 + 1))


async def test_players_keep_the_per_message_limit_and_errors_carry_retry_after(
    start: StartServer, sqlite_url: str
) -> None:
    server = await start(sqlite_url, ws_messages_per_s=5, ws_max_violations=100)
    async with server.session.ws_connect(server.ws_url, headers=bearer(token("chatty"))) as ws:
        for i in range(12):
            await ws.send_json({"type": "ping", "id": i})
        replies = [await ws.receive_json(timeout=5) for _ in range(12)]
    limited = [r for r in replies if r["type"] == "error"]
    assert limited, replies
    assert all(r["error"]["code"] == "rate_limited" and r["error"]["retryAfter"] == 1 for r in limited)
    assert [r for r in replies if r["type"] == "pong"]


# -- key rotation for tickets ------------------------------------------------------------

NEW_KEY = "new-ticket-key-0123456789abcdef-0123456789ab"
OLD_KEY = "old-ticket-key-0123456789abcdef-0123456789ab"


def _payload(ticket_text: str) -> dict[str, Any]:
    part = ticket_text.split(".")[1]
    return dict(orjson.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


async def test_ticket_keys_rotate_without_downtime(start: StartServer, database_url: str) -> None:
    server = await start(database_url, ticket_secret=None, ticket_keys=f"k2:{NEW_KEY},k1:{OLD_KEY}")
    player = token("rot")
    status, started = await server.post("/api/actions", {"type": "default"}, player)
    assert status == 201
    assert _payload(started["ticket"])["kid"] == "k2"  # new tickets: the newest key
    status, body = await server.post(
        "/scores/update", {"actionId": started["actionId"], "ticket": started["ticket"]}, player
    )
    assert status == 200, body
    # Tickets minted with the older key still verify, with or without its kid.
    from scoreboard.tickets import Ticket, TicketKeys, sign_ticket

    now = int(server.service._clock())

    def minted(keys: TicketKeys, action_id: str) -> dict[str, str]:
        t = Ticket(action_id=action_id, user_id="rot", points=2, not_before=now, expires_at=now + 60)
        return {"actionId": action_id, "ticket": sign_ticket(keys, t)}

    old_with_kid = minted(TicketKeys((("k1", OLD_KEY.encode()),)), "old-kid")
    old_without = minted(TicketKeys.single(OLD_KEY.encode()), "old-plain")
    unknown_kid = minted(TicketKeys((("k0", OLD_KEY.encode()),)), "k0")
    wrong_key_for_kid = minted(TicketKeys((("k2", OLD_KEY.encode()),)), "k2-forged")
    for body in (old_with_kid, old_without):
        status, answer = await server.post("/scores/update", body, player)
        assert status == 200, answer
    for body in (unknown_kid, wrong_key_for_kid):
        status, answer = await server.post("/scores/update", body, player)
        assert (status, answer["error"]["code"]) == (403, "invalid_ticket"), body["actionId"]
    # Once the old key is retired, its tickets are refused.
    retired = await start(
        database_url,
        ticket_secret=None,
        ticket_keys=f"k2:{NEW_KEY}",
        data_dir=Path(str(server.settings.data_dir) + "2"),
    )
    fresh = minted(TicketKeys((("k1", OLD_KEY.encode()),)), "after-retire")
    status, answer = await retired.post("/scores/update", fresh, player)
    assert (status, answer["error"]["code"]) == (403, "invalid_ticket")


def test_service_role_claim_is_still_checked() -> None:
    # A sanity check that `signed` makes what the tests above think it makes.
    claims = jwt.decode(signed({"sub": "s", "role": Role.SERVICE.value}), JWT_SECRET, algorithms=["HS256"])
    assert claims["role"] == "service"


async def test_startup_log_names_the_database_and_the_url(tmp_path: Path) -> None:
    import os
    import signal
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOREBOARD_")}
    env.update(SCOREBOARD_DATA_DIR=str(tmp_path / "data"), SCOREBOARD_PORT="0")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "scoreboard", "serve", env=env, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    try:
        lines: dict[str, dict[str, Any]] = {}
        while "listening" not in lines:
            raw = await asyncio.wait_for(proc.stderr.readline(), 15)
            assert raw, "the server exited before listening"
            doc = json.loads(raw)
            lines[doc["event"]] = doc
        listening = lines["listening"]
        assert listening["url"] == f"http://127.0.0.1:{listening['port']}/"
        assert listening["database"] == f"sqlite:///{(tmp_path / 'data' / 'scoreboard.db').resolve()}"
        assert lines["storage_ready"]["database"] == listening["database"]
        async with aiohttp.ClientSession() as session, session.get(listening["url"] + "healthz") as resp:
            assert resp.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 15)


# -- found by the property-based tests (tests/test_fuzz_inputs.py) ------------------------


@pytest.mark.parametrize("exp", [float("nan"), float("inf"), 10**400, 2**64, -(2**60)])
async def test_time_claims_out_of_range_are_refused(server: ServerHandle, exp: float) -> None:
    # NaN compared false with every time: a signed token with exp NaN never expired;
    # a huge integer made float() overflow (a 500).
    claims = {"sub": "timeless", "exp": exp}
    bad = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
    status, body = await server.post("/api/actions", {"type": "default"}, bad)
    assert (status, body["error"]["code"]) in ((401, "invalid_token"), (401, "token_expired")), body
    async with server.session.ws_connect(server.ws_url) as ws:
        await ws.send_json({"type": "auth", "id": 1, "token": bad})
        reply = await ws.receive_json(timeout=5)
        assert reply["type"] == "error" and reply["error"]["code"] in ("invalid_token", "token_expired")
        await ws.send_json({"type": "ping"})
        assert (await ws.receive_json(timeout=5)) == {"type": "pong"}


async def raw_exchange(server: ServerHandle, request: bytes) -> bytes:
    host, port = server.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return raw


async def test_header_bytes_that_are_not_utf8_are_refused_cleanly(
    server: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    body = json.dumps(service_update("raw", 1)).encode()
    head = (
        b"POST /scores/update HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
    )
    raw = await raw_exchange(
        server, head + b"Authorization: Bearer \xff\xfe\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
    )
    assert raw.startswith(b"HTTP/1.1 401"), raw[:200]
    assert b'"invalid_token"' in raw
    auth = f"Authorization: Bearer {server.service_token}\r\n".encode()
    for expect in (b"something", b"\xff\xfe"):
        raw = await raw_exchange(
            server, head + auth + b"Expect: %b\r\nContent-Length: %d\r\n\r\n%b" % (expect, len(body), body)
        )
        assert raw.startswith(b"HTTP/1.1 417"), raw[:200]
        assert b'"expectation_failed"' in raw and b"X-Request-ID" in raw
    # A GET whose (unread) body does not match its Content-Encoding.
    raw = await raw_exchange(
        server,
        b"GET /scores HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Encoding: gzip\r\n"
        b"Content-Length: 2\r\n\r\n{}",
    )
    assert raw.startswith(b"HTTP/1.1 200"), raw[:200]
    await asyncio.sleep(0.1)
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")], [
        (r.name, r.getMessage()) for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")
    ]
