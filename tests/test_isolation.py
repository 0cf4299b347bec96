"""Cross-collection isolation, enumerated over the app's route table.

Key A reads collection `alpha`, key B reads `beta`. Every route of the app must be listed
below; a new route without an entry fails the sweep until someone says how it is scoped.
For each route that takes a collection, a document or a job, B aims a request at A's
collection, document id, source name and job id, and again at made-up ones: the answers
must be refusals (403/404) that are identical once the identifiers are blanked out, so B
cannot even tell A's things exist. Routes that list collection data are called with B's own
scope and must show nothing of A. Every non-public route answers 401 without a valid key.

The MCP endpoint (/mcp, an ASGI mount that every method reaches) is swept through its tools
and resources, one JSON-RPC POST each: there a refusal is a tool result with isError or a
JSON-RPC error (HTTP 200), and again must read the same for A's things and made-up ones.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from rag.accounts.apikeys import add_key
from rag.config import LlmSettings, Settings, StorageSettings
from tests.conftest import TEST_MODEL

from .conftest import start_server, stop_server

CANARY = "CANARY-ALPHA-5f3e"
ALPHA_DOC = f"# Alpha launch\nThe alpha launch code is heliotrope, {CANARY}.\n".encode()
BETA_DOC = b"# Beta launch\nThe beta team ships the harbor release on Friday.\n"
QUESTION = "What is the alpha launch code heliotrope?"
# Open to anyone: liveness, readiness, the page shell (with its pdf.js) and the OpenAPI document.
PUBLIC = "public"
# The Prometheus scrape: its labels name keys and collections, so with keys it needs the
# scrape token (server.metrics_token), which no API key is.
SCRAPE = "scrape token"
# Needs a key but holds no collection data (the machine's plan, health checks, embeddings
# of the caller's own text).
KEY_ONLY = "key only"
# The method of a mounted ASGI app's route: it takes them all.
ANY = "*"
MCP = "/mcp"


def _mcp(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """One MCP request as the body of one POST (the endpoint is stateless)."""
    return {"json": {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}}


def _tool(name: str, **arguments: str) -> dict[str, Any]:
    return _mcp("tools/call", {"name": name, "arguments": arguments})


# (method, route) -> PUBLIC, KEY_ONLY, or the requests that aim at the target's things.
# Strings may name {collection}, {doc_id}, {source} and {job_id}; path parameters too.
ROUTES: dict[tuple[str, str], Any] = {
    ("GET", "/"): PUBLIC,
    ("GET", "/static/vendor/{path}"): PUBLIC,
    ("GET", "/health"): PUBLIC,
    ("GET", "/ready"): PUBLIC,
    ("GET", "/metrics"): SCRAPE,
    ("GET", "/schema"): PUBLIC,
    ("GET", "/schema/openapi.json"): PUBLIC,
    ("GET", "/schema/{path}"): PUBLIC,
    ("GET", "/api/plan"): KEY_ONLY,
    ("GET", "/api/doctor"): KEY_ONLY,
    ("POST", "/v1/embeddings"): [{"json": {"model": "all-MiniLM-L6-v2", "input": QUESTION}}],
    ("GET", "/v1/models"): [{}],
    ("GET", "/api/collections"): [{}],
    ("POST", "/api/ask"): [{"json": {"question": QUESTION, "collection": "{collection}"}}],
    ("POST", "/api/search"): [{"json": {"query": QUESTION, "collection": "{collection}"}}],
    ("POST", "/v1/chat/completions"): [
        {"json": {"model": "{collection}", "messages": [{"role": "user", "content": QUESTION}]}}
    ],
    ("GET", "/api/documents"): [{"params": {"collection": "{collection}"}}],
    ("POST", "/api/documents"): [
        {"params": {"collection": "{collection}"}, "files": [("files", ("x.md", b"# x\nx\n"))]}
    ],
    ("DELETE", "/api/documents"): [
        {"params": {"collection": "{collection}", "source": "{source}"}},
        {"params": {"collection": "beta", "source": "{source}"}},
    ],
    ("DELETE", "/api/documents/{doc_id}"): [
        {"params": {"collection": "{collection}"}},
        {"params": {"collection": "beta"}},
    ],
    ("GET", "/api/documents/{doc_id}/source"): [
        {"params": {"collection": "{collection}"}},
        {"params": {"collection": "beta"}},
    ],
    ("GET", "/api/jobs/{job_id}"): [{}],
    ("GET", "/api/jobs/{job_id}/events"): [{}],
    (ANY, MCP): [
        _tool("search", query=QUESTION, collection="{collection}"),
        _tool("ask", question=QUESTION, collection="{collection}"),
        _tool("list_documents", collection="{collection}"),
        _mcp("resources/read", {"uri": "rag://{collection}/{source}"}),
    ],
}
# MCP requests with no target: they list what the caller's own scope holds.
MCP_LISTINGS = [_tool("list_collections"), _mcp("resources/list", {}), _mcp("tools/list", {})]
# Requests with no target: they list what the caller's own scope holds.
UNTARGETED = {("GET", "/v1/models"), ("GET", "/api/collections"), ("POST", "/v1/embeddings")}
# Generation is slow on a CPU: A's own ask and chat are left out of the sanity pass (B's
# are refused before any retrieval, and search shows what retrieval returns).
SLOW = {("POST", "/api/ask"), ("POST", "/v1/chat/completions")}
SLOW_TOOLS = {"ask"}


def route_table() -> set[tuple[str, str]]:
    from litestar.routes import ASGIRoute

    from web.app import create_app

    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(
            Settings(storage=StorageSettings(data_dir=tmp), llm=LlmSettings(model=TEST_MODEL))
        )
        mounts = {(ANY, route.path_format) for route in app.routes if isinstance(route, ASGIRoute)}
        return mounts | {
            (method, route.path_format)
            for route in app.routes
            for handler in getattr(route, "route_handlers", [])
            for method in handler.http_methods
            if method not in ("OPTIONS", "HEAD")
        }


def test_every_route_says_how_it_is_scoped() -> None:
    table = route_table()
    missing = sorted(table - set(ROUTES))
    assert not missing, f"classify these routes in tests/test_isolation.py: {missing}"
    assert not set(ROUTES) - table, "ROUTES lists routes the app no longer has"


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data = tmp_path_factory.mktemp("tenants") / "data"
    keys = {"a": add_key(data, "team-a", ["alpha"]), "b": add_key(data, "team-b", ["beta"])}
    proc, base = start_server(data, RAG_LLM_ANSWER_TOKENS="8", RAG_RETRIEVAL_K="2")
    try:
        ids = {"collection": "alpha", "source": "alpha-launch.md"}
        ids["job_id"] = _ingest(base, keys["a"], "alpha", "alpha-launch.md", ALPHA_DOC)
        _ingest(base, keys["b"], "beta", "beta-launch.md", BETA_DOC)
        docs = _call(base, keys["a"], "GET", "/api/documents", {"params": {"collection": "alpha"}})
        ids["doc_id"] = docs.json()["documents"][0]["doc_id"]
        yield {"base": base, "keys": keys, "ids": ids}
    finally:
        stop_server(proc)


def _ingest(base: str, key: str, collection: str, name: str, body: bytes) -> str:
    r = httpx.post(
        f"{base}/api/documents",
        params={"collection": collection},
        files=[("files", (name, body))],
        headers={"authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = _call(base, key, "GET", f"/api/jobs/{job_id}", {}).json()
        if job["state"] == "done":
            assert job["files"][0]["state"] in ("indexed", "unchanged"), job
            return job_id
        time.sleep(0.2)
    raise AssertionError("upload job did not finish")


def _fill(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return value.format(**ids)
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    if isinstance(value, tuple):
        return tuple(_fill(v, ids) for v in value)
    return value


def _call(
    base: str, key: str | None, method: str, path: str, spec: dict[str, Any], **headers: str
) -> httpx.Response:
    if key:
        headers["authorization"] = f"Bearer {key}"
    method = "POST" if method == ANY else method  # an MCP message is a POST
    return httpx.request(method, base + path, headers=headers, timeout=120, **spec)


def _mcp_refused(r: httpx.Response) -> bool:
    """An MCP answer that refuses: a tool error, or a JSON-RPC error."""
    body = r.json()
    return "error" in body or body["result"].get("isError") is True


def _refused(route: str, r: httpx.Response) -> bool:
    if route == MCP:
        return r.status_code == 200 and _mcp_refused(r)
    return r.status_code in (403, 404)


def _slow(method: str, route: str, spec: dict[str, Any]) -> bool:
    if route == MCP:
        return spec["json"]["params"].get("name") in SLOW_TOOLS
    return (method, route) in SLOW


def _fake_ids() -> dict[str, str]:
    return {
        "collection": "zeta",
        "source": "zeta-launch.md",
        "doc_id": uuid.uuid4().hex[:24],
        "job_id": uuid.uuid4().hex,
    }


def _blank(text: str, ids: dict[str, str]) -> str:
    for name, value in ids.items():
        text = text.replace(value, f"<{name}>")
    return text


def _targeted() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for (method, route), specs in sorted(ROUTES.items()):
        if isinstance(specs, list) and (method, route) not in UNTARGETED:
            for spec in specs:
                yield method, route, spec


def test_b_cannot_reach_or_detect_anything_of_a(tenants: dict[str, Any]) -> None:
    base, b, real = tenants["base"], tenants["keys"]["b"], tenants["ids"]
    for method, route, spec in _targeted():
        answers = []
        for ids in (real, _fake_ids()):
            r = _call(base, b, method, route.format(**ids), _fill(spec, ids))
            assert CANARY not in r.text
            assert _refused(route, r), f"{method} {route} {spec}: B got {r.status_code}: {r.text}"
            answers.append((r.status_code, _blank(r.text, ids)))
        (status, body), fake = answers
        assert (status, body) == fake, f"{method} {route}: A's things answer unlike absent ones"


def test_what_b_lists_holds_nothing_of_a(tenants: dict[str, Any]) -> None:
    base, b, real = tenants["base"], tenants["keys"]["b"], tenants["ids"]
    secrets = [CANARY, real["doc_id"], real["job_id"], real["source"], '"alpha"']
    for method, route in sorted(UNTARGETED):
        for spec in ROUTES[(method, route)]:
            r = _call(base, b, method, route, spec)
            assert r.status_code == 200, f"{method} {route}: {r.text}"
            assert not [s for s in secrets if s in r.text], f"{method} {route} shows A's data"
    for spec in MCP_LISTINGS:
        r = _call(base, b, ANY, MCP, spec)
        assert r.status_code == 200 and not _mcp_refused(r), f"{spec}: {r.text}"
        assert not [s for s in secrets if s in r.text], f"MCP {spec} shows A's data"
    own = {"query": "launch code heliotrope", "collection": "beta"}
    hits = _call(base, b, "POST", "/api/search", {"json": own}).json()["hits"]
    assert hits and {h["source"] for h in hits} == {"beta-launch.md"}
    listed = _call(base, b, "GET", "/api/documents", {"params": {"collection": "beta"}}).json()
    assert [d["source"] for d in listed["documents"]] == ["beta-launch.md"]
    for (method, route), kind in ROUTES.items():
        if kind in (PUBLIC, KEY_ONLY, SCRAPE) and "{" not in route:
            assert CANARY not in _call(base, b, method, route, {}).text


def test_every_route_but_the_public_ones_needs_a_valid_key(tenants: dict[str, Any]) -> None:
    base = tenants["base"]
    with httpx.Client(base_url=base) as page:
        page.get("/")
        token = page.cookies["csrftoken"]  # as the page sends it: CSRF is not what refuses
    cookie = f"csrftoken={token}"
    for (method, route), kind in sorted(ROUTES.items()):
        if kind == PUBLIC:
            continue
        ids = _fake_ids()
        spec = _fill(kind[0], ids) if isinstance(kind, list) else {}
        path = route.format(**ids)
        bad = _call(base, "rag_not-a-key", method, path, spec)
        assert bad.status_code == 401, f"{method} {route} with a wrong key: {bad.status_code}"
        bare = _call(base, None, method, path, spec, cookie=cookie, **{"x-csrftoken": token})
        assert bare.status_code == 401, f"{method} {route} without a key: {bare.status_code}"
        assert "API key" in bare.json()["error"]["message"]
    for route in ("/health", "/ready", "/"):
        assert httpx.get(base + route).status_code == 200


def test_a_reaches_its_own_things_through_the_same_requests(tenants: dict[str, Any]) -> None:
    # The refusals above mean something only if the same requests work for their owner.
    base, a, real = tenants["base"], tenants["keys"]["a"], tenants["ids"]
    deletes = []
    for method, route, spec in _targeted():
        if _slow(method, route, spec) or "beta" in repr(spec):
            continue
        if method == "DELETE":
            deletes.append((method, route, spec))
            continue
        r = _call(base, a, method, route.format(**real), _fill(spec, real))
        assert r.status_code in (200, 202), f"{method} {route}: A got {r.status_code}: {r.text}"
        assert route != MCP or not _mcp_refused(r), f"MCP {spec}: A got {r.text}"
    resource = _fill(_mcp("resources/read", {"uri": "rag://{collection}/{source}"}), real)
    assert CANARY in _call(base, a, ANY, MCP, resource).text
    source = _call(
        base,
        a,
        "GET",
        f"/api/documents/{real['doc_id']}/source",
        {"params": {"collection": "alpha"}},
    )
    assert CANARY in source.text
    method, route, spec = deletes[0]
    r = _call(base, a, method, route.format(**real), _fill(spec, real))
    assert r.status_code == 200 and r.json()["removed"][0]["doc_id"] == real["doc_id"]
