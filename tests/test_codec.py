"""Pure tests of the v2 codec: JSON and binary tensors <-> numpy, every datatype, every way to get it wrong.

tritonclient builds the binary requests and parses the responses, so the wire format is checked
against the client people really use, not against our own reading of the spec.
"""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.errors import InferenceFailed, InvalidInput, PayloadTooLarge, UnsupportedMediaType
from service.protocol import binary
from service.protocol.codec import (
    DATATYPES,
    DecodeLimits,
    datatype_of,
    decode_body,
    decode_request,
    encode_response,
    inflate,
    json_to_array,
    output_plan,
    parse_header,
)

NUMERIC = [name for name in DATATYPES if name != "BYTES"]


def sample(datatype: str, shape: tuple[int, ...] = (2, 3), seed: int = 0) -> np.ndarray:
    """Random data of a datatype, including its extreme values where they fit."""
    rng = np.random.default_rng(seed)
    count = int(np.prod(shape))
    if datatype == "BYTES":
        words = [b"", b"a", "h\u00e9llo".encode(), b"x" * 300, "\u6f22\u5b57".encode(), b"end"]
        array = np.empty(count, dtype=object)
        array[:] = [words[i % len(words)] for i in range(count)]
        return array.reshape(shape)
    dtype = DATATYPES[datatype]
    if datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
        values.reshape(-1)[:2] = [info.min, info.max][: min(2, count)]
        return values
    return (rng.normal(size=shape) * 100).astype(dtype)


def json_body(inputs: list[dict[str, Any]], **extra: Any) -> bytes:
    return orjson.dumps({"inputs": inputs, **extra})


def triton_body(arrays: dict[str, np.ndarray], *, binary_data: bool = True) -> tuple[bytes, int | None]:
    """A request body exactly as tritonclient.http builds it."""
    inputs = []
    for name, array in arrays.items():
        datatype = "BYTES" if array.dtype == object else datatype_of(array)
        item = httpclient.InferInput(name, list(array.shape), datatype)
        item.set_data_from_numpy(array, binary_data=binary_data)
        inputs.append(item)
    body, json_size = httpclient.InferenceServerClient.generate_request_body(inputs)
    return body, json_size


def invalid(body: bytes, header_length: str | None = None) -> str:
    with pytest.raises(InvalidInput) as info:
        decode_request(body, header_length=header_length)
    return info.value.message


# ---- round trips ------------------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_json_round_trip_every_datatype(datatype: str) -> None:
    array = sample(datatype)
    if datatype == "BYTES":
        data: Any = [v.decode() for v in array.reshape(-1)]
    else:
        data = array.reshape(-1).tolist()
    decoded = decode_request(json_body([{"name": "x", "shape": [2, 3], "datatype": datatype, "data": data}]))
    got = decoded.inputs["x"]
    assert got.dtype == DATATYPES[datatype] and got.shape == (2, 3)
    np.testing.assert_array_equal(got, array)

    plan = output_plan(decoded.request, ["x"])
    response = encode_response({"x": got}, plan, model_name="m", model_version="1", request_id=None)
    assert response.header_length is None and response.media_type == "application/json"
    result = httpclient.InferenceServerClient.parse_response_body(response.body)
    back = result.as_numpy("x")
    if datatype == "BYTES":
        back = np.array([str(v).encode() if not isinstance(v, bytes) else v for v in back.reshape(-1)],
                        dtype=object).reshape(2, 3)
    np.testing.assert_array_equal(back, array)
    assert result.get_output("x")["datatype"] == datatype


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_binary_round_trip_every_datatype_with_tritonclient(datatype: str) -> None:
    array = sample(datatype, (3, 2, 2))
    body, json_size = triton_body({"x": array})
    assert json_size is not None
    decoded = decode_request(body, header_length=str(json_size))
    np.testing.assert_array_equal(decoded.inputs["x"], array)
    assert decoded.inputs["x"].dtype == DATATYPES[datatype]

    plan = output_plan(decoded.request, ["x"])
    assert plan == {"x": True}  # tritonclient asks for binary_data_output when no outputs are named
    response = encode_response(decoded.inputs, plan, model_name="m", model_version="1", request_id="7")
    assert response.header_length is not None and response.media_type == "application/octet-stream"
    result = httpclient.InferenceServerClient.parse_response_body(
        response.body, header_length=response.header_length)
    np.testing.assert_array_equal(result.as_numpy("x"), array)
    assert result.get_response()["id"] == "7"


