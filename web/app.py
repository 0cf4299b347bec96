"""The Litestar application: routes, error mapping, and model loading at start-up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.config.allowed_hosts import AllowedHostsConfig
from litestar.config.cors import CORSConfig
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.plugins.prometheus import PrometheusController

from rag.config import Settings
from rag.errors import RagError
from web.api import ask, doctor, error_response, health, memory_plan, ready, search
from web.auth import KeyRing, RateLimiter, provide_caller
from web.csrf import csrf_middleware
from web.documents import Library, document_routes
from web.jobs import JobRunner, job_events, job_status
from web.mcp import McpEndpoint
from web.metrics import make_prometheus_config
from web.models import ModelHost
from web.openai_api import chat_completions, embeddings, list_models
from web.page import index, load_page


def create_app(settings: Settings) -> Litestar:
    host = ModelHost(settings)
    jobs = JobRunner(settings)
    library = Library(settings)
    mcp = McpEndpoint()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.models = host
        app.state.keyring = KeyRing(settings.storage.data_path)
        app.state.ratelimiter = RateLimiter(settings.server.rate_limit_per_min)
        app.state.jobs = jobs
        app.state.library = library
        app.state.page = load_page()
        host.start()
        jobs.start()
        try:
            yield
        finally:
            jobs.close()
            library.close()
            host.close()

    prometheus = make_prometheus_config()
    return Litestar(
        route_handlers=[
            index,
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
            PrometheusController,
            mcp.route,
        ],
        middleware=[prometheus.middleware, csrf_middleware(settings.storage.data_path)],
        lifespan=[lifespan, mcp.lifespan],
        dependencies={"caller": Provide(provide_caller)},
        exception_handlers={RagError: error_response},
        # The JSON document only: the interactive renderers load scripts from public CDNs.
        openapi_config=OpenAPIConfig(
            title="rag", version="0.1.0", path="/schema", render_plugins=[JsonRenderPlugin()]
        ),
        request_max_body_size=1_000_000,
        # An upload's files plus a few fields; past this the parser stops reading (413).
        multipart_form_part_limit=settings.server.upload_max_files + 8,
        allowed_hosts=AllowedHostsConfig(
            allowed_hosts=settings.server.allowed_host_list, www_redirect=False
        ),
        cors_config=(
            CORSConfig(allow_origins=settings.server.cors_origin_list)
            if settings.server.cors_origin_list
            else None
        ),
    )
