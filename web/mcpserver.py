"""The documents over the Model Context Protocol: four tools, and each document as a resource.

One low-level MCP `Server` serves both transports: stdio (`rag mcp`, spawned by a desktop
assistant) and Streamable HTTP (`rag serve` at /mcp, web/mcp.py). Whatever a request may
reach comes from the `Backend` its transport hands over for it -- over HTTP the one of the
request's API key, with the scope checks, admission and usage records of the REST routes --
so this module only shapes arguments and results. A failure the caller can act on (a
collection outside the key's scope, a full queue, a bad argument) comes back as a tool
result with isError set and the RagError's message, which the assistant's model can read.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from itertools import groupby
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, unquote, urlsplit

from mcp import types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError

from rag.errors import ForbiddenError, NotFoundError, RagError, UsageError
from rag.records import Answer, Passage

if TYPE_CHECKING:
    from rag.index.store import StoredDocument

URI_SCHEME = "rag"
# The same bounds as POST /api/search and /api/ask (web/api.py).
MAX_K = 50
MAX_QUESTION_CHARS = 4000
# resources/list answers in pages of this many documents.
RESOURCE_PAGE = 500
INSTRUCTIONS = (
    "The user's own documents, ingested into a private index. Use `search` to find passages "
    "(each with its source file and page) and cite them; use `ask` for an answer written by "
    "the local model from those passages, with checked citations. `list_collections` names "
    "the collections you may read; without `collection` the default one is used."
)


class Backend(Protocol):
    """What one request may reach, its caller's scope applied (web/mcp.py provides it)."""

    async def search(self, query: str, collection: str | None, k: int | None) -> list[Passage]: ...

    async def ask(self, question: str, collection: str | None) -> Answer: ...

    async def collections(self) -> tuple[str | None, list[str]]:
        """The default collection (None when outside the scope) and every readable one."""
        ...

    async def documents(self, collection: str | None) -> tuple[str, list[StoredDocument]]:
        """The collection's name (the default one for None) and its documents."""
        ...

    async def source_chunks(self, collection: str, source: str) -> list[Passage]: ...


BackendFor = Callable[[ServerRequestContext[Any, Any]], Backend]

_COLLECTION = {
    "type": "string",
    "minLength": 1,
    "maxLength": 256,
    "description": "Collection to use; omit it for the default one (see list_collections).",
}
_READ_ONLY = types.ToolAnnotations(read_only_hint=True, open_world_hint=False)
TOOLS = [
    types.Tool(
        name="search",
        title="Search the documents",
        description=(
            "The passages of the user's documents that best match a query (keyword and "
            "semantic search), best first: each with its source file, page (PDFs), heading, "
            "relevance score and text. Fast; cite source and page when you use a passage."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "query": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_QUESTION_CHARS,
                    "description": "What to look for, in words.",
                },
                "collection": _COLLECTION,
                "k": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": MAX_K,
                    "description": "How many passages (default: the server's retrieval.k).",
                },
            },
            "required": ["query"],
            "additionalProperties": False,
        },
        annotations=_READ_ONLY,
    ),
    types.Tool(
        name="ask",
        title="Ask the documents",
        description=(
            "An answer to a question written by the local model from the best-matching "
            "passages, with [n] markers; `citations` lists each source (file, page, passage "
            "text) and whether the answer cites it. `not_found` is true when nothing in the "
            "documents matches. Slower than search: the model generates the answer."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "question": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_QUESTION_CHARS,
                    "description": "The question, as the user would ask it.",
                },
                "collection": _COLLECTION,
            },
            "required": ["question"],
            "additionalProperties": False,
        },
        annotations=_READ_ONLY,
    ),
    types.Tool(
        name="list_collections",
        title="List the collections",
        description=(
            "The document collections this client may read, and the default one that the "
            "other tools use when no collection is given."
        ),
        input_schema={"type": "object", "properties": {}, "additionalProperties": False},
        annotations=_READ_ONLY,
    ),
    types.Tool(
        name="list_documents",
        title="List the documents",
        description=(
            "The documents of a collection: source name, chunk and page counts, and the "
            "rag:// URI to read the document's whole text as a resource."
        ),
        input_schema={
            "type": "object",
            "properties": {"collection": _COLLECTION},
            "additionalProperties": False,
        },
        annotations=_READ_ONLY,
    ),
]
_TOOLS_BY_NAME = {t.name: t for t in TOOLS}
TEMPLATE = types.ResourceTemplate(
    name="document",
    title="A document's text",
    uri_template=f"{URI_SCHEME}://{{collection}}/{{+source}}",
    description="The stored text of a document, by collection and source name (as "
    "list_documents names it), in chunk order with [page N] lines for PDFs.",
    mime_type="text/plain",
)


