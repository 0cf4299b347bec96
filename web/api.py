"""REST routes: liveness, readiness, and questions answered from the documents."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, get, post, route
from litestar.response import Response, ServerSentEvent, ServerSentEventMessage

from rag.accounts.usage import UsageLedger, recent_speeds
from rag.errors import NotFoundError, RagError, UsageError
from rag.llm.load import choose_engine
from rag.llm.sizing import size_machine
from rag.ops.check import checks_to_json
from rag.ops.doctor import run_checks
from rag.qa.answerer import Answerer
from rag.records import Answer, Delta
from web.auth import AUTH_ONLY, Caller
from web.headers import STREAM_HEADERS
from web.models import ModelHost

MAX_K = 50
MAX_QUESTION_CHARS = 4000
# A conversation's earlier turns sent with a follow-up question; the packer drops the
# oldest ones first when they do not fit the context.
MAX_HISTORY_TURNS = 40
MAX_TURN_CHARS = 16_000


class Turn(msgspec.Struct, forbid_unknown_fields=True):
    role: Literal["user", "assistant"]
    content: Annotated[str, msgspec.Meta(max_length=MAX_TURN_CHARS)]


class AskRequest(msgspec.Struct, forbid_unknown_fields=True):
    question: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_QUESTION_CHARS)]
    collection: str | None = None
    k: Annotated[int, msgspec.Meta(ge=1, le=MAX_K)] | None = None
    stream: bool = False
    # Earlier turns, oldest first, so a follow-up question is read in its conversation.
    history: Annotated[list[Turn], msgspec.Meta(max_length=MAX_HISTORY_TURNS)] = msgspec.field(
        default_factory=list
    )


def _host(request: Request[Any, Any, Any]) -> ModelHost:
    return request.app.state.models


async def readable_collection(
    host: ModelHost, answerer: Answerer, caller: Caller, name: str, missing: str = ""
) -> str:
    """`name` if the caller may read it and it exists, on every route that reads one.

    Outside the key's scope: 403, the same whether the collection exists or not. In scope
    but holding no documents (the default collection aside, which always exists): 404.
    """
    caller.require(name)
    if name != host.settings.storage.collection and name not in await host.run(
        answerer.store.collections
    ):
        raise NotFoundError(missing or f"no collection {name!r}; GET /api/collections lists them")
    return name


# HEAD too, for uptime monitors that probe with it (the server sends no body for HEAD).
@route("/health", http_method=["GET", "HEAD"], summary="Liveness: the process answers")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@route(
    "/ready",
    http_method=["GET", "HEAD"],
    summary="Readiness: 200 once the models are loaded, 503 before",
)
async def ready(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    host = _host(request)
    auth = bool(request.app.state.keyring.keys())
    if host.answerer is None:
        reason = host.load_error or "loading models"
        body = {"status": "not ready", "reason": reason, "auth": auth}
        return Response(body, status_code=503)
    answerer = host.answerer
    return Response(
        {
            "status": "ready",
            "llm": answerer.engine.name,
            "engine": answerer.engine.info.to_json(),
            "embedding_model": answerer.embedder.name,
            "context_tokens": answerer.context_tokens,
            "auth": auth,
        }
    )


@post("/api/ask", status_code=200, summary="Answer a question from the documents, with citations")
async def ask(
    request: Request[Any, Any, Any], data: AskRequest, caller: Caller
) -> Response[dict[str, Any]] | ServerSentEvent:
    host = _host(request)
    answerer = host.require()
    if not data.question.strip():
        raise UsageError("question is empty")
    settings = host.settings
    collection = await readable_collection(
        host, answerer, caller, data.collection or settings.storage.collection
    )
    k = data.k or settings.retrieval.k
    history = [{"role": t.role, "content": t.content} for t in data.history]
    if data.stream:
        items = host.iterate(
            lambda stop: answerer.stream(
                data.question, collection, k, history=history, should_stop=stop
            ),
            collection,
            caller.name,
        )
        return ServerSentEvent(_stream_events(items), headers=STREAM_HEADERS)
    answer = await host.answer(
        lambda stop: answerer.stream(
            data.question, collection, k, history=history, should_stop=stop
        ),
        collection,
        caller.name,
    )
    return Response(answer.to_json())


@get(
    "/api/plan",
    dependencies=AUTH_ONLY,
    summary="The memory plan: machine, model, context, what fits and why",
)
async def memory_plan(request: Request[Any, Any, Any], caller: Caller) -> dict[str, Any]:

    host = _host(request)
    # Reads model metadata from disk: off the event loop, but not on the busy model thread.
    measured = recent_speeds(UsageLedger(host.settings.storage.data_path).read())
    sizing = await asyncio.to_thread(size_machine, host.settings, measured=measured)
    # The engine that runs (once loaded), else the one llm.engine resolves to, and why.
    if host.answerer is not None:
        engine = host.answerer.engine.info.to_json()
    else:
        engine = (await asyncio.to_thread(choose_engine, host.settings.llm)).to_json()
    return {**sizing.to_json(), "engine": engine, "concurrency": host.concurrency}


@get(
    "/api/doctor",
    dependencies=AUTH_ONLY,
    summary="The `rag doctor` checks: status, evidence and fix of each",
)
async def doctor(request: Request[Any, Any, Any], caller: Caller) -> dict[str, Any]:

    checks = await asyncio.to_thread(run_checks, _host(request).settings)
    return checks_to_json(checks)


class SearchRequest(msgspec.Struct, forbid_unknown_fields=True):
    query: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_QUESTION_CHARS)]
    collection: str | None = None
    k: Annotated[int, msgspec.Meta(ge=1, le=MAX_K)] | None = None


@post("/api/search", status_code=200, summary="The passages that best match a query")
async def search(
    request: Request[Any, Any, Any], data: SearchRequest, caller: Caller
) -> dict[str, Any]:
    host = _host(request)
    answerer = host.require()
    collection = await readable_collection(
        host, answerer, caller, data.collection or host.settings.storage.collection
    )
    hits = await host.run(
        answerer.search, data.query, collection, data.k or host.settings.retrieval.k
    )
    return {"hits": [{"n": n, **asdict(h)} for n, h in enumerate(hits, start=1)]}


async def _stream_events(
    items: AsyncIterator[Delta | Answer],
) -> AsyncIterator[ServerSentEventMessage]:
    """`token` events as the model writes, then `done` (or `error`) with the full result."""
    try:
        async for item in items:
            if isinstance(item, Delta):
                yield ServerSentEventMessage(event="token", data=json.dumps(item.text))
            else:
                yield ServerSentEventMessage(event="done", data=json.dumps(item.to_json()))
    except RagError as e:
        error = {"type": type(e).__name__, "message": e.message}
        yield ServerSentEventMessage(event="error", data=json.dumps({"error": error}))
