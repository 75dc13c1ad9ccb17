"""Pydantic types of the Open Inference Protocol (KServe v2) wire format, with the protocol's names.

They document the API (/docs shows a worked example for each) and validate request headers; tensor
`data` stays an untyped list here and is decoded to numpy by `service.protocol.codec`. Field names and
meanings follow https://kserve.github.io/website/docs/concepts/architecture/data-plane/v2-protocol and
the binary tensor data extension (`binary_data_size`, `binary_data`, `binary_data_output`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from service.repository.config import Datatype

DATATYPE_NAMES: list[JsonValue] = [
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]

Parameters = dict[str, Any]
"""Free-form `parameters` object: values are strings, numbers or booleans."""


class _Wire(BaseModel):
    model_config = ConfigDict(use_attribute_docstrings=True)


class _Request(_Wire):
    """What clients send is strict: `"ready": 0.0`, `"shape": ["2"]` or `"timeout": 30.0` are refused
    rather than coerced, so a request means what its JSON says (and what the published schema allows)."""

    model_config = ConfigDict(strict=True, use_attribute_docstrings=True)


# ---- parameters with meaning to this server --------------------------------------------------------


class InputParameters(_Request):
    """Parameters of one request input; unknown keys are kept and ignored."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)

    binary_data_size: int | None = None
    """Binary tensor extension: the input's raw bytes follow the JSON header; this many of them."""


class OutputParameters(_Request):
    """Parameters of one requested output; unknown keys are kept and ignored."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)

    binary_data: bool | None = None
    """Binary tensor extension: true returns this output as raw bytes after the JSON header."""
    classification: int | None = None
    """Triton's classification extension; not supported here (a value above 0 is refused)."""


