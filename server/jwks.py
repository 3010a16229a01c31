"""Token keys from a JWKS: an identity provider's URL or a file, kept fresh.

`JwksKeys` is the `KeySource` a `TokenVerifier` reads its keys from. It
loads the set at start, again every `refresh_s`, and at once when a token
names an unknown `kid` (at most every `min_refresh_s`; concurrent callers
share one fetch). Each good load replaces the `KeySet` as a whole; a failed
one (IdP down, HTTP 500, bad JSON, timeout, too large, no usable key) is
logged and the last good set stays. Parsing and key rules are pure and live
in tokens.py; this module only does the I/O and the timing.

A URL must answer within `timeout_s` with at most `max_bytes`; redirects are
not followed and symmetric keys are ignored (a shared secret has no business
being published). A file may hold symmetric keys; it is read by
`resolve_secrets` at start and re-read here, so an operator rotates keys by
editing it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
from aiohttp import web

from .config import ConfigError, Settings
from .tokens import MAX_JWKS_BYTES, KeySet

log = logging.getLogger("scoreboard.jwks")


class JwksError(Exception):
    """A load that gave no usable key set; the message says why."""


class JwksKeys:
    """The current keys of a JWKS URL or file, refreshed in the background.

    An async resource: `start()` loads the first set (a URL only, unless
    `keys` is given) and starts the periodic refresh; `close()` cancels it
    and closes the HTTP session, and may be called any number of times.
    """

    def __init__(
        self,
        source: str | Path,
        *,
        keys: KeySet | None = None,
        refresh_s: float = 300.0,
        min_refresh_s: float = 10.0,
        timeout_s: float = 5.0,
        max_bytes: int = MAX_JWKS_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._keys = keys if keys is not None else KeySet(())
        self._loaded = keys is not None
        self._refresh_s = refresh_s
        self._min_refresh_s = min_refresh_s
        self._timeout_s = timeout_s
        self._max_bytes = max_bytes
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._periodic: asyncio.Task[None] | None = None
        self._inflight: asyncio.Task[None] | None = None
        self._last_on_demand = -math.inf
        self._closed = False

    @property
    def keys(self) -> KeySet:
        """The last good key set (empty before a URL's first fetch)."""
        return self._keys

    @property
    def _variable(self) -> str:
        return "SCOREBOARD_JWKS_URL" if isinstance(self._source, str) else "SCOREBOARD_JWKS_FILE"

    async def start(self) -> None:
        """Load the first set unless given, then refresh every `refresh_s`.

        Raises ConfigError naming the setting when the first load fails: a
        server that cannot check any token should not look healthy.
        """
        if isinstance(self._source, str):
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
                headers={"Accept": "application/jwk-set+json, application/json"},
            )
        try:
            if self._loaded:
                _log_change(str(self._source), KeySet(()), self._keys, "start")
            else:
                try:
                    self._replace(await self._load(), "start")
                except JwksError as exc:
                    raise ConfigError(
                        f"{self._variable}={str(self._source)!r}: the first load of the token keys "
                        f"failed ({exc}); the server needs them to check tokens"
                    ) from None
            self._periodic = asyncio.create_task(self._refresh_periodically(), name="jwks-refresh")
        except BaseException:
            await self.close()
            raise

    async def refresh(self) -> None:
        """Load the set again because a token named an unknown kid.

        Joins a load already under way; otherwise loads unless one was made
        for this reason less than `min_refresh_s` ago. Never raises but for
        cancellation, which does not cancel the shared load.
        """
        if self._closed:
            return
        if self._inflight is None:
            now = self._clock()
            if now - self._last_on_demand < self._min_refresh_s:
                return
            self._last_on_demand = now
            self._begin("unknown_kid")
        assert self._inflight is not None
        await asyncio.wait((self._inflight,))

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop refreshing and close the HTTP session (idempotent)."""
        self._closed = True
        tasks = [t for t in (self._periodic, self._inflight) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        try:
            if tasks:
                await asyncio.wait(tasks, timeout=timeout_s)
        finally:
            session, self._session = self._session, None
            if session is not None:
                await session.close()

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        """The resource as an aiohttp `cleanup_ctx` entry."""
        await self.start()
        try:
            yield
        finally:
            await self.close()

    def _begin(self, trigger: str) -> None:
        self._inflight = asyncio.create_task(self._update(trigger), name=f"jwks-load-{trigger}")

    async def _refresh_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            if self._inflight is None:
                self._begin("periodic")
            assert self._inflight is not None
            await asyncio.wait((self._inflight,))

    async def _update(self, trigger: str) -> None:
        started = time.perf_counter()
        try:
            keys = await self._load()
        except JwksError as exc:
            log.warning(
                "jwks_fetch_failed",
                extra={
                    "fields": {
                        "source": str(self._source),
                        "trigger": trigger,
                        "error": str(exc),
                        "ms": round((time.perf_counter() - started) * 1000, 1),
                        "kept_kids": list(self._keys.kids),
                    }
                },
            )
        else:
            self._replace(keys, trigger)
        finally:
            self._inflight = None

    def _replace(self, keys: KeySet, trigger: str) -> None:
        old = self._keys
        if keys == old:
            # Keep the object the verifier already knows: nothing to revoke.
            log.debug("jwks_unchanged", extra={"fields": {"source": str(self._source), "trigger": trigger}})
            return
        self._keys = keys
        _log_change(str(self._source), old, keys, trigger)

    async def _load(self) -> KeySet:
        """The set the source holds now; JwksError says why there is none."""
        try:
            async with asyncio.timeout(self._timeout_s):
                if isinstance(self._source, str):
                    document = await self._fetch(self._source)
                else:
                    document = await asyncio.to_thread(_read, self._source, self._max_bytes)
            return KeySet.from_jwks(
                document, allow_symmetric=isinstance(self._source, Path), max_bytes=self._max_bytes
            )
        except TimeoutError:
            raise JwksError(f"no answer within {self._timeout_s:g} s") from None
        except JwksError:
            raise
        except ValueError as exc:  # from KeySet.from_jwks: the document's problem
            raise JwksError(str(exc)) from None
        except Exception as exc:  # connection refused or reset, unreadable file, ...
            raise JwksError(f"{type(exc).__name__}: {exc}") from None

    async def _fetch(self, url: str) -> bytes:
        assert self._session is not None, "start() first"
        async with self._session.get(url, allow_redirects=False) as resp:
            if resp.status != 200:
                hint = " (redirects are not followed: configure the final URL)" if resp.status < 400 else ""
                raise JwksError(f"HTTP {resp.status}{hint}")
            if resp.content_length is not None and resp.content_length > self._max_bytes:
                raise JwksError(f"the document is larger than {self._max_bytes} bytes")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > self._max_bytes:
                    raise JwksError(f"the document is larger than {self._max_bytes} bytes")
            return bytes(body)


def _log_change(source: str, old: KeySet, new: KeySet, trigger: str) -> None:
    log.info(
        "jwks_updated",
        extra={
            "fields": {
                "source": source,
                "trigger": trigger,
                "kids": list(new.kids),
                "added": [k.kid for k in new.keys if k not in old.keys],
                "removed": [k.kid for k in old.keys if k not in new.keys],
                "skipped": list(new.skipped),
            }
        },
    )


def _read(path: Path, max_bytes: int) -> bytes:
    # One byte more than allowed, so that KeySet.from_jwks can say it is too large.
    with path.open("rb") as file:
        return file.read(max_bytes + 1)


def jwks_keys(settings: Settings, keys: KeySet, *, timeout_s: float = 5.0) -> JwksKeys | None:
    """The refreshing key source the settings ask for, or None (one fixed key).

    `keys` is what `resolve_secrets` loaded: a JWKS file's keys, or nothing
    for a URL (fetched by `start()`).
    """
    if settings.jwks_url is not None:
        source: str | Path = settings.jwks_url
        initial = None
    elif settings.jwks_file is not None:
        source, initial = settings.jwks_file, keys
    else:
        return None
    return JwksKeys(
        source,
        keys=initial,
        refresh_s=settings.jwks_refresh_s,
        min_refresh_s=settings.jwks_min_refresh_s,
        timeout_s=timeout_s,
    )
