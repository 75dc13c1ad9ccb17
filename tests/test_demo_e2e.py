"""The demo end to end: a `--quick` build of every family the training package knows, the real server on
that repository, and per family one request through `POST /v1/models/{name}/predict` with an input made
here (a drawn digit, an espeak-ng recording, a sentence). The answer must be what the trained torch net
computes on the same preprocessed input: the server's decoding, batching, ONNX Runtime and
postprocessing together change nothing.

Families are whatever `models.recipes.load_recipes()` finds, so a new family module is covered as soon
as it exists (its task type needs a case in `CASES`). The build runs once per session: about 30 s on 2
idle cores with espeak-ng's output cached (~/.cache/deepserve/speech), well under 3 minutes cold.
"""

from __future__ import annotations

import base64
import io
import itertools
import re
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image, ImageDraw, ImageFont

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from conftest import serve_app  # noqa: E402

from models.recipes import import_errors, load_recipes  # noqa: E402
from models.recipes.base import FamilyResult  # noqa: E402
from service.repository.config import (  # noqa: E402
    AnomalyDetectionTask,
    ImageClassificationTask,
    ImageGenerationTask,
    ModelConfig,
    SpeechRecognitionTask,
    TextClassificationTask,
    load_config,
)
from service.tasks.audio import decode_audio  # noqa: E402
from service.tasks.image import decode_image  # noqa: E402
from service.tasks.text import encode, load_tokenizer  # noqa: E402

pytestmark = [pytest.mark.train, pytest.mark.timeout(900)]  # the first test also pays for the build

FAMILIES = [name for name, recipe in load_recipes().items() if getattr(recipe, "in_default_build", True)]
"""The default build's families (opt-in ones such as minilm have their own tests), as the `demo` fixture."""
NEEDS = {"speech": ("espeak-ng", "flite")}
"""Programs a family's build needs; without them its case is skipped, as in its own tests."""
ATOL = 1e-4
"""torch vs the served ONNX model on a score (the builds check parity at this tolerance too)."""
DTYPES = {"FP32": np.float32, "INT64": np.int64, "INT32": np.int32, "FP16": np.float16, "BOOL": np.bool_}

Tensors = dict[str, npt.NDArray[Any]]


def _missing(family: str) -> list[str]:
    return [p for p in NEEDS.get(family, ()) if shutil.which(p) is None]


def _torch(result: FamilyResult, config: ModelConfig, inputs: Tensors) -> Tensors:
    """The trained torch net on `inputs` (named like the model's inputs), outputs by name."""
    net = result.net
    assert net is not None, (
        f"models/recipes: the {result.name} build must return FamilyResult(net=<the exported torch net>)"
    )
    args = [torch.from_numpy(np.asarray(inputs[s.name], dtype=DTYPES[s.datatype])) for s in config.inputs]
    with torch.no_grad():
        out = net.eval()(*args)
    outs = (out,) if isinstance(out, torch.Tensor) else tuple(out)
    return {s.name: o.numpy() for s, o in zip(config.outputs, outs, strict=True)}


# ---- references: torch and plain Python, not the server's own post-processing -------------------------


