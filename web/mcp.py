"""The MCP server (web.mcpserver) on the service's pieces: /mcp over HTTP, and `rag mcp`.

Over HTTP the endpoint speaks Streamable HTTP in its stateless JSON form: each POST carries
one JSON-RPC message and gets one JSON answer, so no session lives on the server and any
replica behind a load balancer can answer. Every request is authenticated as on the REST
routes (web/auth.py): 401 without a valid key when keys are configured, and a tool's
collection is checked against the key's scope, a refusal reading the same whether the
collection exists or not. A `search` or `ask` call spends one of the key's requests
(server.rate_limit_per_min, 429) and is refused with 503 and Retry-After while the models
load or the queue is full, before the MCP layer sees it; generation goes through the
ModelHost like /api/ask, so metrics, usage and cost records are the same.

Browsers: the POST must be `Content-Type: application/json` (the SDK answers anything else
with 400), which a page on another site can only send after a CORS preflight, and the CSRF
middleware refuses the form-like requests it could send without one. The app's allowed
hosts stop DNS rebinding, so the SDK's own Host check is left off (it would refuse the
host names server.allowed_hosts adds).

Over stdio the same tools run for the local user, with the CLI's reach: every collection.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from litestar import Litestar, Request, asgi
from litestar.exceptions import MethodNotAllowedException
from litestar.types import Receive, ReceiveMessage, Scope, Send
from mcp.server.context import ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings

from rag.config import Settings
from rag.errors import OverloadedError
from rag.records import Answer, Passage
from web.auth import ANONYMOUS, Caller, authenticate
from web.documents import Library
from web.mcpserver import Backend, build_server
from web.models import ModelHost

if TYPE_CHECKING:
    from rag.index.store import StoredDocument

MCP_PATH = "/mcp"
# The app's cap on JSON bodies (web/app.py's request_max_body_size).
MAX_BODY_BYTES = 1_000_000
# Tools that use the models: rate-limited and admission-controlled like /api/ask.
MODEL_TOOLS = {"search", "ask"}
_CALLER = "rag.mcp.caller"  # the ASGI scope key the authenticated caller travels under


@dataclass
class ServiceBackend:
    """The MCP tools' reach for one caller, through the pieces the REST routes use."""

    host: ModelHost
    library: Library
    caller: Caller
    # stdio: a question asked while the models load waits for them instead of a refusal.
    wait_for_models: bool = False

    @property
    def settings(self) -> Settings:
        return self.host.settings

    def _collection(self, name: str | None) -> str:
        return self.caller.require(name or self.settings.storage.collection)

    async def _loaded(self) -> None:
        while self.wait_for_models and self.host.answerer is None and not self.host.load_error:
            await anyio.sleep(0.1)

    async def search(self, query: str, collection: str | None, k: int | None) -> list[Passage]:
        await self._loaded()
        answerer = self.host.require()
        name = self._collection(collection)
        return await self.host.run(answerer.search, query, name, k or self.settings.retrieval.k)

    async def ask(self, question: str, collection: str | None) -> Answer:
        await self._loaded()
        answerer = self.host.require()
        name = self._collection(collection)
        k = self.settings.retrieval.k
        return await self.host.answer(
            lambda stop: answerer.stream(question, name, k, should_stop=stop),
            name,
            self.caller.name,
        )

    async def collections(self) -> tuple[str | None, list[str]]:
        # As GET /api/collections: the default one is listed even before it holds anything.
        default = self.settings.storage.collection
        names = set(self.caller.visible(await self.library.collections()))
        visible = bool(self.caller.visible([default]))
        if visible:
            names.add(default)
        return (default if visible else None), sorted(names)

    async def documents(self, collection: str | None) -> tuple[str, list[StoredDocument]]:
        name = self._collection(collection)
        return name, await self.library.documents(name)

    async def source_chunks(self, collection: str, source: str) -> list[Passage]:
        return await self.library.source_chunks(self._collection(collection), source)


def _request_backend(ctx: ServerRequestContext[Any, Any]) -> Backend:
    """The backend of an HTTP request: its caller, set by the /mcp handler before dispatch."""
    assert ctx.request is not None  # the HTTP transport hands every message its request
    scope = ctx.request.scope
    state = scope["litestar_app"].state
    return ServiceBackend(state.models, state.library, scope[_CALLER])


