"""Bearer-token checks: JWT verification pinned to the configured key, and a
bounded cache of verified tokens.

Pure: the clock is a parameter, and pyjwt only checks signatures and claim
shapes here; expiry and not-before are checked against the given clock so
tests can move time and the cache can expire entries exactly at `exp`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .errors import Code, ScoreboardError

HMAC_ALGORITHMS = ("HS256",)
MIN_SECRET_BYTES = 32
MAX_ID_CHARS = 128


class Role(StrEnum):
    """What a token's holder may do."""

    PLAYER = "player"
    SERVICE = "service"


@dataclass(frozen=True, slots=True)
class Identity:
    """The verified claims a request acts with."""

    user_id: str
    name: str | None
    role: Role
    expires_at: float


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A key and the only algorithms accepted with it."""

    key: Any
    algorithms: tuple[str, ...]

    @classmethod
    def from_secret(cls, secret: bytes) -> VerificationKey:
        """An HMAC secret: accepts HS256 only."""
        if len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"JWT secret must be at least {MIN_SECRET_BYTES} bytes")
        return cls(secret, HMAC_ALGORITHMS)

    @classmethod
    def from_public_pem(cls, pem: bytes) -> VerificationKey:
        """A PEM public key: accepts only the family matching its type."""
        key = load_pem_public_key(pem)
        algorithms: tuple[str, ...]
        if isinstance(key, rsa.RSAPublicKey):
            algorithms = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
        elif isinstance(key, ec.EllipticCurvePublicKey):
            algorithms = ("ES256", "ES384", "ES512")
        elif isinstance(key, ed25519.Ed25519PublicKey):
            algorithms = ("EdDSA",)
        else:
            raise ValueError(f"unsupported public key type {type(key).__name__}")
        return cls(key, algorithms)


def _refuse(message: str, code: Code = Code.INVALID_TOKEN) -> ScoreboardError:
    return ScoreboardError(code, message)


def _number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refuse(f"The '{name}' claim must be a number.")
    return float(value)


def _text(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS:
        raise _refuse(f"The '{name}' claim must be a string of 1 to {MAX_ID_CHARS} characters.")
    return value


def _display_name(claims: dict[str, Any]) -> str | None:
    # A long or odd display name is not a reason to refuse an identity
    # provider's token: take the first usable one, cut to the column size.
    for claim in ("name", "preferred_username"):
        value = claims.get(claim)
        if isinstance(value, str) and value.strip():
            return value.strip()[:MAX_ID_CHARS]
    return None


class TokenVerifier:
    """Verifies bearer tokens and caches the verified ones until their `exp`.

    The cache key is the whole token string, so only a byte-identical token
    can hit it; the cache holds at most `cache_size` entries and evicts the
    oldest first.
    """

    def __init__(
        self,
        key: VerificationKey,
        *,
        clock: Callable[[], float],
        issuer: str | None = None,
        audience: str | None = None,
        leeway_s: float = 10.0,
        max_bytes: int = 4096,
        cache_size: int = 10_000,
    ) -> None:
        self._key = key
        self._clock = clock
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_s
        self._max_bytes = max_bytes
        self._cache_size = cache_size
        self._cache: dict[str, Identity] = {}

    def verify(self, token: str) -> Identity:
        """The identity of a valid token; raises ScoreboardError (401 codes) otherwise."""
        now = self._clock()
        cached = self._cache.get(token)
        if cached is not None:
            if now < cached.expires_at + self._leeway:
                return cached
            del self._cache[token]
            raise _refuse("The token has expired.", Code.TOKEN_EXPIRED)
        identity = self._verify_uncached(token, now)
        if self._cache_size > 0:
            if len(self._cache) >= self._cache_size:
                del self._cache[next(iter(self._cache))]
            self._cache[token] = identity
        return identity

    def _verify_uncached(self, token: str, now: float) -> Identity:
        if len(token) > self._max_bytes:
            raise _refuse(f"The token is longer than {self._max_bytes} bytes.")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key.key,
                algorithms=list(self._key.algorithms),
                issuer=self._issuer,
                audience=self._audience,
                options={
                    "require": ["exp", "sub"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": self._audience is not None,
                    "verify_iss": self._issuer is not None,
                },
            )
        except jwt.InvalidAlgorithmError:
            raise _refuse("The token's signing algorithm is not accepted.") from None
        except jwt.InvalidSignatureError:
            raise _refuse("The token's signature does not verify.") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _refuse(f"The token has no '{exc.claim}' claim.") from None
        except jwt.InvalidIssuerError:
            raise _refuse("The token's issuer is not accepted.") from None
        except jwt.InvalidAudienceError:
            raise _refuse("The token's audience is not accepted.") from None
        except jwt.PyJWTError:
            raise _refuse("The token is malformed.") from None
        return self._identity(claims, now)

    def _identity(self, claims: dict[str, Any], now: float) -> Identity:
        exp = _number(claims, "exp")
        nbf = _number(claims, "nbf")
        if exp is None:
            raise _refuse("The token has no 'exp' claim.")
        if now >= exp + self._leeway:
            raise _refuse("The token has expired.", Code.TOKEN_EXPIRED)
        if nbf is not None and now + self._leeway < nbf:
            raise _refuse("The token is not valid yet.")
        sub = _text(claims, "sub")
        if sub is None:
            raise _refuse("The token has no 'sub' claim.")
        name = _display_name(claims)
        role_claim = claims.get("role", Role.PLAYER.value)
        try:
            role = Role(role_claim)
        except ValueError:
            raise _refuse("The token's 'role' must be 'player' or 'service'.") from None
        return Identity(user_id=sub, name=name, role=role, expires_at=exp)


def mint_token(
    secret: bytes,
    *,
    sub: str,
    now: float,
    ttl_s: float,
    name: str | None = None,
    role: Role = Role.PLAYER,
    issuer: str | None = None,
    audience: str | None = None,
    extra: dict[str, Any] | None = None,
    algorithm: str = "HS256",
) -> str:
    """An HS256 token signed with `secret` (operators, tests, load tests)."""
    claims: dict[str, Any] = {"sub": sub, "iat": int(now), "exp": int(now + ttl_s)}
    if name is not None:
        claims["name"] = name
    if role is not Role.PLAYER:
        claims["role"] = role.value
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience
    claims.update(extra or {})
    return jwt.encode(claims, secret, algorithm=algorithm)


def bearer_token(header: str | None) -> str:
    """The token in an `Authorization: Bearer <token>` header value."""
    if not header:
        raise ScoreboardError(Code.UNAUTHORIZED, "An 'Authorization: Bearer <token>' header is required.")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ScoreboardError(Code.UNAUTHORIZED, "The Authorization header must use the Bearer scheme.")
    return token
