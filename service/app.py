"""`create_app(settings)`: the FastAPI app, its lifespan (load models, drain on shutdown) and routers."""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp

from service.api.fastpath import InferEntrance
from service.api.infer import make_pool
from service.errors import install_handlers
from service.metrics import exposition, process_exiting
from service.middleware import BodyLimit, RequestContext
from service.repository.registry import ModelRegistry
from service.security import AccessControl, credentials, declare_in_openapi
from service.settings import Settings

logger = logging.getLogger(__name__)

DESCRIPTION = """
deepserve serves every model of a model repository through ONNX Runtime with server-side dynamic
batching.

* **/v2/...** — the Open Inference Protocol (KServe v2), as Triton and KServe speak it: JSON tensors
  and the binary tensor data extension; `tritonclient.http` works unchanged.
* **/v1/models/{name}/predict** — send an image, a text or a recording; get labels or a transcript.
* **/metrics** — Prometheus metrics.

Errors are `{"error": "<what is wrong and how to fix it>", "code": "<code>"}`.
"""


def package_version() -> str:
    try:
        return version("deepserve")
    except PackageNotFoundError:
        return "0.0.0"


class App(FastAPI):
    """FastAPI with the v2 infer entrance in front of its stack (`service.api.fastpath`): infer requests
    pass through the user middleware only, everything else through FastAPI's whole stack."""

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        settings: Settings = self.state.settings
        if not settings.infer_fast_path:
            return stack
        return InferEntrance(stack, middleware=self.user_middleware)


def create_app(settings: Settings) -> FastAPI:
    """Build the app; models load in the lifespan, so nothing heavy happens here."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = ModelRegistry(settings)
        app.state.registry = registry
        app.state.codec_pool = codec_pool = make_pool(settings)  # big v2 bodies decode off the event loop
        await registry.start()
        if _interpreter_tuned:
            settle_heap()
        app.state.started = True
        try:
            yield
        finally:
            app.state.started = False
            await registry.stop()
            codec_pool.close()
            process_exiting()

    app = App(
        title="deepserve",
        version=package_version(),
        description=DESCRIPTION,
        default_response_class=JSONResponse,
        lifespan=lifespan,
        docs_url=None,  # service.ui serves /docs and /redoc from packaged assets, not a CDN
        redoc_url=None,
        # FastAPI's native OpenTelemetry looks up the global providers (and the environment) on every
        # request, ~4% of a small request's event-loop time; deepserve exports Prometheus metrics instead
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.started = False
    install_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes,
                       timeout_s=settings.request_body_timeout_s)
    access = credentials(settings)
    app.add_middleware(AccessControl, credentials=access)  # before any body is read
    declare_in_openapi(app, access)
    app.add_middleware(RequestContext)
    if settings.cors_origins:  # outermost: preflights and error answers get the headers too
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"], expose_headers=["Server-Timing", "Retry-After"], max_age=600)

    from service.api import admin, explain, tasks, v2  # routers import the registry's types

    app.include_router(v2.router)
    if settings.admin_api:
        app.include_router(admin.router)
    app.include_router(tasks.router)
    app.include_router(explain.router)

    if settings.metrics:

        @app.get("/metrics", include_in_schema=True, tags=["monitoring"], response_class=Response,
                 summary="Prometheus metrics",
                 responses={200: {"description": "Prometheus text format",
                                  "content": {CONTENT_TYPE_LATEST: {}}}})
        def metrics() -> Response:
            return Response(exposition(), media_type=CONTENT_TYPE_LATEST)

    from service.ui import router as ui

    ui.install(app, settings)  # /docs, /redoc; the try-it page at / and /ui unless DEEPSERVE_UI=false

    return app


GIL_SWITCH_INTERVAL_S = 0.0005
"""How long the event loop may keep the GIL while an inference thread waits for it (Python's default
is 5 ms). Each finished batch needs the GIL back to return its outputs; with the default, a busy event
loop added up to 5 ms per batch (measured in process, 1x28x28 CNN, one request at a time, on a busy
machine: 350 -> 1,680 req/s)."""


GC_THRESHOLDS = (20_000, 20, 50)
"""Python's cyclic garbage collector runs its youngest generation every 700 net allocations (3.11's
default), and a request allocates a few hundred container objects (headers, the parsed JSON, pydantic
models, futures, coroutines): about one young collection per request, each walking every young object
alive in the 64 concurrent requests, plus a full collection of the whole heap (ONNX Runtime, FastAPI's
and pydantic's schemas: ~230,000 objects) every 100 young ones. Almost everything a request allocates is
freed by reference counting; cycles are rare. Measured over HTTP on a 1x28x28 CNN at c=64, interleaved
with the code before (docs/architecture.md): +23% requests per second, 796 -> 659 µs of CPU per
request, p99 154 -> 59 ms (the full collections were the p99); resident memory under load level within
10 MiB (`bench/ab.py --base 46eb4a0 --rss`, two runs)."""

_interpreter_tuned = False


def tune_interpreter() -> None:
    """Process-wide settings for a server process (not applied by `create_app`, which tests call):
    the GIL switch interval and the garbage collector's thresholds; the heap as it stands once the
    models are loaded is then frozen (`settle_heap`), so full collections skip it."""
    global _interpreter_tuned
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    gc.set_threshold(*GC_THRESHOLDS)
    _interpreter_tuned = True


def settle_heap() -> None:
    """After start-up: collect once, then move every surviving object to the permanent generation
    (`gc.freeze`), where the collector never looks again: models, sessions and schemas live as long as
    the process, and walking them on every full collection was pure cost."""
    gc.collect()
    gc.freeze()


def create_app_from_env() -> FastAPI:
    """Factory for multi-worker uvicorn: each worker reads the same DEEPSERVE_* environment."""
    settings = Settings()
    tune_interpreter()
    from service.log import setup_logging

    setup_logging(settings.log_level, settings.log_format)
    return create_app(settings)
