"""Random requests at every route of the app's route table: never a 500, errors in one shape.

Hypothesis draws the route (path parameters filled with random text), a query string, and a
body: random JSON, JSON shaped like the routes' own fields with wrong or odd values, JSON
nested past the decoder's depth, or raw bytes under a random content type. The app runs with
its real models on an empty index, so asks answer "not found" without generating, and
deterministically (derandomized, no example database): CI never flakes on a new example.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar import Litestar
from litestar.testing import TestClient

from rag.config import LlmSettings, ServerSettings, Settings, StorageSettings
from tests.conftest import TEST_MODEL
from web.app import create_app

from .test_hostile_http import assert_error, wait_ready

# The fields the routes read, so random bodies often get past "unknown field" to the values.
FIELDS = [
    "question", "query", "collection", "k", "stream", "history", "role", "content", "model",
    "messages", "input", "encoding_format", "max_tokens", "max_completion_tokens",
    "temperature", "n", "stop", "stream_options", "include_usage", "type", "text",
]  # fmt: skip
NAMES = ["default", "no-such-collection", "", " ", "../etc/passwd", "*", "default\x00"]
QUERY_KEYS = ["collection", "source", "k", "stream", "doc_id", "format"]
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "multipart/form-data; boundary=fuzz",
    "multipart/form-data",
    "application/x-www-form-urlencoded",
    "text/plain",
    "application/x-msgpack",
    "",
]

leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(NAMES)
)
keys = st.sampled_from(FIELDS) | st.text(max_size=12)
json_values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=16,
)
text = st.text(max_size=60)
names = st.sampled_from(NAMES) | st.text(max_size=20)


def odd(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Values of the right kind or any JSON at all."""
    return st.one_of(values, json_values)


# Bodies shaped like each route's own, so that many get past validation into the handler.
def shaped(path: str, odd: Any) -> st.SearchStrategy[Any] | None:
    """A body shaped like the route's own; `odd` wraps each value's strategy."""
    roles = st.sampled_from(["user", "assistant", "system", "developer"])
    part = st.fixed_dictionaries({"type": odd(st.just("text")), "text": odd(text)})
    message = st.fixed_dictionaries(
        {"role": odd(roles)}, optional={"content": odd(text | st.lists(part, max_size=2))}
    )
    k = st.integers(min_value=1, max_value=50)
    bodies = {
        "/api/ask": st.fixed_dictionaries(
            {"question": odd(text)},
            optional={
                "collection": odd(names),
                "k": odd(k),
                "stream": odd(st.booleans()),
                "history": odd(st.lists(message, max_size=3)),
            },
        ),
        "/api/search": st.fixed_dictionaries(
            {"query": odd(text)}, optional={"collection": odd(names), "k": odd(k)}
        ),
        "/v1/chat/completions": st.fixed_dictionaries(
            {"model": odd(names), "messages": odd(st.lists(message, min_size=1, max_size=3))},
            optional={
                "stream": odd(st.booleans()),
                "max_tokens": odd(st.integers(min_value=1, max_value=64)),
                "temperature": odd(st.floats(min_value=0, max_value=2)),
                "stop": odd(text | st.lists(st.text(max_size=5), max_size=6)),
                "k": odd(k),
                "n": odd(st.just(1)),
                "stream_options": odd(st.fixed_dictionaries({"include_usage": st.booleans()})),
            },
        ),
        "/v1/embeddings": st.fixed_dictionaries(
            {
                "model": odd(st.sampled_from(["all-MiniLM-L6-v2", "default", ""])),
                "input": odd(text | st.lists(st.text(max_size=20), max_size=3)),
            },
            optional={"encoding_format": odd(st.sampled_from(["float", "base64", "x"]))},
        ),
    }
    return bodies.get(path)


# The routes whose handlers read a JSON body.
SHAPED = {"/api/ask", "/api/search", "/v1/chat/completions", "/v1/embeddings"}


