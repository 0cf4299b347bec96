"""OpenAI-compatible routes, so any OpenAI client can ask the documents.

`model` picks what answers: a collection's name gives answers grounded in that collection's
documents (with extra `citations` and `sentences` fields), the LLM's own name gives the plain model.
Model names only select among what this server has loaded; nothing is forwarded.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, get, post
from litestar.response import Response, ServerSentEvent, ServerSentEventMessage

from rag.errors import NotFoundError, RagError, UsageError
from rag.records import Answer, Delta
from web.api import readable_collection
from web.auth import Caller
from web.headers import STREAM_HEADERS
from web.models import ModelHost

MAX_EMBEDDING_INPUTS = 256
MAX_INPUT_CHARS = 20_000


class TextPart(msgspec.Struct):
    type: str
    text: str = ""


class ChatMessage(msgspec.Struct):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool = False


class ChatRequest(msgspec.Struct):
    """The fields rag acts on; other OpenAI fields (top_p, user, …) are accepted and ignored."""

    model: str
    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1)]
    stream: bool = False
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=1)] = 1
    stream_options: StreamOptions | None = None
    # Up to four strings that end the answer (cut from it), as in OpenAI's API.
    stop: str | Annotated[list[str], msgspec.Meta(max_length=4)] | None = None
    # rag's own extension: passages to retrieve for a collection model.
    k: Annotated[int, msgspec.Meta(ge=1, le=50)] | None = None


class EmbeddingRequest(msgspec.Struct):
    model: str
    input: str | Annotated[list[str], msgspec.Meta(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
    encoding_format: Literal["float", "base64"] = "float"


def _text(message: ChatMessage) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    if any(part.type != "text" for part in message.content):
        raise UsageError("only text content parts are supported")
    return "".join(part.text for part in message.content)


def _plain_turns(messages: list[ChatMessage]) -> list[dict[str, str]]:
    return [
        {"role": "system" if m.role == "developer" else m.role, "content": _text(m)}
        for m in messages
    ]


@get("/v1/models", summary="Collections (document-grounded) and the plain LLM")
async def list_models(request: Request[Any, Any, Any], caller: Caller) -> dict[str, Any]:
    host: ModelHost = request.app.state.models
    answerer = host.require()
    collections = caller.visible(await host.run(answerer.store.collections))
    created = int(time.time())
    ids = [*collections, answerer.engine.name, answerer.embedder.name]
    return {
        "object": "list",
        "data": [{"id": i, "object": "model", "created": created, "owned_by": "rag"} for i in ids],
    }


@post("/v1/chat/completions", status_code=200, summary="OpenAI chat completions")
async def chat_completions(
    request: Request[Any, Any, Any], data: ChatRequest, caller: Caller
) -> Response[dict[str, Any]] | ServerSentEvent:
    host: ModelHost = request.app.state.models
    answerer = host.require()
    max_tokens = data.max_completion_tokens or data.max_tokens
    stops = [data.stop] if isinstance(data.stop, str) else list(data.stop or [])
    if data.model == answerer.engine.name:
        turns = _plain_turns(data.messages)
        collection = ""

        def make(stop: Any) -> Iterator[Delta | Answer]:
            return answerer.chat(
                turns,
                max_tokens=max_tokens,
                temperature=data.temperature,
                should_stop=stop,
                stop=stops,
            )
    else:
        collection = await readable_collection(
            host,
            answerer,
            caller,
            data.model,
            f"model {data.model!r} is neither a collection nor the LLM; GET /v1/models lists them",
        )
        *earlier, last = data.messages
        if last.role != "user" or not _text(last).strip():
            raise UsageError("the last message must be a non-empty user message")
        # The caller's system messages are dropped: the grounding instructions stay in charge.
        history = [t for t in _plain_turns(earlier) if t["role"] != "system"]
        k = data.k or host.settings.retrieval.k

        def make(stop: Any) -> Iterator[Delta | Answer]:
            return answerer.stream(
                _text(last),
                collection,
                k,
                history=history,
                max_tokens=max_tokens,
                temperature=data.temperature,
                should_stop=stop,
                stop=stops,
            )

    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    if data.stream:
        include_usage = bool(data.stream_options and data.stream_options.include_usage)
        chunks = _stream(
            host.iterate(make, collection, caller.name), completion_id, data.model, include_usage
        )
        return ServerSentEvent(chunks, headers=STREAM_HEADERS)
    answer = await host.answer(make, collection, caller.name)
    checked = answer.to_json()
    return Response(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": data.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.answer},
                    "finish_reason": _finish_reason(answer),
                }
            ],
            "usage": _usage(answer),
            "citations": checked["citations"],
            # Each answer sentence checked against the sources it cites (rag.qa.support).
            "sentences": checked["sentences"],
            # rag's extensions: the query searched for a follow-up, and what did not fit.
            "rewritten_query": answer.rewritten_query,
            "dropped": answer.dropped,
        }
    )


def _finish_reason(answer: Answer) -> str:
    return "length" if answer.finish_reason == "length" else "stop"


def _usage(answer: Answer) -> dict[str, int]:
    u = answer.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    }


async def _stream(
    items: AsyncIterator[Delta | Answer], completion_id: str, model: str, include_usage: bool
) -> AsyncIterator[ServerSentEventMessage]:
    created = int(time.time())

    def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        body = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [choice] if delta is not None else [],
            **extra,
        }
        return msgspec.json.encode(body).decode()

    yield ServerSentEventMessage(data=chunk({"role": "assistant", "content": ""}))
    try:
        async for item in items:
            if isinstance(item, Delta):
                yield ServerSentEventMessage(data=chunk({"content": item.text}))
                continue
            done = item.to_json()
            citations = done["citations"]
            extra = {
                "sentences": done["sentences"],
                "rewritten_query": item.rewritten_query,
                "dropped": item.dropped,
            }
            yield ServerSentEventMessage(
                data=chunk({}, _finish_reason(item), citations=citations, **extra)
            )
            if include_usage:
                yield ServerSentEventMessage(data=chunk(None, usage=_usage(item)))
    except RagError as e:
        # The status line is already sent; OpenAI clients raise on an `error` object instead.
        error = {"type": type(e).__name__, "message": e.message}
        yield ServerSentEventMessage(data=msgspec.json.encode({"error": error}).decode())
        return
    yield ServerSentEventMessage(data="[DONE]")


@post("/v1/embeddings", status_code=200, summary="OpenAI embeddings with the index's model")
async def embeddings(
    request: Request[Any, Any, Any], data: EmbeddingRequest, caller: Caller
) -> dict[str, Any]:
    host: ModelHost = request.app.state.models
    embedder = host.require().embedder
    if data.model != embedder.name:
        raise NotFoundError(f"model {data.model!r} is not served; use {embedder.name!r}")
    texts = [data.input] if isinstance(data.input, str) else data.input
    if any(len(t) > MAX_INPUT_CHARS for t in texts):
        raise UsageError(f"each input must be at most {MAX_INPUT_CHARS} characters")

    def embed() -> tuple[Any, int]:
        return embedder.embed_documents(texts), sum(embedder.count_tokens(t) for t in texts)

    vectors, tokens = await host.run(embed)
    return {
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode()
                if data.encoding_format == "base64"
                else v.tolist(),
            }
            for i, v in enumerate(vectors)
        ],
        "model": embedder.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
