"""Open Inference Protocol (KServe v2) routes: health, server and model metadata, model ready, infer.

Routes are thin. The infer routes document the operation in OpenAPI and call `service.api.infer.respond`,
the one infer implementation (the fast path in `service.api.fastpath` calls it too): it reads the raw
body (JSON, or JSON header + raw tensors with the binary tensor data extension), decodes it, queues it
on the model, selects and encodes the outputs. Status codes follow the protocol: readiness is 200 or 503
(never 404 for a model the server knows), errors are `{"error": ..., "code": ...}`.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.api import infer
from service.api.deps import RegistryDep
from service.api.timing import SERVER_TIMING
from service.errors import ModelNotReady, error_body
from service.protocol.binary import HEADER_LENGTH
from service.protocol.schema import (
    INFERENCE_REQUEST_EXAMPLE,
    InferenceRequest,
    InferenceResponse,
    ModelMetadataResponse,
    ServerMetadataResponse,
    TensorMetadata,
    error_response,
    inline_schema,
)
from service.repository.registry import LoadedModel, ModelRegistry, ModelState
from service.settings import Settings

# FastAPI serialises returned models itself; ORJSONResponse is deprecated (FastAPIDeprecationWarning)
router = APIRouter(tags=["v2"], default_response_class=JSONResponse)

EXTENSIONS = ["model_repository", "binary_tensor_data"]

_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: error_response("Invalid request: the error names the input, the rule and the value"),
    404: error_response("Unknown model or version"),
    413: error_response("Request body over DEEPSERVE_MAX_REQUEST_BYTES, a gzip/deflate body inflating past "
                        "DEEPSERVE_MAX_INFLATED_BYTES, or more tensor elements than "
                        "DEEPSERVE_MAX_TENSOR_ELEMENTS"),
    415: error_response("Content-Encoding other than gzip, deflate or identity"),
    # FastAPI documents a 422 on every route with parameters; errors.py answers it in our error shape
    422: error_response("The request does not match the schema"),
    500: error_response("The model failed while computing; the server log has the details"),
    503: error_response("Model not ready, queue full or shutting down", headers=_RETRY_AFTER),
    504: error_response("The request's timeout passed before it was computed"),
}
_PROBE: dict[int | str, dict[str, Any]] = {200: {"description": "Ready (empty body)"},
          503: error_response("Not ready; `error` says why", headers=_RETRY_AFTER)}
_LOOKUP_ERRORS: dict[int | str, dict[str, Any]] = {code: _ERRORS[code] for code in (404, 422)}
"""Metadata and readiness only look a model up: an unknown name or version (404) is their only error."""


# ---- health and metadata ---------------------------------------------------------------------------


@router.get("/v2", summary="Server metadata")
def server_metadata(request: Request) -> ServerMetadataResponse:
    return ServerMetadataResponse(name="deepserve", version=request.app.version, extensions=EXTENSIONS)


@router.get("/v2/health/live", summary="Liveness: 200 while the process answers",
            response_class=Response, responses={200: {"description": "Live (empty body)"}})
def live() -> Response:
    return Response(status_code=200)


@router.get("/v2/health/ready", summary="Readiness: 200 once startup has loaded the models, else 503",
            response_class=Response, responses=_PROBE)
def ready(request: Request) -> Response:
    state = request.app.state
    if not getattr(state, "started", False):
        return _not_ready("the server is starting: models are still loading", "server_not_ready")
    settings: Settings = state.settings
    reason = server_unready_reason(state.registry, strict=settings.strict_readiness)
    return Response(status_code=200) if reason is None else _not_ready(reason, "server_not_ready")


@router.get("/v2/models/{name}", summary="Model metadata (latest version)", responses=_LOOKUP_ERRORS)
def model_metadata(name: str, registry: RegistryDep) -> ModelMetadataResponse:
    return describe_model(registry, registry.find(name))


@router.get("/v2/models/{name}/versions/{version}", summary="Model metadata (one version)",
            responses=_LOOKUP_ERRORS)
def model_version_metadata(name: str, version: str, registry: RegistryDep) -> ModelMetadataResponse:
    return describe_model(registry, registry.find(name, version))


@router.get("/v2/models/{name}/ready", summary="Model readiness: 200 or 503 (404 only for unknown models)",
            response_class=Response, responses={**_PROBE, **_LOOKUP_ERRORS})
def model_ready(name: str, registry: RegistryDep) -> Response:
    return model_probe(registry.find(name))


@router.get("/v2/models/{name}/versions/{version}/ready", summary="Model version readiness: 200 or 503",
            response_class=Response, responses={**_PROBE, **_LOOKUP_ERRORS})
def model_version_ready(name: str, version: str, registry: RegistryDep) -> Response:
    return model_probe(registry.find(name, version))


def server_unready_reason(registry: ModelRegistry, *, strict: bool) -> str | None:
    """Why the server is not ready, or None. Strict readiness also waits out failed loads."""
    models = registry.models()
    loading = [f"{m.name}/{m.version}" for m in models if m.state is ModelState.LOADING]
    if loading:
        return f"models still loading: {', '.join(loading)}"
    failed = [f"{m.name}/{m.version} ({m.error})" for m in models
              if m.state is ModelState.UNAVAILABLE and not m.unloaded]  # an unload is deliberate
    if strict and failed:
        return f"strict readiness: models failed to load: {'; '.join(failed)}"
    return None


def model_probe(model: LoadedModel) -> Response:
    if model.state is ModelState.READY:
        return Response(status_code=200)
    reason = f": {model.error}" if model.error else ""
    return _not_ready(f"model '{model.name}' version {model.version} is {model.state}{reason}",
                      ModelNotReady.code)


def _not_ready(message: str, code: str) -> Response:
    return Response(orjson.dumps(error_body(message, code)), status_code=503, media_type="application/json",
                    headers={"Retry-After": "1"})


def describe_model(registry: ModelRegistry, model: LoadedModel) -> ModelMetadataResponse:
    """The protocol's metadata, plus state, error, providers, batching, task, labels, provenance."""
    config = model.config
    versions = sorted({m.version for m in registry.models() if m.name == model.name}, key=_version_key)
    batching = None
    if config.batching:
        batching = {"max_batch_size": config.max_batch_size, "max_queue_delay_ms": config.max_queue_delay_ms,
                    "preferred_batch_sizes": config.preferred_batch_sizes,
                    "max_queue_size": config.max_queue_size}
    extras: dict[str, Any] = {
        **config.parameters,
        "version": model.version,
        "state": str(model.state),
        "error": model.error,
        "providers": model.providers,
        "batching": batching,
        "instances": config.instances,
        "task": config.task.model_dump(mode="json") if config.task else None,
        "labels": config.labels,
        "description": config.description,
        "provenance": config.provenance,
    }
    return ModelMetadataResponse(
        name=model.name,
        versions=versions,
        platform=config.platform,
        inputs=[TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape) for t in config.inputs],
        outputs=[TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape) for t in config.outputs],
        parameters=extras,
    )


