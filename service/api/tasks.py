"""Friendly task routes: `POST /v1/models/{name}/predict` (image, text, audio in; labels, transcript,
vectors out) and `GET /v1/models` (what each model takes, with an example request).

One predict route serves every task and reads the body itself, so one URL takes a multipart upload
(form field `file`, repeated for several files), a raw image or audio body, a text/plain body or JSON;
the OpenAPI document declares all of them (`openapi_extra`) so /docs "Try it out" works for each
task. What is accepted depends on the model's `task` section; anything else is a 415 naming it.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import metrics
from service.api.deps import RegistryDep
from service.api.timing import start as start_timing
from service.api.timing import timed
from service.errors import InvalidInput, UnsupportedMediaType
from service.protocol.schema import ErrorResponse
from service.repository.registry import LoadedModel, ModelRegistry
from service.tasks.catalog import describe
from service.tasks.pipeline import PIPELINES, Options, Payload
from service.tasks.schema import (
    PNG_1X1,
    AnomalyRequest,
    AudioRequest,
    EmbeddingRequest,
    GenerationRequest,
    ImageClassifyRequest,
    ModelListResponse,
    ModelSummary,
    PredictResponse,
    TextClassifyRequest,
    silent_wav_base64,
)

# FastAPI serialises returned models itself; ORJSONResponse is deprecated (FastAPIDeprecationWarning)
router = APIRouter(tags=["tasks"], default_response_class=JSONResponse)

TopK = Annotated[int | None, Query(ge=1, description="Labels per item (default: the model's task.top_k).")]
ReturnProbabilities = Annotated[
    bool | None, Query(description="Also return every label's score (classification tasks).")
]
ReturnTimestamps = Annotated[
    bool | None, Query(description="Also return word and character timestamps (speech recognition).")
]
ReturnReconstruction = Annotated[
    bool | None,
    Query(
        description="Anomaly detection: also return the input as seen, the reconstruction and an error map "
        "(PNG)."
    ),
]

async def _options(
    top_k: TopK = None,
    return_probabilities: ReturnProbabilities = None,
    return_timestamps: ReturnTimestamps = None,
    return_reconstruction: ReturnReconstruction = None,
) -> Options:
    return Options(
        top_k=top_k, return_probabilities=bool(return_probabilities),
        return_timestamps=bool(return_timestamps), return_reconstruction=bool(return_reconstruction),
    )


OptionsDep = Annotated[Options, Depends(_options)]
"""The query options of both predict routes (async: no thread hop)."""

_PREDICT_DESCRIPTION = (
    "Runs the model's task (its config.yaml `task` section) on what you send, through the same dynamic "
    "batcher as /v2 infer.\n\n"
    "* **image-classification**: multipart field `file` (repeat for several images), a raw image body "
    "(`image/png`, `image/jpeg`, ...) or JSON `{\"image\": base64}` / `{\"images\": [...]}`.\n"
    "* **text-classification**, **embedding**: JSON `{\"text\": ...}` / `{\"texts\": [...]}` or a "
    "`text/plain` body.\n"
    "* **speech-recognition**, **audio-classification**: multipart field `file`, a raw body "
    "(`audio/wav`, `audio/flac`, `audio/ogg`, `audio/mpeg`, `audio/webm`, `audio/mp4`, "
    "`application/octet-stream`) "
    "or JSON `{\"audio\": base64}`: WAV, FLAC, Ogg (Vorbis, Opus), MP3, WebM/Opus, MP4/AAC.\n\n"
    "* **anomaly-detection**: an image as for image-classification; `return_reconstruction` adds the "
    "reconstruction and an error map as PNGs.\n"
    "* **image-generation**: JSON `{\"labels\": [3, 7], \"count\": 2, \"seed\": 42}`; `Accept: image/png` "
    "answers with one PNG grid (a row per class) instead of JSON.\n\n"
    "Options may be query parameters, multipart fields or JSON fields (the body wins). "
    "Models without a task section take tensors at `POST /v2/models/{name}/infer`."
)


JSON, MULTIPART, OCTET, TEXT = (
    "application/json", "multipart/form-data", "application/octet-stream", "text/plain"
)
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/bmp", "image/gif")
# the last five (webm, mp4): what browsers' MediaRecorder sends
AUDIO_TYPES = ("audio/wav", "audio/x-wav", "audio/wave", "audio/flac", "audio/x-flac", "audio/ogg",
               "audio/mpeg", "audio/webm", "video/webm", "audio/mp4", "audio/x-m4a", "video/mp4")
ACCEPTS: dict[str, tuple[str, ...]] = {
    "image-classification": (MULTIPART, JSON, *IMAGE_TYPES, OCTET),
    "text-classification": (JSON, TEXT),
    "embedding": (JSON, TEXT),
    "speech-recognition": (MULTIPART, JSON, *AUDIO_TYPES, OCTET),
    "audio-classification": (MULTIPART, JSON, *AUDIO_TYPES, OCTET),
    "anomaly-detection": (MULTIPART, JSON, *IMAGE_TYPES, OCTET),
    "image-generation": (JSON,),
}
"""Content types each task accepts; anything else is a 415 that lists them."""
JSON_REQUESTS: dict[
    str,
    type[ImageClassifyRequest | TextClassifyRequest | EmbeddingRequest | AudioRequest | AnomalyRequest
         | GenerationRequest],
] = {
    "image-classification": ImageClassifyRequest,
    "text-classification": TextClassifyRequest,
    "embedding": EmbeddingRequest,
    "speech-recognition": AudioRequest,
    "audio-classification": AudioRequest,
    "anomaly-detection": AnomalyRequest,
    "image-generation": GenerationRequest,
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in [
        (400, "Bad input: the error says what was wrong (corrupt image, empty text, NaN samples, ...) "
              "and what is accepted; also a model without a task section"),
        (404, "Unknown model or version"),
        (413, "Body over DEEPSERVE_MAX_REQUEST_BYTES (refused before it is read), too many pixels, or a text "
              "over the character limit"),
        (415, "Content type not accepted by the model's task (the error lists those that are)"),
        (422, "JSON body or query option does not match the schema (the error names the field)"),
        (503, "Model not ready, queue full (Retry-After) or shutting down"),
        (504, "The request's timeout passed before it was computed"),
    ]
}
"""Every error a predict route answers with; the body is always {"error": ..., "code": ...}."""
_PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The task's JSON answer; image-generation with `Accept: image/png`: one PNG grid",
          "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
    **_ERRORS,
}
MAX_FILES = 64
"""Most files in one multipart request (a batch is bounded by max_batch_size anyway)."""
_FORM_FIELDS = ("file", "top_k", "return_probabilities", "return_timestamps", "return_reconstruction")


async def read_payload(
    request: Request, task_type: str, options: Options, extra: dict[str, Any] | None = None
) -> Payload:
    """Read the body in whatever accepted form it came; options in the body override `options`.

    `extra` names further JSON or form fields a route accepts (the explain route's `method`, ...):
    their values, when sent, replace the entries (form values as strings).
    """
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    accepted = ACCEPTS[task_type]
    if media not in accepted:
        raise UnsupportedMediaType(
            f"Content-Type '{media or '(none)'}' is not accepted by a {task_type} model; "
            f"send one of: {', '.join(accepted)}"
        )
    if media == JSON:
        return await _read_json(request, task_type, options, extra)
    if media == MULTIPART:
        return await _read_multipart(request, options, extra)
    body = await request.body()
    if media == TEXT:
        try:
            return Payload(blobs=[], texts=[body.decode("utf-8")], options=options)
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"text/plain body is not UTF-8 ({exc.reason} at byte {exc.start})") from exc
    return Payload(blobs=[body], texts=[], options=options)


async def _read_json(
    request: Request, task_type: str, options: Options, extra: dict[str, Any] | None
) -> Payload:
    body = await request.body()
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body is not valid JSON ({exc}); see /docs for an example body") from exc
    if extra is not None and isinstance(raw, dict):
        for key in extra:
            if key in raw:
                extra[key] = raw.pop(key)
    try:
        parsed = JSON_REQUESTS[task_type].model_validate(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False, include_context=False)) from exc
    for name in ("top_k", "return_probabilities", "return_timestamps", "return_reconstruction"):
        value = getattr(parsed, name, None)
        if value is not None:
            setattr(options, name, value)
    if isinstance(parsed, GenerationRequest):
        return Payload(blobs=[], texts=[], options=options, generation=parsed)
    if isinstance(parsed, TextClassifyRequest | EmbeddingRequest):
        return Payload(blobs=[], texts=parsed.items(), options=options)
    many = getattr(parsed, parsed.single_field) is None
    blobs = [
        _from_base64(item, f"'{parsed.many_field}' item {i}" if many else f"'{parsed.single_field}'")
        for i, item in enumerate(parsed.items())
    ]
    return Payload(blobs=blobs, texts=[], options=options)


def _from_base64(value: str, where: str) -> bytes:
    """Standard or URL-safe base64, optionally a `data:<type>;base64,` URL; whitespace is ignored."""
    data = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    data = "".join(data.split())
    altchars = b"-_" if ("-" in data or "_" in data) else None
    try:
        return base64.b64decode(data, altchars=altchars, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(
            f"{where} is not valid base64 ({exc}); send the file's bytes base64-encoded"
        ) from exc


async def _read_multipart(request: Request, options: Options, extra: dict[str, Any] | None) -> Payload:
    fields = (*_FORM_FIELDS, *(extra or {}))
    try:
        async with request.form(max_files=MAX_FILES, max_fields=len(fields)) as form:
            unknown = sorted({key for key in form if key not in fields})
            if unknown:
                raise InvalidInput(f"unknown form fields {unknown}; accepted fields: {', '.join(fields)}")
            uploads = form.getlist("file")
            if not uploads:
                raise InvalidInput(
                    "multipart body has no 'file' field; send the file as form field 'file' "
                    "(curl -F file=@photo.png), repeated for several files"
                )
            blobs = []
            for i, upload in enumerate(uploads):
                if not isinstance(upload, UploadFile):
                    raise InvalidInput(
                        f"form field 'file' #{i} is text, not a file upload (curl -F file=@path)"
                    )
                blobs.append(await upload.read())
            _form_options(form, options)
            wanted = extra if extra is not None else {}
            for key in wanted:
                value = _form_text(form, key)
                if value:
                    wanted[key] = value
    except StarletteHTTPException as exc:  # starlette's multipart parser reports malformed bodies so
        raise InvalidInput(
            f"multipart body cannot be parsed ({exc.detail}); send multipart/form-data"
        ) from exc
    return Payload(blobs=blobs, texts=[], options=options)


def _form_options(form: Any, options: Options) -> None:
    """Options sent as form fields; empty fields (as /docs sends them) count as not given."""
    top_k = _form_text(form, "top_k")
    if top_k:
        if not top_k.isdigit() or int(top_k) < 1:
            raise InvalidInput(f"form field 'top_k' must be a positive integer, got '{top_k[:20]}'")
        options.top_k = int(top_k)
    probabilities = _form_text(form, "return_probabilities")
    if probabilities:
        options.return_probabilities = _flag(probabilities, "return_probabilities")
    timestamps = _form_text(form, "return_timestamps")
    if timestamps:
        options.return_timestamps = _flag(timestamps, "return_timestamps")
    reconstruction = _form_text(form, "return_reconstruction")
    if reconstruction:
        options.return_reconstruction = _flag(reconstruction, "return_reconstruction")


def _form_text(form: Any, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"form field '{name}' must be a plain value, not a file")
    return value.strip()


def _flag(value: str, name: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise InvalidInput(f"form field '{name}' must be true or false, got '{value[:20]}'")


def openapi_body() -> dict[str, Any]:
    """The predict request body in every accepted form, with examples, for /docs "Try it out"."""
    binary = {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream"}
    form = {
        "type": "object",
        "required": ["file"],
        "properties": {
            "file": {"type": "array", "items": binary, "description": "One or more images or recordings."},
            "top_k": {"type": "integer", "minimum": 1, "description": "Labels per item."},
            "return_probabilities": {"type": "boolean", "description": "Also return every label's score."},
            "return_timestamps": {"type": "boolean", "description": "Speech: word and character timestamps."},
            "return_reconstruction": {
                "type": "boolean", "description": "Anomaly detection: reconstruction PNGs."
            },
        },
    }
    requests = (ImageClassifyRequest, TextClassifyRequest, EmbeddingRequest, AudioRequest, AnomalyRequest,
                GenerationRequest)
    examples = {
        "image": {"summary": "image-classification: one base64 PNG", "value": {"image": PNG_1X1, "top_k": 3}},
        "text": {
            "summary": "text-classification or embedding: one text", "value": {"text": "what a lovely day"}
        },
        "texts": {
            "summary": "text-classification: several texts, every score",
            "value": {"texts": ["what a lovely day", "this is awful"], "return_probabilities": True},
        },
        "generate": {
            "summary": "image-generation: two 3s and two 7s, reproducibly",
            "value": {"labels": [3, 7], "count": 2, "seed": 42},
        },
        "anomaly": {
            "summary": "anomaly-detection: one base64 PNG, with its reconstruction",
            "value": {"image": PNG_1X1, "return_reconstruction": True},
        },
        "audio": {
            "summary": "speech-recognition: base64 WAV, with timestamps",
            "value": {"audio": silent_wav_base64(), "return_timestamps": True},
        },
    }
    content: dict[str, Any] = {
        MULTIPART: {"schema": form},
        JSON: {"schema": {"anyOf": [r.model_json_schema() for r in requests]}, "examples": examples},
        TEXT: {"schema": {"type": "string"}, "example": "what a lovely day"},
    }
    for media in (*IMAGE_TYPES, "audio/wav", "audio/flac", "audio/ogg", OCTET):
        content[media] = {"schema": binary}
    return {"requestBody": {"required": True, "content": content}}


async def _predict(
    model: LoadedModel, request: Request, options: Options
) -> PredictResponse | Response:
    task = model.config.task
    if task is None:
        raise InvalidInput(
            f"model '{model.name}' has no `task` section in its config.yaml, so /v1 predict cannot "
            f"prepare inputs for it; send tensors to POST /v2/models/{model.name}/infer instead "
            "(or add a task section)"
        )
    payload = await read_payload(request, task.type, options)
    payload.options.image_grid = "image/png" in request.headers.get("accept", "").lower()
    return await PIPELINES[task.type](model, payload)


async def _counted(
    registry: ModelRegistry, name: str, version: str | None, request: Request, options: Options,
    response: Response,
) -> PredictResponse | Response:
    """`_predict`, counted in the request, failure and latency metrics (route `v1_predict`) as v2 infer is,
    with `Server-Timing` (queue, compute, total) on the answer."""
    timing = start_timing()
    with metrics.track_lookup(metrics.V1_PREDICT, name, version):
        model = registry.get(name, version)
    with metrics.track(metrics.V1_PREDICT, model.name, model.version):
        result = await _predict(model, request, options)
    timed(result if isinstance(result, Response) else response, timing)
    return result


@router.post(
    "/v1/models/{name}/predict",
    response_model=PredictResponse,
    response_model_exclude_none=True,
    summary="Classify an image or text, transcribe a recording, embed texts, score an anomaly or draw images",
    description=_PREDICT_DESCRIPTION,
    openapi_extra=openapi_body(),
    responses=_PREDICT_RESPONSES,
)
async def predict(
    name: str, request: Request, registry: RegistryDep, options: OptionsDep, response: Response
) -> PredictResponse | Response:
    return await _counted(registry, name, None, request, options, response)


@router.post(
    "/v1/models/{name}/versions/{version}/predict",
    response_model=PredictResponse,
    response_model_exclude_none=True,
    summary="Predict with one version of a model",
    description=_PREDICT_DESCRIPTION,
    openapi_extra=openapi_body(),
    responses=_PREDICT_RESPONSES,
)
async def predict_version(
    name: str, version: str, request: Request, registry: RegistryDep, options: OptionsDep, response: Response
) -> PredictResponse | Response:
    return await _counted(registry, name, version, request, options, response)


@router.get("/v1/models", response_model=ModelListResponse,
            summary="Models, their tasks and example requests")
async def list_models(request: Request, registry: RegistryDep) -> ModelListResponse:
    base = str(request.base_url).rstrip("/")
    return ModelListResponse(models=[describe(m, base_url=base) for m in registry.models()])


@router.get("/v1/models/{name}", response_model=ModelSummary,
            summary="One model's task and an example request", responses={404: _ERRORS[404]})
async def get_model(name: str, request: Request, registry: RegistryDep) -> ModelSummary:
    return describe(registry.find(name), base_url=str(request.base_url).rstrip("/"))
