"""The headers every response of the service carries, whatever route or error made it.

`X-Content-Type-Options: nosniff` keeps a browser from reading a JSON answer (which quotes
document text) as HTML or script; `Cache-Control: no-store` keeps answers, document lists
and errors out of shared and browser caches. A route that set its own `Cache-Control`
(pdf.js, cached for an hour) keeps it. Added as the response starts, so that 404s from the
router and errors from middleware carry them too. Litestar gives event streams `no-cache`;
the streamed answers ask for STREAM_HEADERS instead (job progress holds no content).
"""

from __future__ import annotations

from litestar.datastructures import MutableScopeHeaders
from litestar.types import Message, Scope

STREAM_HEADERS = {"Cache-Control": "no-store"}
DEFAULT_HEADERS = {
    "x-content-type-options": "nosniff",
    "cache-control": "no-store",
}


def add_default_headers(message: Message, scope: Scope) -> None:
    """The app's before_send hook."""
    if message["type"] != "http.response.start":
        return
    headers = MutableScopeHeaders.from_message(message)
    for name, value in DEFAULT_HEADERS.items():
        if name not in headers:
            headers[name] = value
