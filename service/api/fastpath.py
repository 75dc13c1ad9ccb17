"""The v2 infer route as a pure ASGI middleware: the hot path without FastAPI's router and dependencies.

Profiling a 1x28x28 CNN under load put FastAPI's route matching (a `matches` call per route) and
dependency solving at about a third of the server's CPU per request, more than ONNX Runtime itself.
`InferFastPath` matches `POST /v2/models/{name}[/versions/{version}]/infer` with one regex and calls
the same `v2.infer` the FastAPI routes call, so behaviour, errors and metrics are identical; the
FastAPI routes stay to document the operation in OpenAPI (and serve it if this middleware is not
installed). It sits inside `RequestContext` and `BodyLimit`, so request ids and the body limit apply.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ServiceError, error_body

logger = logging.getLogger(__name__)

_INFER = re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")


class InferFastPath:
    def __init__(self, app: ASGIApp, *, state: Any) -> None:
        self.app = app
        self.state = state
        """The FastAPI app's `state`: `registry` (set by the lifespan) and `settings`."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _INFER.fullmatch(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        registry = getattr(self.state, "registry", None)
        if match is None or registry is None:
            await self.app(scope, receive, send)
            return
        from service.api import v2  # the routes module imports the registry; this module must not at import

        body = await _read_body(receive)  # BodyLimit's 413 propagates from here
        if body is None:
            return  # the client went away
        headers = Headers(scope=scope)
        settings = self.state.settings
        try:
            body = v2.inflate(body, headers.get("content-encoding"), limit=settings.max_request_bytes)
            response = await v2.infer(registry, settings, name=match["name"], version=match["version"], body=body,
                                      headers=headers)
        except ServiceError as exc:
            if exc.status >= 500:
                logger.warning("%s: %s", exc.code, exc.message)
            await _send(send, exc.status, orjson.dumps(error_body(exc.message, exc.code)), "application/json",
                        exc.headers)
            return
        except Exception:
            logger.exception("unhandled error on POST %s", scope["path"])
            message = error_body("internal server error; the server log has the details", "internal")
            await _send(send, 500, orjson.dumps(message), "application/json", None)
            return
        await response(scope, receive, send)


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send(send: Send, status: int, body: bytes, media_type: str, headers: Any) -> None:
    raw = [(b"content-type", media_type.encode()), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