nested = st.integers(min_value=200, max_value=5000).map(lambda d: ("[" * d + "]" * d).encode())


def bodies(path: str) -> st.SearchStrategy[tuple[str, Any] | None]:
    def same(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return values

    valid = shaped(path, same) or st.dictionaries(keys, json_values, max_size=5)
    junk = shaped(path, odd) or valid
    return st.one_of(
        st.none(),
        st.tuples(st.just("application/json"), valid),
        st.tuples(st.just("application/json"), valid),
        st.tuples(st.just("application/json"), junk),
        st.tuples(st.just("application/json"), json_values),
        st.tuples(st.sampled_from(CONTENT_TYPES), nested | st.binary(max_size=300)),
    )


queries = st.dictionaries(st.sampled_from(QUERY_KEYS) | st.text(max_size=8), st.text(max_size=30))


def route_table(app: Litestar) -> list[tuple[str, str]]:
    return sorted(
        (method, route.path_format)
        for route in app.routes
        for handler in getattr(route, "route_handlers", [])
        for method in handler.http_methods
        if method not in ("OPTIONS", "HEAD")
    )


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient[Litestar]]:
    """The app without keys, its real models, an empty index and no rate limit."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            storage=StorageSettings(data_dir=str(Path(tmp) / "data")),
            llm=LlmSettings(model=TEST_MODEL),
            server=ServerSettings(rate_limit_per_min=0, request_timeout_s=30),
        )
        app = create_app(settings)
        with TestClient(app, base_url="http://localhost", timeout=60) as c:
            wait_ready(c)
            c.app_routes = route_table(app)  # type: ignore[attr-defined]
            yield c


def _fill(path: str, values: list[str]) -> str:
    out = path
    for value in values:
        start = out.find("{")
        if start < 0:
            break
        out = out[:start] + quote(value, safe="") + out[out.index("}", start) + 1 :]
    return out


def test_every_route_is_in_the_fuzzed_table(client: TestClient[Litestar]) -> None:
    table = set(client.app_routes)  # type: ignore[attr-defined]
    assert {
        ("POST", "/api/ask"),
        ("DELETE", "/api/documents/{doc_id}"),
        ("GET", "/metrics"),
    } <= table
    assert len(table) >= 20


@settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_random_requests_never_get_a_500(client: TestClient[Litestar], data: Any) -> None:
    # The routes that read a JSON body are drawn more often: their bodies vary the most.
    routes = [r for r in client.app_routes for _ in range(4 if r[1] in SHAPED else 1)]  # type: ignore[attr-defined]
    method, path = data.draw(st.sampled_from(routes), label="route")
    params = data.draw(st.lists(st.text(min_size=1, max_size=30), min_size=2, max_size=2))
    url = _fill(path, params)
    query = data.draw(queries, label="query")
    body = data.draw(bodies(path), label="body")
    # Any key header: past the CSRF check (a keyless server ignores its value) to the route.
    headers = {"x-api-key": "fuzz"}
    kwargs: dict[str, Any] = {"params": query, "headers": headers}
    if body is not None:
        content_type, payload = body
        if isinstance(payload, bytes):
            kwargs["content"] = payload
            if content_type:
                headers["content-type"] = content_type
        else:
            kwargs["json"] = payload
    response = client.request(method, url, **kwargs)
    assert response.status_code < 500, f"{method} {url} {kwargs}: {response.text[:500]}"
    if response.status_code >= 400:
        assert_error(response, response.status_code)


def test_the_fuzz_stays_fast(client: TestClient[Litestar]) -> None:
    # The slowest routes, called as the fuzz calls them: the budget holds for each.
    for path in ("/api/doctor", "/api/plan"):
        started = time.monotonic()
        assert client.get(path, headers={"x-api-key": "fuzz"}).status_code == 200
        assert time.monotonic() - started < 5, path
