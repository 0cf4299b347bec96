"""REST routes: liveness, readiness, and questions answered from the documents."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Request, get, post
from litestar.response import Response, ServerSentEvent, ServerSentEventMessage

from rag.errors import RagError, UsageError
from rag.records import Answer, Delta
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


async def _stream_events(
    host: ModelHost, question: str, collection: str, k: int
) -> AsyncIterator[ServerSentEventMessage]:
    """`token` events as the model writes, then `done` (or `error`) with the full result.

    Generation runs on the model thread and hands items over through a queue; when the client
    goes away this generator is closed and the flag stops generation at the next token.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Delta | Answer | RagError | None] = asyncio.Queue()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in host.require().stream(question, collection, k, should_stop=stop.is_set):
                loop.call_soon_threadsafe(queue.put_nowait, item)
        except RagError as e:
            loop.call_soon_threadsafe(queue.put_nowait, e)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    task = asyncio.ensure_future(host.run(produce))
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, Delta):
                yield ServerSentEventMessage(event="token", data=json.dumps(item.text))
            elif isinstance(item, Answer):
                yield ServerSentEventMessage(event="done", data=json.dumps(item.to_json()))
            else:
                error = {"type": type(item).__name__, "message": item.message}
                yield ServerSentEventMessage(event="error", data=json.dumps({"error": error}))
    finally:
        stop.set()
        await asyncio.shield(task)


def error_response(_: Request[Any, Any, Any], exc: RagError) -> Response[dict[str, Any]]:
    body = {"error": {"type": type(exc).__name__, "message": exc.message}}
    headers = {"Retry-After": "5"} if exc.http_status == 503 else None
    return Response(body, status_code=exc.http_status, headers=headers)