def reference_softmax(logits: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    return torch.softmax(torch.from_numpy(np.asarray(logits, np.float64)), dim=-1).numpy()


def reference_sigmoid(logits: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    return torch.sigmoid(torch.from_numpy(np.asarray(logits, np.float64))).numpy()


def reference_ctc(scores: npt.NDArray[Any], vocabulary: list[str], blank: int) -> tuple[str, float]:
    """Greedy CTC by the book: best symbol per frame, repeats merged, blanks dropped; "|", "▁" and " "
    end words. Confidence: the mean best-symbol probability over the frames that emit a symbol."""
    probs = torch.softmax(torch.from_numpy(np.asarray(scores, np.float64)), dim=-1).numpy()
    if len(probs) == 0:
        return "", 0.0
    best = probs.argmax(axis=1).tolist()
    symbols = [vocabulary[k] for k, _ in itertools.groupby(best) if k != blank]
    text = "".join(" " if s in ("|", "▁", " ") else s.replace("▁", " ") for s in symbols)
    emitting = [p[k] for p, k in zip(probs, best, strict=True) if k != blank]
    confidence = float(np.mean(emitting)) if emitting else float(probs.max(axis=1).mean())
    return " ".join(text.split()), confidence


def _check_labels(got: dict[str, Any], probs: npt.NDArray[np.float64], labels: list[str]) -> None:
    """A served prediction (top label, every score) against torch's scores over `labels`."""
    assert got["labels"][0]["label"] == labels[int(np.argmax(probs))]
    served = np.array([got["probabilities"][name] for name in labels])
    np.testing.assert_allclose(served, probs, atol=ATOL, rtol=0)


# ---- inputs, one maker per task type ---------------------------------------------------------------


def drawn_digit(digit: int) -> bytes:
    """A digit drawn in dark ink on a light, larger-than-28x28 RGB page, as PNG: what a user uploads."""
    page = Image.new("RGB", (96, 120), (245, 242, 236))
    font = ImageFont.load_default(size=84)
    ImageDraw.Draw(page).text((48, 60), str(digit), fill=(30, 30, 60), font=font, anchor="mm", stroke_width=3,
                              stroke_fill=(30, 30, 60))
    buffer = io.BytesIO()
    page.save(buffer, format="PNG")
    return buffer.getvalue()


def espeak_wav(text: str, tmp: Path) -> bytes:
    """`text` spoken by espeak-ng, as the WAV file it writes (22.05 kHz; the server resamples)."""
    wav = tmp / (re.sub(r"\W+", "_", text) + ".wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(wav), text], check=True, timeout=60)
    return wav.read_bytes()


async def image_case(client: httpx.AsyncClient, result: FamilyResult, config: ModelConfig, tmp: Path) -> None:
    task = config.task
    assert isinstance(task, ImageClassificationTask)
    pngs = [drawn_digit(d) for d in range(10)]
    files = [("file", (f"{d}.png", png, "image/png")) for d, png in enumerate(pngs)]
    response = await client.post(f"/v1/models/{result.name}/predict", files=files,
                                 data={"return_probabilities": "true"})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 10
    batch = np.stack([decode_image(png, task).tensor for png in pngs])  # 10 x (1, 28, 28) -> (10, 1, 28, 28)
    logits = _torch(result, config, {task.input: batch})[task.output]
    for got, row in zip(predictions, reference_softmax(logits), strict=True):
        _check_labels(got, row, task.labels or config.labels)


async def text_case(client: httpx.AsyncClient, result: FamilyResult, config: ModelConfig, tmp: Path) -> None:
    task = config.task
    assert isinstance(task, TextClassificationTask)
    texts = [
        "I love this phone, the battery lasts all day!",
        "worst service ever, never flying with them again",
        "the meeting is at 3pm in room 204",
    ]
    response = await client.post(f"/v1/models/{result.name}/predict",
                                 json={"texts": texts, "return_probabilities": True})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    tok = load_tokenizer(result.path / task.tokenizer, max_length=task.max_length, truncate=True)
    encoded = encode(texts, tok, max_length=task.max_length, lowercase=task.lowercase, refuse_long=False)
    inputs = {task.input_ids: encoded.ids}
    if task.attention_mask:
        inputs[task.attention_mask] = encoded.mask
    logits = _torch(result, config, inputs)[task.output]
    probs = reference_sigmoid(logits) if task.multi_label else reference_softmax(logits)
    for got, row in zip(predictions, probs, strict=True):
        _check_labels(got, row, task.labels or config.labels)


async def speech_case(
    client: httpx.AsyncClient, result: FamilyResult, config: ModelConfig, tmp: Path
) -> None:
    task = config.task
    assert isinstance(task, SpeechRecognitionTask)
    wavs = [espeak_wav(text, tmp) for text in ("turn on the kitchen light", "three one four")]
    files = [("file", (f"{i}.wav", wav, "audio/wav")) for i, wav in enumerate(wavs)]
    response = await client.post(f"/v1/models/{result.name}/predict", files=files)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 2
    for got, wav in zip(predictions, wavs, strict=True):  # torch on each recording alone, unpadded
        samples = decode_audio(wav, sample_rate=task.sample_rate, max_duration_s=task.max_duration_s).samples
        inputs = {task.input: samples[None]}
        if task.lengths_input:
            inputs[task.lengths_input] = np.array([len(samples)])
        outputs = _torch(result, config, inputs)
        frames = (
            int(outputs[task.output_lengths][0]) if task.output_lengths else outputs[task.output].shape[1]
        )
        text, confidence = reference_ctc(outputs[task.output][0, :frames], task.vocabulary, task.blank_index)
        assert got["text"] == text
        assert got["confidence"] == pytest.approx(confidence, abs=ATOL)
        assert any("resampled from 22050 Hz" in note for note in got["notes"])


async def anomaly_case(
    client: httpx.AsyncClient, result: FamilyResult, config: ModelConfig, tmp: Path
) -> None:
    task = config.task
    assert isinstance(task, AnomalyDetectionTask)
    pngs = [drawn_digit(d) for d in (1, 4, 7)]
    blank = io.BytesIO()
    Image.new("RGB", (96, 120), (245, 242, 236)).save(blank, format="PNG")
    pngs.append(blank.getvalue())
    files = [("file", (f"{i}.png", png, "image/png")) for i, png in enumerate(pngs)]
    response = await client.post(f"/v1/models/{result.name}/predict", files=files)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == len(pngs)
    batch = np.stack([decode_image(png, task).tensor for png in pngs])  # n x (1, 28, 28) -> (n, 1, 28, 28)
    reconstruction = _torch(result, config, {config.inputs[0].name: batch})[task.output]
    assert reconstruction.shape == batch.shape
    errors = (
        (reconstruction.astype(np.float64) - batch) ** 2
        if task.score == "mse"
        else np.abs(reconstruction - batch)
    )
    expected = errors.reshape(len(pngs), -1).mean(axis=1)
    for got, score in zip(predictions, expected, strict=True):
        assert got["score"] == pytest.approx(score, abs=ATOL)
        assert got["is_anomaly"] == (score > task.threshold)
        assert got["threshold"] == task.threshold


async def generation_case(
    client: httpx.AsyncClient, result: FamilyResult, config: ModelConfig, tmp: Path
) -> None:
    task = config.task
    assert isinstance(task, ImageGenerationTask)
    classes, count, seed = [3, 7], 2, 42
    response = await client.post(f"/v1/models/{result.name}/predict",
                                 json={"labels": classes, "count": count, "seed": seed})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["seed"] == seed
    # the documented contract (service/tasks/generation.py):
    # NumPy PCG64 from the seed, one noise row per image
    noise = (
        np.random.default_rng(seed).standard_normal((len(classes) * count, task.noise_dim)).astype(np.float32)
    )
    inputs: Tensors = {task.noise_input: noise}
    if task.label_input:
        inputs[task.label_input] = np.repeat(np.asarray(classes, np.int64), count)
    images = _torch(result, config, inputs)[task.output]  # (N, C, H, W)
    lo, hi = task.value_range
    pixels = np.clip((images.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)
    expected = np.rint(255.0 * ((1.0 - pixels) if task.invert else pixels))[:, 0]  # (N, H, W), one channel
    assert [image["label"] for image in body["images"]] == [
        task.labels[c] for c in classes for _ in range(count)
    ]
    for got, want in zip(body["images"], expected, strict=True):
        served = np.asarray(Image.open(io.BytesIO(base64.b64decode(got["png"])))).astype(np.float64)
        assert served.shape == want.shape
        assert np.abs(served - want).max() <= 1.0  # rounding to 8 bits


Case = Callable[[httpx.AsyncClient, FamilyResult, ModelConfig, Path], Awaitable[None]]
CASES: dict[str, Case] = {
    "image-classification": image_case,
    "text-classification": text_case,
    "speech-recognition": speech_case,
    "anomaly-detection": anomaly_case,
    "image-generation": generation_case,
}


# ---- tests -------------------------------------------------------------------------------------------


def test_every_family_module_imports() -> None:
    """A family module may be absent (not written yet) but never broken: `load_recipes` would hide it."""
    broken = {
        m: e
        for m, e in import_errors().items()
        if not e.startswith(f"ModuleNotFoundError: No module named '{m}'")
    }
    assert not broken
    assert {"cnn", "mlp", "speech"} <= set(FAMILIES)


async def test_server_serves_every_family(demo: tuple[Path, dict[str, FamilyResult]]) -> None:
    repo, results = demo
    async with serve_app(repo) as client:
        listed = (await client.get("/v1/models")).json()["models"]
        index = (await client.post("/v2/repository/index")).json()
    assert sorted(m["name"] for m in listed) == sorted(results)
    assert {(e["name"], e["state"]) for e in index} == {(name, "READY") for name in results}


@pytest.mark.parametrize("family", FAMILIES)
async def test_predict_answers_like_the_torch_net(
    demo: tuple[Path, dict[str, FamilyResult]], family: str, tmp_path: Path
) -> None:
    if _missing(family):
        pytest.skip(
            f"{family} needs {', '.join(_missing(family))} (apt-get install -y {' '.join(_missing(family))})"
        )
    repo, results = demo
    config = load_config(repo / family / "config.yaml")
    assert config.task is not None, f"{family} is published without a task section"
    case = CASES.get(config.task.type)
    assert case is not None, (
        f"no end-to-end case for task type '{config.task.type}' ({family}); add one to CASES"
    )
    async with serve_app(repo) as client:
        await case(client, results[family], config, tmp_path)