def document_uri(collection: str, source: str) -> str:
    return f"{URI_SCHEME}://{quote(collection, safe='')}/{quote(source, safe='/')}"


def parse_uri(uri: str) -> tuple[str, str]:
    """(collection, source) of a document's URI."""
    parts = urlsplit(uri)
    if parts.scheme != URI_SCHEME or not parts.netloc or len(parts.path) < 2:
        raise UsageError(f"not a document URI: {uri!r}; use {URI_SCHEME}://COLLECTION/SOURCE")
    return unquote(parts.netloc), unquote(parts.path[1:])


def document_text(chunks: list[Passage]) -> str:
    """One document's text from its chunks (in order): overlaps cut, a line per PDF page."""
    parts: list[str] = []
    end = -1
    page: int | None = None
    for chunk in chunks:
        text = chunk.text
        if chunk.page is not None and chunk.page != page:
            page = chunk.page
            parts.append(("\n\n" if parts else "") + f"[page {page}]\n\n")
        elif parts and chunk.char_start >= 0 and end >= 0:
            if chunk.char_start < end:
                text = text[end - chunk.char_start :]  # the overlap the chunker repeated
            elif chunk.char_start > end:
                text = "\n\n" + text  # the break between two sections is not stored
        elif parts:
            text = "\n\n" + text
        parts.append(text)
        end = chunk.char_end if chunk.char_start >= 0 else -1
    return "".join(parts)


def _arguments(tool: types.Tool, given: Mapping[str, Any] | None) -> dict[str, Any]:
    """The call's arguments checked against the tool's own input schema (what it uses)."""
    args = dict(given or {})
    schema = tool.input_schema
    properties: dict[str, Any] = schema["properties"]
    unknown = sorted(set(args) - set(properties))
    if unknown:
        raise UsageError(f"{tool.name}: unknown argument(s) {', '.join(unknown)}")
    for name in schema.get("required", []):
        if args.get(name) is None:
            raise UsageError(f"{tool.name}: `{name}` is required")
    for name, value in args.items():
        if value is None:
            continue
        rule = properties[name]
        if rule["type"] == "string":
            if not isinstance(value, str):
                raise UsageError(f"{tool.name}: `{name}` must be a string")
            if not value.strip() or len(value) > rule["maxLength"]:
                raise UsageError(
                    f"{tool.name}: `{name}` must be 1 to {rule['maxLength']} characters"
                )
        elif rule["type"] == "integer":
            if isinstance(value, bool) or not isinstance(value, int):
                raise UsageError(f"{tool.name}: `{name}` must be an integer")
            if not rule["minimum"] <= value <= rule["maximum"]:
                raise UsageError(
                    f"{tool.name}: `{name}` must be {rule['minimum']} to {rule['maximum']}"
                )
    return args


async def _search(backend: Backend, args: dict[str, Any]) -> dict[str, Any]:
    hits = await backend.search(args["query"], args.get("collection"), args.get("k"))
    return {"hits": [{"n": n, **asdict(h)} for n, h in enumerate(hits, start=1)]}


async def _ask(backend: Backend, args: dict[str, Any]) -> dict[str, Any]:
    answer = await backend.ask(args["question"], args.get("collection"))
    return answer.to_json()


