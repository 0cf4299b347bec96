"""The Host header check that defeats DNS rebinding: names compared as DNS compares them.

A host name is matched case-insensitively, without its port and without the trailing dot of
a fully qualified name (`LOCALHOST.:8000` is `localhost`). The port is not part of the
check: a page that rebinds a name it owns to 127.0.0.1 still sends its own name, and a
proxy in front may forward another port.
"""

from __future__ import annotations

import re

from litestar.datastructures import Headers
from litestar.middleware import DefineMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from rag.errors import UsageError

_PORT = re.compile(r":\d{1,5}$")


class HostError(UsageError):
    """The Host header names none of server.allowed_hosts."""


def host_name(value: str) -> str:
    """The name a Host header (or an allowed_hosts entry) gives: lower case, no port or dot."""
    value = value.strip().lower()
    if value.startswith("["):  # an IPv6 literal, port after the bracket
        end = value.find("]")
        return value[: end + 1] if end > 0 and not _PORT.sub("", value[end + 1 :]) else ""
    value = _PORT.sub("", value)
    return value[:-1] if value.endswith(".") and value != "." else value


class HostCheck:
    def __init__(self, app: ASGIApp, allowed: list[str]) -> None:
        self.app = app
        names = {host_name(h) for h in allowed}
        self.any = "*" in names
        self.exact = {n for n in names if not n.startswith("*.")}
        self.suffixes = tuple(n[1:] for n in names if n.startswith("*."))

    def allows(self, value: str | None) -> bool:
        if self.any:
            return True
        name = host_name(value or "")
        return bool(name) and (name in self.exact or name.endswith(self.suffixes or ("\0",)))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = Headers.from_scope(scope).get("host")
            if not self.allows(host):
                shown = (host or "")[:100]
                raise HostError(
                    f"Host header {shown!r} is not one this service answers to "
                    "(server.allowed_hosts)"
                )
        await self.app(scope, receive, send)


def host_middleware(allowed: list[str]) -> DefineMiddleware:
    return DefineMiddleware(HostCheck, allowed=allowed)
