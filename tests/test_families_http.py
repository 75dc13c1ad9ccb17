"""The anomaly-detection and image-generation tasks over real HTTP, with tiny real ONNX graphs whose
answers the tests can compute: scores, pictures, seeds, grids, the batcher, and every bad input.

- `halving_autoencoder`: image [B, 1, 28, 28] -> reconstruction = image / 2, so the MSE score of an
  image x (in the model's input space) is mean(x^2) / 4.
- `level_generator`: z [B, 16] (+ label [B]) -> image [B, 1, 4, 4] = sigmoid(z + label), so the mean
  brightness grows with the class and the pixels are a known function of the noise.
"""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import AppClient
from onnx import TensorProto, helper, numpy_helper
from onnx_models import write_model
from PIL import Image

OPSET = 17
CPU: dict[str, Any] = {"providers": ["CPUExecutionProvider"]}


def _finish(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
            outputs: list[onnx.ValueInfoProto], inits: list[onnx.TensorProto],
            name: str) -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph(nodes, name, inputs, outputs, initializer=inits),
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def halving_autoencoder(out_shape: tuple[int, ...] | None = None) -> onnx.ModelProto:
    """reconstruction = image / 2; with `out_shape` ([B, ...] reshaped) a broken one of another shape."""
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 28, 28])
    y_shape = ["batch", 1, 28, 28] if out_shape is None else ["batch", 1, 784]
    y = helper.make_tensor_value_info("reconstruction", TensorProto.FLOAT, y_shape)
    inits = [numpy_helper.from_array(np.asarray(0.5, dtype=np.float32), "half")]
    nodes = [helper.make_node("Mul", ["image", "half"], ["half_image" if out_shape else "reconstruction"])]
    if out_shape:
        inits.append(numpy_helper.from_array(np.asarray(out_shape, dtype=np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", ["half_image", "shape"], ["reconstruction"]))
    return _finish(nodes, [x], [y], inits, "halving")


def level_generator(conditional: bool = True) -> onnx.ModelProto:
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 16])
    out = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 4, 4])
    inits = [numpy_helper.from_array(np.asarray([-1, 1, 4, 4], dtype=np.int64), "shape")]
    nodes = [helper.make_node("Reshape", ["z", "shape"], ["grid"])]
    inputs = [z]
    if conditional:
        inputs.append(helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]))
        inits.append(numpy_helper.from_array(np.asarray([-1, 1, 1, 1], dtype=np.int64), "column"))
        nodes += [
            helper.make_node("Cast", ["label"], ["level"], to=TensorProto.FLOAT),
            helper.make_node("Reshape", ["level", "column"], ["level4"]),  # (B,) -> (B, 1, 1, 1)
            helper.make_node("Add", ["grid", "level4"], ["shifted"]),
            helper.make_node("Sigmoid", ["shifted"], ["image"]),
        ]
    else:
        nodes.append(helper.make_node("Sigmoid", ["grid"], ["image"]))
    return _finish(nodes, inputs, [out], inits, "levels")


def autoencoder_config(**task: Any) -> dict[str, Any]:
    return {"max_batch_size": 8, "task": {
        "type": "anomaly-detection", "input": "image", "output": "reconstruction", "size": [28, 28],
        "channels": "L", "resize": "pad", "invert": True, "threshold": 0.02, "false_positive_rate": 0.01,
        "calibration_size": 300, **task}}


def generator_config(conditional: bool = True, **task: Any) -> dict[str, Any]:
    section: dict[str, Any] = {"type": "image-generation", "noise_dim": 16, "output": "image",
                               "max_count": 12}
    if conditional:
        section["labels"] = ["zero", "one", "two"]
    else:
        section["label_input"] = None
    return {"max_batch_size": 16, "max_queue_delay_ms": 20, "task": {**section, **task}}


