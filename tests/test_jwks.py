"""Token keys from a JWKS: a fake identity provider on 127.0.0.1, real keys, real servers.

Keys rotate without downtime: a new `kid` makes the server fetch the set
again (once, however many requests ask), a removed key's tokens are refused,
and a provider that fails keeps the last good keys in use.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from scoreboard.config import ConfigError, Settings, resolve_secrets
from scoreboard.errors import Code, ScoreboardError
from scoreboard.jwks import JwksKeys
from scoreboard.tokens import KeySet, Role, UnknownKeyId
from tests.conftest import StartServer
from tests.helpers import ServerHandle, bearer, service_update

UNKNOWN_KID = "The token's key id is not known."


@functools.cache
def _rsa(n: int) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Signer:
    """A private key of one type and the JWK that publishes its public half."""

    def __init__(self, kind: str, kid: str | None, *, rsa_index: int = 0) -> None:
        self.kid = kid
        self.private: Any
        if kind == "rsa":
            self.private, self.alg = _rsa(rsa_index), "RS256"
        elif kind == "ec":
            self.private, self.alg = ec.generate_private_key(ec.SECP256R1()), "ES256"
        elif kind == "ed":
            self.private, self.alg = ed25519.Ed25519PrivateKey.generate(), "EdDSA"
        else:
            raise ValueError(kind)
        self.kind = kind

    def jwk(self, **members: Any) -> dict[str, Any]:
        algorithm = {"rsa": RSAAlgorithm, "ec": ECAlgorithm, "ed": OKPAlgorithm}[self.kind]
        jwk: dict[str, Any] = algorithm.to_jwk(self.private.public_key(), as_dict=True)
        if self.kid is not None:
            jwk["kid"] = self.kid
        return jwk | {"use": "sig"} | members

    def token(
        self, sub: str = "backend", *, role: Role = Role.SERVICE, kid: str | None = "", alg: str | None = None
    ) -> str:
        """A token signed with this key, naming `kid` (default: its own; None: no kid header)."""
        kid = self.kid if kid == "" else kid
        claims = {"sub": sub, "exp": int(time.time()) + 600, "role": role.value, "jti": uuid.uuid4().hex}
        headers = {"kid": kid} if kid is not None else None
        return jwt.encode(claims, self.private, algorithm=alg or self.alg, headers=headers)


class FakeIdp:
    """An identity provider's JWKS endpoint on loopback that counts its fetches."""

    def __init__(self) -> None:
        self.document: Any = {"keys": []}
        self.status = 200
        self.raw: bytes | None = None  # served instead of the document when set
        self.delay_s = 0.0
        self.hang = False
        self.fetches = 0
        self.url = ""
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None

    def publish(self, *signers: Signer, extra: tuple[dict[str, Any], ...] = ()) -> None:
        self.document = {"keys": [s.jwk() for s in signers] + list(extra)}

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.fetches += 1
        if self.hang:
            await self._release.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        body = self.raw if self.raw is not None else json.dumps(self.document).encode()
        return web.Response(body=body, status=self.status, content_type="application/json")

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/jwks.json", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/jwks.json"

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()


@pytest.fixture
async def idp() -> AsyncIterator[FakeIdp]:
    provider = FakeIdp()
    await provider.start()
    yield provider
    await provider.stop()


async def jwks_server(start: StartServer, sqlite_url: str, idp: FakeIdp, **kw: Any) -> ServerHandle:
    kw.setdefault("jwks_min_refresh_s", 0.0)
    return await start(sqlite_url, jwt_secret=None, jwks_url=idp.url, **kw)


async def credit(server: ServerHandle, tok: str) -> tuple[int, str | None]:
    """POST a service credit with `tok`: the status and the error message, if any."""
    status, body = await server.post("/scores/update", service_update("alice", 1), tok)
    if status == 401:
        assert body["error"]["code"] == "invalid_token", body
    return status, body.get("error", {}).get("message")


# -- selection by kid over HTTP and WebSocket ----------------------------


