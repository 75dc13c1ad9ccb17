"""The Open Inference Protocol routes over real HTTP (httpx -> the real app -> real ONNX Runtime).

Every datatype goes through a real ONNX Identity model as JSON and as binary tensors; tritonclient's
own encoder and decoder build and read the binary bodies. Error paths assert status, `code` and the
useful words of `error`; nothing answers 500.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from conftest import AppClient
from onnx_models import classifier_model, classifier_weights, identity_model, slow_model, write_model
from prometheus_client import REGISTRY

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES"]
NUMPY = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
         "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
         "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_}
HEADER = "Inference-Header-Content-Length"
CPU: dict[str, Any] = {"providers": ["CPUExecutionProvider"]}  # no CUDA probing on CPU-only machines


def values(datatype: str, shape: tuple[int, ...] = (2, 3), seed: int = 0) -> np.ndarray:
    """Random values of a datatype, extremes included; BYTES are UTF-8 text (ONNX strings are text)."""
    rng = np.random.default_rng(seed)
    count = int(np.prod(shape))
    if datatype == "BYTES":
        words = ["", "a", "h\u00e9llo w\u00f6rld", "\u6f22\u5b57", "x" * 100, "end"]
        array = np.empty(count, dtype=object)
        array[:] = [words[(i + seed) % len(words)].encode() for i in range(count)]
        return array.reshape(shape)
    dtype = np.dtype(NUMPY[datatype])
    if datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
        array.reshape(-1)[:2] = [info.min, info.max]
        return array
    return rng.normal(size=shape).astype(dtype)


def json_data(array: np.ndarray) -> list[Any]:
    if array.dtype == object:
        return [v.decode() for v in array.reshape(-1)]
    return array.reshape(-1).tolist()


def error_of(response: httpx.Response, status: int, code: str) -> str:
    """Assert the v2 error shape, status and code; return the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "code"} and body["code"] == code, body
    message: str = body["error"]
    return message


@pytest.fixture
def models(repo: Path) -> Path:
    """ident: Identity per datatype ([B, 3]); clf: a linear classifier; multi: two versions; broken."""
    write_model(repo, "ident", identity_model([(d.lower(), d, ["batch", 3]) for d in DATATYPES]))
    write_model(repo, "clf", classifier_model())
    for version, seed in ((1, 0), (2, 1)):
        write_model(repo, "multi", classifier_model(seed=seed), version=version,
                    config={"version_policy": {"policy": "all"}})
    write_model(repo, "broken", b"this is not an onnx file")
    return repo


def clf_request(x: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}], **extra
    }


def logits(x: np.ndarray, seed: int = 0) -> np.ndarray:
    w, b = classifier_weights(seed=seed)
    return x @ w + b


# ---- health and metadata ---------------------------------------------------------------------------


async def test_server_metadata_live_and_ready(models: Path, app_client: AppClient) -> None:
    async with app_client(**CPU) as client:
        meta = (await client.get("/v2")).json()
        assert meta["name"] == "deepserve" and meta["version"]
        assert {"model_repository", "binary_tensor_data"} <= set(meta["extensions"])
        live, ready = await client.get("/v2/health/live"), await client.get("/v2/health/ready")
        assert (live.status_code, live.content) == (200, b"")
        assert (ready.status_code, ready.content) == (200, b"")  # a broken model does not block readiness


async def test_strict_readiness_reports_the_failed_model(models: Path, app_client: AppClient) -> None:
    async with app_client(strict_readiness=True, **CPU) as client:
        message = error_of(await client.get("/v2/health/ready"), 503, "server_not_ready")
        assert "broken/1" in message and "failed to load" in message
        assert (await client.get("/v2/health/live")).status_code == 200


async def test_model_metadata(models: Path, app_client: AppClient) -> None:
    async with app_client(**CPU) as client:
        meta = (await client.get("/v2/models/clf")).json()
        assert meta["name"] == "clf" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
        assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}]
        extras = meta["parameters"]
        assert extras["state"] == "READY" and extras["error"] is None
        assert extras["providers"] == ["CPUExecutionProvider"]
        assert extras["batching"]["max_batch_size"] >= 1
        ident = (await client.get("/v2/models/ident/versions/1")).json()
        assert [(t["name"], t["datatype"]) for t in ident["inputs"]] == [(d.lower(), d) for d in DATATYPES]
        multi = (await client.get("/v2/models/multi")).json()
        assert multi["versions"] == ["1", "2"] and multi["parameters"]["version"] == "2"


