"""The Litestar application: routes, error mapping, and model loading at start-up."""

from __future__ import annotations

import signal
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request
from litestar.config.cors import CORSConfig
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin

from rag import __version__
from rag.config import Settings
from web.api import ask, doctor, health, memory_plan, ready, search
from web.auth import KeyRing, RateLimiter, check_caller, provide_caller
from web.csrf import csrf_middleware
from web.documents import Library, document_routes
from web.errors import JsonTooDeepError, error_response, refuse_html_errors
from web.headers import add_default_headers
from web.hosts import host_middleware
from web.jobs import JobRunner, job_events, job_status
from web.mcp import McpEndpoint
from web.metrics import MetricsController, make_prometheus_config
from web.models import ModelHost
from web.openai_api import chat_completions, embeddings, list_models
from web.page import index, load_page, vendor_file

# Signals on which a server (uvicorn) shuts down gracefully.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ApiRequest(Request[Any, Any, Any]):
    """A request whose JSON body nested past the decoder's depth is a 400, not a crash."""

    async def json(self) -> Any:
        try:
            return await super().json()
        except RecursionError:
            raise JsonTooDeepError("the JSON body is nested too deeply") from None

    async def msgpack(self) -> Any:
        try:
            return await super().msgpack()
        except RecursionError:
            raise JsonTooDeepError("the MessagePack body is nested too deeply") from None


def _on_stop_signals(begin_shutdown: Callable[[], None]) -> Callable[[], None]:
    """Run `begin_shutdown` first when the server's own stop signal handlers run.

    uvicorn's handler only stops taking connections, then waits for the open responses;
    a stream in the middle of a long generation would hold the process for its whole
    length. Returns the function that puts the server's handlers back.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signals go to the main thread only (test clients run elsewhere)
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def handler(signum: int, frame: Any) -> None:
        begin_shutdown()
        server_handler = previous[signal.Signals(signum)]
        if callable(server_handler):
            server_handler(signum, frame)

    for sig, server_handler in previous.items():
        if callable(server_handler):  # a server that handles it; otherwise it ends us anyway
            signal.signal(sig, handler)

    def restore() -> None:
        for sig, server_handler in previous.items():
            if callable(server_handler) and signal.getsignal(sig) is handler:
                signal.signal(sig, server_handler)

    return restore


def create_app(settings: Settings) -> Litestar:
    host = ModelHost(settings)
    jobs = JobRunner(settings)
    library = Library(settings)
    mcp = McpEndpoint()

    def begin_shutdown() -> None:
        host.stopping.set()
        jobs.stopping.set()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.models = host
        app.state.keyring = KeyRing(settings.storage.data_path)
        app.state.ratelimiter = RateLimiter(settings.server.rate_limit_per_min)
        app.state.jobs = jobs
        app.state.library = library
        app.state.page = load_page()
        restore_signals = _on_stop_signals(begin_shutdown)
        host.start()
        jobs.start()
        try:
            yield
        finally:
            begin_shutdown()
            restore_signals()
            jobs.close()
            library.close()
            host.close()

    prometheus = make_prometheus_config()
    return Litestar(
        route_handlers=[
            index,
            vendor_file,
            health,
            ready,
            ask,
            search,
            chat_completions,
            embeddings,
            list_models,
            memory_plan,
            doctor,
            *document_routes(settings),
            job_status,
            job_events,
            MetricsController,
            mcp.route,
        ],
        middleware=[
            host_middleware(settings.server.allowed_host_list),
            prometheus.middleware,
            csrf_middleware(settings.storage.data_path),
        ],
        lifespan=[lifespan, mcp.lifespan],
        request_class=ApiRequest,
        # Authentication runs as a guard: before the body is read or parsed.
        guards=[check_caller],
        dependencies={"caller": Provide(provide_caller)},
        # One handler for every error, ours and Litestar's (404, 405, 413, validation, ...).
        exception_handlers={Exception: error_response},
        after_request=refuse_html_errors,
        before_send=[add_default_headers],
        # The JSON document only: the interactive renderers load scripts from public CDNs.
        openapi_config=OpenAPIConfig(
            title="rag", version=__version__, path="/schema", render_plugins=[JsonRenderPlugin()]
        ),
        request_max_body_size=1_000_000,
        # An upload's files plus a few fields; past this the parser stops reading (413).
        multipart_form_part_limit=settings.server.upload_max_files + 8,
        cors_config=(
            CORSConfig(allow_origins=settings.server.cors_origin_list)
            if settings.server.cors_origin_list
            else None
        ),
    )
