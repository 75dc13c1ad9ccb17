"""Pure ASGI middleware (no BaseHTTPMiddleware: it costs a task per request).

- `RequestContext`: takes a well-formed incoming `x-request-id` (at most 128 characters of letters, digits
  and `-_.:/+=@`) or makes one, and puts it on the log context and the response. A malformed one (too long,
  spaces, control characters, anything that could forge a log line or a header) is replaced, never echoed.
- `BodyLimit`: answers 413 before reading a body whose Content-Length is over the limit, stops reading a
  chunked body as soon as it passes the limit, and answers 408 to a body that has not all arrived within
  `request_body_timeout_s` (slow-drip and stalled clients do not hold a connection for ever).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import log
from service.errors import BodyTimeout, PayloadTooLarge, ServiceError, error_body

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
        given = header_value(scope, b"x-request-id")
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


class _TooLarge(PayloadTooLarge):
    """Raised from `receive`: whoever reads the body (a route, the fast path) answers it as any 413."""


class _TooSlow(BodyTimeout):
    """Raised from `receive` when the body has not all arrived in time (a slow-drip or stalled client)."""


class BodyLimit:
    """Bounds what reading a request body may cost: its size (`max_bytes`) and the time from the first
    read to its last byte (`timeout_s`; a client that drips or stalls its body gets 408 and the connection
    is freed). Once the body is complete, `receive` is passed through untouched (disconnect watchers)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout_s: float | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = header_value(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(send, int(length))
            return
        seen = 0
        started = False
        complete = False
        deadline: float | None = None

        async def limited_receive() -> Message:
            nonlocal seen, complete, deadline
            if complete or self.timeout_s is None:
                message = await receive()
            else:
                loop = asyncio.get_running_loop()
                deadline = deadline or loop.time() + self.timeout_s
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    raise _TooSlow(
                        f"the request body did not arrive within {self.timeout_s:g} s ({seen} bytes came); "
                        "send it at once, or raise DEEPSERVE_REQUEST_BODY_TIMEOUT_S",
                        headers={"Connection": "close"},
                    ) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if seen > self.max_bytes:
                    raise _TooLarge(_too_large(seen, self.max_bytes), headers={"Connection": "close"})
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except (_TooLarge, _TooSlow) as exc:  # nobody inside answered it: answer here
            if not started:
                await _answer(send, exc)

    async def _refuse(self, send: Send, size: int) -> None:
        await _answer(send, _TooLarge(_too_large(size, self.max_bytes)))


def _too_large(size: int, limit: int) -> str:
    return (f"request body of {size} bytes exceeds the limit of {limit} bytes; send less data per request or "
            "raise DEEPSERVE_MAX_REQUEST_BYTES")


async def _answer(send: Send, exc: ServiceError) -> None:
    body = orjson.dumps(error_body(exc.message, exc.code))
    await send({"type": "http.response.start", "status": exc.status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def header_value(scope: Scope, name: bytes) -> str | None:
    """The first value of header `name` (lower case, as ASGI servers give names), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None
