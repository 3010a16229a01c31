"""Authentication and authorisation over real HTTP: nobody credits what they did not earn."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import warnings
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from scoreboard.tokens import Role
from tests.conftest import StartServer
from tests.helpers import JWT_SECRET, ServerHandle, service_update, ticket, token


def _none_alg(sub: str) -> str:
    def seg(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    claims = {"sub": sub, "exp": time.time() + 60, "role": "service"}
    return f"{seg({'alg': 'none', 'typ': 'JWT'})}.{seg(claims)}."


def _hs256_with_key(claims: dict[str, object], key: bytes) -> str:
    def seg(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    signed = f"{seg({'alg': 'HS256', 'typ': 'JWT'})}.{seg(claims)}"
    sig = hmac.new(key, signed.encode(), hashlib.sha256).digest()
    return f"{signed}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"


def _hs384() -> str:
    # Right secret, algorithm outside the pinned one: refused before any HMAC is computed.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jwt.encode({"sub": "b", "exp": time.time() + 60, "role": "service"}, JWT_SECRET, "HS384")


BAD_TOKENS = {
    "alg none": lambda: _none_alg("backend"),
    "wrong key": lambda: token(
        "backend", role=Role.SERVICE, secret="another-secret-that-is-long-enough-1234"
    ),
    "expired": lambda: token("backend", role=Role.SERVICE, ttl=-120),
    "not yet valid": lambda: token("backend", role=Role.SERVICE, nbf=int(time.time()) + 3600),
    "malformed": lambda: "abc.def.ghi",
    "oversized": lambda: token("backend", role=Role.SERVICE, pad="x" * 6000),
    "no exp": lambda: jwt.encode({"sub": "backend", "role": "service"}, JWT_SECRET, algorithm="HS256"),
    "bad role": lambda: jwt.encode({"sub": "b", "exp": time.time() + 60, "role": "root"}, JWT_SECRET),
    "HS384 with the right secret": _hs384,
}


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
async def test_bad_tokens_get_401_with_www_authenticate(server: ServerHandle, kind: str) -> None:
    headers = {"Authorization": f"Bearer {BAD_TOKENS[kind]()}"}
    async with server.session.post(
        server.url + "/scores/update", json=service_update("victim", 5), headers=headers
    ) as resp:
        body = await resp.json()
        assert resp.status == 401, (kind, body)
        assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="scoreboard", error="invalid_token"')
    assert body["success"] is False
    assert body["error"]["code"] in {"invalid_token", "token_expired"}
    assert await server.top() == []


@pytest.mark.parametrize("header", [None, "Basic YTpi", "Bearer", "Token abc"])
async def test_missing_or_non_bearer_authorization(server: ServerHandle, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    async with server.session.post(
        server.url + "/scores/update", json=service_update("x", 1), headers=headers
    ) as r:
        assert r.status == 401
        assert r.headers["WWW-Authenticate"] == 'Bearer realm="scoreboard"'
        assert (await r.json())["error"]["code"] == "unauthorized"


async def test_player_cannot_use_the_service_shape(server: ServerHandle) -> None:
    status, body = await server.post("/scores/update", service_update("alice", 1000), token("alice"))
    # A player's body must carry a ticket; a chosen delta without one is refused.
    assert status == 422
    assert body["error"]["field"] == "ticket"
    assert await server.top() == []


async def test_player_cannot_credit_someone_else_bola(server: ServerHandle) -> None:
    body = {**ticket("mallory", 5), "userId": "alice"}
    status, resp = await server.post("/scores/update", body, token("mallory"))
    assert (status, resp["error"]["code"], resp["error"]["field"]) == (403, "forbidden", "userId")
    assert await server.top() == []


async def test_ticket_replayed_by_another_user_is_refused(server: ServerHandle) -> None:
    stolen = ticket("alice", 50)
    status, resp = await server.post("/scores/update", stolen, token("mallory"))
    assert (status, resp["error"]["code"]) == (403, "ticket_mismatch")
    status, resp = await server.post("/scores/update", {**stolen, "userId": "mallory"}, token("mallory"))
    assert (status, resp["error"]["code"]) == (403, "ticket_mismatch")
    # The rightful owner can still redeem it.
    status, resp = await server.post("/scores/update", stolen, token("alice"))
    assert (status, resp["newScore"]) == (200, 50)


async def test_ticket_for_another_action_is_refused(server: ServerHandle) -> None:
    t = ticket("alice", 5)
    status, resp = await server.post("/scores/update", {**t, "actionId": "other"}, token("alice"))
    assert (status, resp["error"]["code"], resp["error"]["field"]) == (403, "ticket_mismatch", "actionId")


async def test_player_cannot_choose_the_reward(server: ServerHandle) -> None:
    t = ticket("alice", 5)
    status, resp = await server.post("/scores/update", {**t, "scoreDelta": 500}, token("alice"))
    assert (status, resp["error"]["code"], resp["error"]["field"]) == (422, "delta_mismatch", "scoreDelta")
    forged = ticket("alice", 500, secret="not-the-ticket-secret-but-long-enough-123")
    status, resp = await server.post("/scores/update", forged, token("alice"))
    assert (status, resp["error"]["code"]) == (403, "invalid_ticket")
    assert await server.top() == []


async def test_forged_token_signed_with_the_ticket_secret(server: ServerHandle) -> None:
    from tests.helpers import TICKET_SECRET

    forged = token("backend", role=Role.SERVICE, secret=TICKET_SECRET)
    status, resp = await server.post("/scores/update", service_update("x", 1), forged)
    assert (status, resp["error"]["code"]) == (401, "invalid_token")


async def test_tokens_from_an_identity_provider(start: StartServer, sqlite_url: str, tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_file = tmp_path / "idp.pem"
    key_file.write_bytes(pem)
    server = await start(
        sqlite_url, jwt_public_key_file=key_file, jwt_issuer="https://id.example", jwt_audience="game"
    )
    claims = {
        "sub": "svc",
        "role": "service",
        "exp": time.time() + 60,
        "iss": "https://id.example",
        "aud": "game",
    }
    good = jwt.encode(claims, private, algorithm="RS256")
    status, resp = await server.post("/scores/update", service_update("p", 3), good)
    assert (status, resp["newScore"]) == (200, 3)
    for bad in (
        jwt.encode({**claims, "aud": "other"}, private, algorithm="RS256"),
        jwt.encode({**claims, "iss": "https://evil.example"}, private, algorithm="RS256"),
        _hs256_with_key(claims, pem),  # algorithm confusion: the public key used as an HMAC secret
        token("svc", role=Role.SERVICE),  # the HS256 secret is not accepted once a public key is set
    ):
        status, resp = await server.post("/scores/update", service_update("p", 3), bad)
        assert (status, resp["error"]["code"]) == (401, "invalid_token")
