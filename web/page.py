"""The browser page: one HTML file with its script and style inline, no build step.

It is served with a Content-Security-Policy that allows exactly that script and style (by
their hashes) and requests to this origin only, so even text that slipped into the page as
HTML could neither run nor fetch from elsewhere. The page itself shows every answer and
document text with textContent.

The document viewer's pdf.js (web/static/vendor/pdfjs) is the one script file: the policy
allows scripts and workers from this origin ('self') for it. No other response of this
origin is JavaScript (JSON, event streams, the metrics text, downloads as
application/octet-stream with `nosniff`), the page loads pdf.js as a module (which must be
served as JavaScript), and it never adds a script element, so 'self' admits pdf.js alone.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litestar import Request, get, route
from litestar.response import Response

from rag.errors import NotFoundError

PAGE_PATH = Path(__file__).parent / "static" / "index.html"
VENDOR_PATH = Path(__file__).parent / "static" / "vendor"
# The files under VENDOR_PATH the page loads, by their URL under /static/vendor/.
VENDOR_FILES = ("pdfjs/pdf.min.mjs", "pdfjs/pdf.worker.min.mjs")


@dataclass(frozen=True, slots=True)
class Page:
    body: bytes
    headers: dict[str, str]


def _hashes(html: str, tag: str) -> str:
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
    digests = [base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in blocks]
    return " ".join(f"'sha256-{d}'" for d in digests) or "'none'"


def load_page(path: Path = PAGE_PATH) -> Page:
    html = path.read_text()
    policy = "; ".join(
        [
            "default-src 'none'",
            f"script-src {_hashes(html, 'script')} 'self'",
            "worker-src 'self'",
            f"style-src {_hashes(html, 'style')}",
            "connect-src 'self'",
            "img-src 'self' data:",
            "form-action 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ]
    )
    # nosniff and no-store come with every response (web/headers.py).
    headers = {"Content-Security-Policy": policy, "Referrer-Policy": "no-referrer"}
    return Page(html.encode(), headers)


@route("/", http_method=["GET", "HEAD"], include_in_schema=False)
async def index(request: Request[Any, Any, Any]) -> Response[bytes]:
    page: Page = request.app.state.page
    return Response(page.body, media_type="text/html", headers=page.headers)


@get("/static/vendor/{path:path}", include_in_schema=False)
async def vendor_file(path: str) -> Response[bytes]:
    """pdf.js and its worker; no other file, whatever the path says."""
    name = path.lstrip("/")
    if name not in VENDOR_FILES:
        raise NotFoundError(f"no file {name!r} under /static/vendor/")
    return Response(
        _vendor_bytes(name),
        media_type="text/javascript",
        headers={
            "Cache-Control": "public, max-age=3600",
            # The policy of the worker's own context: it fetches nothing (the page hands it
            # the document's bytes) and compiles no WebAssembly (used for JPEG 2000 only).
            "Content-Security-Policy": "default-src 'none'",
        },
    )


@functools.cache
def _vendor_bytes(name: str) -> bytes:
    return (VENDOR_PATH / name).read_bytes()