class McpEndpoint:
    """/mcp: the route handler and the lifespan that runs the SDK's session manager."""

    def __init__(self) -> None:
        # The SDK logs each stateless request at INFO ("Terminating session: None").
        logging.getLogger("mcp").setLevel(logging.WARNING)
        self.sessions = StreamableHTTPSessionManager(
            app=build_server(_request_backend),
            json_response=True,
            stateless=True,
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
            max_request_body_size=MAX_BODY_BYTES,
        )
        sessions = self.sessions

        @asgi(MCP_PATH, copy_scope=True)
        async def mcp_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await send({"type": "websocket.close", "code": 1008, "reason": ""})
                return
            request: Request[Any, Any, Any] = Request(scope)
            caller = await authenticate(request)  # a RagError here is the app's JSON error
            if scope["method"] != "POST":  # type: ignore[typeddict-item]  # http scope
                # Stateless: no session to end (DELETE) and no stream of server messages
                # (GET); the spec's answer for both is 405.
                raise MethodNotAllowedException(
                    "this MCP endpoint is stateless: POST each JSON-RPC message",
                    headers={"Allow": "POST"},
                )
            body, receive = await _peek_body(receive)
            _admit(request.app, caller, body)
            scope[_CALLER] = caller  # type: ignore[literal-required]  # our own scope key
            await sessions.handle_request(scope, receive, send)  # type: ignore[arg-type]  # Litestar's ASGI types, Starlette's names

        self.route = mcp_endpoint

    @asynccontextmanager
    async def lifespan(self, app: Litestar) -> AsyncIterator[None]:
        async with self.sessions.run():
            yield


async def _peek_body(receive: Receive) -> tuple[bytes | None, Receive]:
    """The request body (None past MAX_BODY_BYTES, for the SDK to refuse) and a receive
    that hands the same messages on."""
    messages: list[ReceiveMessage] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        size += len(message.get("body", b""))
        if size > MAX_BODY_BYTES or not message.get("more_body", False):
            break
    body = None
    if size <= MAX_BODY_BYTES:
        parts = [m.get("body", b"") for m in messages if m["type"] == "http.request"]
        body = b"".join(p for p in parts if isinstance(p, bytes))

    async def replay() -> ReceiveMessage:
        return messages.pop(0) if messages else await receive()

    return body, replay


def _admit(app: Litestar, caller: Caller, body: bytes | None) -> None:
    """Rate limit and admission for the model tools this POST calls (429 or 503 here)."""
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        return  # the SDK answers a parse error
    calls = [
        m
        for m in (parsed if isinstance(parsed, list) else [parsed])
        if isinstance(m, dict)
        and m.get("method") == "tools/call"
        and isinstance(m.get("params"), dict)
        and m["params"].get("name") in MODEL_TOOLS
    ]
    if not calls:
        return
    host: ModelHost = app.state.models
    host.require()
    for _ in calls:
        app.state.ratelimiter.take(caller.name)
    limit = host.settings.server.max_queue
    if host.queue_depth >= limit:
        # The tool's own admission (ModelHost.run/answer) holds the slot; this check only
        # lets a full queue answer 503 + Retry-After as on /api/ask.
        raise OverloadedError(
            f"{host.queue_depth} requests are already running or waiting "
            f"(server.max_queue = {limit}); retry shortly"
        )


def run_stdio(settings: Settings) -> None:
    """`rag mcp`: serve the MCP tools on stdin/stdout until the client closes them."""
    anyio.run(_serve_stdio, settings)


async def _serve_stdio(settings: Settings) -> None:
    host = ModelHost(settings)
    library = Library(settings)
    backend = ServiceBackend(host, library, Caller(ANONYMOUS, None), wait_for_models=True)
    server = build_server(lambda ctx: backend)
    # stdio_server points fd 1 at stderr while it serves, so the models load after it took
    # the wire: nothing they print can corrupt the protocol stream.
    async with stdio_server() as (read_stream, write_stream):
        host.start()
        try:
            await server.run(read_stream, write_stream, server.create_initialization_options())
        finally:
            library.close()
            host.close()