async def test_metadata_of_a_model_that_failed_to_load(models: Path, app_client: AppClient) -> None:
    async with app_client(**CPU) as client:
        response = await client.get("/v2/models/broken")
        assert response.status_code == 200
        extras = response.json()["parameters"]
        assert extras["state"] == "UNAVAILABLE" and "broken/1/model.onnx" in extras["error"]


async def test_metadata_unknown_model_and_version(models: Path, app_client: AppClient) -> None:
    async with app_client(**CPU) as client:
        missing = error_of(await client.get("/v2/models/nope"), 404, "model_not_found")
        assert "model 'nope' not found" in missing
        message = error_of(await client.get("/v2/models/clf/versions/7"), 404, "model_not_found")
        assert "no version '7'" in message


async def test_model_ready(models: Path, app_client: AppClient) -> None:
    async with app_client(**CPU) as client:
        for path in (
            "/v2/models/clf/ready", "/v2/models/multi/versions/1/ready", "/v2/models/multi/versions/2/ready"
        ):
            response = await client.get(path)
            assert (response.status_code, response.content) == (200, b""), path
        message = error_of(await client.get("/v2/models/broken/ready"), 503, "model_not_ready")
        assert "UNAVAILABLE" in message and "model.onnx" in message
        error_of(await client.get("/v2/models/nope/ready"), 404, "model_not_found")
        error_of(await client.get("/v2/models/clf/versions/3/ready"), 404, "model_not_found")


# ---- infer: every datatype, JSON and binary ------------------------------------------------------------


