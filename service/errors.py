"""Domain errors and the HTTP exception handlers that turn them into one JSON error body.

Core code raises these; only `api/` and this module know HTTP. Every error body has the shape
`{"error": "<what is wrong and how to fix it>", "code": "<machine-readable code>"}`; v2 clients
(tritonclient, KServe) read `error`.

Nothing internal leaks: a 500 (an `InferenceFailed`, or any unexpected exception) answers
"internal error" with the request id, and the details go to the log under that id. Every message is
passed through `redact_paths` when the error is made, so file-system paths appear relative to the
model repository (`clf/1/model.onnx`), and any other absolute path is cut to its file name.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar, Self

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service import log

logger = logging.getLogger(__name__)

# ---- no internals in responses ------------------------------------------------------------------------

_ROOTS: dict[str, str] = {}
"""Known folder prefixes -> what replaces them in messages ('' for the model repository: paths become
relative to it)."""
_URL_ROOTS = frozenset({"v1", "v2", "docs", "redoc", "metrics", "openapi.json", "ui", "static"})
_ABSOLUTE = re.compile(r"(?<![\w./~-])/(?:[^\s/'\"`(),;:<>\[\]{}]+/)+[^\s/'\"`(),;:<>\[\]{}]*")


def add_path_root(folder: Path) -> None:
    """Show paths under `folder` (the model repository) relative to it in every error message."""
    for form in {str(folder), os.path.abspath(folder), str(folder.resolve())}:
        if form not in (".", "/", ""):
            _ROOTS[form.rstrip("/")] = ""


def redact_paths(text: str) -> str:
    """`text` with model-repository paths made relative and any other absolute path cut to its name."""
    for root in sorted(_ROOTS, key=len, reverse=True):
        if root in text:
            text = text.replace(root + "/", "").replace(root, "the model repository")
    return _ABSOLUTE.sub(_shorten, text) if "/" in text else text


def _shorten(match: re.Match[str]) -> str:
    found = match.group(0)
    first = found.split("/", 2)[1]
    if first in _URL_ROOTS:  # a route named in a hint ("POST /v2/models/x/infer"), not a file
        return found
    return found.rstrip("/").rsplit("/", 1)[-1] or found


def internal_message() -> str:
    """The only text a 500 answers with; the request id finds the details in the log."""
    return f"internal error (request id {log.request_id.get()}); the server log has the details"


class ServiceError(Exception):
    """Base of every error the service answers with; `status` and `code` are per class.

    `detail` is the full message (paths redacted); `message` is what the client sees: `detail`, or
    for classes that do not `expose` it (500s), `internal_message()` in the current request's context.
    """

    status: int = 500
    code: str = "internal"
    expose: ClassVar[bool] = True

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        detail = redact_paths(message)
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})

    @property
    def message(self) -> str:
        return self.detail if self.expose else internal_message()

    def copy(self) -> Self:
        """A fresh error with the same class, message and headers, and no traceback: one per request
        when one failure answers several requests (a failed batch)."""
        twin = copy.copy(self)
        twin.headers = dict(self.headers)
        twin.__traceback__ = twin.__cause__ = twin.__context__ = None
        return twin


class InvalidInput(ServiceError):
    status, code = 400, "invalid_input"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class BodyTimeout(ServiceError):
    status, code = 408, "request_body_timeout"


class ModelNotFound(ServiceError):
    status, code = 404, "model_not_found"


class ModelNotReady(ServiceError):
    status, code = 503, "model_not_ready"


class QueueFull(ServiceError):
    status, code = 503, "queue_full"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after_s))})


class ShuttingDown(ServiceError):
    status, code = 503, "shutting_down"

    def __init__(self, message: str = "the server is shutting down; retry on another replica") -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class RequestTimeout(ServiceError):
    status, code = 504, "timeout"


class InferenceFailed(ServiceError):
    """The model or its post-processing failed; the client sees `internal_message()`, the log the detail."""

    status, code = 500, "inference_failed"
    expose = False


class ModelLoadError(ServiceError):
    """A model version could not be loaded: bad config, corrupt ONNX, missing side file."""

    status, code = 400, "model_load_failed"


def error_body(message: str, code: str) -> dict[str, str]:
    return {"error": message, "code": code}


def log_service_error(exc: ServiceError) -> None:
    """Server-side failures go to the log with their detail (tagged with the request id)."""
    if exc.status >= 500:
        logger.warning("%s: %s", exc.code, exc.detail)


async def _service_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    log_service_error(exc)
    return JSONResponse(error_body(exc.message, exc.code), status_code=exc.status, headers=exc.headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "request does not match the schema: " + "; ".join(parts) + " (see /docs for the expected body)"


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(error_body(_describe_validation(exc), "invalid_request"), status_code=422)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    message = internal_message() if exc.status_code >= 500 else redact_paths(str(exc.detail))
    return JSONResponse(
        error_body(message, code), status_code=exc.status_code, headers=getattr(exc, "headers", None)
    )


async def _client_gone(request: Request, _: Exception) -> Response:
    # The client closed the connection while sending its body: nobody is left to answer.
    logger.debug("client disconnected during %s %s", request.method, request.url.path)
    return Response(status_code=499)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(error_body(internal_message(), "internal"), status_code=500)


def install_handlers(app: FastAPI) -> None:
    """One handler per family: ours by MRO, request validation, plain HTTP, and the catch-all 500."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
