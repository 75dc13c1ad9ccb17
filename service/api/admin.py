"""v2 model repository extension: list what the repository holds, load (or reload) and unload models.

As Triton: `POST /v2/repository/index` answers a JSON list of {name, version, state, reason}; load
and unload answer 200 with an empty body, or an error body. Bodies are optional (tritonclient sends
an empty index body and `{"parameters": ...}` on load/unload), so each route reads its raw body.
"""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError

from service.api.deps import RegistryDep
from service.errors import InvalidInput
from service.protocol.codec import describe
from service.protocol.schema import (
    RepositoryIndexEntry,
    RepositoryIndexRequest,
    RepositoryModelRequest,
    error_response,
    inline_schema,
)
from service.repository.registry import ModelState

router = APIRouter(tags=["repository"], default_response_class=JSONResponse)

_Body = TypeVar("_Body", bound=BaseModel)


def _optional_body(model: type[BaseModel], example: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI for a body FastAPI does not parse (so an empty one is allowed)."""
    return {"requestBody": {"required": False, "content": {
        "application/json": {"schema": inline_schema(model), "example": example}}}}


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: error_response("The body is not a RepositoryModelRequest"),
    404: error_response("No such model in the repository"),
    413: error_response("Request body too large"),
    422: error_response("The request does not match the schema"),  # FastAPI's default, in our error shape
}
_LOAD_ERRORS = {**_ERRORS, 400: error_response(
    "The body is not a RepositoryModelRequest, asks for config or file overrides, or the model failed "
    "to load (`error` names the file and reason)")}


async def _parse(request: Request, model: type[_Body]) -> _Body:
    """An optional JSON body: none means defaults; anything else (whitespace too) must be JSON
    matching `model`."""
    body = await request.body()
    if not body:
        return model()
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidInput(
            f"the body does not match {model.__name__}: {describe(exc, {})}; send a JSON object with its "
            "fields (see /docs) or no body at all"
        ) from None


@router.post("/v2/repository/index", summary="Every model version in the repository, with state and reason",
             openapi_extra=_optional_body(RepositoryIndexRequest, {"ready": True}),
             responses={400: error_response("The body is not a RepositoryIndexRequest"), 413: _ERRORS[413]})
async def repository_index(request: Request, registry: RegistryDep) -> list[RepositoryIndexEntry]:
    query = await _parse(request, RepositoryIndexRequest)
    entries = [
        RepositoryIndexEntry(name=e.name, version=e.version, state=str(e.state), reason=e.reason)
        for e in registry.index()
    ]
    if query.ready:
        entries = [e for e in entries if e.state == ModelState.READY]
    return entries


@router.post("/v2/repository/models/{name}/load", summary="Load or reload a model (all served versions)",
             response_class=Response, responses={200: {"description": "Loaded (empty body)"}, **_LOAD_ERRORS},
             openapi_extra=_optional_body(RepositoryModelRequest, {}))
async def load_model(name: str, request: Request, registry: RegistryDep) -> Response:
    body = await _parse(request, RepositoryModelRequest)
    overrides = sorted(key for key in (body.parameters or {}) if key == "config" or key.startswith("file:"))
    if overrides:
        raise InvalidInput(
            f"load parameters {overrides} (config or file overrides) are not supported; edit "
            f"{name}/config.yaml or the files in the model repository, then load again"
        )
    await registry.load(name)
    return Response(status_code=200)


@router.post("/v2/repository/models/{name}/unload", summary="Unload a model; queued requests still finish",
             response_class=Response, responses={200: {"description": "Unloaded (empty body)"}, **_ERRORS},
             openapi_extra=_optional_body(RepositoryModelRequest, {}))
async def unload_model(name: str, request: Request, registry: RegistryDep) -> Response:
    await _parse(request, RepositoryModelRequest)
    await registry.unload(name)
    return Response(status_code=200)
