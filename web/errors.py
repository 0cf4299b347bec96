"""Every error the app can answer, in one shape: `{"error": {"type", "message"}}`.

One exception handler takes them all: our RagError family, Litestar's own HTTP exceptions
(validation, malformed or oversize bodies, unknown routes, wrong methods) and anything else,
which is a 500 logged with the request id. Every error carries the id in `X-Request-Id`;
a 5xx also has it in the body (`request_id`), so a user's report matches the log line. A
4xx body holds nothing per request: the same refusal reads the same every time.
"""

from __future__ import annotations

import logging
import math
import re
import uuid
from typing import Any

from litestar import Request
from litestar.exceptions import HTTPException, ValidationException
from litestar.response import Response
from litestar.types import Scope

from rag.errors import RagError, UsageError

log = logging.getLogger("rag.web")

REQUEST_ID_HEADER = "x-request-id"
# An id a proxy in front (nginx's $request_id) already gave the request is kept, if sane.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
# The error type each status of Litestar's own exceptions reads as: our family's names.
_TYPE_OF_STATUS = {
    400: "UsageError",
    401: "AuthError",
    403: "ForbiddenError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "TooLargeError",
    415: "UsageError",
    429: "RateLimitedError",
    503: "NotReadyError",
}
# Seconds a client is told to wait after a 503 (queue full, models loading, shutting down).
BUSY_RETRY_AFTER_S = 5


class JsonTooDeepError(UsageError):
    """A JSON body nested deeper than the decoder can follow."""


def request_id(scope: Scope) -> str:
    """This request's id, made once and kept in the scope."""
    state = scope.setdefault("state", {})
    rid = state.get("request_id")
    if rid is None:
        sent = ""
        for name, value in scope.get("headers", ()):
            if name == REQUEST_ID_HEADER.encode():
                sent = value.decode("latin-1")
                break
        rid = sent if _REQUEST_ID.match(sent) else uuid.uuid4().hex
        state["request_id"] = rid
    return rid


def _validation_message(exc: ValidationException) -> str:
    problems = exc.extra if isinstance(exc.extra, list) else []
    parts = []
    for p in problems:
        if isinstance(p, dict):
            key = p.get("key")
            if key == "data" and p.get("message") == "'data'":  # Litestar's word for "no body"
                parts.append("a JSON request body is required")
                continue
            parts.append(f"{key}: {p.get('message')}" if key else str(p.get("message")))
    detail = "invalid request"
    return f"{detail}: {'; '.join(parts)}" if parts else f"{detail}: {exc.detail}"


def describe(exc: Exception) -> tuple[int, str, str, dict[str, str]]:
    """(status, type, message, headers) for any exception."""
    headers: dict[str, str] = {}
    if isinstance(exc, RagError):
        status, kind, message = exc.http_status, type(exc).__name__, exc.message
    elif isinstance(exc, HTTPException):
        status = exc.status_code
        kind = _TYPE_OF_STATUS.get(status, "HTTPError")
        if isinstance(exc, ValidationException):
            message = _validation_message(exc)
        else:
            message = str(exc.detail)
        # e.g. Allow on a 405; a 500 from Litestar stays a 500, logged below.
        headers.update({k: str(v) for k, v in (exc.headers or {}).items()})
    else:
        status, kind, message = 500, "InternalError", "internal error"
    retry_after = getattr(exc, "retry_after_s", None)
    if retry_after is None and status == 503:
        retry_after = BUSY_RETRY_AFTER_S
    if retry_after is not None and status in (429, 503):
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return status, kind, message, headers


def refuse_html_errors(response: Response[Any]) -> Response[Any]:
    """The app's after_request hook: an error page a handler returned becomes an exception.

    Litestar's OpenAPI routes answer an unknown /schema/... path with an HTML 404 page of
    their own; raised instead, it reaches `error_response` like every other error.
    """
    media_type = getattr(response.media_type, "value", response.media_type)  # an enum or a str
    if (response.status_code or 200) >= 400 and str(media_type).startswith("text/html"):
        raise HTTPException(status_code=response.status_code, detail="Not Found")
    return response


def error_response(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """The app's one exception handler."""
    # From the scope: building request.url would parse the Host header, which may be junk.
    return _response(request.scope, exc, f"{request.method} {request.scope.get('path', '')}")


def _response(scope: Scope, exc: Exception, what: str) -> Response[dict[str, Any]]:
    rid = request_id(scope)
    status, kind, message, headers = describe(exc)
    if status >= 500 and not isinstance(exc, RagError):
        log.error("request %s: %s failed", rid, what, exc_info=exc)
        message = f"{message}; quote request id {rid} when reporting it"
    elif status >= 500:
        log.warning("request %s: %s: %s", rid, what, message)
    headers["X-Request-Id"] = rid
    error = {"type": kind, "message": message}
    if status >= 500:
        error["request_id"] = rid  # what the user quotes when reporting it
    body = {"error": error}
    return Response(body, status_code=status, headers=headers)
