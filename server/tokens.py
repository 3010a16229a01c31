"""Bearer-token checks: JWT verification pinned to the configured keys, and a
bounded cache of verified tokens.

The adapter around the JWT library (what a token proves, `Identity`, is in
the pure core: identity.py). The clock is a parameter, and pyjwt only
checks signatures and claim shapes here; expiry and not-before are checked against the given clock so
tests can move time and the cache can expire entries exactly at `exp`.

Keys come as a `KeySet`: one key (the HS256 secret or a PEM public key), or
the keys of a JWKS document (RFC 7517) chosen by the token header's `kid`.
Every key carries the only algorithms accepted with it, fixed by its type
(and by a JWK's `alg`), so a token cannot pick how it is checked. Where a
changing set comes from (a file, an identity provider) is a `KeySource`;
fetching one is I/O and lives in jwks.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .errors import Code, ScoreboardError
from .identity import Identity, Role
from .text import clean_text, text_problem
from .tickets import MIN_SECRET_BYTES

HMAC_ALGORITHMS = ("HS256",)
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = ("ES256", "ES384", "ES512")
EDDSA_ALGORITHMS = ("EdDSA",)
# A JWK's curve fixes its one ECDSA algorithm (RFC 7518 section 3.4).
_EC_CURVES = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
# The public members of each key type (RFC 7518 section 6); nothing else is read.
_PUBLIC_MEMBERS = {"RSA": ("n", "e"), "EC": ("crv", "x", "y"), "OKP": ("crv", "x"), "oct": ("k",)}
MIN_RSA_BITS = 2048
MAX_JWKS_BYTES = 1024 * 1024
MAX_ID_CHARS = 128


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A key, the only algorithms accepted with it, and its key id (JWKS keys only)."""

    key: Any
    algorithms: tuple[str, ...]
    kid: str | None = None

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
            algorithms = RSA_ALGORITHMS
        elif isinstance(key, ec.EllipticCurvePublicKey):
            algorithms = EC_ALGORITHMS
        elif isinstance(key, ed25519.Ed25519PublicKey):
            algorithms = EDDSA_ALGORITHMS
        else:
            raise ValueError(f"unsupported public key type {type(key).__name__}")
        return cls(key, algorithms)

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any], *, allow_symmetric: bool) -> VerificationKey:
        """A signature-verification key from one JWK; ValueError says why it cannot be one.

        The algorithms are those of the key's type (RSA: RS*/PS*; EC: the
        ES* of its curve; OKP Ed25519: EdDSA; oct: HS256), narrowed to its
        `alg` member when present. Keys for another `use`, `key_ops` without
        `verify`, keys with private members, and symmetric keys unless
        `allow_symmetric` are refused.
        """
        kid = jwk.get("kid")
        if kid is not None and (not isinstance(kid, str) or not kid):
            raise ValueError("'kid' must be a non-empty string")
        use = jwk.get("use")
        if use is not None and use != "sig":
            raise ValueError(f"'use' is {_short(use)}, not 'sig'")
        ops = jwk.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            raise ValueError("'key_ops' does not include 'verify'")
        kty = jwk.get("kty")
        family = _family(jwk, allow_symmetric=allow_symmetric)
        if kty != "oct" and "d" in jwk:
            raise ValueError("it holds private key material ('d'); publish only the public key")
        alg = jwk.get("alg")
        if alg is not None:
            if alg not in family:
                raise ValueError(
                    f"'alg' {_short(alg)} does not fit a {kty} key (allowed: {', '.join(family)})"
                )
            family = (alg,)
        public = {name: jwk[name] for name in ("kty", *_PUBLIC_MEMBERS[str(kty)]) if name in jwk}
        try:
            key = jwt.PyJWK(public, algorithm=family[0]).key
        except (jwt.PyJWTError, TypeError, ValueError, KeyError, AttributeError) as exc:
            raise ValueError(f"not a valid {kty} key ({exc})") from None
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
            raise ValueError(f"RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} are required")
        if isinstance(key, bytes) and len(key) < MIN_SECRET_BYTES:
            raise ValueError(f"symmetric key shorter than {MIN_SECRET_BYTES} bytes")
        return cls(key, family, kid)


def _family(jwk: Mapping[str, Any], *, allow_symmetric: bool) -> tuple[str, ...]:
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if kty == "RSA":
        return RSA_ALGORITHMS
    if kty == "EC":
        if crv not in _EC_CURVES:
            raise ValueError(f"unsupported EC curve {_short(crv)} (use P-256, P-384 or P-521)")
        return (_EC_CURVES[crv],)
    if kty == "OKP":
        if crv != "Ed25519":
            raise ValueError(f"unsupported OKP curve {_short(crv)} (use Ed25519)")
        return EDDSA_ALGORITHMS
    if kty == "oct":
        if not allow_symmetric:
            raise ValueError("symmetric ('oct') keys are accepted only from a file, never from a URL")
        return HMAC_ALGORITHMS
    raise ValueError(f"unsupported 'kty' {_short(kty)}")


