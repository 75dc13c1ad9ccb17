"""The four benchmark networks, in plain torch, exported with a dynamic batch axis.

`small`: a LeNet-sized CNN on 1x28x28 (about 1 M multiply-adds per item).
`resnet18`: ResNet-18 (He et al. 2015) on 3x224x224, 1000 classes (about 1.8 G multiply-adds per item).
`bert`: a 4-layer BERT-mini encoder (hidden 256, 4 heads, 30522-token vocabulary) on 128 token ids plus
an attention mask (both INT64), pooled first token -> 2 classes.
`speech`: a CRNN on a 1 s 16 kHz waveform: a strided conv front end (10 ms hop), two conv blocks, a
2x128 bidirectional GRU and per-frame logits over 30 characters.
Weights are random: the benchmark measures serving speed, not accuracy.

Every model's `config.yaml` pins ONNX Runtime to 2 intra-op threads (spinning off, deepserve's default),
as the PyTriton peer and the raw runs in `bench/run.py` do, so the three compare the same session.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

THREADS = 2


class SmallCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # (B, 16, 14, 14)
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, 7, 7)
        )
        self.head = nn.Linear(32 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))  # (B, 1568) -> (B, 10)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.down is None else self.down(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )  # (B, 64, 56, 56)
        widths, layers, cin = (64, 128, 256, 512), [], 64
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers += [BasicBlock(cin, width, stride), BasicBlock(width, width, 1)]
            cin = width
        self.layers = nn.Sequential(*layers)  # (B, 512, 7, 7)
        self.head = nn.Linear(512, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)).mean(dim=(2, 3)))  # (B, 512) -> (B, classes)


class EncoderLayer(nn.Module):
    """Post-norm BERT layer: self-attention with an additive padding mask, then a GELU MLP."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm1 = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden))
        self.norm2 = nn.LayerNorm(hidden)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape
        qkv = self.qkv(x).view(b, t, 3, self.heads, h // self.heads)  # (B, T, 3, H, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, H, T, d) each
        scores = q @ k.transpose(-1, -2) / math.sqrt(h // self.heads) + bias  # (B, H, T, T)
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, h)
        x = self.norm1(x + self.proj(attended))
        return self.norm2(x + self.mlp(x))


class BertMini(nn.Module):
    def __init__(self, vocab: int = 30522, hidden: int = 256, layers: int = 4, heads: int = 4,
                 max_len: int = 512, classes: int = 2) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, hidden)
        self.positions = nn.Embedding(max_len, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.layers = nn.ModuleList(EncoderLayer(hidden, heads) for _ in range(layers))
        self.head = nn.Linear(hidden, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.norm(self.tokens(input_ids) + self.positions(positions))  # (B, T, hidden)
        bias = (1.0 - attention_mask[:, None, None, :].float()) * -1e4  # (B, 1, 1, T)
        for layer in self.layers:
            x = layer(x, bias)
        return self.head(x[:, 0])  # (B, classes)


class SpeechCrnn(nn.Module):
    def __init__(self, chars: int = 30) -> None:
        super().__init__()
        self.front = nn.Sequential(nn.Conv1d(1, 64, 400, stride=160, padding=200), nn.ReLU())  # (B, 64, 101)
        self.convs = nn.Sequential(
            nn.Conv1d(64, 128, 5, padding=2), nn.BatchNorm1d(128), nn.ReLU(),
            nn.Conv1d(128, 128, 5, stride=2, padding=2), nn.BatchNorm1d(128), nn.ReLU(),  # (B, 128, 51)
        )
        self.rnn = nn.GRU(128, 128, batch_first=True, bidirectional=True)
        self.head = nn.Linear(256, chars)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        x = self.convs(self.front(wave[:, None, :])).transpose(1, 2)  # (B, T, 128)
        return self.head(self.rnn(x)[0])  # (B, T, chars)


@dataclass(frozen=True)
class BenchModel:
    """One bench model: how to build it, its inputs (name -> per-item shape, datatype), its batch limit."""

    name: str
    net: type[nn.Module]
    inputs: dict[str, tuple[tuple[int, ...], str]]
    max_batch: int
    output: str = "logits"

    def example(self, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Inputs for `batch` items: uniform floats, token ids below 30522 and an all-ones mask."""
        rng = np.random.default_rng(seed)
        out: dict[str, np.ndarray] = {}
        for name, (shape, datatype) in self.inputs.items():
            if datatype == "INT64":
                out[name] = (np.ones((batch, *shape), np.int64) if "mask" in name
                             else rng.integers(0, 30522, (batch, *shape), dtype=np.int64))
            else:
                out[name] = rng.random((batch, *shape), dtype=np.float32)
        return out


MODELS = {
    "small": BenchModel("small", SmallCnn, {"input": ((1, 28, 28), "FP32")}, 64),
    "resnet18": BenchModel("resnet18", ResNet18, {"input": ((3, 224, 224), "FP32")}, 16),
    "bert": BenchModel(
        "bert", BertMini, {"input_ids": ((128,), "INT64"), "attention_mask": ((128,), "INT64")}, 32
    ),
    "speech": BenchModel("speech", SpeechCrnn, {"input": ((16000,), "FP32")}, 32),
}


def export(model: BenchModel, path: Path) -> None:
    torch.manual_seed(0)
    net = model.net()
    net.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    example = tuple(torch.from_numpy(a) for a in model.example(2).values())
    names = list(model.inputs)
    axes = {name: {0: "batch"} for name in [*names, model.output]}
    torch.onnx.export(net, example, str(path), input_names=names, output_names=[model.output],
                      dynamic_axes=axes, opset_version=17, dynamo=False)


def build(repo: Path) -> None:
    """Write every bench model into `repo` (skips ONNX files already there; rewrites config.yaml)."""
    for model in MODELS.values():
        onnx_file = repo / model.name / "1" / "model.onnx"
        if not onnx_file.exists():
            export(model, onnx_file)
        (repo / model.name / "config.yaml").write_text(
            f"max_batch_size: {model.max_batch}\nmax_queue_delay_ms: 2\nmax_queue_size: 1024\n"
            f"intra_op_threads: {THREADS}\ninter_op_threads: 1\n"
        )