async def test_every_datatype_round_trips_as_json(models: Path, app_client: AppClient) -> None:
    arrays = {d: values(d, seed=i) for i, d in enumerate(DATATYPES)}
    body = {"id": "json-1", "inputs": [
        {"name": d.lower(), "shape": [2, 3], "datatype": d, "data": json_data(a)} for d, a in arrays.items()]}
    async with app_client(**CPU) as client:
        response = await client.post("/v2/models/ident/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json" and HEADER not in response.headers
    result = response.json()
    assert (result["model_name"], result["model_version"], result["id"]) == ("ident", "1", "json-1")
    outputs = {o["name"]: o for o in result["outputs"]}
    for datatype, array in arrays.items():
        out = outputs[f"{datatype.lower()}_out"]
        assert (out["datatype"], out["shape"]) == (datatype, [2, 3])
        got = np.array(out["data"], dtype=object if datatype == "BYTES" else NUMPY[datatype])
        np.testing.assert_array_equal(got, np.array(json_data(array), dtype=got.dtype), err_msg=datatype)


async def test_every_datatype_round_trips_as_binary(models: Path, app_client: AppClient) -> None:
    arrays = {d: values(d, seed=i) for i, d in enumerate(DATATYPES)}
    inputs = []
    for datatype, array in arrays.items():
        item = httpclient.InferInput(datatype.lower(), list(array.shape), datatype)
        item.set_data_from_numpy(array, binary_data=True)
        inputs.append(item)
    body, json_size = httpclient.InferenceServerClient.generate_request_body(inputs, request_id="bin-1")
    async with app_client(**CPU) as client:
        response = await client.post("/v2/models/ident/infer", content=body, headers={HEADER: str(json_size)})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    result = httpclient.InferenceServerClient.parse_response_body(
        response.content, header_length=int(response.headers[HEADER]))
    assert result.get_response()["id"] == "bin-1"
    for datatype, array in arrays.items():
        got = result.as_numpy(f"{datatype.lower()}_out")
        assert got.dtype == array.dtype and got.shape == array.shape, datatype
        np.testing.assert_array_equal(got, array)


async def test_classifier_answers_match_numpy(models: Path, app_client: AppClient) -> None:
    x = np.random.default_rng(3).normal(size=(5, 4)).astype(np.float32)
    async with app_client(**CPU) as client:
        response = await client.post("/v2/models/clf/infer", json=clf_request(x))
    out = response.json()["outputs"][0]
    assert out["name"] == "logits" and out["shape"] == [5, 3] and "id" not in response.json()
    np.testing.assert_allclose(np.array(out["data"]).reshape(5, 3), logits(x), atol=1e-5)


async def test_versions_are_addressable(models: Path, app_client: AppClient) -> None:
    x = np.ones((1, 4), dtype=np.float32)
    async with app_client(**CPU) as client:
        for version, seed in (("1", 0), ("2", 1)):
            response = await client.post(f"/v2/models/multi/versions/{version}/infer", json=clf_request(x))
            result = response.json()
            assert result["model_version"] == version
            np.testing.assert_allclose(result["outputs"][0]["data"], logits(x, seed).reshape(-1), atol=1e-5)
        latest = (await client.post("/v2/models/multi/infer", json=clf_request(x))).json()
        assert latest["model_version"] == "2"


async def test_outputs_selection_and_per_output_binary(models: Path, app_client: AppClient) -> None:
    a, b = values("INT32"), values("FP64")
    body = {"inputs": [{"name": d.lower(), "shape": [2, 3], "datatype": d, "data": json_data(values(d))}
                       for d in DATATYPES],
            "outputs": [{"name": "fp64_out", "parameters": {"binary_data": True}}, {"name": "int32_out"}]}
    async with app_client(**CPU) as client:
        response = await client.post("/v2/models/ident/infer", json=body)
    assert response.status_code == 200, response.text
    length = int(response.headers[HEADER])
    header = orjson.loads(response.content[:length])
    assert [o["name"] for o in header["outputs"]] == ["fp64_out", "int32_out"]
    assert header["outputs"][0]["parameters"] == {"binary_data_size": b.nbytes}
    assert header["outputs"][1]["data"] == a.reshape(-1).tolist()
    np.testing.assert_array_equal(np.frombuffer(response.content[length:], dtype="<f8").reshape(2, 3), b)


async def test_request_level_binary_output_with_json_override(models: Path, app_client: AppClient) -> None:
    x = np.ones((2, 4), dtype=np.float32)
    async with app_client(**CPU) as client:
        binary = await client.post(
            "/v2/models/clf/infer", json=clf_request(x, parameters={"binary_data_output": True}))
        assert binary.headers["content-type"] == "application/octet-stream"
        result = httpclient.InferenceServerClient.parse_response_body(
            binary.content, header_length=int(binary.headers[HEADER]))
        np.testing.assert_allclose(result.as_numpy("logits"), logits(x), atol=1e-5)
        override = await client.post("/v2/models/clf/infer", json=clf_request(
            x, parameters={"binary_data_output": True},
            outputs=[{"name": "logits", "parameters": {"binary_data": False}}]))
        assert override.headers["content-type"] == "application/json" and HEADER not in override.headers


async def test_gzip_request_body(models: Path, app_client: AppClient) -> None:
    x = np.ones((1, 4), dtype=np.float32)
    async with app_client(**CPU) as client:
        response = await client.post(
            "/v2/models/clf/infer", content=gzip.compress(orjson.dumps(clf_request(x))),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
        assert response.status_code == 200, response.text
        bad = await client.post(
            "/v2/models/clf/infer", content=b"not gzip", headers={"Content-Encoding": "gzip"})
        assert "not valid gzip" in error_of(bad, 400, "invalid_input")
        odd = await client.post("/v2/models/clf/infer", content=b"{}", headers={"Content-Encoding": "br"})
        assert "'br' is not supported" in error_of(odd, 415, "unsupported_media_type")


async def test_openapi_documents_the_infer_body_and_its_example_works(
    models: Path, app_client: AppClient
) -> None:
    async with app_client(**CPU) as client:
        spec = (await client.get("/openapi.json")).json()
        operation = spec["paths"]["/v2/models/{name}/infer"]["post"]
        content = operation["requestBody"]["content"]
        assert {"application/json", "application/octet-stream"} <= set(content)
        example = content["application/json"]["example"]
        assert "binary_data_size" in str(content["application/json"]["schema"])
        response = await client.post("/v2/models/clf/infer", json=example)  # the docs' example really runs
        assert response.status_code == 200, response.text
        assert response.json()["id"] == example["id"]
        schemas = spec["components"]["schemas"]
        for name in ("InferenceResponse", "ModelMetadataResponse", "ServerMetadataResponse", "ErrorResponse"):
            assert schemas[name].get("examples"), name


# ---- infer: errors ---------------------------------------------------------------------------------


async def test_infer_input_errors_are_400_with_useful_messages(models: Path, app_client: AppClient) -> None:
    x = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"inputs": [{**x, "name": "y"}]}, ["has no input 'y'", "['x']"]),
        ({"inputs": [{**x, "shape": [1, 5], "data": [0] * 5}]}, ["shape [1, 5]", "[-1, 4]"]),
        ({"inputs": [{**x, "datatype": "INT32"}]}, ["datatype INT32", "expects FP32"]),
        ({"inputs": [{**x, "data": [1, 2, 3]}]}, ["input 'x': data has 3 elements but shape [1, 4] needs 4"]),
        ({"inputs": [{**x, "datatype": "FLOAT"}]}, ["'FLOAT' is not a v2 datatype"]),
        ({"inputs": [x], "outputs": [{"name": "probs"}]}, ["requested output 'probs'", "['logits']"]),
        ({"inputs": [x], "parameters": {"timeout": -5}}, ["parameters.timeout is -5"]),
        ({"inputs": []}, ["input 'x' is missing"]),
    ]
    async with app_client(**CPU) as client:
        for body, words in cases:
            message = error_of(await client.post("/v2/models/clf/infer", json=body), 400, "invalid_input")
            for word in words:
                assert word in message, (body, message)
        message = error_of(await client.post("/v2/models/clf/infer", content=b"{oops"), 400, "invalid_input")
        assert "not valid JSON" in message