def _short(value: object) -> str:
    """A value from a document, quoted and cut for an error message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class UnknownKeyId(ScoreboardError):
    """The token names a key id that is not in the current key set."""

    def __init__(self) -> None:
        super().__init__(Code.INVALID_TOKEN, "The token's key id is not known.")


@dataclass(frozen=True, slots=True)
class KeySet:
    """The keys tokens may be signed with, chosen by the token header's `kid` and `alg`.

    A set `by_kid` (from a JWKS) picks the key whose `kid` the token names;
    a token without `kid` is accepted only when exactly one key accepts its
    `alg`. A single configured key (`KeySet.single`) ignores `kid`.
    `skipped` says which JWKS members were not usable and why (for logs).
    """

    keys: tuple[VerificationKey, ...]
    by_kid: bool = True
    skipped: tuple[str, ...] = ()

    @classmethod
    def single(cls, key: VerificationKey) -> KeySet:
        """Just `key`, whatever `kid` a token names."""
        return cls((key,), by_kid=False)

    @classmethod
    def from_jwks(
        cls, document: bytes | str, *, allow_symmetric: bool, max_bytes: int = MAX_JWKS_BYTES
    ) -> KeySet:
        """The usable signing keys of a JWKS document; ValueError when there are none.

        Unusable members are skipped (and listed in `skipped`), so one odd
        key from an identity provider does not stop the others from working.
        """
        if len(document) > max_bytes:
            raise ValueError(f"the document is larger than {max_bytes} bytes")
        try:
            doc = orjson.loads(document)
        except orjson.JSONDecodeError:
            raise ValueError("the document is not valid JSON") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise ValueError("a JWKS must be a JSON object with a 'keys' array")
        keys: list[VerificationKey] = []
        skipped: list[str] = []
        for index, jwk in enumerate(doc["keys"]):
            label = f"key {index}"
            try:
                if not isinstance(jwk, dict):
                    raise ValueError("not a JSON object")
                if isinstance(jwk.get("kid"), str):
                    label += f" (kid {_short(jwk['kid'])})"
                key = VerificationKey.from_jwk(jwk, allow_symmetric=allow_symmetric)
                if any(k.kid == key.kid and set(k.algorithms) & set(key.algorithms) for k in keys):
                    raise ValueError("an earlier key has the same kid and algorithms")
            except ValueError as exc:
                skipped.append(f"{label}: {exc}")
                continue
            keys.append(key)
        if not keys:
            raise ValueError("no usable signing key" + "".join(f"; {s}" for s in skipped))
        return cls(tuple(keys), by_kid=True, skipped=tuple(skipped))

    @property
    def kids(self) -> tuple[str | None, ...]:
        """The key ids, in document order (None for a key without one)."""
        return tuple(k.kid for k in self.keys)

    def select(self, kid: str | None, alg: str) -> VerificationKey:
        """The key to check a token with header `kid` and `alg`; ScoreboardError if none.

        Raises UnknownKeyId when the set has no key named `kid`: the caller
        may fetch a newer set and try again.
        """
        if self.by_kid and kid is not None:
            named = [k for k in self.keys if k.kid == kid]
            if not named:
                raise UnknownKeyId
            candidates = [k for k in named if alg in k.algorithms]
        else:
            candidates = [k for k in self.keys if alg in k.algorithms]
        if not candidates:
            raise _refuse("The token's signing algorithm is not accepted.")
        if len(candidates) > 1:
            raise _refuse("The token names no key id ('kid'), and more than one key could have signed it.")
        return candidates[0]


class KeySource(Protocol):
    """Where a verifier's keys come from when they can change (see jwks.py)."""

    @property
    def keys(self) -> KeySet:
        """The current set; replaced as a whole, never changed in place."""
        ...

    async def refresh(self) -> None:
        """Look for newer keys after a token named an unknown kid.

        Returns when `keys` is as new as it will get for now (the source may
        skip the fetch to limit its rate); never raises but for cancellation.
        """
        ...


class _FixedKeys:
    """A KeySource that never changes: the HS256 secret or a PEM public key."""

    def __init__(self, keys: KeySet) -> None:
        self.keys = keys

    async def refresh(self) -> None:
        return None


def _refuse(message: str, code: Code = Code.INVALID_TOKEN) -> ScoreboardError:
    return ScoreboardError(code, message)


