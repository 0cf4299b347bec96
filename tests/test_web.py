"""The real app, served by `rag serve` in its own process, over HTTP."""

from __future__ import annotations

import json

import httpx
import pytest


def test_health_ready_and_openapi(server: str) -> None:
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{server}/ready").json()
    assert ready["status"] == "ready"
    assert ready["llm"].startswith("SmolLM2")
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