@pytest.fixture
def family_repo(repo: Path) -> Path:
    write_model(repo, "ae", halving_autoencoder(), config=autoencoder_config())
    write_model(repo, "broken_ae", halving_autoencoder((-1, 1, 784)), config=autoencoder_config())
    write_model(repo, "gen", level_generator(), config=generator_config())
    write_model(repo, "plain_gen", level_generator(False), config=generator_config(False))
    return repo


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png(data: str | bytes) -> np.ndarray:
    raw = base64.b64decode(data) if isinstance(data, str) else data
    image = Image.open(io.BytesIO(raw))
    assert image.format == "PNG"
    return np.asarray(image)


# ---- anomaly detection ---------------------------------------------------------------------------


async def test_anomaly_score_is_the_reconstruction_error(app_client: AppClient, family_repo: Path) -> None:
    white = png(np.full((28, 28), 255))  # a blank page: inverted -> all zeros -> score 0
    square = np.full((28, 28), 255)
    square[4:24, 4:24] = 0  # a dark square on paper: 400 of 784 pixels light after inversion
    async with app_client(**CPU) as client:
        blank = await client.post("/v1/models/ae/predict", content=white,
                                  headers={"Content-Type": "image/png"})
        marked = await client.post("/v1/models/ae/predict",
                                   files=[("file", ("s.png", png(square), "image/png"))])
    assert blank.status_code == 200, blank.text
    body = blank.json()
    assert body["task"] == "anomaly-detection" and body["false_positive_rate"] == 0.01
    assert body["predictions"][0] == {"score": 0.0, "is_anomaly": False, "threshold": 0.02, "notes": []}
    score = marked.json()["predictions"][0]["score"]
    assert score == pytest.approx(400 / 784 / 4, rel=1e-5)  # mean((x - x/2)^2) with x in {0, 1}
    assert marked.json()["predictions"][0]["is_anomaly"] is True


async def test_anomaly_reconstruction_pictures(app_client: AppClient, family_repo: Path) -> None:
    pixels = np.full((28, 28), 255)
    pixels[10:18, 6:22] = 0
    body = {"images": [base64.b64encode(png(pixels)).decode()] * 2, "return_reconstruction": True}
    async with app_client(**CPU) as client:
        response = await client.post("/v1/models/ae/predict", json=body)
        plain = await client.post("/v1/models/ae/predict?return_reconstruction=false",
                                  json={"image": body["images"][0]})
        form = await client.post("/v1/models/ae/predict",
                                 files=[("file", ("a.png", png(pixels), "image/png"))],
                                 data={"return_reconstruction": "true"})
    assert response.status_code == 200, response.text
    first = response.json()["predictions"][0]
    seen, rebuilt = decode_png(first["input"]), decode_png(first["reconstruction"])
    error = decode_png(first["error_map"])
    assert seen.shape == rebuilt.shape == (28, 28) and error.shape == (28, 28, 3)
    assert seen[14, 14] == 255 and seen[0, 0] == 0, "as the model saw it: inverted, strokes light"
    assert rebuilt[14, 14] == 128 and rebuilt[0, 0] == 0, "the halving model's reconstruction"
    assert tuple(error[14, 14]) == (255, 128, 0) and tuple(error[0, 0]) == (0, 0, 0), "hot map of |0.5| and 0"
    assert "reconstruction" not in plain.json()["predictions"][0]
    assert "error_map" in form.json()["predictions"][0]


async def test_anomaly_output_of_another_shape_is_refused_at_load(app_client: AppClient,
                                                                  family_repo: Path) -> None:
    """A model that is no autoencoder is found at load: UNAVAILABLE naming both shapes, and predict is a
    503."""
    async with app_client(**CPU) as client:
        meta = (await client.get("/v2/models/broken_ae")).json()
        response = await client.post("/v1/models/broken_ae/predict", content=png(np.zeros((28, 28))),
                                     headers={"Content-Type": "image/png"})
        healthy = (await client.get("/v2/models/ae/ready")).status_code
    assert meta["parameters"]["state"] == "UNAVAILABLE", meta
    error = meta["parameters"]["error"]
    assert "[-1, 1, 784]" in error and "input's shape" in error, meta
    assert response.status_code == 503 and response.json()["code"] == "model_not_ready", response.text
    assert healthy == 200


