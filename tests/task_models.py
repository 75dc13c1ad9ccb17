"""Tiny real ONNX models (onnx.helper) whose answers tests can predict, for the /v1 task endpoints.

- `brightness_classifier`: image [B, C, H, W] -> logits [B, 10]; the class is round(9 * mean pixel).
- `slow_brightness_classifier`: the same answers, but it also multiplies two n x n matrices where n is
  the largest pixel value: instant for normalised images, ~a second for a v2 tensor of 2000s. A test
  uses it to keep the model's one instance busy while other requests queue.
- `token_sum_classifier`: input_ids/attention_mask [B, L] -> logits [B, 3]; class = sum(ids * mask) % 3.
- `lookup_embedder`: ids [B, L] -> a fixed embedding table row per token, [B, L, D].
- `level_ctc`: audio [B, S] + lengths -> log-probs [B, S // 160, V]: each 10 ms frame emits the symbol
  whose index is round(mean sample * (V - 1)), so a staircase of DC levels spells a transcript.
- `level_classifier`: audio [B, S] -> logits [B, K]: class = round(mean sample * (K - 1)).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx_models import write_model
from tokenizers import Tokenizer, models, pre_tokenizers

OPSET = 17
FRAME = 160  # samples per CTC frame at 16 kHz = 10 ms
WORDS = [
    "[PAD]", "[UNK]", "hello", "world", "good", "bad", "day", "night", "what", "a", "lovely", "is", "awful",
]
VOCABULARY = ["_", "|", "a", "b", "c", "d", "e"]  # CTC: blank, word delimiter, letters


def _const(name: str, value: Any, dtype: Any) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _finish(
    nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
    inits: list[onnx.TensorProto], name: str,
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _nearest_logits(
    level: str, count: int, out: str, scale: float = 200.0
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """logits[..., k] = -scale * (level * (count - 1) - k)^2: `level` [..., 1] -> `out` [..., count]."""
    inits = [
        _const(f"{out}_n", float(count - 1), np.float32),
        _const(f"{out}_k", np.arange(count), np.float32),
        _const(f"{out}_s", -scale, np.float32),
    ]
    nodes = [
        helper.make_node("Mul", [level, f"{out}_n"], [f"{out}_x"]),
        helper.make_node("Sub", [f"{out}_x", f"{out}_k"], [f"{out}_d"]),
        helper.make_node("Mul", [f"{out}_d", f"{out}_d"], [f"{out}_d2"]),
        helper.make_node("Mul", [f"{out}_d2", f"{out}_s"], [out]),
    ]
    return nodes, inits


def brightness_classifier(channels: int = 1, size: int = 28) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", channels, size, size])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])
    nodes = [
        helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2, 3], keepdims=0),  # (B,C,H,W) -> (B,)
    ]
    nodes.append(helper.make_node("Unsqueeze", ["mean", "axis1"], ["level"]))  # (B,) -> (B, 1)
    more, inits = _nearest_logits("level", 10, "logits")
    return _finish(nodes + more, [x], [y], [_const("axis1", [1], np.int64), *inits], "brightness")


def slow_brightness_classifier(size: int = 28) -> onnx.ModelProto:
    model = brightness_classifier(1, size)
    graph = model.graph
    graph.output[0].name = "fast_logits"
    graph.node[-1].output[0] = "fast_logits"
    graph.initializer.extend(
        [_const("tiny", 1e-6, np.float32), _const("zero", 0.0, np.float32), _const("axis0", [0], np.int64)]
    )
    graph.node.extend([
        helper.make_node("ReduceMax", ["image"], ["peak"], keepdims=0),  # (B, C, H, W) -> ()
        helper.make_node("Cast", ["peak"], ["n"], to=TensorProto.INT64),
        helper.make_node("Unsqueeze", ["n", "axis0"], ["n1"]),  # () -> (1,)
        helper.make_node("Concat", ["n1", "n1"], ["square"], axis=0),  # (n, n)
        helper.make_node("Expand", ["tiny", "square"], ["matrix"]),
        helper.make_node("MatMul", ["matrix", "matrix"], ["product"]),  # the slow part: O(n^3)
        helper.make_node("ReduceSum", ["product"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["fast_logits", "nothing"], ["logits"]),
    ])
    graph.output[0].name = "logits"
    onnx.checker.check_model(model)
    return model


def token_sum_classifier() -> onnx.ModelProto:
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "length"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "length"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])
    nodes = [
        helper.make_node("Mul", ["input_ids", "attention_mask"], ["kept"]),
        helper.make_node("ReduceSum", ["kept", "axis1"], ["total"], keepdims=1),  # (B, L) -> (B, 1)
        helper.make_node("Mod", ["total", "three"], ["rest"]),
        helper.make_node("Cast", ["rest"], ["restf"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["restf", "two"], ["level"]),  # 0, 0.5, 1 -> classes 0, 1, 2
    ]
    more, inits = _nearest_logits("level", 3, "logits")
    consts = [_const("axis1", [1], np.int64), _const("three", 3, np.int64), _const("two", 2.0, np.float32)]
    return _finish(nodes + more, [ids, mask], [y], consts + inits, "token_sum")


def embedding_table(dim: int = 4) -> np.ndarray:
    return np.random.default_rng(3).normal(size=(len(WORDS), dim)).astype(np.float32)


def lookup_embedder(dim: int = 4) -> onnx.ModelProto:
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "length"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "length"])
    y = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "length", dim])
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["last_hidden_state"], axis=0),  # (B,L) -> (B,L,D)
    ]
    # the mask is an input the model ignores, as a real encoder's padded positions are ignored by pooling
    nodes.append(helper.make_node("Identity", ["attention_mask"], ["unused"]))
    return _finish(
        nodes, [ids, mask], [y], [numpy_helper.from_array(embedding_table(dim), "table")], "embedder"
    )


def level_ctc(vocabulary: int = len(VOCABULARY)) -> onnx.ModelProto:
    audio = helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", "samples"])
    lengths = helper.make_tensor_value_info("audio_lengths", TensorProto.INT64, ["batch"])
    log_probs = helper.make_tensor_value_info("log_probs", TensorProto.FLOAT, ["batch", "frames", vocabulary])
    frames = helper.make_tensor_value_info("frame_lengths", TensorProto.INT64, ["batch"])
    nodes = [
        helper.make_node("Shape", ["audio"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["samples"], axis=0),  # scalar S
        helper.make_node("Div", ["samples", "frame"], ["t"]),  # T = S // 160
        helper.make_node("Mul", ["t", "frame"], ["usable"]),
        helper.make_node("Unsqueeze", ["usable", "zero1"], ["end"]),
        helper.make_node("Slice", ["audio", "start", "end", "one1"], ["cropped"]),  # (B, S) -> (B, T*160)
        helper.make_node("Reshape", ["cropped", "frames_shape"], ["framed"]),  # -> (B, T, 160)
        helper.make_node("ReduceMean", ["framed"], ["level"], axes=[2], keepdims=1),  # -> (B, T, 1)
        helper.make_node("Div", ["audio_lengths", "frame"], ["frame_lengths"]),
    ]
    more, inits = _nearest_logits("level", vocabulary, "scores")
    nodes += [*more, helper.make_node("LogSoftmax", ["scores"], ["log_probs"], axis=-1)]
    consts = [
        _const("one", 1, np.int64),
        _const("frame", FRAME, np.int64),
        _const("zero1", [0], np.int64),
        _const("start", [0], np.int64),
        _const("one1", [1], np.int64),
        _const("frames_shape", [0, -1, FRAME], np.int64),
    ]
    return _finish(nodes, [audio, lengths], [log_probs, frames], consts + inits, "level_ctc")


def level_classifier(classes: int = 4) -> onnx.ModelProto:
    audio = helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", "samples"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])
    nodes = [helper.make_node("ReduceMean", ["audio"], ["level"], axes=[1], keepdims=1)]  # (B, S) -> (B, 1)
    more, inits = _nearest_logits("level", classes, "logits", scale=20.0)
    return _finish(nodes + more, [audio], [y], inits, "level_classifier")


def word_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


def token_ids(text: str) -> list[int]:
    return list(word_tokenizer().encode(text).ids)


def _ragged(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape, "pad_value": 0}


def write_image_model(repo: Path, name: str = "digits", *, task: dict[str, Any] | None = None,
                      channels: int = 1, size: int = 28, slow: bool = False, **config: Any) -> Path:
    section = {"type": "image-classification", "input": "image", "output": "logits", "size": [size, size],
               "channels": "L" if channels == 1 else "RGB", **(task or {})}
    model = slow_brightness_classifier(size) if slow else brightness_classifier(channels, size)
    return write_model(repo, name, model, config={"task": section, **config})


def write_text_model(
    repo: Path, name: str = "sentiment", *, task: dict[str, Any] | None = None, **config: Any
) -> Path:
    section = {"type": "text-classification", "labels": ["zero", "one", "two"], **(task or {})}
    inputs = [_ragged("input_ids", "INT64", [-1, -1]), _ragged("attention_mask", "INT64", [-1, -1])]
    return write_model(
        repo,
        name,
        token_sum_classifier(),
        config={"task": section, "inputs": inputs, **config},
        side_files={"tokenizer.json": word_tokenizer().to_str()},
    )


def write_embedding_model(repo: Path, name: str = "embedder", *, task: dict[str, Any] | None = None) -> Path:
    inputs = [_ragged("input_ids", "INT64", [-1, -1]), _ragged("attention_mask", "INT64", [-1, -1])]
    return write_model(repo, name, lookup_embedder(), config={"task": {"type": "embedding", **(task or {})},
                       "inputs": inputs}, side_files={"tokenizer.json": word_tokenizer().to_str()})


def write_speech_model(
    repo: Path, name: str = "speech", *, task: dict[str, Any] | None = None, **config: Any
) -> Path:
    section = {"type": "speech-recognition", "vocabulary": VOCABULARY, **(task or {})}
    inputs = [
        _ragged("audio", "FP32", [-1, -1]),
        {"name": "audio_lengths", "datatype": "INT64", "shape": [-1]},
    ]
    return write_model(repo, name, level_ctc(), config={"task": section, "inputs": inputs, **config})


def write_audio_classifier(repo: Path, name: str = "levels") -> Path:
    section = {"type": "audio-classification", "labels": ["silent", "low", "mid", "high"], "top_k": 2}
    return write_model(repo, name, level_classifier(), config={"task": section,
                       "inputs": [_ragged("audio", "FP32", [-1, -1])]})


def spell(text: str, *, rate: int = 16000, frames_per_symbol: int = 4) -> np.ndarray:
    """Audio that `level_ctc` transcribes as `text` (letters a-e, "|" between words): one DC level per
    symbol for a few frames, a blank frame between symbols so repeats stay apart."""
    levels = []
    step = 1.0 / (len(VOCABULARY) - 1)
    for symbol in text.replace(" ", "|"):
        levels += [VOCABULARY.index(symbol) * step] * frames_per_symbol + [0.0] * 2
    per_frame = rate * FRAME // 16000
    return np.repeat(np.asarray(levels, dtype=np.float32), per_frame)
