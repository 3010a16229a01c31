"""JWT checks and the verified-token cache, with a fake clock."""

from __future__ import annotations

import base64
import json

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from scoreboard.errors import Code, ScoreboardError
from scoreboard.tokens import Identity, Role, TokenVerifier, VerificationKey, bearer_token, mint_token
from tests.helpers import FakeClock

SECRET = b"s" * 32
NOW = 1_800_000_000.0


def verifier(clock: FakeClock, key: VerificationKey | None = None, **kw: object) -> TokenVerifier:
    return TokenVerifier(key or VerificationKey.from_secret(SECRET), clock=clock, leeway_s=0, **kw)  # type: ignore[arg-type]


def code_of(v: TokenVerifier, tok: str) -> Code:
    with pytest.raises(ScoreboardError) as info:
        v.verify(tok)
    return info.value.code


def test_valid_token_gives_identity() -> None:
    v = verifier(FakeClock(NOW))
    tok = mint_token(SECRET, sub="alice", now=NOW, ttl_s=60, name="Alice")
    assert v.verify(tok) == Identity("alice", "Alice", Role.PLAYER, NOW + 60)
    svc = mint_token(SECRET, sub="backend", now=NOW, ttl_s=60, role=Role.SERVICE)
    assert v.verify(svc).role is Role.SERVICE


def test_preferred_username_is_the_fallback_display_name() -> None:
    v = verifier(FakeClock(NOW))
    tok = jwt.encode({"sub": "u", "exp": NOW + 60, "preferred_username": "Yu"}, SECRET, algorithm="HS256")
    assert v.verify(tok).name == "Yu"


def test_expired_and_not_yet_valid_are_refused() -> None:
    clock = FakeClock(NOW)
    v = verifier(clock)
    assert code_of(v, mint_token(SECRET, sub="a", now=NOW - 120, ttl_s=60)) is Code.TOKEN_EXPIRED
    early = jwt.encode({"sub": "a", "exp": NOW + 600, "nbf": NOW + 300}, SECRET, algorithm="HS256")
    assert code_of(v, early) is Code.INVALID_TOKEN
    clock.advance(301)
    assert v.verify(early).user_id == "a"


def test_cached_token_expires_exactly_at_exp() -> None:
    clock = FakeClock(NOW)
    v = verifier(clock)
    tok = mint_token(SECRET, sub="a", now=NOW, ttl_s=10)
    assert v.verify(tok).user_id == "a"
    clock.advance(9.9)
    assert v.verify(tok).user_id == "a"  # served from the cache
    clock.advance(0.1)
    assert code_of(v, tok) is Code.TOKEN_EXPIRED


def test_cache_is_bounded() -> None:
    clock = FakeClock(NOW)
    v = verifier(clock, cache_size=3)
    tokens = [mint_token(SECRET, sub=f"u{i}", now=NOW, ttl_s=60) for i in range(10)]
    for tok in tokens:
        v.verify(tok)
    assert len(v._cache) == 3
    assert list(v._cache) == tokens[-3:]


def _none_alg(claims: dict[str, object]) -> str:
    def seg(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{seg({'alg': 'none', 'typ': 'JWT'})}.{seg(claims)}."


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("alg none", lambda: _none_alg({"sub": "a", "exp": NOW + 60})),
        ("wrong secret", lambda: mint_token(b"x" * 32, sub="a", now=NOW, ttl_s=60)),
        ("malformed", lambda: "not.a.jwt"),
        ("garbage", lambda: "%%%%"),
        ("no exp", lambda: jwt.encode({"sub": "a"}, SECRET, algorithm="HS256")),
        ("no sub", lambda: jwt.encode({"exp": NOW + 60}, SECRET, algorithm="HS256")),
        ("empty sub", lambda: jwt.encode({"sub": "", "exp": NOW + 60}, SECRET, algorithm="HS256")),
        ("long sub", lambda: jwt.encode({"sub": "a" * 129, "exp": NOW + 60}, SECRET, algorithm="HS256")),
        ("bool exp", lambda: jwt.encode({"sub": "a", "exp": True}, SECRET, algorithm="HS256")),
        (
            "bad role",
            lambda: jwt.encode({"sub": "a", "exp": NOW + 60, "role": "root"}, SECRET, algorithm="HS256"),
        ),
        ("oversized", lambda: mint_token(SECRET, sub="a", now=NOW, ttl_s=60, extra={"pad": "x" * 5000})),
        ("tampered", lambda: _tamper(mint_token(SECRET, sub="a", now=NOW, ttl_s=60))),
    ],
)
def test_forged_and_malformed_tokens_are_refused(name: str, make: object) -> None:
    v = verifier(FakeClock(NOW))
    assert code_of(v, make()) is Code.INVALID_TOKEN, name  # type: ignore[operator]


def _tamper(tok: str) -> str:
    header, payload, sig = tok.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "mallory"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{sig}"


def test_issuer_and_audience_are_checked_when_configured() -> None:
    v = verifier(FakeClock(NOW), issuer="https://id.example", audience="scoreboard")
    good = mint_token(SECRET, sub="a", now=NOW, ttl_s=60, issuer="https://id.example", audience="scoreboard")
    assert v.verify(good).user_id == "a"
    for iss, aud in (("https://evil.example", "scoreboard"), ("https://id.example", "other"), (None, None)):
        tok = mint_token(SECRET, sub="a", now=NOW, ttl_s=60, issuer=iss, audience=aud)
        assert code_of(v, tok) is Code.INVALID_TOKEN


def _pem(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_public_key_pins_the_algorithm_family() -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = _pem(private.public_key())
    key = VerificationKey.from_public_pem(pem)
    v = verifier(FakeClock(NOW), key)
    good = jwt.encode({"sub": "a", "exp": NOW + 60}, private, algorithm="RS256")
    assert v.verify(good).user_id == "a"
    # Key confusion: an HS256 token "signed" with the public key as a secret.
    confused = jwt.encode({"sub": "a", "exp": NOW + 60}, b"k" * 32, algorithm="HS256")
    assert code_of(v, confused) is Code.INVALID_TOKEN
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert (
        code_of(v, jwt.encode({"sub": "a", "exp": NOW + 60}, other, algorithm="RS256")) is Code.INVALID_TOKEN
    )


def test_ec_and_ed25519_keys_get_their_families() -> None:
    assert VerificationKey.from_public_pem(
        _pem(ec.generate_private_key(ec.SECP256R1()).public_key())
    ).algorithms == (
        "ES256",
        "ES384",
        "ES512",
    )
    ed = ed25519.Ed25519PrivateKey.generate()
    key = VerificationKey.from_public_pem(_pem(ed.public_key()))
    assert key.algorithms == ("EdDSA",)
    v = verifier(FakeClock(NOW), key)
    assert v.verify(jwt.encode({"sub": "e", "exp": NOW + 60}, ed, algorithm="EdDSA")).user_id == "e"


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        VerificationKey.from_secret(b"short")


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer", "Bearer   ", "token abc"])
def test_bearer_header_shape(header: str | None) -> None:
    with pytest.raises(ScoreboardError) as info:
        bearer_token(header)
    assert info.value.code is Code.UNAUTHORIZED


def test_bearer_header_value() -> None:
    assert bearer_token("Bearer abc.def") == "abc.def"
    assert bearer_token("bearer  abc") == "abc"
