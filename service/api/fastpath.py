"""The v2 infer entrance as a pure ASGI middleware: the hot path without FastAPI's router and dependencies.

Profiling a 1x28x28 CNN under load put FastAPI's route matching (a `matches` call per route) and
dependency solving at about a third of the server's CPU per request, more than ONNX Runtime itself.
`InferFastPath` matches `POST /v2/models/{name}[/versions/{version}]/infer` with one regex and calls
`service.api.infer.respond`, the same function the documented FastAPI routes call, so the answers,
errors (the app's own exception handlers) and metrics are the same byte for byte. It sits inside
`RequestContext`, access control and `BodyLimit`, so request ids, credentials and the body limit apply.
`Settings.infer_fast_path=false` leaves it out; the FastAPI routes then serve the operation.
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api import infer

_INFER = re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")


class InferFastPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        post = scope["type"] == "http" and scope["method"] == "POST"
        match = _INFER.fullmatch(scope["path"]) if post else None
        if match is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)  # scope["app"] is the FastAPI app (Starlette sets it first)
        response = await infer.respond(request, name=match["name"], version=match["version"])
        await response(scope, receive, send)