def test_json_and_binary_inputs_mixed_in_one_request() -> None:
    a, b, c = sample("FP32", (2, 2)), sample("BYTES", (3,)), sample("INT64", (4,))
    header = {"inputs": [
        {"name": "a", "shape": [2, 2], "datatype": "FP32", "parameters": {"binary_data_size": a.nbytes}},
        {"name": "c", "shape": [4], "datatype": "INT64", "data": c.tolist()},
        {"name": "b", "shape": [3], "datatype": "BYTES", "parameters": {"binary_data_size": 0}},
    ]}
    raw_b = binary.encode_raw(b)
    header["inputs"][2]["parameters"] = {"binary_data_size": len(raw_b)}
    head = orjson.dumps(header)
    decoded = decode_request(head + a.tobytes() + raw_b, header_length=str(len(head)))
    np.testing.assert_array_equal(decoded.inputs["a"], a)
    np.testing.assert_array_equal(decoded.inputs["b"], b)
    np.testing.assert_array_equal(decoded.inputs["c"], c)


def test_nested_json_data_is_row_major() -> None:
    nested = [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]
    decoded = decode_request(json_body([{"name": "x", "shape": [2, 4], "datatype": "INT32", "data": nested}]))
    np.testing.assert_array_equal(decoded.inputs["x"], np.arange(1, 9, dtype=np.int32).reshape(2, 4))
    words = [["a", "b"], ["c", ["d"]]]
    decoded = decode_request(json_body([{"name": "s", "shape": [4], "datatype": "BYTES", "data": words}]))
    assert decoded.inputs["s"].tolist() == [b"a", b"b", b"c", b"d"]


def test_json_fp16_from_numbers_and_integral_floats_for_ints() -> None:
    decoded = decode_request(json_body([
        {"name": "h", "shape": [3], "datatype": "FP16", "data": [0.5, -2, 65504]},
        {"name": "i", "shape": [2], "datatype": "UINT8", "data": [1.0, 255.0]},
        {"name": "b", "shape": [2], "datatype": "BOOL", "data": [1, 0]},
    ]))
    np.testing.assert_array_equal(decoded.inputs["h"], np.array([0.5, -2, 65504], dtype=np.float16))
    np.testing.assert_array_equal(decoded.inputs["i"], np.array([1, 255], dtype=np.uint8))
    np.testing.assert_array_equal(decoded.inputs["b"], np.array([True, False]))


