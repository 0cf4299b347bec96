"""Who is calling: the API key behind a request, its collections, and its request rate."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.di import Provide

from rag.accounts.apikeys import ApiKey, find_key, load_keys
from rag.errors import AuthError, ForbiddenError, RateLimitedError

ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Caller:
    name: str
    key: ApiKey | None  # None: no keys are configured, the service is loopback-only

    def require(self, collection: str) -> str:
        """Return the collection if this caller may read it, else raise 403."""
        if self.key is not None and not self.key.allows(collection):
            # The same answer whether the collection exists or not: scope reveals nothing.
            raise ForbiddenError(f"this API key may not read collection {collection!r}")
        return collection

    def visible(self, collections: list[str]) -> list[str]:
        return [c for c in collections if self.key is None or self.key.allows(c)]


class KeyRing:
    """The configured keys, re-read when `rag keys` changes the file."""

    def __init__(self, data_path: Path) -> None:
        self.path = data_path / "keys.json"
        self._data_path = data_path
        self._mtime_ns = -1
        self._keys: list[ApiKey] = []

    def keys(self) -> list[ApiKey]:
        try:
            mtime_ns = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime_ns = 0
        if mtime_ns != self._mtime_ns:
            self._keys = load_keys(self._data_path)
            self._mtime_ns = mtime_ns
        return self._keys


class RateLimiter:
    """A token bucket per caller: `per_min` requests a minute, bursts up to the same."""

    def __init__(self, per_min: int) -> None:
        self.per_min = per_min
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, name: str) -> None:
        if self.per_min <= 0:
            return
        now = time.monotonic()
        tokens, last = self._buckets.get(name, (float(self.per_min), now))
        tokens = min(float(self.per_min), tokens + (now - last) * self.per_min / 60)
        if tokens < 1:
            raise RateLimitedError(
                f"more than {self.per_min} requests a minute (server.rate_limit_per_min); "
                "slow down",
                # Until the bucket holds a whole token again.
                retry_after_s=(1 - tokens) * 60 / self.per_min,
            )
        self._buckets[name] = (tokens - 1, now)


def _token(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    header = connection.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return connection.headers.get("x-api-key")


async def check_caller(connection: ASGIConnection[Any, Any, Any, Any], handler: Any) -> None:
    """The app's guard: authenticate (and rate-limit) before anything reads the body.

    Guards run before Litestar parses a request body, so a request without a valid key is a
    401 however malformed or large its body, and costs nothing to refuse. Routes that take
    no `caller` are public. Routes that do not use the models (documents, jobs, the plan)
    take `AUTH_ONLY`, so listing documents or polling a job spends none of the key's model
    requests.
    """
    if "caller" not in handler.parsed_fn_signature.parameters:
        return
    provider = handler.resolve_dependencies()["caller"]
    caller = await authenticate(connection)
    if provider.dependency is not AUTH_ONLY["caller"].dependency:
        connection.app.state.ratelimiter.take(caller.name)
    connection.state.caller = caller


async def provide_caller(request: Request[Any, Any, Any]) -> Caller:
    """The `caller` dependency: who the guard found behind the request."""
    return request.state.caller


async def known_caller(request: Request[Any, Any, Any]) -> Caller:
    """The same, as its own function: the guard tells AUTH_ONLY routes by it."""
    return request.state.caller


async def authenticate(connection: ASGIConnection[Any, Any, Any, Any]) -> Caller:
    """The caller behind the request's key (401 without a valid one), not rate-limited."""
    ring: KeyRing = connection.app.state.keyring
    keys = ring.keys()
    if not keys:
        caller = Caller(ANONYMOUS, None)
    else:
        token = _token(connection)
        key = find_key(keys, token) if token else None
        if key is None:
            raise AuthError(
                "send a valid API key as 'Authorization: Bearer <key>' "
                "(an operator creates one with `rag keys add`)"
            )
        caller = Caller(key.name, key)
    return caller


# Handler-level override of the app's `caller` dependency: the key check alone.
AUTH_ONLY = {"caller": Provide(known_caller)}
