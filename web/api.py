"""REST routes: liveness, readiness, and questions answered from the documents."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Annotated, Any

import msgspec
from litestar import Request, get, post
from litestar.response import Response, ServerSentEvent, ServerSentEventMessage

from rag.errors import RagError, UsageError
from rag.records import Delta
from web.models import ModelHost

MAX_K = 50
MAX_QUESTION_CHARS = 4000


class AskRequest(msgspec.Struct, forbid_unknown_fields=True):
    question: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_QUESTION_CHARS)]
    collection: str | None = None
    k: Annotated[int, msgspec.Meta(ge=1, le=MAX_K)] | None = None
    stream: bool = False


def _host(request: Request[Any, Any, Any]) -> ModelHost:
    return request.app.state.models


@get("/health", summary="Liveness: the process answers")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/ready", summary="Readiness: 200 once the models are loaded, 503 before")
async def ready(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    host = _host(request)
    if host.answerer is None:
        reason = host.load_error or "loading models"
        return Response({"status": "not ready", "reason": reason}, status_code=503)
    answerer = host.answerer
    return Response(
        {
            "status": "ready",
            "llm": answerer.engine.name,
            "embedding_model": answerer.embedder.name,
            "context_tokens": answerer.context_tokens,
        }
    )


@post("/api/ask", status_code=200, summary="Answer a question from the documents, with citations")
async def ask(
    request: Request[Any, Any, Any], data: AskRequest
) -> Response[dict[str, Any]] | ServerSentEvent:
    host = _host(request)
    answerer = host.require()
    if not data.question.strip():
        raise UsageError("question is empty")
    settings = host.settings
    collection = data.collection or settings.storage.collection
    k = data.k or settings.retrieval.k
    if data.stream:
        return ServerSentEvent(_stream_events(host, data.question, collection, k))
    answer = await host.run(answerer.ask, data.question, collection, k)
    return Response(answer.to_json())


class SearchRequest(msgspec.Struct, forbid_unknown_fields=True):
    query: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_QUESTION_CHARS)]
    collection: str | None = None
    k: Annotated[int, msgspec.Meta(ge=1, le=MAX_K)] | None = None


@post("/api/search", status_code=200, summary="The passages that best match a query")
async def search(request: Request[Any, Any, Any], data: SearchRequest) -> dict[str, Any]:
    host = _host(request)
    answerer = host.require()
    collection = data.collection or host.settings.storage.collection
    hits = await host.run(
        answerer.search, data.query, collection, data.k or host.settings.retrieval.k
    )
    return {"hits": [{"n": n, **asdict(h)} for n, h in enumerate(hits, start=1)]}


async def _stream_events(
    host: ModelHost, question: str, collection: str, k: int
) -> AsyncIterator[ServerSentEventMessage]:
    """`token` events as the model writes, then `done` (or `error`) with the full result."""
    answerer = host.require()
    try:
        async for item in host.iterate(
            lambda stop: answerer.stream(question, collection, k, should_stop=stop)
        ):
            if isinstance(item, Delta):
                yield ServerSentEventMessage(event="token", data=json.dumps(item.text))
            else:
                yield ServerSentEventMessage(event="done", data=json.dumps(item.to_json()))
    except RagError as e:
        error = {"type": type(e).__name__, "message": e.message}
        yield ServerSentEventMessage(event="error", data=json.dumps({"error": error}))


def error_response(_: Request[Any, Any, Any], exc: RagError) -> Response[dict[str, Any]]:
    body = {"error": {"type": type(exc).__name__, "message": exc.message}}
    headers = {"Retry-After": "5"} if exc.http_status == 503 else None
    return Response(body, status_code=exc.http_status, headers=headers)
