"""Domain errors and the HTTP exception handlers that turn them into one JSON error body.

Core code raises these; only `api/` and this module know HTTP. Every error body has the shape
`{"error": "<what is wrong and how to fix it>", "code": "<machine-readable code>"}`; v2 clients
(tritonclient, KServe) read `error`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base of every error the service answers with; `status` and `code` are per class."""

    status: int = 500
    code: str = "internal"

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})


class InvalidInput(ServiceError):
    status, code = 400, "invalid_input"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


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
    status, code = 500, "inference_failed"


class ModelLoadError(ServiceError):
    """A model version could not be loaded: bad config, corrupt ONNX, missing side file."""

    status, code = 400, "model_load_failed"


def error_body(message: str, code: str) -> dict[str, str]:
    return {"error": message, "code": code}


async def _service_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    if exc.status >= 500:
        logger.warning("%s: %s", exc.code, exc.message)
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
    return JSONResponse(
        error_body(str(exc.detail), code), status_code=exc.status_code, headers=getattr(exc, "headers", None)
    )


async def _client_gone(request: Request, _: Exception) -> Response:
    # The client closed the connection while sending its body: nobody is left to answer.
    logger.debug("client disconnected during %s %s", request.method, request.url.path)
    return Response(status_code=499)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        error_body("internal server error; the server log has the details", "internal"), status_code=500
    )


def install_handlers(app: FastAPI) -> None:
    """One handler per family: ours by MRO, request validation, plain HTTP, and the catch-all 500."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
