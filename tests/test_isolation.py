"""Cross-collection isolation, enumerated over the app's route table.

Key A reads collection `alpha`, key B reads `beta`. Every route of the app must be listed
below; a new route without an entry fails the sweep until someone says how it is scoped.
For each route that takes a collection, a document or a job, B aims a request at A's
collection, document id, source name and job id, and again at made-up ones: the answers
must be refusals (403/404) that are identical once the identifiers are blanked out, so B
cannot even tell A's things exist. Routes that list collection data are called with B's own
scope and must show nothing of A. Every non-public route answers 401 without a valid key.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from rag.apikeys import add_key
from rag.config import Settings, StorageSettings

from .conftest import start_server, stop_server

CANARY = "CANARY-ALPHA-5f3e"
ALPHA_DOC = f"# Alpha launch\nThe alpha launch code is heliotrope, {CANARY}.\n".encode()
BETA_DOC = b"# Beta launch\nThe beta team ships the harbor release on Friday.\n"
QUESTION = "What is the alpha launch code heliotrope?"
# Open to anyone: liveness, readiness, the page shell and the OpenAPI document.
PUBLIC = "public"
# The Prometheus scrape: its labels name keys and collections, so with keys it needs the
# scrape token (server.metrics_token), which no API key is.
SCRAPE = "scrape token"
# Needs a key but holds no collection data (the machine's plan, health checks, embeddings
# of the caller's own text).
KEY_ONLY = "key only"

# (method, route) -> PUBLIC, KEY_ONLY, or the requests that aim at the target's things.
# Strings may name {collection}, {doc_id}, {source} and {job_id}; path parameters too.
ROUTES: dict[tuple[str, str], Any] = {
    ("GET", "/"): PUBLIC,
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
}
# Requests with no target: they list what the caller's own scope holds.
UNTARGETED = {("GET", "/v1/models"), ("GET", "/api/collections"), ("POST", "/v1/embeddings")}
# Generation is slow on a CPU: A's own ask and chat are left out of the sanity pass (B's
# are refused before any retrieval, and search shows what retrieval returns).
SLOW = {("POST", "/api/ask"), ("POST", "/v1/chat/completions")}


def route_table() -> set[tuple[str, str]]:
    from web.app import create_app

    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(Settings(storage=StorageSettings(data_dir=tmp)))
        return {
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
    return httpx.request(method, base + path, headers=headers, timeout=120, **spec)


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
            answers.append((r.status_code, _blank(r.text, ids)))
        (status, body), fake = answers
        assert status in (403, 404), f"{method} {route} {spec}: B got {status}: {body}"
        assert (status, body) == fake, f"{method} {route}: A's things answer unlike absent ones"


def test_what_b_lists_holds_nothing_of_a(tenants: dict[str, Any]) -> None:
    base, b, real = tenants["base"], tenants["keys"]["b"], tenants["ids"]
    secrets = [CANARY, real["doc_id"], real["job_id"], real["source"], '"alpha"']
    for method, route in sorted(UNTARGETED):
        for spec in ROUTES[(method, route)]:
            r = _call(base, b, method, route, spec)
            assert r.status_code == 200, f"{method} {route}: {r.text}"
            assert not [s for s in secrets if s in r.text], f"{method} {route} shows A's data"
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
        if (method, route) in SLOW or "beta" in repr(spec):
            continue
        if method == "DELETE":
            deletes.append((method, route, spec))
            continue
        r = _call(base, a, method, route.format(**real), _fill(spec, real))
        assert r.status_code in (200, 202), f"{method} {route}: A got {r.status_code}: {r.text}"
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
