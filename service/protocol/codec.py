"""v2 requests -> numpy inputs, and numpy outputs -> v2 responses (JSON and binary tensor data).

The datatype table is `service.types.NUMPY_DTYPES` (`DATATYPES` here). Decoding checks everything a client
can get wrong before anything is queued: JSON syntax, schema, datatype names, shapes, element
counts, value ranges, binary sizes; every error is an `InvalidInput` naming the input, the rule, the
value and the fix. Numeric data never goes through a per-element Python loop: JSON lists go through
`np.asarray`, binary data through `np.frombuffer`, and JSON output through orjson's numpy support.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError

from service.errors import InferenceFailed, InvalidInput, PayloadTooLarge, UnsupportedMediaType
from service.protocol import binary
from service.protocol.schema import InferenceRequest, RequestInput
from service.types import NUMPY_DTYPES, Tensor, TensorMap

DATATYPES = NUMPY_DTYPES
_BY_DTYPE = {dtype: name for name, dtype in DATATYPES.items()}


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype of a v2 datatype name; InvalidInput for names outside the protocol."""
    try:
        return DATATYPES[datatype]
    except KeyError:
        raise InvalidInput(
            f"datatype {datatype!r} is not a v2 datatype; use one of {', '.join(DATATYPES)}"
        ) from None


def datatype_of(array: Tensor) -> str:
    """The v2 datatype of an array; str/bytes/object arrays are BYTES."""
    if array.dtype.kind in "OUS":
        return "BYTES"
    name = _BY_DTYPE.get(array.dtype.newbyteorder("="))
    if name is None:
        raise InferenceFailed(
            f"the model returned numpy dtype {array.dtype}, which the v2 protocol cannot carry"
        )
    return name


# ---- requests -------------------------------------------------------------------------------------


@dataclass(slots=True)
class DecodedRequest:
    """A parsed infer request: its header (id, parameters, outputs) and its inputs as numpy."""

    request: InferenceRequest
    inputs: TensorMap


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """What one request may hold; the messages name the settings that raise them."""

    max_inflated_bytes: int = 64 * 1024 * 1024
    """DEEPSERVE_MAX_INFLATED_BYTES: a gzip/deflate body may inflate to at most this many bytes."""
    max_tensor_elements: int = 1 << 26
    """DEEPSERVE_MAX_TENSOR_ELEMENTS: elements over all inputs of one request."""


def decode_body(body: bytes, *, content_encoding: str | None, header_length: str | None,
                limits: DecodeLimits) -> DecodedRequest:
    """The whole decode of an infer body as sent: inflate, parse, validate, convert to numpy.

    One function so that it runs the same inline and in `service.protocol.pool`'s worker processes.
    """
    data = inflate(body, content_encoding, limit=limits.max_inflated_bytes)
    return decode_request(data, header_length=header_length, max_elements=limits.max_tensor_elements)


def inflate(body: bytes, content_encoding: str | None, *, limit: int) -> bytes:
    """`body` as sent (no or identity encoding) or inflated (gzip, deflate) to at most `limit` bytes.

    One gzip member (or zlib stream) exactly: truncated data and anything after the end (a second
    member, trailing bytes) are a 400, a body inflating past `limit` a 413.
    """
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("identity", ""):
        return body
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none"
        )
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"the body is not valid {encoding} data: {exc}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(
            f"the {encoding} body inflates to more than {limit} bytes (DEEPSERVE_MAX_INFLATED_BYTES); "
            "send less data per request or raise DEEPSERVE_MAX_INFLATED_BYTES"
        )
    if not inflater.eof:
        raise InvalidInput(
            f"the {encoding} body is truncated: it ends before the end of its compressed stream; "
            "send the whole body"
        )
    if inflater.unused_data:
        raise InvalidInput(
            f"the {encoding} body has {len(inflater.unused_data)} bytes after the end of its compressed "
            "stream (a second gzip member or trailing data); send one compressed stream"
        )
    return data