async def test_each_kid_selects_its_key(start: StartServer, sqlite_url: str, idp: FakeIdp) -> None:
    r1, e1, d1 = Signer("rsa", "r1"), Signer("ec", "e1"), Signer("ed", "d1")
    idp.publish(r1, e1, d1)
    server = await jwks_server(start, sqlite_url, idp)
    for signer in (r1, e1, d1):
        assert await credit(server, signer.token()) == (200, None)
    player = e1.token("bob", role=Role.PLAYER)
    status, started = await server.post("/api/actions", {"type": "default"}, player)
    assert status == 201, started
    # A key that names another's kid does not verify with it.
    assert await credit(server, Signer("ec", "e1").token()) == (401, "The token's signature does not verify.")
    assert idp.fetches == 1


async def test_websocket_upgrade_with_a_jwks_token(start: StartServer, sqlite_url: str, idp: FakeIdp) -> None:
    e1 = Signer("ec", "e1")
    idp.publish(e1)
    server = await jwks_server(start, sqlite_url, idp)
    ws = await server.session.ws_connect(server.ws_url, headers=bearer(e1.token()))
    await ws.send_json({"type": "score.update", "id": 1, **service_update("sock", 3)})
    while (reply := await ws.receive_json(timeout=5))["type"] != "ack":
        pass
    assert (reply["id"], reply["newScore"]) == (1, 3)
    await ws.close()
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await server.session.ws_connect(server.ws_url, headers=bearer(Signer("ec", "e1").token()))
    assert info.value.status == 401
    # The upgrade waits for the refresh a new kid asks for.
    e2 = Signer("ed", "e2")
    idp.publish(e1, e2)
    ws = await server.session.ws_connect(server.ws_url, headers=bearer(e2.token()))
    await ws.close()
    assert idp.fetches == 2
    # So does an in-band auth message.
    e3 = Signer("ec", "e3")
    idp.publish(e3)
    ws = await server.session.ws_connect(server.ws_url)
    await ws.send_json({"type": "auth", "id": "a", "token": e3.token("carol", role=Role.PLAYER)})
    while (reply := await ws.receive_json(timeout=5))["type"] not in ("auth", "error"):
        pass
    assert (reply["type"], reply["userId"]) == ("auth", "carol")
    await ws.close()
    assert idp.fetches == 3


# -- rotation ------------------------------------------------------------


async def test_new_kid_fetches_the_set_once_and_is_accepted(
    start: StartServer, sqlite_url: str, idp: FakeIdp
) -> None:
    k1, k2 = Signer("ec", "k1"), Signer("ed", "k2")
    idp.publish(k1)
    server = await jwks_server(start, sqlite_url, idp)
    assert idp.fetches == 1
    idp.publish(k1, k2)  # the provider rotates: a new key signs from now on
    assert await credit(server, k2.token()) == (200, None)
    assert idp.fetches == 2
    assert await credit(server, k2.token()) == (200, None)
    assert await credit(server, k1.token()) == (200, None)
    assert idp.fetches == 2


async def test_a_storm_of_new_kid_tokens_shares_one_fetch(
    start: StartServer, sqlite_url: str, idp: FakeIdp
) -> None:
    k1, k2 = Signer("ec", "k1"), Signer("ec", "k2")
    idp.publish(k1)
    server = await jwks_server(start, sqlite_url, idp, jwks_min_refresh_s=10.0)
    idp.publish(k1, k2)
    idp.delay_s = 0.2  # every request arrives while the one fetch is under way
    results = await asyncio.gather(*(credit(server, k2.token(f"u{i}")) for i in range(50)))
    assert results == [(200, None)] * 50
    assert idp.fetches == 2


async def test_a_storm_of_unknown_kids_fetches_at_most_once_then_401(
    start: StartServer, sqlite_url: str, idp: FakeIdp
) -> None:
    k1 = Signer("ec", "k1")
    idp.publish(k1)
    server = await jwks_server(start, sqlite_url, idp, jwks_min_refresh_s=10.0)
    strangers = [Signer("ec", f"nope-{i}") for i in range(5)]
    results = await asyncio.gather(*(credit(server, strangers[i % 5].token()) for i in range(50)))
    assert results == [(401, UNKNOWN_KID)] * 50
    assert idp.fetches == 2
    # Within jwks_min_refresh_s a new key waits for the periodic refresh.
    k2 = Signer("ec", "k2")
    idp.publish(k1, k2)
    assert await credit(server, k2.token()) == (401, UNKNOWN_KID)
    assert await credit(server, k1.token()) == (200, None)
    assert idp.fetches == 2


