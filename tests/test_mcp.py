"""The MCP server through the official SDK's own client: `rag mcp` over stdio, and /mcp of a
real `rag serve` over Streamable HTTP with API keys, on the sample index."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from rag.records import Answer, Passage
from web.mcpserver import document_text, document_uri, parse_uri

from .conftest import RAG, ROOT, SAMPLES, rag_env, start_server, stop_server

QUESTIONS = [json.loads(line) for line in (SAMPLES / "questions.jsonl").read_text().splitlines()]
VACATION = QUESTIONS[0]  # samples/handbook.md: 27 days
STATUS_PAGE = QUESTIONS[7]  # samples/incident-runbook.pdf, page 1: every 30 minutes
SOURCES = [
    "samples/handbook.md",
    "samples/incident-runbook.pdf",
    "samples/onboarding.md",
    "samples/release-notes.txt",
]
TOOLS = {"search", "ask", "list_collections", "list_documents"}
# Short greedy answers; the rate limit is low enough for the test to reach it.
SERVER_ENV = {
    "RAG_LLM_ANSWER_TOKENS": "8",
    "RAG_RETRIEVAL_K": "2",
    "RAG_SERVER_RATE_LIMIT_PER_MIN": "8",
}
ANSWER_FIELDS = set(Answer("").to_json())  # what `rag ask --json` prints


async def _tool(session: ClientSession, name: str, **arguments: Any) -> dict[str, Any]:
    result = await session.call_tool(name, arguments)
    assert not result.is_error, result.content
    body = json.loads(result.content[0].text)
    assert body == result.structured_content
    return body


async def _refusal(session: ClientSession, name: str, **arguments: Any) -> dict[str, Any]:
    result = await session.call_tool(name, arguments)
    assert result.is_error, result.content
    return json.loads(result.content[0].text)["error"]


def _check_answer(answer: dict[str, Any], question: dict[str, Any]) -> None:
    assert set(answer) == ANSWER_FIELDS
    assert answer["answer"] and not answer["not_found"]
    assert question["source"] in {c["source"] for c in answer["citations"]}
    assert [c["n"] for c in answer["citations"]] == list(range(1, len(answer["citations"]) + 1))
    assert 0 < answer["usage"]["completion_tokens"] <= 8


def test_document_text_cuts_overlaps_and_marks_pages() -> None:
    def chunk(i: int, text: str, start: int, page: int | None = None) -> Passage:
        return Passage(f"c{i}", "doc", page, "", text, 0.0, "d", i, start, start + len(text))

    text = "One two three. Four five six."
    md = [chunk(0, text[:18], 0), chunk(1, text[10:], 10), chunk(2, "Next section.", 40)]
    assert document_text(md) == text + "\n\nNext section."
    pdf = [chunk(0, "Page one.", 0, 1), chunk(1, "Page two.", 10, 2)]
    assert document_text(pdf) == "[page 1]\n\nPage one.\n\n[page 2]\n\nPage two."
    uri = document_uri("team docs", "guides/a b?.md")
    assert uri == "rag://team%20docs/guides/a%20b%3F.md"
    assert parse_uri(uri) == ("team docs", "guides/a b?.md")


@pytest.mark.slow
def test_stdio_serves_search_answers_and_documents(sample_data_dir: Path, tmp_path: Path) -> None:
    params = StdioServerParameters(
        command=str(RAG),
        args=["mcp"],
        env=rag_env(sample_data_dir, **SERVER_ENV),
        cwd=str(ROOT),
    )
    log = tmp_path / "mcp-stderr.log"

    async def session_run() -> None:
        with log.open("w") as errlog:
            async with (
                stdio_client(params, errlog=errlog) as (read, write),
                ClientSession(read, write) as session,
            ):
                await _stdio_checks(session)

    try:
        asyncio.run(asyncio.wait_for(session_run(), 600))
    except BaseException:
        print(log.read_text())
        raise


async def _stdio_checks(session: ClientSession) -> None:
    init = await session.initialize()
    assert init.server_info.name == "rag"
    assert {t.name for t in (await session.list_tools()).tools} == TOOLS
    hits = (await _tool(session, "search", query=STATUS_PAGE["question"], k=3))["hits"]
    first = hits[0]
    assert (first["source"], first["page"]) == (STATUS_PAGE["source"], STATUS_PAGE["page"])
    assert STATUS_PAGE["answer"] in first["text"] and first["score"] > 0
    assert [h["n"] for h in hits] == [1, 2, 3]
    listed = await _tool(session, "list_collections")
    assert listed == {"default": "default", "collections": ["default"]}
    docs = (await _tool(session, "list_documents"))["documents"]
    assert [d["source"] for d in docs] == SOURCES
    resources = (await session.list_resources()).resources
    assert [r.uri for r in resources] == [d["uri"] for d in docs]
    runbook = await session.read_resource(document_uri("default", STATUS_PAGE["source"]))
    (content,) = runbook.contents
    text = content.text
    assert text.startswith("[page 1]") and "[page 2]" in text and "[page 3]" in text
    # The chunks overlap; the document's text holds each sentence once.
    assert text.count("every 30 minutes") == 1
    bad = await _refusal(session, "search", query="vacation", k=0)
    assert bad["type"] == "UsageError" and "k" in bad["message"]
    _check_answer(await _tool(session, "ask", question=VACATION["question"]), VACATION)


def _add_key(data: Path, name: str, collection: str) -> str:
    done = subprocess.run(
        [str(RAG), "keys", "add", name, "--collection", collection],
        env=rag_env(data),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def keyed(sample_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """`rag serve` on a copy of the sample index with two keys: one reads it, one does not."""
    data = tmp_path_factory.mktemp("mcp-keys") / "data"
    shutil.copytree(sample_data_dir, data, ignore=shutil.ignore_patterns("serve-*.log", "usage"))
    keys = {"docs": _add_key(data, "team-docs", "default"), "beta": _add_key(data, "beta", "beta")}
    loading: list[httpx.Response] = []

    def search_while_loading(base: str) -> None:
        loading.append(_post(base, keys["docs"], "tools/call", _search_params("default")))

    proc, base = start_server(data, while_loading=search_while_loading, **SERVER_ENV)
    try:
        yield {"base": base, "data": data, "keys": keys, "loading": loading}
    finally:
        stop_server(proc)


def _search_params(collection: str) -> dict[str, Any]:
    return {"name": "search", "arguments": {"query": "vacation", "collection": collection}}


def _post(base: str, key: str | None, method: str, params: dict[str, Any]) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{base}/mcp", json=body, headers=headers, timeout=120)


async def _http_session(base: str, key: str, checks: Any) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    timeout = httpx2.Timeout(30, read=300)
    async with (
        httpx2.AsyncClient(headers=headers, timeout=timeout) as http,
        streamable_http_client(f"{base}/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        await checks(session)


@pytest.mark.slow
def test_http_with_a_key_reaches_its_collection(keyed: dict[str, Any]) -> None:
    async def checks(session: ClientSession) -> None:
        assert {t.name for t in (await session.list_tools()).tools} == TOOLS
        hits = (await _tool(session, "search", query=VACATION["question"]))["hits"]
        assert hits[0]["source"] == VACATION["source"]
        assert VACATION["answer"] in hits[0]["text"]
        assert (await _tool(session, "list_collections"))["default"] == "default"
        docs = (await _tool(session, "list_documents", collection="default"))["documents"]
        assert [d["source"] for d in docs] == SOURCES
        handbook = await session.read_resource(document_uri("default", VACATION["source"]))
        assert "27 days of paid vacation" in handbook.contents[0].text
        _check_answer(await _tool(session, "ask", question=VACATION["question"]), VACATION)

    asyncio.run(_http_session(keyed["base"], keyed["keys"]["docs"], checks))
    # The answer is charged to the key, as /api/ask's are (rag report cost).
    lines = [
        json.loads(line)
        for path in (keyed["data"] / "usage").glob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert {(r["key"], r["collection"]) for r in lines} == {("team-docs", "default")}


@pytest.mark.slow
def test_http_refuses_what_the_key_may_not_read(keyed: dict[str, Any]) -> None:
    base, keys = keyed["base"], keyed["keys"]
    # While the models loaded, a search was refused as /api/search would be.
    (loading,) = keyed["loading"]
    assert loading.status_code == 503 and loading.headers["retry-after"]
    assert loading.json()["error"]["type"] == "NotReadyError"

    async def checks(session: ClientSession) -> None:
        assert await _tool(session, "list_collections") == {"default": None, "collections": []}
        assert (await session.list_resources()).resources == []
        for name in ("default", "zeta"):  # the sample collection, and one that does not exist
            refused = await _refusal(session, "search", query="vacation", collection=name)
            assert refused == {
                "type": "ForbiddenError",
                "message": f"this API key may not read collection {name!r}",
            }
            assert (await _refusal(session, "ask", question="Vacation?", collection=name)) == (
                refused
            )
            with pytest.raises(MCPError) as read:
                await session.read_resource(document_uri(name, VACATION["source"]))
            assert read.value.message == refused["message"]

    asyncio.run(_http_session(base, keys["beta"], checks))
    anonymous = _post(base, None, "tools/list", {})
    assert anonymous.status_code == 401 and "API key" in anonymous.json()["error"]["message"]
    stream = httpx.get(f"{base}/mcp", headers={"authorization": f"Bearer {keys['beta']}"})
    assert stream.status_code == 405 and stream.headers["allow"] == "POST"
    # What a page on another site could make a browser send: a form-like POST, or any
    # request under a rebound host name.
    message = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    form = httpx.post(f"{base}/mcp", content=message, headers={"content-type": "text/plain"})
    assert form.status_code == 403 and "CSRF" in form.json()["error"]["message"]
    rebound = httpx.post(
        f"{base}/mcp",
        content=message,
        headers={
            "host": "evil.example",
            "content-type": "application/json",
            "authorization": f"Bearer {keys['beta']}",
        },
    )
    assert rebound.status_code == 400
    # Each search spends one of the key's requests, refused or not: then 429, as on REST.
    for _ in range(30):
        r = _post(base, keys["beta"], "tools/call", _search_params("default"))
        if r.status_code != 200:
            break
    assert r.status_code == 429 and r.json()["error"]["type"] == "RateLimitedError"
