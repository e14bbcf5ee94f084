"""The keys bearer tokens are verified with: a JSON Web Key Set from a file or an https URL.

The set is read at start-up, re-read every `cache_seconds`, and re-read early when a token names a
key id (`kid`) the set does not have — an identity provider that rotated its keys — but at most
once every `min_refresh_seconds`, so a stream of tokens with made-up kids cannot make the server
hammer the identity provider (or its own disk). A failed read keeps the keys it had. Reads of a URL
run in a worker thread; the event loop never waits on the network.

Every key is bound to one algorithm (RFC 8725 3.1): the JWK's own `alg`, or the one its key type
implies (RSA → RS256, EC P-256 → ES256, …). Only keys whose algorithm is in the allow-list are
kept, and a token is verified only with the algorithm of the key it names.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import jwt
from jwt.exceptions import PyJWKError

log = logging.getLogger("callqos.server.security")

FETCH_TIMEOUT_SECONDS = 5.0
MAX_JWKS_BYTES = 1 << 20


class JwksError(Exception):
    """The key set cannot be read or holds no usable key."""


def parse_jwks(document: Mapping[str, Any], algorithms: Collection[str]) -> dict[str, jwt.PyJWK]:
    """kid → key, for every signing key of the set whose algorithm is allowed. A key without a
    kid is kept under "" (usable only by tokens without a kid, when it is the only key)."""
    keys = document.get("keys")
    if not isinstance(keys, list):
        raise JwksError("not a JWKS: no 'keys' list")
    usable: dict[str, jwt.PyJWK] = {}
    for entry in keys:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") == "oct":
            continue  # a shared secret has no place in a public key set
        try:
            key = jwt.PyJWK(entry)
        except PyJWKError as exc:
            log.warning("skipping a JWKS key that cannot be used", extra={"kid": entry.get("kid"), "error": str(exc)})
            continue
        if key.algorithm_name not in algorithms:
            continue
        usable[str(entry.get("kid", ""))] = key
    if not usable:
        raise JwksError(f"no key for the allowed algorithms ({', '.join(sorted(algorithms))})")
    return usable


class JwksKeys:
    """The current key set, kept fresh as the module docstring says."""

    def __init__(
        self,
        *,
        file: Path | None,
        url: str,
        algorithms: Collection[str],
        cache_seconds: float,
        min_refresh_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (file is None) == (not url):
            raise ValueError("exactly one of file and url")
        self._file, self._url = file, url
        self._algorithms = frozenset(algorithms)
        self._cache_seconds = cache_seconds
        self._min_refresh_seconds = min_refresh_seconds
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._loaded_at = float("-inf")  # when the keys were last read successfully
        self._tried_at = float("-inf")  # when a read was last attempted
        self._refreshing = asyncio.Lock()
        self.reads = 0  # attempts, for tests and logs

    @property
    def source(self) -> str:
        return self._url or str(self._file)

    async def start(self) -> None:
        """First read. A file must be readable (a typo should stop the server, not every
        request); a URL may be down at start-up: the server starts, refusing tokens until it
        answers."""
        try:
            await self._refresh()
        except JwksError:
            if self._file is not None:
                raise
            log.error("JWKS not available at start-up; bearer tokens are refused until it is", exc_info=True)

    async def key(self, kid: str | None) -> jwt.PyJWK | None:
        """The key named `kid` (for None: the set's only key), reading the set again when it is
        stale, or when the kid is unknown and the last read is older than the minimum interval."""
        now = self._clock()
        if now - self._loaded_at >= self._cache_seconds:
            await self._refresh_quietly(now)
        found = self._lookup(kid)
        if found is None and now - self._tried_at >= self._min_refresh_seconds:
            await self._refresh_quietly(now)
            found = self._lookup(kid)
        return found

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    async def _refresh_quietly(self, now: float) -> None:
        async with self._refreshing:
            if self._tried_at > now:
                return  # another request refreshed while this one waited
            try:
                await self._refresh()
            except JwksError as exc:
                log.warning(
                    "JWKS refresh failed; keeping the keys it had", extra={"source": self.source, "error": str(exc)}
                )

    async def _refresh(self) -> None:
        self._tried_at = self._clock()
        self.reads += 1
        try:
            raw = self._file.read_bytes() if self._file is not None else await asyncio.to_thread(self._fetch)
            document = json.loads(raw)
        except (OSError, ValueError) as exc:
            raise JwksError(f"cannot read the JWKS from {self.source}: {exc}") from exc
        if not isinstance(document, dict):
            raise JwksError(f"{self.source} is not a JWKS object")
        self._keys = parse_jwks(document, self._algorithms)
        self._loaded_at = self._clock()

    def _fetch(self) -> bytes:
        request = urllib.request.Request(self._url, headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_SECONDS) as response:
            data: bytes = response.read(MAX_JWKS_BYTES + 1)
        if len(data) > MAX_JWKS_BYTES:
            raise OSError(f"JWKS larger than {MAX_JWKS_BYTES} bytes")
        return data
