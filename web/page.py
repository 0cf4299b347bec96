"""The browser page: one HTML file with its script and style inline, no build step.

It is served with a Content-Security-Policy that allows exactly that script and style (by
their hashes) and requests to this origin only, so even text that slipped into the page as
HTML could neither run nor fetch from elsewhere. The page itself shows every answer and
document text with textContent.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litestar import Request, get
from litestar.response import Response

PAGE_PATH = Path(__file__).parent / "static" / "index.html"


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
            f"script-src {_hashes(html, 'script')}",
            f"style-src {_hashes(html, 'style')}",
            "connect-src 'self'",
            "img-src 'self' data:",
            "form-action 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ]
    )
    headers = {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }
    return Page(html.encode(), headers)


@get("/", include_in_schema=False)
async def index(request: Request[Any, Any, Any]) -> Response[bytes]:
    page: Page = request.app.state.page
    return Response(page.body, media_type="text/html", headers=page.headers)
