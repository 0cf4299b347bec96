"""One error family for the whole product.

Every expected failure is a `RagError` with a message a user can act on. Each subclass
carries the CLI exit code and the HTTP status it maps to, so the CLI and the web app
translate errors the same way without a table of their own.
"""

from __future__ import annotations


class RagError(Exception):
    """Base of every error the product expects and explains."""

    exit_code = 1
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(RagError):
    """A setting is unknown, mistyped or out of range."""

    exit_code = 2
    http_status = 500


class UsageError(RagError):
    """The caller asked for something malformed (bad argument, bad request body)."""

    exit_code = 2
    http_status = 400


class ClusterError(UsageError):
    """`--ray` names a cluster that cannot be reached or cannot run the work asked of it."""

    http_status = 503


class NotFoundError(RagError):
    """A collection, document or file the caller named does not exist."""

    http_status = 404


class ModelLoadError(RagError):
    """A model file is missing, unreadable or of a kind we cannot run."""

    http_status = 503


class EngineError(RagError):
    """The generation server (llm.engine = "openai") cannot be reached or failed a request."""

    http_status = 502


class InsufficientMemoryError(RagError):
    """A model or a request does not fit the memory or context budget."""

    http_status = 503


class ParseError(RagError):
    """A document could not be read; the batch goes on without it.

    `reason` is a stable one-word class for reports: malformed, encrypted, limit, binary,
    too_large, timeout, memory, crashed, no_text, unreadable, ocr (scanned pages OCR could
    not read: Tesseract missing, a language without data, a page that failed).
    """

    http_status = 422

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


class StoreError(RagError):
    """The vector store refused an operation or holds data we cannot use."""

    http_status = 500


class NotReadyError(RagError):
    """The service is still loading its models."""

    http_status = 503


class ContextOverflowError(RagError):
    """A request cannot fit the planned context even with every passage dropped."""

    http_status = 413


class OverloadedError(RagError):
    """Too many requests are waiting for the models; retry later."""

    http_status = 503


class DeadlineError(RagError):
    """A request ran past its time limit and was stopped."""

    http_status = 504


class AuthError(RagError):
    """The request carries no valid API key."""

    http_status = 401


class ForbiddenError(RagError):
    """The API key is valid but not for what was asked."""

    http_status = 403


class RateLimitedError(RagError):
    """The API key sent more requests than its rate allows; `retry_after_s` says when it
    may send the next (the Retry-After header)."""

    http_status = 429

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TooLargeError(RagError):
    """An upload is over a configured size or count limit (server.upload_max_*)."""

    http_status = 413