async def test_truncated_binary_body_is_400(models: Path, app_client: AppClient) -> None:
    head = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 16}}]})
    async with app_client(**CPU) as client:
        short = await client.post(
            "/v2/models/clf/infer", content=head + b"\0" * 8, headers={HEADER: str(len(head))})
        assert "only 8 bytes of binary data are left" in error_of(short, 400, "invalid_input")
        long = await client.post("/v2/models/clf/infer", content=head, headers={HEADER: "9999"})
        assert "Inference-Header-Content-Length is 9999" in error_of(long, 400, "invalid_input")


async def test_infer_unknown_model_version_and_unready_model(models: Path, app_client: AppClient) -> None:
    body = clf_request(np.ones((1, 4), dtype=np.float32))
    async with app_client(**CPU) as client:
        error_of(await client.post("/v2/models/nope/infer", json=body), 404, "model_not_found")
        error_of(await client.post("/v2/models/clf/versions/5/infer", json=body), 404, "model_not_found")
        message = error_of(await client.post("/v2/models/broken/infer", json=body), 503, "model_not_ready")
        assert "broken" in message


async def test_oversized_body_is_413(models: Path, app_client: AppClient) -> None:
    x = np.zeros((300, 4), dtype=np.float32)
    async with app_client(max_request_bytes=1024, max_inflated_bytes=2048, **CPU) as client:
        response = await client.post("/v2/models/clf/infer", json=clf_request(x))
        message = error_of(response, 413, "payload_too_large")
        assert "1024" in message
        bomb = gzip.compress(b" " * 100_000)  # small on the wire, too large once inflated
        response = await client.post(
            "/v2/models/clf/infer", content=bomb, headers={"Content-Encoding": "gzip"})
        message = error_of(response, 413, "payload_too_large")
        assert "inflates to more than 2048 bytes" in message and "DEEPSERVE_MAX_INFLATED_BYTES" in message


async def test_request_timeout_is_504(repo: Path, app_client: AppClient) -> None:
    write_model(repo, "slow", slow_model(width=64, depth=4))
    x = np.zeros((1, 64), dtype=np.float32)
    body = {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": x.tolist()}],
            "parameters": {"timeout": 1}}  # one microsecond
    async with app_client(**CPU) as client:
        error_of(await client.post("/v2/models/slow/infer", json=body), 504, "timeout")
        response = await client.post("/v2/models/slow/infer", json={"inputs": body["inputs"]})
        assert response.status_code == 200


async def test_metrics_count_successes_and_failures(models: Path, app_client: AppClient) -> None:
    def sample(name: str, **labels: str) -> float:
        route = {} if name == "deepserve_requests_in_flight" else {"route": "v2_infer"}
        return REGISTRY.get_sample_value(name, {"model": "clf", "version": "1", **route, **labels}) or 0.0

    before_ok = sample("deepserve_requests_total", outcome="success")
    before_bad = sample("deepserve_request_failures_total", reason="invalid_input")
    before_count = sample("deepserve_request_duration_seconds_count")
    async with app_client(**CPU) as client:
        await client.post("/v2/models/clf/infer", json=clf_request(np.ones((1, 4), dtype=np.float32)))
        await client.post("/v2/models/clf/infer",
                          json={"inputs": [{"name": "zzz", "shape": [1], "datatype": "FP32", "data": [1]}]})
        text = (await client.get("/metrics")).text
    assert sample("deepserve_requests_total", outcome="success") == before_ok + 1
    assert sample("deepserve_request_failures_total", reason="invalid_input") == before_bad + 1
    assert sample("deepserve_request_duration_seconds_count") == before_count + 2
    assert sample("deepserve_requests_in_flight") == 0
    assert 'deepserve_requests_total{model="clf",outcome="success",route="v2_infer",version="1"}' in text