def test_empty_tensors() -> None:
    decoded = decode_request(json_body([{"name": "x", "shape": [0, 3], "datatype": "FP32", "data": []}]))
    assert decoded.inputs["x"].shape == (0, 3) and decoded.inputs["x"].dtype == np.float32
    head = orjson.dumps({"inputs": [{"name": "s", "shape": [0], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": 0}}]})
    assert decode_request(head, header_length=str(len(head))).inputs["s"].shape == (0,)


def test_bytes_wire_format_matches_tritonclient() -> None:
    from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

    array = sample("BYTES", (6,))
    ours = binary.encode_raw(array)
    assert ours == serialize_byte_tensor(array).item()
    assert ours[:4] == struct.pack("<I", 0) and ours[4:8] == struct.pack("<I", 1)
    np.testing.assert_array_equal(deserialize_bytes_tensor(ours), array)
    strings = np.array(["h\u00e9", "x"], dtype=object)  # ONNX Runtime returns str elements
    assert binary.encode_raw(strings) == b"\x03\x00\x00\x00h\xc3\xa9\x01\x00\x00\x00x"


def test_request_id_parameters_and_outputs_are_parsed() -> None:
    body = json_body([{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}], id="abc",
                     parameters={"timeout": 5000, "priority": 1},
                     outputs=[{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}])
    request = decode_request(body).request
    assert request.id == "abc" and request.parameters is not None and request.parameters.timeout == 5000
    assert output_plan(request, ["y", "z", "w"]) == {"y": True, "z": False}


# ---- output selection and encoding --------------------------------------------------------------------


def test_output_plan_defaults_and_overrides() -> None:
    request = parse_header(orjson.dumps({"inputs": [], "parameters": {"binary_data_output": True},
                                         "outputs": [{"name": "a", "parameters": {"binary_data": False}},
                                                     {"name": "b"}]}))
    assert output_plan(request, ["a", "b"]) == {"a": False, "b": True}
    assert output_plan(parse_header(b'{"inputs": []}'), ["a", "b"]) == {"a": False, "b": False}


def test_unknown_output_name_is_refused_with_the_known_names() -> None:
    request = parse_header(orjson.dumps({"inputs": [], "outputs": [{"name": "nope"}]}))
    with pytest.raises(InvalidInput, match=r"requested output 'nope' is not an output.*\['a', 'b'\]"):
        output_plan(request, ["b", "a"])


def test_classification_extension_is_refused() -> None:
    request = parse_header(
        orjson.dumps({"inputs": [], "outputs": [{"name": "a", "parameters": {"classification": 3}}]}))
    with pytest.raises(InvalidInput, match="classification extension is not supported"):
        output_plan(request, ["a"])


def test_mixed_json_and_binary_outputs_follow_plan_order() -> None:
    outputs = {"a": np.arange(4, dtype=np.float32).reshape(2, 2), "b": np.array([b"x", b"yz"], dtype=object)}
    response = encode_response(
        outputs, {"b": True, "a": False}, model_name="m", model_version="2", request_id=None)
    assert response.header_length is not None
    header = orjson.loads(response.body[: response.header_length])
    assert [o["name"] for o in header["outputs"]] == ["b", "a"]
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 11}
    assert header["outputs"][1]["data"] == [0.0, 1.0, 2.0, 3.0] and "id" not in header
    assert response.body[response.header_length:] == b"\x01\x00\x00\x00x\x02\x00\x00\x00yz"


def test_non_utf8_bytes_output_in_json_asks_for_binary() -> None:
    outputs = {"s": np.array([b"\xff"], dtype=object)}
    with pytest.raises(InvalidInput, match="not UTF-8.*binary_data"):
        encode_response(outputs, {"s": False}, model_name="m", model_version="1", request_id=None)
    response = encode_response(outputs, {"s": True}, model_name="m", model_version="1", request_id=None)
    assert response.body.endswith(b"\x01\x00\x00\x00\xff")


def test_missing_output_and_unsupported_dtype_are_inference_failures() -> None:
    with pytest.raises(InferenceFailed, match="no output 'y'"):
        encode_response({"x": np.zeros(1)}, {"y": False}, model_name="m", model_version="1", request_id=None)
    with pytest.raises(InferenceFailed, match="complex64"):
        datatype_of(np.zeros(1, dtype=np.complex64))


def test_non_finite_json_output_is_null() -> None:
    out = encode_response({"x": np.array([np.nan, 1.0], dtype=np.float32)}, {"x": False},
                          model_name="m", model_version="1", request_id=None)
    assert orjson.loads(out.body)["outputs"][0]["data"] == [None, 1.0]


# ---- what clients get wrong: JSON -----------------------------------------------------------------


def x_input(**fields: Any) -> bytes:
    return json_body([{"name": "x", "shape": [2, 4], "datatype": "FP32", **fields}])


@pytest.mark.parametrize(("fields", "expected"), [
    ({"data": list(range(10))}, "input 'x': data has 10 elements but shape [2, 4] needs 8"),
    ({"data": [[1, 2, 3, 4], [5, 6, 7]]}, "input 'x': nested data is ragged"),
    ({"data": [1, 2, "three", 4, 5, 6, 7, 8]}, "input 'x': FP32 data must be numbers; found '1'"),
    ({"data": [1, None, 3, 4, 5, 6, 7, 8]},
     "input 'x': FP32 data must be numbers; found null (NoneType) at element 1"),
    ({"data": [True] * 8}, "input 'x': FP32 data must be numbers, found a boolean"),
    ({"data": [1e39] * 8}, "input 'x': 1e+39 at element 0 is outside the FP32 range"),
    ({}, "input 'x' has neither `data` nor parameters.binary_data_size"),
    ({"data": [0] * 8, "parameters": {"binary_data_size": 32}},
     "input 'x' has both `data` and parameters.binary_data_size"),
    ({"data": 5}, "input 'x': data: Input should be a valid list"),
    ({"shape": [2, -4], "data": [0] * 8}, "input 'x': shape [2, -4] has a negative size"),
    ({"datatype": "FLOAT32", "data": [0] * 8},
     "input 'x': datatype 'FLOAT32' is not a v2 datatype; use one of BOOL"),
])
def test_json_input_errors_name_input_rule_and_value(fields: dict[str, Any], expected: str) -> None:
    assert expected in invalid(x_input(**fields))


def test_json_integers_beyond_64_bits() -> None:
    body = (b'{"inputs": [{"name": "x", "shape": [2], "datatype": "INT64", '
            b'"data": [18446744073709551616, 0]}]}')
    assert "input 'x': 1.8446744073709552e+19 at element 0 is outside the INT64 range" in invalid(body)
    body = (b'{"inputs": [{"name": "x", "shape": [2], "datatype": "UINT64", '
            b'"data": [18446744073709551615, -1]}]}')
    assert "input 'x': -1.0 at element 1 is outside the UINT64 range" in invalid(body)
    body = (b'{"inputs": [{"name": "x", "shape": [2], "datatype": "UINT64", '
            b'"data": [18446744073709551615, 1.0]}]}')
    assert decode_request(body).inputs["x"].tolist() == [2**64 - 1, 1]


@pytest.mark.parametrize(("datatype", "data", "expected"), [
    ("UINT8", [1, 256], "input 'x': 256 at element 1 is outside the UINT8 range [0, 255]"),
    ("INT8", [-129, 0], "input 'x': -129 at element 0 is outside the INT8 range [-128, 127]"),
    ("UINT64", [-1, 0], "outside the UINT64 range"),
    ("INT32", [1, 2.5], "input 'x': INT32 data must be integers; found 2.5 at element 1"),
    ("FP16", [70000.0, 0], "input 'x': 70000.0 at element 0 is outside the FP16 range [-65504.0, 65504.0]"),
    ("BOOL", [True, 2], "input 'x': BOOL data must be true/false (or 0/1); found 2 at element 1"),
    ("BOOL", ["yes", "no"], "BOOL data must be true/false; found 'yes'"),
    ("BYTES", ["a", 3], "input 'x': BYTES data must be strings, found 3 (int) at element 1"),
])
def test_json_values_must_fit_the_datatype(datatype: str, data: list[Any], expected: str) -> None:
    assert expected in invalid(json_body([{"name": "x", "shape": [2], "datatype": datatype, "data": data}]))


@pytest.mark.parametrize(("body", "expected"), [
    (b"{not json", "the request body is not valid JSON"),
    (b"[1, 2]", "the request body must be a JSON object with `inputs`, got list"),
    (b"{}", "inputs: Field required"),
    (b'{"inputs": [{"name": "x"}]}', "input 'x': shape: Field required"),
    (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},'
     b' {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}', "input 'x' appears more than once"),
    (b"", "the request body is not valid JSON"),
])
def test_malformed_request_bodies(body: bytes, expected: str) -> None:
    assert expected in invalid(body)


def test_deeply_nested_bytes_data_does_not_recurse() -> None:
    data: Any = "leaf"
    for _ in range(5000):  # deeper than Python's recursion limit
        data = [data]
    assert json_to_array("s", [data], datatype="BYTES", shape=[1]).tolist() == [b"leaf"]


# ---- what clients get wrong: binary ---------------------------------------------------------------


def binary_request(size: int | None, payload: bytes, *, datatype: str = "FP32",
                   shape: list[int] | None = None, header_length: int | None = None) -> tuple[bytes, str]:
    params = {} if size is None else {"parameters": {"binary_data_size": size}}
    head = orjson.dumps({"inputs": [{"name": "x", "shape": shape or [2, 2], "datatype": datatype, **params}]})
    return head + payload, str(len(head) if header_length is None else header_length)


def test_binary_size_disagreeing_with_shape() -> None:
    body, length = binary_request(12, b"\0" * 12)
    assert ("input 'x' (shape [2, 2]): binary_data_size is 12 bytes but 4 elements of 4 byte(s) need 16"
            in invalid(body, length))


def test_truncated_binary_body() -> None:
    body, length = binary_request(16, b"\0" * 10)
    assert ("input 'x': binary_data_size is 16 bytes but only 10 bytes of binary data are left"
            in invalid(body, length))


def test_extra_bytes_after_binary_tensors() -> None:
    body, length = binary_request(16, b"\0" * 20)
    assert "the body has 4 bytes after the binary tensors" in invalid(body, length)


def test_header_length_larger_than_body() -> None:
    body, _ = binary_request(16, b"\0" * 16)
    assert (f"Inference-Header-Content-Length is 5000 but the body has {len(body)} bytes"
            in invalid(body, "5000"))


@pytest.mark.parametrize("value", ["abc", "0", "-3", "1.5"])
def test_header_length_not_a_positive_integer(value: str) -> None:
    body, _ = binary_request(16, b"\0" * 16)
    assert "Inference-Header-Content-Length is" in invalid(body, value)


def test_header_length_cutting_the_json_short() -> None:
    body, length = binary_request(16, b"\0" * 16)
    assert "the JSON header (first Inference-Header-Content-Length bytes) is not valid JSON" in invalid(
        body, str(int(length) - 3))


def test_binary_input_without_header_length() -> None:
    body, _ = binary_request(16, b"")
    assert ("has parameters.binary_data_size but the request has no Inference-Header-Content-Length"
            in invalid(body))


def test_negative_binary_size() -> None:
    body, length = binary_request(-4, b"\0" * 16)
    assert "binary_data_size is -4 bytes" in invalid(body, length)


def test_binary_bool_bytes_must_be_zero_or_one() -> None:
    body, length = binary_request(4, b"\x00\x01\x02\x01", datatype="BOOL")
    assert "input 'x': BOOL bytes must be 0 or 1, element 2 is 2" in invalid(body, length)


@pytest.mark.parametrize(("payload", "expected"), [
    (struct.pack("<I", 1) + b"a" + b"\x02\x00", "BYTES element 1 is truncated: its 4-byte length prefix"),
    (struct.pack("<I", 1) + b"a" + struct.pack("<I", 9) + b"abc",
     "BYTES element 1 says 9 bytes but only 3 remain"),
    (struct.pack("<I", 1) + b"a", "binary data holds 1 BYTES elements but the shape needs 2"),
    ((struct.pack("<I", 1) + b"a") * 3, "5 bytes are left after the 2 BYTES elements the shape needs"),
])
def test_binary_bytes_length_prefix_errors(payload: bytes, expected: str) -> None:
    body, length = binary_request(len(payload), payload, datatype="BYTES", shape=[2])
    assert expected in invalid(body, length)


def test_binary_numeric_decoding_does_not_copy() -> None:
    array = np.arange(1000, dtype=np.float32)
    body, json_size = triton_body({"x": array})
    decoded = decode_request(body, header_length=str(json_size)).inputs["x"]
    assert not decoded.flags.owndata  # a view over the request body
    np.testing.assert_array_equal(decoded, array)


def test_shape_out_of_bounds() -> None:
    body = json_body([{"name": "x", "shape": [0, 2**50], "datatype": "FP32", "data": []}])
    assert "input 'x': shape [0, 1125899906842624] is out of bounds" in invalid(body)
    deep = json_body([{"name": "x", "shape": [1] * 40, "datatype": "FP32", "data": [1]}])
    assert "at most 32 axes" in invalid(deep)


def test_too_deep_numeric_data() -> None:
    data: Any = [1.0]
    for _ in range(70):
        data = [data]
    body = json_body([{"name": "x", "shape": [1], "datatype": "FP32", "data": data}])
    assert "input 'x': nested data is unreadable" in invalid(body)


# ---- fuzz: whatever a client sends, the codec answers InvalidInput or decodes -------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5),
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(st.text(max_size=3), children, max_size=3)),
    max_leaves=20,
)
_inputs = st.fixed_dictionaries(
    {"name": st.sampled_from(["x", "y"]),
     "shape": st.lists(st.integers(-2, 6), max_size=4) | _json_values,
     "datatype": st.sampled_from([*DATATYPES, "FLOAT", ""])},
    optional={"data": _json_values
              | st.lists(st.integers(-300, 300) | st.floats(-1e6, 1e6) | st.booleans(), max_size=30),
              "parameters": st.fixed_dictionaries({"binary_data_size": st.integers(-4, 40) | _json_values})},
)