async def test_a_removed_key_is_refused_even_for_cached_tokens(
    start: StartServer, sqlite_url: str, idp: FakeIdp
) -> None:
    k1, k2, k3 = Signer("ec", "k1"), Signer("ec", "k2"), Signer("ed", "k3")
    idp.publish(k1, k2)
    server = await jwks_server(start, sqlite_url, idp)
    old, kept = k1.token(), k2.token()
    assert await credit(server, old) == (200, None)  # now in the token cache
    assert await credit(server, kept) == (200, None)
    idp.publish(k2, k3)  # k1 is retired (say, leaked)
    assert await credit(server, k3.token()) == (200, None)
    assert await credit(server, old) == (401, UNKNOWN_KID)
    assert await credit(server, k1.token()) == (401, UNKNOWN_KID)
    assert await credit(server, kept) == (200, None)


async def test_periodic_refresh_picks_up_changes(start: StartServer, sqlite_url: str, idp: FakeIdp) -> None:
    k1, k2 = Signer("ec", "k1"), Signer("ec", "k2")
    idp.publish(k1, k2)
    server = await jwks_server(start, sqlite_url, idp, jwks_refresh_s=0.1, jwks_min_refresh_s=3600.0)
    cached = k1.token()
    assert await credit(server, cached) == (200, None)
    idp.publish(k2)
    # No unknown kid asks for it: only the periodic refresh can revoke the cached token.
    for _ in range(60):
        result = await credit(server, cached)
        if result != (200, None):
            break
        await asyncio.sleep(0.05)
    assert result == (401, UNKNOWN_KID)
    assert idp.fetches >= 2


@pytest.mark.parametrize("failure", ["down", "http 500", "garbage", "no usable key", "too large"])
async def test_a_failed_refresh_keeps_the_last_good_keys(
    start: StartServer,
    sqlite_url: str,
    idp: FakeIdp,
    caplog: pytest.LogCaptureFixture,
    failure: str,
) -> None:
    k1 = Signer("ec", "k1")
    idp.publish(k1)
    server = await jwks_server(start, sqlite_url, idp)
    if failure == "down":
        await idp.stop()
    elif failure == "http 500":
        idp.status = 500
    elif failure == "garbage":
        idp.raw = b"<html>maintenance</html>"
    elif failure == "no usable key":
        idp.publish(extra=({"kty": "oct", "kid": "s", "k": "c2VjcmV0" * 8},))
    else:
        idp.raw = b'{"keys": [], "pad": "' + b"x" * (1024 * 1024) + b'"}'
    assert await credit(server, Signer("ec", "k2").token()) == (401, UNKNOWN_KID)
    assert await credit(server, k1.token()) == (200, None)
    [record] = [r for r in caplog.records if r.getMessage() == "jwks_fetch_failed"]
    fields = record.fields  # type: ignore[attr-defined]
    assert fields["trigger"] == "unknown_kid" and fields["kept_kids"] == ["k1"]
    assert fields["source"] == idp.url and fields["error"]


@pytest.mark.parametrize("problem", ["hang", "too large"])
async def test_fetch_is_bounded_in_time_and_size(idp: FakeIdp, problem: str) -> None:
    k1 = Signer("ec", "k1")
    idp.publish(k1)
    keys = JwksKeys(idp.url, timeout_s=0.3, max_bytes=4096, min_refresh_s=0)
    await keys.start()
    try:
        first = keys.keys
        assert first.kids == ("k1",)
        idp.hang = problem == "hang"
        idp.publish(k1, extra=tuple({"kty": "EC", "kid": f"pad{i}"} for i in range(200)))
        started = time.monotonic()
        await keys.refresh()
        assert time.monotonic() - started < 2
        assert keys.keys is first
    finally:
        await keys.close()
        await keys.close()  # idempotent