def decode_request(body: bytes, *, header_length: str | None = None,
                   max_elements: int | None = None) -> DecodedRequest:
    """Parse a JSON or binary infer body; `header_length` is the Inference-Header-Content-Length value.

    `max_elements` caps the elements over all inputs (a 413 naming DEEPSERVE_MAX_TENSOR_ELEMENTS).
    """
    header, rest = binary.split_body(body, header_length)
    request = parse_header(header, binary_body=header_length is not None)
    if max_elements is not None:
        check_elements(request, max_elements)
    inputs: TensorMap = {}
    offset = 0
    for item in request.inputs:
        if item.name in inputs:
            raise InvalidInput(f"input {item.name!r} appears more than once; send each input once")
        dtype = numpy_dtype_for(item)
        shape = checked_shape(item)
        size = item.parameters.binary_data_size if item.parameters else None
        if size is None:
            if item.data is None:
                raise InvalidInput(
                    f"input {item.name!r} has neither `data` nor parameters.binary_data_size; "
                    "send its elements as JSON `data` or as raw bytes after the JSON header"
                )
            inputs[item.name] = json_to_array(item.name, item.data, datatype=item.datatype, shape=shape)
            continue
        if item.data is not None:
            raise InvalidInput(
                f"input {item.name!r} has both `data` and parameters.binary_data_size; send one"
            )
        if header_length is None:
            raise InvalidInput(
                f"input {item.name!r} has parameters.binary_data_size but the request has no "
                f"{binary.HEADER_LENGTH} header; set it to the byte length of the JSON header"
            )
        if size < 0 or offset + size > len(rest):
            raise InvalidInput(
                f"input {item.name!r}: binary_data_size is {size} bytes but only {len(rest) - offset} "
                "bytes of binary data are left after the JSON header and earlier inputs; the body is "
                "truncated or a size is wrong"
            )
        inputs[item.name] = binary.decode_raw(item.name, rest[offset:offset + size], dtype=dtype, shape=shape)
        if dtype.kind == "O":
            _check_text(item.name, inputs[item.name])
        offset += size
    if offset != len(rest):
        raise InvalidInput(
            f"the body has {len(rest) - offset} bytes after the binary tensors that no input's "
            f"binary_data_size accounts for; check {binary.HEADER_LENGTH} and each binary_data_size"
        )
    return DecodedRequest(request=request, inputs=inputs)


def check_elements(request: InferenceRequest, limit: int) -> None:
    """The request's declared shapes hold at most `limit` elements in all (checked before converting)."""
    total = sum(math.prod(checked_shape(item)) for item in request.inputs)
    if total > limit:
        raise PayloadTooLarge(
            f"the request's inputs hold {total} tensor elements, over the limit of {limit} per request "
            "(DEEPSERVE_MAX_TENSOR_ELEMENTS); send fewer items per request or raise "
            "DEEPSERVE_MAX_TENSOR_ELEMENTS"
        )


def parse_header(header: memoryview | bytes, *, binary_body: bool = False) -> InferenceRequest:
    """JSON bytes -> InferenceRequest; syntax and schema errors become InvalidInput."""
    what = f"the JSON header (first {binary.HEADER_LENGTH} bytes)" if binary_body else "the request body"
    try:
        raw = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InvalidInput(f"{what} must be a JSON object with `inputs`, got {type(raw).__name__}")
    try:
        return InferenceRequest.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(f"{what} does not match the v2 inference request: {describe(exc, raw)}") from None


def describe(exc: ValidationError, raw: dict[str, Any]) -> str:
    """Pydantic errors as `input 'x': shape: Input should be a valid list; ...` (at most five)."""
    parts = []
    for err in exc.errors()[:5]:
        loc = list(err["loc"])
        where = ".".join(str(p) for p in loc) or "(top)"
        if len(loc) >= 2 and loc[0] in ("inputs", "outputs") and isinstance(loc[1], int):
            try:
                name = raw[loc[0]][loc[1]]["name"]
                where = f"{loc[0][:-1]} {name!r}: " + (".".join(str(p) for p in loc[2:]) or "(entry)")
            except (KeyError, IndexError, TypeError):
                pass
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def numpy_dtype_for(item: RequestInput) -> np.dtype[Any]:
    try:
        return numpy_dtype(item.datatype)
    except InvalidInput as exc:
        raise InvalidInput(f"input {item.name!r}: {exc.message}") from None


MAX_AXES = 32
MAX_AXIS_SIZE = 2**40


