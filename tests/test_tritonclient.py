"""tritonclient.http, unchanged, against the real server (uvicorn on a free loopback port).

One server serves every test of this module; answers are compared with numpy.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient
from onnx_models import classifier_model, classifier_weights, identity_model, write_model
from server import Server, run_server
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.e2e

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BYTES"]


def values(datatype: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if datatype == "BYTES":
        words = [b"", b"triton", "gr\u00fc\u00df".encode(), b"x" * 40]
        array = np.empty(int(np.prod(shape)), dtype=object)
        array[:] = [words[(i + seed) % len(words)] for i in range(array.size)]
        return array.reshape(shape)
    from tritonclient.utils import triton_to_np_dtype

    dtype = np.dtype(triton_to_np_dtype(datatype))
    if datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        array = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
        array.reshape(-1)[:2] = [info.min, info.max]
        return array
    return rng.normal(size=shape).astype(dtype)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    repo = tmp_path_factory.mktemp("repo")
    write_model(repo, "ident", identity_model([(d.lower(), d, ["batch", 2]) for d in DATATYPES]))
    write_model(repo, "clf", classifier_model())
    write_model(repo, "broken", b"not an onnx file")
    env = {"DEEPSERVE_PROVIDERS": '["CPUExecutionProvider"]'}
    with run_server(repo, log_dir=tmp_path_factory.mktemp("logs"), env=env) as running:
        yield running


@pytest.fixture
def client(server: Server) -> Iterator[httpclient.InferenceServerClient]:
    triton = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}", network_timeout=60)
    yield triton
    triton.close()


def test_health_and_readiness(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("clf") and client.is_model_ready("clf", "1")
    assert not client.is_model_ready("broken")


def test_server_and_model_metadata(client: httpclient.InferenceServerClient) -> None:
    meta = client.get_server_metadata()
    assert meta["name"] == "deepserve" and "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("clf")
    assert model["name"] == "clf" and model["versions"] == ["1"] and model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert model["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]}]
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("nope")
    assert info.value.status() == "404" and "model 'nope' not found" in info.value.message()


def test_repository_index(client: httpclient.InferenceServerClient) -> None:
    index = {entry["name"]: entry for entry in client.get_model_repository_index()}
    assert index["clf"]["state"] == "READY" and index["ident"]["state"] == "READY"
    assert index["broken"]["state"] == "UNAVAILABLE" and index["broken"]["reason"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_every_datatype(client: httpclient.InferenceServerClient, binary: bool) -> None:
    arrays = {d: values(d, (3, 2), seed=i) for i, d in enumerate(DATATYPES)}
    inputs = []
    for datatype, array in arrays.items():
        item = httpclient.InferInput(datatype.lower(), list(array.shape), datatype)
        item.set_data_from_numpy(array, binary_data=binary)
        inputs.append(item)
    outputs = [httpclient.InferRequestedOutput(f"{d.lower()}_out", binary_data=binary) for d in DATATYPES]
    result = client.infer("ident", inputs, outputs=outputs, request_id=f"req-{binary}")
    assert result.get_response()["id"] == f"req-{binary}"
    for datatype, array in arrays.items():
        got = result.as_numpy(f"{datatype.lower()}_out")
        if datatype == "BYTES" and not binary:  # JSON strings come back as str
            got = np.array([v.encode() for v in got.reshape(-1)], dtype=object).reshape(got.shape)
        assert got.shape == array.shape, datatype
        np.testing.assert_array_equal(got, array, err_msg=datatype)


def test_infer_matches_numpy_with_defaults_compression_and_timeout(
    client: httpclient.InferenceServerClient,
) -> None:
    x = np.random.default_rng(9).normal(size=(4, 4)).astype(np.float32)
    w, b = classifier_weights()
    item = httpclient.InferInput("x", [4, 4], "FP32")
    item.set_data_from_numpy(x)  # binary in, and (no outputs named) binary out
    for options in ({}, {"request_compression_algorithm": "gzip"}, {"timeout": 10_000_000},
                    {"model_version": "1", "request_compression_algorithm": "deflate"}):
        result = client.infer("clf", [item], **options)  # type: ignore[arg-type]
        np.testing.assert_allclose(result.as_numpy("logits"), x @ w + b, atol=1e-5, err_msg=str(options))


def test_infer_errors_reach_the_client(client: httpclient.InferenceServerClient) -> None:
    item = httpclient.InferInput("x", [2, 5], "FP32")
    item.set_data_from_numpy(np.zeros((2, 5), dtype=np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("clf", [item])
    assert info.value.status() == "400" and "shape [2, 5]" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.infer("ghost", [item])
    assert info.value.status() == "404"
    with pytest.raises(InferenceServerException) as info:
        client.infer("broken", [item])
    assert info.value.status() == "503"


def test_load_and_unload(client: httpclient.InferenceServerClient) -> None:
    client.unload_model("clf")
    assert not client.is_model_ready("clf")
    client.load_model("clf")
    assert client.is_model_ready("clf")
    with pytest.raises(InferenceServerException) as info:
        client.load_model("broken")
    assert info.value.status() == "400" and "broken" in info.value.message()
