"""CSRF protection for the browser page: Litestar's signed double-submit token.

A page on another site can make a browser send this service a form-like POST (multipart,
urlencoded or text/plain, no custom headers) without asking first; on a keyless loopback
server that request would be let in. Such requests must carry the `csrftoken` cookie's value
in the `x-csrftoken` header, which only our own page can read. Requests that a browser sends
cross-origin only after a CORS preflight (refused unless server.cors_origins allows the
origin) need no token: those with an Authorization or X-API-Key header (API clients with a
key), a JSON body, or the DELETE, PUT and PATCH methods.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from litestar.config.csrf import CSRFConfig
from litestar.datastructures import Headers
from litestar.middleware import DefineMiddleware
from litestar.middleware.csrf import CSRFMiddleware
from litestar.types import Receive, Scope, Send

from rag.errors import ForbiddenError

SECRET_FILE = "csrf-secret"
# Methods no cross-site form can use: a browser preflights them.
PREFLIGHTED_METHODS = {"DELETE", "PUT", "PATCH"}
CREDENTIAL_HEADERS = ("authorization", "x-api-key")
MESSAGE = (
    "missing or wrong CSRF token: the page sends the csrftoken cookie's value as the "
    "x-csrftoken header; API clients send their key as 'Authorization: Bearer <key>' "
    "(on a server without keys, any value)"
)


class TokenCheck(CSRFMiddleware):
    """Litestar's CSRF check, for the requests a foreign page could forge; header token only."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]  # type: ignore[typeddict-item]  # an http scope has one
        if method in self.config.safe_methods:
            await super().__call__(scope, receive, send)  # hands out the cookie
            return
        headers = Headers.from_scope(scope)
        if _preflighted(method, headers):
            await self.app(scope, receive, send)
            return
        request = scope["litestar_app"].request_class(scope=scope, receive=receive)
        # Unlike Litestar's own check, a token in a form field is not looked for: that would
        # read a whole upload before refusing it.
        token = headers.get(self.config.header_name)
        cookie = request.cookies.get(self.config.cookie_name)
        if not (token and cookie and self._csrf_tokens_match(token, cookie)):
            raise ForbiddenError(MESSAGE)
        await self.app(scope, receive, send)


def _preflighted(method: str, headers: Headers) -> bool:
    if method in PREFLIGHTED_METHODS or any(h in headers for h in CREDENTIAL_HEADERS):
        return True
    media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return media_type == "application/json"


def load_secret(data_path: Path) -> str:
    """The signing secret, made once per data dir so that replicas sharing it agree."""
    path = data_path / SECRET_FILE
    if path.is_file():
        return path.read_text().strip()
    data_path.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    try:
        os.link(tmp, path)  # complete or absent, never half written; the first one wins
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()


def csrf_middleware(data_path: Path) -> DefineMiddleware:
    config = CSRFConfig(
        secret=load_secret(data_path),
        # Strict: the cookie never rides along on a request another site starts.
        cookie_samesite="strict",
        # The page's script must read it to send it back as the header.
        cookie_httponly=False,
    )
    return DefineMiddleware(TokenCheck, config=config)