async def test_an_unreachable_provider_at_start_refuses_to_start(
    start: StartServer, sqlite_url: str, idp: FakeIdp
) -> None:
    idp.status = 503
    with pytest.raises(ConfigError, match=r"SCOREBOARD_JWKS_URL=.*first load.*HTTP 503"):
        await jwks_server(start, sqlite_url, idp)
    await idp.stop()
    with pytest.raises(ConfigError, match="SCOREBOARD_JWKS_URL"):
        await jwks_server(start, sqlite_url, idp)


# -- key choice and algorithm pinning ---------------------------------------


def _b64(obj: object) -> str:
    return jwt.utils.base64url_encode(json.dumps(obj).encode()).decode()


async def test_token_without_kid_needs_exactly_one_usable_key(
    start: StartServer, sqlite_url: str, idp: FakeIdp
) -> None:
    e1, e2, r1 = Signer("ec", "e1"), Signer("ec", "e2"), Signer("rsa", "r1")
    idp.publish(e1, e2, r1)
    server = await jwks_server(start, sqlite_url, idp)
    assert await credit(server, e1.token(kid=None)) == (
        401,
        "The token names no key id ('kid'), and more than one key could have signed it.",
    )
    assert await credit(server, r1.token(kid=None)) == (200, None)  # the only RS256 key
    idp.publish(e1)
    assert await credit(server, Signer("ec", "rotate").token()) == (401, UNKNOWN_KID)  # refreshes
    assert await credit(server, e1.token(kid=None)) == (200, None)


async def test_algorithms_are_pinned_by_the_jwk(start: StartServer, sqlite_url: str, idp: FakeIdp) -> None:
    pss, rs = Signer("rsa", "pss"), Signer("rsa", "rs", rsa_index=1)
    idp.publish(extra=(pss.jwk(alg="PS256"), rs.jwk()))
    server = await jwks_server(start, sqlite_url, idp)
    refused = (401, "The token's signing algorithm is not accepted.")
    assert await credit(server, pss.token(alg="PS256")) == (200, None)
    assert await credit(server, pss.token(alg="RS256")) == refused
    assert await credit(server, rs.token(alg="PS384")) == (200, None)
    # Key confusion: HS256 "signed" with the RSA public key's bytes, under its kid.
    pem = rs.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    claims = {"sub": "x", "exp": int(time.time()) + 60, "role": "service"}
    signed = f"{_b64({'alg': 'HS256', 'kid': 'rs'})}.{_b64(claims)}"
    mac = hmac.new(pem, signed.encode(), hashlib.sha256).digest()
    confused = f"{signed}.{jwt.utils.base64url_encode(mac).decode()}"
    assert await credit(server, confused) == refused
    unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": "rs"})
    assert await credit(server, unsigned) == refused


async def test_symmetric_and_non_signing_keys_from_a_url_are_ignored(
    start: StartServer, sqlite_url: str, idp: FakeIdp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scoreboard.jwks")
    secret = b"a-shared-secret-that-is-long-enough-1234"
    e1, enc, wrap = Signer("ec", "e1"), Signer("ec", "enc"), Signer("ec", "wrap")
    idp.publish(
        e1,
        extra=(
            {"kty": "oct", "kid": "hs", "k": jwt.utils.base64url_encode(secret).decode()},
            enc.jwk(use="enc"),
            wrap.jwk(key_ops=["encrypt"], use=None),
        ),
    )
    server = await jwks_server(start, sqlite_url, idp)
    hs = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, secret, "HS256", headers={"kid": "hs"})
    assert await credit(server, hs) == (401, UNKNOWN_KID)
    assert await credit(server, enc.token()) == (401, UNKNOWN_KID)
    assert await credit(server, wrap.token()) == (401, UNKNOWN_KID)
    assert await credit(server, e1.token()) == (200, None)
    [loaded] = [r for r in caplog.records if r.getMessage() == "jwks_updated"]
    skipped = loaded.fields["skipped"]  # type: ignore[attr-defined]
    assert len(skipped) == 3 and "never from a URL" in skipped[0]


# -- a JWKS file -------------------------------------------------------------


