"""What an outside probe sends: hostile HTTP against the real app, and a SIGTERM mid-prefill.

Each test builds its hostile input itself: JSON nested past the decoder's depth, /metrics
without the scrape token, every kind of error the app and Litestar produce (all in the one
documented shape), a burst past the rate limit, unknown and foreign collections on every
route that reads one, Host headers as DNS spells them, and a stop signal while the model is
in a long prefill. tests/test_fuzz_http.py throws random requests at every route.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar, get
from litestar.testing import TestClient

from rag.accounts.apikeys import add_key
from rag.config import LlmSettings, ServerSettings, Settings, StorageSettings
from tests.conftest import TEST_MODEL
from web.app import create_app

from .conftest import start_server

SCRAPE_TOKEN = "scrape-token-for-tests"
NESTED = ("[" * 1000 + "]" * 1000).join(['{"query": ', "}"])
CHAT_NESTED = ("[" * 1000 + "]" * 1000).join(['{"model": "x", "messages": ', "}"])
ASK_NESTED = ("[" * 1000 + "]" * 1000).join(['{"question": ', "}"])


def wait_ready(client: TestClient[Litestar], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.get("/ready").status_code == 200:
            return
        time.sleep(0.2)
    raise AssertionError(f"models did not load: {client.get('/ready').text}")


@pytest.fixture(scope="module")
def keyed() -> Iterator[dict[str, Any]]:
    """The app with API keys (team-a reads alpha, team-b beta, ops all) and a scrape token."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        tokens = {
            "a": add_key(data, "team-a", ["alpha"]),
            "b": add_key(data, "team-b", ["beta"]),
            "ops": add_key(data, "ops", ["*"]),
            "burst": add_key(data, "burst", ["*"]),
        }
        settings = Settings(
            storage=StorageSettings(data_dir=str(data)),
            llm=LlmSettings(model=TEST_MODEL),
            server=ServerSettings(metrics_token=SCRAPE_TOKEN),
        )
        app = create_app(settings)
        with TestClient(app, base_url="http://localhost") as client:
            wait_ready(client)
            yield {"client": client, "app": app, **tokens}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def assert_error(response: httpx.Response, status: int, kind: str | None = None) -> dict:
    """The documented error shape; the request id in the header (and a 5xx's body)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == (
        {"type", "message", "request_id"} if status >= 500 else {"type", "message"}
    ), error
    assert isinstance(error["type"], str) and error["type"]
    assert isinstance(error["message"], str) and error["message"]
    assert response.headers["x-request-id"]
    if status >= 500:
        assert response.headers["x-request-id"] == error["request_id"]
    if kind is not None:
        assert error["type"] == kind, error
    return error


# -- 7: deeply nested JSON ---------------------------------------------------------------


@pytest.mark.parametrize(
    "path,body",
    [("/api/search", NESTED), ("/api/ask", ASK_NESTED), ("/v1/chat/completions", CHAT_NESTED)],
)
def test_deeply_nested_json_is_400_and_401_comes_first(
    keyed: dict[str, Any], path: str, body: str
) -> None:
    client = keyed["client"]
    json_type = {"content-type": "application/json"}
    # Without a key the body is never parsed: authentication runs first.
    assert_error(client.post(path, content=body, headers=json_type), 401, "AuthError")
    error = assert_error(
        client.post(path, content=body, headers={**json_type, **bearer(keyed["ops"])}), 400
    )
    assert "nested" in error["message"]


def test_an_unexpected_failure_is_a_logged_500_with_its_request_id(
    keyed: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    @get("/test-only/boom", sync_to_thread=False)
    def boom() -> None:
        raise RuntimeError("a bug nobody expected")

    keyed["app"].register(boom)
    with caplog.at_level(logging.ERROR, logger="rag.web"):
        response = keyed["client"].get("/test-only/boom")
    error = assert_error(response, 500, "InternalError")
    assert "a bug nobody expected" not in response.text  # no internals to the client
    assert error["request_id"] in error["message"]
    logged = [r for r in caplog.records if error["request_id"] in r.getMessage()]
    assert logged and logged[0].exc_info and "a bug nobody expected" in str(logged[0].exc_info[1])
    # A proxy's request id is kept, so its access log and ours agree.
    again = keyed["client"].get("/test-only/boom", headers={"x-request-id": "nginx-0123456789"})
    assert assert_error(again, 500)["request_id"] == "nginx-0123456789"


# -- 8: /metrics -------------------------------------------------------------------------


def test_metrics_need_the_scrape_token_once_keys_exist(keyed: dict[str, Any]) -> None:
    client = keyed["client"]
    # Something that would be labelled with a key's and a collection's name.
    client.post(
        "/api/search", json={"query": "x", "collection": "alpha"}, headers=bearer(keyed["a"])
    )
    for headers in ({}, bearer(keyed["a"]), bearer(keyed["ops"]), bearer(SCRAPE_TOKEN + "x")):
        refused = client.get("/metrics", headers=headers)
        assert_error(refused, 401, "AuthError")
        assert "team-a" not in refused.text and "alpha" not in refused.text
    scraped = client.get("/metrics", headers=bearer(SCRAPE_TOKEN))
    assert scraped.status_code == 200
    assert 'rag_requests_total{app_name="rag",method="POST",path="/api/search"' in scraped.text


def test_metrics_stay_open_without_keys(tmp_path: Path) -> None:
    app = create_app(
        Settings(
            storage=StorageSettings(data_dir=str(tmp_path / "data")),
            llm=LlmSettings(model=TEST_MODEL),
        )
    )
    with TestClient(app, base_url="http://localhost") as client:
        assert client.get("/metrics").status_code == 200


def test_compose_prometheus_scrapes_with_the_replicas_token() -> None:
    import yaml

    from rag.config import load_settings

    from .conftest import ROOT
    from .test_deployment import _compose_environment

    settings = load_settings(ROOT / "config.toml", env=_compose_environment())
    scrape = yaml.safe_load((ROOT / "compose" / "prometheus" / "prometheus.yml").read_text())
    rag_job = next(job for job in scrape["scrape_configs"] if job["job_name"] == "rag")
    assert rag_job["authorization"]["credentials"] == settings.server.metrics_token != ""


# -- 9: one error shape ------------------------------------------------------------------


def test_every_kind_of_error_has_the_documented_shape(keyed: dict[str, Any]) -> None:
    client = keyed["client"]
    ops = bearer(keyed["ops"])
    json_type = {"content-type": "application/json", **ops}
    cases = [
        (client.post("/api/search", json={"query": 5}, headers=ops), 400, "UsageError"),
        (client.post("/api/search", json={"query": "x", "evil": 1}, headers=ops), 400, None),
        (client.post("/api/ask", json={}, headers=ops), 400, None),
        (client.post("/api/search", content=b"{bad", headers=json_type), 400, "UsageError"),
        (client.post("/api/search", content=b"x" * 1_100_000, headers=json_type), 413, None),
        (client.get("/no/such/route"), 404, "NotFoundError"),
        (client.delete("/health"), 405, "MethodNotAllowedError"),
        (client.put("/api/search", json={"query": "x"}, headers=ops), 405, None),
        (client.get("/health", headers={"host": "evil.example"}), 400, "HostError"),
        (client.get("/v1/models"), 401, "AuthError"),
        (client.get("/v1/models", headers=bearer("rag_wrong")), 401, "AuthError"),
        (client.get("/api/jobs/nope", headers=ops), 404, "NotFoundError"),
        (
            client.post(
                "/api/search",
                json={"query": "x", "collection": "alpha"},
                headers=bearer(keyed["b"]),
            ),
            403,
            "ForbiddenError",
        ),
        (
            client.post(
                "/api/documents",
                content=b"x=1",
                headers={"content-type": "application/x-www-form-urlencoded"},
            ),
            403,
            "ForbiddenError",
        ),
    ]
    for response, status, kind in cases:
        assert_error(response, status, kind)
    allow = client.delete("/health").headers.get("allow", "")
    assert "GET" in allow


# -- 10: 429 -----------------------------------------------------------------------------


def test_over_the_rate_limit_is_429_with_retry_after(keyed: dict[str, Any]) -> None:
    client, burst = keyed["client"], bearer(keyed["burst"])
    for _ in range(ServerSettings().rate_limit_per_min + 5):
        response = client.get("/v1/models", headers=burst)
        if response.status_code == 429:
            break
        assert response.status_code == 200, response.text
    assert_error(response, 429, "RateLimitedError")
    assert 1 <= int(response.headers["retry-after"]) <= 60
    # Another key is not held back by this one's burst.
    assert client.get("/v1/models", headers=bearer(keyed["ops"])).status_code == 200


# -- 12: collections and Host headers ----------------------------------------------------


def _reading_routes(collection: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("/api/search", {"query": "launch code", "collection": collection}),
        ("/api/ask", {"question": "What is the launch code?", "collection": collection}),
        (
            "/v1/chat/completions",
            {"model": collection, "messages": [{"role": "user", "content": "Launch code?"}]},
        ),
    ]


def test_unknown_and_foreign_collections_answer_alike_on_every_route(
    keyed: dict[str, Any],
) -> None:
    client = keyed["client"]
    # A collection that does not exist, within the key's scope: 404 on every route.
    for path, body in _reading_routes("no-such-collection"):
        assert_error(
            client.post(path, json=body, headers=bearer(keyed["ops"])), 404, "NotFoundError"
        )
    # Outside the key's scope: the same 403 on every route, whether it exists or not.
    for collection in ("alpha", "zeta"):
        for path, body in _reading_routes(collection):
            response = client.post(path, json=body, headers=bearer(keyed["b"]))
            error = assert_error(response, 403, "ForbiddenError")
            assert collection in error["message"]


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "LOCALHOST",
        "LocalHost:8000",
        "localhost.",
        "localhost.:8000",
        "127.0.0.1:1234",
        "[::1]:8000",
    ],
)
def test_host_names_match_as_dns_compares_them(keyed: dict[str, Any], host: str) -> None:
    assert keyed["client"].get("/health", headers={"host": host}).status_code == 200


@pytest.mark.parametrize(
    "host",
    ["evil.example", "localhost.evil.example", "evil-localhost", "localhost:8000:1", "[::2]", ""],
)
def test_foreign_host_names_are_refused(keyed: dict[str, Any], host: str) -> None:
    assert_error(keyed["client"].get("/health", headers={"host": host}), 400, "HostError")


# -- 13: SIGTERM mid-prefill -------------------------------------------------------------

# About 7,000 tokens: several prefill chunks of a 8k context on the bundled model.
LONG_PROMPT = "The quick brown fox jumps over the lazy dog near the river bank. " * 520


@pytest.mark.parametrize("engine", ["mlx", "llamacpp"])  # MLX's CPU backend: the slowest
def test_sigterm_in_a_long_prefill_exits_within_5_s(tmp_path: Path, engine: str) -> None:
    (tmp_path / "data").mkdir()
    proc, base = start_server(
        tmp_path / "data", RAG_LLM_CONTEXT_TOKENS="8192", RAG_LLM_ENGINE=engine
    )
    log = next((tmp_path / "data").glob("serve-*.log"))
    lines: list[str] = []
    try:
        llm = httpx.get(f"{base}/ready").json()["llm"]
        body = {
            "model": llm,
            "stream": True,
            "messages": [{"role": "user", "content": LONG_PROMPT}],
        }

        def read() -> None:
            try:
                with httpx.stream(
                    "POST", f"{base}/v1/chat/completions", json=body, timeout=300
                ) as r:
                    lines.append(f"status {r.status_code}")
                    lines.extend(line for line in r.iter_lines() if line)
            except httpx.HTTPError as e:
                lines.append(repr(e))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = time.monotonic() + 60
        while len(lines) < 2 and time.monotonic() < deadline:  # the role chunk: generation began
            time.sleep(0.05)
        assert lines[:1] == ["status 200"], lines
        # Into the prefill, which takes seconds on a CPU (a fast GPU may be past it: then
        # this checks a stop mid-answer, which must be as quick).
        time.sleep(0.5)
        assert proc.poll() is None
        started = time.monotonic()
        proc.terminate()
        proc.wait(timeout=60)
        elapsed = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert elapsed < 5.0, f"exit took {elapsed:.1f} s after SIGTERM:\n{log.read_text()[-3000:]}"
    print(f"exit {elapsed:.2f} s after SIGTERM; the stream got {len(lines)} lines")
    reader.join(5)
    assert not reader.is_alive(), "the client's stream was left open"
