"""Tiny real ONNX models built with `onnx.helper`, and a writer for a model repository on disk.

Each builder returns an `onnx.ModelProto` that ONNX Runtime really runs; tests write them into a
`tmp_path` repository with `write_model` and serve them through the real app.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

OPSET = 17

# numpy dtype -> ONNX elem type, for every v2 datatype
ELEM_TYPES: dict[str, int] = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}

Dim = int | str | None


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           initializers: Sequence[onnx.TensorProto] = (), name: str = "test") -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def identity_model(tensors: Sequence[tuple[str, str, Sequence[Dim]]]) -> onnx.ModelProto:
    """One Identity per (name, v2 datatype, shape): output `<name>_out` echoes input `<name>`."""
    nodes, ins, outs = [], [], []
    for name, datatype, shape in tensors:
        elem = ELEM_TYPES[datatype]
        ins.append(helper.make_tensor_value_info(name, elem, list(shape)))
        outs.append(helper.make_tensor_value_info(f"{name}_out", elem, list(shape)))
        nodes.append(helper.make_node("Identity", [name], [f"{name}_out"]))
    return _model(nodes, ins, outs, name="identity")


def batch_size_model(features: int = 4) -> onnx.ModelProto:
    """x FP32 [B, features] -> y = 2x, and `batch` INT64 [B] where every entry is B.

    The second output reveals the size of the batch a request was computed in.
    """
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", features])
    b = helper.make_tensor_value_info("batch", TensorProto.INT64, ["batch"])
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    starts = numpy_helper.from_array(np.array([0], dtype=np.int64), "starts")
    ends = numpy_helper.from_array(np.array([1], dtype=np.int64), "ends")
    nodes = [
        helper.make_node("Mul", ["x", "two"], ["y"]),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Slice", ["shape", "starts", "ends"], ["b1"]),  # (1,) = [B]
        helper.make_node("Expand", ["b1", "b1"], ["batch"]),  # (B,) filled with B
    ]
    return _model(nodes, [x], [y, b], [two, starts, ends], name="batch_size")


def classifier_model(n_in: int = 4, n_classes: int = 3, seed: int = 0) -> onnx.ModelProto:
    """x FP32 [B, n_in] -> logits FP32 [B, n_classes] = x @ W + b, fixed random weights."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(size=(n_in, n_classes)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.normal(size=(n_classes,)).astype(np.float32), "b")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_in])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_classes])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["logits"])]
    return _model(nodes, [x], [out], [w, bias], name="classifier")


def classifier_weights(n_in: int = 4, n_classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The weights `classifier_model` uses, for computing expected answers in numpy."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(n_in, n_classes)).astype(np.float32)
    return weights, rng.normal(size=(n_classes,)).astype(np.float32)


def ragged_sum_model() -> onnx.ModelProto:
    """x FP32 [B, T] -> s FP32 [B] = sum over T, so zero padding leaves every answer unchanged."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "time"])
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, ["batch"])
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=0)]
    return _model(nodes, [x], [s], [axes], name="ragged_sum")


def slow_model(width: int = 512, depth: int = 24, *, shared: bool = False) -> onnx.ModelProto:
    """x FP32 [B, width] -> y: `depth` chained MatMul+Tanh layers, slow enough to fill a queue.

    `shared`: every layer uses the same weights, so a deep (slow) model stays a small file."""
    rng = np.random.default_rng(1)
    inits, nodes, prev = [], [], "x"
    for i in range(depth):
        if not shared or i == 0:
            w = (rng.normal(size=(width, width)) / np.sqrt(width)).astype(np.float32)
            inits.append(numpy_helper.from_array(w, f"W{i}"))
        nodes.append(helper.make_node("MatMul", [prev, "W0" if shared else f"W{i}"], [f"m{i}"]))
        out = "y" if i == depth - 1 else f"h{i}"
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [out]))
        prev = out
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])
    return _model(nodes, [x], [y], inits, name="slow")


def write_model(
    repo: Path,
    name: str,
    model: onnx.ModelProto | bytes,
    *,
    version: int = 1,
    config: Mapping[str, Any] | None = None,
    side_files: Mapping[str, str | bytes] | None = None,
) -> Path:
    """Write `repo/<name>/<version>/model.onnx` (+ side files) and `repo/<name>/config.yaml`.

    `model` may be raw bytes, to write a corrupt file on purpose. Returns the version folder.
    """
    folder = repo / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    data = model if isinstance(model, bytes) else model.SerializeToString()
    (folder / "model.onnx").write_bytes(data)
    for file_name, content in (side_files or {}).items():
        target = folder / file_name
        target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
    if config is not None:
        (repo / name / "config.yaml").write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return folder