async def test_jwks_file_rotates_by_rewriting_it(start: StartServer, sqlite_url: str, tmp_path: Path) -> None:
    secret = b"a-shared-secret-that-is-long-enough-1234"
    oct_key = {"kty": "oct", "kid": "hs1", "k": jwt.utils.base64url_encode(secret).decode()}
    e1, e2 = Signer("ec", "e1"), Signer("ed", "e2")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [oct_key, e1.jwk()]}))
    server = await start(sqlite_url, jwt_secret=None, jwks_file=path, jwks_min_refresh_s=0.0)

    def hs_token() -> str:
        claims = {"sub": "b", "exp": int(time.time()) + 60, "role": "service", "jti": uuid.uuid4().hex}
        return jwt.encode(claims, secret, "HS256", headers={"kid": "hs1"})

    assert await credit(server, hs_token()) == (200, None)  # symmetric keys are fine in a file
    assert await credit(server, e1.token()) == (200, None)
    path.write_text(json.dumps({"keys": [e2.jwk()]}))
    assert await credit(server, e2.token()) == (200, None)
    assert await credit(server, hs_token()) == (401, UNKNOWN_KID)
    path.write_text("{not json")  # a bad edit keeps the keys in use
    assert await credit(server, Signer("ec", "e3").token()) == (401, UNKNOWN_KID)
    assert await credit(server, e2.token()) == (200, None)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "No such file or directory"),
        ("{not json", "not valid JSON"),
        ('{"kid": "x"}', "'keys' array"),
        ('{"keys": [{"kty": "RSA", "kid": "r", "n": "AQAB", "e": "AQAB"}]}', "no usable signing key; key 0"),
        ('{"keys": [{"kty": "EC", "crv": "P-256K", "x": "", "y": ""}]}', "unsupported EC curve"),
    ],
)
async def test_a_bad_jwks_file_refuses_to_start(
    start: StartServer, sqlite_url: str, tmp_path: Path, content: str | None, problem: str
) -> None:
    path = tmp_path / "jwks.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match="SCOREBOARD_JWKS_FILE") as info:
        await start(sqlite_url, jwt_secret=None, jwks_file=path)
    assert problem in str(info.value)


def test_a_jwks_configuration_has_no_hs256_secret(tmp_path: Path) -> None:
    # `scoreboard token` signs with jwt_secret only: None says tokens come from the provider.
    url = Settings(data_dir=tmp_path, jwt_secret=None, jwks_url="https://id.example/jwks.json")
    assert resolve_secrets(url).jwt_secret is None
    assert resolve_secrets(url).jwt_keys.keys == ()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [Signer("ed", "d1").jwk()]}))
    from_file = resolve_secrets(Settings(data_dir=tmp_path, jwks_file=path))
    assert from_file.jwt_secret is None and from_file.jwt_keys.kids == ("d1",)


# -- the pure rules, without a server ----------------------------------------


def test_jwk_rules() -> None:
    e384 = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()).public_key(), as_dict=True)
    private = Signer("ec", "p").jwk() | {"d": "AAAA"}
    small = RSAAlgorithm.to_jwk(
        rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key(), as_dict=True
    )
    doc = {
        "keys": [
            e384 | {"kid": "e384"},
            private,
            small | {"kid": "small"},
            e384 | {"kid": "bad-alg", "alg": "ES256"},
            e384 | {"kid": "e384"},
            "not a key",
        ]
    }
    keys = KeySet.from_jwks(json.dumps(doc), allow_symmetric=False)
    assert keys.kids == ("e384",)
    assert keys.keys[0].algorithms == ("ES384",)  # the curve fixes the algorithm
    assert [s.split(":")[0] for s in keys.skipped] == [
        "key 1 (kid 'p')",
        "key 2 (kid 'small')",
        "key 3 (kid 'bad-alg')",
        "key 4 (kid 'e384')",
        "key 5",
    ]
    assert "private key material" in keys.skipped[0]
    assert "at least 2048" in keys.skipped[1]
    assert "does not fit" in keys.skipped[2]
    assert keys.select("e384", "ES384") is keys.keys[0]
    with pytest.raises(UnknownKeyId):
        keys.select("other", "ES384")
    with pytest.raises(ScoreboardError) as info:
        keys.select("e384", "ES256")
    assert info.value.code is Code.INVALID_TOKEN
    with pytest.raises(ValueError, match="larger than 10 bytes"):
        KeySet.from_jwks(json.dumps(doc), allow_symmetric=False, max_bytes=10)
