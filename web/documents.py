"""The documents of a collection over HTTP: list, upload (as an ingest job), remove, download.

Every route takes the collection from the request and checks it against the API key's scope
before it touches the index (403 outside the scope, whether the collection exists or not);
a document id outside that collection is a 404, the same as one that does not exist.
Reads run on their own thread and index handle, so a listing never waits behind generation
on the model thread or behind an upload job on the writer thread.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from litestar import Request, delete, get, post
from litestar.response import File, Response

from rag.config import Settings
from rag.errors import NotFoundError, UsageError
from rag.index.originals import remove_documents
from rag.index.store import open_index
from web.auth import AUTH_ONLY, Caller
from web.jobs import JobRunner
from web.models import ModelHost
from web.uploads import receive_uploads, request_limit_bytes

if TYPE_CHECKING:
    from rag.index.store import Store, StoredDocument
    from rag.records import Passage

T = TypeVar("T")
# Collections an upload may create: the names `rag keys add --collection` can scope.
COLLECTION_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class Library:
    """Read-only views of the index for these routes, off the event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rag-docs")
        self._store: Store | None = None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _open(self) -> Store:

        if self._store is None:
            # Any embedding model: listing needs none. Strong consistency: a job's documents
            # are listed the moment it says it is done.
            self._store = open_index(self.settings.storage, None, 0, read_consistency_s=0)
        return self._store

    async def documents(self, collection: str) -> list[StoredDocument]:
        docs = await self._read(lambda: self._open().documents(collection))
        return sorted(docs.values(), key=lambda d: d.source)

    async def find(self, collection: str, doc_id: str) -> StoredDocument | None:
        docs = await self._read(lambda: self._open().documents(collection))
        return docs.get(doc_id)

    async def collections(self) -> list[str]:
        return await self._read(lambda: self._open().collections())

    async def source_chunks(self, collection: str, source: str) -> list[Passage]:
        return await self._read(lambda: self._open().source_chunks(collection, source))


def _state(request: Request[Any, Any, Any]) -> tuple[Settings, Library, JobRunner]:
    state = request.app.state
    return state.models.settings, state.library, state.jobs


def _collection(settings: Settings, caller: Caller, collection: str | None) -> str:
    return caller.require(collection or settings.storage.collection)


def _doc_json(doc: StoredDocument, runner: JobRunner, kept: set[str]) -> dict[str, Any]:
    return {
        "doc_id": doc.doc_id,
        "source": doc.source,
        "chunks": doc.chunks,
        "pages": doc.pages,
        # Whether the service kept its original (storage.keep_originals; rag.index.originals).
        "downloadable": runner.original_of(doc, kept) is not None,
    }


@get(
    "/api/collections",
    dependencies=AUTH_ONLY,
    summary="The collections this API key may read, and the default one",
)
async def list_collections(request: Request[Any, Any, Any], caller: Caller) -> dict[str, Any]:
    settings, library, _ = _state(request)
    default = settings.storage.collection
    names = set(caller.visible(await library.collections()))
    default_visible = bool(caller.visible([default]))
    if default_visible:
        names.add(default)
    return {"default": default if default_visible else None, "collections": sorted(names)}


@get(
    "/api/documents",
    dependencies=AUTH_ONLY,
    summary="The documents of a collection, with chunk and page counts",
)
async def list_documents(
    request: Request[Any, Any, Any], caller: Caller, collection: str | None = None
) -> dict[str, Any]:
    settings, library, runner = _state(request)
    name = _collection(settings, caller, collection)
    docs = await library.documents(name)

    def listing() -> list[dict[str, Any]]:
        kept = runner.originals.hashes()
        return [_doc_json(d, runner, kept) for d in docs]

    return {"collection": name, "documents": await asyncio.to_thread(listing)}


