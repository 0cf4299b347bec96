"""The Litestar application: routes, error mapping, and model loading at start-up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from litestar import Litestar, get
from litestar.config.allowed_hosts import AllowedHostsConfig
from litestar.config.cors import CORSConfig
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.plugins.prometheus import PrometheusController
from litestar.response import File

from rag.config import Settings
from rag.errors import RagError
from web.api import ask, doctor, error_response, health, memory_plan, ready, search
from web.auth import KeyRing, RateLimiter, provide_caller
from web.metrics import make_prometheus_config
from web.models import ModelHost
from web.openai_api import chat_completions, embeddings, list_models

STATIC = Path(__file__).parent / "static"


@get("/", include_in_schema=False)
async def index() -> File:
    return File(STATIC / "index.html", content_disposition_type="inline", media_type="text/html")


def create_app(settings: Settings) -> Litestar:
    host = ModelHost(settings)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.models = host
        app.state.keyring = KeyRing(settings.storage.data_path)
        app.state.ratelimiter = RateLimiter(settings.server.rate_limit_per_min)
        host.start()
        try:
            yield
        finally:
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
            PrometheusController,
        ],
        middleware=[prometheus.middleware],
        lifespan=[lifespan],
        dependencies={"caller": Provide(provide_caller)},
        exception_handlers={RagError: error_response},
        # The JSON document only: the interactive renderers load scripts from public CDNs.
        openapi_config=OpenAPIConfig(
            title="rag", version="0.1.0", path="/schema", render_plugins=[JsonRenderPlugin()]
        ),
        request_max_body_size=1_000_000,
        allowed_hosts=AllowedHostsConfig(
            allowed_hosts=settings.server.allowed_host_list, www_redirect=False
        ),
        cors_config=(
            CORSConfig(allow_origins=settings.server.cors_origin_list)
            if settings.server.cors_origin_list
            else None
        ),
    )