def checked_shape(item: RequestInput) -> list[int]:
    """Every axis a real size: non-negative, and small enough for numpy (a 0 axis hides the others)."""
    if any(dim < 0 for dim in item.shape):
        raise InvalidInput(
            f"input {item.name!r}: shape {item.shape} has a negative size; give the actual size of "
            "every axis (-1 is only for model metadata)"
        )
    if len(item.shape) > MAX_AXES or any(dim > MAX_AXIS_SIZE for dim in item.shape):
        raise InvalidInput(
            f"input {item.name!r}: shape {item.shape} is out of bounds: at most {MAX_AXES} axes of at most "
            f"{MAX_AXIS_SIZE} each"
        )
    return item.shape


def json_to_array(name: str, data: list[Any], *, datatype: str, shape: Sequence[int]) -> Tensor:
    """JSON `data` (flat or nested, row-major) -> array of `shape` and `datatype`."""
    if datatype == "BYTES":
        flat = _flatten_strings(name, data)
        array: Tensor = np.empty(len(flat), dtype=object)
        array[:] = flat
    else:
        try:
            raw = np.asarray(data)
        except ValueError as exc:
            ragged = "inhomogeneous" in str(exc)
            why = "ragged (rows of different lengths)" if ragged else f"unreadable ({exc})"
            raise InvalidInput(
                f"input {name!r}: nested data is {why}; send a flat row-major list or rows of equal length"
            ) from None
        array = _convert(name, data, raw, datatype)
    count = math.prod(shape)
    if array.size != count:
        raise InvalidInput(
            f"input {name!r}: data has {array.size} elements but shape {list(shape)} needs {count}"
        )
    return array.reshape(shape)


def _convert(name: str, data: list[Any], raw: Tensor, datatype: str) -> Tensor:
    """Check JSON values (as numpy inferred them) fit `datatype`, then cast; vectorised, no Python loop."""
    dtype = DATATYPES[datatype]
    kind = raw.dtype.kind
    if raw.size == 0:
        return raw.astype(dtype)
    if kind not in "biuf":
        raise InvalidInput(
            f"input {name!r}: {datatype} data must be {_expected(datatype)}; found {_odd(raw)}"
        )
    if dtype.kind == "b":
        not_01 = (raw != 0) & (raw != 1)
        if kind != "b" and not_01.any():
            raise InvalidInput(
                f"input {name!r}: BOOL data must be true/false (or 0/1); found {_first(raw, not_01)}"
            )
        return raw.astype(np.bool_)
    if kind == "b":
        raise InvalidInput(f"input {name!r}: {datatype} data must be numbers, found a boolean; send 0/1")
    if dtype.kind in "iu":
        return _to_int(name, data, raw, datatype)
    limit = float(np.finfo(dtype).max)
    outside = np.abs(raw) > limit
    if outside.any():
        raise InvalidInput(
            f"input {name!r}: {_first(raw, outside)} is outside the {datatype} range [{-limit}, {limit}]; "
            "use a wider datatype"
        )
    return raw.astype(dtype)


def _to_int(name: str, data: list[Any], raw: Tensor, datatype: str) -> Tensor:
    dtype = DATATYPES[datatype]
    info = np.iinfo(dtype)
    problem = f"is outside the {datatype} range [{info.min}, {info.max}]; use a wider datatype"
    if raw.dtype.kind == "f":
        fractional = ~np.isfinite(raw) | (raw != np.trunc(raw))
        if fractional.any():
            raise InvalidInput(
                f"input {name!r}: {datatype} data must be integers; found {_first(raw, fractional)}; "
                "round it or declare a floating-point datatype"
            )
    outside = (raw < info.min) | (raw > info.max)
    if outside.any():
        raise InvalidInput(f"input {name!r}: {_first(raw, outside)} {problem}")
    if raw.dtype.kind != "f":
        return raw.astype(dtype)
    # numpy widens ints that share no integer type (-1 with 2**64 - 1) to float64, losing digits:
    # convert the JSON values again, exactly
    try:
        with np.errstate(all="raise"):
            return np.asarray(data, dtype=dtype)
    except (OverflowError, FloatingPointError):
        raise InvalidInput(f"input {name!r}: a value {problem}") from None


def _expected(datatype: str) -> str:
    return "true/false" if datatype == "BOOL" else "numbers"


def _first(raw: Tensor, mask: Tensor) -> str:
    index = int(np.flatnonzero(mask)[0])
    return f"{raw.reshape(-1)[index].item()!r} at element {index}"


