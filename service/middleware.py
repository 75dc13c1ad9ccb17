"""Pure ASGI middleware (no BaseHTTPMiddleware: it costs a task per request).

- `RequestContext`: takes a well-formed incoming `x-request-id` (at most 128 characters of letters, digits
  and `-_.:/+=@`) or makes one, and puts it on the log context and the response. A malformed one (too long,
  spaces, control characters, anything that could forge a log line or a header) is replaced, never echoed.
- `BodyLimit`: answers 413 before reading a body whose Content-Length is over the limit, and stops
  reading a chunked body as soon as it passes the limit.
"""

from __future__ import annotations

import itertools
import os
import re

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import log
from service.errors import error_body

_PROCESS = os.urandom(4).hex()
_COUNTER = itertools.count(1)
REQUEST_ID = re.compile(r"[A-Za-z0-9_.:/+=@-]{1,128}", re.ASCII)
"""What an incoming x-request-id may be (uuids, trace ids, base64); anything else is replaced."""


def new_request_id() -> str:
    """Unique per server process and request: a random process prefix and a counter (uuid4 cost ~6% of
    the CPU of a small-model request)."""
    return f"{_PROCESS}{next(_COUNTER):08x}"


class RequestContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        rid = given if given is not None and REQUEST_ID.fullmatch(given) else new_request_id()
        token = log.request_id.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            log.request_id.reset(token)


class _TooLarge(Exception):
    pass


class BodyLimit:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(send, int(length))
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send, seen)

    async def _refuse(self, send: Send, size: int) -> None:
        body = orjson.dumps(error_body(
            f"request body of {size} bytes exceeds the limit of {self.max_bytes} bytes; send less data per "
            "request or raise DEEPSERVE_MAX_REQUEST_BYTES", "payload_too_large"))
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None