@settings(max_examples=4000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=st.fixed_dictionaries({"inputs": st.lists(_inputs, max_size=3)},
                                    optional={"id": _json_values, "outputs": _json_values,
                                              "parameters": _json_values}),
       tail=st.binary(max_size=48), send_length=st.booleans())
def test_fuzzed_requests_decode_or_fail_with_invalid_input(header: dict[str, Any], tail: bytes,
                                                           send_length: bool) -> None:
    head = json.dumps(header).encode()  # stdlib: integers beyond 64 bits too
    try:
        decoded = decode_request(head + tail, header_length=str(len(head)) if send_length else None)
    except InvalidInput as exc:
        assert exc.message
        return
    for item in decoded.request.inputs:
        assert decoded.inputs[item.name].shape == tuple(item.shape)


# ---- compressed bodies and limits ---------------------------------------------------------------------

PAYLOAD = orjson.dumps({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]})


def test_gzip_and_deflate_bodies_inflate_to_the_payload() -> None:
    assert inflate(gzip.compress(PAYLOAD), "gzip", limit=1024) == PAYLOAD
    assert inflate(zlib.compress(PAYLOAD), " Deflate ", limit=1024) == PAYLOAD
    assert inflate(PAYLOAD, "identity", limit=1) == PAYLOAD  # nothing to inflate: the body limit applies