def _version_key(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (1 << 62, version)


# ---- infer -----------------------------------------------------------------------------------------

_INFER_DOC = (
    "Send an `InferenceRequest` as JSON, or with the binary tensor data extension: the JSON header, "
    f"then each binary input's raw bytes (little-endian, row-major; BYTES as 4-byte length + bytes), with "
    f"`{HEADER_LENGTH}` set to the header's byte length and `parameters.binary_data_size` on each binary "
    "input. Outputs asked for with `parameters.binary_data` (or request-level `binary_data_output`) come "
    f"back as raw bytes after the JSON header, `{HEADER_LENGTH}` set and content type "
    "`application/octet-stream`. `parameters.timeout` is in microseconds, as in Triton. "
    "`Content-Encoding: gzip` or `deflate` bodies are accepted."
)
_INFER_OPENAPI: dict[str, Any] = {
    "parameters": [  # read from the raw headers, not by FastAPI: declared here for clients and the docs
        {"name": HEADER_LENGTH, "in": "header", "required": False,
         "description": "Binary tensor data extension: byte length of the JSON header at the start of "
                        "the body",
         "schema": {"type": "integer", "minimum": 1}},
        {"name": "Content-Encoding", "in": "header", "required": False,
         "description": "Compression of the body",
         "schema": {"type": "string", "enum": ["gzip", "deflate", "identity"]}},
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": inline_schema(InferenceRequest),
                "example": INFERENCE_REQUEST_EXAMPLE,
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary",
                           "description": f"JSON header of `{HEADER_LENGTH}` bytes, then raw tensor bytes"},
            },
        },
    },
}
_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": InferenceResponse, "description": "Outputs as JSON, or JSON header + raw bytes",
          "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
          "headers": {
              HEADER_LENGTH: {"description": "Set when any output is binary: byte length of the JSON "
                                             "header at the start of the body",
                              "schema": {"type": "integer", "minimum": 1}},
              SERVER_TIMING: {"description": "Time in the batch queue, computing and in all, in ms: "
                                             "`queue;dur=0.1, compute;dur=1.2, total;dur=2.0` "
                                             "(on errors too)",
                              "schema": {"type": "string"}},
          }},
    **_ERRORS,
}


@router.post("/v2/models/{name}/infer", summary="Inference (latest ready version)", description=_INFER_DOC,
             response_class=Response, responses=_INFER_RESPONSES, openapi_extra=_INFER_OPENAPI)
async def infer_latest(name: str, request: Request) -> Response:
    return await infer.respond(request, name=name, version=None)


@router.post("/v2/models/{name}/versions/{version}/infer", summary="Inference (one version)",
             description=_INFER_DOC, response_class=Response, responses=_INFER_RESPONSES,
             openapi_extra=_INFER_OPENAPI)
async def infer_version(name: str, version: str, request: Request) -> Response:
    return await infer.respond(request, name=name, version=version)