async def upload_documents(
    request: Request[Any, Any, Any], caller: Caller, collection: str | None = None
) -> Response[dict[str, Any]]:
    settings, _, runner = _state(request)
    host: ModelHost = request.app.state.models
    # Everything that can refuse the upload is checked before its bytes are read.
    embedder = host.require().embedder
    name = _collection(settings, caller, collection)
    if not COLLECTION_NAME.match(name):
        raise UsageError(f"collection {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    runner.check_capacity()
    uploads = await receive_uploads(request, settings.server, runner.staging.directory)
    job = runner.submit(name, caller.name, uploads, embedder)
    body = runner.snapshot(job)[1]
    return Response(body, status_code=202, headers={"Location": f"/api/jobs/{job.id}"})


def _remove(
    runner: JobRunner, collection: str, match: Callable[[StoredDocument], bool]
) -> tuple[list[StoredDocument], int]:
    """On the writer thread: remove the matching documents in one commit, then their files."""
    docs, chunks = remove_documents(runner.writer_store(), runner.originals, collection, match)
    for doc in docs:
        runner.remove_upload(doc)
    return docs, chunks


async def _remove_response(
    runner: JobRunner, collection: str, what: str, match: Callable[[StoredDocument], bool]
) -> dict[str, Any]:
    docs, chunks = await runner.write(_remove, runner, collection, match)
    if not docs:
        raise NotFoundError(f"no document {what!r} in collection {collection!r}")
    removed = [{"doc_id": d.doc_id, "source": d.source} for d in docs]
    return {"collection": collection, "removed": removed, "chunks": chunks}


@delete(
    "/api/documents",
    status_code=200,
    dependencies=AUTH_ONLY,
    summary="Remove a document by its source name",
)
async def remove_by_source(
    request: Request[Any, Any, Any], caller: Caller, source: str, collection: str | None = None
) -> dict[str, Any]:
    settings, _, runner = _state(request)
    name = _collection(settings, caller, collection)
    return await _remove_response(runner, name, source, lambda d: d.source == source)


@delete(
    "/api/documents/{doc_id:str}",
    status_code=200,
    dependencies=AUTH_ONLY,
    summary="Remove a document by its id",
)
async def remove_by_id(
    request: Request[Any, Any, Any], caller: Caller, doc_id: str, collection: str | None = None
) -> dict[str, Any]:
    settings, _, runner = _state(request)
    name = _collection(settings, caller, collection)
    return await _remove_response(runner, name, doc_id, lambda d: d.doc_id == doc_id)


@get(
    "/api/documents/{doc_id:str}/source",
    dependencies=AUTH_ONLY,
    summary="Download a document's original file, as the service kept it",
)
async def document_source(
    request: Request[Any, Any, Any], caller: Caller, doc_id: str, collection: str | None = None
) -> File:
    settings, library, runner = _state(request)
    name = _collection(settings, caller, collection)
    doc = await library.find(name, doc_id)
    if doc is None:
        raise NotFoundError(f"no document {doc_id!r} in collection {name!r}")
    path = await asyncio.to_thread(runner.original_of, doc)
    if path is None:
        raise NotFoundError(
            f"{doc.source} has no kept original: storage.keep_originals was false when it "
            "was ingested (with it true, ingesting the file again keeps it)"
        )
    return File(
        path,
        filename=Path(doc.source).name or "document",
        media_type="application/octet-stream",
        content_disposition_type="attachment",
        # A kept HTML file must never run as a page of this origin (nosniff comes with
        # every response: web/headers.py).
        headers={"Content-Security-Policy": "sandbox; default-src 'none'"},
    )


def document_routes(settings: Settings) -> list[Any]:
    # Only the upload route reads large bodies (its limit comes from the settings, hence the
    # handler is made here); every other route keeps the app's 1 MB cap.
    upload = post(
        "/api/documents",
        status_code=202,
        dependencies=AUTH_ONLY,
        request_max_body_size=request_limit_bytes(settings.server),
        summary="Upload documents (multipart, field `files`); returns the ingest job to watch",
    )(upload_documents)
    return [
        list_collections,
        list_documents,
        upload,
        remove_by_source,
        remove_by_id,
        document_source,
    ]