async def _list_collections(backend: Backend, args: dict[str, Any]) -> dict[str, Any]:
    default, names = await backend.collections()
    return {"default": default, "collections": names}


async def _list_documents(backend: Backend, args: dict[str, Any]) -> dict[str, Any]:
    name, docs = await backend.documents(args.get("collection"))
    return {"collection": name, "documents": [_document_json(name, d) for d in docs]}


def _document_json(collection: str, doc: StoredDocument) -> dict[str, Any]:
    return {
        "doc_id": doc.doc_id,
        "source": doc.source,
        "chunks": doc.chunks,
        "pages": doc.pages,
        "uri": document_uri(collection, doc.source),
    }


_RUN: dict[str, Callable[[Backend, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "search": _search,
    "ask": _ask,
    "list_collections": _list_collections,
    "list_documents": _list_documents,
}


def _result(body: dict[str, Any], is_error: bool = False) -> types.CallToolResult:
    text = json.dumps(body, ensure_ascii=False)
    return types.CallToolResult(
        content=[types.TextContent(text=text)], structured_content=body, is_error=is_error
    )


def _error_code(e: RagError) -> int:
    # Out of scope and absent read alike (ForbiddenError is raised for both).
    if isinstance(e, UsageError | NotFoundError | ForbiddenError):
        return types.INVALID_PARAMS
    return types.INTERNAL_ERROR


def build_server(backend_for: BackendFor) -> Server[Any]:
    """The MCP server over whatever backend each request gets."""

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=TOOLS)

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        tool = _TOOLS_BY_NAME.get(params.name)
        if tool is None:
            raise MCPError(code=types.INVALID_PARAMS, message=f"no tool {params.name!r}")
        try:
            args = _arguments(tool, params.arguments)
            return _result(await _RUN[tool.name](backend_for(ctx), args))
        except RagError as e:
            # The REST routes' error body, so a client tells a refusal from an answer.
            return _result({"error": {"type": type(e).__name__, "message": e.message}}, True)

    async def list_resources(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        backend = backend_for(ctx)
        try:
            start = int(params.cursor) if params and params.cursor else 0
        except ValueError:
            raise MCPError(code=types.INVALID_PARAMS, message="bad cursor") from None
        _, names = await backend.collections()
        resources: list[types.Resource] = []
        for collection in names:
            _, docs = await backend.documents(collection)
            resources.extend(_resource(collection, d) for d in docs)
        page = resources[start : start + RESOURCE_PAGE]
        more = start + RESOURCE_PAGE < len(resources)
        return types.ListResourcesResult(
            resources=page, next_cursor=str(start + RESOURCE_PAGE) if more else None
        )

    async def list_templates(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=[TEMPLATE])

    async def read_resource(
        ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        try:
            collection, source = parse_uri(params.uri)
            chunks = await backend_for(ctx).source_chunks(collection, source)
            if not chunks:
                raise NotFoundError(f"no document {source!r} in collection {collection!r}")
        except RagError as e:
            raise MCPError(
                code=_error_code(e), message=e.message, data={"type": type(e).__name__}
            ) from None
        # Two files ingested under one source name are two documents: one entry each.
        contents: list[types.TextResourceContents | types.BlobResourceContents] = [
            types.TextResourceContents(
                uri=params.uri, mime_type="text/plain", text=document_text(list(group))
            )
            for _, group in groupby(chunks, key=lambda c: c.doc_id)
        ]
        return types.ReadResourceResult(contents=contents)

    return Server(
        "rag",
        version=_version(),
        title="rag: your documents",
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
    )


def _resource(collection: str, doc: StoredDocument) -> types.Resource:
    pages = f", {doc.pages} pages" if doc.pages else ""
    return types.Resource(
        uri=document_uri(collection, doc.source),
        name=doc.source,
        title=f"{doc.source} ({collection})",
        description=f"Collection {collection}: {doc.chunks} chunks{pages}.",
        mime_type="text/plain",
    )


def _version() -> str:
    try:
        return version("rag")
    except PackageNotFoundError:
        return "0"