MAX_TIME_CLAIM = 2**53  # seconds; beyond it a float loses whole seconds (and int -> float overflows)


def _number(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refuse(f"The '{name}' claim must be a number.")
    # NaN would compare false with every time (a token that never expires),
    # and a huge integer overflows float().
    if not -MAX_TIME_CLAIM <= value <= MAX_TIME_CLAIM:
        raise _refuse(f"The '{name}' claim must be a finite number of seconds up to 2^53.")
    return float(value)


def _text(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not value
        or len(value) > MAX_ID_CHARS
        or text_problem(value) is not None
    ):
        raise _refuse(
            f"The '{name}' claim must be a string of 1 to {MAX_ID_CHARS} characters "
            "without control or format characters."
        )
    return value


def _display_name(claims: dict[str, Any]) -> str | None:
    # A long or odd display name is not a reason to refuse an identity
    # provider's token: take the first usable one, cleaned of characters
    # that may not be stored or shown (text.py), cut to the column size.
    for claim in ("name", "preferred_username"):
        value = claims.get(claim)
        if isinstance(value, str):
            cleaned = clean_text(value, MAX_ID_CHARS)
            if cleaned is not None:
                return cleaned
    return None


class TokenVerifier:
    """Verifies bearer tokens and caches the verified ones until their `exp`.

    The cache key is the whole token string, so only a byte-identical token
    can hit it; the cache holds at most `cache_size` entries and evicts the
    oldest first. When the key set changes, tokens verified with a key that
    left it are dropped from the cache: removing a key revokes its tokens.
    """

    def __init__(
        self,
        keys: VerificationKey | KeySet | KeySource,
        *,
        clock: Callable[[], float],
        issuer: str | None = None,
        audience: str | None = None,
        leeway_s: float = 10.0,
        max_bytes: int = 4096,
        cache_size: int = 10_000,
    ) -> None:
        if isinstance(keys, VerificationKey):
            keys = KeySet.single(keys)
        self._source: KeySource = _FixedKeys(keys) if isinstance(keys, KeySet) else keys
        self._clock = clock
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_s
        self._max_bytes = max_bytes
        self._cache_size = cache_size
        self._cache: dict[str, tuple[Identity, VerificationKey]] = {}
        self._cached_with = self._source.keys

    async def authenticate(self, token: str) -> Identity:
        """The identity of a valid token: what the transports call.

        A token naming a key id the set does not have makes the key source
        look for newer keys (rate-limited, one fetch shared by concurrent
        callers), then the token is checked once more. Safe to call
        concurrently: the awaited refresh is the only suspension point.
        """
        try:
            return self.verify(token)
        except UnknownKeyId:
            await self._source.refresh()
        return self.verify(token)

    def verify(self, token: str) -> Identity:
        """The identity of a valid token with the current keys; raises ScoreboardError (401 codes).

        Never waits: an unknown key id is refused (UnknownKeyId) at once.
        """
        now = self._clock()
        keys = self._source.keys
        if keys is not self._cached_with:
            self._forget_revoked(keys)
        cached = self._cache.get(token)
        if cached is not None:
            identity = cached[0]
            if now < identity.expires_at + self._leeway:
                return identity
            del self._cache[token]
            raise _refuse("The token has expired.", Code.TOKEN_EXPIRED)
        identity, key = self._verify_uncached(token, now, keys)
        if self._cache_size > 0:
            if len(self._cache) >= self._cache_size:
                del self._cache[next(iter(self._cache))]
            self._cache[token] = (identity, key)
        return identity

    def _forget_revoked(self, keys: KeySet) -> None:
        # Equality, not identity: a refreshed set holds new objects for the
        # same keys. Every cached key equals one of the previous set's keys,
        # so comparing with the keys that left it is enough.
        gone = [k for k in self._cached_with.keys if k not in keys.keys]
        self._cached_with = keys
        if gone:
            for token in [t for t, (_, k) in self._cache.items() if k in gone]:
                del self._cache[token]

    def _verify_uncached(self, token: str, now: float, keys: KeySet) -> tuple[Identity, VerificationKey]:
        if len(token) > self._max_bytes:
            raise _refuse(f"The token is longer than {self._max_bytes} bytes.")
        if not token.isascii():  # a JWT is base64url and dots; a header may carry any byte
            raise _refuse("The token is malformed.")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _refuse("The token is malformed.") from None
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or not (kid is None or isinstance(kid, str)):
            raise _refuse("The token is malformed.")
        key = keys.select(kid, alg)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=list(key.algorithms),
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
        return self._identity(claims, now), key

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
            raise _refuse("The token's 'role' must be 'player', 'service' or 'admin'.") from None
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
