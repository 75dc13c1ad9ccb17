"""POST /v1/models/{name}/explain over real HTTP (httpx + the real app) on real ONNX models built here.

- A linear image model (score = sum(W * x) + b, no softmax): its exact Shapley values per grid cell are
  sum over the cell of W * (x - baseline); KernelSHAP must recover them, occlusion must order them.
- Non-linear models (tests/task_models.py): the efficiency property, the same seed giving the same
  answer, f(x) equal to what /predict says, words with their character offsets, speech words with times.
- Bad input: what /predict refuses is refused identically; bad explain options are 400s saying what is
  accepted.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import soundfile
from asgi_lifespan import LifespanManager
from conftest import AppClient
from onnx import TensorProto, helper, numpy_helper
from onnx_models import classifier_model, write_model
from PIL import Image
from task_models import spell, write_image_model, write_speech_model, write_text_model

from service.app import create_app
from service.explain.image import grid
from service.settings import Settings

CPU = {"providers": ["CPUExecutionProvider"]}
SIZE = 16
TOLERANCE = 1e-3


def linear_weights() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    return rng.normal(size=(SIZE * SIZE, 2)).astype(np.float32), np.array([0.5, -0.25], np.float32)


def linear_image_model() -> onnx.ModelProto:
    weights, bias = linear_weights()
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, SIZE, SIZE])
    y = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 2])
    nodes = [
        helper.make_node("Flatten", ["image"], ["flat"], axis=1),  # (B, 1, H, W) -> (B, H*W)
        helper.make_node("MatMul", ["flat", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes,
        "linear",
        [x],
        [y],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def wav(samples: np.ndarray, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def exact_cell_shapley(pixels: np.ndarray, label: int) -> np.ndarray:
    """Shapley values of the linear score per grid cell against the black (all-zero) baseline."""
    weights, _ = linear_weights()
    cells, count = grid(SIZE, SIZE)
    contribution = weights[:, label].reshape(SIZE, SIZE) * (pixels / 255.0)
    return np.bincount(cells.ravel(), weights=contribution.ravel(), minlength=count)


def cell_values(body: dict[str, Any]) -> np.ndarray:
    """Per-cell attributions back from the per-pixel map (each cell's value is spread over its pixels)."""
    cells, count = grid(SIZE, SIZE)
    return np.bincount(cells.ravel(), weights=np.asarray(body["attributions"]).ravel(), minlength=count)


@pytest.fixture
def picture() -> np.ndarray:
    return np.random.default_rng(11).integers(0, 256, size=(SIZE, SIZE))


def write_linear(repo: Path) -> None:
    task = {"type": "image-classification", "input": "image", "output": "scores", "size": [SIZE, SIZE],
            "channels": "L", "logits": False, "labels": ["left", "right"]}
    write_model(repo, "linear", linear_image_model(), config={"task": task, "max_batch_size": 16})


# ---- exactness on a linear model ----------------------------------------------------------------------


async def test_kernel_shap_recovers_the_exact_shapley_values_of_a_linear_model(
    repo: Path, app_client: AppClient, picture: np.ndarray
) -> None:
    write_linear(repo)
    async with app_client(**CPU) as client:
        response = await client.post(
            "/v1/models/linear/explain?method=kernel-shap&baseline=black&target=right&budget=64",
            content=png(picture), headers={"content-type": "image/png"},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["segments"] == 16 and body["target"] == "right" and body["evaluations"] <= 64
    assert body["baseline"]["kind"] == "black" and abs(body["baseline"]["score"] - (-0.25)) < TOLERANCE
    np.testing.assert_allclose(cell_values(body), exact_cell_shapley(picture, 1), atol=TOLERANCE)
    assert (
        abs(body["efficiency"]["total"] - body["efficiency"]["expected"]) <= body["efficiency"]["tolerance"]
    )


async def test_occlusion_orders_the_cells_of_a_linear_model_as_their_exact_values(
    repo: Path, app_client: AppClient, picture: np.ndarray
) -> None:
    write_linear(repo)
    async with app_client(**CPU) as client:
        response = await client.post(
            "/v1/models/linear/explain", params={"method": "occlusion", "baseline": "black", "target": "0"},
            files={"file": ("x.png", png(picture), "image/png")},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["method"] == "occlusion" and body["evaluations"] == 16 + 2 and body["target"] == "left"
    got, exact = cell_values(body), exact_cell_shapley(picture, 0)
    assert list(np.argsort(got)) == list(np.argsort(exact))
    # linear: leaving one cell out is its Shapley value
    np.testing.assert_allclose(got, exact, atol=TOLERANCE)


# ---- non-linear models: efficiency, seeds, what f(x) is ---------------------------------------------


async def test_efficiency_holds_on_a_nonlinear_model_and_a_seed_fixes_the_answer(
    repo: Path, app_client: AppClient
) -> None:
    write_image_model(repo, "digits", max_batch_size=32)  # softmax over round(9 * mean brightness)
    gradient = np.tile(np.linspace(0, 255, 28), (28, 1))  # a mean near 0.5: class 4 or 5
    async with app_client(**CPU) as client:
        def explain(seed: int) -> Any:
            return client.post("/v1/models/digits/explain", json={
                "image": base64.b64encode(png(gradient)).decode(), "seed": seed, "method": "kernel-shap"})
        first, again, other = await explain(3), await explain(3), await explain(4)
        predicted = await client.post(
            "/v1/models/digits/predict",
            content=png(gradient),
            headers={"content-type": "image/png"},
            params={"return_probabilities": True},
        )
    body = first.json()
    assert first.status_code == 200, first.text
    efficiency = body["efficiency"]
    assert abs(efficiency["total"] - efficiency["expected"]) <= efficiency["tolerance"] <= 1e-6
    assert abs(sum(map(sum, body["attributions"])) - efficiency["expected"]) < 1e-4
    assert abs(efficiency["expected"] - (body["score"] - body["baseline"]["score"])) < 1e-9
    assert again.json()["attributions"] == body["attributions"]
    assert other.json()["seed"] == 4 and other.status_code == 200
    top = predicted.json()["predictions"][0]
    assert body["target"] == top["labels"][0]["label"]
    assert abs(body["score"] - top["probabilities"][body["target"]]) < 1e-6  # f(x) is what /predict says
    heatmap = Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"])))
    assert heatmap.size == (28, 28) and heatmap.mode == "RGB"


async def test_the_image_sized_map_undoes_the_tasks_resize(repo: Path, app_client: AppClient) -> None:
    write_image_model(repo, "padded", task={"resize": "pad"}, max_batch_size=32)
    wide = np.zeros((20, 60))
    wide[:, 30:] = 255  # bright on the right half
    async with app_client(**CPU) as client:
        response = await client.post("/v1/models/padded/explain?method=occlusion", content=png(wide),
                                     headers={"content-type": "image/png"})
    body = response.json()
    assert response.status_code == 200, response.text
    assert body["image_size"] == [20, 60] and np.asarray(body["image_attributions"]).shape == (20, 60)
    assert np.asarray(body["attributions"]).shape == (28, 28)
    heatmap = Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"])))
    assert heatmap.size == (60, 20)


async def test_text_words_keep_their_offsets_and_efficiency_holds(repo: Path, app_client: AppClient) -> None:
    write_text_model(repo)  # class = sum of kept token ids mod 3; removing a word changes the sum
    sent = "what  a lovely day"
    async with app_client(**CPU) as client:
        shap = await client.post("/v1/models/sentiment/explain", json={"text": sent})
        occlusion = await client.post("/v1/models/sentiment/explain?method=occlusion", content=sent.encode(),
                                      headers={"content-type": "text/plain"})
    assert shap.status_code == 200, shap.text
    body = shap.json()
    assert [(w["text"], w["start"], w["end"]) for w in body["words"]] == [
        ("what", 0, 4), ("a", 6, 7), ("lovely", 8, 14), ("day", 15, 18)]
    assert all(sent[w["start"]:w["end"]] == w["text"] for w in body["words"])
    assert body["baseline"]["kind"] == "attention-mask"  # the word tokenizer has no mask token
    assert body["evaluations"] == 2 + 14  # 4 words: every coalition fits the default budget
    assert abs(sum(w["score"] for w in body["words"]) - body["efficiency"]["expected"]) < 1e-5
    assert occlusion.status_code == 200 and occlusion.json()["evaluations"] == 4 + 2


async def test_speech_explains_the_transcript_word_by_word(repo: Path, app_client: AppClient) -> None:
    write_speech_model(repo, max_batch_size=16)
    audio = np.concatenate([np.zeros(3200, np.float32), spell("ab cd"), np.zeros(3200, np.float32)])
    async with app_client(**CPU) as client:
        response = await client.post("/v1/models/speech/explain", content=wav(audio),
                                     headers={"content-type": "audio/wav"})
        shap = await client.post(
            "/v1/models/speech/explain?method=kernel-shap&budget=128",
            content=wav(audio),
            headers={"content-type": "audio/wav"},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["transcript"] == "ab cd" and body["method"] == "occlusion" and body.get("target") is None
    assert "log-probability of the transcript 'ab cd'" in body["explained"]
    assert [w["text"] for w in body["words"]] == ["ab", "cd"]
    duration = audio.size / 16000
    assert body["curve"][0]["start_s"] == 0 and abs(body["curve"][-1]["end_s"] - duration) < 1e-9
    # silence before and after the words carries (almost) nothing, the spoken windows carry the transcript
    quiet = [c["score"] for c in body["curve"] if c["end_s"] <= 0.2]
    spoken = [c["score"] for c in body["curve"] if 0.2 < c["start_s"] < duration - 0.2]
    assert max(map(abs, quiet)) < 0.01 * max(spoken)
    assert all(w["score"] > 0 for w in body["words"])
    assert shap.status_code == 200, shap.text
    efficiency = shap.json()["efficiency"]
    assert abs(efficiency["total"] - efficiency["expected"]) <= efficiency["tolerance"]


# ---- bad input ----------------------------------------------------------------------------------------

BAD_BODIES: list[tuple[str, dict[str, Any]]] = [
    (
        "corrupt png",
        {"content": b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "headers": {"content-type": "image/png"}},
    ),
    ("empty body", {"content": b"", "headers": {"content-type": "image/png"}}),
    ("a wav file", {"content": wav(np.zeros(1600, np.float32)), "headers": {"content-type": "image/png"}}),
    ("wrong content type", {"content": b"hello", "headers": {"content-type": "text/csv"}}),
    ("bad base64", {"json": {"image": "not base64 at all!"}}),
    ("both fields", {"json": {"image": "aaaa", "images": ["aaaa"]}}),
    ("no file field", {"files": {"upload": ("x.png", b"abc", "image/png")}}),
]


@pytest.mark.parametrize(("case", "request_kwargs"), BAD_BODIES, ids=[c for c, _ in BAD_BODIES])
async def test_what_predict_refuses_explain_refuses_the_same_way(
    repo: Path, app_client: AppClient, case: str, request_kwargs: dict[str, Any]
) -> None:
    write_image_model(repo, "digits", max_batch_size=32)
    async with app_client(**CPU) as client:
        predicted = await client.post("/v1/models/digits/predict", **request_kwargs)
        explained = await client.post("/v1/models/digits/explain", **request_kwargs)
    assert 400 <= predicted.status_code < 500, case
    assert explained.status_code == predicted.status_code
    assert explained.json()["code"] == predicted.json()["code"]
    # the same message; a list of accepted form fields also names the explain options
    assert (
        explained.json()["error"].split("; accepted")[0] == predicted.json()["error"].split("; accepted")[0]
    )


async def test_bad_texts_and_recordings_are_refused_as_predict_refuses_them(
    repo: Path, app_client: AppClient
) -> None:
    write_text_model(repo)
    write_speech_model(repo, max_batch_size=16)
    cases = [
        ("sentiment", {"json": {"text": "   "}}),
        ("sentiment", {"json": {"txt": "hello"}}),
        (
            "speech",
            {"content": wav(np.full(1600, np.nan, np.float32)), "headers": {"content-type": "audio/wav"}},
        ),
        ("speech", {"content": b"RIFF\x00\x00", "headers": {"content-type": "audio/wav"}}),
    ]
    async with app_client(**CPU) as client:
        for name, kwargs in cases:
            predicted = await client.post(f"/v1/models/{name}/predict", **kwargs)
            explained = await client.post(f"/v1/models/{name}/explain", **kwargs)
            assert 400 <= predicted.status_code < 500
            assert (explained.status_code, explained.json()) == (predicted.status_code, predicted.json())


async def test_bad_explain_options_are_400s_that_say_what_is_accepted(
    repo: Path, app_client: AppClient
) -> None:
    write_image_model(repo, "digits", max_batch_size=32)
    write_speech_model(repo, max_batch_size=16)
    write_model(repo, "tensors", classifier_model())  # no task section
    image = {"content": png(np.zeros((28, 28))), "headers": {"content-type": "image/png"}}
    recording = {"content": wav(spell("ab")), "headers": {"content-type": "audio/wav"}}
    cases: list[tuple[str, str, dict[str, Any], list[str]]] = [
        ("digits", "method=lime", image, ["unknown method 'lime'", "kernel-shap, occlusion"]),
        ("digits", "budget=2", image, ["'budget' must be from 8 to 4096"]),
        ("digits", "budget=100000", image, ["'budget' must be from 8 to 4096"]),
        ("digits", "method=kernel-shap&budget=20", image, ["needs a budget of at least 51"]),
        ("digits", "method=occlusion&budget=20", image, ["occlusion over 49 cells needs 51 evaluations"]),
        ("digits", "target=cat", image, ["unknown target 'cat'", "index from 0 to 9"]),
        ("digits", "target=10", image, ["unknown target '10'"]),
        ("digits", "baseline=noise", image, ["baseline 'noise'", "blur, black"]),
        ("digits", "seed=-1", image, ["'seed' must be"]),
        ("speech", "target=yes", recording, ["'target' applies to classification"]),
        ("tensors", "", {"json": {"x": 1}}, ["no `task` section", "image-classification"]),
    ]
    async with app_client(**CPU) as client:
        for name, query, kwargs, words in cases:
            response = await client.post(f"/v1/models/{name}/explain?{query}", **kwargs)
            assert response.status_code == 400, (query, response.text)
            assert response.json()["code"] == "invalid_input"
            for word in words:
                assert word in response.json()["error"], (query, response.json()["error"])
        several = await client.post("/v1/models/digits/explain",
                                    files=[("file", ("a.png", image["content"], "image/png"))] * 2)
        json_method = await client.post("/v1/models/digits/explain", json={
            "image": base64.b64encode(image["content"]).decode(), "method": "gradcam"})
        form_budget = await client.post("/v1/models/digits/explain", data={"budget": "lots"},
                                        files={"file": ("a.png", image["content"], "image/png")})
    assert several.status_code == 400 and "exactly one image" in several.json()["error"]
    assert json_method.status_code == 400 and "unknown method 'gradcam'" in json_method.json()["error"]
    assert form_budget.status_code == 400 and "'budget' must be an integer" in form_budget.json()["error"]


async def test_the_openapi_document_declares_explain_with_examples(repo: Path, app_client: AppClient) -> None:
    async with app_client(**CPU) as client:
        document = (await client.get("/openapi.json")).json()
    route = document["paths"]["/v1/models/{name}/explain"]["post"]
    assert {"image/png", "application/json", "multipart/form-data", "text/plain"} <= set(
        route["requestBody"]["content"]
    )
    assert {p["name"] for p in route["parameters"]} >= {"method", "target", "budget", "seed", "baseline"}
    schemas = document["components"]["schemas"]
    for name in ("ImageExplanation", "TextExplanation", "AudioExplanation"):
        assert schemas[name]["examples"], name
    assert "/v1/models/{name}/versions/{version}/explain" in document["paths"]


# ---- a client that goes away ------------------------------------------------------------------------


def metric(text: str, name: str, model: str) -> float:
    found = re.search(rf'^{name}\{{model="{model}",version="1"\}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_a_client_that_disconnects_cancels_its_queued_explanation(repo: Path) -> None:
    """A slow v2 request holds the model's one instance; an explanation queues behind it, then its client
    disconnects (raw ASGI: the body, then `http.disconnect`). None of its copies is ever computed."""
    write_image_model(repo, "slow", slow=True, max_batch_size=8)
    app = create_app(Settings(model_repository=repo, **CPU))
    blocker_body = {
        "inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [2500.0] * 784}]
    }
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://deepserve", timeout=60) as client:
            async def count(name: str) -> float:
                return metric((await client.get("/metrics")).text, name, "slow")

            batches, items = (
                await count("deepserve_batch_size_count"),
                await count("deepserve_batch_size_sum"),
            )
            blocker = asyncio.create_task(client.post("/v2/models/slow/infer", json=blocker_body))
            async with asyncio.timeout(20):
                while await count("deepserve_queue_duration_seconds_count") == 0:  # the blocker computes
                    await asyncio.sleep(0.01)
            gone, sent = asyncio.Event(), []
            body = png(np.full((28, 28), 128))
            messages = [{"type": "http.request", "body": body, "more_body": False}]

            async def receive() -> dict[str, Any]:
                if messages:
                    return messages.pop()
                await gone.wait()
                return {"type": "http.disconnect"}

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": "/v1/models/slow/explain",
                "raw_path": b"/v1/models/slow/explain",
                "query_string": b"method=occlusion",
                "root_path": "",
                "client": ("127.0.0.1", 1),
                "server": ("deepserve", 80),
                "state": {},
                "headers": [(b"content-type", b"image/png"), (b"content-length", str(len(body)).encode())],
            }
            call = asyncio.create_task(manager.app(scope, receive, send))
            async with asyncio.timeout(20):
                while await count("deepserve_queue_depth") == 0:  # its copies wait behind the blocker
                    await asyncio.sleep(0.01)
            assert not blocker.done()
            gone.set()
            await asyncio.wait_for(call, 20)
            assert sent[0]["status"] == 499
            assert (await blocker).status_code == 200
            after = await client.post("/v1/models/slow/predict", content=png(np.zeros((28, 28))),
                                      headers={"content-type": "image/png"})
            assert after.status_code == 200
            # the blocker and the predict ran; not one of the explanation's 51 copies did
            assert await count("deepserve_batch_size_count") - batches == 2.0
            assert await count("deepserve_batch_size_sum") - items == 2.0


async def test_a_model_with_batching_off_is_explained_one_copy_per_call(
    repo: Path, app_client: AppClient
) -> None:
    write_image_model(repo, "single", max_batch_size=0)
    async with app_client(**CPU) as client:
        response = await client.post("/v1/models/single/explain", content=png(np.full((28, 28), 200)),
                                     headers={"content-type": "image/png"})
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 200, response.text
    assert response.json()["evaluations"] == 51
    assert metric(metrics, "deepserve_batch_size_count", "single") == 51.0  # one job per copy


async def test_a_large_photo_gets_a_heatmap_but_no_full_size_map(repo: Path, app_client: AppClient) -> None:
    write_image_model(repo, "digits", max_batch_size=32)
    photo = np.random.default_rng(3).integers(0, 256, size=(1500, 2000))
    async with app_client(**CPU) as client:
        response = await client.post("/v1/models/digits/explain", content=png(photo),
                                     headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image_size"] == [1500, 2000] and "image_attributions" not in body  # null, left out
    heatmap = Image.open(io.BytesIO(base64.b64decode(body["heatmap_png"])))
    assert heatmap.size == (1024, 768)
