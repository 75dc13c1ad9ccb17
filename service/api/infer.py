"""`POST /v2/models/{name}[/versions/{version}]/infer`: the one implementation both entrances call.

`respond(request, name=..., version=...)` reads the body, decodes it (`CodecPool`: inline when small, in
a worker process when big JSON or compressed), queues it on the model, encodes the outputs and answers.
Every error becomes the response the app's own exception handlers make (`service.errors`, looked up by
the exception's class as Starlette does), so the FastAPI route (`service.api.v2`, documented in OpenAPI)
and the infer entrance (`service.api.fastpath`) answer byte for byte the same, and the request is
counted in the metrics once either way. Every answer carries `Server-Timing`.
"""

from __future__ import annotations

import inspect
import logging
import time

from starlette.requests import Request
from starlette.responses import Response

from service import metrics
from service.api.timing import SERVER_TIMING, server_timing, start
from service.errors import InvalidInput, ModelNotReady, RequestTimeout
from service.middleware import header_value
from service.protocol import codec
from service.protocol.binary import HEADER_LENGTH
from service.protocol.codec import DecodeLimits
from service.protocol.pool import CodecPool
from service.protocol.schema import InferenceRequest
from service.repository.registry import LoadedModel, ModelRegistry
from service.settings import Settings
from service.timing import RequestTiming

logger = logging.getLogger(__name__)

_HEADER_LENGTH = HEADER_LENGTH.lower().encode()


def make_pool(settings: Settings) -> CodecPool:
    """The codec pool for an app (the lifespan makes it and closes it)."""
    limits = DecodeLimits(max_inflated_bytes=settings.max_inflated_bytes,
                          max_tensor_elements=settings.max_tensor_elements)
    return CodecPool(workers=settings.codec_workers, min_bytes=settings.codec_offload_bytes, limits=limits)


async def respond(request: Request, *, name: str, version: str | None) -> Response:
    """The answer to one infer request, success or error, with a `Server-Timing` header."""
    timing = start()
    try:
        return await _infer(request, name=name, version=version, timing=timing)
    except Exception as exc:
        response = await error_response(request, exc)
    response.headers[SERVER_TIMING] = server_timing(timing)
    return response


async def error_response(request: Request, exc: Exception) -> Response:
    """What the app's exception handler for `exc`'s class answers (the same call FastAPI would make)."""
    handlers = request.app.exception_handlers
    for cls in type(exc).__mro__:
        handler = handlers.get(cls)
        if handler is not None:
            result = handler(request, exc)
            response: Response = await result if inspect.isawaitable(result) else result
            return response
    raise exc


async def _infer(request: Request, *, name: str, version: str | None, timing: RequestTiming) -> Response:
    state = request.app.state
    registry: ModelRegistry | None = getattr(state, "registry", None)
    pool: CodecPool | None = getattr(state, "codec_pool", None)
    settings: Settings = state.settings
    if registry is None or pool is None:
        await request.body()
        raise ModelNotReady("the server is starting: models are still loading", headers={"Retry-After": "1"})
    encoding = header_value(request.scope, b"content-encoding")
    header_length = header_value(request.scope, _HEADER_LENGTH)
    # BodyLimit's 413 and a client's disconnect propagate
    body = await pool.receive(request.receive, content_encoding=encoding, header_length=header_length)
    try:
        with metrics.track_lookup(metrics.V2_INFER, name, version):  # unknown names are not counted
            model = registry.get(name, version)
        with metrics.track(metrics.V2_INFER, model.name, model.version):
            started = time.monotonic()
            limit_s = default_timeout_s(model, settings)
            decoded = await pool.decode(body, content_encoding=encoding, header_length=header_length,
                                        limit_s=limit_s)
            infer_request = decoded.request
            declared = [spec.name for spec in model.config.outputs]
            plan = codec.output_plan(infer_request, declared) if declared else None
            left_s = timeout_s(infer_request, model, settings) - (time.monotonic() - started)
            if left_s <= 0:
                raise RequestTimeout("decoding the request body used up its whole timeout; retry later, "
                                     "or send binary tensors, which need no decoding")
            outputs = await model.infer(decoded.inputs, timeout_s=left_s)
            if plan is None:
                plan = codec.output_plan(infer_request, list(outputs))
            encoded = await pool.encode(outputs, plan, model_name=model.name, model_version=model.version,
                                        request_id=infer_request.id, limit_s=limit_s)
    finally:
        pool.release(body)  # a spooled body's file goes now, whatever happened
    headers = {SERVER_TIMING: server_timing(timing)}
    if encoded.header_length is not None:
        headers[HEADER_LENGTH] = str(encoded.header_length)
    return Response(encoded.body, media_type=encoded.media_type, headers=headers)


def default_timeout_s(model: LoadedModel, settings: Settings) -> float:
    return model.config.request_timeout_s or settings.request_timeout_s


def timeout_s(request: InferenceRequest, model: LoadedModel, settings: Settings) -> float:
    """The request's `parameters.timeout` (microseconds, Triton's unit), capped at the model's default.

    0 or absent means the default: the model's `request_timeout_s`, else the server's.
    """
    default = default_timeout_s(model, settings)
    asked = request.parameters.timeout if request.parameters else None
    if asked is None or asked == 0:
        return default
    if asked < 0:
        raise InvalidInput(f"parameters.timeout is {asked}; give microseconds > 0 (or 0 for the default)")
    return min(asked / 1_000_000, default)