@pytest.mark.parametrize(("body", "headers", "status", "words"), [
    (b"", {"Content-Type": "image/png"}, 400, "empty"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, {"Content-Type": "image/png"}, 400, "corrupt or truncated"),
    (b"%PDF-1.4 hello", {"Content-Type": "application/octet-stream"}, 400, "PDF"),
    (b"hello", {"Content-Type": "text/plain"}, 415, "image/png"),
    (b'{"image": "!!"}', {"Content-Type": "application/json"}, 400, "base64"),
    (b'{"image": "AA==", "top_k": 3}', {"Content-Type": "application/json"}, 422, "top_k"),
])
async def test_anomaly_bad_input(app_client: AppClient, family_repo: Path, body: bytes,
                                 headers: dict[str, str], status: int, words: str) -> None:
    async with app_client(**CPU) as client:
        response = await client.post("/v1/models/ae/predict", content=body, headers=headers)
    assert response.status_code == status, response.text
    assert words in response.json()["error"] and response.json()["code"]


# ---- image generation ----------------------------------------------------------------------------


def expected_images(seed: int, labels: list[int], count: int) -> list[np.ndarray]:
    """What level_generator draws for a request: noise from PCG64(seed), one row per label."""
    z = np.random.default_rng(seed).standard_normal((len(labels) * count, 16)).astype(np.float32)
    levels = np.repeat(labels, count).astype(np.float32)
    values = 1 / (1 + np.exp(-(z + levels[:, None])))
    return [(v.reshape(4, 4) * 255 + 0.5).astype(np.uint8) for v in values]


async def test_generation_same_seed_same_images(app_client: AppClient, family_repo: Path) -> None:
    request = {"labels": [2, "zero"], "count": 2, "seed": 42}
    async with app_client(**CPU) as client:
        first = await client.post("/v1/models/gen/predict", json=request)
        again = await client.post("/v1/models/gen/predict", json=request)
        other = await client.post("/v1/models/gen/predict", json={**request, "seed": 43})
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["seed"] == 42 and (body["width"], body["height"]) == (4, 4)
    assert [i["label"] for i in body["images"]] == ["two", "two", "zero", "zero"]
    images = [decode_png(i["png"]) for i in body["images"]]
    for got, want in zip(images, expected_images(42, [2, 0], 2), strict=True):
        np.testing.assert_allclose(got.astype(int), want.astype(int), atol=1)
    assert [i["png"] for i in again.json()["images"]] == [i["png"] for i in body["images"]]
    assert [i["png"] for i in other.json()["images"]] != [i["png"] for i in body["images"]]
    assert images[0].mean() > images[2].mean(), "class 2 is brighter than class 0 in this model"


async def test_generation_defaults_every_class_and_a_returned_seed(app_client: AppClient,
                                                                   family_repo: Path) -> None:
    async with app_client(**CPU) as client:
        response = await client.post("/v1/models/gen/predict", json={})
        seed = response.json()["seed"]
        replay = await client.post("/v1/models/gen/predict", json={"seed": seed})
        plain = await client.post("/v1/models/plain_gen/predict", json={"count": 3, "seed": 5})
    assert [i["label"] for i in response.json()["images"]] == ["zero", "one", "two"]
    assert replay.json()["images"] == response.json()["images"]
    assert [i.get("label") for i in plain.json()["images"]] == [None, None, None]


