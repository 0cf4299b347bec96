"""The real app, served by `rag serve` in its own process, over HTTP."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from web.page import VENDOR_FILES, VENDOR_PATH

from .conftest import FAST_LLM_ENV, start_server, stop_server


def test_health_ready_and_openapi(server: str) -> None:
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}
    # Uptime monitors probe with HEAD: the GET's status and headers, no body.
    for path in ("/health", "/ready", "/"):
        head, got = httpx.head(f"{server}{path}"), httpx.get(f"{server}{path}")
        assert (head.status_code, head.content) == (200, b""), path
        assert head.headers["content-type"] == got.headers["content-type"], path
    ready = httpx.get(f"{server}/ready").json()
    assert ready["status"] == "ready"
    assert ready["llm"].startswith("smollm2")
    # The engine that runs, and why (llm.engine = "auto" in the test config).
    engine = ready["engine"]
    assert engine["kind"] in ("mlx", "llamacpp") and engine["reason"].startswith("auto: ")
    schema = httpx.get(f"{server}/schema/openapi.json").json()
    assert "/api/ask" in schema["paths"]


def test_ask_returns_the_cli_json_shape_with_citations(server: str) -> None:
    response = httpx.post(
        f"{server}/api/ask",
        json={"question": "Which command promotes the standby database during a failover?"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert set(result) >= {"answer", "citations", "usage"}
    assert result["answer"]
    assert ("samples/incident-runbook.pdf", 3) in {
        (c["source"], c["page"]) for c in result["citations"]
    }
    # Each citation names its document, whose original the page's viewer opens.
    assert all(len(c["doc_id"]) == 24 for c in result["citations"])
    assert result["usage"]["completion_tokens"] > 0


def test_ask_streams_tokens_then_done(server: str) -> None:
    events: list[tuple[str, str]] = []
    with httpx.stream(
        "POST",
        f"{server}/api/ask",
        json={"question": "What is the name of the company wiki?", "stream": True},
        timeout=120,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        event = ""
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((event, line.split(":", 1)[1].strip()))
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "done"
    assert kinds.count("token") >= 1
    done = json.loads(events[-1][1])
    streamed = "".join(json.loads(data) for kind, data in events if kind == "token")
    assert streamed.strip() == done["answer"]
    assert any(c["source"] == "samples/onboarding.md" for c in done["citations"])


@pytest.mark.parametrize(
    "body",
    [{}, {"question": ""}, {"question": "x", "k": 0}, {"question": "x", "evil": 1}, [1, 2]],
)
def test_bad_requests_get_400(server: str, body: object) -> None:
    response = httpx.post(f"{server}/api/ask", json=body, timeout=30)
    assert response.status_code == 400


def test_ui_page_is_served_without_remote_assets(server: str) -> None:
    page = httpx.get(f"{server}/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "/api/ask" in page.text
    assert "http://" not in page.text and "https://" not in page.text


def test_ui_page_policy_names_no_other_origin(server: str) -> None:
    policy = httpx.get(f"{server}/").headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    for name, sources in directives.items():
        for source in sources.split():
            # This origin, nothing, the page's own inline code by hash; images also data:.
            known = source in ("'self'", "'none'") or re.fullmatch(r"'sha256-[\w+/=]+'", source)
            assert known or (name, source) == ("img-src", "data:"), (name, source)
    assert directives["default-src"] == "'none'"
    # pdf.js and its worker, from this origin; never compiled strings or inline handlers.
    assert directives["worker-src"] == "'self'" and "'self'" in directives["script-src"]
    assert "unsafe" not in policy


def test_pdfjs_is_served_from_this_origin_and_compiles_no_strings(server: str) -> None:
    for name in VENDOR_FILES:
        r = httpx.get(f"{server}/static/vendor/{name}")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/javascript")
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.content == (VENDOR_PATH / name).read_bytes()
        # No eval path, so the page's policy needs no 'unsafe-eval' (README there).
        assert not re.search(rb"(?<![\w$])eval\(|\bnew Function\(", r.content)
    # Only those files: not their neighbours, not a path out of the folder.
    assert httpx.get(f"{server}/static/vendor/pdfjs/LICENSE").status_code == 404
    escape = httpx.get(f"{server}/static/vendor/pdfjs/%2e%2e/%2e%2e/page.py")
    assert escape.status_code == 404 and b"import" not in escape.content


def test_every_response_is_nosniff_and_uncached_unless_the_route_says_otherwise(
    server: str,
) -> None:
    responses = {
        "answer": httpx.post(
            f"{server}/api/search", json={"query": "company wiki", "k": 1}, timeout=60
        ),
        "list": httpx.get(f"{server}/api/documents"),
        "bad body": httpx.post(f"{server}/api/ask", json={}, timeout=30),
        "no route": httpx.get(f"{server}/api/nothing-here"),
        "wrong method": httpx.delete(f"{server}/health"),
        # Refused by a middleware, before any route is chosen.
        "bad host": httpx.get(f"{server}/health", headers={"host": "evil.example"}),
        "page": httpx.get(f"{server}/"),
    }
    assert [r.status_code for r in responses.values()] == [200, 200, 400, 404, 405, 400, 200]
    for what, r in responses.items():
        assert r.headers["x-content-type-options"] == "nosniff", what
        assert r.headers["cache-control"] == "no-store", what
    # pdf.js keeps the caching its route asks for.
    vendor = httpx.get(f"{server}/static/vendor/{next(iter(VENDOR_FILES))}")
    assert vendor.headers["cache-control"] == "public, max-age=3600"
    assert vendor.headers.get_list("x-content-type-options") == ["nosniff"]


def test_metrics_count_requests_tokens_and_latency(server: str) -> None:
    httpx.post(
        f"{server}/api/ask", json={"question": "What is the company wiki called?"}, timeout=180
    ).raise_for_status()
    text = httpx.get(f"{server}/metrics").text
    assert 'rag_tokens_total{collection="default",direction="completion",key="anonymous"}' in text
    assert "rag_time_to_first_token_seconds_count" in text
    assert "rag_decode_tokens_per_second_bucket" in text
    assert "rag_queue_depth 0.0" in text
    assert 'rag_requests_total{app_name="rag",method="POST",path="/api/ask"' in text


def test_full_queue_is_503_with_retry_after_and_deadline_is_504(
    sample_data_dir: Path,
) -> None:
    proc, base = start_server(
        sample_data_dir,
        RAG_SERVER_MAX_QUEUE="1",
        RAG_SERVER_REQUEST_TIMEOUT_S="3",
        # The slowest engine, so that an answer surely outlasts the 3 s deadline.
        RAG_LLM_ENGINE="mlx",
        **FAST_LLM_ENV,
    )
    try:
        body = {"question": "How many vacation days do employees get?", "stream": True}
        with httpx.stream("POST", f"{base}/api/ask", json=body, timeout=180) as first:
            assert first.status_code == 200
            second = httpx.post(f"{base}/api/ask", json=body, timeout=30)
            assert second.status_code == 503
            assert second.headers["retry-after"]
            assert "server.max_queue = 1" in second.json()["error"]["message"]
            # A burst on every model route: each one refused at once, and never a 500.
            burst = [
                ("/api/ask", body),
                ("/api/search", {"query": "vacation"}),
                (
                    "/v1/chat/completions",
                    {"model": "default", "messages": [{"role": "user", "content": "vacation?"}]},
                ),
            ] * 4

            def timed(call: tuple[str, dict]) -> tuple[int, float]:
                started = time.monotonic()
                r = httpx.post(base + call[0], json=call[1], timeout=30)
                return r.status_code, time.monotonic() - started

            with ThreadPoolExecutor(max_workers=len(burst)) as pool:
                results = list(pool.map(timed, burst))
            assert [status for status, _ in results] == [503] * len(burst)
            assert max(seconds for _, seconds in results) < 1.0
            events = list(first.iter_lines())
        # The 3 s deadline stopped the first generation; its result says so.
        done = json.loads(events[events.index("event: done") + 1].removeprefix("data: "))
        assert done["finish_reason"] == "cancelled"
        late = httpx.post(f"{base}/api/ask", json={**body, "stream": False}, timeout=180)
        assert late.status_code == 504
        assert "server.request_timeout_s = 3" in late.json()["error"]["message"]
        assert "rag_queue_depth 0.0" in httpx.get(f"{base}/metrics").text
    finally:
        stop_server(proc)


def test_foreign_host_headers_and_origins_are_refused(server: str) -> None:
    # DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends its own Host.
    assert httpx.get(f"{server}/health", headers={"host": "evil.example"}).status_code == 400
    assert httpx.get(f"{server}/health", headers={"host": "localhost"}).status_code == 200
    preflight = httpx.options(
        f"{server}/api/ask",
        headers={"origin": "http://evil.example", "access-control-request-method": "POST"},
    )
    assert "access-control-allow-origin" not in preflight.headers


def test_plan_endpoint_matches_rag_plan(server: str) -> None:
    plan = httpx.get(f"{server}/api/plan", timeout=60).json()
    assert plan["configured"]["fits"] is True
    assert plan["hardware"]["backend"] in ("cpu", "cuda", "metal")
    assert plan["budget_bytes"] > plan["configured"]["weights_bytes"]
    assert len(plan["models"]) >= 20
    # The engine that runs and why; llama.cpp generates one request at a time.
    engine = plan["engine"]
    assert engine["reason"].startswith("auto: ") and engine["max_concurrency"] in (0, 1)
    assert plan["concurrency"] == 1 if engine["kind"] == "llamacpp" else plan["concurrency"] >= 1


def test_doctor_endpoint_runs_the_same_checks(server: str) -> None:
    result = httpx.get(f"{server}/api/doctor", timeout=60).json()
    names = {c["name"] for c in result["checks"]}
    assert {"mlx backend", "llm engine", "model fit", "disk", "port"} <= names
    port = next(c for c in result["checks"] if c["name"] == "port")
    assert port["status"] == "ok"