@pytest.mark.parametrize(("body", "encoding", "expected"), [
    (gzip.compress(PAYLOAD)[:-5], "gzip", "gzip body is truncated"),
    (gzip.compress(PAYLOAD)[:12], "gzip", "gzip body is truncated"),
    (zlib.compress(PAYLOAD)[:-3], "deflate", "deflate body is truncated"),
    (gzip.compress(PAYLOAD) + gzip.compress(PAYLOAD), "gzip", "second gzip member"),
    (gzip.compress(PAYLOAD) + b"junk", "gzip", "4 bytes after the end"),
    (b"not gzip at all", "gzip", "not valid gzip data"),
])
def test_broken_compressed_bodies_are_invalid_input(body: bytes, encoding: str, expected: str) -> None:
    with pytest.raises(InvalidInput, match=expected):
        inflate(body, encoding, limit=1 << 20)


def test_inflating_past_the_limit_names_the_setting() -> None:
    bomb = gzip.compress(b" " * 100_000)
    with pytest.raises(PayloadTooLarge, match="more than 4096 bytes.*DEEPSERVE_MAX_INFLATED_BYTES"):
        inflate(bomb, "gzip", limit=4096)
    assert len(inflate(bomb, "gzip", limit=100_000)) == 100_000  # exactly at the limit is fine


