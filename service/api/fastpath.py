"""The v2 infer entrance: `POST /v2/models/{name}[/versions/{version}]/infer` without FastAPI's layers.

Profiling a 1x28x28 CNN under load put FastAPI's route matching (a `matches` call per route),
dependency solving and its own middleware (error, telemetry and body-limit wrappers, one coroutine
and one wrapped `send` each) at about a third of the server's CPU per request, more than ONNX Runtime.
`InferEntrance` is the outermost layer of the app's middleware stack (`service.app.App`). It matches
the infer path with one regex and hands the request to its own chain: the app's user middleware
(CORS when configured, `RequestContext`, `AccessControl`, `BodyLimit`: the same classes, so ids,
credentials and the body limit apply exactly as on every other route) around `infer_endpoint`, which
calls `service.api.infer.respond`, the function the documented FastAPI routes call. Answers, errors
(the app's own exception handlers) and metrics are the same byte for byte. Every other request goes to
FastAPI's stack unchanged. `Settings.infer_fast_path=false` leaves the entrance out; the FastAPI routes
then serve the operation.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api import infer

_INFER = re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")


async def infer_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
    """The infer operation as a bare ASGI app; `scope["path_params"]` holds `name` and `version`."""
    params = scope["path_params"]
    request = Request(scope, receive)  # scope["app"] is the app (FastAPI sets it before its stack)
    response = await infer.respond(request, name=params["name"], version=params["version"])
    await response(scope, receive, send)


class InferEntrance:
    """Infer requests through `middleware` to `infer_endpoint`; everything else to `app`."""

    def __init__(self, app: ASGIApp, *, middleware: Sequence[Middleware]) -> None:
        self.app = app
        chain: ASGIApp = infer_endpoint
        for cls, args, kwargs in reversed(middleware):  # listed outermost first, as Starlette keeps them
            chain = cls(chain, *args, **kwargs)
        self.infer = chain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = _INFER.fullmatch(scope["path"])
            if match is not None:
                scope["path_params"] = match.groupdict()
                await self.infer(scope, receive, send)
                return
        await self.app(scope, receive, send)