async def test_generation_png_grid(app_client: AppClient, family_repo: Path) -> None:
    request = {"labels": [0, 1, 2], "count": 2, "seed": 7}
    async with app_client(**CPU) as client:
        grid = await client.post("/v1/models/gen/predict", json=request, headers={"Accept": "image/png"})
        listed = await client.post("/v1/models/gen/predict", json=request)
    assert grid.status_code == 200 and grid.headers["content-type"] == "image/png"
    assert grid.headers["x-seed"] == "7"
    pixels = decode_png(grid.content)
    assert pixels.shape == (3 * 4 + 2 * 2, 2 * 4 + 2)  # 3 rows, 2 columns, 2-pixel gaps
    items = [decode_png(i["png"]) for i in listed.json()["images"]]
    np.testing.assert_array_equal(pixels[6:10, 6:10], items[3])  # row 1 (class 1), column 1


async def test_generation_goes_through_the_batcher(app_client: AppClient, family_repo: Path) -> None:
    """Concurrent requests share batches and each gets exactly its own images."""
    async with app_client(**CPU) as client:
        alone = [(await client.post("/v1/models/gen/predict", json={"labels": [s % 3], "seed": s})).json()
                 for s in range(8)]
        together = await asyncio.gather(
            *[client.post("/v1/models/gen/predict", json={"labels": [s % 3], "seed": s}) for s in range(8)]
        )
        metrics = (await client.get("/metrics")).text
    for a, t in zip(alone, together, strict=True):
        np.testing.assert_allclose(decode_png(t.json()["images"][0]["png"]).astype(int),
                                   decode_png(a["images"][0]["png"]).astype(int), atol=1)
    assert 'model="gen"' in metrics


@pytest.mark.parametrize(("model", "body", "status", "words"), [
    ("gen", {"count": 0}, 422, "count"),
    ("gen", {"count": 5}, 400, "at most 12"),  # 3 classes x 5 > max_count 12
    ("gen", {"labels": [3]}, 400, "0 to 2"),
    ("gen", {"labels": [-1]}, 400, "label -1"),
    ("gen", {"labels": ["seven"]}, 400, "zero, one, two"),
    ("gen", {"labels": []}, 422, "labels"),
    ("gen", {"seed": -1}, 422, "seed"),
    ("gen", {"seed": 1.5}, 422, "seed"),
    ("gen", {"seed": "42"}, 422, "seed"),
    ("gen", {"seed": True}, 422, "seed"),
    ("gen", {"count": 2.0}, 422, "count"),
    ("gen", {"labels": [1], "colour": "red"}, 422, "colour"),
    ("plain_gen", {"labels": [1]}, 400, "unconditional"),
    ("plain_gen", {"count": 13}, 400, "at most 12"),
])
async def test_generation_bad_requests(app_client: AppClient, family_repo: Path, model: str,
                                       body: dict[str, Any], status: int, words: str) -> None:
    async with app_client(**CPU) as client:
        response = await client.post(f"/v1/models/{model}/predict", json=body)
    assert response.status_code == status, response.text
    assert words in response.json()["error"], response.json()


async def test_generation_takes_json_only(app_client: AppClient, family_repo: Path) -> None:
    async with app_client(**CPU) as client:
        response = await client.post("/v1/models/gen/predict", content=png(np.zeros((4, 4))),
                                     headers={"Content-Type": "image/png"})
    assert response.status_code == 415 and "application/json" in response.json()["error"]


async def test_model_list_examples_work(app_client: AppClient, family_repo: Path) -> None:
    async with app_client(**CPU) as client:
        listed = {m["name"]: m for m in (await client.get("/v1/models")).json()["models"]}
        for name in ("ae", "gen", "plain_gen"):
            entry = listed[name]
            answer = await client.post(entry["predict_url"], json=entry["example_json"])
            assert answer.status_code == 200, (name, answer.text)
            assert entry["task"] == answer.json()["task"]
    assert "threshold" not in listed["ae"]["input"] and "anomalous above 0.02" in listed["ae"]["input"]
    assert "Accept: image/png" in listed["gen"]["example_curl"]
