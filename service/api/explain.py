"""`POST /v1/models/{name}[/versions/{v}]/explain`: why the model answered what it did.

The body is exactly what /predict takes, read by the same code (`tasks.read_payload`), so the same
inputs are refused the same way; the explain options ride along as query parameters, JSON fields or
form fields. The work runs as low-priority jobs in the model's batcher; a client that disconnects
cancels what is still queued for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from service import metrics
from service.api.deps import RegistryDep, SettingsDep
from service.api.tasks import OptionsDep, openapi_body, read_payload
from service.api.timing import start as start_timing
from service.api.timing import timed
from service.errors import InvalidInput
from service.explain import options
from service.explain.explainers import EXPLAINERS, explain
from service.explain.schema import MAX_BUDGET, METHODS, MIN_BUDGET, ExplainResponse
from service.protocol.schema import ErrorResponse
from service.repository.registry import LoadedModel
from service.settings import Settings
from service.tasks.pipeline import Options

router = APIRouter(tags=["explanations"], default_response_class=JSONResponse)

T = TypeVar("T")

Method = Annotated[str | None, Query(description=f"One of {', '.join(METHODS)} (default: the task's best).")]
Target = Annotated[
    str | None, Query(description="Label name or index to explain (default: the top prediction).")
]
Budget = Annotated[
    int | None, Query(description=f"Model evaluations, {MIN_BUDGET} to {MAX_BUDGET} (kernel-shap).")
]
Seed = Annotated[
    int | None, Query(description="Sampling seed: the same seed gives the same answer (default 0).")
]
BaselineKind = Annotated[
    str | None, Query(description="Images: `blur` (default) or `black`; audio: `silence`.")
]

_DESCRIPTION = (
    "Attributions for one input, computed from many perturbed copies sent through the model's dynamic "
    "batcher at low priority (ordinary /predict and /v2 requests go first).\n\n"
    "* **image-classification**: `occlusion` (default) or `kernel-shap` over a grid of cells; returns a "
    "per-pixel map at the model's and the image's size and a heatmap PNG (base64).\n"
    "* **text-classification**: `kernel-shap` (default) or `occlusion` over words; a score per word with its "
    "character offsets.\n"
    "* **speech-recognition**, **audio-classification**: `occlusion` (default) or `kernel-shap` over time "
    "windows (silence); a curve over time and, for speech, a score per transcribed word.\n\n"
    "The body is what /predict takes (one item). Options: `method`, `target`, `budget`, `seed`, `baseline` "
    "as query parameters, JSON fields or form fields. KernelSHAP answers obey the efficiency property: "
    "the attributions sum to f(x) - f(baseline) (`efficiency`)."
)
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in [
        (400, "Bad input as for /predict; also an unknown method, target or baseline, a budget out of range, "
              "more than one item, or a model without an explainable task"),
        (404, "Unknown model or version"),
        (413, "Body too large, too many pixels or a text over the character limit"),
        (415, "Content type not accepted by the model's task"),
        (422, "JSON body or query option does not match the schema"),
        (503, "Model not ready, low-priority queue full (Retry-After) or shutting down"),
        (504, "The explanation did not finish within the request timeout"),
    ]
}


async def _explain(model: LoadedModel, request: Request, settings: Settings, predict: Options,
                   query: dict[str, Any]) -> ExplainResponse:
    task = model.config.task
    if task is None or task.type not in EXPLAINERS:
        kind = "no `task` section" if task is None else f"task {task.type}"
        raise InvalidInput(
            f"model '{model.name}' has {kind}, which cannot be explained; explanations cover the tasks "
            f"{', '.join(EXPLAINERS)}"
        )
    extra: dict[str, Any] = dict.fromkeys(options.FIELDS)
    payload = await read_payload(request, task.type, predict, extra)
    raw = {**query, **{k: v for k, v in extra.items() if v is not None}}
    opts = options.parse(raw)
    timeout_s = model.config.request_timeout_s or settings.request_timeout_s
    return await until_disconnect(request, explain(model, payload, opts, timeout_s=timeout_s))


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (and so its queued batcher jobs) if the client disconnects first.

    Once the body is read, the next ASGI message is `http.disconnect`; waiting for it costs nothing.
    """
    job = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({job, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not job.done():
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)
        raise ClientDisconnect()
    return job.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _counted(registry: RegistryDep, name: str, version: str | None, request: Request,
                   response: Response, settings: SettingsDep, predict: OptionsDep,
                   query: dict[str, Any]) -> ExplainResponse:
    """`_explain`, counted in the request, failure and latency metrics (route `v1_explain`) as /v1 predict
    and v2 infer are, with `Server-Timing` summing every evaluation's queue and compute time."""
    timing = start_timing()
    with metrics.track_lookup(metrics.V1_EXPLAIN, name, version):
        model = registry.get(name, version)
    with metrics.track(metrics.V1_EXPLAIN, model.name, model.version):
        result = await _explain(model, request, settings, predict, query)
    timed(response, timing)
    return result


@router.post(
    "/v1/models/{name}/explain",
    response_model=ExplainResponse,
    response_model_exclude_none=True,
    summary="Explain a prediction: which pixels, words or moments made the model answer as it did",
    description=_DESCRIPTION,
    openapi_extra=openapi_body(),
    responses=_ERRORS,
)
async def explain_latest(
    name: str, request: Request, response: Response, registry: RegistryDep, settings: SettingsDep,
    predict: OptionsDep, method: Method = None, target: Target = None, budget: Budget = None,
    seed: Seed = None, baseline: BaselineKind = None,
) -> ExplainResponse:
    query = {"method": method, "target": target, "budget": budget, "seed": seed, "baseline": baseline}
    return await _counted(registry, name, None, request, response, settings, predict, query)


@router.post(
    "/v1/models/{name}/versions/{version}/explain",
    response_model=ExplainResponse,
    response_model_exclude_none=True,
    summary="Explain a prediction of one version of a model",
    description=_DESCRIPTION,
    openapi_extra=openapi_body(),
    responses=_ERRORS,
)
async def explain_version(
    name: str, version: str, request: Request, response: Response, registry: RegistryDep,
    settings: SettingsDep, predict: OptionsDep, method: Method = None, target: Target = None,
    budget: Budget = None, seed: Seed = None, baseline: BaselineKind = None,
) -> ExplainResponse:
    query = {"method": method, "target": target, "budget": budget, "seed": seed, "baseline": baseline}
    return await _counted(registry, name, version, request, response, settings, predict, query)
