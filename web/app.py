"""The Litestar application: routes, error mapping, and model loading at start-up."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from litestar import Litestar, get
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.response import File

from rag.config import Settings
from rag.errors import RagError
from web.api import ask, error_response, health, ready, search
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
        host.start()
        try:
            yield
        finally:
            host.close()

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
        ],
        lifespan=[lifespan],
        exception_handlers={RagError: error_response},
        # The JSON document only: the interactive renderers load scripts from public CDNs.
        openapi_config=OpenAPIConfig(
            title="rag", version="0.1.0", path="/schema", render_plugins=[JsonRenderPlugin()]
        ),
        request_max_body_size=1_000_000,
    )