class RequestParameters(_Request):
    """Request-level parameters; unknown keys (priority, sequence_id, ...) are kept and ignored."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)

    binary_data_output: bool | None = None
    """Binary tensor extension: true returns every output as raw bytes unless the output says otherwise."""
    timeout: int | None = Field(None, le=2**64 - 1)
    """Time the request may take end to end, in **microseconds** (Triton's unit and uint64 range;
    tritonclient's `timeout=`). It can only shorten the model's default (`request_timeout_s`), never
    extend it."""


# ---- inference -------------------------------------------------------------------------------------


class RequestInput(_Request):
    """One input tensor: JSON `data` (flat or nested, row-major), or raw bytes after the JSON header."""

    name: str
    """Input name as in the model metadata."""
    shape: list[int]
    """Full shape, every axis a non-negative size (the batch axis included)."""
    datatype: str = Field(json_schema_extra={"enum": DATATYPE_NAMES})
    """One of BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64, BYTES."""
    parameters: InputParameters | None = None
    """`binary_data_size` when the data is sent as raw bytes after the JSON header."""
    data: list[Any] | None = None
    """Elements in row-major order, flat or nested: numbers, booleans (BOOL) or UTF-8 strings (BYTES).
    Leave it out when `parameters.binary_data_size` is given."""


class RequestOutput(_Request):
    """An output the client asks for; without `outputs` in the request every output is returned."""

    name: str
    """Output name as in the model metadata."""
    parameters: OutputParameters | None = None
    """`binary_data: true` returns this output as raw bytes."""


INFERENCE_REQUEST_EXAMPLE: dict[str, Any] = {
    "id": "42",
    "inputs": [
        {
            "name": "x", "shape": [2, 4], "datatype": "FP32",
            "data": [[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]],
        }
    ],
    "outputs": [{"name": "logits", "parameters": {"binary_data": False}}],
    "parameters": {"timeout": 2000000},
}
"""A request for a model with input x FP32 [-1, 4] and output logits (the tests' classifier)."""


class InferenceRequest(_Request):
    """Body of `POST /v2/models/{name}[/versions/{version}]/infer` (its JSON header when binary)."""

    model_config = ConfigDict(
        use_attribute_docstrings=True,
        json_schema_extra={"examples": [INFERENCE_REQUEST_EXAMPLE]},
    )

    id: str | None = None
    """Echoed in the response."""
    parameters: RequestParameters | None = None
    """`binary_data_output`, `timeout` (microseconds); others are ignored."""
    inputs: list[RequestInput]
    """Every input the model needs."""
    outputs: list[RequestOutput] | None = None
    """Outputs to return (unknown names are a 400); default: all of them."""


class ResponseOutput(_Wire):
    """One output tensor: JSON `data` (flat, row-major), or raw bytes after the JSON header."""

    name: str
    shape: list[int]
    datatype: Datatype
    parameters: Parameters | None = None
    """`binary_data_size` when the data follows the JSON header as raw bytes."""
    data: list[Any] | None = None
    """Elements flattened in row-major order; absent for binary outputs."""


class InferenceResponse(_Wire):
    """Answer of an infer request (its JSON header when any output is binary)."""

    model_config = ConfigDict(
        use_attribute_docstrings=True,
        json_schema_extra={
            "examples": [
                {
                    "model_name": "classifier",
                    "model_version": "1",
                    "id": "42",
                    "outputs": [
                        {"name": "logits", "shape": [2, 3], "datatype": "FP32",
                         "data": [0.12, -1.5, 2.25, 0.5, 0.25, -0.75]}
                    ],
                }
            ]
        },
    )

    model_name: str
    model_version: str | None = None
    id: str | None = None
    """The request's `id`, when it had one."""
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


# ---- health and metadata ---------------------------------------------------------------------------


class ServerMetadataResponse(_Wire):
    """`GET /v2`: who this server is and which protocol extensions it speaks."""

    model_config = ConfigDict(
        use_attribute_docstrings=True,
        json_schema_extra={
            "examples": [
                {"name": "deepserve", "version": "0.1.0",
                 "extensions": ["model_repository", "binary_tensor_data"]}
            ]
        },
    )

    name: str
    version: str
    extensions: list[str]


class TensorMetadata(_Wire):
    """Name, datatype and shape of one model input or output; -1 marks a dynamic axis."""

    name: str
    datatype: Datatype
    shape: list[int]


class ModelMetadataResponse(_Wire):
    """`GET /v2/models/{name}`: the protocol's fields plus deepserve's extras.

    The extras (`state`, `error`, `providers`, `batching`, `task`, `labels`, `provenance`, ...) sit in
    `parameters`, where v2 clients expect free-form data and ignore what they do not know.
    """

    model_config = ConfigDict(
        use_attribute_docstrings=True,
        json_schema_extra={
            "examples": [
                {
                    "name": "classifier",
                    "versions": ["1"],
                    "platform": "onnxruntime_onnx",
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
                    "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}],
                    "parameters": {
                        "version": "1",
                        "state": "READY",
                        "error": None,
                        "providers": ["CPUExecutionProvider"],
                        "batching": {"max_batch_size": 32, "max_queue_delay_ms": 2.0,
                                     "preferred_batch_sizes": [], "max_queue_size": 256, "instances": 1},
                        "task": None,
                        "labels": ["cat", "dog", "bird"],
                        "description": "",
                        "provenance": {"sha256": "3f1c..."},
                    },
                }
            ]
        },
    )

    name: str
    versions: list[str] = []
    """Versions of this model the server knows (any state)."""
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: Parameters = {}
    """deepserve's extras: state, error, providers in use, batching, task, labels, provenance."""


# ---- model repository extension --------------------------------------------------------------------


class RepositoryIndexRequest(_Request):
    """Body of `POST /v2/repository/index`; the body itself is optional."""

    model_config = ConfigDict(
        use_attribute_docstrings=True, json_schema_extra={"examples": [{"ready": True}]}
    )

    repository_name: str | None = None
    """Accepted for compatibility; there is one repository."""
    ready: bool | None = None
    """True lists only models ready for inference."""


class RepositoryIndexEntry(_Wire):
    """One model version in the repository, loaded or not."""

    model_config = ConfigDict(
        use_attribute_docstrings=True,
        json_schema_extra={
            "examples": [
                {"name": "classifier", "version": "1", "state": "READY", "reason": ""},
                {"name": "broken", "version": "1", "state": "UNAVAILABLE",
                 "reason": "model.onnx: protobuf parsing failed"},
            ]
        },
    )

    name: str
    version: str | None = None
    state: str | None = None
    """READY, LOADING or UNAVAILABLE."""
    reason: str | None = None
    """Why the model is in that state (a load error), empty when ready."""


class RepositoryModelRequest(_Request):
    """Optional body of load/unload; tritonclient sends `parameters` (ignored here)."""

    model_config = ConfigDict(
        use_attribute_docstrings=True,
        json_schema_extra={"examples": [{"parameters": {"unload_dependents": False}}]},
    )

    parameters: Parameters | None = None


class ErrorResponse(_Wire):
    """Every error: v2 clients read `error`; `code` is machine-readable."""

    model_config = ConfigDict(
        use_attribute_docstrings=True,
        json_schema_extra={
            "examples": [
                {"error": "input 'x': data has 10 elements but shape [2, 4] needs 8", "code": "invalid_input"}
            ]
        },
    )

    error: str
    code: str


def error_response(description: str, **extra: Any) -> dict[str, Any]:
    """A FastAPI `responses=` entry whose body is an `ErrorResponse` (`extra`: headers, ...)."""
    return {"model": ErrorResponse, "description": description, **extra}


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON schema with every `$ref` inlined, for `openapi_extra` request bodies.

    Refs inside an operation would resolve against the OpenAPI document, where pydantic's `$defs` are
    not; our wire types are not recursive, so inlining terminates.
    """
    schema = model.model_json_schema()
    defs: dict[str, Any] = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return {**resolve(defs[ref.rsplit("/", 1)[-1]]), **resolve(rest)}
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    result: dict[str, Any] = resolve(schema)
    return result