def test_unknown_content_encoding_is_415() -> None:
    with pytest.raises(UnsupportedMediaType, match="'br' is not supported"):
        inflate(PAYLOAD, "br", limit=1024)


def test_element_cap_counts_every_input_before_converting() -> None:
    inputs = [{"name": "a", "shape": [3, 4], "datatype": "FP32", "data": [0.0] * 12},
              {"name": "b", "shape": [2, 2], "datatype": "FP32", "data": [0.0] * 4}]
    body = orjson.dumps({"inputs": inputs})
    assert set(decode_request(body, max_elements=16).inputs) == {"a", "b"}
    with pytest.raises(PayloadTooLarge,
                       match="16 tensor elements, over the limit of 15.*MAX_TENSOR_ELEMENTS"):
        decode_request(body, max_elements=15)
    # declared shapes count, so a huge shape is refused before its (missing) data is looked at
    huge = orjson.dumps(
        {"inputs": [{"name": "a", "shape": [1 << 20, 1 << 20], "datatype": "UINT8", "data": []}]})
    with pytest.raises(PayloadTooLarge, match="1099511627776 tensor elements"):
        decode_request(huge, max_elements=1 << 25)


def test_decode_body_inflates_then_decodes_under_the_limits() -> None:
    decoded = decode_body(gzip.compress(PAYLOAD), content_encoding="gzip", header_length=None,
                          limits=DecodeLimits(max_inflated_bytes=1024, max_tensor_elements=4))
    np.testing.assert_array_equal(decoded.inputs["x"], np.array([[1, 2], [3, 4]], dtype=np.float32))
    with pytest.raises(PayloadTooLarge, match="MAX_TENSOR_ELEMENTS"):
        decode_body(PAYLOAD, content_encoding=None, header_length=None,
                    limits=DecodeLimits(max_inflated_bytes=1024, max_tensor_elements=3))