def _odd(raw: Tensor) -> str:
    """Describe the first element that is not a number (strings, null, objects, huge integers)."""
    for index, value in enumerate(raw.reshape(-1).tolist()):
        if isinstance(value, int) and not -(2**63) <= value < 2**64:
            return f"{value} at element {index}, beyond 64-bit integers"
        if not isinstance(value, int | float):
            shown = "null" if value is None else repr(value)
            return f"{shown} ({type(value).__name__}) at element {index}"
    return f"values of numpy dtype {raw.dtype}"


def _flatten_strings(name: str, data: list[Any]) -> list[bytes]:
    """Nested lists of JSON strings -> flat row-major list of UTF-8 bytes (an explicit stack, no
    recursion)."""
    flat: list[bytes] = []
    stack: list[Any] = [iter(data)]
    while stack:
        value = next(stack[-1], _END)
        if value is _END:
            stack.pop()
        elif isinstance(value, str):
            flat.append(value.encode("utf-8"))
        elif isinstance(value, list):
            stack.append(iter(value))
        else:
            raise InvalidInput(
                f"input {name!r}: BYTES data must be strings, found {value!r} ({type(value).__name__}) "
                f"at element {len(flat)}; send text as JSON strings, or arbitrary bytes with the binary "
                "extension"
            )
    return flat


_END = object()


def _check_text(name: str, array: Tensor) -> None:
    """Raw BYTES elements must be UTF-8: ONNX Runtime string tensors hold text, and one bad element
    found at run time would fail every request batched with it (JSON strings are always text)."""
    for index, value in enumerate(array.reshape(-1).tolist()):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                f"input {name!r}: BYTES element {index} is not UTF-8 text ({exc.reason} at byte "
                f"{exc.start}); ONNX Runtime string tensors hold text, so encode each element as UTF-8"
            ) from None


# ---- responses ------------------------------------------------------------------------------------


def output_plan(request: InferenceRequest, available: Collection[str]) -> dict[str, bool]:
    """Outputs to return, in order, each mapped to "send as binary"; unknown names are InvalidInput.

    A requested output's `parameters.binary_data` wins over the request's `binary_data_output`.
    """
    default = bool(request.parameters and request.parameters.binary_data_output)
    if not request.outputs:
        return {name: default for name in available}
    plan: dict[str, bool] = {}
    for out in request.outputs:
        if out.name not in available:
            raise InvalidInput(
                f"requested output {out.name!r} is not an output of this model; "
                f"outputs are {sorted(available)}"
            )
        params = out.parameters
        if params and params.classification:
            raise InvalidInput(
                f"output {out.name!r}: the classification extension is not supported; request the raw scores"
            )
        plan[out.name] = params.binary_data if params and params.binary_data is not None else default
    return plan


@dataclass(slots=True)
class EncodedResponse:
    """Response body; `header_length` is set (Inference-Header-Content-Length) when any output is binary."""

    body: bytes
    header_length: int | None

    @property
    def media_type(self) -> str:
        return "application/json" if self.header_length is None else "application/octet-stream"


def encode_response(outputs: TensorMap, plan: dict[str, bool], *, model_name: str, model_version: str,
                    request_id: str | None) -> EncodedResponse:
    """Build the v2 response: outputs in `plan` order, binary ones as raw bytes after the JSON header."""
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, as_binary in plan.items():
        if name not in outputs:
            raise InferenceFailed(f"the model returned no output {name!r}; it returned {sorted(outputs)}")
        array = outputs[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(array), "shape": list(array.shape)}
        if as_binary:
            blob = binary.encode_raw(array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(name, array)
        entries.append(entry)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        response["id"] = request_id
    response["outputs"] = entries
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return EncodedResponse(body=header, header_length=None)
    return EncodedResponse(body=b"".join([header, *blobs]), header_length=len(header))


def _json_data(name: str, array: Tensor) -> Any:
    """Flat row-major data for JSON: a contiguous numpy view for orjson, or strings for BYTES."""
    if array.dtype.kind not in "OUS":
        return np.ascontiguousarray(array.astype(array.dtype.newbyteorder("="), copy=False)).reshape(-1)
    try:
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.reshape(-1).tolist()]
    except UnicodeDecodeError:
        raise InvalidInput(
            f"output {name!r} holds bytes that are not UTF-8, which JSON cannot carry; request it as binary: "
            f'"outputs": [{{"name": "{name}", "parameters": {{"binary_data": true}}}}]'
        ) from None
